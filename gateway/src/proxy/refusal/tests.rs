use super::*;
use http_body_util::BodyExt;

const B: &str = "Bearer realm=\"gateway\"";

/// A refusal, then its status, code, message, `WWW-Authenticate`, denial label and any
/// further headers.
type Row = (
    Refusal,
    u16,
    &'static str,
    String,
    Option<String>,
    Option<&'static str>,
    Vec<(&'static str, String)>,
);

/// A route limit's refusal, as the policy makes it: `key = "source"`, 1 an hour, one at once,
/// the second request from one address refused.
fn limited() -> Limited {
    let route: crate::config::RouteConfig = toml::from_str(
        "path_prefix = \"/\"\nupstream = \"a\"\n\
         rate_limit = { key = \"source\", rate = \"1/h\", burst = 1 }",
    )
    .expect("route");
    let access = crate::policy::RouteAccess::from_config(&route);
    let ip = std::net::IpAddr::from([192, 0, 2, 1]);
    access.rate_limit(None, ip).expect("the first passes");
    access.rate_limit(None, ip).expect_err("the second is over")
}

/// Every refusal.
fn table() -> Vec<Row> {
    let plain = |r: Refusal, status, code, message: &str| {
        (r, status, code, message.to_owned(), None, None, vec![])
    };
    let limited = limited();
    let wait = limited.retry_after;
    assert!((3000..=3600).contains(&wait), "{wait}");
    let mut rows = vec![
        plain(Refusal::Banned, 403, "forbidden", "this client is banned"),
        plain(
            Refusal::AmbiguousFraming,
            400,
            "bad_request",
            "both Transfer-Encoding and Content-Length",
        ),
        plain(
            Refusal::HeadersTooLarge,
            431,
            "headers_too_large",
            "the request headers are too large",
        ),
        plain(
            Refusal::TooManyHeaders,
            431,
            "headers_too_large",
            "the request has too many headers",
        ),
        plain(
            Refusal::ConflictingContentLength,
            400,
            "bad_request",
            "conflicting Content-Length",
        ),
        plain(
            Refusal::InvalidContentLength,
            400,
            "bad_request",
            "invalid Content-Length",
        ),
        plain(
            Refusal::InvalidTransferEncoding,
            400,
            "bad_request",
            "invalid Transfer-Encoding",
        ),
        plain(
            Refusal::UnsupportedTransferCoding,
            501,
            "not_implemented",
            "only the chunked transfer coding is supported",
        ),
        plain(
            Refusal::ChunkedTwice,
            400,
            "bad_request",
            "chunked applied more than once",
        ),
        plain(
            Refusal::Path(PathError::BadEscape),
            400,
            "bad_request",
            "invalid percent-encoding in the path",
        ),
        plain(
            Refusal::Path(PathError::NotAbsolute),
            400,
            "bad_request",
            "the path does not start with `/`",
        ),
        plain(
            Refusal::Path(PathError::EscapedSeparator),
            400,
            "bad_request",
            "an encoded `/` or `\\`, or a `\\`, in the path",
        ),
        plain(
            Refusal::Path(PathError::DotSegmentParameters),
            400,
            "bad_request",
            "a dot-segment with `;` parameters in the path",
        ),
        plain(
            Refusal::MethodNotUpperCase,
            400,
            "bad_request",
            "the method is not upper-case letters",
        ),
        plain(
            Refusal::Host(HostError::Duplicate),
            400,
            "bad_request",
            "more than one Host header",
        ),
        plain(
            Refusal::Host(HostError::Missing),
            400,
            "bad_request",
            "the request names no host (a Host header is required)",
        ),
        plain(
            Refusal::InvalidTarget,
            400,
            "bad_request",
            "invalid request target",
        ),
        plain(
            Refusal::NoRoute,
            404,
            "not_found",
            "no route for this request",
        ),
        (
            Refusal::MissingToken,
            401,
            "unauthorized",
            "a bearer token is required".to_owned(),
            Some(B.to_owned()),
            Some("missing_token"),
            vec![],
        ),
        (
            Refusal::InvalidRequest("more than one Authorization header"),
            401,
            "invalid_request",
            "more than one Authorization header".to_owned(),
            Some(format!(
                "{B}, error=\"invalid_request\", error_description=\"more than one Authorization header\""
            )),
            Some("invalid_request"),
            vec![],
        ),
        (
            Refusal::InsufficientScope(ScopeName::new("wr\"it\\e")),
            403,
            "insufficient_scope",
            "the token lacks the scope `write`".to_owned(),
            Some(format!("{B}, error=\"insufficient_scope\", scope=\"write\"")),
            Some("insufficient_scope"),
            vec![],
        ),
        // Identity providers and rate limits (issue 14).
        (
            Refusal::IssuerNotAccepted,
            401,
            "invalid_token",
            "the token is not valid".to_owned(),
            Some(format!(
                "{B}, error=\"invalid_token\", error_description=\"the token is not valid\""
            )),
            Some("issuer_not_accepted"),
            vec![],
        ),
        (
            Refusal::ClaimRule,
            403,
            "insufficient_scope",
            "the token's claims do not allow this request".to_owned(),
            Some(format!("{B}, error=\"insufficient_scope\"")),
            Some("claim_rule"),
            vec![],
        ),
        (
            Refusal::VerifyBudget { retry_after: 7 },
            429,
            "too_many_requests",
            "too many token verifications from this address".to_owned(),
            None,
            Some("verify_budget"),
            vec![("retry-after", "7".to_owned())],
        ),
        (
            Refusal::RateLimited(limited),
            429,
            "too_many_requests",
            "the rate limit of this route is reached".to_owned(),
            None,
            Some("rate_limited"),
            vec![
                ("retry-after", wait.to_string()),
                ("ratelimit-policy", "\"source\";q=1;w=3600".to_owned()),
                ("ratelimit", format!("\"source\";r=0;t={wait}")),
            ],
        ),
        plain(
            Refusal::ClientBody(ClientFault::TooLarge),
            413,
            "payload_too_large",
            "the request body is too large",
        ),
        plain(
            Refusal::ClientBody(ClientFault::Stalled),
            408,
            "request_timeout",
            "the request body did not arrive in time",
        ),
        plain(
            Refusal::ClientBody(ClientFault::Broken),
            400,
            "bad_request",
            "the request body could not be read to its end",
        ),
        plain(
            Refusal::Upstream(UpstreamErrorKind::NoHealthy),
            503,
            "service_unavailable",
            "no upstream server is available",
        ),
        plain(
            Refusal::Upstream(UpstreamErrorKind::Timeout),
            504,
            "gateway_timeout",
            "the upstream server did not answer in time",
        ),
        plain(
            Refusal::Upstream(UpstreamErrorKind::Connect),
            502,
            "bad_gateway",
            "the upstream server could not be reached",
        ),
        plain(
            Refusal::Upstream(UpstreamErrorKind::Protocol),
            502,
            "bad_gateway",
            "the upstream server could not be reached",
        ),
        (
            Refusal::Upstream(UpstreamErrorKind::Busy),
            503,
            "service_unavailable",
            "the upstream server is at its connection limit; retry later".to_owned(),
            None,
            None,
            vec![("retry-after", "1".to_owned())],
        ),
        (
            Refusal::Overloaded,
            503,
            "service_unavailable",
            "too many requests in progress; retry later".to_owned(),
            None,
            None,
            vec![("retry-after", "1".to_owned())],
        ),
    ];
    for reason in crate::jwt::Reason::ALL {
        let description = if reason == crate::jwt::Reason::Expired {
            "the token expired"
        } else {
            "the token is not valid"
        };
        rows.push((
            Refusal::InvalidToken(reason),
            401,
            "invalid_token",
            description.to_owned(),
            Some(format!(
                "{B}, error=\"invalid_token\", error_description=\"{description}\""
            )),
            Some(reason.as_str()),
            vec![],
        ));
    }
    rows
}

/// One number per variant, matched exhaustively: a new variant does not compile here until
/// it is numbered, and the table test then asks for its row.
fn variant(r: &Refusal) -> usize {
    match r {
        Refusal::Banned => 22,
        Refusal::AmbiguousFraming => 0,
        Refusal::HeadersTooLarge => 1,
        Refusal::TooManyHeaders => 2,
        Refusal::ConflictingContentLength => 3,
        Refusal::InvalidContentLength => 4,
        Refusal::InvalidTransferEncoding => 5,
        Refusal::UnsupportedTransferCoding => 6,
        Refusal::ChunkedTwice => 7,
        Refusal::Path(_) => 8,
        Refusal::Host(_) => 9,
        Refusal::InvalidTarget => 10,
        Refusal::NoRoute => 11,
        Refusal::MissingToken => 12,
        Refusal::InvalidRequest(_) => 13,
        Refusal::InvalidToken(_) => 14,
        Refusal::InsufficientScope(_) => 15,
        Refusal::ClientBody(_) => 16,
        Refusal::Upstream(_) => 17,
        Refusal::IssuerNotAccepted => 18,
        Refusal::ClaimRule => 19,
        Refusal::VerifyBudget { .. } => 20,
        Refusal::RateLimited(_) => 21,
        Refusal::MethodNotUpperCase => 23,
        Refusal::Overloaded => 24,
    }
}
const VARIANTS: usize = 25;

#[tokio::test]
async fn every_refusal_is_answered_as_pinned() {
    let rows = table();
    let mut covered = [false; VARIANTS];
    for (refusal, ..) in &rows {
        covered[variant(refusal)] = true;
    }
    assert!(
        covered.iter().all(|c| *c),
        "a variant has no row: {covered:?}"
    );
    for (refusal, status, code, message, challenge, denial, extra) in rows {
        let what = format!("{refusal:?}");
        assert_eq!(refusal.status().as_u16(), status, "{what}");
        assert_eq!(refusal.code(), code, "{what}");
        assert_eq!(
            refusal.denial_reason().map(DenialReason::as_str),
            denial,
            "{what}"
        );
        let resp = refusal.into_response();
        assert_eq!(resp.status().as_u16(), status, "{what}");
        let h = resp.headers();
        assert_eq!(h["content-type"], "application/json", "{what}");
        assert_eq!(h["cache-control"], "no-store", "{what}");
        assert_eq!(
            h.get("www-authenticate")
                .map(|v| v.to_str().unwrap_or("(not text)")),
            challenge.as_deref(),
            "{what}"
        );
        for (name, value) in &extra {
            assert_eq!(
                h.get(*name).map(|v| v.as_bytes()),
                Some(value.as_bytes()),
                "{what}: {name}"
            );
        }
        assert_eq!(
            h.len(),
            2 + usize::from(challenge.is_some()) + extra.len(),
            "{what}"
        );
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        // Byte for byte: `error` then `message`, one line.
        let expected = format!(
            "{{\"error\":\"{code}\",\"message\":{}}}\n",
            serde_json::Value::from(message.as_str())
        );
        assert_eq!(body, expected.as_bytes(), "{what}");
    }
}

#[test]
fn every_denial_reason_is_labelled_once_and_indexed_in_place() {
    let mut labels: Vec<_> = DenialReason::ALL.iter().map(|r| r.as_str()).collect();
    for (i, r) in DenialReason::ALL.iter().enumerate() {
        assert_eq!(r.index(), i, "{r:?}");
    }
    labels.sort_unstable();
    labels.dedup();
    assert_eq!(labels.len(), DenialReason::COUNT);
    // Every token reason has its own label, not a shared one.
    for r in crate::jwt::Reason::ALL {
        assert_eq!(DenialReason::Token(r).as_str(), r.as_str());
    }
}

#[test]
fn upstream_error_kinds_are_listed_in_declaration_order() {
    // Metrics index their counters with `kind as usize` into an array built from `ALL`.
    for (i, k) in UpstreamErrorKind::ALL.iter().enumerate() {
        assert_eq!(*k as usize, i, "{k:?}");
    }
    let mut labels: Vec<_> = UpstreamErrorKind::ALL.iter().map(|k| k.as_str()).collect();
    labels.sort_unstable();
    labels.dedup();
    assert_eq!(labels.len(), UpstreamErrorKind::ALL.len());
}
