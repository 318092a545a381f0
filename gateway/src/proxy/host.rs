//! The host a request is for, which routes match on, checked the way RFC 9112 §3.2 and
//! RFC 9113 §8.3.1 ask: a request with two Host headers, an invalid one, none at all
//! (HTTP/1.1 and HTTP/2 always name one), or an HTTP/2 `host` header naming another
//! authority than `:authority` is refused. Otherwise the route could be chosen for one host
//! while the upstream reads another from the request.
//!
//! A request target that carries an authority (absolute form in HTTP/1.1, `:authority` in
//! HTTP/2) names the host; the upstream is sent that authority as its Host
//! ([`super::handler`]), whatever Host header the client added in HTTP/1.1 (RFC 9112 §3.2.2).

use http::{header, Request, Version};
use std::borrow::Cow;

/// Why a request's host is refused (400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HostError {
    #[error("more than one Host header")]
    Duplicate,
    #[error("invalid Host header")]
    Invalid,
    #[error("the request names no host (a Host header is required)")]
    Missing,
    #[error("the Host header names another authority than :authority")]
    Conflict,
}

/// The request's host, lower-case, without port (`None`: an HTTP/1.0 request without one).
pub fn request_host<B>(req: &Request<B>) -> Result<Option<Cow<'_, str>>, HostError> {
    let mut headers = req.headers().get_all(header::HOST).iter();
    let host_header = headers.next();
    if headers.next().is_some() {
        return Err(HostError::Duplicate);
    }
    let host = match req.uri().authority() {
        Some(authority) => {
            if req.version() == Version::HTTP_2
                && host_header.is_some_and(|h| {
                    !h.as_bytes()
                        .eq_ignore_ascii_case(authority.as_str().as_bytes())
                })
            {
                return Err(HostError::Conflict);
            }
            authority.host()
        }
        None => match host_header {
            Some(value) => {
                let raw = value.to_str().map_err(|_| HostError::Invalid)?;
                host_of(raw).ok_or(HostError::Invalid)?
            }
            None if req.version() <= Version::HTTP_10 => return Ok(None),
            None => return Err(HostError::Missing),
        },
    };
    let host = without_root_dot(host)?;
    Ok(Some(if host.bytes().any(|b| b.is_ascii_uppercase()) {
        Cow::Owned(host.to_ascii_lowercase())
    } else {
        Cow::Borrowed(host)
    }))
}

/// `admin.example.` names the same host as `admin.example` (the root label, RFC 1034 §3.1):
/// routes must not miss it. A name with an empty label otherwise (`a..b`, `.a`, `a..`) is no
/// host name at all.
fn without_root_dot(host: &str) -> Result<&str, HostError> {
    let name = host.strip_suffix('.').unwrap_or(host);
    let bytes = name.as_bytes();
    let empty_label = bytes.first() == Some(&b'.')
        || bytes.last() == Some(&b'.')
        || bytes.windows(2).any(|w| w == b"..");
    if name.is_empty() || empty_label {
        return Err(HostError::Invalid);
    }
    Ok(name)
}

/// The host part of a Host header value `host [":" port]` (RFC 3986 §3.2.2, §3.2.3), or
/// `None` if it is not one: no user info, path, spaces or other stray bytes get through.
/// One pass, no searching: it runs for every request.
fn host_of(value: &str) -> Option<&str> {
    let bytes = value.as_bytes();
    let host_end = if bytes.first() == Some(&b'[') {
        // IP literal: `[` hex digits, `:` and `.` `]`.
        let close = bytes.iter().position(|&b| b == b']')?;
        let inside = &bytes[1..close];
        let valid = !inside.is_empty()
            && inside
                .iter()
                .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.');
        if !valid {
            return None;
        }
        close + 1
    } else {
        // A name or IPv4 address, up to the first `:` (a name holds none).
        let mut end = bytes.len();
        for (i, &b) in bytes.iter().enumerate() {
            if b == b':' {
                end = i;
                break;
            }
            if !is_reg_name_byte(b) {
                return None;
            }
        }
        if end == 0 {
            return None;
        }
        end
    };
    let port_ok = match &bytes[host_end..] {
        [] => true,
        [b':', digits @ ..] => digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    port_ok.then(|| &value[..host_end])
}

/// unreserved, sub-delims and `%` (percent-encoded octets).
fn is_reg_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b'%'
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(version: Version, target: &str, hosts: &[&str]) -> Request<()> {
        let mut r = Request::builder()
            .version(version)
            .uri(target)
            .body(())
            .expect("request");
        for h in hosts {
            r.headers_mut().append(
                header::HOST,
                http::HeaderValue::from_str(h).expect("header value"),
            );
        }
        r
    }

    fn host(r: &Request<()>) -> Result<Option<String>, HostError> {
        request_host(r).map(|h| h.map(Cow::into_owned))
    }

    #[test]
    fn valid_hosts() {
        for (value, want) in [
            ("api.example.com", "api.example.com"),
            ("API.Example.COM:8443", "api.example.com"),
            ("127.0.0.1", "127.0.0.1"),
            ("127.0.0.1:80", "127.0.0.1"),
            ("[::1]", "[::1]"),
            ("[2001:db8::1]:443", "[2001:db8::1]"),
            ("xn--bcher-kva.example", "xn--bcher-kva.example"),
            ("example.com:", "example.com"),
            ("Admin.Example.", "admin.example"),
            ("admin.example.:8443", "admin.example"),
            ("127.0.0.1.", "127.0.0.1"),
        ] {
            let r = req(Version::HTTP_11, "/x", &[value]);
            assert_eq!(host(&r), Ok(Some(want.to_string())), "{value}");
        }
    }

    #[test]
    fn invalid_hosts() {
        for value in [
            "",
            "a b",
            "a/b",
            "user@example.com",
            "example.com:port",
            "example.com:123456",
            "[::1",
            "[::1]x",
            "[]",
            "[g::1]",
            ":80",
            "a\tb",
            "example.com?x",
            "example.com#x",
            ".",
            "..",
            "admin.example..",
            ".admin.example",
            "admin..example",
        ] {
            let r = req(Version::HTTP_11, "/x", &[value]);
            assert_eq!(host(&r), Err(HostError::Invalid), "{value:?}");
        }
    }

    #[test]
    fn one_host_is_required_from_http_1_1_on() {
        assert_eq!(
            host(&req(Version::HTTP_11, "/x", &["a", "b"])),
            Err(HostError::Duplicate)
        );
        assert_eq!(
            host(&req(Version::HTTP_11, "/x", &["a", "a"])),
            Err(HostError::Duplicate)
        );
        assert_eq!(
            host(&req(Version::HTTP_11, "/x", &[])),
            Err(HostError::Missing)
        );
        assert_eq!(
            host(&req(Version::HTTP_2, "/x", &[])),
            Err(HostError::Missing)
        );
        assert_eq!(host(&req(Version::HTTP_10, "/x", &[])), Ok(None));
    }

    #[test]
    fn the_targets_authority_names_the_host() {
        // HTTP/1.1 absolute form: the Host header is ignored (and replaced upstream).
        let r = req(
            Version::HTTP_11,
            "http://Public.example/x",
            &["secret.example"],
        );
        assert_eq!(host(&r), Ok(Some("public.example".into())));
        // HTTP/2: `:authority` alone, or with an agreeing `host` header.
        let r = req(Version::HTTP_2, "https://api.example:8443/x", &[]);
        assert_eq!(host(&r), Ok(Some("api.example".into())));
        let r = req(
            Version::HTTP_2,
            "https://api.example:8443/x",
            &["API.example:8443"],
        );
        assert_eq!(host(&r), Ok(Some("api.example".into())));
        let r = req(Version::HTTP_2, "https://API.example.:8443/x", &[]);
        assert_eq!(host(&r), Ok(Some("api.example".into())));
        let r = req(Version::HTTP_11, "http://api.example../x", &[]);
        assert_eq!(host(&r), Err(HostError::Invalid));
        // ... but not with another one.
        for other in ["secret.example", "api.example", "api.example:443"] {
            let r = req(Version::HTTP_2, "https://api.example:8443/x", &[other]);
            assert_eq!(host(&r), Err(HostError::Conflict), "{other}");
        }
    }
}
