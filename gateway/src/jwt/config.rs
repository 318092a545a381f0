//! The `[jwt]` section: the verification policy, the unnamed legacy issuer (`issuers` +
//! `[[jwt.keys]]`), named issuers (`[[jwt.issuer]]`) and the per-source verification budget.

use super::alg::Algorithm;
use super::cache::CacheConfig;
use super::token;
use crate::keys::KeySourceConfig;
use crate::ratelimit::Rate;
use serde::Deserialize;

/// Verification policy, embeddable as the `[jwt]` table of the gateway configuration.
///
/// ```toml
/// [jwt]
/// issuers = ["https://issuer.example/"]
/// audiences = ["api"]
/// algorithms = ["RS256", "ES256"]
/// leeway = 30
/// required_claims = ["sub"]
/// typ = "at+jwt"
///
/// [[jwt.keys]]
/// jwks_url = "https://issuer.example/.well-known/jwks.json"
///
/// [[jwt.issuer]]
/// name = "partners"
/// iss = "https://partners.example/"
/// keys = [{ pem = "partners.pem", alg = "ES256" }]
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VerifierConfig {
    /// Accepted `iss` values (exact match) of the unnamed issuer; empty = not checked.
    pub issuers: Vec<String>,
    /// Accepted audiences (`aud` must contain one); empty = not checked. Named issuers
    /// without `audiences` of their own use these.
    pub audiences: Vec<String>,
    /// Algorithms accepted at all; empty = every supported one (each key is further bound
    /// to its own algorithm). Named issuers without `algorithms` of their own use these.
    pub algorithms: Vec<Algorithm>,
    /// Clock-skew allowance in seconds for `exp`, `nbf` and `iat`.
    pub leeway: u64,
    /// Whether `exp` must be present.
    pub require_exp: bool,
    /// Claims that must be present.
    pub required_claims: Vec<String>,
    /// Required `typ` (compared case-insensitively; `application/` prefix optional, RFC 7515
    /// §4.1.9), e.g. `at+jwt` for RFC 9068 access tokens.
    pub typ: Option<String>,
    /// Longest accepted token in bytes, checked before any decoding.
    pub max_token_bytes: usize,
    /// Verified-token cache.
    pub cache: CacheConfig,
    /// Key sources of the unnamed issuer (used to build the [`crate::keys::KeyStore`] with
    /// [`crate::keys::KeyStore::from_config`]).
    pub keys: Vec<KeySourceConfig>,
    /// Named issuers, each with its own keys: `[[jwt.issuer]]`.
    pub issuer: Vec<IssuerConfig>,
    /// Signature verifications one source may cause.
    pub verify_budget: VerifyBudgetConfig,
}

impl Default for VerifierConfig {
    fn default() -> Self {
        VerifierConfig {
            issuers: Vec::new(),
            audiences: Vec::new(),
            algorithms: Vec::new(),
            leeway: 30,
            require_exp: true,
            required_claims: Vec::new(),
            typ: None,
            max_token_bytes: token::DEFAULT_MAX_TOKEN_BYTES,
            cache: CacheConfig::default(),
            keys: Vec::new(),
            issuer: Vec::new(),
            verify_budget: VerifyBudgetConfig::default(),
        }
    }
}

/// One identity provider: `[[jwt.issuer]]`. Its keys verify only tokens whose `iss` is
/// exactly `iss`, and only its keys do.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// Referred to by routes (`issuers = [..]`) and in metrics.
    pub name: String,
    /// The exact `iss` value of this issuer's tokens.
    pub iss: String,
    /// Accepted audiences; absent = `[jwt] audiences`.
    pub audiences: Option<Vec<String>>,
    /// Accepted algorithms; absent = `[jwt] algorithms`.
    pub algorithms: Option<Vec<Algorithm>>,
    /// Key sources, in the forms and with the options of `[[jwt.keys]]`.
    pub keys: Vec<KeySourceConfig>,
}

/// The name the unnamed issuer (`[jwt] issuers` + `[[jwt.keys]]`) goes by in routes and
/// metrics.
pub const DEFAULT_ISSUER: &str = "default";

/// `[jwt.verify_budget]`: a token bucket of signature verifications per source address
/// (IPv6 per /64), so a few sources flooding bad signatures cannot take the CPU. Tokens
/// answered from the verified-token cache cost nothing.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VerifyBudgetConfig {
    /// Whether the budget applies.
    pub enabled: bool,
    /// Verifications per source, `N/s`, `N/m` or `N/h`.
    pub rate: Rate,
    /// Verifications a source may make at once.
    pub burst: u32,
    /// Sources tracked at once (least recently seen forgotten first).
    pub max_sources: usize,
}

impl Default for VerifyBudgetConfig {
    /// 200/s per source, burst 200, 100k sources.
    fn default() -> Self {
        Self {
            enabled: true,
            rate: Rate {
                count: 200,
                per: std::time::Duration::from_secs(1),
            },
            burst: 200,
            max_sources: 100_000,
        }
    }
}

/// A configuration the verifier cannot work with: the key (within `[jwt]`) and what is wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A value is out of range or inconsistent.
    #[error("jwt configuration: {key}: {message}")]
    Invalid {
        /// The key, e.g. `leeway`, or within an issuer `name`, `iss` or `keys`.
        key: &'static str,
        /// What is wrong.
        message: String,
        /// Which `[[jwt.issuer]]` (0-based), when the problem is in one.
        issuer: Option<usize>,
    },
}

impl ConfigError {
    fn new(key: &'static str, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key,
            message: message.into(),
            issuer: None,
        }
    }

    /// A problem with `key` of the `index`-th `[[jwt.issuer]]`.
    pub(crate) fn in_issuer(index: usize, key: &'static str, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key,
            message: message.into(),
            issuer: Some(index),
        }
    }

    /// The `[[jwt.issuer]]` entry (0-based) the problem is in, if any.
    pub fn issuer_index(&self) -> Option<usize> {
        match self {
            ConfigError::Invalid { issuer, .. } => *issuer,
        }
    }

    /// The key the problem is with.
    pub fn key(&self) -> &'static str {
        match self {
            ConfigError::Invalid { key, .. } => key,
        }
    }

    /// What is wrong, without the key.
    pub fn message(&self) -> &str {
        match self {
            ConfigError::Invalid { message, .. } => message,
        }
    }
}

impl VerifierConfig {
    /// Checks values and key source shapes (without loading keys).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_token_bytes == 0 {
            return Err(ConfigError::new("max_token_bytes", "must be > 0"));
        }
        if self.leeway > 86_400 {
            return Err(ConfigError::new("leeway", "above one day"));
        }
        for k in &self.keys {
            k.validate()
                .map_err(|e| ConfigError::new("keys", e.to_string()))?;
        }
        let b = &self.verify_budget;
        if b.enabled && (b.burst == 0 || b.max_sources == 0) {
            return Err(ConfigError::new(
                "verify_budget",
                "burst and max_sources must be at least 1",
            ));
        }
        for (i, is) in self.issuer.iter().enumerate() {
            let earlier = &self.issuer[..i];
            let bad = |key, m: String| {
                ConfigError::in_issuer(i, key, format!("issuer `{}`: {m}", is.name))
            };
            if is.name.is_empty() || is.name == DEFAULT_ISSUER {
                return Err(bad(
                    "name",
                    format!("must be set and not `{DEFAULT_ISSUER}` (the unnamed issuer's)"),
                ));
            }
            if earlier.iter().any(|o| o.name == is.name) {
                return Err(bad("name", "defined twice".into()));
            }
            if is.iss.is_empty() {
                return Err(bad("iss", "iss must not be empty".into()));
            }
            if let Some(o) = earlier.iter().find(|o| o.iss == is.iss) {
                return Err(bad("iss", format!("iss is also issuer `{}`'s", o.name)));
            }
            if self.issuers.contains(&is.iss) {
                return Err(bad(
                    "iss",
                    "its iss is also in [jwt] issuers: the unnamed issuer's keys never verify a named issuer's tokens".into(),
                ));
            }
            if is.keys.is_empty() {
                return Err(bad("keys", "has no keys".into()));
            }
            for k in &is.keys {
                k.validate().map_err(|e| bad("keys", e.to_string()))?;
            }
        }
        Ok(())
    }

    /// Whether the unnamed issuer exists: it has keys, or no named issuer is configured
    /// (the shape every configuration had before named issuers).
    pub fn has_default_issuer(&self) -> bool {
        !self.keys.is_empty() || self.issuer.is_empty()
    }

    /// Every issuer name a route may list.
    pub fn issuer_names(&self) -> impl Iterator<Item = &str> {
        self.has_default_issuer()
            .then_some(DEFAULT_ISSUER)
            .into_iter()
            .chain(self.issuer.iter().map(|i| i.name.as_str()))
    }

    /// The first name in a route's `issuers` that names no issuer.
    pub fn unknown_issuer<'a>(&self, route: &'a crate::config::RouteConfig) -> Option<&'a str> {
        route
            .issuers
            .iter()
            .flatten()
            .map(String::as_str)
            .find(|n| !self.issuer_names().any(|k| k == *n))
    }

    /// The issuers `route` accepts whose tokens are checked for neither `iss` nor an
    /// audience (empty for routes without token checks).
    pub fn unchecked_route_issuers<'a>(
        &'a self,
        route: &'a crate::config::RouteConfig,
    ) -> Vec<&'a str> {
        if route.auth == crate::config::AuthMode::None {
            return Vec::new();
        }
        self.unchecked_issuers()
            .into_iter()
            .filter(|n| {
                route
                    .issuers
                    .as_ref()
                    .is_none_or(|l| l.iter().any(|r| r == n))
            })
            .collect()
    }

    /// Issuers whose tokens are checked for neither `iss` nor an audience: any token signed
    /// by their keys passes, including one minted for another client of the same IdP.
    pub fn unchecked_issuers(&self) -> Vec<&str> {
        let mut out = Vec::new();
        if self.has_default_issuer() && self.issuers.is_empty() && self.audiences.is_empty() {
            out.push(DEFAULT_ISSUER);
        }
        // Named issuers always check `iss`.
        out
    }
}
