//! `[fleet]`: the Redis that a fleet of gateways shares its bans through.
//!
//! The files it names (password, HMAC key) are read when the gateway starts, so that a
//! secret never sits in the configuration file itself.

use super::DurationSecs;
use super::Issue;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// The origins a ban may travel with: what the abuse engine bans for, and `manual`.
/// `config` entries belong to each node's own file and never travel.
pub const SHAREABLE: [&str; 6] = [
    "auth_failures",
    "client_errors",
    "tls_failures",
    "connections",
    "rate",
    "manual",
];

fn default_share() -> Vec<String> {
    [
        "auth_failures",
        "client_errors",
        "tls_failures",
        "connections",
        "manual",
    ]
    .map(String::from)
    .to_vec()
}

fn default_prefix() -> String {
    "gateway:".to_owned()
}

fn default_max_ttl() -> DurationSecs {
    DurationSecs(Duration::from_secs(7 * 86_400))
}

fn default_queue() -> usize {
    10_000
}

/// The `[fleet]` section as written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// `redis://host:port/db`, `rediss://` (TLS) or `unix:///path/redis.sock`; no
    /// password in it.
    pub redis_url: String,
    /// File holding the Redis password (`AUTH`), first line.
    #[serde(default)]
    pub redis_password_file: Option<PathBuf>,
    /// This node's name in the fleet; default: the host name.
    #[serde(default)]
    pub node: Option<String>,
    /// Origins whose bans this node publishes and accepts.
    #[serde(default = "default_share")]
    pub share: Vec<String>,
    /// Prefix of every key, so that several fleets can share one Redis.
    #[serde(default = "default_prefix")]
    pub key_prefix: String,
    /// File holding the HMAC-SHA256 key (at least 32 bytes) that signs every message; with
    /// it, unsigned or wrongly signed messages are ignored (and counted).
    #[serde(default)]
    pub hmac_key_file: Option<PathBuf>,
    /// The longest a received ban lasts here (an entry "until removed" lasts this long and
    /// is renewed by the periodic reconciliation while it is in Redis).
    #[serde(default = "default_max_ttl")]
    pub max_ttl: DurationSecs,
    /// Outgoing events kept while Redis cannot be reached (oldest automatic ones dropped
    /// first when full).
    #[serde(default = "default_queue")]
    pub queue: usize,
}

/// A node name: what a hostname may hold, bounded.
pub fn valid_node(s: &str) -> bool {
    (1..=64).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'))
}

impl FleetConfig {
    pub fn validate(&self) -> Result<(), Issue> {
        let (scheme, rest) = self.redis_url.split_once("://").unwrap_or(("", ""));
        let shape_ok = match scheme {
            "redis" | "rediss" => !rest.is_empty(),
            "unix" => rest.starts_with('/'),
            _ => false,
        };
        if !shape_ok {
            return Err(Issue::new(
                "redis_url",
                format!(
                    "`{}` is not a redis://, rediss:// or unix:///path URL",
                    self.redis_url
                ),
            ));
        }
        let authority = rest.split('/').next().unwrap_or("");
        if authority.contains('@') {
            return Err(Issue::new(
                "redis_url",
                "credentials do not belong in the URL: put the password in redis_password_file",
            ));
        }
        if let Err(e) = redis::Client::open(self.redis_url.as_str()) {
            return Err(Issue::new("redis_url", e.to_string()));
        }
        if let Some(node) = &self.node {
            if !valid_node(node) {
                return Err(Issue::new(
                    "node",
                    format!("`{node}`: 1 to 64 letters, digits, '.', '-' or '_'"),
                ));
            }
        }
        for s in &self.share {
            if !SHAREABLE.contains(&s.as_str()) {
                return Err(Issue::new(
                    "share",
                    format!(
                        "`{s}` is not an origin that can travel (one of: {})",
                        SHAREABLE.join(", ")
                    ),
                ));
            }
        }
        if self.key_prefix.is_empty()
            || self.key_prefix.len() > 64
            || self.key_prefix.bytes().any(|b| !b.is_ascii_graphic())
        {
            return Err(Issue::new(
                "key_prefix",
                "1 to 64 printable characters without spaces",
            ));
        }
        if self.max_ttl.0.is_zero() || self.max_ttl.0 > crate::deny::MAX_TTL {
            return Err(Issue::new(
                "max_ttl",
                "longer than zero and at most 100 years",
            ));
        }
        if !(1..=1_000_000).contains(&self.queue) {
            return Err(Issue::new("queue", "between 1 and 1000000 events"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;
    use std::path::Path;

    /// `body` after a data plane section, so the file has something to run; its lines are
    /// counted from 1 as written, since the tests look at keys and messages only.
    fn parse(body: &str) -> Result<crate::config::Plan, String> {
        let text = format!("{body}\n[ebpf]\ninterface = \"lo\"\nmode = \"xdp-generic\"\n");
        Config::parse(Path::new("/etc/g.toml"), &text).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_and_a_full_section() {
        let c = parse("[fleet]\nredis_url = \"redis://127.0.0.1:6379/0\"\n").unwrap();
        let f = c.fleet.unwrap();
        assert_eq!(f.key_prefix, "gateway:");
        assert!(f.share.contains(&"manual".to_owned()));
        assert!(!f.share.contains(&"rate".to_owned()));
        assert!(parse("[fleet]\nredis_url = \"unix:///run/redis/redis.sock\"\n").is_ok());
        let c = parse(
            "[fleet]\nredis_url = \"rediss://cache.example:6380\"\nnode = \"edge-a\"\n\
             share = [\"manual\"]\nkey_prefix = \"f1:\"\nhmac_key_file = \"/k\"\n\
             redis_password_file = \"/p\"\nmax_ttl = \"1h\"\nqueue = 5\n",
        )
        .unwrap();
        assert_eq!(c.fleet.unwrap().node.as_deref(), Some("edge-a"));
    }

    #[test]
    fn bad_values_name_file_line_and_key() {
        for (body, line, key) in [
            ("[fleet]\nredis_url = \"http://x\"\n", 2, "fleet.redis_url"),
            (
                "[fleet]\nredis_url = \"unix://rel\"\n",
                2,
                "fleet.redis_url",
            ),
            (
                "[fleet]\nredis_url = \"redis://u:pw@127.0.0.1\"\n",
                2,
                "fleet.redis_url",
            ),
            (
                "[fleet]\nredis_url = \"redis://h\"\nnode = \"a b\"\n",
                3,
                "fleet.node",
            ),
            (
                "[fleet]\nredis_url = \"redis://h\"\nshare = [\"config\"]\n",
                3,
                "fleet.share",
            ),
            (
                "[fleet]\nredis_url = \"redis://h\"\nkey_prefix = \"\"\n",
                3,
                "fleet.key_prefix",
            ),
            (
                "[fleet]\nredis_url = \"redis://h\"\nqueue = 0\n",
                3,
                "fleet.queue",
            ),
            (
                "[fleet]\nredis_url = \"redis://h\"\nsahre = []\n",
                3,
                "fleet.sahre",
            ),
        ] {
            let e = parse(body).unwrap_err();
            assert!(
                e.starts_with(&format!("/etc/g.toml:{line}: {key}")),
                "{body}: {e}"
            );
        }
        let e = parse("[fleet]\nnode = \"a\"\n").unwrap_err();
        assert!(e.contains("redis_url"), "{e}");
    }

    #[test]
    fn fleet_limits_only_on_http_signals_and_only_with_a_fleet() {
        let fleet = "[fleet]\nredis_url = \"redis://h\"\n";
        let rule = |extra: &str| format!("{{ limit = 5, window = \"10s\", ban = \"1m\"{extra} }}");
        let ok = format!(
            "[abuse]\nclient_errors = {}\n{fleet}",
            rule(", fleet_limit = 9")
        );
        assert!(parse(&ok).is_ok(), "{ok}");
        for (body, key, says) in [
            (
                format!("[abuse]\nrequests = {}\n{fleet}", rule(", fleet_limit = 9")),
                "abuse.requests",
                "only",
            ),
            (
                format!(
                    "[abuse]\nauth_failures = {}\n{fleet}",
                    rule(", fleet_limit = 0")
                ),
                "abuse.auth_failures",
                "at least 1",
            ),
            (
                format!("[abuse]\nclient_errors = {}\n", rule(", fleet_limit = 9")),
                "abuse.client_errors",
                "[fleet]",
            ),
        ] {
            let e = parse(&body).unwrap_err();
            assert!(
                e.starts_with(&format!("/etc/g.toml:2: {key}")) && e.contains(says),
                "{body}: {e}"
            );
        }
    }
}
