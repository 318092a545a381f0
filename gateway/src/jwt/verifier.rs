//! The verifier: token → checked header and claims, through the key store and the cache.

use super::alg::{AlgSet, Algorithm};
use super::b64;
use super::cache::{CacheConfig, CacheStats, TokenCache};
use super::claims::{self, ClaimsPolicy, Times};
use super::error::{ParseError, Rejection, Segment};
use super::token::{self, Header};
use crate::keys::{KeySourceConfig, KeyStore};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::sync::Arc;
use std::time::Duration;

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
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VerifierConfig {
    /// Accepted `iss` values (exact match); empty = not checked.
    pub issuers: Vec<String>,
    /// Accepted audiences (`aud` must contain one); empty = not checked.
    pub audiences: Vec<String>,
    /// Algorithms accepted at all; empty = every supported one (each key is further bound
    /// to its own algorithm).
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
    /// Key sources (used to build the [`KeyStore`] with [`KeyStore::from_config`]).
    pub keys: Vec<KeySourceConfig>,
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
        }
    }
}

/// A configuration the verifier cannot work with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A value is out of range or inconsistent.
    #[error("jwt configuration: {0}")]
    Invalid(String),
}

impl VerifierConfig {
    /// Checks values and key source shapes (without loading keys).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_token_bytes == 0 {
            return Err(ConfigError::Invalid("max_token_bytes must be > 0".into()));
        }
        if self.leeway > 86_400 {
            return Err(ConfigError::Invalid("leeway above one day".into()));
        }
        for k in &self.keys {
            k.validate()
                .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        }
        Ok(())
    }
}

/// A token whose signature and claims passed. Shared (`Arc`) between the cache and callers.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedToken {
    header: Map<String, Value>,
    claims: Map<String, Value>,
    alg: Algorithm,
    times: Times,
    key_fingerprint: u64,
}

impl VerifiedToken {
    /// The protected header.
    pub fn header(&self) -> &Map<String, Value> {
        &self.header
    }
    /// Every claim.
    pub fn claims(&self) -> &Map<String, Value> {
        &self.claims
    }
    /// One claim.
    pub fn claim(&self, name: &str) -> Option<&Value> {
        self.claims.get(name)
    }
    /// The algorithm that verified it.
    pub fn alg(&self) -> Algorithm {
        self.alg
    }
    /// The header's `kid`.
    pub fn kid(&self) -> Option<&str> {
        self.header.get("kid").and_then(Value::as_str)
    }
    /// `sub`, if a string.
    pub fn subject(&self) -> Option<&str> {
        self.claims.get("sub").and_then(Value::as_str)
    }
    /// `iss`, if a string.
    pub fn issuer(&self) -> Option<&str> {
        self.claims.get("iss").and_then(Value::as_str)
    }
    /// `exp` in Unix seconds.
    pub fn exp(&self) -> Option<i64> {
        self.times.exp
    }
    /// `nbf` in Unix seconds.
    pub fn nbf(&self) -> Option<i64> {
        self.times.nbf
    }
    /// `iat` in Unix seconds.
    pub fn iat(&self) -> Option<i64> {
        self.times.iat
    }
    /// Fingerprint of the key that verified the signature.
    pub fn key_fingerprint(&self) -> u64 {
        self.key_fingerprint
    }
    /// Granted scopes: the space-separated `scope` string (RFC 8693/9068) and the `scp`
    /// array or string some issuers use. No allocation.
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        let scope = self
            .claims
            .get("scope")
            .and_then(Value::as_str)
            .into_iter()
            .flat_map(|s| s.split(' '));
        let scp = self.claims.get("scp");
        let scp_str = scp
            .and_then(Value::as_str)
            .into_iter()
            .flat_map(|s| s.split(' '));
        let scp_arr = scp
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(Value::as_str);
        scope
            .chain(scp_str)
            .chain(scp_arr)
            .filter(|s| !s.is_empty())
    }
    /// Whether `scope` was granted (exact token match, never a substring).
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes().any(|s| s == scope)
    }
}

/// Largest signature any supported algorithm produces (RSA 8192).
const MAX_SIG: usize = 1024;

/// Verifies tokens against a key store and a policy. Cheap to share (`Arc` it).
pub struct Verifier {
    keys: KeyStore,
    allowed: AlgSet,
    policy: ClaimsPolicy,
    typ: Option<String>,
    max_token_bytes: usize,
    cache: Option<TokenCache>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("allowed", &self.allowed)
            .field("policy", &self.policy)
            .field("keys", &self.keys)
            .finish()
    }
}

fn normalize_typ(t: &str) -> String {
    let l = t.to_ascii_lowercase();
    match l.strip_prefix("application/") {
        Some(rest) => rest.to_owned(),
        None => l,
    }
}

/// Current Unix time in seconds.
pub fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

impl Verifier {
    /// Builds a verifier. The config's `keys` are not read here: build `keys` with
    /// [`KeyStore::from_config`] (or by hand).
    pub fn new(config: VerifierConfig, keys: KeyStore) -> Result<Self, ConfigError> {
        config.validate()?;
        let allowed = if config.algorithms.is_empty() {
            Algorithm::ALL.into_iter().collect()
        } else {
            config.algorithms.iter().copied().collect()
        };
        Ok(Verifier {
            keys,
            allowed,
            policy: ClaimsPolicy {
                issuers: config.issuers,
                audiences: config.audiences,
                require_exp: config.require_exp,
                leeway: i64::try_from(config.leeway).unwrap_or(i64::MAX),
                required: config.required_claims,
            },
            typ: config.typ.as_deref().map(normalize_typ),
            max_token_bytes: config.max_token_bytes,
            cache: config.cache.enabled.then(|| TokenCache::new(&config.cache)),
        })
    }

    /// The key store.
    pub fn keys(&self) -> &KeyStore {
        &self.keys
    }

    /// Cache counters (`None` when the cache is disabled).
    pub fn cache_stats(&self) -> Option<CacheStats> {
        self.cache.as_ref().map(TokenCache::stats)
    }

    /// Verifies `token` at Unix time `now`. Cache hits re-check `exp`/`nbf` and that the
    /// signing key is still loaded. A `kid` that no key has asks JWKS URL sources for a
    /// (rate-limited) refetch in the background; see [`Self::verify_async`] to wait for it.
    pub fn verify(&self, token: &str, now: i64) -> Result<Arc<VerifiedToken>, Rejection> {
        self.verify_impl(token, now, true)
    }

    fn verify_impl(
        &self,
        token: &str,
        now: i64,
        refetch: bool,
    ) -> Result<Arc<VerifiedToken>, Rejection> {
        if token.len() > self.max_token_bytes {
            return Err(ParseError::TooLarge {
                len: token.len(),
                limit: self.max_token_bytes,
            }
            .into());
        }
        if let Some(cache) = &self.cache {
            if let Some(hit) = cache.get(token) {
                if self
                    .keys
                    .snapshot()
                    .contains_fingerprint(hit.key_fingerprint)
                {
                    claims::check_times(&hit.times, now, self.policy.leeway)?;
                    return Ok(hit);
                }
                // Its key was rotated out: forget it and verify from scratch.
                cache.remove(token);
            }
        }
        let verified = match self.check(token, now) {
            Ok(v) => Arc::new(v),
            Err(e) => {
                if refetch && matches!(e, Rejection::KeyNotFound(Some(_))) {
                    // Maybe the issuer rotated: ask for a refetch (rate-limited).
                    let _ = self.keys.request_refresh();
                }
                return Err(e);
            }
        };
        if let Some(cache) = &self.cache {
            cache.insert(token, Arc::clone(&verified), now);
        }
        Ok(verified)
    }

    /// Like [`Self::verify`], but when the token's `kid` is unknown and a JWKS URL source
    /// grants a refetch, waits (up to `wait`) for it and tries once more.
    pub async fn verify_async(
        &self,
        token: &str,
        now: i64,
        wait: Duration,
    ) -> Result<Arc<VerifiedToken>, Rejection> {
        match self.verify_impl(token, now, false) {
            Err(Rejection::KeyNotFound(Some(_))) => {
                let waiters = self.keys.request_refresh();
                if waiters.is_empty() {
                    return Err(Rejection::KeyNotFound(
                        token::split(token, self.max_token_bytes)
                            .ok()
                            .and_then(|p| token::decode_header(p.header).ok())
                            .and_then(|h| h.kid().map(|k| k.chars().take(64).collect())),
                    ));
                }
                let _ = tokio::time::timeout(wait, async {
                    for mut w in waiters {
                        let _ = w.changed().await;
                    }
                })
                .await;
                self.verify_impl(token, now, false)
            }
            other => other,
        }
    }

    /// Full verification bypassing the cache (nothing is read from or written to it).
    pub fn verify_uncached(&self, token: &str, now: i64) -> Result<VerifiedToken, Rejection> {
        self.check(token, now)
    }

    fn check(&self, token: &str, now: i64) -> Result<VerifiedToken, Rejection> {
        let parts = token::split(token, self.max_token_bytes)?;
        let header: Header = token::decode_header(parts.header)?;
        let alg = header.alg();
        if !self.allowed.contains(alg) {
            return Err(Rejection::alg(alg));
        }
        if let Some(want) = &self.typ {
            let found = header.typ().map(normalize_typ).unwrap_or_default();
            if &found != want {
                return Err(ParseError::Typ {
                    found,
                    required: want.clone(),
                }
                .into());
            }
        }
        // Decode (and so validate) every segment before touching keys.
        b64::validate_url(parts.payload.as_bytes())
            .map_err(|e| ParseError::Base64(Segment::Payload, e))?;
        let mut sig_buf = [0u8; MAX_SIG];
        let sig = match b64::decode_url_into(parts.signature.as_bytes(), &mut sig_buf) {
            Ok(n) => sig_buf.get(..n).unwrap_or_default(),
            Err(b64::B64Error::TooLong) => {
                b64::validate_url(parts.signature.as_bytes())
                    .map_err(|e| ParseError::Base64(Segment::Signature, e))?;
                // Well-formed but longer than any signature we could verify.
                return Err(Rejection::BadSignature);
            }
            Err(e) => return Err(ParseError::Base64(Segment::Signature, e).into()),
        };

        let fingerprint = {
            let set = self.keys.snapshot();
            let kid = header.kid();
            let (mut selected, mut bound) = (false, false);
            let mut verified_by = None;
            for key in set.select(kid) {
                selected = true;
                if !key.algorithms().contains(alg) {
                    continue;
                }
                bound = true;
                if key.verify(alg, parts.signing_input.as_bytes(), sig) {
                    verified_by = Some(key.fingerprint());
                    break;
                }
            }
            match verified_by {
                Some(fp) => fp,
                None if bound => return Err(Rejection::BadSignature),
                None if selected => return Err(Rejection::alg(alg)),
                None => {
                    return Err(Rejection::KeyNotFound(
                        kid.map(|k| k.chars().take(64).collect()),
                    ))
                }
            }
        };

        let claims = token::decode_claims(parts.payload)?;
        let times = self.policy.check(&claims, now)?;
        Ok(VerifiedToken {
            header: header.into_map(),
            claims,
            alg,
            times,
            key_fingerprint: fingerprint,
        })
    }
}
