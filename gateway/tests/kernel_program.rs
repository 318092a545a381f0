//! The kernel programs on crafted packets, through `BPF_PROG_TEST_RUN`: the real object,
//! loaded into the kernel and checked by the verifier, with its maps pinned in a private
//! bpffs. Time-dependent behaviour (token-bucket refill, expiry) is driven by writing the
//! state in the maps, not by sleeping; only the test of the program's clock cache lets
//! real time pass (about 0.3 s).

mod kernel;

use aya::maps::{MapData, RingBuf};
use aya::programs::SchedClassifier;
use gateway::config::EbpfConfig;
use gateway::ebpf::{clock, loader};
use gateway_common::{counter, map_name, program_name, RateLimitEvent};
use gateway_tests::packet::{self, Ext, ACK, PROTO_TCP, PROTO_UDP, SYN};
use kernel::{Loaded, XDP_DROP, XDP_PASS};
use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;

/// The object loaded with both programs ready for test runs.
type Harness = Loaded;

fn harness(name: &str) -> Option<Harness> {
    let mut k = kernel::load("k", name, loader::load_object)?;
    let tc: &mut SchedClassifier = k
        .ebpf
        .program_mut(program_name::TC)
        .unwrap()
        .try_into()
        .unwrap();
    loader::load_program(|| tc.load()).expect("the verifier accepts the TC program");
    Some(k)
}

impl Harness {
    fn xdp(&self, pkt: &[u8]) -> u32 {
        kernel::xdp(&self.ebpf, pkt)
    }

    fn tc(&self, pkt: &[u8]) -> u32 {
        self.try_tc(pkt)
            .expect("the kernel builds an skb from this packet")
    }

    /// `None` when the kernel refuses to build an skb from `pkt` (EINVAL).
    fn try_tc(&self, pkt: &[u8]) -> Option<u32> {
        match kernel::run::<SchedClassifier>(&self.ebpf, program_name::TC, pkt) {
            Ok(r) => Some(r),
            Err(aya::programs::ProgramError::SyscallError(e))
                if e.io_error.raw_os_error() == Some(libc::EINVAL) =>
            {
                None
            }
            Err(e) => panic!("test run: {e}"),
        }
    }

    fn configure(&mut self, cfg: &EbpfConfig) {
        self.maps
            .write_config(&cfg.to_kernel().expect("valid config"))
            .unwrap();
    }

    fn deny(&mut self, target: &str, expires_ns: u64) {
        kernel::deny(&mut self.maps, target, expires_ns);
    }

    /// Totals by name, only the non-zero ones.
    fn totals(&self) -> BTreeMap<&'static str, u64> {
        let t = self.maps.totals().unwrap();
        counter::NAMES
            .iter()
            .zip(t)
            .filter(|(_, v)| *v != 0)
            .map(|(n, v)| (*n, v))
            .collect()
    }

    fn source(&self, addr: &str) -> gateway_common::SourceStats {
        self.maps
            .source(addr.parse().unwrap())
            .unwrap()
            .unwrap_or_else(|| panic!("{addr} is tracked"))
    }

    /// Moves a source's token bucket `ns` into the past, as if that much time had passed.
    fn age_bucket(&mut self, addr: &str, ns: u64) {
        let a: IpAddr = addr.parse().unwrap();
        let mut s = self.source(addr);
        s.bucket_ts_ns = s.bucket_ts_ns.saturating_sub(ns);
        self.maps.set_source(a, &s).unwrap();
    }

    fn events(&mut self) -> Vec<RateLimitEvent> {
        let map = self.ebpf.map_mut(map_name::EVENTS).unwrap();
        let mut ring: RingBuf<&mut MapData> = RingBuf::try_from(map).unwrap();
        let mut out = Vec::new();
        while let Some(item) = ring.next() {
            out.push(gateway::ebpf::events::decode(&item).expect("event layout"));
        }
        out
    }
}

fn v4(s: &str) -> Ipv4Addr {
    s.parse().unwrap()
}
fn v6(s: &str) -> Ipv6Addr {
    s.parse().unwrap()
}
fn totals(pairs: &[(&'static str, u64)]) -> BTreeMap<&'static str, u64> {
    pairs.iter().copied().collect()
}

#[test]
fn ipv4_tcp_passes_and_counts_exactly() {
    let Some(h) = harness("ipv4") else { return };
    let syn = packet::tcp4(v4("10.1.0.1"), 80, SYN);
    assert_eq!(h.xdp(&syn), XDP_PASS);
    let ack = packet::tcp4(v4("10.1.0.1"), 80, ACK);
    assert_eq!(h.xdp(&ack), XDP_PASS);
    let bytes = (syn.len() + ack.len()) as u64;
    assert_eq!(
        h.totals(),
        totals(&[
            ("packets", 2),
            ("bytes", bytes),
            ("passed", 2),
            ("ipv4", 2),
            ("new_tcp", 1)
        ])
    );
    let s = h.source("10.1.0.1");
    assert_eq!((s.packets, s.bytes, s.syns), (2, bytes, 1));
    assert!(s.first_seen_ns > 0 && s.last_seen_ns >= s.first_seen_ns);
}

#[test]
fn ipv4_options_and_udp_are_parsed() {
    let Some(h) = harness("ipv4opt") else { return };
    // 8 bytes of options (NOPs and an end marker): the transport header moves.
    let ip = packet::ipv4_with(
        v4("10.1.0.2"),
        packet::DST4,
        PROTO_TCP,
        &[1, 1, 1, 1, 1, 1, 1, 0],
        0,
        &packet::tcp(1234, 443, SYN),
    );
    assert_eq!(h.xdp(&packet::ether(&[], packet::ETH_P_IP, &ip)), XDP_PASS);
    let udp = packet::ipv4(
        v4("10.1.0.2"),
        packet::DST4,
        PROTO_UDP,
        &packet::udp(5, 53, b"q"),
    );
    assert_eq!(h.xdp(&packet::ether(&[], packet::ETH_P_IP, &udp)), XDP_PASS);
    let t = h.totals();
    assert_eq!(t.get("new_tcp"), Some(&1));
    assert_eq!(t.get("malformed"), None);
    assert_eq!(h.source("10.1.0.2").packets, 2);
}

#[test]
fn ipv6_with_extension_headers_is_parsed() {
    let Some(h) = harness("ipv6") else { return };
    let src = v6("2001:db8::7");
    let exts = [Ext::HopByHop, Ext::Routing, Ext::DestOpts];
    let ip = packet::ipv6(
        src,
        packet::DST6,
        &exts,
        PROTO_TCP,
        &packet::tcp(1, 443, SYN),
    );
    assert_eq!(
        h.xdp(&packet::ether(&[], packet::ETH_P_IPV6, &ip)),
        XDP_PASS
    );
    let plain = packet::tcp6(src, 443, SYN);
    assert_eq!(h.xdp(&plain), XDP_PASS);
    let t = h.totals();
    assert_eq!(t.get("ipv6"), Some(&2));
    assert_eq!(
        t.get("new_tcp"),
        Some(&2),
        "SYN found behind three extension headers"
    );
    assert_eq!(h.source("2001:db8::7").syns, 2);
}

#[test]
fn vlan_and_qinq_are_parsed() {
    let Some(h) = harness("vlan") else { return };
    let ip = packet::ipv4(
        v4("10.1.0.3"),
        packet::DST4,
        PROTO_TCP,
        &packet::tcp(1, 80, SYN),
    );
    let one = packet::ether(&[(packet::ETH_P_8021Q, 10)], packet::ETH_P_IP, &ip);
    let two = packet::ether(
        &[(packet::ETH_P_8021AD, 20), (packet::ETH_P_8021Q, 10)],
        packet::ETH_P_IP,
        &ip,
    );
    assert_eq!(h.xdp(&one), XDP_PASS);
    assert_eq!(h.xdp(&two), XDP_PASS);
    let s = h.source("10.1.0.3");
    assert_eq!((s.packets, s.syns), (2, 2));
    // A denied source behind tags is still dropped.
    let mut h = h;
    h.deny("10.1.0.3", 0);
    assert_eq!(h.xdp(&two), XDP_DROP);
}

#[test]
fn malformed_and_truncated_packets_pass_and_are_counted() {
    let Some(mut h) = harness("trunc") else {
        return;
    };
    h.deny("10.1.0.4", 0);
    let full = packet::tcp4(v4("10.1.0.4"), 80, SYN);
    let cases: Vec<Vec<u8>> = vec![
        // Ethernet header announcing IPv4, nothing after it.
        packet::ether(&[], packet::ETH_P_IP, &[]),
        // Half an IPv4 header.
        full[..14 + 10].to_vec(),
        // IPv6 header cut short.
        packet::tcp6(v6("2001:db8::4"), 80, SYN)[..14 + 30].to_vec(),
        // VLAN tag cut short.
        packet::ether(&[], packet::ETH_P_8021Q, &[0]),
        // IHL says 60 bytes of header, the packet has 20.
        {
            let mut p = packet::tcp4(v4("10.1.0.4"), 80, SYN)[..14 + 20].to_vec();
            p[14] = 0x4f;
            p
        },
        // IHL below 5.
        {
            let mut p = full.clone();
            p[14] = 0x44;
            p
        },
        // Version 6 in an IPv4 ethertype.
        {
            let mut p = full.clone();
            p[14] = 0x65;
            p
        },
    ];
    let mut tc_ran = 0;
    for (i, pkt) in cases.iter().enumerate() {
        assert_eq!(h.xdp(pkt), XDP_PASS, "case {i} passes");
        // The kernel refuses to build an skb from some of these (EINVAL) before the program
        // runs; the stack would not hand them to TC either.
        if let Some(verdict) = h.try_tc(pkt) {
            assert_eq!(verdict, TC_ACT_OK, "case {i} passes TC");
            tc_ran += 1;
        }
    }
    assert!(tc_ran >= 4, "TC saw only {tc_ran} of the cases");
    let n = cases.len() as u64 + tc_ran;
    let t = h.totals();
    assert_eq!(t.get("malformed"), Some(&n));
    assert_eq!(t.get("passed"), Some(&n));
    assert_eq!(t.get("dropped_deny"), None, "never dropped by mistake");
}

#[test]
fn truncated_transport_header_is_counted_but_source_rules_apply() {
    let Some(mut h) = harness("l4trunc") else {
        return;
    };
    let ip = packet::ipv4(v4("10.1.0.5"), packet::DST4, PROTO_TCP, &[0u8; 10]);
    let pkt = packet::ether(&[], packet::ETH_P_IP, &ip);
    assert_eq!(h.xdp(&pkt), XDP_PASS);
    assert_eq!(h.totals().get("malformed"), Some(&1));
    assert_eq!(h.source("10.1.0.5").packets, 1);
    h.deny("10.1.0.5", 0);
    assert_eq!(
        h.xdp(&pkt),
        XDP_DROP,
        "the source is known, so its deny entry applies"
    );
}

#[test]
fn fragments_are_counted_and_only_first_fragments_carry_ports() {
    let Some(h) = harness("frag") else { return };
    let src = v4("10.1.0.6");
    let first = packet::ipv4_with(
        src,
        packet::DST4,
        PROTO_TCP,
        &[],
        0x2000,
        &packet::tcp(1, 80, SYN),
    );
    let later = packet::ipv4_with(
        src,
        packet::DST4,
        PROTO_TCP,
        &[],
        0x0010,
        &packet::tcp(1, 80, SYN),
    );
    assert_eq!(
        h.xdp(&packet::ether(&[], packet::ETH_P_IP, &first)),
        XDP_PASS
    );
    assert_eq!(
        h.xdp(&packet::ether(&[], packet::ETH_P_IP, &later)),
        XDP_PASS
    );
    let s6 = v6("2001:db8::6");
    let f6_first = packet::ipv6(
        s6,
        packet::DST6,
        &[Ext::Fragment {
            offset: 0,
            more: true,
        }],
        PROTO_TCP,
        &packet::tcp(1, 80, SYN),
    );
    let f6_later = packet::ipv6(
        s6,
        packet::DST6,
        &[Ext::Fragment {
            offset: 100,
            more: false,
        }],
        PROTO_TCP,
        &packet::tcp(1, 80, SYN),
    );
    assert_eq!(
        h.xdp(&packet::ether(&[], packet::ETH_P_IPV6, &f6_first)),
        XDP_PASS
    );
    assert_eq!(
        h.xdp(&packet::ether(&[], packet::ETH_P_IPV6, &f6_later)),
        XDP_PASS
    );
    let t = h.totals();
    assert_eq!(t.get("fragments"), Some(&4));
    // Bytes that look like a SYN in a later fragment are payload, not a header.
    assert_eq!(t.get("new_tcp"), Some(&2));
    assert_eq!(h.source("10.1.0.6").syns, 1);
    assert_eq!(h.source("2001:db8::6").syns, 1);
}

#[test]
fn non_ip_passes() {
    let Some(h) = harness("nonip") else { return };
    let arp = packet::ether(&[], packet::ETH_P_ARP, &[0u8; 28]);
    assert_eq!(h.xdp(&arp), XDP_PASS);
    assert_eq!(h.tc(&arp), TC_ACT_OK);
    let t = h.totals();
    assert_eq!(t.get("non_ip"), Some(&2));
    assert_eq!(t.get("passed"), Some(&2));
}

#[test]
fn exact_deny_drops_only_that_source() {
    let Some(mut h) = harness("deny") else { return };
    h.deny("10.1.0.9", 0);
    h.deny("2001:db8::9", 0);
    assert_eq!(h.xdp(&packet::tcp4(v4("10.1.0.9"), 80, ACK)), XDP_DROP);
    assert_eq!(h.xdp(&packet::tcp4(v4("10.1.0.9"), 80, SYN)), XDP_DROP);
    assert_eq!(h.xdp(&packet::tcp6(v6("2001:db8::9"), 80, ACK)), XDP_DROP);
    assert_eq!(h.xdp(&packet::tcp4(v4("10.1.0.10"), 80, ACK)), XDP_PASS);
    assert_eq!(h.tc(&packet::tcp4(v4("10.1.0.9"), 80, ACK)), TC_ACT_SHOT);
    let t = h.totals();
    assert_eq!(t.get("dropped_deny"), Some(&4));
    assert_eq!(t.get("passed"), Some(&1));
    assert_eq!(h.source("10.1.0.9").drops_deny, 3);
    let entry = h
        .maps
        .find_deny(&"10.1.0.9".parse().unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(entry.hits, 3);
}

#[test]
fn cidr_deny_drops_the_prefix() {
    let Some(mut h) = harness("cidr") else { return };
    h.deny("10.3.0.0/16", 0);
    h.deny("2001:db8:3::/48", 0);
    assert_eq!(h.xdp(&packet::tcp4(v4("10.3.4.5"), 80, ACK)), XDP_DROP);
    assert_eq!(h.xdp(&packet::tcp4(v4("10.4.0.1"), 80, ACK)), XDP_PASS);
    assert_eq!(
        h.xdp(&packet::tcp6(v6("2001:db8:3:1::1"), 80, ACK)),
        XDP_DROP
    );
    assert_eq!(h.xdp(&packet::tcp6(v6("2001:db8:4::1"), 80, ACK)), XDP_PASS);
    assert_eq!(h.totals().get("dropped_deny_cidr"), Some(&2));
}

#[test]
fn allow_beats_deny_and_rate_limit() {
    let Some(mut h) = harness("allow") else {
        return;
    };
    h.configure(&EbpfConfig {
        interface: Some("lo".into()),
        protected_ports: vec![443],
        syn_rate: 1,
        syn_burst: 1,
        allow: vec!["10.2.0.0/16".into()],
        ..EbpfConfig::default()
    });
    h.maps
        .replace_allow(&["10.2.0.0/16".parse().unwrap()])
        .unwrap();
    h.deny("10.2.0.5", 0);
    h.deny("10.2.0.0/24", 0);
    for _ in 0..5 {
        assert_eq!(h.xdp(&packet::tcp4(v4("10.2.0.5"), 443, SYN)), XDP_PASS);
    }
    let t = h.totals();
    assert_eq!(t.get("allowed"), Some(&5));
    assert_eq!(t.get("dropped_deny"), None);
    assert_eq!(t.get("dropped_rate"), None);
    assert_eq!(
        h.maps.allow_list().unwrap(),
        vec!["10.2.0.0/16".parse().unwrap()]
    );
}

#[test]
fn expired_deny_entries_no_longer_drop() {
    let Some(mut h) = harness("expiry") else {
        return;
    };
    // A second in the past: the kernel's coarse clock may lag by a tick.
    let past = clock::monotonic_ns() - 1_000_000_000;
    let future = clock::monotonic_ns() + 3_600_000_000_000;
    h.deny("10.5.0.1", past);
    h.deny("10.5.0.2", future);
    h.deny("10.6.0.0/16", past);
    assert_eq!(h.xdp(&packet::tcp4(v4("10.5.0.1"), 80, ACK)), XDP_PASS);
    assert_eq!(h.xdp(&packet::tcp4(v4("10.5.0.2"), 80, ACK)), XDP_DROP);
    assert_eq!(h.xdp(&packet::tcp4(v4("10.6.0.1"), 80, ACK)), XDP_PASS);
    let t = h.totals();
    assert_eq!(t.get("deny_expired"), Some(&2));
    assert_eq!(t.get("dropped_deny"), Some(&1));
}

/// The one test here that lets real time pass: the program caches the coarse clock per CPU
/// by jiffies (`coarse_now`), and only a clock that actually moves shows that the cache
/// follows it: a source's `last_seen_ns` stays within a few ticks of CLOCK_MONOTONIC while
/// it keeps sending, and a cached drop ends when its entry's TTL passes.
#[test]
fn the_cached_clock_follows_time_and_ttls_expire_mid_flood() {
    let Some(mut h) = harness("clock") else {
        return;
    };
    let ttl_ns = 300_000_000;
    h.deny("10.5.0.3", clock::monotonic_ns() + ttl_ns);
    let pkt = packet::tcp4(v4("10.5.0.3"), 80, ACK);
    assert_eq!(h.xdp(&pkt), XDP_DROP);
    let started = std::time::Instant::now();
    let mut passed_after = None;
    // A packet every 5 ms for up to 1.5 s: many ticks, each seen by the cache.
    while started.elapsed() < std::time::Duration::from_millis(1_500) {
        std::thread::sleep(std::time::Duration::from_millis(5));
        let verdict = h.xdp(&pkt);
        let lag = clock::monotonic_ns().saturating_sub(h.source("10.5.0.3").last_seen_ns);
        // The coarse clock lags by up to a tick (1-10 ms); 50 ms leaves room for a slow run.
        assert!(
            lag < 50_000_000,
            "last_seen_ns is {lag} ns behind the clock"
        );
        if verdict == XDP_PASS {
            passed_after = Some(started.elapsed());
            break;
        }
    }
    let passed_after = passed_after.expect("the entry expired within 1.5 s of a 300 ms TTL");
    assert!(
        passed_after >= std::time::Duration::from_millis(250),
        "passed after {passed_after:?}, before the TTL"
    );
}

fn limited(port: u16, rate: u32, burst: u32, enforce: bool) -> EbpfConfig {
    EbpfConfig {
        interface: Some("lo".into()),
        protected_ports: vec![port],
        syn_rate: rate,
        syn_burst: burst,
        enforce,
        event_interval: "1h".into(),
        ..EbpfConfig::default()
    }
}

#[test]
fn syn_bucket_allows_burst_then_drops_then_refills() {
    let Some(mut h) = harness("bucket") else {
        return;
    };
    // One token per second: real time between packets adds a negligible fraction.
    h.configure(&limited(443, 1, 3, true));
    let src = "10.7.0.1";
    let syn = packet::tcp4(v4(src), 443, SYN);
    for i in 0..3 {
        assert_eq!(h.xdp(&syn), XDP_PASS, "burst SYN {i}");
    }
    assert_eq!(h.xdp(&syn), XDP_DROP, "the SYN after the burst");
    // Not limited: other ports, and segments that are not new connections.
    assert_eq!(h.xdp(&packet::tcp4(v4(src), 80, SYN)), XDP_PASS);
    assert_eq!(h.xdp(&packet::tcp4(v4(src), 443, ACK)), XDP_PASS);
    assert_eq!(h.xdp(&packet::tcp4(v4(src), 443, SYN | ACK)), XDP_PASS);

    h.age_bucket(src, 1_000_000_000);
    assert_eq!(h.xdp(&syn), XDP_PASS, "one second refills one token");
    assert_eq!(h.xdp(&syn), XDP_DROP);

    h.age_bucket(src, 10_000_000_000);
    for i in 0..3 {
        assert_eq!(
            h.xdp(&syn),
            XDP_PASS,
            "refill is capped at the burst, SYN {i}"
        );
    }
    assert_eq!(h.xdp(&syn), XDP_DROP);

    let s = h.source(src);
    assert_eq!(s.drops_rate, 3);
    assert_eq!(h.totals().get("dropped_rate"), Some(&3));
    // At most one event per source per interval (1 h here).
    let events = h.events();
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(
        gateway::ebpf::addr::addr_of(&events[0].addr).to_string(),
        src
    );
    assert_eq!((events[0].dst_port, events[0].enforced), (443, 1));

    // Sources have separate buckets; IPv6 sources are limited too.
    assert_eq!(h.xdp(&packet::tcp4(v4("10.7.0.2"), 443, SYN)), XDP_PASS);
    let syn6 = packet::tcp6(v6("2001:db8::77"), 443, SYN);
    for _ in 0..3 {
        assert_eq!(h.xdp(&syn6), XDP_PASS);
    }
    assert_eq!(h.xdp(&syn6), XDP_DROP);
}

#[test]
fn monitor_mode_counts_but_passes() {
    let Some(mut h) = harness("monitor") else {
        return;
    };
    h.configure(&limited(8443, 1, 2, false));
    let syn = packet::tcp4(v4("10.8.0.1"), 8443, SYN);
    for _ in 0..5 {
        assert_eq!(h.xdp(&syn), XDP_PASS);
    }
    let t = h.totals();
    assert_eq!(t.get("monitored_rate"), Some(&3));
    assert_eq!(t.get("dropped_rate"), None);
    let s = h.source("10.8.0.1");
    assert_eq!((s.monitored_rate, s.drops_rate), (3, 0));
    let events = h.events();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].enforced, 0);
}

#[test]
fn tc_twin_makes_the_same_decisions() {
    let Some(mut h) = harness("tc") else { return };
    h.configure(&limited(443, 1, 1, true));
    h.deny("10.9.0.1", 0);
    h.deny("10.10.0.0/16", 0);
    assert_eq!(h.tc(&packet::tcp4(v4("10.9.0.1"), 80, ACK)), TC_ACT_SHOT);
    assert_eq!(h.tc(&packet::tcp4(v4("10.10.3.3"), 80, ACK)), TC_ACT_SHOT);
    assert_eq!(h.tc(&packet::tcp4(v4("10.9.0.2"), 443, SYN)), TC_ACT_OK);
    assert_eq!(h.tc(&packet::tcp4(v4("10.9.0.2"), 443, SYN)), TC_ACT_SHOT);
    let vlan = packet::ether(
        &[(packet::ETH_P_8021Q, 5)],
        packet::ETH_P_IP,
        &packet::ipv4(
            v4("10.9.0.1"),
            packet::DST4,
            PROTO_TCP,
            &packet::tcp(1, 80, ACK),
        ),
    );
    assert_eq!(h.tc(&vlan), TC_ACT_SHOT);
    let t = h.totals();
    assert_eq!(t.get("dropped_deny"), Some(&2));
    assert_eq!(t.get("dropped_deny_cidr"), Some(&1));
    assert_eq!(t.get("dropped_rate"), Some(&1));
    assert_eq!(t.get("passed"), Some(&1));
}

#[test]
fn mixed_traffic_counters_match_exactly() {
    let Some(mut h) = harness("mixed") else {
        return;
    };
    h.configure(&limited(443, 1, 2, true));
    h.maps
        .replace_allow(&["10.11.9.0/24".parse().unwrap()])
        .unwrap();
    h.deny("10.11.0.66", 0);
    h.deny("10.12.0.0/16", 0);
    let mut sent = 0u64;
    let mut bytes = 0u64;
    let mut send = |h: &Harness, pkt: Vec<u8>, want: u32| {
        assert_eq!(h.xdp(&pkt), want);
        sent += 1;
        bytes += pkt.len() as u64;
    };
    send(&h, packet::tcp4(v4("10.11.0.1"), 443, SYN), XDP_PASS);
    send(&h, packet::tcp4(v4("10.11.0.1"), 443, SYN), XDP_PASS);
    send(&h, packet::tcp4(v4("10.11.0.1"), 443, SYN), XDP_DROP);
    send(&h, packet::tcp4(v4("10.11.0.66"), 80, ACK), XDP_DROP);
    send(&h, packet::tcp4(v4("10.12.1.1"), 80, ACK), XDP_DROP);
    send(&h, packet::tcp4(v4("10.11.9.9"), 443, SYN), XDP_PASS);
    send(&h, packet::tcp6(v6("2001:db8::1"), 80, ACK), XDP_PASS);
    send(
        &h,
        packet::ether(&[], packet::ETH_P_ARP, &[0; 28]),
        XDP_PASS,
    );
    send(&h, packet::ether(&[], packet::ETH_P_IP, &[0x45]), XDP_PASS);
    assert_eq!(
        h.totals(),
        totals(&[
            ("packets", sent),
            ("bytes", bytes),
            ("passed", 6),
            ("dropped_deny", 1),
            ("dropped_deny_cidr", 1),
            ("dropped_rate", 1),
            ("allowed", 1),
            ("malformed", 1),
            ("non_ip", 1),
            ("new_tcp", 4),
            ("ipv4", 6),
            ("ipv6", 1),
        ])
    );
}

#[test]
fn list_changes_take_effect_on_the_next_packet() {
    let Some(mut h) = harness("cache") else {
        return;
    };
    let pkt = packet::tcp4(v4("10.13.0.1"), 80, ACK);
    // Classified and cached as passing...
    assert_eq!(h.xdp(&pkt), XDP_PASS);
    assert_eq!(h.xdp(&pkt), XDP_PASS);
    // ...yet every list change reaches the next packet.
    h.deny("10.13.0.1", 0);
    assert_eq!(h.xdp(&pkt), XDP_DROP);
    assert!(h.maps.undeny(&"10.13.0.1".parse().unwrap()).unwrap());
    assert_eq!(h.xdp(&pkt), XDP_PASS);
    h.deny("10.13.0.0/24", 0);
    assert_eq!(h.xdp(&pkt), XDP_DROP);
    h.maps
        .replace_allow(&["10.13.0.0/16".parse().unwrap()])
        .unwrap();
    assert_eq!(h.xdp(&pkt), XDP_PASS);
    h.maps.replace_allow(&[]).unwrap();
    assert_eq!(h.xdp(&pkt), XDP_DROP);
    assert!(h.maps.undeny(&"10.13.0.0/24".parse().unwrap()).unwrap());
    assert_eq!(h.xdp(&pkt), XDP_PASS);

    // A cached deny ends when its entry expires, without any list change. The kernel reads
    // a coarse clock, so the wait covers a few of its ticks.
    let soon = clock::monotonic_ns() + 50_000_000;
    h.deny("10.13.0.1", soon);
    assert_eq!(h.xdp(&pkt), XDP_DROP);
    std::thread::sleep(std::time::Duration::from_millis(100));
    assert_eq!(h.xdp(&pkt), XDP_PASS);
    let s = h.source("10.13.0.1");
    assert_eq!((s.packets, s.drops_deny), (10, 4));
}

/// The generation is global data whose map is pinned where user space writes it: an object
/// loaded later on the same pins (a second process, a restart) reads the same word, so a
/// list change made through the pins reaches the classifications either object cached.
#[test]
fn list_changes_reach_every_object_loaded_on_the_same_pins() {
    let Some(mut h) = harness("shared-gen") else {
        return;
    };
    let pkt = packet::tcp4(v4("10.14.0.1"), 80, ACK);
    assert_eq!(h.xdp(&pkt), XDP_PASS);
    let mut second = loader::load_object(&h._fs.pin_path()).expect("a second load on the pins");
    let xdp: &mut aya::programs::Xdp = second
        .program_mut(program_name::XDP)
        .unwrap()
        .try_into()
        .unwrap();
    loader::load_program(|| xdp.load()).expect("the verifier accepts the XDP program");
    // Both cache the source as passing...
    assert_eq!(kernel::xdp(&second, &pkt), XDP_PASS);
    assert_eq!(kernel::xdp(&second, &pkt), XDP_PASS);
    assert_eq!(h.xdp(&pkt), XDP_PASS);
    // ...and one change through the pins reaches both.
    h.deny("10.14.0.1", 0);
    assert_eq!(kernel::xdp(&second, &pkt), XDP_DROP);
    assert_eq!(h.xdp(&pkt), XDP_DROP);
    assert!(h.maps.undeny(&"10.14.0.1".parse().unwrap()).unwrap());
    assert_eq!(h.xdp(&pkt), XDP_PASS);
    assert_eq!(kernel::xdp(&second, &pkt), XDP_PASS);
}
