//! Where the client's address comes from: the TCP peer, or, when that peer is one of
//! `[listen] trusted_proxies`, what the proxy says: its PROXY header (see
//! [`super::proxy_protocol`]) or, on plain-HTTP listeners, `X-Forwarded-For`. The address
//! found is the one the abuse engine, the limits, the forwarding headers, logs and metrics
//! use.

use http::header::HeaderMap;
use ipnet::IpNet;
use std::net::IpAddr;

/// The proxies allowed to name a client (a short list, matched linearly).
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies {
    nets: Vec<IpNet>,
}

/// The address a request came from when a trusted proxy named it in `X-Forwarded-For`;
/// kept in the request's extensions, so the request path reads it without parsing again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardedClient {
    pub ip: IpAddr,
    /// The client is banned: the kernel sees only the proxy, so the request is answered
    /// 403 in user space.
    pub banned: bool,
}

impl TrustedProxies {
    pub fn new(nets: Vec<IpNet>) -> Self {
        Self { nets }
    }

    pub fn is_empty(&self) -> bool {
        self.nets.is_empty()
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.nets.iter().any(|n| n.contains(&ip))
    }

    /// The client behind `peer` (a trusted proxy) according to `X-Forwarded-For`: walking
    /// from the right, the first address that is not a trusted proxy; what lies left of it
    /// is the client's own say and ignored. `None` when the header names nobody usable
    /// (absent, or nothing but trusted proxies before something unparseable): the request
    /// is then the proxy's own.
    pub fn forwarded_client(&self, headers: &HeaderMap) -> Option<IpAddr> {
        let mut last_trusted = None;
        // Several header lines are one list, in order (RFC 9110 §5.3).
        let items = headers
            .get_all("x-forwarded-for")
            .iter()
            .rev()
            .flat_map(|v| v.as_bytes().rsplit(|&b| b == b','));
        for item in items {
            let Some(ip) = parse_item(item) else {
                // Garbage the trusted chain did not write: stop at the last address it did.
                return last_trusted;
            };
            if !self.contains(ip) {
                return Some(ip);
            }
            last_trusted = Some(ip);
        }
        last_trusted
    }
}

/// One `X-Forwarded-For` item: an address, optionally with a port (`1.2.3.4:5`,
/// `[2001:db8::1]:5`) as some proxies write it.
fn parse_item(item: &[u8]) -> Option<IpAddr> {
    let s = std::str::from_utf8(item).ok()?.trim();
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(ip.to_canonical());
    }
    if let Ok(sa) = s.parse::<std::net::SocketAddr>() {
        return Some(sa.ip().to_canonical());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn trusted() -> TrustedProxies {
        TrustedProxies::new(vec![
            "10.0.0.0/8".parse().expect("net"),
            "2001:db8:ffff::1/128".parse().expect("net"),
        ])
    }

    fn xff(values: &[&'static str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("x-forwarded-for", HeaderValue::from_static(v));
        }
        h
    }

    fn found(values: &[&'static str]) -> Option<String> {
        trusted()
            .forwarded_client(&xff(values))
            .map(|ip| ip.to_string())
    }

    #[test]
    fn the_right_most_untrusted_address_is_the_client() {
        assert_eq!(found(&["203.0.113.7"]).as_deref(), Some("203.0.113.7"));
        assert_eq!(
            found(&["1.1.1.1, 203.0.113.7, 10.0.0.2"]).as_deref(),
            Some("203.0.113.7")
        );
        // A client that writes its own header only adds items to the left.
        assert_eq!(
            found(&["198.51.100.1, 10.9.9.9", "203.0.113.7, 10.0.0.2"]).as_deref(),
            Some("203.0.113.7")
        );
    }

    #[test]
    fn addresses_with_ports_and_ipv6_and_mapped_forms() {
        assert_eq!(found(&["203.0.113.7:5555"]).as_deref(), Some("203.0.113.7"));
        assert_eq!(found(&["[2001:db8::7]:1"]).as_deref(), Some("2001:db8::7"));
        assert_eq!(
            found(&["::ffff:203.0.113.7"]).as_deref(),
            Some("203.0.113.7")
        );
        assert_eq!(
            found(&["2001:db8::7, 2001:db8:ffff::1"]).as_deref(),
            Some("2001:db8::7")
        );
    }

    #[test]
    fn nothing_usable_means_the_proxy_itself_or_the_last_trusted_hop() {
        assert_eq!(found(&[]), None);
        assert_eq!(found(&[""]), None);
        assert_eq!(found(&["unknown"]), None);
        assert_eq!(found(&["10.0.0.3, 10.0.0.2"]).as_deref(), Some("10.0.0.3"));
        // Garbage left of a trusted hop stops the walk there.
        assert_eq!(found(&["evil\"x, 10.0.0.2"]).as_deref(), Some("10.0.0.2"));
        // Garbage right of the client is not skipped to reach an address further left.
        assert_eq!(found(&["203.0.113.7, junk"]), None);
    }

    #[test]
    fn mapped_peers_match_ipv4_prefixes() {
        let t = trusted();
        assert!(t.contains("::ffff:10.1.2.3".parse().expect("ip")));
        assert!(!t.contains("11.1.2.3".parse().expect("ip")));
        assert!(!t.contains("2001:db8:ffff::2".parse().expect("ip")));
    }
}
