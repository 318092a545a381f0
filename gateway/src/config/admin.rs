//! `[admin]`: where the admin endpoint (metrics, health) listens.
//!
//! The endpoint has no authentication, so it stays on loopback unless the operator says
//! explicitly that another address is intended.

use super::Issue;
use serde::Deserialize;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

/// The address used when `[admin]` omits `listen` (and by `gateway stats` without a config).
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9901);

/// Where `[admin] socket` conventionally lives; `gateway deny` and `gateway stats` without
/// a config try it first.
pub const DEFAULT_SOCKET: &str = "/run/gateway/admin.sock";

fn default_listen() -> SocketAddr {
    DEFAULT_LISTEN
}

/// The `[admin]` section as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the admin HTTP endpoint.
    #[serde(default = "default_listen", deserialize_with = "super::addr::one")]
    pub listen: SocketAddr,
    /// Allow `listen` on a non-loopback address. The endpoint is unauthenticated and exposes
    /// operational detail, so this must be a deliberate choice.
    #[serde(default)]
    pub allow_non_loopback: bool,
    /// File holding a bearer token that the deny API (`/deny`) requires. Without it, the
    /// deny API answers loopback clients only.
    #[serde(default)]
    pub api_token_file: Option<std::path::PathBuf>,
    /// A Unix socket serving the same endpoint (mode 0660): `gateway deny` and `gateway
    /// stats` prefer it, so a local user who takes the TCP port first never sees the token.
    #[serde(default)]
    pub socket: Option<std::path::PathBuf>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN,
            allow_non_loopback: false,
            api_token_file: None,
            socket: None,
        }
    }
}

impl AdminConfig {
    /// Refuses a non-loopback address unless `allow_non_loopback` is set.
    pub fn validate(&self) -> Result<(), Issue> {
        if !is_loopback(self.listen.ip()) && !self.allow_non_loopback {
            return Err(Issue::new(
                "listen",
                format!(
                    "{} is not a loopback address; the admin endpoint has no authentication \
                     (set allow_non_loopback = true if this is intended)",
                    self.listen
                ),
            ));
        }
        if let Some(path) = &self.socket {
            if !path.is_absolute() {
                return Err(Issue::new("socket", "must be an absolute path"));
            }
            // sun_path holds 108 bytes with the terminating NUL.
            if path.as_os_str().len() > 107 {
                return Err(Issue::new("socket", "longer than 107 bytes"));
            }
        }
        Ok(())
    }
}

/// Loopback, including IPv4-mapped IPv6 loopback (`::ffff:127.0.0.1`), which binds to the
/// same interface.
fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback() || v6.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AdminConfig, toml::de::Error> {
        toml::from_str(text)
    }

    #[test]
    fn defaults_to_loopback_9901() {
        let c = parse("").expect("empty section parses");
        assert_eq!(c, AdminConfig::default());
        assert_eq!(c.listen.to_string(), "127.0.0.1:9901");
        assert!(c.validate().is_ok());
    }

    #[test]
    fn loopback_addresses_are_accepted() {
        for a in [
            "127.0.0.1:1",
            "127.9.9.9:80",
            "[::1]:9901",
            "[::ffff:127.0.0.1]:9901",
        ] {
            let c = parse(&format!("listen = \"{a}\"")).expect("parses");
            assert!(c.validate().is_ok(), "{a}");
        }
    }

    #[test]
    fn non_loopback_needs_opt_in() {
        for a in ["0.0.0.0:9901", "10.1.2.3:9901", "[::]:9901"] {
            let c = parse(&format!("listen = \"{a}\"")).expect("parses");
            let issue = c.validate().expect_err(a);
            assert_eq!(issue.key, "listen");
            assert!(
                issue.message.contains("allow_non_loopback"),
                "{}",
                issue.message
            );
            let c = parse(&format!("listen = \"{a}\"\nallow_non_loopback = true")).expect("parses");
            assert!(c.validate().is_ok(), "{a}");
        }
    }

    #[test]
    fn unknown_keys_and_bad_addresses_are_refused() {
        assert!(parse("listne = \"127.0.0.1:1\"").is_err());
        assert!(parse("listen = \"localhost:9901\"").is_err());
        assert!(parse("listen = \"127.0.0.1\"").is_err());
    }

    #[test]
    fn socket_must_be_an_absolute_short_path() {
        let ok = parse("socket = \"/run/gateway/admin.sock\"").expect("parses");
        assert!(ok.validate().is_ok());
        for bad in ["admin.sock", "./admin.sock"] {
            let c = parse(&format!("socket = \"{bad}\"")).expect("parses");
            assert_eq!(c.validate().expect_err(bad).key, "socket");
        }
        let long = format!("/{}", "a".repeat(107));
        let c = parse(&format!("socket = \"{long}\"")).expect("parses");
        assert_eq!(c.validate().expect_err("long").key, "socket");
    }
}
