//! `[abuse]`: which behaviour gets a source banned, for how long.

use super::DurationSecs;
use super::Issue;
use serde::Deserialize;
use std::time::Duration;

/// A limit over a sliding window, and the ban for crossing it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Events allowed within `window`; the one after bans.
    pub limit: u32,
    pub window: DurationSecs,
    /// First ban; repeat offenders get it doubled each time, up to `max_ban`.
    pub ban: DurationSecs,
    /// With `[fleet]`: events of one source across all nodes within one window of this
    /// length (fixed windows) that the fleet allows; the one after bans everywhere. Only
    /// for `auth_failures` and `client_errors`.
    #[serde(default)]
    pub fleet_limit: Option<u32>,
}

fn rule(limit: u32, window: u64, ban: u64) -> Option<Rule> {
    Some(Rule {
        limit,
        window: DurationSecs(Duration::from_secs(window)),
        ban: DurationSecs(Duration::from_secs(ban)),
        fleet_limit: None,
    })
}

/// A rule as written: a table, or `false` to switch a default rule off.
fn rule_or_off<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Rule>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Off(bool),
        On(Rule),
    }
    match Raw::deserialize(d)? {
        Raw::Off(false) => Ok(None),
        Raw::Off(true) => Err(serde::de::Error::custom(
            "`true` is not a rule: write { limit = .., window = \"..\", ban = \"..\" }",
        )),
        Raw::On(r) => Ok(Some(r)),
    }
}

/// `[abuse]`. A rule left out keeps its default; `name = false` switches it off.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AbuseConfig {
    /// Log and count what would be banned, ban nothing.
    pub monitor: bool,
    /// IPv6 sources are tracked and banned per prefix of this length (one host owns a /64).
    pub ipv6_prefix: u8,
    /// Sources tracked at once (least recently seen are forgotten first).
    pub max_sources: usize,
    /// Ceiling of escalating bans.
    pub max_ban: DurationSecs,
    /// Refused tokens (any reason). Default: 20 in 10 s → 5 min.
    #[serde(deserialize_with = "rule_or_off")]
    pub auth_failures: Option<Rule>,
    /// Other 4xx answers caused by the client (bad requests, unknown routes). Default: 50 in
    /// 10 s → 5 min.
    #[serde(deserialize_with = "rule_or_off")]
    pub client_errors: Option<Rule>,
    /// All requests. Default: off.
    #[serde(deserialize_with = "rule_or_off")]
    pub requests: Option<Rule>,
    /// Failed TLS handshakes. Default: 20 in 10 s → 5 min.
    #[serde(deserialize_with = "rule_or_off")]
    pub tls_failures: Option<Rule>,
    /// Connections refused over `[listen] max_connections_per_source`. Default: 50 in 10 s → 5 min.
    #[serde(deserialize_with = "rule_or_off")]
    pub connections: Option<Rule>,
    /// Not a rule: SYN rate-limit trips come from packets whose source can be forged, so
    /// they never ban (the kernel still limits the SYNs). Accepted only as `false`, so an
    /// old config that sets a rule is refused with the reason.
    #[serde(deserialize_with = "rule_or_off")]
    pub kernel_rate: Option<Rule>,
}

impl Default for AbuseConfig {
    fn default() -> Self {
        Self {
            monitor: false,
            ipv6_prefix: 64,
            max_sources: 100_000,
            max_ban: DurationSecs(Duration::from_secs(3600)),
            auth_failures: rule(20, 10, 300),
            client_errors: rule(50, 10, 300),
            requests: None,
            tls_failures: rule(20, 10, 300),
            connections: rule(50, 10, 300),
            kernel_rate: None,
        }
    }
}

impl AbuseConfig {
    /// Whether any rule counts fleet-wide (`fleet_limit`).
    pub fn has_fleet_limits(&self) -> bool {
        [&self.auth_failures, &self.client_errors]
            .iter()
            .any(|r| r.is_some_and(|r| r.fleet_limit.is_some()))
    }

    pub fn validate(&self) -> Result<(), Issue> {
        // A deny entry shorter than /16 is refused (it could cut off whole regions), so
        // the engine could not ban by a shorter prefix.
        if self.ipv6_prefix < 16 || self.ipv6_prefix > 128 {
            return Err(Issue::new("ipv6_prefix", "must be between 16 and 128"));
        }
        if self.max_sources < 64 {
            return Err(Issue::new("max_sources", "must be at least 64"));
        }
        if self.kernel_rate.is_some() {
            return Err(Issue::new(
                "kernel_rate",
                "SYN rate-limit trips never ban: a SYN's source address can be forged, so \
                 anyone could get any address banned (the kernel still limits the SYNs); \
                 remove this rule",
            ));
        }
        for (key, r) in [
            ("auth_failures", &self.auth_failures),
            ("client_errors", &self.client_errors),
            ("requests", &self.requests),
            ("tls_failures", &self.tls_failures),
            ("connections", &self.connections),
        ] {
            if let Some(r) = r {
                if r.limit == 0 {
                    return Err(Issue::new(key, "limit must be at least 1"));
                }
                if r.window.0.is_zero() || r.ban.0.is_zero() {
                    return Err(Issue::new(key, "window and ban must be longer than zero"));
                }
                if r.ban.0 > self.max_ban.0 {
                    return Err(Issue::new(key, "ban is longer than max_ban"));
                }
                match r.fleet_limit {
                    Some(_) if !matches!(key, "auth_failures" | "client_errors") => {
                        return Err(Issue::new(
                            key,
                            "fleet_limit is for auth_failures and client_errors only (the \
                             other signals stay local)",
                        ));
                    }
                    Some(0) => return Err(Issue::new(key, "fleet_limit must be at least 1")),
                    _ => {}
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_default_switch_off_and_override() {
        let c: AbuseConfig = toml::from_str(
            "auth_failures = false\nrequests = { limit = 100, window = \"1s\", ban = \"1m\" }",
        )
        .unwrap();
        assert_eq!(c.auth_failures, None);
        assert_eq!(c.requests.map(|r| r.limit), Some(100));
        assert_eq!(c.tls_failures, AbuseConfig::default().tls_failures);
        assert!(toml::from_str::<AbuseConfig>("auth_failures = true").is_err());
        assert!(toml::from_str::<AbuseConfig>("auth_failures = { limit = 1 }").is_err());
    }
}
