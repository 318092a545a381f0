//! The gateway's kernel data plane: one packet path, attached as XDP or as TC clsact ingress.
//!
//! Per packet: parse (Ethernet, up to two VLAN tags, IPv4/IPv6, TCP/UDP) → allow list →
//! exact deny → CIDR deny → per-source counters → SYN token bucket for protected ports.
//! Anything that cannot be parsed passes untouched and is counted: the kernel stack is the
//! authority on malformed packets, we never drop one by mistake.
#![no_std]
#![no_main]
// The BPF target has atomic add but no compare-and-swap, so core's `AtomicU64::fetch_add` is
// not available; the intrinsic lowers to the BPF atomic add instruction.
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod parse;

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_OK, TC_ACT_SHOT},
    helpers::bpf_ktime_get_ns,
    macros::{classifier, map, xdp},
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
    programs::{TcContext, XdpContext},
};
use core::intrinsics::{atomic_xadd, AtomicOrdering};
use gateway_common::{
    config_flag, counter, limits, AllowEntry, DataPlaneConfig, DenyEntry, RateLimitEvent,
    SourceKey, SourceStats, Totals,
};
use parse::{Parsed, Packet};

#[map]
static SOURCES: LruHashMap<SourceKey, SourceStats> =
    LruHashMap::pinned(limits::MAX_SOURCES, 0);

#[map]
static DENY: HashMap<SourceKey, DenyEntry> = HashMap::pinned(limits::MAX_DENY, 0);

#[map]
static DENY_CIDR: LpmTrie<SourceKey, DenyEntry> = LpmTrie::pinned(limits::MAX_DENY_CIDR, 0);

#[map]
static ALLOW_CIDR: LpmTrie<SourceKey, AllowEntry> = LpmTrie::pinned(limits::MAX_ALLOW_CIDR, 0);

#[map]
static CONFIG: Array<DataPlaneConfig> = Array::pinned(1, 0);

#[map]
static TOTALS: PerCpuArray<Totals> = PerCpuArray::pinned(1, 0);

#[map]
static EVENTS: RingBuf = RingBuf::pinned(limits::EVENTS_BYTES, 0);

/// What to do with a packet; each program maps it to its own return codes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Pass,
    Drop,
}

#[xdp]
pub fn gateway_xdp(ctx: XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    match process(ctx.data(), ctx.data_end(), len) {
        Verdict::Pass => xdp_action::XDP_PASS,
        Verdict::Drop => xdp_action::XDP_DROP,
    }
}

/// Headers we need in the linear part of an skb: Ethernet + 2 VLAN + IPv6 + extension headers
/// + TCP. Pulling more than the packet has fails, so it is capped at the packet's length.
const TC_PULL_BYTES: u32 = 256;

#[classifier]
pub fn gateway_tc(ctx: TcContext) -> i32 {
    let len = ctx.len();
    // Best effort: if the pull fails the parser sees a short packet and passes it.
    let _ = ctx.pull_data(if len < TC_PULL_BYTES { len } else { TC_PULL_BYTES });
    match process(ctx.data(), ctx.data_end(), u64::from(len)) {
        Verdict::Pass => TC_ACT_OK,
        Verdict::Drop => TC_ACT_SHOT,
    }
}

#[inline(always)]
fn process(data: usize, data_end: usize, len: u64) -> Verdict {
    let Some(totals) = TOTALS.get_ptr_mut(0) else {
        return Verdict::Pass;
    };
    // SAFETY: a per-CPU array slot, only this CPU touches it while the program runs.
    let totals = unsafe { &mut (*totals).counters };
    totals[counter::PACKETS as usize] += 1;
    totals[counter::BYTES as usize] += len;

    let verdict = match parse::parse(data, data_end) {
        Parsed::NonIp => {
            totals[counter::NON_IP as usize] += 1;
            Verdict::Pass
        }
        Parsed::Malformed => {
            totals[counter::MALFORMED as usize] += 1;
            Verdict::Pass
        }
        Parsed::Ip(pkt) => decide(&pkt, len, totals),
    };
    if verdict == Verdict::Pass {
        totals[counter::PASSED as usize] += 1;
    }
    verdict
}

/// The decision for a packet whose source is known.
#[inline(always)]
fn decide(pkt: &Packet, len: u64, totals: &mut [u64; counter::COUNT as usize]) -> Verdict {
    totals[if pkt.ipv4 { counter::IPV4 } else { counter::IPV6 } as usize] += 1;
    if pkt.fragment {
        totals[counter::FRAGMENTS as usize] += 1;
    }
    if pkt.l4_truncated {
        totals[counter::MALFORMED as usize] += 1;
    }
    if pkt.syn {
        totals[counter::NEW_TCP as usize] += 1;
    }
    // SAFETY: the helper only reads the clock.
    let now = unsafe { bpf_ktime_get_ns() };
    let prefix = Key::new(128, pkt.src);

    if let Some(allow) = ALLOW_CIDR.get(&prefix) {
        atomic_add(&allow.hits, 1);
        totals[counter::ALLOWED as usize] += 1;
        if let Some(stats) = source_stats(&pkt.src, now) {
            count_packet(stats, pkt, len, now);
        }
        return Verdict::Pass;
    }

    let mut stats = source_stats(&pkt.src, now);
    if let Some(stats) = stats.as_deref_mut() {
        count_packet(stats, pkt, len, now);
    }

    // Exact entries first: they carry a TTL and are what the abuse engine writes.
    if let Some(entry) = DENY.get_ptr(&pkt.src) {
        // SAFETY: a value pointer from a successful lookup, valid for this program run.
        let entry = unsafe { &*entry };
        if deny_in_force(entry, now) {
            atomic_add(&entry.hits, 1);
            if let Some(stats) = stats.as_deref() {
                atomic_add(&stats.drops_deny, 1);
            }
            totals[counter::DROP_DENY as usize] += 1;
            return Verdict::Drop;
        }
        totals[counter::DENY_EXPIRED as usize] += 1;
    }
    if let Some(entry) = DENY_CIDR.get(&prefix) {
        if deny_in_force(entry, now) {
            atomic_add(&entry.hits, 1);
            if let Some(stats) = stats.as_deref() {
                atomic_add(&stats.drops_deny, 1);
            }
            totals[counter::DROP_DENY_CIDR as usize] += 1;
            return Verdict::Drop;
        }
        totals[counter::DENY_EXPIRED as usize] += 1;
    }

    if pkt.syn {
        if let (Some(stats), Some(cfg)) = (stats, CONFIG.get(0)) {
            if cfg.flags & config_flag::SYN_LIMIT != 0 && cfg.is_protected(pkt.dst_port) {
                return rate_limit(stats, cfg, pkt, now, totals);
            }
        }
    }
    Verdict::Pass
}

#[inline(always)]
fn deny_in_force(entry: &DenyEntry, now: u64) -> bool {
    entry.expires_ns == 0 || now < entry.expires_ns
}

/// The source's counters, created on its first packet (full bucket).
#[inline(always)]
fn source_stats(src: &SourceKey, now: u64) -> Option<&'static mut SourceStats> {
    if let Some(p) = SOURCES.get_ptr_mut(src) {
        // SAFETY: a value pointer from a successful lookup, valid for this program run.
        return Some(unsafe { &mut *p });
    }
    let burst = match CONFIG.get(0) {
        Some(cfg) => cfg.syn_burst_ns,
        None => 0,
    };
    let fresh = SourceStats {
        first_seen_ns: now,
        last_seen_ns: now,
        bucket_credit_ns: burst,
        bucket_ts_ns: now,
        ..SourceStats::default()
    };
    // BPF_NOEXIST: another CPU may have created it in between; then we use theirs.
    let _ = SOURCES.insert(src, &fresh, aya_ebpf::bindings::BPF_NOEXIST.into());
    // SAFETY: as above.
    SOURCES.get_ptr_mut(src).map(|p| unsafe { &mut *p })
}

#[inline(always)]
fn count_packet(stats: &mut SourceStats, pkt: &Packet, len: u64, now: u64) {
    atomic_add(&stats.packets, 1);
    atomic_add(&stats.bytes, len);
    if pkt.syn {
        atomic_add(&stats.syns, 1);
    }
    stats.last_seen_ns = now;
}

/// Token bucket on new connections. The bucket holds nanoseconds of credit; one SYN costs
/// `syn_cost_ns`, time refills it one for one up to `syn_burst_ns`. Concurrent SYNs from one
/// source on two CPUs may race on the bucket; the error is at most one token per race.
#[inline(always)]
fn rate_limit(
    stats: &mut SourceStats,
    cfg: &DataPlaneConfig,
    pkt: &Packet,
    now: u64,
    totals: &mut [u64; counter::COUNT as usize],
) -> Verdict {
    let elapsed = now.saturating_sub(stats.bucket_ts_ns);
    let mut credit = stats.bucket_credit_ns.saturating_add(elapsed);
    if credit > cfg.syn_burst_ns {
        credit = cfg.syn_burst_ns;
    }
    stats.bucket_ts_ns = now;
    if credit >= cfg.syn_cost_ns {
        stats.bucket_credit_ns = credit - cfg.syn_cost_ns;
        return Verdict::Pass;
    }
    stats.bucket_credit_ns = credit;

    let enforce = cfg.flags & config_flag::ENFORCE != 0;
    let limited_total = if enforce {
        atomic_add(&stats.drops_rate, 1);
        totals[counter::DROP_RATE as usize] += 1;
        stats.drops_rate
    } else {
        atomic_add(&stats.monitored_rate, 1);
        totals[counter::MONITOR_RATE as usize] += 1;
        stats.monitored_rate
    };

    if now.saturating_sub(stats.last_event_ns) >= cfg.event_interval_ns || stats.last_event_ns == 0
    {
        stats.last_event_ns = now;
        let event = RateLimitEvent {
            addr: pkt.src,
            ts_ns: now,
            limited_total,
            dst_port: pkt.dst_port,
            enforced: u8::from(enforce),
            _pad: [0; 5],
        };
        if EVENTS.output::<RateLimitEvent>(&event, 0).is_err() {
            totals[counter::EVENTS_LOST as usize] += 1;
        }
    }

    if enforce {
        Verdict::Drop
    } else {
        Verdict::Pass
    }
}

/// Adds to a counter shared between CPUs. The result is unused so this compiles to the
/// non-fetching BPF atomic add, which every kernel with BPF atomics supports.
#[inline(always)]
fn atomic_add(field: &u64, v: u64) {
    let ptr = field as *const u64 as *mut u64;
    // SAFETY: `field` points into a map value that lives for the whole program run, is
    // 8-byte aligned (all map values are), and is only ever written atomically; plain reads
    // of it tolerate a concurrent add.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(ptr, v) };
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
