//! Drop cost per packet on the live-frames path: frames that reach a veth as XDP frames, so
//! the receiving end's XDP program runs before any skb exists, as on a NIC with driver XDP.
//!
//! A generator (`live_gen` in gateway-ebpf's `floor` object) runs through
//! `BPF_PROG_TEST_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES` (kernel 5.18+, how xdp-trafficgen
//! works) in the client namespace and redirects every frame out of the client end of a veth
//! pair. veth hands the frames to the server end's ring and its NAPI poll, run in the same
//! syscall when the generator's batch of 64 is flushed, which runs the server end's XDP
//! program. The kernel reports the time per frame of the whole loop (generator and receiver;
//! time while preempted excluded). Receivers, each a criterion benchmark `xdp_live/<name>`:
//!
//! - `generator_alone`: the same frames sent to a second veth pair whose peer is down, so the
//!   transmit drops them: the generator's own cost, which the report subtracts from the rest;
//! - `bare_xdp_drop`: a program that only returns XDP_DROP (the floor of this path);
//! - `lookup_xdp_drop`: one hash lookup keyed by packet bytes, then XDP_DROP (the floor of
//!   any drop decided per source: it reads the packet, which the bare drop never touches);
//! - `gateway_xdp_deny`: our XDP program, the client's address on the deny list;
//! - `nft_netdev_ingress`, `nft_inet_prerouting`: XDP_PASS, then an nftables
//!   `ip saddr … drop` rule on the netdev ingress hook or inet prerouting (priority raw);
//! - `gateway_tc_deny`: XDP_PASS, then our TC program, the client denied;
//! - `baseline_xdp_deny`: with `GATEWAY_EBPF_BASELINE` set to another build's object (say,
//!   main's), that build's XDP program, the client denied: before and after in one run.
//!
//! Each measurement reads the server veth's rx counter and the receiver's drop counter (ours:
//! `dropped_deny`; nft: the rule's counter) around the run, reports time per *received*
//! frame and fails when the drops do not account for what was received.
//!
//! Needs root. Run with `cargo xtask bench --only dataplane` or
//! `cargo bench -p gateway --bench xdp_live`.

use aya::maps::{HashMap as AyaHashMap, PerCpuArray};
use aya::programs::{
    SchedClassifier, TcAttachType, TestRun, TestRunAttrs, TestRunOptions, Xdp, XdpMode,
};
use aya::{Ebpf, EbpfLoader};
use criterion::{criterion_group, criterion_main, Criterion};
use gateway::ebpf::addr::key_of;
use gateway::ebpf::maps::new_deny_entry;
use gateway::ebpf::{loader, PinnedMaps, Target};
use gateway_common::{counter, map_name, origin, program_name, DenyEntry, SourceKey, Totals};
use gateway_tests::bench::assert_root;
use gateway_tests::netns::{self, in_netns, ip, spawn_in_netns, Bpffs, NetnsPair};
use gateway_tests::packet::{self, ACK, ETH_P_IP, PROTO_TCP};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

/// Frames per generator batch (the kernel's default, and the NAPI budget).
const BATCH: u32 = 64;
/// Frames per test-run call; more than that are several calls.
const MAX_REPEAT: u64 = 1 << 22;

/// `ip -j` output of one interface, as JSON.
fn link_json(ns: &str, dev: &str, stats: bool) -> serde_json::Value {
    let mut args = vec!["-n", ns, "-j"];
    if stats {
        args.push("-s");
    }
    args.extend(["link", "show", "dev", dev]);
    let out = ip(&args).expect("ip link show");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("ip -j output");
    v[0].clone()
}

fn rx_packets(ns: &str, dev: &str) -> u64 {
    link_json(ns, dev, true)["stats64"]["rx"]["packets"]
        .as_u64()
        .expect("rx packets in `ip -s -j link`")
}

fn mac(ns: &str, dev: &str) -> [u8; 6] {
    let s = link_json(ns, dev, false)["address"]
        .as_str()
        .expect("address")
        .to_owned();
    let mut out = [0u8; 6];
    for (o, part) in out.iter_mut().zip(s.split(':')) {
        *o = u8::from_str_radix(part, 16).expect("MAC");
    }
    out
}

fn ifindex(ns: &str, dev: &str) -> u32 {
    link_json(ns, dev, false)["ifindex"]
        .as_u64()
        .expect("ifindex") as u32
}

/// Which generator to run: towards the server veth, or towards the sink (peer down).
#[derive(Clone, Copy)]
enum Towards {
    Server,
    Sink,
}

/// The generator: a thread in the client namespace (`bpf_redirect` resolves the interface
/// in the namespace of the test run's device, the caller's loopback) that owns one loaded
/// `live_gen` per target and runs them on request.
struct Generator {
    tx: mpsc::Sender<(Towards, u64)>,
    rx: mpsc::Receiver<Duration>,
}

impl Generator {
    fn start(ns: &str, floor: PathBuf, targets: [u32; 2], frame: Vec<u8>) -> Self {
        let (tx, req) = mpsc::channel::<(Towards, u64)>();
        let (resp, rx) = mpsc::channel();
        spawn_in_netns(ns, move || {
            let mut gens: Vec<Ebpf> = targets
                .iter()
                .map(|ifindex| {
                    let mut e = EbpfLoader::new()
                        .override_global("LIVE_GEN_IFINDEX", ifindex, true)
                        .load_file(&floor)
                        .expect("load the generator");
                    let p: &mut Xdp = e.program_mut("live_gen").unwrap().try_into().unwrap();
                    loader::load_program(|| p.load()).expect("verifier accepts live_gen");
                    e
                })
                .collect();
            for (towards, n) in req {
                let e = &mut gens[towards as usize];
                let p: &Xdp = e.program("live_gen").unwrap().try_into().unwrap();
                let mut total = Duration::ZERO;
                let mut left = n;
                while left > 0 {
                    let k = left.min(MAX_REPEAT) as u32;
                    let r = p
                        .test_run(TestRunOptions {
                            data_in: Some(&frame),
                            repeat: k,
                            attrs: TestRunAttrs::new().xdp_live_frames(BATCH),
                            ..TestRunOptions::default()
                        })
                        .expect("live-frames test run");
                    total += r.duration * k;
                    left -= u64::from(k);
                }
                if resp.send(total).is_err() {
                    break;
                }
            }
        })
        .expect("generator thread");
        Self { tx, rx }
    }

    fn run(&self, towards: Towards, n: u64) -> Duration {
        self.tx.send((towards, n)).expect("generator alive");
        self.rx.recv().expect("generator answers")
    }
}

/// The namespaces: the test pair, plus a second veth pair in the client namespace whose
/// peer stays down (the generator's sink).
struct Rig {
    pair: NetnsPair,
    fs: Bpffs,
    sink: String,
}

impl Rig {
    fn new() -> Self {
        let tag = netns::tag("bxl");
        let pair = NetnsPair::new(&tag).expect("namespaces and veth");
        let fs = Bpffs::new(&tag).expect("bpffs");
        let sink = format!("vz{tag}");
        let peer = format!("vy{tag}");
        let c = pair.client.as_str();
        ip(&[
            "-n", c, "link", "add", &sink, "type", "veth", "peer", "name", &peer,
        ])
        .expect("sink veth");
        ip(&["-n", c, "link", "set", &sink, "up"]).expect("sink up");
        Self { pair, fs, sink }
    }

    fn nft(&self, rules: &str) {
        use std::io::Write;
        let mut child = netns::exec_in(&self.pair.server, "nft")
            .args(["-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("nft");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(rules.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success(), "nft -f failed:\n{rules}");
    }

    fn nft_counter(&self, family: &str) -> u64 {
        let out = netns::run(
            netns::exec_in(&self.pair.server, "nft").args(["list", "table", family, "gwlive"]),
        )
        .expect("nft list");
        let text = String::from_utf8_lossy(&out.stdout);
        let at = text.find("counter packets ").expect("nft counter");
        text[at + "counter packets ".len()..]
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .expect("nft counter value")
    }
}

/// Attaches `prog` (loaded) in native mode to the server veth, from inside its namespace.
fn attach_xdp(rig: &Rig, prog: &mut Xdp) {
    let dev = rig.pair.server_if.clone();
    in_netns(&rig.pair.server, move || {
        prog.attach(&dev, XdpMode::Driver).expect("attach XDP")
    })
    .expect("server namespace");
}

fn load_floor(path: &Path, name: &str) -> Ebpf {
    let mut e = Ebpf::load_file(path).expect("load the floor object");
    let p: &mut Xdp = e.program_mut(name).unwrap().try_into().unwrap();
    loader::load_program(|| p.load()).expect("verifier accepts");
    e
}

/// The gateway's object with its maps pinned in the rig's bpffs, the client denied.
fn load_ours(rig: &Rig) -> (Ebpf, PinnedMaps) {
    let pin = rig.fs.pin_path();
    let ebpf = loader::load_object(&pin).expect("load the gateway object");
    let mut maps = PinnedMaps::open(&pin).expect("maps");
    let client: Target = NetnsPair::CLIENT4.to_string().parse().unwrap();
    maps.deny(&client, &new_deny_entry(0, origin::MANUAL, "bench"))
        .expect("deny the client");
    (ebpf, maps)
}

/// Runs `n` frames towards the server and returns the time per received frame × n, after
/// checking that `drops` (a counter read before and after) accounts for every frame.
fn measure(rig: &Rig, gen: &Generator, n: u64, drops: &dyn Fn() -> u64) -> Duration {
    let (rx0, d0) = (rx_packets(&rig.pair.server, &rig.pair.server_if), drops());
    let t = gen.run(Towards::Server, n);
    let (rx1, d1) = (rx_packets(&rig.pair.server, &rig.pair.server_if), drops());
    let (rx, dropped) = (rx1 - rx0, d1 - d0);
    assert!(rx > 0, "the server veth received none of {n} frames");
    // Neighbour or router traffic may add a packet; our frames must all be dropped.
    assert!(
        dropped <= rx && dropped + 4 >= rx,
        "received {rx} frames but the receiver dropped {dropped}"
    );
    t.mul_f64(n as f64 / rx as f64)
}

/// Sums the `TOTALS` counter `which` of a loaded object over CPUs.
fn total(ebpf: &Ebpf, which: u32) -> u64 {
    let totals: PerCpuArray<_, Totals> =
        PerCpuArray::try_from(ebpf.map(map_name::TOTALS).expect("TOTALS")).expect("TOTALS");
    let per_cpu = totals.get(&0, 0).expect("TOTALS[0]");
    per_cpu.iter().map(|t| t.counters[which as usize]).sum()
}

/// Another build's object (`GATEWAY_EBPF_BASELINE`), maps pinned in a directory of their
/// own, the client denied, its XDP program attached.
fn load_baseline(rig: &Rig, object: &Path) -> Ebpf {
    let pin = rig.fs.dir.join("baseline");
    std::fs::create_dir_all(&pin).expect("baseline pin dir");
    let mut e = EbpfLoader::new()
        .default_map_pin_directory(&pin)
        .load_file(object)
        .expect("load the baseline object");
    let mut deny: AyaHashMap<_, SourceKey, DenyEntry> =
        AyaHashMap::try_from(e.map_mut(map_name::DENY).expect("DENY")).expect("DENY");
    deny.insert(
        key_of(NetnsPair::CLIENT4.into()),
        new_deny_entry(0, origin::MANUAL, "bench"),
        0,
    )
    .expect("deny the client");
    let p: &mut Xdp = e
        .program_mut(program_name::XDP)
        .unwrap()
        .try_into()
        .unwrap();
    loader::load_program(|| p.load()).expect("verifier accepts the baseline");
    attach_xdp(rig, p);
    e
}

fn bench(c: &mut Criterion) {
    assert_root("the live-frames benchmark loads and attaches BPF programs");
    let floor_path = Path::new(env!("GATEWAY_EBPF_OBJECT")).with_file_name("floor");
    let rig = Rig::new();
    let (s, cl) = (&rig.pair.server, &rig.pair.client);
    let (server_mac, client_mac) = (mac(s, &rig.pair.server_if), mac(cl, &rig.pair.client_if));
    let mut frame = packet::ether(
        &[],
        ETH_P_IP,
        &packet::ipv4(
            NetnsPair::CLIENT4,
            NetnsPair::SERVER4,
            PROTO_TCP,
            &packet::tcp(40000, 80, ACK),
        ),
    );
    frame[0..6].copy_from_slice(&server_mac);
    frame[6..12].copy_from_slice(&client_mac);
    let gen = Generator::start(
        cl,
        floor_path.clone(),
        [ifindex(cl, &rig.pair.client_if), ifindex(cl, &rig.sink)],
        frame,
    );

    let mut g = c.benchmark_group("xdp_live");
    g.bench_function("generator_alone", |b| {
        b.iter_custom(|n| gen.run(Towards::Sink, n))
    });

    // The floors of this path: a bare drop, a drop after reading the frame, and one lookup
    // by packet bytes then a drop.
    for (program, id) in [
        ("floor_drop", "bare_xdp_drop"),
        ("floor_read_drop", "read_xdp_drop"),
        ("floor_lookup_drop", "lookup_xdp_drop"),
    ] {
        let mut e = load_floor(&floor_path, program);
        attach_xdp(&rig, e.program_mut(program).unwrap().try_into().unwrap());
        g.bench_function(id, |b| {
            b.iter_custom(|n| {
                measure(&rig, &gen, n, &|| {
                    rx_packets(&rig.pair.server, &rig.pair.server_if)
                })
            })
        });
    }

    if let Some(object) = std::env::var_os("GATEWAY_EBPF_BASELINE") {
        let e = load_baseline(&rig, Path::new(&object));
        g.bench_function("baseline_xdp_deny", |b| {
            b.iter_custom(|n| measure(&rig, &gen, n, &|| total(&e, counter::DROP_DENY)))
        });
    }

    {
        let (mut e, maps) = load_ours(&rig);
        let p: &mut Xdp = e
            .program_mut(program_name::XDP)
            .unwrap()
            .try_into()
            .unwrap();
        loader::load_program(|| p.load()).expect("verifier accepts");
        attach_xdp(&rig, p);
        let dropped = || maps.totals().expect("totals")[counter::DROP_DENY as usize];
        g.bench_function("gateway_xdp_deny", |b| {
            b.iter_custom(|n| measure(&rig, &gen, n, &dropped))
        });
    }

    let mut pass = load_floor(&floor_path, "floor_pass");
    attach_xdp(
        &rig,
        pass.program_mut("floor_pass").unwrap().try_into().unwrap(),
    );
    for (name, family, rules) in [
        (
            "nft_netdev_ingress",
            "netdev",
            format!(
                "table netdev gwlive {{\n  chain ingress {{\n    type filter hook ingress device \"{}\" priority -500; policy accept;\n    ip saddr {} counter drop\n  }}\n}}\n",
                rig.pair.server_if,
                NetnsPair::CLIENT4
            ),
        ),
        (
            "nft_inet_prerouting",
            "inet",
            format!(
                "table inet gwlive {{\n  chain pre {{\n    type filter hook prerouting priority raw; policy accept;\n    ip saddr {} counter drop\n  }}\n}}\n",
                NetnsPair::CLIENT4
            ),
        ),
    ] {
        rig.nft(&rules);
        g.bench_function(name, |b| {
            b.iter_custom(|n| measure(&rig, &gen, n, &|| rig.nft_counter(family)))
        });
        netns::run(netns::exec_in(&rig.pair.server, "nft").args([
            "delete", "table", family, "gwlive",
        ]))
        .expect("nft delete table");
    }

    {
        let (mut e, maps) = load_ours(&rig);
        let p: &mut SchedClassifier = e.program_mut(program_name::TC).unwrap().try_into().unwrap();
        loader::load_program(|| p.load()).expect("verifier accepts");
        let dev = rig.pair.server_if.clone();
        in_netns(&rig.pair.server, move || {
            p.attach(&dev, TcAttachType::Ingress).expect("attach TC")
        })
        .expect("server namespace");
        let dropped = || maps.totals().expect("totals")[counter::DROP_DENY as usize];
        g.bench_function("gateway_tc_deny", |b| {
            b.iter_custom(|n| measure(&rig, &gen, n, &dropped))
        });
    }
    g.finish();
    drop(pass);
    drop(gen);
    drop(rig);
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(20);
    targets = bench
}
criterion_main!(benches);
