//! Finds the eBPF object that `cargo xtask build` produced and hands its path to the crate,
//! which embeds it. Building the object here would rebuild it for every profile (dev,
//! release, clippy); xtask builds it once.
use std::path::PathBuf;

fn main() {
    rustc_version();
    println!("cargo:rerun-if-env-changed=GATEWAY_EBPF_OBJECT");
    let path = match std::env::var_os("GATEWAY_EBPF_OBJECT") {
        Some(p) => PathBuf::from(p),
        None => {
            let manifest =
                PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
            manifest.join("../target/ebpf/bpfel-unknown-none/release/gateway")
        }
    };
    if !path.is_file() {
        eprintln!(
            "error: the eBPF object {} does not exist.\n\
             Build it first with `cargo xtask build` (it also builds this crate), or point\n\
             GATEWAY_EBPF_OBJECT at a built object.",
            path.display()
        );
        std::process::exit(1);
    }
    let path = path.canonicalize().unwrap_or(path);
    println!("cargo:rerun-if-changed={}", path.display());
    println!("cargo:rustc-env=GATEWAY_EBPF_OBJECT={}", path.display());
}

/// `rustc --version` of the compiler cargo uses, for `gateway_build_info` (nothing when it
/// does not answer: the label then says `unknown`). A new compiler rebuilds everything, this
/// script's output included, so the value cannot go stale.
fn rustc_version() {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let Ok(out) = std::process::Command::new(rustc).arg("--version").output() else {
        return;
    };
    let version = String::from_utf8_lossy(&out.stdout);
    let version = version.trim();
    if out.status.success() && !version.is_empty() && !version.contains('\n') {
        println!("cargo:rustc-env=GATEWAY_RUSTC_VERSION={version}");
    }
}
