//! What the gateway's criterion benches share: the privilege check and latency percentiles.

use std::time::Duration;

/// Fails the bench, saying `why` it needs root, unless it runs as root (benches are never
/// skipped silently either).
pub fn assert_root(why: &str) {
    assert!(nix::unistd::geteuid().is_root(), "{why}: run it as root");
}

/// The `p` (0 to 1) percentile of `sorted`, which must not be empty.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}
