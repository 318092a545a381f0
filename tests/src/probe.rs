//! What the end-to-end tests send from the client namespace to see what the gateway lets
//! through: TCP handshakes and curl requests from a chosen source address, and bounded
//! hping3 SYN floods.

use crate::netns::exec_in;
use crate::netns::in_netns;
use socket2::{Domain, Socket, Type};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

/// A TCP handshake from `src` (an address of the namespace `ns`) to `to`; `true` if it
/// completes within `timeout`.
pub fn connects_from(ns: &str, src: Ipv4Addr, to: SocketAddrV4, timeout: Duration) -> bool {
    in_netns(ns, move || -> std::io::Result<()> {
        let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
        s.bind(&SocketAddr::from((src, 0)).into())?;
        s.connect_timeout(&SocketAddr::V4(to).into(), timeout)
    })
    .expect("enter netns")
    .is_ok()
}

/// One curl GET of `url` from `src` in the namespace `ns`, `max_secs` seconds at most, with
/// the given extra curl `args`; the HTTP status, or 0 when no HTTP answer came (connection
/// refused, dropped or reset).
pub fn curl_status_from(ns: &str, src: Ipv4Addr, max_secs: u32, args: &[&str], url: &str) -> u16 {
    let out = exec_in(ns, "curl")
        .args(["-s", "--max-time", &max_secs.to_string()])
        .args(["-o", "/dev/null", "-w", "%{http_code}"])
        .args(["--interface", &src.to_string()])
        .args(args)
        .arg(url)
        .output()
        .expect("run curl");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

/// A SYN flood from the namespace `ns` to `to`, claiming `src` as its source: `count` SYNs,
/// one per millisecond, then hping3 exits by itself (killed after 30 s at the latest).
/// Returns how long it took; fails the test if hping3 was killed.
pub fn syn_flood(ns: &str, src: Ipv4Addr, to: SocketAddrV4, count: u64) -> Duration {
    let started = Instant::now();
    let out = exec_in(ns, "timeout")
        .args(["30", "hping3", "-q", "-S", "-p", &to.port().to_string()])
        .args(["-c", &count.to_string(), "-i", "u1000"])
        .args(["-a", &src.to_string()])
        .arg(to.ip().to_string())
        .output()
        .expect("run hping3");
    assert!(
        out.status.code().is_some(),
        "hping3 was killed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    started.elapsed()
}
