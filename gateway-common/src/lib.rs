//! Types shared by the kernel programs (`gateway-ebpf`) and user space (`gateway`).
//!
//! Everything that crosses the user/kernel boundary lives here, once: map names, map sizes,
//! `#[repr(C)]` keys and values, counter indices and flag bits. The layouts carry explicit
//! padding so that both sides agree byte for byte and `aya::Pod` (behind the `user` feature)
//! is sound.
#![no_std]

/// A source address as a map key: IPv6, or IPv4 mapped as `::ffff:a.b.c.d`, in network order.
///
/// One key type for both families means one set of maps and one lookup per packet.
pub type SourceKey = [u8; 16];

/// Names of the maps as the kernel object defines them; also their file names under the pin path.
pub mod map_name {
    pub const SOURCES: &str = "SOURCES";
    pub const DENY: &str = "DENY";
    pub const DENY_CIDR: &str = "DENY_CIDR";
    pub const ALLOW_CIDR: &str = "ALLOW_CIDR";
    pub const CONFIG: &str = "CONFIG";
    pub const TOTALS: &str = "TOTALS";
    pub const EVENTS: &str = "EVENTS";
    /// One u64 that user space changes (to a fresh random value) after every change to the
    /// allow or deny lists; sources whose cached classification carries another value are
    /// classified again.
    pub const GENERATION: &str = "GENERATION";
    /// The kernel object's data section that holds the generation (global data, read with
    /// one load per packet instead of a map lookup); the loader pins its map as
    /// [`GENERATION`], so user space sees the same single-entry u64 array as before.
    pub const GENERATION_SECTION: &str = ".data.generation";
    /// The generation's symbol in that section, which the loader sets at each load.
    pub const GENERATION_SYMBOL: &str = "GENERATION";
    /// SYN token buckets of IPv6 sources, one per prefix of `DataPlaneConfig::ipv6_prefix`
    /// bits (IPv4 sources keep theirs in `SOURCES`).
    pub const SYN_BUCKETS: &str = "SYN_BUCKETS";
    /// Every map that is pinned, in a stable order.
    pub const ALL: [&str; 9] = [
        SOURCES,
        DENY,
        DENY_CIDR,
        ALLOW_CIDR,
        CONFIG,
        TOTALS,
        EVENTS,
        GENERATION,
        SYN_BUCKETS,
    ];
}

/// Names of the programs in the kernel object.
pub mod program_name {
    pub const XDP: &str = "gateway_xdp";
    pub const TC: &str = "gateway_tc";
}

/// Map capacities. Everything keyed by a source address is bounded: attackers pick sources.
pub mod limits {
    /// Per-source counters (LRU: the least recently seen sources are evicted first).
    pub const MAX_SOURCES: u32 = 131_072;
    /// IPv6 SYN buckets, one per prefix (LRU as well).
    pub const MAX_SYN_BUCKETS: u32 = 65_536;
    /// Exact-address deny entries.
    pub const MAX_DENY: u32 = 65_536;
    /// CIDR deny entries: as many as exact ones, since the abuse engine bans IPv6 sources
    /// by prefix (a /48 holds 65 536 /64s). An LPM trie allocates per entry, not up front.
    pub const MAX_DENY_CIDR: u32 = 65_536;
    /// CIDR allow entries.
    pub const MAX_ALLOW_CIDR: u32 = 16_384;
    /// Ring buffer for rate-limit events, in bytes (a power of two, multiple of the page size).
    pub const EVENTS_BYTES: u32 = 256 * 1024;
    /// IPv6 extension headers skipped while looking for TCP/UDP.
    pub const MAX_IPV6_EXT_HEADERS: u32 = 6;
    /// Bytes of `DenyEntry::reason`.
    pub const REASON_LEN: usize = 64;
}

/// Per-source counters and token-bucket state, written by the kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceStats {
    pub packets: u64,
    pub bytes: u64,
    /// TCP SYNs without ACK (new connection attempts), to any port.
    pub syns: u64,
    /// Packets dropped because the source is denied (exact or CIDR).
    pub drops_deny: u64,
    /// SYNs dropped by the rate limit.
    pub drops_rate: u64,
    /// SYNs that exceeded the rate limit in monitor mode (counted, passed).
    pub monitored_rate: u64,
    /// CLOCK_MONOTONIC ns of the first and the latest packet.
    pub first_seen_ns: u64,
    pub last_seen_ns: u64,
    /// Token bucket: credit in ns (one SYN costs `DataPlaneConfig::syn_cost_ns`), and the time
    /// it was last refilled.
    pub bucket_credit_ns: u64,
    pub bucket_ts_ns: u64,
    /// When the last rate-limit event for this source was sent to user space.
    pub last_event_ns: u64,
    /// The source's classification against the allow and deny lists ([`class`]), cached so
    /// a packet costs one lookup here instead of three. Valid while `cached_gen` equals the
    /// `GENERATION` map's value and, when `cached_until_ns` is not 0, until that time.
    pub cached_class: u32,
    /// Drops of this source not yet added to its deny entry's `hits`. The drop path adds
    /// them in one write when the coarse clock has ticked since the source's previous packet
    /// (so a source sending slower than one packet per tick adds each drop at once) and
    /// before the source is classified again; a flood thus costs no deny-map lookup.
    pub pending_hits: u32,
    pub cached_gen: u64,
    pub cached_until_ns: u64,
}

/// `SourceStats::cached_class` values.
pub mod class {
    /// On no list.
    pub const PASS: u32 = 0;
    /// On no list in force, but a deny entry matched that has expired.
    pub const PASS_EXPIRED: u32 = 1;
    /// On the allow list.
    pub const ALLOWED: u32 = 2;
    /// Exact-address deny entry in force.
    pub const DENY_EXACT: u32 = 3;
    /// CIDR deny entry in force.
    pub const DENY_CIDR: u32 = 4;
}

/// Who created a deny entry.
pub mod origin {
    pub const MANUAL: u32 = 1;
    pub const CONFIG: u32 = 2;
    pub const AUTH_FAILURES: u32 = 3;
    pub const RATE: u32 = 4;
    pub const CLIENT_ERRORS: u32 = 5;
    pub const TLS_FAILURES: u32 = 6;
    pub const CONNECTIONS: u32 = 7;
    pub const KERNEL_RATE: u32 = 8;
}

/// A deny decision, for an exact address (`DENY`) or a prefix (`DENY_CIDR`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DenyEntry {
    /// CLOCK_MONOTONIC ns after which the entry no longer drops; 0 = until removed.
    pub expires_ns: u64,
    /// CLOCK_MONOTONIC ns when the entry was written.
    pub created_ns: u64,
    /// Packets dropped because of this entry (kernel increments).
    pub hits: u64,
    /// One of [`origin`].
    pub origin: u32,
    pub _pad: u32,
    /// Free text, UTF-8, NUL-padded.
    pub reason: [u8; limits::REASON_LEN],
}

impl Default for DenyEntry {
    fn default() -> Self {
        Self {
            expires_ns: 0,
            created_ns: 0,
            hits: 0,
            origin: 0,
            _pad: 0,
            reason: [0; limits::REASON_LEN],
        }
    }
}

/// An allow-list entry: never dropped, never rate limited. The prefix is the key; the value
/// is reserved (allowed traffic is counted per source and in the totals).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllowEntry {
    pub _reserved: u64,
}

/// `DataPlaneConfig::flags` bits.
pub mod config_flag {
    /// Rate-limit SYNs to protected ports.
    pub const SYN_LIMIT: u32 = 1 << 0;
    /// Drop what exceeds the rate; without it, count and pass (monitor mode).
    pub const ENFORCE: u32 = 1 << 1;
}

/// Words in the protected-port bitmap (one bit per TCP port).
pub const PORT_BITMAP_WORDS: usize = 65_536 / 64;

/// The single entry of the `CONFIG` array, written by user space.
///
/// Rates are pre-computed into nanoseconds of credit so the kernel never divides.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataPlaneConfig {
    /// [`config_flag`] bits.
    pub flags: u32,
    /// IPv6 sources share one SYN bucket per prefix of this many bits (as the abuse engine
    /// counts them), so rotating addresses inside a /64 buys no extra connections. 0 or
    /// 128: one bucket per address.
    pub ipv6_prefix: u32,
    /// Credit one SYN costs: 1e9 / rate.
    pub syn_cost_ns: u64,
    /// Bucket capacity: burst × cost.
    pub syn_burst_ns: u64,
    /// At most one rate-limit event per source per this interval.
    pub event_interval_ns: u64,
    /// Protected TCP destination ports, bit `p % 64` of word `p / 64`.
    pub ports: [u64; PORT_BITMAP_WORDS],
}

impl Default for DataPlaneConfig {
    fn default() -> Self {
        Self {
            flags: 0,
            ipv6_prefix: 0,
            syn_cost_ns: 0,
            syn_burst_ns: 0,
            event_interval_ns: 0,
            ports: [0; PORT_BITMAP_WORDS],
        }
    }
}

impl DataPlaneConfig {
    /// Marks `port` as protected.
    pub fn protect_port(&mut self, port: u16) {
        self.ports[usize::from(port) / 64] |= 1u64 << (port % 64);
    }

    /// Whether SYNs to `port` are rate limited.
    #[inline(always)]
    pub fn is_protected(&self, port: u16) -> bool {
        self.ports[usize::from(port >> 6)] & (1u64 << (port & 63)) != 0
    }
}

/// A SYN token bucket shared by the IPv6 sources of one prefix (see
/// `DataPlaneConfig::ipv6_prefix`); the same fields as in [`SourceStats`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SynBucket {
    pub credit_ns: u64,
    pub ts_ns: u64,
    pub last_event_ns: u64,
    /// SYNs over the rate (dropped or monitored) from the whole prefix.
    pub limited: u64,
}

/// The map key of the prefix of `prefix_len` bits an address belongs to.
#[inline(always)]
pub fn prefix_key(src: &SourceKey, prefix_len: u32) -> SourceKey {
    let mut out = *src;
    let mut i = 0;
    while i < 16 {
        let bit = (i as u32) * 8;
        if bit >= prefix_len {
            out[i] = 0;
        } else if prefix_len - bit < 8 {
            out[i] &= (0xffu32 << (8 - (prefix_len - bit))) as u8;
        }
        i += 1;
    }
    out
}

/// A rate-limit trip reported to user space through `EVENTS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateLimitEvent {
    pub addr: SourceKey,
    /// CLOCK_MONOTONIC ns of the SYN that tripped the limit.
    pub ts_ns: u64,
    /// The source's total rate-limited SYNs so far (dropped or monitored).
    pub limited_total: u64,
    pub dst_port: u16,
    /// 1 when the SYN was dropped, 0 in monitor mode.
    pub enforced: u8,
    pub _pad: [u8; 5],
}

/// Indices of the global per-CPU counters in `TOTALS`.
pub mod counter {
    /// Every packet the program saw.
    pub const PACKETS: u32 = 0;
    /// Bytes of every packet the program saw.
    pub const BYTES: u32 = 1;
    /// Packets passed (whatever the reason).
    pub const PASSED: u32 = 2;
    /// Dropped: exact-address deny entry.
    pub const DROP_DENY: u32 = 3;
    /// Dropped: CIDR deny entry.
    pub const DROP_DENY_CIDR: u32 = 4;
    /// Dropped: SYN over the per-source rate.
    pub const DROP_RATE: u32 = 5;
    /// Over the rate in monitor mode: counted and passed.
    pub const MONITOR_RATE: u32 = 6;
    /// Source on the allow list (passed without deny or rate checks).
    pub const ALLOWED: u32 = 7;
    /// Truncated or malformed headers (passed untouched).
    pub const MALFORMED: u32 = 8;
    /// Not IPv4/IPv6 (ARP and the like; passed).
    pub const NON_IP: u32 = 9;
    /// TCP SYN without ACK.
    pub const NEW_TCP: u32 = 10;
    /// IP fragments (IPv4 MF/offset, IPv6 fragment header).
    pub const FRAGMENTS: u32 = 11;
    /// Rate-limit events lost because the ring buffer was full.
    pub const EVENTS_LOST: u32 = 12;
    /// Packets from a source whose deny entry has expired (passed).
    pub const DENY_EXPIRED: u32 = 13;
    pub const IPV4: u32 = 14;
    pub const IPV6: u32 = 15;
    /// Number of counters.
    pub const COUNT: u32 = 16;
    /// Stable names, indexed by counter; used by the CLI's JSON and the metrics.
    pub const NAMES: [&str; COUNT as usize] = [
        "packets",
        "bytes",
        "passed",
        "dropped_deny",
        "dropped_deny_cidr",
        "dropped_rate",
        "monitored_rate",
        "allowed",
        "malformed",
        "non_ip",
        "new_tcp",
        "fragments",
        "events_lost",
        "deny_expired",
        "ipv4",
        "ipv6",
    ];
}

/// The single entry of the per-CPU `TOTALS` array: all global counters in one slot, so a
/// packet costs one map lookup however many counters it touches. Indexed by [`counter`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub counters: [u64; counter::COUNT as usize],
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: every type is `#[repr(C)]`, made only of integers and integer arrays, with the
    // padding spelled out as fields, so any bit pattern is valid and no byte is uninitialised.
    unsafe impl aya::Pod for super::SourceStats {}
    unsafe impl aya::Pod for super::DenyEntry {}
    unsafe impl aya::Pod for super::AllowEntry {}
    unsafe impl aya::Pod for super::DataPlaneConfig {}
    unsafe impl aya::Pod for super::RateLimitEvent {}
    unsafe impl aya::Pod for super::Totals {}
    unsafe impl aya::Pod for super::SynBucket {}
}
