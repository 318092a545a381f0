//! The forwarding headers we send upstream (X-Forwarded-For, X-Real-IP, X-Forwarded-Proto,
//! X-Forwarded-Host, RFC 7239 Forwarded). We are the edge: client-sent copies are replaced,
//! never trusted or appended to; X-Forwarded-Port, which we do not set, is removed (their `_`
//! look-alikes go in [`super::client_headers`]). The values depend only on the connection (and the Host, which a connection rarely
//! changes), so they are built once per connection rather than formatted per request.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use std::net::IpAddr;
use std::sync::Mutex;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// One connection's forwarding header values.
#[derive(Debug)]
pub struct Forwarding {
    /// The client address, for X-Forwarded-For.
    client: HeaderValue,
    proto: HeaderValue,
    /// `for=…;proto=…`: Forwarded without a host.
    forwarded: HeaderValue,
    /// Forwarded with `host=` for the last Host seen on this connection, and that host as an
    /// X-Forwarded-Host value. The lock is
    /// uncontended (one request at a time per HTTP/1 connection, a few per HTTP/2 one) and
    /// never held across an await.
    with_host: Mutex<Option<(Box<str>, HeaderValue, HeaderValue)>>,
}

impl Forwarding {
    pub fn new(client: IpAddr, tls: bool) -> Self {
        let proto = if tls { "https" } else { "http" };
        // RFC 7239 §6: IPv6 nodes are quoted and bracketed.
        let node = match client {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("\"[{v6}]\""),
        };
        Self {
            client: value(client.to_string()),
            proto: HeaderValue::from_static(proto),
            forwarded: value(format!("for={node};proto={proto}")),
            with_host: Mutex::new(None),
        }
    }

    /// Replaces the request's forwarding headers with ours. `host`: the request's host
    /// (lower case, without port), added to Forwarded and sent as X-Forwarded-Host when it
    /// is a plain host name or address (X-Forwarded-Host is removed otherwise).
    pub fn apply(&self, headers: &mut HeaderMap, host: Option<&str>) {
        headers.insert(X_FORWARDED_FOR, self.client.clone());
        headers.insert(X_REAL_IP, self.client.clone());
        headers.insert(X_FORWARDED_PROTO, self.proto.clone());
        headers.remove(X_FORWARDED_PORT);
        match host.filter(|h| is_plain_host(h)) {
            Some(h) => {
                let (forwarded, host) = self.with_host(h);
                headers.insert(header::FORWARDED, forwarded);
                headers.insert(X_FORWARDED_HOST, host);
            }
            None => {
                headers.insert(header::FORWARDED, self.forwarded.clone());
                headers.remove(X_FORWARDED_HOST);
            }
        }
    }

    /// Forwarded with `host=`, and X-Forwarded-Host.
    fn with_host(&self, host: &str) -> (HeaderValue, HeaderValue) {
        let mut last = match self.with_host.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some((seen, forwarded, host_value)) = last.as_ref() {
            if **seen == *host {
                return (forwarded.clone(), host_value.clone());
            }
        }
        let mut text = Vec::with_capacity(self.forwarded.len() + host.len() + 8);
        text.extend_from_slice(self.forwarded.as_bytes());
        text.extend_from_slice(b";host=\"");
        text.extend_from_slice(host.as_bytes());
        text.push(b'"');
        let v = HeaderValue::from_bytes(&text).unwrap_or_else(|_| self.forwarded.clone());
        // A plain host is a valid header value.
        let host_value = value(host.to_string());
        *last = Some((host.into(), v.clone(), host_value.clone()));
        (v, host_value)
    }
}

/// Characters of host names and IP literals only: nothing that could break out of the
/// quoted `host="…"`.
fn is_plain_host(h: &str) -> bool {
    !h.is_empty()
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
}

/// Addresses and `for=…` strings are always valid header values.
fn value(text: String) -> HeaderValue {
    HeaderValue::try_from(text).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(f: &Forwarding, host: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static("203.0.113.9"));
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("198.51.100.1"));
        h.insert(header::FORWARDED, HeaderValue::from_static("for=evil"));
        h.insert(X_REAL_IP, HeaderValue::from_static("10.0.0.1"));
        h.insert(X_FORWARDED_HOST, HeaderValue::from_static("admin.internal"));
        h.insert(X_FORWARDED_PORT, HeaderValue::from_static("8080"));
        f.apply(&mut h, host);
        h
    }

    fn all<'a>(h: &'a HeaderMap, name: &HeaderName) -> Vec<&'a str> {
        h.get_all(name)
            .iter()
            .map(|v| v.to_str().unwrap_or("<binary>"))
            .collect()
    }

    #[test]
    fn client_copies_are_replaced_not_appended() {
        let f = Forwarding::new("192.0.2.7".parse().expect("ip"), false);
        let h = applied(&f, Some("api.example.com"));
        assert_eq!(all(&h, &X_FORWARDED_FOR), ["192.0.2.7"]);
        assert_eq!(all(&h, &X_REAL_IP), ["192.0.2.7"]);
        assert_eq!(all(&h, &X_FORWARDED_PROTO), ["http"]);
        assert_eq!(all(&h, &X_FORWARDED_HOST), ["api.example.com"]);
        assert!(all(&h, &X_FORWARDED_PORT).is_empty());
        assert_eq!(
            all(&h, &header::FORWARDED),
            ["for=192.0.2.7;proto=http;host=\"api.example.com\""]
        );
    }

    #[test]
    fn ipv6_nodes_are_quoted_and_bracketed() {
        let f = Forwarding::new("2001:db8::1".parse().expect("ip"), true);
        let h = applied(&f, None);
        assert_eq!(all(&h, &X_FORWARDED_FOR), ["2001:db8::1"]);
        assert_eq!(all(&h, &X_REAL_IP), ["2001:db8::1"]);
        assert!(all(&h, &X_FORWARDED_HOST).is_empty(), "no host: removed");
        assert!(all(&h, &X_FORWARDED_PORT).is_empty());
        assert_eq!(all(&h, &X_FORWARDED_PROTO), ["https"]);
        assert_eq!(
            all(&h, &header::FORWARDED),
            ["for=\"[2001:db8::1]\";proto=https"]
        );
    }

    #[test]
    fn a_changed_host_is_not_served_from_the_cache() {
        let f = Forwarding::new("192.0.2.7".parse().expect("ip"), true);
        for host in ["a.example", "a.example", "b.example", "a.example"] {
            let h = applied(&f, Some(host));
            assert_eq!(
                all(&h, &header::FORWARDED),
                [format!("for=192.0.2.7;proto=https;host=\"{host}\"").as_str()]
            );
            assert_eq!(all(&h, &X_FORWARDED_HOST), [host]);
        }
    }

    #[test]
    fn hosts_that_could_break_the_quoting_are_left_out() {
        let f = Forwarding::new("192.0.2.7".parse().expect("ip"), false);
        for host in ["a\"b", "a;b", "a b", "a,b", ""] {
            let h = applied(&f, Some(host));
            assert_eq!(
                all(&h, &header::FORWARDED),
                ["for=192.0.2.7;proto=http"],
                "{host:?}"
            );
            assert!(all(&h, &X_FORWARDED_HOST).is_empty(), "{host:?}");
        }
    }
}
