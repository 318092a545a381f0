//! Section 4: kernel drop rate on a veth pair. Two namespaces made here (`gbs<tag>` with
//! 10.78.0.1, `gbc<tag>` with 10.78.0.2) joined by a veth pair; a raw-socket SYN flood from
//! the client namespace (bounded by a packet count and a deadline) against a deny entry for
//! the client's address: our data plane (the gateway run in the server namespace, then
//! `gateway deny add`) vs an equivalent nftables drop rule in the server namespace. Packets
//! per CPU-second from /proc/stat deltas (softirq, where the receive path runs; and
//! softirq + system, which includes the sender's syscalls). Namespaces, nft tables (they
//! live inside the namespace) and the private bpffs are removed by guards, even on failure.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::util::{self, CpuStat, Proc};
use super::Ctx;

const SERVER: [u8; 4] = [10, 78, 0, 1];
const CLIENT: [u8; 4] = [10, 78, 0, 2];

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip").args(args).output().context("run ip")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The two namespaces and the veth pair; deleted on drop (which also removes the veth,
/// the XDP/TC attachments and the nft tables inside them).
struct Netns {
    server: String,
    client: String,
    server_if: String,
}

impl Netns {
    fn new(tag: &str) -> Result<Self> {
        let n = Self {
            server: format!("gbs{tag}"),
            client: format!("gbc{tag}"),
            server_if: format!("vgbs{tag}"),
        };
        let client_if = format!("vgbc{tag}");
        let _ = ip(&["netns", "del", &n.server]);
        let _ = ip(&["netns", "del", &n.client]);
        ip(&["netns", "add", &n.server])?;
        ip(&["netns", "add", &n.client])?;
        ip(&[
            "link",
            "add",
            &n.server_if,
            "netns",
            &n.server,
            "type",
            "veth",
            "peer",
            "name",
            &client_if,
            "netns",
            &n.client,
        ])?;
        ip(&[
            "-n",
            &n.server,
            "addr",
            "add",
            "10.78.0.1/24",
            "dev",
            &n.server_if,
        ])?;
        ip(&[
            "-n",
            &n.client,
            "addr",
            "add",
            "10.78.0.2/24",
            "dev",
            &client_if,
        ])?;
        for (ns, dev) in [(&n.server, &n.server_if), (&n.client, &client_if)] {
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        // Resolve the neighbour once, before any drop rule exists.
        let _ = Command::new("ip")
            .args([
                "netns",
                "exec",
                &n.client,
                "ping",
                "-c",
                "1",
                "-W",
                "1",
                "-q",
                "10.78.0.1",
            ])
            .output();
        Ok(n)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = ip(&["netns", "del", &self.server]);
        let _ = ip(&["netns", "del", &self.client]);
    }
}

/// A private bpffs for the pinned maps, unmounted on drop.
struct Bpffs {
    dir: PathBuf,
}

impl Bpffs {
    fn new(dir: PathBuf) -> Result<Self> {
        let _ = Command::new("umount").arg(&dir).output();
        std::fs::create_dir_all(&dir)?;
        let st = Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&dir)
            .status()?;
        if !st.success() {
            bail!("mount -t bpf bpf {} failed", dir.display());
        }
        Ok(Self { dir })
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn checksum(data: &[u8], initial: u32) -> u16 {
    let mut sum = initial;
    for chunk in data.chunks(2) {
        let word = u32::from(chunk[0]) << 8 | u32::from(*chunk.get(1).unwrap_or(&0));
        sum += word;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// IPv4 + TCP SYN, CLIENT:sport → SERVER:80, checksums filled in.
fn syn_packet(sport: u16) -> [u8; 40] {
    let mut p = [0u8; 40];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&40u16.to_be_bytes());
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&CLIENT);
    p[16..20].copy_from_slice(&SERVER);
    let ipsum = checksum(&p[..20], 0);
    p[10..12].copy_from_slice(&ipsum.to_be_bytes());
    let t = &mut p[20..];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&80u16.to_be_bytes());
    t[4..8].copy_from_slice(&0x1234_5678u32.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = 0x02; // SYN
    t[14..16].copy_from_slice(&64240u16.to_be_bytes());
    let tcpsum = checksum(&p[20..], pseudo_header_sum());
    p[36..38].copy_from_slice(&tcpsum.to_be_bytes());
    p
}

/// The TCP pseudo-header's 16-bit word sum: client, server, protocol 6, TCP length 20.
fn pseudo_header_sum() -> u32 {
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&CLIENT);
    pseudo.extend_from_slice(&SERVER);
    pseudo.extend_from_slice(&[0, 6, 0, 20]);
    pseudo
        .chunks(2)
        .map(|c| u32::from(c[0]) << 8 | u32::from(c[1]))
        .sum()
}

/// Sends up to `count` SYNs from inside namespace `ns` (a thread that joined it), stopping at
/// `deadline` at the latest. Returns the packets sent.
fn flood(ns: &str, count: u64, secs: u64) -> Result<u64> {
    let ns_path = format!("/run/netns/{ns}");
    std::thread::scope(|s| {
        s.spawn(|| -> Result<u64> {
            let f = File::open(&ns_path).with_context(|| format!("open {ns_path}"))?;
            // SAFETY: setns on this thread only (network namespaces are per thread), with a
            // valid fd; the thread ends after the flood.
            if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                bail!("setns({ns_path}): {}", std::io::Error::last_os_error());
            }
            // SAFETY: plain socket(2); the fd is closed below.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
            if fd < 0 {
                bail!("raw socket: {}", std::io::Error::last_os_error());
            }
            let dst = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: 0,
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(SERVER),
                },
                sin_zero: [0; 8],
            };
            let packets: Vec<[u8; 40]> = (0..1024u16).map(|i| syn_packet(20000 + i)).collect();
            let deadline = Instant::now() + Duration::from_secs(secs);
            let mut sent = 0u64;
            'outer: while sent < count {
                for p in &packets {
                    // SAFETY: sendto with a valid buffer and address of the right length.
                    let n = unsafe {
                        libc::sendto(
                            fd,
                            p.as_ptr().cast(),
                            p.len(),
                            0,
                            (&dst as *const libc::sockaddr_in).cast(),
                            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                        )
                    };
                    if n > 0 {
                        sent += 1;
                    }
                    if sent >= count {
                        break 'outer;
                    }
                }
                if Instant::now() >= deadline {
                    break;
                }
            }
            // SAFETY: closing the fd we opened.
            unsafe { libc::close(fd) };
            Ok(sent)
        })
        .join()
        .map_err(|_| anyhow::anyhow!("flood thread panicked"))?
    })
}

#[derive(Clone, Copy, Default)]
struct Sample {
    sent: u64,
    dropped: u64,
    cpu: CpuStat,
    wall: f64,
}

impl Sample {
    fn per_softirq_s(&self) -> f64 {
        let s = self.cpu.softirq as f64 / util::clock_ticks_per_sec();
        if s > 0.0 {
            self.dropped as f64 / s
        } else {
            f64::NAN
        }
    }
    fn per_kernel_s(&self) -> f64 {
        let s = (self.cpu.softirq + self.cpu.system + self.cpu.irq) as f64
            / util::clock_ticks_per_sec();
        if s > 0.0 {
            self.dropped as f64 / s
        } else {
            f64::NAN
        }
    }
}

fn measured(ns: &Netns, count: u64, secs: u64, read: impl Fn() -> Result<u64>) -> Result<Sample> {
    let d0 = read()?;
    let c0 = util::cpu_stat();
    let t0 = Instant::now();
    let sent = flood(&ns.client, count, secs)?;
    let wall = t0.elapsed().as_secs_f64();
    // Let the receive side drain (veth NAPI / backlog) before reading the counters.
    std::thread::sleep(Duration::from_millis(100));
    let cpu = util::cpu_stat().since(&c0);
    let d1 = read()?;
    Ok(Sample {
        sent,
        dropped: d1.saturating_sub(d0),
        cpu,
        wall,
    })
}

fn gateway_dropped(bin: &Path, pin: &Path) -> Result<u64> {
    let out = Command::new(bin)
        .args(["stats", "--json", "--pin-path"])
        .arg(pin)
        .output()?;
    if !out.status.success() {
        bail!("gateway stats: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    json_u64(&text, "dropped_deny").context("no dropped_deny in `gateway stats --json`")
}

fn json_u64(text: &str, key: &str) -> Option<u64> {
    let at = text.find(&format!("\"{key}\""))?;
    let rest = text[at + key.len() + 2..]
        .trim_start()
        .strip_prefix(':')?
        .trim_start();
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}

fn nft_counter(ns: &str, family: &str) -> Result<u64> {
    let out = Command::new("ip")
        .args([
            "netns", "exec", ns, "nft", "list", "table", family, "gwbench",
        ])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let at = text.find("counter packets ").context("no nft counter")?;
    let rest = &text[at + "counter packets ".len()..];
    Ok(rest
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0))
}

fn nft_load(ns: &str, rules: &str) -> Result<()> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", ns, "nft", "-f", "-"])
        .stdin(std::process::Stdio::piped())
        .spawn()?;
    use std::io::Write;
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(rules.as_bytes())?;
    let st = child.wait()?;
    if !st.success() {
        bail!("nft -f failed for:\n{rules}");
    }
    Ok(())
}

/// One variant: how to arm the drop, and how to read its counter.
#[derive(Clone, Copy, PartialEq)]
enum Variant {
    Ours(&'static str),
    NftIngress,
    NftPrerouting,
}

impl Variant {
    fn label(&self) -> String {
        match self {
            Variant::Ours(mode) => format!("gateway deny, `mode = \"{mode}\"`"),
            Variant::NftIngress => "nftables `netdev` ingress hook, `ip saddr … drop`".into(),
            Variant::NftPrerouting => {
                "nftables `inet` prerouting (priority raw), `ip saddr … drop`".into()
            }
        }
    }
}

fn run_variant(
    ctx: &Ctx,
    ns: &Netns,
    pin: &Path,
    v: Variant,
    count: u64,
    secs: u64,
) -> Result<Sample> {
    match v {
        Variant::Ours(mode) => {
            let cfg = ctx.run_dir.join(format!("xdp-{mode}.toml"));
            std::fs::write(
                &cfg,
                format!(
                    "[ebpf]\ninterface = \"{}\"\nmode = \"{mode}\"\npin_path = \"{}\"\nstate_file = \"{}\"\n",
                    ns.server_if,
                    pin.display(),
                    ctx.run_dir.join(format!("deny-state-{mode}.json")).display()
                ),
            )?;
            let log = ctx.run_dir.join(format!("xdp-{mode}.log"));
            let mut gw = Proc::spawn(
                &format!("gateway (data plane, {mode})"),
                Command::new("ip")
                    .args(["netns", "exec", &ns.server])
                    .arg(&ctx.gateway_bin)
                    .arg("run")
                    .arg("--config")
                    .arg(&cfg)
                    .env("RUST_LOG", "warn"),
                &log,
            )?;
            let deadline = Instant::now() + Duration::from_secs(15);
            while gateway_dropped(&ctx.gateway_bin, pin).is_err() {
                gw.check_alive(&log)?;
                if Instant::now() > deadline {
                    bail!(
                        "the data plane did not come up; log:\n{}",
                        util::tail(&log, 20)
                    );
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            // Attached once the log says so (the maps are pinned a little earlier).
            std::thread::sleep(Duration::from_millis(500));
            let st = Command::new(&ctx.gateway_bin)
                .args([
                    "deny",
                    "add",
                    "10.78.0.2",
                    "--reason",
                    "bench",
                    "--pin-path",
                ])
                .arg(pin)
                .output()?;
            if !st.status.success() {
                bail!("gateway deny add: {}", String::from_utf8_lossy(&st.stderr));
            }
            let s = measured(ns, count, secs, || gateway_dropped(&ctx.gateway_bin, pin))?;
            gw.check_alive(&log)?;
            gw.stop();
            Ok(s)
        }
        Variant::NftIngress | Variant::NftPrerouting => {
            let (family, rules) = if v == Variant::NftIngress {
                (
                    "netdev",
                    format!(
                        "table netdev gwbench {{\n  chain ingress {{\n    type filter hook ingress device \"{}\" priority -500; policy accept;\n    ip saddr 10.78.0.2 counter drop\n  }}\n}}\n",
                        ns.server_if
                    ),
                )
            } else {
                (
                    "inet",
                    "table inet gwbench {\n  chain pre {\n    type filter hook prerouting priority raw; policy accept;\n    ip saddr 10.78.0.2 counter drop\n  }\n}\n".to_owned(),
                )
            };
            nft_load(&ns.server, &rules)?;
            let s = measured(ns, count, secs, || nft_counter(&ns.server, family));
            let _ = Command::new("ip")
                .args([
                    "netns", "exec", &ns.server, "nft", "delete", "table", family, "gwbench",
                ])
                .output();
            s
        }
    }
}

pub fn run(
    ctx: &Ctx,
    secs: u64,
    rounds: u32,
    verdicts: &mut Vec<(String, bool)>,
) -> Result<String> {
    if !crate::cmd::is_root() {
        return Ok(
            "### Kernel drop rate\n\nSkipped: needs root (namespaces, XDP, nftables).\n".into(),
        );
    }
    super::util::require_tools(&["ip", "nft"])?;
    let tag = format!("{}", std::process::id() % 10_000);
    let ns = Netns::new(&tag)?;
    let fs = Bpffs::new(ctx.work.join(format!("bpf-{tag}")))?;
    let pin = fs.dir.join("gateway");
    let count: u64 = 20_000_000;
    let variants = [
        Variant::Ours("xdp"),
        Variant::NftIngress,
        Variant::Ours("xdp-generic"),
        Variant::NftPrerouting,
        Variant::Ours("tc"),
    ];
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); variants.len()];
    for round in 1..=rounds {
        for (i, v) in variants.iter().enumerate() {
            println!("==> drop rate round {round}/{rounds}: {}", v.label());
            let s = run_variant(ctx, &ns, &pin, *v, count, secs)?;
            println!(
                "    sent {} dropped {} in {:.1} s; softirq {:.2} s, system {:.2} s → {:.0} pkts/softirq-s",
                s.sent,
                s.dropped,
                s.wall,
                s.cpu.softirq as f64 / util::clock_ticks_per_sec(),
                s.cpu.system as f64 / util::clock_ticks_per_sec(),
                s.per_softirq_s()
            );
            samples[i].push(s);
        }
    }
    drop(fs);
    drop(ns);
    let mut md = format!(
        "### Kernel drop rate on a veth pair\n\n\
         Raw-socket SYN flood from a client namespace to a server namespace over a veth pair, \
         the client's address denied in the server namespace; {rounds} round(s) of at most {secs} s \
         and {count} packets per variant, variants interleaved. Dropped packets from the gateway's \
         `dropped_deny` counter or the nft rule's counter; CPU from /proc/stat deltas over the \
         whole machine (softirq: where veth's receive path and the drop run; + system: adds the \
         sender's syscalls, identical for all variants). Medians with (min–max).\n\n\
         | variant | dropped pkts/s (wall) | pkts per softirq CPU-s | pkts per (softirq+sys) CPU-s | dropped / sent |\n\
         | --- | ---: | ---: | ---: | ---: |\n"
    );
    let med = |i: usize, f: fn(&Sample) -> f64| -> Option<f64> {
        util::median(&samples[i].iter().map(f).collect::<Vec<_>>())
    };
    for (i, v) in variants.iter().enumerate() {
        let s = &samples[i];
        let rate: Vec<f64> = s.iter().map(|x| x.dropped as f64 / x.wall).collect();
        let soft: Vec<f64> = s.iter().map(Sample::per_softirq_s).collect();
        let kern: Vec<f64> = s.iter().map(Sample::per_kernel_s).collect();
        let (d, n): (u64, u64) = s
            .iter()
            .fold((0, 0), |(d, n), x| (d + x.dropped, n + x.sent));
        md += &format!(
            "| {} | {} | {} | {} | {:.3} |\n",
            v.label(),
            util::med_spread(&rate, 0),
            util::med_spread(&soft, 0),
            util::med_spread(&kern, 0),
            if n > 0 { d as f64 / n as f64 } else { f64::NAN }
        );
    }
    let xdp = med(0, Sample::per_softirq_s);
    let nft = med(1, Sample::per_softirq_s);
    let ratio = match (xdp, nft) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    let best_nft = [med(1, Sample::per_softirq_s), med(3, Sample::per_softirq_s)]
        .into_iter()
        .flatten()
        .reduce(f64::max);
    md += &format!(
        "\nXDP (native) vs nftables ingress, packets per softirq CPU-second: **{}×** (target ≥ 5×). \
         Against the faster of the two nft rules: {}×.\n\n\
         Caveat: on a veth pair the sender has already built an skb, and native XDP on veth \
         converts it to an XDP buffer (copying it when the skb lacks headroom), so XDP's main \
         advantage on a real NIC (dropping before any skb exists) does not show here. On a \
         physical NIC with driver-mode XDP the comparison differs.\n",
        ratio.map_or("–".into(), |r| format!("{r:.2}")),
        match (xdp, best_nft) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
            _ => "–".into(),
        }
    );
    verdicts.push((
        format!(
            "XDP drop: {}× nftables ingress packets per softirq CPU-second (≥ 5×)",
            ratio.map_or("–".into(), |r| format!("{r:.2}"))
        ),
        ratio.is_some_and(|r| r >= 5.0),
    ));
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn syn_packet_checksums_verify() {
        let p = syn_packet(12345);
        assert_eq!(checksum(&p[..20], 0), 0);
        assert_eq!(checksum(&p[20..], pseudo_header_sum()), 0);
    }

    #[test]
    fn json_numbers() {
        assert_eq!(
            json_u64("{\"a\": 1, \"dropped_deny\": 704745,", "dropped_deny"),
            Some(704745)
        );
        assert_eq!(json_u64("{}", "x"), None);
    }
}
