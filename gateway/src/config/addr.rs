//! Socket addresses in the config: IP and port only. The gateway never resolves names (a
//! lookup at start-up would make the config's meaning depend on DNS), so a host name gets a
//! message that says so instead of the parser's "invalid socket address syntax".

use serde::de::{Deserializer, Error};
use serde::Deserialize;
use std::net::SocketAddr;

/// Parses `ip:port` / `[ipv6]:port`; anything else is refused with what was wrong.
pub fn parse(text: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    let example = "e.g. 10.0.0.5:8080 or [2001:db8::5]:8080";
    if text.parse::<std::net::IpAddr>().is_ok() {
        return Err(format!(
            "`{text}` has no port: write an address with a port, IPv6 in brackets ({example})"
        ));
    }
    let host = match text.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => host,
        _ => {
            return Err(format!(
                "`{text}` is not an IP address with a port ({example})"
            ))
        }
    };
    let is_name = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    match is_name {
        true => Err(format!(
            "`{text}`: `{host}` is a host name; only IP addresses are accepted ({example}), \
             the gateway does not resolve names"
        )),
        false => Err(format!(
            "`{text}` is not an IP address with a port ({example})"
        )),
    }
}

/// `#[serde(deserialize_with)]` for one address.
pub fn one<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    let text = String::deserialize(d)?;
    parse(&text).map_err(D::Error::custom)
}

/// `#[serde(deserialize_with)]` for a list of addresses.
pub fn list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SocketAddr>, D::Error> {
    let texts = Vec::<String>::deserialize(d)?;
    texts
        .iter()
        .map(|t| parse(t).map_err(D::Error::custom))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn addresses_parse_and_names_are_refused_as_names() {
        assert_eq!(parse("127.0.0.1:80").unwrap().to_string(), "127.0.0.1:80");
        assert_eq!(parse("[::1]:443").unwrap().to_string(), "[::1]:443");
        for name in [
            "localhost:8080",
            "api.internal:443",
            "my-host.example.com:1",
        ] {
            let e = parse(name).expect_err(name);
            assert!(
                e.contains("is a host name; only IP addresses are accepted"),
                "{e}"
            );
        }
        for (bad, says) in [
            ("127.0.0.1", "has no port"),
            ("::1", "has no port"),
            ("localhost", "is not an IP address with a port"),
            ("10.0.0.1:99999", "is not an IP address with a port"),
            ("10.0.0.1:", "is not an IP address with a port"),
            (":80", "is not an IP address with a port"),
            // An IPv6 address without brackets has no port: `::1:80` is the address ::1:80.
            ("::1:80", "has no port"),
            ("", "is not an IP address with a port"),
            ("host name:80", "is not an IP address with a port"),
            ("1.2.3.4.5:80", "is a host name"),
        ] {
            let e = parse(bad).expect_err(bad);
            assert!(e.contains(says), "{bad}: {e}");
        }
    }
}
