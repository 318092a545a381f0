use super::*;

#[test]
fn ipv6_sources_share_their_prefixs_connection_slots() {
    let limit = Arc::new(SourceLimit {
        max: 2,
        ipv6_prefix: 64,
        open: Mutex::new(HashMap::new()),
    });
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let a = limit.take(ip("2001:db8:1:2::1")).expect("first slot");
    let b = limit.take(ip("2001:db8:1:2:ffff::9")).expect("second slot");
    // A third address of the same /64 finds the prefix's slots taken.
    assert!(limit.take(ip("2001:db8:1:2::3")).is_none());
    // Another /64, and IPv4 (also as IPv4-mapped IPv6), count on their own.
    let _c = limit.take(ip("2001:db8:1:3::1")).expect("another /64");
    let _d = limit.take(ip("192.0.2.1")).expect("IPv4");
    let _e = limit
        .take(ip("::ffff:192.0.2.1"))
        .expect("the same IPv4 source");
    assert!(
        limit.take(ip("192.0.2.1")).is_none(),
        "mapped form counted as IPv4"
    );
    drop(a);
    let _f = limit
        .take(ip("2001:db8:1:2::77"))
        .expect("a slot came back");
    drop(b);
}
