//! The kernel's SYN bucket counts IPv6 sources by prefix (`[abuse] ipv6_prefix`), as the
//! abuse engine does: one /64 gets one bucket however many of its addresses it uses. The
//! real object through `BPF_PROG_TEST_RUN`, its maps pinned in a private bpffs.

mod kernel;

use gateway::config::EbpfConfig;
use gateway::ebpf::loader;
use gateway_tests::packet::{self, SYN};
use kernel::{Loaded, XDP_DROP, XDP_PASS};

fn harness(name: &str, ipv6_prefix: u32) -> Option<Loaded> {
    let mut k = kernel::load("k6", name, loader::load_object)?;
    // One SYN per second per bucket, no burst beyond it.
    let mut cfg = EbpfConfig {
        interface: Some("lo".into()),
        protected_ports: vec![443],
        syn_rate: 1,
        syn_burst: 1,
        ..EbpfConfig::default()
    }
    .to_kernel()
    .expect("valid config");
    cfg.ipv6_prefix = ipv6_prefix;
    k.maps.write_config(&cfg).expect("write config");
    Some(k)
}

/// The XDP verdict on a SYN from `src` to the protected port.
fn syn(k: &Loaded, src: &str) -> u32 {
    let pkt = match src.parse().expect("address") {
        std::net::IpAddr::V4(a) => packet::tcp4(a, 443, SYN),
        std::net::IpAddr::V6(a) => packet::tcp6(a, 443, SYN),
    };
    kernel::xdp(&k.ebpf, &pkt)
}

#[test]
fn ipv6_sources_share_one_syn_bucket_per_prefix() {
    let Some(h) = harness("prefix64", 64) else {
        return;
    };
    assert_eq!(syn(&h, "2001:db8:1:2::1"), XDP_PASS, "the /64's one token");
    // Rotating addresses inside the /64 buys nothing.
    for host in [
        "2001:db8:1:2::2",
        "2001:db8:1:2:ffff:ffff:ffff:ffff",
        "2001:db8:1:2::1",
    ] {
        assert_eq!(syn(&h, host), XDP_DROP, "{host}");
    }
    // The neighbouring /64 has its own bucket, and IPv4 sources keep one per address.
    assert_eq!(syn(&h, "2001:db8:1:3::1"), XDP_PASS);
    assert_eq!(syn(&h, "10.9.0.1"), XDP_PASS);
    assert_eq!(syn(&h, "10.9.0.2"), XDP_PASS);
    assert_eq!(syn(&h, "10.9.0.1"), XDP_DROP);
    // The drops are still counted per address for `gateway stats`.
    let s = h
        .maps
        .source("2001:db8:1:2::2".parse().unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(s.drops_rate, 1);
}

#[test]
fn a_full_length_prefix_counts_each_ipv6_address() {
    let Some(h) = harness("prefix128", 128) else {
        return;
    };
    assert_eq!(syn(&h, "2001:db8:1:2::1"), XDP_PASS);
    assert_eq!(syn(&h, "2001:db8:1:2::2"), XDP_PASS, "its own bucket");
    assert_eq!(syn(&h, "2001:db8:1:2::1"), XDP_DROP);
}

#[test]
fn prefix_keys_mask_the_host_bits() {
    use gateway_common::prefix_key;
    let key = |s: &str| -> [u8; 16] { s.parse::<std::net::Ipv6Addr>().unwrap().octets() };
    assert_eq!(
        prefix_key(&key("2001:db8:1:2:3:4:5:6"), 64),
        key("2001:db8:1:2::")
    );
    assert_eq!(
        prefix_key(&key("2001:db8:1:2:3:4:5:6"), 60),
        key("2001:db8:1::")
    );
    assert_eq!(
        prefix_key(&key("2001:db8:1:ffff::"), 61),
        key("2001:db8:1:fff8::")
    );
    assert_eq!(prefix_key(&key("ffff::1"), 0), key("::"));
    assert_eq!(prefix_key(&key("2001:db8::1"), 128), key("2001:db8::1"));
}
