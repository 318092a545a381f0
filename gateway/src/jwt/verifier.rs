//! The verifier: token → checked header and claims, through the key store and the cache.

use super::alg::{AlgSet, Algorithm};
use super::b64;
use super::cache::{CacheStats, TokenCache};
use super::claims::{self, ClaimsPolicy, Times};
use super::config::{ConfigError, VerifierConfig, DEFAULT_ISSUER};
use super::error::{ParseError, Rejection, Segment};
use super::json;
use super::scan::{self, Str};
use super::token::{self, Header};
use crate::keys::{JwksSource, KeyStore};
use crate::ratelimit::{Decision, KeyedLimiter};
use serde_json::{Map, Value};
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// A token whose signature and claims passed. Shared (`Arc`) between the cache and callers.
///
/// It keeps the decoded header and claims JSON; their maps ([`Self::header`],
/// [`Self::claims`]) are built on first use, so verifying does not build a document tree
/// that most requests never look at.
#[derive(Debug, Clone)]
pub struct VerifiedToken {
    /// Decoded header JSON followed by decoded claims JSON, both strictly valid.
    json: Box<[u8]>,
    header_len: usize,
    header: OnceLock<Map<String, Value>>,
    claims: OnceLock<Map<String, Value>>,
    alg: Algorithm,
    times: Times,
    key_fingerprint: u64,
    /// Index of the issuer whose key verified it (in the verifier's issuer list).
    issuer: usize,
    issuer_name: Arc<str>,
}

impl PartialEq for VerifiedToken {
    fn eq(&self, other: &Self) -> bool {
        // The maps are functions of `json`.
        self.json == other.json
            && self.header_len == other.header_len
            && self.alg == other.alg
            && self.times == other.times
            && self.key_fingerprint == other.key_fingerprint
            && self.issuer == other.issuer
            && self.issuer_name == other.issuer_name
    }
}

/// Parses JSON that verification already read strictly ([`super::scan`] is as strict as
/// [`json::parse_object`], which unit tests hold it to); an empty map should they ever
/// disagree, so a claim is missing rather than wrong.
fn object(json: &[u8]) -> Map<String, Value> {
    json::parse_object(json).unwrap_or_default()
}

impl VerifiedToken {
    /// The protected header.
    pub fn header(&self) -> &Map<String, Value> {
        self.header
            .get_or_init(|| object(self.json.get(..self.header_len).unwrap_or_default()))
    }
    /// Every claim.
    pub fn claims(&self) -> &Map<String, Value> {
        self.claims
            .get_or_init(|| object(self.json.get(self.header_len..).unwrap_or_default()))
    }
    /// One claim.
    pub fn claim(&self, name: &str) -> Option<&Value> {
        self.claims().get(name)
    }
    /// The algorithm that verified it.
    pub fn alg(&self) -> Algorithm {
        self.alg
    }
    /// The header's `kid`.
    pub fn kid(&self) -> Option<&str> {
        self.header().get("kid").and_then(Value::as_str)
    }
    /// `sub`, if a string.
    pub fn subject(&self) -> Option<&str> {
        self.claims().get("sub").and_then(Value::as_str)
    }
    /// `iss`, if a string.
    pub fn issuer(&self) -> Option<&str> {
        self.claims().get("iss").and_then(Value::as_str)
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
    /// The configured issuer whose key verified it: a `[[jwt.issuer]]` name, or
    /// `default` for the unnamed issuer (`[jwt] issuers` + `[[jwt.keys]]`).
    pub fn issuer_name(&self) -> &str {
        &self.issuer_name
    }
    /// Fingerprint of the key that verified the signature.
    pub fn key_fingerprint(&self) -> u64 {
        self.key_fingerprint
    }
    /// Granted scopes: the space-separated `scope` string (RFC 8693/9068) and the `scp`
    /// array or string some issuers use. No allocation.
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        let claims = self.claims();
        let scope = claims
            .get("scope")
            .and_then(Value::as_str)
            .into_iter()
            .flat_map(|s| s.split(' '));
        let scp = claims.get("scp");
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

/// Largest non-RSA signature (ES512's 132 bytes).
const SMALL_SIG: usize = 132;

/// Largest signature of HMAC, ES256 and EdDSA (64 bytes): the common tokens' buffer is
/// zeroed by four stores.
const TINY_SIG: usize = 64;

/// A token without `kid` is tried against at most this many of its issuer's keys (those
/// bound to its `alg`, in configuration order): an issuer with many keys would otherwise let
/// one kid-less token cost many signature checks.
pub const MAX_KIDLESS_KEYS: usize = 4;

/// One issuer: its keys and the policy its tokens are checked under.
struct Issuer {
    name: Arc<str>,
    keys: KeyStore,
    allowed: AlgSet,
    policy: ClaimsPolicy,
    verified: AtomicU64,
    rejected: AtomicU64,
}

/// Counters of one issuer, for metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuerStats {
    /// The issuer's name (`default` for the unnamed one).
    pub name: String,
    /// Tokens accepted (cache hits included).
    pub verified: u64,
    /// Tokens of this issuer refused after it was selected (signature, claims, key).
    pub rejected: u64,
    /// Keys loaded now.
    pub keys: usize,
    /// Whether a JWKS source of this issuer serves a stale set.
    pub stale: bool,
}

/// Verifies tokens against per-issuer key stores and policies. Cheap to share (`Arc` it).
///
/// The token's `iss` selects the issuer first (exact match among the named issuers; any
/// other value, or none, goes to the unnamed issuer when there is one), then `kid` selects
/// among that issuer's keys only: a key never verifies another issuer's token.
pub struct Verifier {
    issuers: Vec<Issuer>,
    /// Named issuers' `iss` values with their index in `issuers`.
    by_iss: Vec<(Box<str>, usize)>,
    /// Index of the unnamed issuer, if configured.
    default: Option<usize>,
    /// Every algorithm some issuer accepts (an early, cheap refusal).
    any_allowed: AlgSet,
    typ: Option<String>,
    /// Claim names every token must have (every issuer's policy has the same list, so the
    /// claims are read once, before the issuer is known).
    required: Vec<String>,
    max_token_bytes: usize,
    cache: Option<TokenCache>,
    /// Signature verifications per source.
    budget: Option<KeyedLimiter<IpAddr>>,
    budget_refused: AtomicU64,
    unknown_issuer: AtomicU64,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.issuers.iter().map(|i| &*i.name).collect();
        f.debug_struct("Verifier")
            .field("issuers", &names)
            .field("any_allowed", &self.any_allowed)
            .finish()
    }
}

/// Whether a token's `typ` is the required one (`want`, normalised): compared without
/// case and without an `application/` prefix (RFC 7515 §4.1.9), as [`normalize_typ`] does,
/// without allocating. Absent is the empty string.
fn typ_matches(found: Option<&str>, want: &str) -> bool {
    let t = found.unwrap_or_default();
    let rest = match t.get(..12) {
        Some(prefix) if prefix.eq_ignore_ascii_case("application/") => t.get(12..),
        _ => Some(t),
    };
    rest.is_some_and(|r| r.eq_ignore_ascii_case(want))
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

/// The budget's key for a source: the address, IPv6 by /64 (one host holds a whole /64).
fn budget_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) if v6.to_ipv4_mapped().is_none() => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn alg_set(algs: &[Algorithm]) -> AlgSet {
    if algs.is_empty() {
        Algorithm::ALL.into_iter().collect()
    } else {
        algs.iter().copied().collect()
    }
}

/// A failed verification and, when known, the issuer it was checked against.
struct Failed {
    rejection: Rejection,
    issuer: Option<usize>,
}

impl From<Rejection> for Failed {
    fn from(rejection: Rejection) -> Self {
        Failed {
            rejection,
            issuer: None,
        }
    }
}

impl From<ParseError> for Failed {
    fn from(e: ParseError) -> Self {
        Rejection::from(e).into()
    }
}

impl Verifier {
    /// A verifier with only the unnamed issuer, whose keys are `keys`. The config's `keys`
    /// are not read here: build `keys` with [`KeyStore::from_config`] (or by hand). A config
    /// with `[[jwt.issuer]]` entries needs [`Self::load`].
    pub fn new(config: VerifierConfig, keys: KeyStore) -> Result<Self, ConfigError> {
        if !config.issuer.is_empty() {
            return Err(ConfigError::in_issuer(
                0,
                "keys",
                "named issuers load their own keys: use Verifier::load",
            ));
        }
        Self::build(config, Some(keys), Vec::new())
    }

    /// A verifier for the whole config: `default_keys` for the unnamed issuer (built by the
    /// caller from `config.keys`), and each named issuer's key files loaded now. The named
    /// issuers' JWKS URL sources are returned with the issuer's name, empty: the caller
    /// fetches them ([`JwksSource::refresh`]) and spawns their refresh loops.
    pub fn load(
        config: VerifierConfig,
        default_keys: KeyStore,
    ) -> Result<(Self, Vec<(String, JwksSource)>), ConfigError> {
        config.validate()?;
        let mut stores = Vec::with_capacity(config.issuer.len());
        let mut urls = Vec::new();
        for (i, is) in config.issuer.iter().enumerate() {
            let (store, sources) = KeyStore::from_config(&is.keys).map_err(|e| {
                ConfigError::in_issuer(i, "keys", format!("issuer `{}`: {e}", is.name))
            })?;
            urls.extend(sources.into_iter().map(|s| (is.name.clone(), s)));
            stores.push(store);
        }
        let default = config.has_default_issuer().then_some(default_keys);
        Ok((Self::build(config, default, stores)?, urls))
    }

    fn build(
        config: VerifierConfig,
        default_keys: Option<KeyStore>,
        named: Vec<KeyStore>,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        let leeway = i64::try_from(config.leeway).unwrap_or(i64::MAX);
        let policy = |issuers: Vec<String>, audiences: Vec<String>| ClaimsPolicy {
            issuers,
            audiences,
            require_exp: config.require_exp,
            leeway,
            required: config.required_claims.clone(),
        };
        let issuer = |name: &str, keys, allowed, policy| Issuer {
            name: Arc::from(name),
            keys,
            allowed,
            policy,
            verified: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
        };
        let mut issuers = Vec::new();
        let mut default = None;
        if let Some(keys) = default_keys {
            default = Some(issuers.len());
            issuers.push(issuer(
                DEFAULT_ISSUER,
                keys,
                alg_set(&config.algorithms),
                policy(config.issuers.clone(), config.audiences.clone()),
            ));
        }
        let mut by_iss = Vec::new();
        for (cfg, keys) in config.issuer.iter().zip(named) {
            by_iss.push((Box::from(cfg.iss.as_str()), issuers.len()));
            issuers.push(issuer(
                &cfg.name,
                keys,
                alg_set(cfg.algorithms.as_deref().unwrap_or(&config.algorithms)),
                policy(
                    vec![cfg.iss.clone()],
                    cfg.audiences
                        .clone()
                        .unwrap_or_else(|| config.audiences.clone()),
                ),
            ));
        }
        let mut any_allowed = AlgSet::EMPTY;
        for a in issuers.iter().flat_map(|i| i.allowed.iter()) {
            any_allowed.insert(a);
        }
        let b = &config.verify_budget;
        Ok(Verifier {
            issuers,
            by_iss,
            default,
            any_allowed,
            typ: config.typ.as_deref().map(normalize_typ),
            required: config.required_claims.clone(),
            max_token_bytes: config.max_token_bytes,
            cache: config.cache.enabled.then(|| TokenCache::new(&config.cache)),
            budget: b
                .enabled
                .then(|| KeyedLimiter::new(b.rate, b.burst, b.max_sources)),
            budget_refused: AtomicU64::new(0),
            unknown_issuer: AtomicU64::new(0),
        })
    }

    /// The unnamed issuer's key store (the first named issuer's when there is none).
    pub fn keys(&self) -> &KeyStore {
        let i = self.default.unwrap_or(0);
        match self.issuers.get(i) {
            Some(is) => &is.keys,
            None => empty_store(),
        }
    }

    /// The key store of the issuer called `name`.
    pub fn issuer_keys(&self, name: &str) -> Option<&KeyStore> {
        self.issuers
            .iter()
            .find(|i| &*i.name == name)
            .map(|i| &i.keys)
    }

    /// Every issuer's name, the unnamed one (`default`) first when configured.
    pub fn issuer_names(&self) -> impl Iterator<Item = &str> {
        self.issuers.iter().map(|i| &*i.name)
    }

    /// Per-issuer counters and key-set state.
    pub fn issuer_stats(&self) -> Vec<IssuerStats> {
        self.issuers
            .iter()
            .map(|i| IssuerStats {
                name: i.name.to_string(),
                verified: i.verified.load(Ordering::Relaxed),
                rejected: i.rejected.load(Ordering::Relaxed),
                keys: i.keys.snapshot().len(),
                stale: i.keys.is_stale(),
            })
            .collect()
    }

    /// Tokens refused because their `iss` matched no issuer (and no unnamed issuer exists).
    pub fn unknown_issuer_count(&self) -> u64 {
        self.unknown_issuer.load(Ordering::Relaxed)
    }

    /// Verifications refused because the source's budget was spent.
    pub fn budget_refused_count(&self) -> u64 {
        self.budget_refused.load(Ordering::Relaxed)
    }

    /// Whether any issuer's JWKS source serves a stale set.
    pub fn is_stale(&self) -> bool {
        self.issuers.iter().any(|i| i.keys.is_stale())
    }

    /// Keys loaded over all issuers.
    pub fn key_count(&self) -> usize {
        self.issuers.iter().map(|i| i.keys.snapshot().len()).sum()
    }

    /// Cache counters (`None` when the cache is disabled).
    pub fn cache_stats(&self) -> Option<CacheStats> {
        self.cache.as_ref().map(TokenCache::stats)
    }

    /// Verifies `token` at Unix time `now`. Cache hits re-check `exp`/`nbf` and that the
    /// signing key is still loaded. A `kid` that no key has asks JWKS URL sources for a
    /// (rate-limited) refetch in the background; see [`Self::verify_async`] to wait for it.
    /// No verification budget applies (no source).
    pub fn verify(&self, token: &str, now: i64) -> Result<Arc<VerifiedToken>, Rejection> {
        self.verify_impl(token, now, None, true)
            .map_err(|f| f.rejection)
    }

    /// Like [`Self::verify`], charging a signature check to `source`'s budget: once spent,
    /// the token is refused ([`Rejection::Throttled`]) without a signature check.
    pub fn verify_from(
        &self,
        token: &str,
        now: i64,
        source: IpAddr,
    ) -> Result<Arc<VerifiedToken>, Rejection> {
        self.verify_impl(token, now, Some(source), true)
            .map_err(|f| f.rejection)
    }

    fn count(&self, r: &Result<Arc<VerifiedToken>, Failed>) {
        let (issuer, ok) = match r {
            Ok(t) => (Some(t.issuer), true),
            Err(f) => (f.issuer, false),
        };
        if let Some(is) = issuer.and_then(|i| self.issuers.get(i)) {
            if ok { &is.verified } else { &is.rejected }.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn verify_impl(
        &self,
        token: &str,
        now: i64,
        source: Option<IpAddr>,
        refetch: bool,
    ) -> Result<Arc<VerifiedToken>, Failed> {
        let r = self.verify_counted(token, now, source, refetch);
        self.count(&r);
        r
    }

    fn verify_counted(
        &self,
        token: &str,
        now: i64,
        source: Option<IpAddr>,
        refetch: bool,
    ) -> Result<Arc<VerifiedToken>, Failed> {
        if token.len() > self.max_token_bytes {
            return Err(Rejection::from(ParseError::TooLarge {
                len: token.len(),
                limit: self.max_token_bytes,
            })
            .into());
        }
        if let Some(cache) = &self.cache {
            if let Some(hit) = cache.get(token) {
                // The cached token's issuer is the one its `iss` selected: its key must still
                // be in that issuer's set.
                if let Some(is) = self.issuers.get(hit.issuer) {
                    if is.keys.snapshot().contains_fingerprint(hit.key_fingerprint) {
                        claims::check_times(&hit.times, now, is.policy.leeway).map_err(|e| {
                            Failed {
                                rejection: e.into(),
                                issuer: Some(hit.issuer),
                            }
                        })?;
                        return Ok(hit);
                    }
                }
                // Its key was rotated out: forget it and verify from scratch.
                cache.remove(token);
            }
        }
        let verified = match self.check(token, now, source) {
            Ok(v) => Arc::new(v),
            Err(e) => {
                if refetch && matches!(e.rejection, Rejection::KeyNotFound(Some(_))) {
                    // Maybe the issuer rotated: ask for a refetch (rate-limited).
                    if let Some(is) = e.issuer.and_then(|i| self.issuers.get(i)) {
                        let _ = is.keys.request_refresh();
                    }
                }
                return Err(e);
            }
        };
        if let Some(cache) = &self.cache {
            cache.insert(token, Arc::clone(&verified), now);
        }
        Ok(verified)
    }

    /// Like [`Self::verify`], but when the token's `kid` is unknown and a JWKS URL source of
    /// its issuer grants a refetch, waits (up to `wait`) for it and tries once more.
    pub async fn verify_async(
        &self,
        token: &str,
        now: i64,
        wait: Duration,
    ) -> Result<Arc<VerifiedToken>, Rejection> {
        self.verify_async_from(token, now, wait, None).await
    }

    /// [`Self::verify_async`] for a request from `source`, which pays for signature checks
    /// from its budget (see [`Self::verify_from`]).
    pub async fn verify_async_from(
        &self,
        token: &str,
        now: i64,
        wait: Duration,
        source: Option<IpAddr>,
    ) -> Result<Arc<VerifiedToken>, Rejection> {
        match self.verify_impl(token, now, source, false) {
            Err(Failed {
                rejection: Rejection::KeyNotFound(Some(kid)),
                issuer,
            }) => {
                let waiters = issuer
                    .and_then(|i| self.issuers.get(i))
                    .map(|is| is.keys.request_refresh())
                    .unwrap_or_default();
                if waiters.is_empty() {
                    return Err(Rejection::KeyNotFound(Some(kid)));
                }
                let _ = tokio::time::timeout(wait, async {
                    for mut w in waiters {
                        let _ = w.changed().await;
                    }
                })
                .await;
                self.verify_impl(token, now, source, false)
                    .map_err(|f| f.rejection)
            }
            other => other.map_err(|f| f.rejection),
        }
    }

    /// Full verification bypassing the cache (nothing is read from or written to it) and
    /// any budget.
    pub fn verify_uncached(&self, token: &str, now: i64) -> Result<VerifiedToken, Rejection> {
        self.check(token, now, None).map_err(|f| f.rejection)
    }

    /// The issuer a token's claims select.
    fn select_issuer(&self, iss: &Str<'_>) -> Option<usize> {
        if let Some(iss) = iss.as_str() {
            if let Some((_, i)) = self.by_iss.iter().find(|(s, _)| **s == *iss) {
                return Some(*i);
            }
        }
        self.default
    }

    /// Spends one signature check from `source`'s budget.
    fn charge(&self, source: Option<IpAddr>) -> Result<(), Rejection> {
        let (Some(budget), Some(ip)) = (&self.budget, source) else {
            return Ok(());
        };
        let key = budget_key(ip);
        match budget.take(&key, || key, Instant::now()) {
            Decision::Allowed { .. } => Ok(()),
            Decision::Limited { retry_after } => {
                self.budget_refused.fetch_add(1, Ordering::Relaxed);
                Err(Rejection::Throttled { retry_after })
            }
        }
    }

    fn check(
        &self,
        token: &str,
        now: i64,
        source: Option<IpAddr>,
    ) -> Result<VerifiedToken, Failed> {
        // The payload, the long segment, is searched for a dot only when the token failed:
        // one with a dot there was never three segments, and fails before anything is
        // counted against an issuer or a budget (its payload is not base64url).
        let parts = token::split_outer(token, self.max_token_bytes)?;
        self.check_parts(parts, now, source).map_err(|e| {
            if memchr::memchr(b'.', parts.payload.as_bytes()).is_some() {
                ParseError::Segments.into()
            } else {
                e
            }
        })
    }

    fn check_parts(
        &self,
        parts: token::Parts<'_>,
        now: i64,
        source: Option<IpAddr>,
    ) -> Result<VerifiedToken, Failed> {
        // Header and payload are decoded into one buffer, which a verified token keeps.
        let header_len = b64::decoded_len(parts.header.len()).ok_or(ParseError::Base64(
            Segment::Header,
            b64::B64Error::InvalidLength,
        ))?;
        let payload_len = b64::decoded_len(parts.payload.len()).unwrap_or(0);
        // Decoded onto the end of the buffer, so it is never zeroed first (nor `calloc`ed).
        let mut json = Vec::with_capacity(header_len + payload_len);
        b64::decode_url_append(parts.header.as_bytes(), &mut json)
            .map_err(|e| ParseError::Base64(Segment::Header, e))?;
        // A payload encoding error is reported after the header's checks, as it always was
        // (the buffer then holds the header alone; the payload is not read before).
        let payload_decoded = b64::decode_url_append(parts.payload.as_bytes(), &mut json)
            .map_err(|e| ParseError::Base64(Segment::Payload, e));
        let (header_json, payload_json) = json.split_at(header_len.min(json.len()));
        // One UTF-8 check for both documents (one pass instead of two); if it fails, each is
        // checked on its own, so a failure is reported for the right document in the order
        // of the other checks.
        let both = std::str::from_utf8(&json)
            .ok()
            .and_then(|all| Some((all.get(..header_len)?, all.get(header_len..)?)));
        let (header_text, payload_text) = match both {
            Some((h, p)) => (Ok(h), Ok(p)),
            None => (scan::utf8(header_json), scan::utf8(payload_json)),
        };
        let header =
            Header::parse_str(header_text.map_err(|e| ParseError::Json(Segment::Header, e))?)?;
        let alg = header.alg();
        if !self.any_allowed.contains(alg) {
            return Err(Rejection::alg(alg).into());
        }
        if let Some(want) = &self.typ {
            if !typ_matches(header.typ(), want) {
                return Err(ParseError::Typ {
                    found: header.typ().map(normalize_typ).unwrap_or_default(),
                    required: want.clone(),
                }
                .into());
            }
        }
        // Decode (and so validate) every segment before touching keys.
        payload_decoded?;
        // HMAC, ECDSA and EdDSA signatures fit the small buffer (most of them the tiny one);
        // only RSA needs (and zeroes) the large one.
        let (mut tiny, mut small, mut large);
        let sig_buf: &mut [u8] = match b64::decoded_len(parts.signature.len()) {
            Some(n) if n <= TINY_SIG => {
                tiny = [0u8; TINY_SIG];
                &mut tiny
            }
            Some(n) if n <= SMALL_SIG => {
                small = [0u8; SMALL_SIG];
                &mut small
            }
            _ => {
                large = [0u8; MAX_SIG];
                &mut large
            }
        };
        let sig = match b64::decode_url_into(parts.signature.as_bytes(), sig_buf) {
            Ok(n) => sig_buf.get(..n).unwrap_or_default(),
            Err(b64::B64Error::TooLong) => {
                b64::validate_url(parts.signature.as_bytes())
                    .map_err(|e| ParseError::Base64(Segment::Signature, e))?;
                // Well-formed but longer than any signature we could verify.
                return Err(Rejection::BadSignature.into());
            }
            Err(e) => return Err(ParseError::Base64(Segment::Signature, e).into()),
        };
        // The claims are read before the signature is checked: their `iss` chooses whose
        // keys may verify it. They are trusted only after the signature passed.
        let mut claims = scan::RawClaims::default();
        payload_text
            .and_then(|p| scan::claims_into(p, &self.required, &mut claims))
            .map_err(|e| ParseError::Json(Segment::Payload, e))?;
        let Some(index) = self.select_issuer(&claims.iss) else {
            self.unknown_issuer.fetch_add(1, Ordering::Relaxed);
            return Err(Rejection::Claims(super::error::ClaimsError::BadIssuer).into());
        };
        let in_issuer = |rejection: Rejection| Failed {
            rejection,
            issuer: Some(index),
        };
        let Some(issuer) = self.issuers.get(index) else {
            return Err(Rejection::Claims(super::error::ClaimsError::BadIssuer).into());
        };
        if !issuer.allowed.contains(alg) {
            return Err(in_issuer(Rejection::alg(alg)));
        }

        let fingerprint = {
            let set = issuer.keys.snapshot();
            let kid = header.kid();
            let (mut selected, mut tried) = (false, 0usize);
            let mut verified_by = None;
            for key in set.select(kid) {
                selected = true;
                if !key.algorithms().contains(alg) {
                    continue;
                }
                if kid.is_none() && tried == MAX_KIDLESS_KEYS {
                    break;
                }
                if tried == 0 {
                    self.charge(source).map_err(in_issuer)?;
                }
                tried += 1;
                if key.verify(alg, parts.signing_input.as_bytes(), sig) {
                    verified_by = Some(key.fingerprint());
                    break;
                }
            }
            match verified_by {
                Some(fp) => fp,
                None if tried > 0 => return Err(in_issuer(Rejection::BadSignature)),
                None if selected => return Err(in_issuer(Rejection::alg(alg))),
                None => {
                    return Err(in_issuer(Rejection::KeyNotFound(
                        kid.map(|k| k.chars().take(64).collect()),
                    )))
                }
            }
        };

        let times = issuer
            .policy
            .check(&claims, now)
            .map_err(|e| in_issuer(e.into()))?;
        Ok(VerifiedToken {
            json: json.into_boxed_slice(),
            header_len,
            header: OnceLock::new(),
            claims: OnceLock::new(),
            alg,
            times,
            key_fingerprint: fingerprint,
            issuer: index,
            issuer_name: Arc::clone(&issuer.name),
        })
    }
}

/// An empty key store, for a verifier without issuers (every constructor makes at least
/// one; this keeps [`Verifier::keys`] free of an `Option`).
fn empty_store() -> &'static KeyStore {
    static EMPTY: std::sync::OnceLock<KeyStore> = std::sync::OnceLock::new();
    EMPTY.get_or_init(KeyStore::new)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typ_matches_as_normalised() {
        let cases = [
            "at+jwt",
            "AT+JWT",
            "application/at+jwt",
            "APPLICATION/At+Jwt",
            "application/",
            "application",
            "applicationXat+jwt",
            "application/application/at+jwt",
            "",
            "jwt",
            "applicatioñ/at+jwt",
            "ñ",
        ];
        for want in ["at+jwt", "jwt", "application/at+jwt", ""] {
            let want = normalize_typ(want);
            for found in cases {
                assert_eq!(
                    typ_matches(Some(found), &want),
                    normalize_typ(found) == want,
                    "{found:?} vs {want:?}"
                );
            }
            assert_eq!(typ_matches(None, &want), want.is_empty());
        }
    }
}
