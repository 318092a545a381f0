//! `cargo xtask build`: the eBPF object (once, with Debian's toolchain), then the userspace
//! binary that embeds it (`gateway/build.rs` reads `GATEWAY_EBPF_OBJECT`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;

use crate::cmd::{self, Cmd};

const EBPF_TARGET: &str = "bpfel-unknown-none";
/// Relative to the workspace root; separate from the host target dir so that the two builds
/// (different toolchains) never invalidate each other.
const EBPF_TARGET_DIR: &str = "target/ebpf";

#[derive(Args)]
pub struct BuildArgs {
    /// Build the userspace binary with the release profile (the eBPF object is always release).
    #[arg(long)]
    pub release: bool,
}

/// What a build produced (absolute paths).
pub struct Artifacts {
    pub ebpf_object: PathBuf,
    pub gateway_bin: PathBuf,
}

pub fn run(args: &BuildArgs) -> Result<()> {
    let artifacts = all(args.release)?;
    println!(
        "==> eBPF object:  {}",
        cmd::show_path(&artifacts.ebpf_object)
    );
    println!(
        "==> gateway:      {}",
        cmd::show_path(&artifacts.gateway_bin)
    );
    Ok(())
}

/// Builds the eBPF object, then the gateway binary; returns both paths.
pub fn all(release: bool) -> Result<Artifacts> {
    let ebpf_object = ebpf()?;
    let gateway_bin = userspace(&ebpf_object, release)?;
    Ok(Artifacts {
        ebpf_object,
        gateway_bin,
    })
}

/// The eBPF object's path, where [`ebpf`] puts it.
pub fn ebpf_object_path(root: &Path) -> PathBuf {
    root.join(EBPF_TARGET_DIR)
        .join(EBPF_TARGET)
        .join("release")
        .join("gateway")
}

/// Builds `gateway-ebpf` for bpfel-unknown-none with the Debian toolchain (`deb-web`), which
/// has the library sources `-Z build-std=core` needs. Returns the object's absolute path.
pub fn ebpf() -> Result<PathBuf> {
    let root = cmd::workspace_root();
    let started = Instant::now();
    println!("==> building the eBPF object (gateway-ebpf, {EBPF_TARGET}, toolchain deb-web)");
    Cmd::new("rustup")
        .cwd(&root)
        .without_toolchain_env()
        .env("RUSTC_BOOTSTRAP", "1")
        .env("RUSTFLAGS", "-Cdebuginfo=2 -Clink-arg=--btf")
        .args(["run", "deb-web", "cargo", "build", "--locked"])
        .args(["-p", "gateway-ebpf", "--bins", "--release"])
        .args(["--target", EBPF_TARGET, "-Z", "build-std=core"])
        .args(["--target-dir", EBPF_TARGET_DIR])
        .run()?;
    let object = ebpf_object_path(&root);
    if !object.is_file() {
        bail!(
            "the eBPF build succeeded but {} does not exist",
            object.display()
        );
    }
    println!(
        "==> eBPF object ready: {} ({:.1} s)",
        cmd::show_path(&object),
        started.elapsed().as_secs_f64()
    );
    Ok(object)
}

/// Builds the `gateway` binary against the given eBPF object; returns the binary's path.
pub fn userspace(ebpf_object: &Path, release: bool) -> Result<PathBuf> {
    let root = cmd::workspace_root();
    let started = Instant::now();
    let profile = if release { "release" } else { "debug" };
    println!("==> building the gateway binary ({profile})");
    let mut build = Cmd::new("cargo")
        .cwd(&root)
        .without_cargo_run_env()
        .env("GATEWAY_EBPF_OBJECT", ebpf_object)
        .args(["build", "--locked", "-p", "gateway", "--bins"]);
    if release {
        build = build.arg("--release");
    }
    build.run()?;
    let bin = cmd::host_target_dir(&root).join(profile).join("gateway");
    if !bin.is_file() {
        bail!("the build succeeded but {} does not exist", bin.display());
    }
    println!(
        "==> gateway binary ready: {} ({:.1} s)",
        cmd::show_path(&bin),
        started.elapsed().as_secs_f64()
    );
    Ok(bin)
}
