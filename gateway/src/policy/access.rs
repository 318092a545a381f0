//! What a route asks of a verified token beyond its scopes: which issuers it accepts, the
//! claim rules (`require`), and its rate limit per subject, claim or source.

use super::claims::{ClaimRules, ClaimValues};
use crate::config::{AuthMode, Issue, RouteConfig};
use crate::jwt::VerifiedToken;
use crate::ratelimit::{Decision, KeyedLimiter, Rate};
use http::{HeaderName, HeaderValue};
use serde::Deserialize;
use serde_json::Value;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// `[[route]] rate_limit = { key = "sub", rate = "100/s", burst = 200 }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// `sub`, any other claim name (its value in the verified token), or `source` (the
    /// client address).
    pub key: String,
    /// `N/s`, `N/m` or `N/h`.
    pub rate: Rate,
    /// Requests one key may make at once; default: the rate's N.
    pub burst: Option<u32>,
    /// Keys tracked at once (least recently seen forgotten first).
    #[serde(default = "default_max_keys")]
    pub max_keys: usize,
}

fn default_max_keys() -> usize {
    100_000
}

/// Whose bucket a request takes from, and the buckets.
#[derive(Debug)]
enum Buckets {
    Source(KeyedLimiter<IpAddr>),
    Claim(String, KeyedLimiter<Box<str>>),
}

/// A route's rate limit.
#[derive(Debug)]
struct RouteLimit {
    rate: Rate,
    buckets: Buckets,
}

/// A request over its route's rate limit: what the 429 says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limited {
    /// Whole seconds until a request would pass (at least 1).
    pub retry_after: u64,
    policy: HeaderValue,
    state: HeaderValue,
}

impl Limited {
    /// `Retry-After`, and the `RateLimit-Policy`/`RateLimit` fields of
    /// draft-ietf-httpapi-ratelimit-headers (quota `q` per window `w` seconds; `r`
    /// remaining, `t` seconds until there is quota again).
    pub fn headers(&self) -> [(HeaderName, HeaderValue); 3] {
        [
            (
                http::header::RETRY_AFTER,
                HeaderValue::from(self.retry_after),
            ),
            (
                HeaderName::from_static("ratelimit-policy"),
                self.policy.clone(),
            ),
            (HeaderName::from_static("ratelimit"), self.state.clone()),
        ]
    }
}

/// A claim's value as a bucket key: strings as they are, numbers (and other scalars) as
/// JSON; arrays and objects are no key.
fn claim_key(v: &Value) -> Option<std::borrow::Cow<'_, str>> {
    match v {
        Value::String(s) => Some(std::borrow::Cow::Borrowed(s)),
        Value::Number(_) | Value::Bool(_) => Some(std::borrow::Cow::Owned(v.to_string())),
        _ => None,
    }
}

impl RouteLimit {
    fn new(cfg: &RateLimitConfig) -> Self {
        let burst = cfg.burst.unwrap_or(cfg.rate.count);
        Self {
            rate: cfg.rate,
            buckets: match cfg.key.as_str() {
                "source" => Buckets::Source(KeyedLimiter::new(cfg.rate, burst, cfg.max_keys)),
                claim => Buckets::Claim(
                    claim.to_owned(),
                    KeyedLimiter::new(cfg.rate, burst, cfg.max_keys),
                ),
            },
        }
    }

    fn check(&self, token: Option<&VerifiedToken>, source: IpAddr) -> Result<(), Limited> {
        let now = Instant::now();
        let decision = match &self.buckets {
            Buckets::Source(b) => b.take(&source, || source, now),
            Buckets::Claim(name, b) => {
                // Only ever from the verified token: without one (an anonymous request on
                // an `optional` route) or without the claim, there is no key to limit.
                let Some(key) = token.and_then(|t| t.claim(name)).and_then(claim_key) else {
                    return Ok(());
                };
                b.take(&*key, || Box::from(&*key), now)
            }
        };
        match decision {
            Decision::Allowed { .. } => Ok(()),
            Decision::Limited { retry_after } => Err(self.limited(retry_after)),
        }
    }

    fn limited(&self, retry_after: Duration) -> Limited {
        let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
        let secs = secs.max(1);
        let name = match &self.buckets {
            Buckets::Source(_) => "source",
            Buckets::Claim(c, _) => c.as_str(),
        };
        // An sf-string holds printable ASCII without `"` and `\`.
        let name: String = name
            .chars()
            .filter(|c| c.is_ascii_graphic() && *c != '"' && *c != '\\')
            .collect();
        let header = |text: String| {
            HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static("\"limit\""))
        };
        Limited {
            retry_after: secs,
            policy: header(format!(
                "\"{name}\";q={};w={}",
                self.rate.count,
                self.rate.per.as_secs()
            )),
            state: header(format!("\"{name}\";r=0;t={secs}")),
        }
    }
}

/// A route's issuers, claim rules and rate limit, compiled once.
#[derive(Debug, Default)]
pub struct RouteAccess {
    /// Accepted issuer names; `None` = every issuer.
    issuers: Option<Vec<Box<str>>>,
    claims: ClaimRules,
    limit: Option<RouteLimit>,
}

impl RouteAccess {
    /// From the route's `issuers`, `require` and `rate_limit` (validated by
    /// [`Self::validate`]).
    pub fn from_config(cfg: &RouteConfig) -> Self {
        Self {
            issuers: cfg
                .issuers
                .as_ref()
                .map(|v| v.iter().map(|s| Box::from(s.as_str())).collect()),
            claims: ClaimRules::new(&cfg.require),
            limit: cfg.rate_limit.as_ref().map(RouteLimit::new),
        }
    }

    /// Checks the route's `issuers`, `require` and `rate_limit` on their own (the issuer
    /// names against `[jwt]` are checked with the whole config).
    pub fn validate(cfg: &RouteConfig) -> Result<(), Issue> {
        let no_token = cfg.auth == AuthMode::None;
        if let Some(list) = &cfg.issuers {
            if list.is_empty() {
                return Err(Issue::new(
                    "issuers",
                    "an empty list accepts no token; leave it out to accept every issuer",
                ));
            }
            if no_token {
                return Err(Issue::new(
                    "issuers",
                    "needs auth = \"required\" or \"optional\"",
                ));
            }
        }
        if !cfg.require.is_empty() && no_token {
            return Err(Issue::new(
                "require",
                "needs auth = \"required\" or \"optional\"",
            ));
        }
        for (claim, values) in &cfg.require {
            if let ClaimValues::Any(v) = values {
                if v.is_empty() {
                    return Err(Issue::new(
                        "require",
                        format!("`{claim}`: an empty list matches nothing"),
                    ));
                }
            }
        }
        if let Some(rl) = &cfg.rate_limit {
            if rl.key.is_empty() {
                return Err(Issue::new(
                    "rate_limit",
                    "key must be `sub`, a claim name or `source`",
                ));
            }
            if rl.key != "source" && no_token {
                return Err(Issue::new(
                    "rate_limit",
                    format!("key `{}` is a claim: it needs a token (auth = \"required\" or \"optional\"), or use key = \"source\"", rl.key),
                ));
            }
            if rl.burst == Some(0) || rl.max_keys == 0 {
                return Err(Issue::new(
                    "rate_limit",
                    "burst and max_keys must be at least 1",
                ));
            }
        }
        Ok(())
    }

    /// Whether the route accepts tokens of the issuer that verified `token`.
    #[inline]
    pub fn accepts_issuer(&self, token: &VerifiedToken) -> bool {
        self.issuers
            .as_ref()
            .is_none_or(|list| list.iter().any(|n| **n == *token.issuer_name()))
    }

    /// Whether the token's claims satisfy the route's `require` rules.
    #[inline]
    pub fn claims_satisfied(&self, token: &VerifiedToken) -> bool {
        self.claims.satisfied(token.claims())
    }

    /// Takes a token from the request's bucket, or says how long to wait.
    pub fn rate_limit(&self, token: Option<&VerifiedToken>, source: IpAddr) -> Result<(), Limited> {
        match &self.limit {
            None => Ok(()),
            Some(l) => l.check(token, source),
        }
    }
}
