//! Who may do what: bearer-token extraction (RFC 6750), the scopes each method needs, the
//! RFC 6750 refusals, and verified claims turned into request headers; per route, the
//! issuers accepted, claim rules and rate limits ([`access`]).

pub mod access;
pub mod claims;

pub use access::{Limited, RateLimitConfig, RouteAccess};
pub use claims::{ClaimRules, ClaimValues};

use crate::jwt::VerifiedToken;
use http::{HeaderMap, HeaderName, HeaderValue, Method};

/// Why a request carries no usable bearer token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenProblem {
    /// No bearer credentials at all (no header, or another scheme): 401 without error code.
    Missing,
    /// Credentials that are not one well-formed bearer token (`invalid_request`).
    Invalid(&'static str),
}

/// The characters of RFC 6750's b64token: `1*( ALPHA / DIGIT / "-" / "." / "_" / "~" / "+"
/// / "/" ) *"="`.
pub fn is_b64token(t: &str) -> bool {
    let body = t.trim_end_matches('=');
    !body.is_empty()
        && body.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/')
        })
}

/// The bearer token of a request: exactly one `Authorization` header, scheme `Bearer` (any
/// case), one token. Two headers, a comma-joined list, or junk after the token are refused,
/// and so is a value that starts like bearer credentials but is not `Bearer` SP token
/// (`Bearer<TAB>x`, `Bearerx`): that is no other scheme an optional route could forward
/// unverified to an upstream that reads it more leniently.
pub fn bearer_token(headers: &HeaderMap) -> Result<&str, TokenProblem> {
    let mut values = headers.get_all(http::header::AUTHORIZATION).iter();
    let Some(value) = values.next() else {
        return Err(TokenProblem::Missing);
    };
    if values.next().is_some() {
        return Err(TokenProblem::Invalid("more than one Authorization header"));
    }
    // Header values never hold control characters (hyper and h2 refuse them), so ASCII is
    // what `to_str` would check, here a word at a time: a token is hundreds of bytes and
    // this runs on every request.
    let not_ascii = TokenProblem::Invalid("the Authorization header is not ASCII");
    if !value.as_bytes().is_ascii() {
        return Err(not_ascii);
    }
    let value = std::str::from_utf8(value.as_bytes()).map_err(|_| not_ascii)?;
    let (scheme, rest) = match value.split_once(' ') {
        Some((s, r)) => (s, r),
        None => (value, ""),
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        let looks_bearer = value
            .get(..BEARER.len())
            .is_some_and(|s| s.eq_ignore_ascii_case(BEARER));
        if looks_bearer {
            return Err(TokenProblem::Invalid("malformed bearer credentials"));
        }
        return Err(TokenProblem::Missing);
    }
    let token = rest.trim_matches(' ');
    if token.is_empty() {
        return Err(TokenProblem::Invalid("the bearer token is empty"));
    }
    if memchr::memchr3(b',', b' ', b'\t', token.as_bytes()).is_some() {
        return Err(TokenProblem::Invalid("more than one credential"));
    }
    // The characters are checked only when verification fails (see `is_b64token`): the
    // verifier's strict base64url decoding refuses them anyway, and a valid token should
    // not be scanned twice.
    Ok(token)
}

const BEARER: &str = "bearer";

/// The query without its `access_token` parameters (RFC 6750 §2.3), for an upstream that
/// must not see credentials (`forward_authorization = false`); `None` when there are none.
/// A name with unreserved characters percent-encoded (`access%5Ftoken`) is one too: the
/// upstream decodes it.
pub fn without_query_token(query: &str) -> Option<String> {
    let is_token = |pair: &str| {
        let name = pair.split_once('=').map_or(pair, |(n, _)| n);
        names_access_token(name)
    };
    if !query.split('&').any(is_token) {
        return None;
    }
    let kept: Vec<&str> = query.split('&').filter(|p| !is_token(p)).collect();
    Some(kept.join("&"))
}

/// `name` is `access_token` once percent-escapes are decoded (case-sensitive, as the
/// parameter is).
fn names_access_token(name: &str) -> bool {
    const WANT: &[u8] = b"access_token";
    let bytes = name.as_bytes();
    let (mut i, mut j) = (0, 0);
    while i < bytes.len() {
        let b = if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok());
            match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                Some(v) => {
                    i += 3;
                    v
                }
                None => return false,
            }
        } else {
            i += 1;
            bytes[i - 1]
        };
        if WANT.get(j) != Some(&b) {
            return false;
        }
        j += 1;
    }
    j == WANT.len()
}

/// The `access_token` query parameter, for routes that allow it.
pub fn query_token(query: Option<&str>) -> Result<&str, TokenProblem> {
    let mut found = None;
    for pair in query.unwrap_or("").split('&') {
        if let Some(v) = pair.strip_prefix("access_token=") {
            if found.is_some() {
                return Err(TokenProblem::Invalid(
                    "more than one access_token parameter",
                ));
            }
            found = Some(v);
        }
    }
    match found {
        None => Err(TokenProblem::Missing),
        Some(t) if is_b64token(t) => Ok(t),
        Some(_) => Err(TokenProblem::Invalid(
            "the access_token parameter is malformed",
        )),
    }
}

/// Scopes each method needs on one route.
#[derive(Debug, Clone)]
pub struct ScopePolicy {
    by_method: Vec<(Method, Vec<String>)>,
    /// For methods not listed: every scope any method needs.
    strictest: Vec<String>,
}

impl ScopePolicy {
    /// The seed's policy: GET and HEAD need `read`; POST, PUT, PATCH and DELETE need `write`.
    pub fn read_write() -> Self {
        let read = || vec!["read".to_string()];
        let write = || vec!["write".to_string()];
        Self::from_pairs(vec![
            (Method::GET, read()),
            (Method::HEAD, read()),
            (Method::POST, write()),
            (Method::PUT, write()),
            (Method::PATCH, write()),
            (Method::DELETE, write()),
        ])
    }

    /// The scopes each listed method needs (a route's parsed `scopes` table).
    pub fn from_pairs(by_method: Vec<(Method, Vec<String>)>) -> Self {
        let mut strictest: Vec<String> = Vec::new();
        for s in by_method.iter().flat_map(|(_, s)| s) {
            if !strictest.contains(s) {
                strictest.push(s.clone());
            }
        }
        Self {
            by_method,
            strictest,
        }
    }

    /// The scopes `method` needs (all of them).
    pub fn required(&self, method: &Method) -> &[String] {
        self.by_method
            .iter()
            .find(|(m, _)| m == method)
            .map(|(_, s)| s.as_slice())
            .unwrap_or(&self.strictest)
    }

    /// The first required scope the token lacks; `None` when it has them all. Whole-token
    /// matches only (`write` never matches `thread:writer`).
    pub fn missing<'a>(&'a self, method: &Method, token: &VerifiedToken) -> Option<&'a str> {
        self.required(method)
            .iter()
            .find(|s| !token.has_scope(s))
            .map(String::as_str)
    }
}

/// Claims copied into request headers for the upstream.
#[derive(Debug, Clone, Default)]
pub struct ClaimHeaders {
    pairs: Vec<(String, HeaderName)>,
}

impl ClaimHeaders {
    /// Claim name and the header it goes to (a route's parsed `claim_headers` table).
    pub fn new(pairs: Vec<(String, HeaderName)>) -> Self {
        Self { pairs }
    }

    pub fn names(&self) -> impl Iterator<Item = &HeaderName> {
        self.pairs.iter().map(|(_, h)| h)
    }

    /// Adds the headers for the claims the token has. Strings go as they are, arrays of
    /// strings space-separated (so `scp` reads like `scope`), other values as JSON; values
    /// that cannot be a header (control characters) are left out.
    pub fn apply(&self, token: &VerifiedToken, headers: &mut HeaderMap) {
        for (claim, header) in &self.pairs {
            let Some(v) = token.claim(claim) else {
                continue;
            };
            let text = match v {
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Array(items) if items.iter().all(|i| i.is_string()) => items
                    .iter()
                    .filter_map(|i| i.as_str())
                    .collect::<Vec<_>>()
                    .join(" "),
                other => other.to_string(),
            };
            if let Ok(value) = HeaderValue::from_str(&text) {
                headers.insert(header.clone(), value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(
                http::header::AUTHORIZATION,
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn bearer_extraction() {
        assert_eq!(
            bearer_token(&auth(&["Bearer abc.def.ghi"])),
            Ok("abc.def.ghi")
        );
        assert_eq!(bearer_token(&auth(&["bearer abc"])), Ok("abc"));
        assert_eq!(bearer_token(&auth(&["BEARER  abc=="])), Ok("abc=="));
        assert_eq!(bearer_token(&auth(&[])), Err(TokenProblem::Missing));
        assert_eq!(
            bearer_token(&auth(&["Basic dXNlcjpwYXNz"])),
            Err(TokenProblem::Missing)
        );
        assert_eq!(
            bearer_token(&auth(&["Bea abc"])),
            Err(TokenProblem::Missing)
        );
        for bad in [
            vec!["Bearer"],
            vec!["Bearer "],
            vec!["Bearer a, Bearer b"],
            vec!["Bearer a b"],
            vec!["Bearer a", "Bearer a"],
            vec!["Bearer abcé"],
            vec!["Bearer abc,"],
            vec!["Bearer\tforged"],
            vec!["bearer\tforged"],
            vec!["Bearer \tforged"],
            vec!["Bearer forged\t"],
            vec!["Bearer a\tb"],
            vec!["Bearerforged"],
            vec!["BEARER,x"],
        ] {
            assert!(
                matches!(bearer_token(&auth(&bad)), Err(TokenProblem::Invalid(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn b64token_syntax() {
        assert!(is_b64token("abc.DEF-_~+/=="));
        for bad in ["", "a=b", "a\"b", "a b", "=="] {
            assert!(!is_b64token(bad), "{bad}");
        }
    }

    #[test]
    fn query_tokens_are_removed_for_upstreams_without_credentials() {
        for (query, want) in [
            ("access_token=x.y.z", Some("")),
            ("a=1&access_token=x.y.z", Some("a=1")),
            ("access_token=x&a=1&access_token=y&b=2", Some("a=1&b=2")),
            ("a=1&access%5Ftoken=x&b", Some("a=1&b")),
            ("%61ccess_token=x", Some("")),
            ("access_token", Some("")),
            ("a=1", None),
            ("access_tokens=x&xaccess_token=y&Access_token=z", None),
            ("access_token%=x", None),
            ("a=access_token", None),
        ] {
            assert_eq!(without_query_token(query).as_deref(), want, "{query}");
        }
    }

    #[test]
    fn query_extraction() {
        assert_eq!(query_token(Some("a=1&access_token=x.y.z")), Ok("x.y.z"));
        assert_eq!(query_token(None), Err(TokenProblem::Missing));
        assert!(matches!(
            query_token(Some("access_token=a&access_token=b")),
            Err(TokenProblem::Invalid(_))
        ));
    }

    #[test]
    fn seed_policy_and_strictest() {
        let p = ScopePolicy::read_write();
        assert_eq!(p.required(&Method::GET), ["read"]);
        assert_eq!(p.required(&Method::PATCH), ["write"]);
        assert_eq!(p.required(&Method::OPTIONS), ["read", "write"]);
        let p = ScopePolicy::from_pairs(vec![(Method::GET, vec!["items:read".to_string()])]);
        assert_eq!(p.required(&Method::DELETE), ["items:read"]);
    }
}
