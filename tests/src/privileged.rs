//! Privileged tests (BPF, netns, veth) run in CI and on any root shell. They are never skipped
//! silently: without root they fail and say what is missing, unless the developer opted out
//! explicitly with `GATEWAY_SKIP_PRIVILEGED=1` (CI never sets it).

/// The opt-out variable for unprivileged developer machines.
pub const SKIP_VAR: &str = "GATEWAY_SKIP_PRIVILEGED";

/// Returns `true` when the test may run; `false` (after saying so) when the developer opted
/// out; panics with what is missing otherwise.
pub fn require(test: &str) -> bool {
    if std::env::var(SKIP_VAR).as_deref() == Ok("1") {
        eprintln!("SKIPPED {test}: {SKIP_VAR}=1 (privileged test opted out)");
        return false;
    }
    if !nix::unistd::geteuid().is_root() {
        panic!(
            "{test} needs root (BPF syscall, network namespaces, veth, bpffs). Run the tests \
             as root (as CI does), or set {SKIP_VAR}=1 to opt out on an unprivileged machine."
        );
    }
    if !std::path::Path::new("/sys/fs/bpf").exists() {
        panic!("{test} needs /sys/fs/bpf (bpffs); mount it with `mount -t bpf bpf /sys/fs/bpf`");
    }
    true
}
