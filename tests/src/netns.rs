//! Network namespaces, veth pairs and bpffs mounts for end-to-end tests.
//!
//! A test gets two namespaces of its own, "server" and "client", joined by a veth pair, so
//! all of its traffic stays between hosts it created. Names carry a per-test tag; guards
//! remove everything on drop, also when the test fails.

use anyhow::{bail, Context, Result};
use std::fs::File;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// Runs a command and fails with its output when it fails.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// `ip ARGS...`
pub fn ip(args: &[&str]) -> Result<Output> {
    run(Command::new("ip").args(args))
}

/// A command to run inside namespace `ns`.
pub fn exec_in(ns: &str, program: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, program]);
    c
}

/// Runs `f` on a thread that has entered namespace `ns`; sockets it creates stay in `ns`.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> Result<T> {
    let path = format!("/run/netns/{ns}");
    let file = File::open(&path).with_context(|| format!("cannot open {path}"))?;
    std::thread::scope(|s| {
        s.spawn(move || -> Result<T> {
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
                .with_context(|| format!("setns into {ns}"))?;
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("thread in {ns} panicked"))?
    })
}

/// A unique short tag for names: interface names are at most 15 bytes.
pub fn tag(prefix: &str) -> String {
    assert!(prefix.len() <= 4, "tag prefix too long");
    format!("{prefix}{}", std::process::id() % 100_000)
}

/// Two namespaces joined by a veth pair.
///
/// server `s<tag>` holds `vs<tag>` with 10.77.0.1/24 and fd77::1/64; client `c<tag>` holds
/// `vc<tag>` with 10.77.0.2, 10.77.0.3 (a second source) and fd77::2.
pub struct NetnsPair {
    pub server: String,
    pub client: String,
    pub server_if: String,
    pub client_if: String,
}

impl NetnsPair {
    pub const SERVER4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
    pub const CLIENT4: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
    pub const CLIENT4_B: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 3);
    pub const SERVER6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 1);
    pub const CLIENT6: Ipv6Addr = Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, 2);

    pub fn new(tag: &str) -> Result<Self> {
        let pair = Self {
            server: format!("s{tag}"),
            client: format!("c{tag}"),
            server_if: format!("vs{tag}"),
            client_if: format!("vc{tag}"),
        };
        // Leftovers of an earlier run that was killed: remove them first.
        let _ = ip(&["netns", "del", &pair.server]);
        let _ = ip(&["netns", "del", &pair.client]);
        pair.setup().inspect_err(|_| pair.teardown())?;
        Ok(pair)
    }

    fn setup(&self) -> Result<()> {
        let (s, c) = (self.server.as_str(), self.client.as_str());
        ip(&["netns", "add", s])?;
        ip(&["netns", "add", c])?;
        ip(&[
            "link",
            "add",
            &self.server_if,
            "netns",
            s,
            "type",
            "veth",
            "peer",
            "name",
            &self.client_if,
            "netns",
            c,
        ])?;
        for (ns, dev, addrs) in [
            (s, &self.server_if, vec!["10.77.0.1/24"]),
            (c, &self.client_if, vec!["10.77.0.2/24", "10.77.0.3/24"]),
        ] {
            for a in addrs {
                ip(&["-n", ns, "addr", "add", a, "dev", dev])?;
            }
            let a6 = if ns == s { "fd77::1/64" } else { "fd77::2/64" };
            ip(&["-n", ns, "addr", "add", a6, "dev", dev, "nodad"])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    fn teardown(&self) {
        let _ = ip(&["netns", "del", &self.server]);
        let _ = ip(&["netns", "del", &self.client]);
    }

    /// One ping from the client (optionally from a chosen source) to the server; `true` if
    /// answered within a second.
    pub fn ping(&self, from: Option<Ipv4Addr>) -> bool {
        let mut cmd = exec_in(&self.client, "ping");
        cmd.args(["-c", "1", "-W", "1", "-q"]);
        if let Some(src) = from {
            cmd.args(["-I", &src.to_string()]);
        }
        cmd.arg(Self::SERVER4.to_string());
        cmd.output().map(|o| o.status.success()).unwrap_or(false)
    }
}

impl Drop for NetnsPair {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// A private bpffs instance for one test's pinned maps, unmounted on drop (which frees the
/// pins and, once no program holds them, the maps).
pub struct Bpffs {
    pub dir: PathBuf,
    root: PathBuf,
}

impl Bpffs {
    pub fn new(tag: &str) -> Result<Self> {
        let root = std::env::temp_dir().join(format!("gateway-test-{tag}"));
        let dir = root.join("bpf");
        let _ = Command::new("umount").arg(&dir).output();
        std::fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        run(Command::new("mount").args(["-t", "bpf", "bpf"]).arg(&dir))?;
        Ok(Self { dir, root })
    }

    /// The pin path a gateway should use inside this mount.
    pub fn pin_path(&self) -> PathBuf {
        self.dir.join("gateway")
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).output();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// What a namespace test needs: two namespaces joined by a veth pair, a private bpffs and a
/// scratch directory beside it; dropped in that order, also when the test fails.
pub struct TestNet {
    pub pair: NetnsPair,
    pub fs: Bpffs,
    pub dir: PathBuf,
}

impl TestNet {
    /// `None` (after saying so) when privileged tests are opted out; panics with what is
    /// missing otherwise (see [`crate::privileged::require`]).
    pub fn new(test: &str, short: &str) -> Option<Self> {
        if !crate::privileged::require(test) {
            return None;
        }
        let t = tag(short);
        let pair = NetnsPair::new(&t).expect("namespaces and veth");
        let fs = Bpffs::new(&t).expect("bpffs");
        let dir = fs.root().to_path_buf();
        Some(Self { pair, fs, dir })
    }

    /// The pin path inside the private bpffs, as a string for the CLI.
    pub fn pin(&self) -> String {
        self.fs.pin_path().display().to_string()
    }
}

/// Starts a thread that has entered namespace `ns` and runs `f` there: for long-lived
/// workers (a benchmark's traffic generator) that [`in_netns`] would block on.
pub fn spawn_in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<std::thread::JoinHandle<Result<T>>> {
    let path = format!("/run/netns/{ns}");
    let file = File::open(&path).with_context(|| format!("cannot open {path}"))?;
    let ns = ns.to_owned();
    Ok(std::thread::spawn(move || -> Result<T> {
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .with_context(|| format!("setns into {ns}"))?;
        Ok(f())
    }))
}
