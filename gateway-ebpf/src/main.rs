//! The gateway's kernel data plane: one packet path, attached as XDP or as TC clsact ingress.
//!
//! Per packet: parse (Ethernet, up to two VLAN tags, IPv4/IPv6, TCP/UDP) → the source's
//! entry (counters, and its classification against the allow list, the exact deny map and
//! the CIDR deny list, cached until user space changes a list or the matched entry expires)
//! → SYN token bucket for protected ports. A passing packet from a known source thus costs
//! one hash lookup. Anything that cannot be parsed passes untouched and is counted: the
//! kernel stack is the authority on malformed packets, we never drop one by mistake.
//!
//! Per-source and per-entry counters use plain adds: a locked add per counter would cost more
//! than the rest of the path, and two CPUs updating one source at the same instant lose at
//! most a count. The global totals are per-CPU and exact. A drop adds to its deny entry's
//! `hits` at most once per clock tick per source (see `SourceStats::pending_hits`), so a
//! flood's drops cost one map lookup, the source's.
#![no_std]
#![no_main]

mod global;
mod log;
mod parse;

use aya_ebpf::{
    bindings::{xdp_action, TC_ACT_OK, TC_ACT_SHOT},
    helpers::{bpf_jiffies64, bpf_ktime_get_coarse_ns, bpf_map_lookup_elem},
    macros::{classifier, map, xdp},
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
    programs::{TcContext, XdpContext},
};
use core::ffi::c_void;
use gateway_common::{
    class, config_flag, counter, limits, prefix_key, AllowEntry, DataPlaneConfig, DenyEntry,
    RateLimitEvent, SourceKey, SourceStats, SynBucket, Totals,
};
use global::Word;
use parse::{Packet, Parsed};

#[map]
static SOURCES: LruHashMap<SourceKey, SourceStats> = LruHashMap::pinned(limits::MAX_SOURCES, 0);

#[map]
static DENY: HashMap<SourceKey, DenyEntry> = HashMap::pinned(limits::MAX_DENY, 0);

#[map]
static DENY_CIDR: LpmTrie<SourceKey, DenyEntry> = LpmTrie::pinned(limits::MAX_DENY_CIDR, 0);

#[map]
static ALLOW_CIDR: LpmTrie<SourceKey, AllowEntry> = LpmTrie::pinned(limits::MAX_ALLOW_CIDR, 0);

#[map]
static CONFIG: Array<DataPlaneConfig> = Array::pinned(1, 0);

/// The lists' generation: user space writes a fresh value after every change to the allow or
/// deny lists, and a source whose cached classification carries another value is classified
/// again. Global data rather than an array map, so that every packet reads it with one load
/// (see [`global`]); the loader pins this section's map as `GENERATION`
/// (`gateway_common::map_name::GENERATION_SECTION`), where `gateway deny` and the abuse engine
/// write it, and sets a fresh value at each load (which also invalidates every cache).
#[unsafe(no_mangle)]
#[unsafe(link_section = ".data.generation")]
static GENERATION: Word = Word::new(0);

#[map]
static TOTALS: PerCpuArray<Totals> = PerCpuArray::pinned(1, 0);

#[map]
static SYN_BUCKETS: LruHashMap<SourceKey, SynBucket> =
    LruHashMap::pinned(limits::MAX_SYN_BUCKETS, 0);

#[map]
static EVENTS: RingBuf = RingBuf::pinned(limits::EVENTS_BYTES, 0);

/// The latest coarse clock reading and the jiffies it belongs to (see [`coarse_now`]), shared
/// by all CPUs: written about once per tick, so its cache line stays shared and a read is a
/// load, where a per-CPU map costs a lookup per packet. Not pinned: a fresh program starts
/// with an empty cache.
#[unsafe(link_section = ".bss.clock")]
static CLOCK_JIFFIES: Word = Word::new(0);
#[unsafe(link_section = ".bss.clock")]
static CLOCK_NOW_NS: Word = Word::new(0);

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
    let _ = ctx.pull_data(if len < TC_PULL_BYTES {
        len
    } else {
        TC_PULL_BYTES
    });
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
            if log::malformed_on() {
                log::malformed(len);
            }
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
    totals[if pkt.ipv4 {
        counter::IPV4
    } else {
        counter::IPV6
    } as usize] += 1;
    if pkt.fragment {
        totals[counter::FRAGMENTS as usize] += 1;
    }
    if pkt.l4_truncated {
        totals[counter::MALFORMED as usize] += 1;
    }
    if pkt.syn {
        totals[counter::NEW_TCP as usize] += 1;
    }
    let src = pkt.source_key();
    // The lookup comes first: the values below are then computed after the call and need
    // not be kept across it (the call clobbers the registers that would hold them).
    // By reference: by value, the compiler copies the key into a temporary byte by byte
    // (33 more instructions on every path, `bench/xdp_pathlen.py`).
    #[allow(clippy::needless_borrows_for_generic_args)]
    let known = SOURCES.get_ptr_mut(&src);
    let now = coarse_now();
    // Read before any list lookup: a change that lands after it bumps the generation
    // again, so the next packet classifies afresh.
    let generation = GENERATION.get();
    let found = match known {
        // SAFETY: a value pointer from a successful lookup, valid for this program run.
        Some(p) => Some((unsafe { &mut *p }, false)),
        None => new_source(&src, now),
    };
    let Some((stats, created)) = found else {
        // Only if the LRU map refused an insert; classify without remembering.
        let mut scratch = SourceStats::default();
        classify(&mut scratch, &src, now, generation);
        return apply_class(&mut scratch, &src, totals, true);
    };
    stats.packets += 1;
    stats.bytes += len;
    if pkt.syn {
        stats.syns += 1;
    }
    // A new clock tick since the source's previous packet: time to add pending hits.
    let mut flush = stats.last_seen_ns != now;
    stats.last_seen_ns = now;
    if created
        || stats.cached_gen != generation
        || (stats.cached_until_ns != 0 && now >= stats.cached_until_ns)
    {
        // The pending hits belong to the entry of the class about to be replaced.
        flush_hits(stats, &src);
        classify(stats, &src, now, generation);
        flush = true;
    }
    let verdict = apply_class(stats, &src, totals, flush);
    if log::first_deny_on() && verdict == Verdict::Drop && stats.drops_deny == 1 {
        log::first_deny(&src, pkt.ipv4);
    }
    if verdict == Verdict::Drop || stats.cached_class == class::ALLOWED {
        return verdict;
    }

    if pkt.syn {
        if let Some(cfg) = CONFIG.get(0) {
            if cfg.flags & config_flag::SYN_LIMIT != 0 && cfg.is_protected(pkt.dst_port) {
                return rate_limit(stats, cfg, pkt, &src, now, totals);
            }
        }
    }
    Verdict::Pass
}

/// CLOCK_MONOTONIC_COARSE in ns: a tick (1-4 ms) of resolution is plenty for TTLs and
/// connection rates. The clock helper is a call into the timekeeping code (~13 ns of an
/// ~85 ns packet in `BPF_PROG_TEST_RUN`), while `bpf_jiffies64` is inlined by the verifier
/// into one load, and the coarse clock only moves when the tick advances jiffies. So the
/// latest reading is kept with the jiffies it was taken at, and the helper is called again
/// only once jiffies have moved.
///
/// The timekeeping CPU advances jiffies first and the coarse clock just after; a reading
/// taken in between is the previous tick's. The cache therefore only takes a reading that
/// differs from the one it holds, and until the clock has moved every packet calls the helper
/// (and gets the same value the helper alone would give). What the cached value can miss is a
/// step of the coarse clock without a jiffies change (a `settimeofday`/`adjtimex` call
/// accumulates the time elapsed since the tick): less than one tick, until the next tick.
///
/// The cache is shared by all CPUs and its two words are not written atomically: the reading
/// is stored before its jiffies, so a CPU that sees the new jiffies sees the new reading on
/// x86 (stores and loads keep their order); where loads may pass each other (arm64) it may
/// get the previous tick's reading, as the helper itself can just after a tick. Two CPUs
/// storing at once store readings of the same tick or of adjacent ones. Either way the
/// error is under one tick, until the next.
#[inline(always)]
fn coarse_now() -> u64 {
    // SAFETY: the helper only reads the jiffies counter.
    let jiffies = unsafe { bpf_jiffies64() };
    if CLOCK_JIFFIES.get() == jiffies {
        return CLOCK_NOW_NS.get();
    }
    // SAFETY: the helper only reads the clock.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    if now != CLOCK_NOW_NS.get() {
        CLOCK_NOW_NS.set(now);
        CLOCK_JIFFIES.set(jiffies);
    }
    now
}

/// Looks the source up in the allow list, the exact deny map and the CIDR deny list, and
/// caches the outcome in its stats until the lists change or the matched entry expires.
#[inline(always)]
fn classify(stats: &mut SourceStats, src: &SourceKey, now: u64, generation: u64) {
    stats.cached_gen = generation;
    stats.cached_until_ns = 0;
    let prefix = Key::new(128, *src);
    if ALLOW_CIDR.get(&prefix).is_some() {
        stats.cached_class = class::ALLOWED;
        return;
    }
    let mut expired = false;
    // Exact entries first: they carry a TTL and are what the abuse engine writes.
    if let Some(entry) = DENY.get_ptr(src) {
        // SAFETY: a value pointer from a successful lookup, valid for this program run.
        let entry = unsafe { &*entry };
        if deny_in_force(entry, now) {
            stats.cached_class = class::DENY_EXACT;
            stats.cached_until_ns = entry.expires_ns;
            return;
        }
        expired = true;
    }
    if let Some(entry) = DENY_CIDR.get(&prefix) {
        if deny_in_force(entry, now) {
            stats.cached_class = class::DENY_CIDR;
            stats.cached_until_ns = entry.expires_ns;
            return;
        }
        expired = true;
    }
    stats.cached_class = if expired {
        class::PASS_EXPIRED
    } else {
        class::PASS
    };
}

/// Counts and decides by the cached class. A drop adds to the source's pending hits, and
/// only when `flush` looks its entry up to add them; passing packets cost no list lookup.
#[inline(always)]
fn apply_class(
    stats: &mut SourceStats,
    src: &SourceKey,
    totals: &mut [u64; counter::COUNT as usize],
    flush: bool,
) -> Verdict {
    match stats.cached_class {
        class::ALLOWED => {
            totals[counter::ALLOWED as usize] += 1;
            Verdict::Pass
        }
        class::DENY_EXACT | class::DENY_CIDR => {
            stats.drops_deny += 1;
            stats.pending_hits += 1;
            if flush {
                flush_hits(stats, src);
            }
            totals[if stats.cached_class == class::DENY_EXACT {
                counter::DROP_DENY
            } else {
                counter::DROP_DENY_CIDR
            } as usize] += 1;
            Verdict::Drop
        }
        class::PASS_EXPIRED => {
            totals[counter::DENY_EXPIRED as usize] += 1;
            Verdict::Pass
        }
        _ => Verdict::Pass,
    }
}

/// Adds the source's pending hits to the deny entry of its cached class (if it still
/// exists).
#[inline(always)]
fn flush_hits(stats: &mut SourceStats, src: &SourceKey) {
    if stats.pending_hits == 0 {
        return;
    }
    let entry = match stats.cached_class {
        class::DENY_EXACT => DENY.get_ptr_mut(src),
        class::DENY_CIDR => {
            let prefix = Key::new(128, *src);
            // SAFETY: the map pointer is the map definition the loader relocated; the
            // helper returns a pointer to the value or null.
            let p = unsafe {
                bpf_map_lookup_elem(
                    &DENY_CIDR as *const _ as *mut c_void,
                    &prefix as *const _ as *const c_void,
                )
            } as *mut DenyEntry;
            (!p.is_null()).then_some(p)
        }
        _ => None,
    };
    if let Some(entry) = entry {
        // SAFETY: a non-null value pointer from a lookup, valid for this program run.
        unsafe { (*entry).hits += u64::from(stats.pending_hits) };
    }
    stats.pending_hits = 0;
}

#[inline(always)]
fn deny_in_force(entry: &DenyEntry, now: u64) -> bool {
    entry.expires_ns == 0 || now < entry.expires_ns
}

/// The counters of a source not yet in `SOURCES`, created (full bucket) on its first
/// packet; `true` when this call created them.
#[inline(always)]
fn new_source(src: &SourceKey, now: u64) -> Option<(&'static mut SourceStats, bool)> {
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
    let _ = SOURCES.insert(src, fresh, aya_ebpf::bindings::BPF_NOEXIST.into());
    // SAFETY: a value pointer from a successful lookup, valid for this program run.
    SOURCES.get_ptr_mut(src).map(|p| (unsafe { &mut *p }, true))
}

/// The SYN bucket of an IPv6 source's prefix, created full on its first SYN; `None` when
/// the source is counted per address (IPv4, or prefix aggregation off) or the LRU map
/// refused an insert.
#[inline(always)]
fn prefix_bucket(
    cfg: &DataPlaneConfig,
    pkt: &Packet,
    src: &SourceKey,
    now: u64,
) -> Option<&'static mut SynBucket> {
    if pkt.ipv4 || cfg.ipv6_prefix == 0 || cfg.ipv6_prefix >= 128 {
        return None;
    }
    let key = prefix_key(src, cfg.ipv6_prefix);
    if let Some(p) = SYN_BUCKETS.get_ptr_mut(key) {
        // SAFETY: a value pointer from a successful lookup, valid for this program run.
        return Some(unsafe { &mut *p });
    }
    let fresh = SynBucket {
        credit_ns: cfg.syn_burst_ns,
        ts_ns: now,
        ..SynBucket::default()
    };
    let _ = SYN_BUCKETS.insert(key, fresh, aya_ebpf::bindings::BPF_NOEXIST.into());
    // SAFETY: as above.
    SYN_BUCKETS.get_ptr_mut(key).map(|p| unsafe { &mut *p })
}

/// Takes a token from a bucket (`credit`, `ts`): credit in ns, one SYN costs
/// `syn_cost_ns`, time refills it one for one up to `syn_burst_ns`. `true` when taken.
#[inline(always)]
fn take_token(credit: &mut u64, ts: &mut u64, cfg: &DataPlaneConfig, now: u64) -> bool {
    let elapsed = now.saturating_sub(*ts);
    let mut c = credit.saturating_add(elapsed);
    if c > cfg.syn_burst_ns {
        c = cfg.syn_burst_ns;
    }
    *ts = now;
    if c >= cfg.syn_cost_ns {
        *credit = c - cfg.syn_cost_ns;
        return true;
    }
    *credit = c;
    false
}

/// Token bucket on new connections: the source's own (IPv4), or its prefix's (IPv6, see
/// [`prefix_bucket`]). Concurrent SYNs on two CPUs may race on a bucket; the error is at
/// most one token per race.
#[inline(always)]
fn rate_limit(
    stats: &mut SourceStats,
    cfg: &DataPlaneConfig,
    pkt: &Packet,
    src: &SourceKey,
    now: u64,
    totals: &mut [u64; counter::COUNT as usize],
) -> Verdict {
    let shared = prefix_bucket(cfg, pkt, src, now);
    let (taken, last_event) = match shared {
        Some(b) => {
            let taken = take_token(&mut b.credit_ns, &mut b.ts_ns, cfg, now);
            if !taken {
                b.limited += 1;
            }
            (taken, &mut b.last_event_ns)
        }
        None => (
            take_token(
                &mut stats.bucket_credit_ns,
                &mut stats.bucket_ts_ns,
                cfg,
                now,
            ),
            &mut stats.last_event_ns,
        ),
    };
    if taken {
        return Verdict::Pass;
    }

    let enforce = cfg.flags & config_flag::ENFORCE != 0;
    let limited_total = if enforce {
        stats.drops_rate += 1;
        totals[counter::DROP_RATE as usize] += 1;
        stats.drops_rate
    } else {
        stats.monitored_rate += 1;
        totals[counter::MONITOR_RATE as usize] += 1;
        stats.monitored_rate
    };

    if now.saturating_sub(*last_event) >= cfg.event_interval_ns || *last_event == 0 {
        *last_event = now;
        let event = RateLimitEvent {
            addr: *src,
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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
