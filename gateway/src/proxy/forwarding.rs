//! The forwarding headers we send upstream (X-Forwarded-For, X-Real-IP, X-Forwarded-Proto,
//! X-Forwarded-Host, RFC 7239 Forwarded). We are the edge: client-sent copies are removed,
//! never trusted or appended to; X-Forwarded-Port, which we do not set, is removed too (their
//! `_` look-alikes go in [`super::client_headers`]). The values depend only on the connection
//! (and the Host, which a connection rarely changes), so they are rendered once per
//! connection, as the lines the upstream's head gets ([`super::upstream_h1::Added`]), rather
//! than inserted into every request's header map.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName};
use std::net::IpAddr;
use std::sync::Mutex;

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// What a client may send that only we set.
static CLIENT_COPIES: [HeaderName; 6] = [
    X_FORWARDED_FOR,
    X_REAL_IP,
    X_FORWARDED_PROTO,
    header::FORWARDED,
    X_FORWARDED_HOST,
    X_FORWARDED_PORT,
];

/// Whether `name` is one of [`CLIENT_COPIES`] (one `match`: cheaper than six comparisons
/// for every header of every request).
fn is_client_copy(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "x-forwarded-for"
            | "x-real-ip"
            | "x-forwarded-proto"
            | "forwarded"
            | "x-forwarded-host"
            | "x-forwarded-port"
    )
}

/// One connection's forwarding header lines.
#[derive(Debug)]
pub struct Forwarding {
    /// All of them, for a request without a (plain) host: X-Forwarded-For, X-Real-IP and
    /// X-Forwarded-Proto (the first `common` bytes), then Forwarded without `host=`.
    no_host: Bytes,
    common: usize,
    /// `for=…;proto=…`: Forwarded's value without a host.
    forwarded: Box<str>,
    /// The lines for the last Host seen on this connection, with that host. The lock is
    /// uncontended (one request at a time per HTTP/1 connection, a few per HTTP/2 one) and
    /// never held across an await.
    with_host: Mutex<Option<(Box<str>, Bytes)>>,
}

impl Forwarding {
    pub fn new(client: IpAddr, tls: bool) -> Self {
        let proto = if tls { "https" } else { "http" };
        // RFC 7239 §6: IPv6 nodes are quoted and bracketed. (Addresses and `proto` are
        // always valid field values.)
        let forwarded = match client {
            IpAddr::V4(v4) => format!("for={v4};proto={proto}"),
            IpAddr::V6(v6) => format!("for=\"[{v6}]\";proto={proto}"),
        };
        let common = format!(
            "x-forwarded-for: {client}\r\nx-real-ip: {client}\r\nx-forwarded-proto: {proto}\r\n"
        );
        let no_host = format!("{common}forwarded: {forwarded}\r\n");
        Self {
            no_host: Bytes::from(no_host),
            common: common.len(),
            forwarded: forwarded.into(),
            with_host: Mutex::new(None),
        }
    }

    /// Removes the request's forwarding headers and returns ours, as head lines. `host`:
    /// the request's host (lower case, without port), added to Forwarded and sent as
    /// X-Forwarded-Host when it is a plain host name or address.
    pub fn apply(&self, headers: &mut HeaderMap, host: Option<&str>) -> Bytes {
        // Most requests carry none: one pass over the names, without hashing, tells.
        if headers.keys().any(is_client_copy) {
            for name in &CLIENT_COPIES {
                headers.remove(name);
            }
        }
        match host.filter(|h| is_plain_host(h)) {
            Some(h) => self.with_host(h),
            None => self.no_host.clone(),
        }
    }

    /// The lines with `host=` in Forwarded, and X-Forwarded-Host.
    fn with_host(&self, host: &str) -> Bytes {
        let mut last = match self.with_host.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        if let Some((seen, lines)) = last.as_ref() {
            if **seen == *host {
                return lines.clone();
            }
        }
        let common = self.no_host.get(..self.common).unwrap_or_default();
        let mut text = Vec::with_capacity(self.no_host.len() + 2 * host.len() + 40);
        text.extend_from_slice(common);
        text.extend_from_slice(b"forwarded: ");
        text.extend_from_slice(self.forwarded.as_bytes());
        text.extend_from_slice(b";host=\"");
        text.extend_from_slice(host.as_bytes());
        text.extend_from_slice(b"\"\r\nx-forwarded-host: ");
        text.extend_from_slice(host.as_bytes());
        text.extend_from_slice(b"\r\n");
        let lines = Bytes::from(text);
        *last = Some((host.into(), lines.clone()));
        lines
    }
}

/// Characters of host names and IP literals only: nothing that could break out of the
/// quoted `host="…"` or the line.
fn is_plain_host(h: &str) -> bool {
    !h.is_empty()
        && h.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    /// The request's headers after `apply`, with the lines it returned added as the
    /// upstream would read them.
    fn applied(f: &Forwarding, host: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static("203.0.113.9"));
        h.append(X_FORWARDED_FOR, HeaderValue::from_static("198.51.100.1"));
        h.insert(header::FORWARDED, HeaderValue::from_static("for=evil"));
        h.insert(X_REAL_IP, HeaderValue::from_static("10.0.0.1"));
        h.insert(X_FORWARDED_HOST, HeaderValue::from_static("admin.internal"));
        h.insert(X_FORWARDED_PORT, HeaderValue::from_static("8080"));
        let lines = f.apply(&mut h, host);
        let text = std::str::from_utf8(&lines).expect("utf-8");
        assert!(text.ends_with("\r\n"), "{text:?}");
        for line in text.split_terminator("\r\n") {
            let (name, value) = line.split_once(": ").expect("a field line");
            h.append(
                HeaderName::from_bytes(name.as_bytes()).expect("name"),
                HeaderValue::from_str(value).expect("value"),
            );
        }
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
    fn the_name_test_agrees_with_the_list() {
        for name in &CLIENT_COPIES {
            assert!(is_client_copy(name), "{name}");
        }
        for other in [
            "x-forwarded",
            "x-forwarded-fo",
            "host",
            "x-real-ip2",
            "forwarded-for",
        ] {
            let name = HeaderName::from_static(other);
            assert!(!is_client_copy(&name), "{other}");
        }
    }

    #[test]
    fn other_headers_are_left_alone() {
        let f = Forwarding::new("192.0.2.7".parse().expect("ip"), false);
        let mut h = HeaderMap::new();
        h.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
        h.insert("x-forwarded-other", HeaderValue::from_static("kept"));
        let lines = f.apply(&mut h, Some("api.example.com"));
        assert_eq!(h.len(), 2);
        assert_eq!(
            &lines[..],
            b"x-forwarded-for: 192.0.2.7\r\nx-real-ip: 192.0.2.7\r\n\
              x-forwarded-proto: http\r\n\
              forwarded: for=192.0.2.7;proto=http;host=\"api.example.com\"\r\n\
              x-forwarded-host: api.example.com\r\n"
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
