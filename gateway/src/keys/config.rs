//! Configuration of key sources, as embedded under `[[jwt.keys]]` in the gateway's TOML.
//!
//! ```toml
//! [[jwt.keys]]
//! pem = "/etc/gateway/issuer.pem"   # SPKI, PKCS#1 or certificate
//! kid = "2024-01"
//! alg = "RS256"
//!
//! [[jwt.keys]]
//! jwks_url = "https://issuer.example/.well-known/jwks.json"
//! refresh = "5m"
//! ```

use super::{JwksSource, KeyError, VerifyingKey};
use crate::config::DurationSecs;
use crate::jwt::Algorithm;
use serde::Deserialize;
use std::path::PathBuf;
use std::time::Duration;

/// One key source. Exactly one of `pem`, `jwk`, `jwks`, `jwks_url`, `secret_file` is set.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySourceConfig {
    /// PEM file with public keys or certificates.
    pub pem: Option<PathBuf>,
    /// JWK file (a JWK Set is accepted too).
    pub jwk: Option<PathBuf>,
    /// JWK Set file.
    pub jwks: Option<PathBuf>,
    /// JWK Set URL (https only), refreshed in the background.
    pub jwks_url: Option<String>,
    /// HMAC secret file (raw bytes, not trimmed).
    pub secret_file: Option<PathBuf>,
    /// Key id for `pem` and `secret_file` keys (JWKs carry their own).
    pub kid: Option<String>,
    /// Algorithm binding for keys that do not state one.
    pub alg: Option<Algorithm>,
    /// JWKS URL: refresh interval when the response has no usable `Cache-Control: max-age`.
    pub refresh: Option<DurationSecs>,
    /// JWKS URL: lower bound for the refresh interval (also bounds `max-age`).
    pub min_refresh: Option<DurationSecs>,
    /// JWKS URL: upper bound for the refresh interval (also bounds `max-age`).
    pub max_refresh: Option<DurationSecs>,
    /// JWKS URL: minimum time between two fetches triggered by unknown `kid`s.
    pub refetch_interval: Option<DurationSecs>,
    /// JWKS URL: retry delay after a failed fetch.
    pub retry: Option<DurationSecs>,
    /// JWKS URL: timeout for one fetch (connect, TLS, request, body).
    pub timeout: Option<DurationSecs>,
    /// JWKS URL: PEM file of CA certificates to trust instead of the system roots.
    pub ca_file: Option<PathBuf>,
}

/// Settings of one JWKS URL source.
#[derive(Debug, Clone)]
pub struct JwksConfig {
    /// The https URL.
    pub url: String,
    /// Refresh interval without `Cache-Control: max-age`.
    pub refresh: Duration,
    /// Lower bound on the refresh interval.
    pub min_refresh: Duration,
    /// Upper bound on the refresh interval.
    pub max_refresh: Duration,
    /// At most one fetch per this interval for unknown-kid refetches.
    pub refetch_interval: Duration,
    /// Delay before retrying a failed fetch.
    pub retry: Duration,
    /// Timeout of one fetch.
    pub timeout: Duration,
    /// CA certificates to trust (PEM); `None` = system roots.
    pub ca_file: Option<PathBuf>,
    /// Algorithm binding for keys without `alg`.
    pub alg: Option<Algorithm>,
    /// Largest accepted JWKS document.
    pub max_bytes: usize,
}

impl JwksConfig {
    /// Defaults for `url`: refresh every 5 min (bounded to 1 min..24 h), unknown-kid
    /// refetch at most every 10 s, retry after 30 s, 10 s timeout, 1 MiB documents.
    pub fn new(url: impl Into<String>) -> Self {
        JwksConfig {
            url: url.into(),
            refresh: Duration::from_secs(300),
            min_refresh: Duration::from_secs(60),
            max_refresh: Duration::from_secs(86_400),
            refetch_interval: Duration::from_secs(10),
            retry: Duration::from_secs(30),
            timeout: Duration::from_secs(10),
            ca_file: None,
            alg: None,
            max_bytes: 1 << 20,
        }
    }
}

pub(crate) enum Loaded {
    Keys(String, Vec<VerifyingKey>),
    Url(JwksConfig),
}

impl KeySourceConfig {
    fn kind(&self) -> Result<&'static str, KeyError> {
        let set: Vec<&'static str> = [
            ("pem", self.pem.is_some()),
            ("jwk", self.jwk.is_some()),
            ("jwks", self.jwks.is_some()),
            ("jwks_url", self.jwks_url.is_some()),
            ("secret_file", self.secret_file.is_some()),
        ]
        .into_iter()
        .filter_map(|(n, on)| on.then_some(n))
        .collect();
        match set.as_slice() {
            [one] => Ok(one),
            [] => Err(KeyError::Config(
                "a key source needs one of pem, jwk, jwks, jwks_url, secret_file".into(),
            )),
            many => Err(KeyError::Config(format!(
                "a key source takes exactly one of pem, jwk, jwks, jwks_url, secret_file (got {})",
                many.join(", ")
            ))),
        }
    }

    /// Checks the source without loading files.
    pub fn validate(&self) -> Result<(), KeyError> {
        let kind = self.kind()?;
        let url_only = [
            ("refresh", self.refresh.is_some()),
            ("min_refresh", self.min_refresh.is_some()),
            ("max_refresh", self.max_refresh.is_some()),
            ("refetch_interval", self.refetch_interval.is_some()),
            ("retry", self.retry.is_some()),
            ("timeout", self.timeout.is_some()),
            ("ca_file", self.ca_file.is_some()),
        ];
        if kind != "jwks_url" {
            if let Some((n, _)) = url_only.iter().find(|(_, on)| *on) {
                return Err(KeyError::Config(format!(
                    "{n} applies to jwks_url sources only"
                )));
            }
        }
        if self.kid.is_some() && !matches!(kind, "pem" | "secret_file") {
            return Err(KeyError::Config(
                "kid applies to pem and secret_file sources (JWKs carry their own)".into(),
            ));
        }
        if kind == "jwks_url" {
            self.jwks_config()?;
        }
        Ok(())
    }

    fn jwks_config(&self) -> Result<JwksConfig, KeyError> {
        let url = self.jwks_url.clone().unwrap_or_default();
        let mut c = JwksConfig::new(url);
        let get = |v: Option<DurationSecs>, d: Duration| v.map_or(d, |x| x.0);
        c.refresh = get(self.refresh, c.refresh);
        c.min_refresh = get(self.min_refresh, c.min_refresh.min(c.refresh));
        c.max_refresh = get(self.max_refresh, c.max_refresh.max(c.refresh));
        c.refetch_interval = get(self.refetch_interval, c.refetch_interval);
        c.retry = get(self.retry, c.retry);
        c.timeout = get(self.timeout, c.timeout);
        c.ca_file = self.ca_file.clone();
        c.alg = self.alg;
        if c.min_refresh > c.max_refresh || c.refresh.is_zero() || c.timeout.is_zero() {
            return Err(KeyError::Config(
                "jwks_url: need 0 < refresh, min_refresh <= max_refresh, timeout > 0".into(),
            ));
        }
        JwksSource::check_url(&c.url)?;
        Ok(c)
    }

    pub(crate) fn load(&self) -> Result<Loaded, KeyError> {
        self.validate()?;
        let kid = self.kid.as_deref();
        let one = |p: &PathBuf, keys| Ok(Loaded::Keys(p.display().to_string(), keys));
        if let Some(p) = &self.pem {
            return one(p, super::load_pem_file(p, kid, self.alg)?);
        }
        if let Some(p) = self.jwk.as_ref().or(self.jwks.as_ref()) {
            return one(p, super::load_jwk_file(p, self.alg)?);
        }
        if let Some(p) = &self.secret_file {
            return one(p, vec![super::load_secret_file(p, kid, self.alg)?]);
        }
        Ok(Loaded::Url(self.jwks_config()?))
    }
}
