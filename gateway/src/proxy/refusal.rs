//! Every answer the gateway makes up itself on the request path, instead of relaying the
//! upstream's: one [`Refusal`] per case, each with its status, error code, message,
//! `WWW-Authenticate` challenge and metric label, all decided in [`Refusal::answer`]. Adding a
//! refusal is adding a variant and its arm there (and a row to the test table).
//!
//! Bodies are small JSON (`{"error":..,"message":..}`) without internals; the reason a token
//! was refused goes to the metrics, not to the client.

use super::host::HostError;
use super::path::PathError;
use super::request_body::ClientFault;
use super::upstream::UpstreamErrorKind;
use super::{full_body, ProxyBody};
use crate::jwt;
use crate::policy::Limited;
use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use std::fmt::{self, Display};

/// Every challenge we send starts so (realm `gateway`).
const BEARER: &str = "Bearer realm=\"gateway\"";

/// Why the gateway answers a request itself.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Refusal {
    /// A banned client behind a trusted proxy (`X-Forwarded-For`): the kernel sees only
    /// the proxy, so the ban is enforced here.
    Banned,

    // The request head: refused before routing, never forwarded.
    /// An HTTP/1 head with both Content-Length and Transfer-Encoding (see
    /// [`super::framing`]).
    AmbiguousFraming,
    /// More header bytes than `max_header_bytes`.
    HeadersTooLarge,
    /// More headers than `max_headers`.
    TooManyHeaders,
    /// Several Content-Length values that differ.
    ConflictingContentLength,
    /// A Content-Length that is not a number.
    InvalidContentLength,
    /// A Transfer-Encoding that is not text.
    InvalidTransferEncoding,
    /// A transfer coding other than chunked: it would reach the upstream silently undone.
    UnsupportedTransferCoding,
    /// `chunked` applied more than once.
    ChunkedTwice,
    /// A method token that is not upper-case ASCII letters (RFC 9110 methods are
    /// case-sensitive; an upstream that upper-cases it would run a method no route checked).
    MethodNotUpperCase,
    /// The path cannot be normalised, or is ambiguous and its route refuses that.
    Path(PathError),
    /// The request's host is missing, doubled or invalid.
    Host(HostError),
    /// The target the upstream would get is not a valid URI.
    InvalidTarget,
    /// No route matches host, path and method.
    NoRoute,

    // Authentication and authorisation (RFC 6750 §3).
    /// No bearer credentials (no header, or another scheme).
    MissingToken,
    /// Credentials that are not one well-formed bearer token.
    InvalidRequest(&'static str),
    /// A token that failed verification, and why (for the metrics only).
    InvalidToken(jwt::Reason),
    /// A valid token without the scope the method needs.
    InsufficientScope(ScopeName),

    // Identity providers and rate limits (issue 14).
    /// A valid token of an issuer the route does not accept (`[[route]] issuers`).
    IssuerNotAccepted,
    /// A valid token whose claims fail the route's `require`/`require_methods` rules. The
    /// answer names neither the rule nor the token's values.
    ClaimRule,
    /// The source's budget of signature checks is spent; the token was not checked. Whole
    /// seconds until it has a check again (`Retry-After`).
    VerifyBudget { retry_after: u64 },
    /// Over the route's `rate_limit`: `Retry-After` and the `RateLimit-*` fields.
    RateLimited(Limited),
    /// More requests in progress than `max_requests_in_flight`: 503, retry later.
    Overloaded,

    // The exchange with the upstream.
    /// The client's body failed the exchange.
    ClientBody(ClientFault),
    /// The upstream failed.
    Upstream(UpstreamErrorKind),
}

/// A scope as named in a challenge: without `"` or `\`, so the header stays well-formed.
/// (Scope tokens are NQCHAR without them; anything else never comes from a validated
/// config.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScopeName(Box<str>);

impl ScopeName {
    pub fn new(scope: &str) -> Self {
        Self(scope.chars().filter(|c| *c != '"' && *c != '\\').collect())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Why the auth layer refused a request: the `reason` label of `gateway_denials_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DenialReason {
    /// The verifier's reason code.
    Token(jwt::Reason),
    MissingToken,
    InvalidRequest,
    InsufficientScope,
    /// [`Refusal::IssuerNotAccepted`].
    IssuerNotAccepted,
    /// [`Refusal::ClaimRule`].
    ClaimRule,
    /// [`Refusal::RateLimited`].
    RateLimited,
}

impl DenialReason {
    /// How many reasons there are.
    pub const COUNT: usize = jwt::Reason::ALL.len() + 6;

    /// Every reason, in [`DenialReason::index`] order.
    pub const ALL: [DenialReason; Self::COUNT] = {
        let mut all = [DenialReason::MissingToken; Self::COUNT];
        let mut i = 0;
        while i < jwt::Reason::ALL.len() {
            all[i] = DenialReason::Token(jwt::Reason::ALL[i]);
            i += 1;
        }
        all[i] = DenialReason::MissingToken;
        all[i + 1] = DenialReason::InvalidRequest;
        all[i + 2] = DenialReason::InsufficientScope;
        all[i + 3] = DenialReason::IssuerNotAccepted;
        all[i + 4] = DenialReason::ClaimRule;
        all[i + 5] = DenialReason::RateLimited;
        all
    };

    /// Position in [`DenialReason::ALL`], for counters kept in an array.
    pub const fn index(self) -> usize {
        const N: usize = jwt::Reason::ALL.len();
        match self {
            DenialReason::Token(r) => r as usize,
            DenialReason::MissingToken => N,
            DenialReason::InvalidRequest => N + 1,
            DenialReason::InsufficientScope => N + 2,
            DenialReason::IssuerNotAccepted => N + 3,
            DenialReason::ClaimRule => N + 4,
            DenialReason::RateLimited => N + 5,
        }
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            DenialReason::Token(r) => r.as_str(),
            DenialReason::MissingToken => "missing_token",
            DenialReason::InvalidRequest => "invalid_request",
            DenialReason::InsufficientScope => "insufficient_scope",
            DenialReason::IssuerNotAccepted => "issuer_not_accepted",
            DenialReason::ClaimRule => "claim_rule",
            DenialReason::RateLimited => "rate_limited",
        }
    }
}

/// The `WWW-Authenticate` challenge of an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Challenge<'a> {
    None,
    /// `Bearer realm="gateway"`: credentials are needed (no error code, RFC 6750 §3.1).
    Bearer,
    /// `Bearer realm=.., error=.., error_description=..`.
    Error {
        error: &'static str,
        description: &'static str,
    },
    /// `Bearer realm=.., error="insufficient_scope", scope=..`.
    Scope(&'a str),
    /// `Bearer realm=.., error="insufficient_scope"`: claim rules, named nowhere.
    InsufficientClaims,
}

/// Headers a refusal adds besides `Content-Type`, `Cache-Control` and `WWW-Authenticate`.
#[derive(Debug, Clone, Copy)]
enum Extra<'a> {
    None,
    /// `Retry-After` in whole seconds.
    RetryAfter(u64),
    /// `Retry-After`, `RateLimit-Policy` and `RateLimit` of a route limit.
    Limited(&'a Limited),
}

/// Everything about one refusal's answer.
struct Answer<'a> {
    status: StatusCode,
    code: &'static str,
    message: Message<'a>,
    challenge: Challenge<'a>,
    denial: Option<DenialReason>,
    extra: Extra<'a>,
}

/// A refusal's message: mostly fixed text.
enum Message<'a> {
    Text(&'static str),
    Display(&'a dyn Display),
    LacksScope(&'a str),
}

impl Display for Message<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Message::Text(t) => f.write_str(t),
            Message::Display(d) => d.fmt(f),
            Message::LacksScope(s) => write!(f, "the token lacks the scope `{s}`"),
        }
    }
}

impl Refusal {
    /// The one place that says how each refusal is answered.
    fn answer(&self) -> Answer<'_> {
        use Message::Text;
        let plain = |status, code, message| Answer {
            status,
            code,
            message,
            challenge: Challenge::None,
            denial: None,
            extra: Extra::None,
        };
        let bad_request = |message| plain(StatusCode::BAD_REQUEST, "bad_request", message);
        match self {
            Refusal::Banned => plain(
                StatusCode::FORBIDDEN,
                "forbidden",
                Text("this client is banned"),
            ),
            Refusal::AmbiguousFraming => {
                bad_request(Text("both Transfer-Encoding and Content-Length"))
            }
            Refusal::HeadersTooLarge => plain(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large",
                Text("the request headers are too large"),
            ),
            Refusal::TooManyHeaders => plain(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large",
                Text("the request has too many headers"),
            ),
            Refusal::ConflictingContentLength => bad_request(Text("conflicting Content-Length")),
            Refusal::InvalidContentLength => bad_request(Text("invalid Content-Length")),
            Refusal::InvalidTransferEncoding => bad_request(Text("invalid Transfer-Encoding")),
            Refusal::UnsupportedTransferCoding => plain(
                StatusCode::NOT_IMPLEMENTED,
                "not_implemented",
                Text("only the chunked transfer coding is supported"),
            ),
            Refusal::ChunkedTwice => bad_request(Text("chunked applied more than once")),
            Refusal::MethodNotUpperCase => {
                bad_request(Text("the method is not upper-case letters"))
            }
            Refusal::Path(e) => bad_request(Message::Display(e)),
            Refusal::Host(e) => bad_request(Message::Display(e)),
            Refusal::InvalidTarget => bad_request(Text("invalid request target")),
            Refusal::NoRoute => plain(
                StatusCode::NOT_FOUND,
                "not_found",
                Text("no route for this request"),
            ),
            Refusal::MissingToken => Answer {
                status: StatusCode::UNAUTHORIZED,
                code: "unauthorized",
                message: Text("a bearer token is required"),
                challenge: Challenge::Bearer,
                denial: Some(DenialReason::MissingToken),
                extra: Extra::None,
            },
            Refusal::InvalidRequest(why) => Answer {
                status: StatusCode::UNAUTHORIZED,
                code: "invalid_request",
                message: Text(why),
                challenge: Challenge::Error {
                    error: "invalid_request",
                    description: why,
                },
                denial: Some(DenialReason::InvalidRequest),
                extra: Extra::None,
            },
            Refusal::InvalidToken(reason) => {
                let description = if *reason == jwt::Reason::Expired {
                    "the token expired"
                } else {
                    "the token is not valid"
                };
                Answer {
                    status: StatusCode::UNAUTHORIZED,
                    code: "invalid_token",
                    message: Text(description),
                    challenge: Challenge::Error {
                        error: "invalid_token",
                        description,
                    },
                    denial: Some(DenialReason::Token(*reason)),
                    extra: Extra::None,
                }
            }
            Refusal::InsufficientScope(scope) => Answer {
                status: StatusCode::FORBIDDEN,
                code: "insufficient_scope",
                message: Message::LacksScope(scope.as_str()),
                challenge: Challenge::Scope(scope.as_str()),
                denial: Some(DenialReason::InsufficientScope),
                extra: Extra::None,
            },
            Refusal::IssuerNotAccepted => Answer {
                status: StatusCode::UNAUTHORIZED,
                code: "invalid_token",
                message: Text("the token is not valid"),
                challenge: Challenge::Error {
                    error: "invalid_token",
                    description: "the token is not valid",
                },
                denial: Some(DenialReason::IssuerNotAccepted),
                extra: Extra::None,
            },
            Refusal::ClaimRule => Answer {
                status: StatusCode::FORBIDDEN,
                code: "insufficient_scope",
                message: Text("the token's claims do not allow this request"),
                challenge: Challenge::InsufficientClaims,
                denial: Some(DenialReason::ClaimRule),
                extra: Extra::None,
            },
            Refusal::VerifyBudget { retry_after } => Answer {
                status: StatusCode::TOO_MANY_REQUESTS,
                code: "too_many_requests",
                message: Text("too many token verifications from this address"),
                challenge: Challenge::None,
                denial: Some(DenialReason::Token(jwt::Reason::VerifyBudget)),
                extra: Extra::RetryAfter(*retry_after),
            },
            Refusal::RateLimited(limited) => Answer {
                status: StatusCode::TOO_MANY_REQUESTS,
                code: "too_many_requests",
                message: Text("the rate limit of this route is reached"),
                challenge: Challenge::None,
                denial: Some(DenialReason::RateLimited),
                extra: Extra::Limited(limited),
            },
            Refusal::ClientBody(ClientFault::TooLarge) => plain(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                Text("the request body is too large"),
            ),
            Refusal::ClientBody(ClientFault::Stalled) => plain(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                Text("the request body did not arrive in time"),
            ),
            Refusal::ClientBody(ClientFault::Broken) => {
                bad_request(Text("the request body could not be read to its end"))
            }
            Refusal::Overloaded => Answer {
                extra: Extra::RetryAfter(1),
                ..plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "service_unavailable",
                    Text("too many requests in progress; retry later"),
                )
            },
            Refusal::Upstream(UpstreamErrorKind::Busy) => Answer {
                extra: Extra::RetryAfter(1),
                ..plain(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "service_unavailable",
                    Text("the upstream server is at its connection limit; retry later"),
                )
            },
            Refusal::Upstream(UpstreamErrorKind::NoHealthy) => plain(
                StatusCode::SERVICE_UNAVAILABLE,
                "service_unavailable",
                Text("no upstream server is available"),
            ),
            Refusal::Upstream(UpstreamErrorKind::Timeout) => plain(
                StatusCode::GATEWAY_TIMEOUT,
                "gateway_timeout",
                Text("the upstream server did not answer in time"),
            ),
            Refusal::Upstream(UpstreamErrorKind::Connect | UpstreamErrorKind::Protocol) => plain(
                StatusCode::BAD_GATEWAY,
                "bad_gateway",
                Text("the upstream server could not be reached"),
            ),
        }
    }

    pub fn status(&self) -> StatusCode {
        self.answer().status
    }

    /// The `error` of the JSON body.
    pub fn code(&self) -> &'static str {
        self.answer().code
    }

    /// The `reason` this refusal counts under in `gateway_denials_total`, if it is the auth
    /// layer's.
    pub fn denial_reason(&self) -> Option<DenialReason> {
        self.answer().denial
    }

    /// The response: status, JSON body, `Content-Type`, `Cache-Control: no-store` and, for
    /// the auth layer's, `WWW-Authenticate`; 429s add `Retry-After` (and a route limit's
    /// `RateLimit-Policy` and `RateLimit`).
    #[cold]
    pub fn into_response(self) -> Response<ProxyBody> {
        let a = self.answer();
        let body = serde_json::json!({ "error": a.code, "message": a.message.to_string() })
            .to_string()
            + "\n";
        let mut resp = Response::new(full_body(Bytes::from(body)));
        *resp.status_mut() = a.status;
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(challenge) = a.challenge.header() {
            headers.insert(header::WWW_AUTHENTICATE, challenge);
        }
        match a.extra {
            Extra::None => {}
            Extra::RetryAfter(secs) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
            }
            Extra::Limited(limited) => {
                for (name, value) in limited.headers() {
                    headers.insert(name, value);
                }
            }
        }
        resp
    }
}

impl From<ClientFault> for Refusal {
    fn from(f: ClientFault) -> Self {
        Refusal::ClientBody(f)
    }
}

impl Challenge<'_> {
    fn header(self) -> Option<HeaderValue> {
        let text = match self {
            Challenge::None => return None,
            Challenge::Bearer => return Some(HeaderValue::from_static(BEARER)),
            Challenge::Error { error, description } => {
                format!("{BEARER}, error=\"{error}\", error_description=\"{description}\"")
            }
            Challenge::Scope(scope) => {
                format!("{BEARER}, error=\"insufficient_scope\", scope=\"{scope}\"")
            }
            Challenge::InsufficientClaims => {
                return Some(HeaderValue::from_static(
                    "Bearer realm=\"gateway\", error=\"insufficient_scope\"",
                ))
            }
        };
        HeaderValue::from_str(&text).ok()
    }
}

#[cfg(test)]
mod tests;
