//! The kernel programs stamp time with `bpf_ktime_get_ns`, which is CLOCK_MONOTONIC; user space
//! converts TTLs and ages with the same clock.

use std::time::Duration;

/// CLOCK_MONOTONIC now, in nanoseconds.
pub fn monotonic_ns() -> u64 {
    let ts = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    // tv_sec and tv_nsec of CLOCK_MONOTONIC are never negative.
    (ts.tv_sec as u64)
        .saturating_mul(1_000_000_000)
        .saturating_add(ts.tv_nsec as u64)
}

/// The monotonic expiry for a TTL from now; `None` (no TTL) is 0, "until removed".
pub fn expiry_ns(ttl: Option<Duration>) -> u64 {
    match ttl {
        None => 0,
        Some(ttl) => monotonic_ns()
            .saturating_add(u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX))
            .max(1),
    }
}

/// Time left before `expires_ns`: `None` for "until removed", zero once expired.
pub fn time_left(expires_ns: u64, now_ns: u64) -> Option<Duration> {
    (expires_ns != 0).then(|| Duration::from_nanos(expires_ns.saturating_sub(now_ns)))
}
