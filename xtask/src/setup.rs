//! `cargo xtask setup`: checks the machine and installs what it lacks, idempotently.
//!
//! Everything is checked before anything is installed, so a second run only probes (a few
//! seconds). Order matters on a fresh machine: apt packages first (the Debian toolchain and
//! LLVM 22), then the rustup link to the Debian toolchain, then bpf-linker (built against LLVM
//! 22), then bpffs.

use std::env;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::cmd::{self, Cmd};

/// The apt packages the build and the tests need, with why. Checked with `dpkg-query`; only the
/// missing ones are installed.
const APT_PACKAGES: &[(&str, &str)] = &[
    // Debian's Rust 1.96 (built on LLVM 22), with its sources; rustup's rust-src is not used
    // because fetching it depends on a host outside the package registries.
    (
        "rustc-web",
        "Debian's rustc 1.96 (LLVM 22), linked into rustup as `deb-web` for the eBPF build",
    ),
    (
        "cargo-web",
        "the cargo that goes with rustc-web (`rustup run deb-web cargo`)",
    ),
    (
        "rust-web-src",
        "standard library sources for `-Z build-std=core` (bpfel-unknown-none)",
    ),
    // What bpf-linker 0.13.0 builds and links against (`--features llvm-22`).
    (
        "llvm-22-dev",
        "LLVM 22 headers and llvm-config for building bpf-linker (LLVM_PREFIX=/usr/lib/llvm-22)",
    ),
    (
        "libpolly-22-dev",
        "Polly, which LLVM 22's llvm-config asks bpf-linker to link",
    ),
    (
        "libzstd-dev",
        "zstd, a link dependency of LLVM when building bpf-linker",
    ),
    (
        "zlib1g-dev",
        "zlib, a link dependency of LLVM when building bpf-linker",
    ),
    (
        "libllvm22",
        "the LLVM 22 shared library bpf-linker loads at run time",
    ),
    // Used by the end-to-end tests and the demo.
    (
        "iproute2",
        "`ip` (network namespaces, veth pairs) and `tc` for the end-to-end tests",
    ),
    (
        "iputils-ping",
        "`ping` for the end-to-end tests (deny/pass checks)",
    ),
    ("hping3", "bounded SYN floods in the end-to-end tests"),
    (
        "redis-server",
        "the fleet tests' Redis, started by each test on a free port",
    ),
    (
        "curl",
        "HTTP(S) requests against the gateway in tests and the demo",
    ),
    ("openssl", "test certificates and keys"),
    (
        "ca-certificates",
        "TLS trust roots for cargo (crates.io) and curl",
    ),
    (
        "nftables",
        "`nft` for packet filtering inside the test namespaces",
    ),
    // The shared HAProxy peer (../shared/peers/haproxy): its correctness matrix runs against
    // the gateway as a test, with a second HAProxy as the upstream.
    (
        "haproxy",
        "HAProxy 2.6, the upstream of the peer matrix test (its service is not started)",
    ),
    (
        "python3",
        "the peer harness's token minter (mint.py, standard library only)",
    ),
    ("wrk", "HTTP/1.1 load for the peer benchmark (bench.sh)"),
    (
        "systemd",
        "`systemd-analyze verify` for the unit file test (systemd is not started)",
    ),
    // `cargo xtask dist` and the package test (tests/tests/package.rs).
    (
        "dpkg-dev",
        "dpkg-shlibdeps: the package's library dependencies (`cargo xtask dist`)",
    ),
    (
        "adduser",
        "what the package's postinst creates the user and group `gateway` with",
    ),
    (
        "man-db",
        "`man`: the package test reads the installed manual pages",
    ),
    (
        "nghttp2-client",
        "h2load, HTTP/2 load for the peer benchmark (bench.sh)",
    ),
    (
        "chromium",
        "headless browser for the admin dashboard's end-to-end test (DevTools protocol)",
    ),
    // External checks of the proxy, run as tests (tests/tests/external_checks.rs).
    (
        "testssl.sh",
        "the TLS listener scanned for weak protocols, ciphers and known flaws",
    ),
    (
        "python3-h2",
        "the HTTP/2 abuse suite (rapid reset, CONTINUATION flood, window abuse, ...)",
    ),
];

/// Packages whose install would start a distribution service; they are installed with a
/// policy-rc.d that forbids service starts (see `ServiceStartBlock`).
const NO_SERVICE_START: &[&str] = &["haproxy", "redis-server"];
const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";
/// Marks a policy-rc.d written by setup, so a run interrupted before removing it is cleaned
/// up by the next one.
const POLICY_RC_D_MARK: &str = "# written by `cargo xtask setup`";

/// Packages that must be at least this version: Debian 12 main also carries rustc-web 1.85,
/// which cannot build the eBPF crate; 1.96 comes from bookworm-security.
const MIN_VERSIONS: &[(&str, &str)] = &[
    ("rustc-web", "1.96"),
    ("cargo-web", "1.96"),
    ("rust-web-src", "1.96"),
];

const APT_INSTALL: &str =
    "DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends";
const TOOLCHAIN: &str = "deb-web";
const BPF_LINKER_VERSION: &str = "0.13.0";
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const BPFFS: &str = "/sys/fs/bpf";

/// What was found missing; drives both installing and the manual instructions.
#[derive(Default)]
struct Missing {
    /// Packages not installed, or installed older than `MIN_VERSIONS`.
    packages: Vec<&'static str>,
    toolchain_link: bool,
    bpf_linker: bool,
    bpffs: bool,
}

impl Missing {
    fn needs_root(&self) -> bool {
        !self.packages.is_empty() || self.bpffs
    }

    fn is_empty(&self) -> bool {
        self.packages.is_empty() && !self.toolchain_link && !self.bpf_linker && !self.bpffs
    }

    /// Shell commands that install what is missing by hand.
    fn manual_commands(&self, sudo: &str) -> Vec<String> {
        let mut cmds = Vec::new();
        if !self.packages.is_empty() {
            cmds.push(format!("{sudo}apt-get update"));
            cmds.push(format!("{sudo}{APT_INSTALL} {}", self.packages.join(" ")));
            if self.packages.iter().any(|p| NO_SERVICE_START.contains(p)) {
                cmds.push(format!(
                    "# (setup installs haproxy with a temporary {POLICY_RC_D} that exits 101, so its service does not start)"
                ));
            }
        }
        if self.toolchain_link {
            cmds.push(format!("rustup toolchain link {TOOLCHAIN} /usr"));
        }
        if self.bpf_linker {
            cmds.push(bpf_linker_install_line());
        }
        if self.bpffs {
            cmds.push(format!("{sudo}mount -t bpf bpf {BPFFS}"));
        }
        cmds
    }
}

fn bpf_linker_install_line() -> String {
    format!(
        "LLVM_PREFIX={LLVM_PREFIX} cargo install --locked --force bpf-linker@{BPF_LINKER_VERSION} \
         --no-default-features --features llvm-22"
    )
}

pub fn run() -> Result<()> {
    if env::var_os("GATEWAY_SKIP_SETUP").is_some_and(|v| v == "1") {
        println!("==> setup skipped (GATEWAY_SKIP_SETUP=1): assuming this machine was provisioned by hand");
        return Ok(());
    }
    let started = Instant::now();
    println!("==> setup: checking this machine");

    // 1. Debian 12 and root.
    let debian = fs::read_to_string("/etc/debian_version")
        .map(|v| v.trim().to_owned())
        .ok();
    let on_debian12 = debian.as_deref().is_some_and(|v| v.starts_with("12"));
    match &debian {
        Some(v) if on_debian12 => ok(&format!("Debian {v}")),
        Some(v) => missing(&format!("Debian 12 (found Debian {v})")),
        None => missing("Debian 12 (/etc/debian_version not found)"),
    }
    let root = cmd::is_root();
    if root {
        ok("running as root");
    } else {
        note(&format!(
            "not root (uid {}): apt packages and bpffs can only be checked, not installed",
            cmd::euid()
        ));
    }
    if !on_debian12 {
        print_not_debian();
        bail!("setup supports Debian 12 only (set GATEWAY_SKIP_SETUP=1 on a machine provisioned by hand)");
    }

    // 2. Check everything before installing anything.
    let mut need = Missing {
        packages: check_packages()?,
        ..Missing::default()
    };
    need.toolchain_link = !check_toolchain_link();
    // The link can only work once Debian's toolchain is installed.
    let mut toolchain_verified = false;
    if !need.toolchain_link && need.packages.is_empty() {
        verify_toolchain()?;
        toolchain_verified = true;
    }
    need.bpf_linker = !check_bpf_linker();
    need.bpffs = !check_bpffs();

    if need.is_empty() {
        println!(
            "==> setup: everything is in place ({:.1} s)",
            started.elapsed().as_secs_f64()
        );
        return Ok(());
    }

    if need.needs_root() && !root {
        eprintln!();
        eprintln!("setup: some of what is missing needs root to install. Install it by hand:");
        for line in need.manual_commands("sudo ") {
            eprintln!("    {line}");
        }
        eprintln!("Then run `cargo xtask setup` again. Set GATEWAY_SKIP_SETUP=1 to skip setup on a machine provisioned by hand.");
        bail!("setup needs root to install what is missing");
    }

    // 3. Install, in dependency order.
    if !need.packages.is_empty() {
        install_packages(&need.packages)?;
        println!("==> checking the apt packages again");
        let still = check_packages()?;
        if !still.is_empty() {
            bail!(
                "apt packages still missing or too old after installing: {} \
                 (rustc-web/cargo-web/rust-web-src 1.96 come from bookworm-security; is it in the apt sources?)",
                still.join(" ")
            );
        }
    }
    if need.toolchain_link {
        println!("==> linking Debian's toolchain (/usr) into rustup as `{TOOLCHAIN}`");
        Cmd::new("rustup")
            .args(["toolchain", "link", TOOLCHAIN, "/usr"])
            .without_toolchain_env()
            .run()
            .context("rustup is needed (https://rustup.rs, or Debian's rustup package)")?;
    }
    if !toolchain_verified {
        verify_toolchain()?;
    }
    if need.bpf_linker {
        install_bpf_linker()?;
        if !check_bpf_linker() {
            bail!("bpf-linker {BPF_LINKER_VERSION} still not found or not working after `cargo install`");
        }
    }
    if need.bpffs {
        println!("==> mounting bpffs at {BPFFS}");
        Cmd::new("mount").args(["-t", "bpf", "bpf", BPFFS]).run()?;
        if !check_bpffs() {
            bail!("bpffs still not mounted at {BPFFS}");
        }
    }
    println!("==> setup: done ({:.1} s)", started.elapsed().as_secs_f64());
    Ok(())
}

fn ok(what: &str) {
    println!("    [ok]      {what}");
}

fn missing(what: &str) {
    println!("    [missing] {what}");
}

fn note(what: &str) {
    println!("    [note]    {what}");
}

fn print_not_debian() {
    let all: Vec<&str> = APT_PACKAGES.iter().map(|(p, _)| *p).collect();
    eprintln!();
    eprintln!("setup: this command provisions Debian 12 (bookworm, with bookworm-security) only.");
    eprintln!("On Debian 12, as root, it would run:");
    eprintln!("    apt-get update");
    eprintln!("    {APT_INSTALL} {}", all.join(" "));
    eprintln!("    rustup toolchain link {TOOLCHAIN} /usr");
    eprintln!("    {}", bpf_linker_install_line());
    eprintln!("    mount -t bpf bpf {BPFFS}");
    eprintln!("Elsewhere, provide the equivalents (a Rust toolchain with rust-src usable with RUSTC_BOOTSTRAP=1,");
    eprintln!("linked into rustup as `{TOOLCHAIN}`; bpf-linker {BPF_LINKER_VERSION} for that toolchain's LLVM; iproute2, ping,");
    eprintln!("hping3, curl, openssl, nftables, haproxy 2.6, python3, wrk, h2load; bpffs at {BPFFS}), then set");
    eprintln!("GATEWAY_SKIP_SETUP=1.");
}

/// Returns the packages that are not installed or are older than their minimum version.
fn check_packages() -> Result<Vec<&'static str>> {
    let mut absent = Vec::new();
    for (pkg, why) in APT_PACKAGES {
        // An unknown package makes dpkg-query fail: that is "not installed" too.
        let out = Cmd::new("dpkg-query")
            .args(["-W", "-f=${Status}\t${Version}", pkg])
            .probe();
        let (status, version) = match out.as_deref().and_then(|o| o.split_once('\t')) {
            Some((s, v)) => (s.to_owned(), v.to_owned()),
            None => (String::new(), String::new()),
        };
        if status != "install ok installed" {
            missing(&format!("apt: {pkg} ({why})"));
            absent.push(*pkg);
            continue;
        }
        if let Some((_, min)) = MIN_VERSIONS.iter().find(|(p, _)| p == pkg) {
            let new_enough = Cmd::new("dpkg")
                .args(["--compare-versions", &version, "ge", min])
                .probe()
                .is_some();
            if !new_enough {
                missing(&format!("apt: {pkg} >= {min} (installed: {version})"));
                absent.push(*pkg);
                continue;
            }
        }
        ok(&format!("apt: {pkg} {version}"));
    }
    Ok(absent)
}

fn install_packages(packages: &[&str]) -> Result<()> {
    println!(
        "==> installing {} apt package(s): {}",
        packages.len(),
        packages.join(" ")
    );
    // Wait for a concurrent apt/dpkg run instead of failing on its lock.
    let lock_wait = "DPkg::Lock::Timeout=300";
    Cmd::new("apt-get")
        .args(["-o", lock_wait, "update"])
        .run()?;
    let services: Vec<&str> = packages
        .iter()
        .copied()
        .filter(|p| NO_SERVICE_START.contains(p))
        .collect();
    let _block = ServiceStartBlock::for_packages(&services)?;
    Cmd::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["-o", lock_wait, "install", "-y", "--no-install-recommends"])
        .args(packages)
        .run()
}

/// A temporary `/usr/sbin/policy-rc.d` that exits 101 ("action forbidden"), so installing
/// haproxy does not start the distribution's haproxy service; removed on drop. An existing
/// policy-rc.d that setup did not write is left alone (it already decides about services).
struct ServiceStartBlock {
    path: PathBuf,
}

impl ServiceStartBlock {
    fn for_packages(services: &[&str]) -> Result<Option<Self>> {
        Self::at(Path::new(POLICY_RC_D), services)
    }

    fn at(path: &Path, services: &[&str]) -> Result<Option<Self>> {
        if services.is_empty() {
            return Ok(None);
        }
        let shown = path.display();
        match fs::read_to_string(path) {
            Ok(text) if !text.contains(POLICY_RC_D_MARK) => {
                note(&format!(
                    "{shown} exists (not written by setup): it decides whether {} starts",
                    services.join(", ")
                ));
                return Ok(None);
            }
            Ok(_) => note(&format!(
                "{shown} left over from an interrupted setup: reusing it"
            )),
            Err(_) => {}
        }
        println!(
            "==> writing a temporary {shown} (exit 101) so that installing {} starts no service",
            services.join(", ")
        );
        fs::write(path, format!("#!/bin/sh\n{POLICY_RC_D_MARK}: no service starts while it installs packages; removed after.\nexit 101\n"))
            .with_context(|| format!("write {shown}"))?;
        fs::set_permissions(path, fs::Permissions::from_mode(0o755))
            .with_context(|| format!("make {shown} executable"))?;
        Ok(Some(Self {
            path: path.to_path_buf(),
        }))
    }
}

impl Drop for ServiceStartBlock {
    fn drop(&mut self) {
        let shown = self.path.display();
        match fs::remove_file(&self.path) {
            Ok(()) => println!("==> removed the temporary {shown}"),
            Err(e) => {
                eprintln!("setup: could not remove the temporary {shown} ({e}); remove it by hand")
            }
        }
    }
}

fn check_toolchain_link() -> bool {
    let list = Cmd::new("rustup")
        .args(["toolchain", "list"])
        .without_toolchain_env()
        .probe();
    let linked = list.as_deref().is_some_and(|l| {
        l.lines()
            .any(|line| line.split_whitespace().next() == Some(TOOLCHAIN))
    });
    if linked {
        ok(&format!(
            "rustup toolchain `{TOOLCHAIN}` (Debian's toolchain in /usr)"
        ));
    } else if list.is_none() {
        missing("rustup (needed to link Debian's toolchain as `deb-web`)");
    } else {
        missing(&format!("rustup toolchain `{TOOLCHAIN}` -> /usr"));
    }
    linked
}

/// `rustup run deb-web rustc --version` must work and the sources for build-std must exist.
fn verify_toolchain() -> Result<()> {
    let version = Cmd::new("rustup")
        .args(["run", TOOLCHAIN, "rustc", "--version"])
        .without_toolchain_env()
        .probe()
        .with_context(|| {
            format!(
                "`rustup run {TOOLCHAIN} rustc --version` failed; check `rustup toolchain list -v` \
                 (expected `{TOOLCHAIN} /usr`) and that rustc-web is installed"
            )
        })?;
    let sysroot = Cmd::new("rustup")
        .args(["run", TOOLCHAIN, "rustc", "--print", "sysroot"])
        .without_toolchain_env()
        .probe()
        .unwrap_or_else(|| "/usr".to_owned());
    let core = PathBuf::from(&sysroot).join("lib/rustlib/src/rust/library/core");
    if !core.is_dir() {
        bail!(
            "{} is missing: the `{TOOLCHAIN}` toolchain has no library sources for -Z build-std \
             (install rust-web-src)",
            core.display()
        );
    }
    ok(&format!(
        "`rustup run {TOOLCHAIN} rustc --version`: {version}; sources in {sysroot}/lib/rustlib/src"
    ));
    Ok(())
}

/// The bpf-linker on PATH, or in the cargo bin dir.
fn bpf_linker_path() -> PathBuf {
    let on_path = env::var_os("PATH").and_then(|path| {
        env::split_paths(&path)
            .map(|dir| dir.join("bpf-linker"))
            .find(|p| p.is_file())
    });
    on_path
        .or_else(|| cmd::cargo_bin_dir().map(|d| d.join("bpf-linker")))
        .unwrap_or_else(|| PathBuf::from("bpf-linker"))
}

fn check_bpf_linker() -> bool {
    let path = bpf_linker_path();
    let Some(version) = Cmd::new(&path).arg("--version").probe() else {
        missing(&format!(
            "bpf-linker {BPF_LINKER_VERSION} (LLVM 22): `{} --version` failed or not found",
            path.display()
        ));
        return false;
    };
    if !version.split_whitespace().any(|w| w == BPF_LINKER_VERSION) {
        missing(&format!(
            "bpf-linker {BPF_LINKER_VERSION} (found `{version}` at {})",
            path.display()
        ));
        return false;
    }
    // A dynamically linked bpf-linker names its LLVM; it must be 22 (the toolchain's LLVM).
    if let Some(libs) = Cmd::new("ldd").arg(&path).probe() {
        let llvm: Vec<&str> = libs
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|lib| lib.starts_with("libLLVM"))
            .collect();
        if !llvm.is_empty() && !llvm.iter().any(|lib| lib.contains("22")) {
            missing(&format!(
                "bpf-linker built against LLVM 22 (found {} linked to {})",
                path.display(),
                llvm.join(", ")
            ));
            return false;
        }
    }
    ok(&format!("{version} ({})", path.display()));
    true
}

fn install_bpf_linker() -> Result<()> {
    println!("==> building bpf-linker {BPF_LINKER_VERSION} against LLVM 22 (takes about 80 s)");
    Cmd::new("cargo")
        .without_cargo_run_env()
        .env_remove("CARGO_TARGET_DIR")
        .env("LLVM_PREFIX", LLVM_PREFIX)
        .args(["install", "--locked", "--force"])
        .arg(format!("bpf-linker@{BPF_LINKER_VERSION}"))
        .args(["--no-default-features", "--features", "llvm-22"])
        .run()
}

fn check_bpffs() -> bool {
    let mounted = fs::read_to_string("/proc/mounts").is_ok_and(|mounts| {
        mounts.lines().any(|line| {
            let mut fields = line.split_whitespace();
            let _source = fields.next();
            fields.next() == Some(BPFFS) && fields.next() == Some("bpf")
        })
    });
    if mounted {
        ok(&format!("bpffs mounted at {BPFFS}"));
    } else {
        missing(&format!("bpffs at {BPFFS} (maps are pinned there)"));
    }
    mounted
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_start_block_is_temporary_and_respects_an_existing_policy() {
        let dir = env::temp_dir().join(format!("xtask-policy-rc-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("policy-rc.d");

        assert!(ServiceStartBlock::at(&path, &[]).unwrap().is_none());

        let block = ServiceStartBlock::at(&path, &["haproxy"]).unwrap();
        assert!(block.is_some());
        let status = std::process::Command::new(&path).status().unwrap();
        assert_eq!(status.code(), Some(101), "forbids service starts");
        drop(block);
        assert!(!path.exists(), "removed after the install");

        // Someone else's policy stays as it is.
        fs::write(&path, "#!/bin/sh\nexit 0\n").unwrap();
        assert!(ServiceStartBlock::at(&path, &["haproxy"])
            .unwrap()
            .is_none());
        assert_eq!(fs::read_to_string(&path).unwrap(), "#!/bin/sh\nexit 0\n");

        // One left over by an interrupted setup is reused, then removed.
        fs::write(&path, format!("#!/bin/sh\n{POLICY_RC_D_MARK}\nexit 101\n")).unwrap();
        drop(ServiceStartBlock::at(&path, &["haproxy"]).unwrap());
        assert!(!path.exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
