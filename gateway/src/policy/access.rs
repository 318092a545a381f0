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
        let secs = crate::ratelimit::retry_after_secs(retry_after);
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
    /// Further rules for some methods (`require_methods`).
    by_method: Vec<(http::Method, ClaimRules)>,
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
            by_method: cfg
                .require_methods
                .iter()
                .filter_map(|(m, rules)| {
                    Some((
                        http::Method::from_bytes(m.as_bytes()).ok()?,
                        ClaimRules::new(rules),
                    ))
                })
                .collect(),
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
        if !cfg.require_methods.is_empty() && no_token {
            return Err(Issue::new(
                "require_methods",
                "needs auth = \"required\" or \"optional\"",
            ));
        }
        let empty_list = |rules: &std::collections::BTreeMap<String, ClaimValues>| {
            rules.iter().find_map(|(claim, values)| match values {
                ClaimValues::Any(v) if v.is_empty() => Some(claim.clone()),
                _ => None,
            })
        };
        if let Some(claim) = empty_list(&cfg.require) {
            return Err(Issue::new(
                "require",
                format!("`{claim}`: an empty list matches nothing"),
            ));
        }
        for (method, rules) in &cfg.require_methods {
            if http::Method::from_bytes(method.as_bytes()).is_err() {
                return Err(Issue::new(
                    "require_methods",
                    format!("`{method}` is not an HTTP method"),
                ));
            }
            if let Some(claim) = empty_list(rules) {
                return Err(Issue::new(
                    "require_methods",
                    format!("{method} `{claim}`: an empty list matches nothing"),
                ));
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

    /// Whether the token's claims satisfy the route's `require` rules and those
    /// `require_methods` gives for `method`.
    #[inline]
    pub fn claims_satisfied(&self, method: &http::Method, token: &VerifiedToken) -> bool {
        let claims = token.claims();
        self.claims.satisfied(claims)
            && self
                .by_method
                .iter()
                .filter(|(m, _)| m == method)
                .all(|(_, rules)| rules.satisfied(claims))
    }

    /// Takes a token from the request's bucket, or says how long to wait.
    pub fn rate_limit(&self, token: Option<&VerifiedToken>, source: IpAddr) -> Result<(), Limited> {
        match &self.limit {
            None => Ok(()),
            Some(l) => l.check(token, source),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::jwt::{SigningKey, Verifier, VerifierConfig};
    use crate::keys::{KeyStore, VerifyingKey};
    use std::path::Path;

    fn route(extra: &str) -> RouteConfig {
        toml::from_str(&format!("path_prefix = \"/\"\nupstream = \"a\"\n{extra}")).unwrap()
    }

    fn refused(extra: &str) -> String {
        let r = route(extra);
        let e = RouteAccess::validate(&r).expect_err(extra);
        format!("{}: {}", e.key, e.message)
    }

    #[test]
    fn route_keys_are_validated() {
        assert!(refused("issuers = []").starts_with("issuers: an empty list"));
        assert!(refused("auth = \"none\"\nissuers = [\"corp\"]").starts_with("issuers: needs"));
        assert!(refused("auth = \"none\"\nrequire = { a = \"b\" }").starts_with("require: needs"));
        assert!(refused("require = { roles = [] }").contains("matches nothing"));
        assert!(refused("require_methods = { GET = { roles = [] } }").contains("matches nothing"));
        assert!(refused("require_methods = { \"G T\" = { roles = \"a\" } }")
            .contains("not an HTTP method"));
        assert!(
            refused("auth = \"none\"\nrequire_methods = { GET = { a = \"b\" } }")
                .starts_with("require_methods: needs")
        );
        assert!(
            refused("auth = \"none\"\nrate_limit = { key = \"sub\", rate = \"1/s\" }")
                .contains("needs a token")
        );
        assert!(
            refused("rate_limit = { key = \"sub\", rate = \"1/s\", burst = 0 }")
                .contains("at least 1")
        );
        assert!(RouteAccess::validate(&route(
            "auth = \"none\"\nrate_limit = { key = \"source\", rate = \"5/m\" }"
        ))
        .is_ok());
        for bad in [
            "rate_limit = { key = \"sub\", rate = \"5\" }",
            "rate_limit = { key = \"sub\", rate = \"5/s\", typo = 1 }",
            "rate_limit = { rate = \"5/s\" }",
            "require = { a = 1 }",
        ] {
            assert!(
                toml::from_str::<RouteConfig>(&format!(
                    "path_prefix = \"/\"\nupstream = \"a\"\n{bad}"
                ))
                .is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn route_issuers_must_name_configured_issuers() {
        let text = |issuers: &str| {
            format!(
                "[listen]\nhttp = [\"127.0.0.1:0\"]\n[jwt]\naudiences = [\"a\"]\n\
                 [[jwt.issuer]]\nname = \"corp\"\niss = \"https://c/\"\nkeys = [{{ jwk = \"/k\" }}]\n\
                 [[upstream]]\nname = \"a\"\nservers = [\"127.0.0.1:1\"]\n\
                 [[route]]\npath_prefix = \"/\"\nupstream = \"a\"\nissuers = {issuers}\n"
            )
        };
        assert!(Config::parse(Path::new("gw.toml"), &text("[\"corp\"]")).is_ok());
        let e = Config::parse(Path::new("gw.toml"), &text("[\"corp\", \"default\"]"))
            .expect_err("no unnamed issuer is configured")
            .to_string();
        assert!(
            e.starts_with("gw.toml:15: route[0].issuers: no issuer is named `default`"),
            "{e}"
        );
    }

    fn token_with(claims: serde_json::Value) -> std::sync::Arc<VerifiedToken> {
        let secret = [9u8; 32];
        let key = VerifyingKey::hmac(&secret, None, None, "t").unwrap();
        let cfg = VerifierConfig {
            require_exp: false,
            ..Default::default()
        };
        let v = Verifier::new(cfg, KeyStore::with_keys([key])).unwrap();
        let signer = SigningKey::hmac(&secret, crate::jwt::Algorithm::HS256).unwrap();
        let serde_json::Value::Object(c) = claims else {
            panic!("claims")
        };
        let t = signer.sign(serde_json::Map::new(), &c).unwrap();
        v.verify(&t, 0).unwrap()
    }

    #[test]
    fn limits_per_claim_value_and_headers() {
        let access = RouteAccess::from_config(&route(
            "rate_limit = { key = \"tenant\", rate = \"2/m\", burst = 1 }",
        ));
        let source: IpAddr = "192.0.2.1".parse().unwrap();
        let acme = token_with(serde_json::json!({"tenant": "acme"}));
        let other = token_with(serde_json::json!({"tenant": "other"}));
        let numeric = token_with(serde_json::json!({"tenant": 7}));
        let none = token_with(serde_json::json!({"sub": "x"}));
        assert!(access.rate_limit(Some(&acme), source).is_ok());
        let limited = access.rate_limit(Some(&acme), source).unwrap_err();
        assert!((1..=30).contains(&limited.retry_after), "{limited:?}");
        let h = limited.headers();
        assert_eq!(h[0].1, HeaderValue::from(limited.retry_after));
        assert_eq!(h[1].1, "\"tenant\";q=2;w=60");
        assert_eq!(
            h[2].1,
            format!("\"tenant\";r=0;t={}", limited.retry_after).as_str()
        );
        assert!(access.rate_limit(Some(&other), source).is_ok());
        assert!(access.rate_limit(Some(&numeric), source).is_ok());
        assert!(
            access.rate_limit(Some(&numeric), source).is_err(),
            "7 is a key too"
        );
        // No claim, or no token: no key, not limited.
        for _ in 0..3 {
            assert!(access.rate_limit(Some(&none), source).is_ok());
            assert!(access.rate_limit(None, source).is_ok());
        }
        let by_source = RouteAccess::from_config(&route(
            "rate_limit = { key = \"source\", rate = \"1/h\", burst = 1 }",
        ));
        assert!(by_source.rate_limit(None, source).is_ok());
        assert!(by_source.rate_limit(Some(&acme), source).is_err());
        assert!(by_source
            .rate_limit(None, "192.0.2.2".parse().unwrap())
            .is_ok());
    }

    #[test]
    fn issuers_and_claim_rules() {
        let t = token_with(serde_json::json!({"tenant": "acme"}));
        assert_eq!(t.issuer_name(), "default");
        let any = RouteAccess::from_config(&route(""));
        let get = http::Method::GET;
        assert!(any.accepts_issuer(&t) && any.claims_satisfied(&get, &t));
        let corp = RouteAccess::from_config(&route("issuers = [\"corp\"]"));
        assert!(!corp.accepts_issuer(&t));
        let both = RouteAccess::from_config(&route("issuers = [\"corp\", \"default\"]"));
        assert!(both.accepts_issuer(&t));
        let rule = RouteAccess::from_config(&route("require = { tenant = [\"x\", \"acme\"] }"));
        assert!(rule.claims_satisfied(&get, &t));
        let rule = RouteAccess::from_config(&route("require = { tenant = \"x\" }"));
        assert!(!rule.claims_satisfied(&get, &t));
        // Per method, on top of `require`.
        let rule = RouteAccess::from_config(&route(
            "require = { tenant = \"acme\" }\nrequire_methods = { DELETE = { roles = \"admin\" } }",
        ));
        assert!(rule.claims_satisfied(&get, &t));
        assert!(!rule.claims_satisfied(&http::Method::DELETE, &t));
        let admin = token_with(serde_json::json!({"tenant": "acme", "roles": ["admin"]}));
        assert!(rule.claims_satisfied(&http::Method::DELETE, &admin));
        let stranger = token_with(serde_json::json!({"tenant": "x", "roles": ["admin"]}));
        assert!(!rule.claims_satisfied(&http::Method::DELETE, &stranger));
    }
}
