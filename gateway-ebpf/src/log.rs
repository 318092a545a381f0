//! Rare events worth a log line, sent through aya-log's `AYA_LOGS` ring buffer to user space
//! (which forwards them into `tracing` under the target `gateway::ebpf`).
//!
//! Off the hot path: each call site first asks [`first_deny_on`] or [`malformed_on`], which
//! read aya-log's `AYA_LOG_LEVEL` global. User space sets it at load time and the kernel
//! freezes it (read-only data), so with the level off the verifier sees a constant and
//! removes the logging branch: the pass and drop paths run the same instructions as without
//! logging. The line itself is built in a separate function the hot code only calls.
//!
//! Not an attack amplifier: a packet can trigger a line (a spoofed source in a denied CIDR,
//! a flood of malformed frames), so every kind of line is limited per CPU to one per
//! interval; the next line says how many were held back.

use aya_ebpf::{helpers::bpf_ktime_get_coarse_ns, macros::map, maps::PerCpuArray};
// The level check the log macros make themselves; exact-pinned crate (see Cargo.toml).
use aya_log_ebpf::macro_support::{level_enabled, Level};
use aya_log_ebpf::{debug, info};
use gateway_common::SourceKey;

/// Per CPU and kind: when the last line was sent, and lines held back since.
#[repr(C)]
pub struct Limit {
    last_ns: u64,
    held_back: u64,
}

/// Slots of [`LOG_LIMITS`].
const FIRST_DENY: u32 = 0;
const MALFORMED: u32 = 1;
const KINDS: u32 = 2;

/// At most this many first-drop lines per CPU per second: enough to see which sources a
/// new ban hits, bounded when a denied CIDR is flooded from forged addresses.
const FIRST_DENY_INTERVAL_NS: u64 = 100_000_000;
/// At most one malformed-packet sample per CPU per second.
const MALFORMED_INTERVAL_NS: u64 = 1_000_000_000;

#[map]
static LOG_LIMITS: PerCpuArray<Limit> = PerCpuArray::with_max_entries(KINDS, 0);

/// Whether first deny drops are logged (level info or finer).
#[inline(always)]
pub fn first_deny_on() -> bool {
    level_enabled(Level::Info)
}

/// Whether malformed packets are sampled (level debug or finer).
#[inline(always)]
pub fn malformed_on() -> bool {
    level_enabled(Level::Debug)
}

/// `Some(lines held back since the previous one)` when a line of `kind` may go out now.
#[inline(always)]
fn allow(kind: u32, interval_ns: u64) -> Option<u64> {
    let slot = LOG_LIMITS.get_ptr_mut(kind)?;
    // SAFETY: a per-CPU array slot, only this CPU touches it while the program runs.
    let slot = unsafe { &mut *slot };
    // SAFETY: the helper only reads the clock.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if slot.last_ns != 0 && now.wrapping_sub(slot.last_ns) < interval_ns {
        slot.held_back += 1;
        return None;
    }
    slot.last_ns = now;
    let held_back = slot.held_back;
    slot.held_back = 0;
    Some(held_back)
}

/// The first packet dropped from `src` since it got its `SOURCES` entry (callers check
/// [`first_deny_on`] first).
#[inline(never)]
pub fn first_deny(src: &SourceKey, ipv4: bool) {
    let Some(held_back) = allow(FIRST_DENY, FIRST_DENY_INTERVAL_NS) else {
        return;
    };
    if ipv4 {
        let v4 = [src[12], src[13], src[14], src[15]];
        info!(
            &(),
            "first drop of denied source {:i}; later drops of it are only counted; {} such lines held back before this one",
            v4,
            held_back
        );
    } else {
        info!(
            &(),
            "first drop of denied source {:i}; later drops of it are only counted; {} such lines held back before this one",
            *src,
            held_back
        );
    }
}

/// A packet whose link or network header is cut short or invalid, `len` bytes (callers
/// check [`malformed_on`] first). It passed to the kernel stack.
#[inline(never)]
pub fn malformed(len: u64) {
    let Some(held_back) = allow(MALFORMED, MALFORMED_INTERVAL_NS) else {
        return;
    };
    debug!(
        &(),
        "malformed packet sample: {} bytes, link or network header truncated or invalid, passed to the kernel stack; {} such packets not sampled before this one",
        len,
        held_back
    );
}
