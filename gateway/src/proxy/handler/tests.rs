//! The request path in process: `Proxy::handle` with bodies of our own, no sockets (the
//! e2e tests drive the same cases over TLS and TCP).

use super::outbound::{strip_hop_by_hop, HOP_BY_HOP};
use super::*;
use crate::jwt::{now_unix, Algorithm, SigningKey, VerifierConfig};
use crate::keys::{KeyStore, VerifyingKey};
use http::header::{HeaderMap, HeaderValue};
use http_body_util::{BodyExt, Full};
use hyper::body::{Frame, SizeHint};
use std::pin::Pin;
use std::task::{Context, Poll};

const SECRET: [u8; 32] = [9; 32];

/// A proxy with a token route (`/api/`, upstream `app`), a public one (`/public/`) and an
/// upstream nothing listens on.
fn proxy() -> Arc<Proxy> {
    let plan = plan(
        "127.0.0.1:1",
        "max_headers = 20\nmax_header_bytes = 2048\nmax_body_bytes = 100",
        "",
        Some("host = \"public.example\""),
    );
    let verifier = hmac_verifier(VerifierConfig::default());
    with_verifier(plan, verifier, route_metrics(&["api", "public"]))
}

/// The tests' plan: token route `api` (`/api/`) and, with `public`, route `public`
/// (`/public/`, no token) on upstream `app` at `upstream`; `listen`, `api` and `public` are
/// extra lines for those tables.
fn plan(upstream: &str, listen: &str, api: &str, public: Option<&str>) -> Plan {
    let public = public.map_or(String::new(), |extra| {
        format!(
            r#"
[[route]]
name = "public"
path_prefix = "/public/"
upstream = "app"
auth = "none"
{extra}
"#
        )
    });
    let text = format!(
        r#"
[listen]
http = ["127.0.0.1:0"]
{listen}

[jwt]

# Never read: the tests hand the proxy a verifier of their own.
[[jwt.keys]]
pem = "/nonexistent/unused.pem"

[[upstream]]
name = "app"
servers = ["{upstream}"]
connect_timeout = "1s"

[[route]]
name = "api"
path_prefix = "/api/"
upstream = "app"
auth = "required"
{api}
{public}"#
    );
    crate::config::Config::parse(std::path::Path::new("gw.toml"), &text).expect("config")
}

/// A verifier of `cfg` that knows the tests' HMAC key.
fn hmac_verifier(cfg: VerifierConfig) -> Verifier {
    let key = VerifyingKey::hmac(&SECRET, None, None, "test").expect("hmac key");
    Verifier::new(cfg, KeyStore::with_keys([key])).expect("verifier")
}

/// Metrics for `routes` and the upstream `app`.
fn route_metrics(routes: &[&str]) -> Arc<Metrics> {
    let routes: Vec<String> = routes.iter().map(|r| (*r).to_owned()).collect();
    Arc::new(Metrics::new(&routes, &["app".to_owned()]))
}

/// The proxy of `plan`, whose token routes use `verifier`.
fn with_verifier(plan: Plan, verifier: Verifier, metrics: Arc<Metrics>) -> Arc<Proxy> {
    let verifier = Arc::new(verifier);
    let proxy = Proxy::new(
        &Arc::new(plan),
        |_| Ok::<_, Infallible>(verifier.clone()),
        metrics,
    );
    match proxy {
        Ok(p) => Arc::new(p),
        Err(never) => match never {},
    }
}

fn token(scope: &str, exp_in: i64) -> String {
    sign(&[("scope", scope.into())], exp_in)
}

/// An HS256 token with the tests' key: `claims` and an `exp` `exp_in` seconds from now.
fn sign(claims: &[(&str, serde_json::Value)], exp_in: i64) -> String {
    let mut map = serde_json::Map::new();
    map.insert("exp".into(), (now_unix() + exp_in).into());
    for (name, value) in claims {
        map.insert((*name).into(), value.clone());
    }
    SigningKey::hmac(&SECRET, Algorithm::HS256)
        .expect("signing key")
        .sign(serde_json::Map::new(), &map)
        .expect("token")
}

/// A body of unknown length (as HTTP/1 chunked arrives).
struct Chunked(Option<Bytes>);

impl Body for Chunked {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        Poll::Ready(self.0.take().map(|b| Ok(Frame::data(b))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

struct Answer {
    status: u16,
    headers: HeaderMap,
    body: String,
}

async fn send<B>(proxy: &Arc<Proxy>, req: Request<B>, ambiguous: bool) -> Answer
where
    B: Body<Data = Bytes> + Send + Sync + Unpin + 'static,
    B::Error: Into<BoxError>,
{
    let conn = Arc::new(ConnInfo::new(
        "127.0.0.9:5555".parse().expect("addr"),
        false,
    ));
    let resp = Proxy::handle(proxy.clone(), conn, req, ambiguous)
        .await
        .unwrap_or_else(|never| match never {});
    let status = resp.status().as_u16();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body").to_bytes();
    Answer {
        status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

fn get(uri: &str) -> http::request::Builder {
    Request::get(uri).header("host", "api.example")
}

fn empty() -> Full<Bytes> {
    Full::new(Bytes::new())
}

fn series(proxy: &Proxy, name: &str) -> Option<String> {
    let text = proxy.metrics().render();
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ').map(str::to_owned))
}

#[tokio::test]
async fn head_faults_are_refused_before_routing() {
    let p = proxy();
    let cases: Vec<(Request<Full<Bytes>>, bool, u16, &str)> = vec![
        (
            get("/api/x").body(empty()).unwrap(),
            true,
            400,
            "both Transfer-Encoding",
        ),
        (
            get("/api/x")
                .header("x-big", "a".repeat(2100))
                .body(empty())
                .unwrap(),
            false,
            431,
            "headers are too large",
        ),
        (
            (0..21)
                .fold(get("/api/x"), |b, i| b.header(format!("x-{i}"), "1"))
                .body(empty())
                .unwrap(),
            false,
            431,
            "too many headers",
        ),
        (
            get("/api/x")
                .header("content-length", "0")
                .header("content-length", "1")
                .body(empty())
                .unwrap(),
            false,
            400,
            "conflicting Content-Length",
        ),
        (
            get("/api/x")
                .header("content-length", "-1")
                .body(empty())
                .unwrap(),
            false,
            400,
            "invalid Content-Length",
        ),
        (
            get("/api/x")
                .header("content-length", "101")
                .body(empty())
                .unwrap(),
            false,
            413,
            "body is too large",
        ),
        (
            get("/api/%zz").body(empty()).unwrap(),
            false,
            400,
            "percent-encoding",
        ),
        (
            Request::get("/api/x").body(empty()).unwrap(),
            false,
            400,
            "names no host",
        ),
        (
            get("/api/x")
                .header("host", "other.example")
                .body(empty())
                .unwrap(),
            false,
            400,
            "more than one Host",
        ),
        (
            get("/elsewhere").body(empty()).unwrap(),
            false,
            404,
            "no route",
        ),
        (
            Request::get("/public/x")
                .header("host", "api.example")
                .body(empty())
                .unwrap(),
            false,
            404,
            "no route",
        ),
    ];
    let n = cases.len();
    for (req, ambiguous, status, text) in cases {
        let what = format!("{} {:?}", req.uri(), req.headers());
        let a = send(&p, req, ambiguous).await;
        assert_eq!(a.status, status, "{what}: {}", a.body);
        assert!(a.body.contains(text), "{what}: {}", a.body);
        assert!(a.headers.get("www-authenticate").is_none(), "{what}");
    }
    // Nothing matched a route, nothing was the auth layer's.
    let none: u64 = p
        .metrics()
        .render()
        .lines()
        .filter(|l| l.starts_with("gateway_requests_total{route=\"(none)\""))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<u64>().ok())
        .sum();
    assert_eq!(none, n as u64);
    assert_eq!(
        series(&p, "gateway_denials_total{reason=\"missing_token\"}").as_deref(),
        Some("0")
    );
}

#[tokio::test]
async fn transfer_codings_other_than_chunked_once_are_refused() {
    let p = proxy();
    for (te, status) in [("gzip, chunked", 501), ("chunked, chunked", 400)] {
        let req = get("/api/x")
            .header("transfer-encoding", te)
            .body(Chunked(Some(Bytes::from_static(b"abc"))))
            .unwrap();
        assert_eq!(send(&p, req, false).await.status, status, "{te}");
    }
}

#[tokio::test]
async fn auth_refusals_carry_their_challenge_and_count_their_reason() {
    let p = proxy();
    let b = "Bearer realm=\"gateway\"";
    let cases = [
        (None, 401, b.to_owned()),
        (Some("Basic dXNlcjpwYXNz".to_owned()), 401, b.to_owned()),
        (
            Some("Bearer a, Bearer b".to_owned()),
            401,
            format!("{b}, error=\"invalid_request\""),
        ),
        (
            Some(format!("Bearer {}", token("read", -600))),
            401,
            format!("{b}, error=\"invalid_token\", error_description=\"the token expired\""),
        ),
        (
            Some(format!("Bearer {}x", token("read", 600))),
            401,
            format!("{b}, error=\"invalid_token\", error_description=\"the token is not valid\""),
        ),
        (
            Some(format!("Bearer {}", token("write", 600))),
            403,
            format!("{b}, error=\"insufficient_scope\", scope=\"read\""),
        ),
    ];
    for (auth, status, challenge) in cases {
        let mut req = get("/api/x");
        if let Some(a) = &auth {
            req = req.header("authorization", a);
        }
        let a = send(&p, req.body(empty()).unwrap(), false).await;
        assert_eq!(a.status, status, "{auth:?}: {}", a.body);
        let got = a.headers["www-authenticate"].to_str().unwrap_or_default();
        assert!(got.starts_with(&challenge), "{auth:?}: {got}");
        assert_eq!(a.headers["cache-control"], "no-store");
    }
    let count = |r: &str| series(&p, &format!("gateway_denials_total{{reason=\"{r}\"}}"));
    assert_eq!(count("missing_token").as_deref(), Some("2"));
    for r in [
        "invalid_request",
        "expired",
        "bad_signature",
        "insufficient_scope",
    ] {
        assert_eq!(count(r).as_deref(), Some("1"), "{r}");
    }
    assert_eq!(
        series(&p, "gateway_requests_total{route=\"api\",status=\"401\"}").as_deref(),
        Some("5")
    );
}

#[tokio::test]
async fn a_valid_token_goes_upstream_and_an_unreachable_one_is_a_502() {
    let p = proxy();
    let req = get("/api/x")
        .header("authorization", format!("Bearer {}", token("read", 600)))
        .body(empty())
        .unwrap();
    let a = send(&p, req, false).await;
    assert_eq!(a.status, 502, "{}", a.body);
    assert_eq!(
        a.body,
        "{\"error\":\"bad_gateway\",\"message\":\"the upstream server could not be reached\"}\n"
    );
    assert_eq!(
        series(
            &p,
            "gateway_upstream_errors_total{upstream=\"app\",kind=\"connect\"}"
        )
        .as_deref(),
        Some("1")
    );
    // A public route needs no token to get as far.
    let req = Request::get("/public/x")
        .header("host", "public.example")
        .body(empty())
        .unwrap();
    assert_eq!(send(&p, req, false).await.status, 502);
}

/// A real HTTP/1.1 upstream on loopback that answers with the head it received.
async fn echo_upstream() -> std::net::SocketAddr {
    use hyper::server::conn::http1;
    use hyper::service::service_fn;
    use hyper_util::rt::TokioIo;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = service_fn(|req: Request<hyper::body::Incoming>| async move {
                    let mut text = format!("{} {}\n", req.method(), req.uri());
                    for (n, v) in req.headers() {
                        text += &format!("{n}: {}\n", v.to_str().unwrap_or("?"));
                    }
                    Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(text))))
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_valid_token_reaches_the_upstream_with_its_claims_and_no_hop_headers() {
    let upstream = echo_upstream().await;
    let config = plan(
        &upstream.to_string(),
        "",
        "claim_headers = { scope = \"X-Auth-Scope\" }\nforward_authorization = false",
        None,
    );
    let verifier = hmac_verifier(VerifierConfig::default());
    let metrics = route_metrics(&["api"]);
    let p = with_verifier(config, verifier, metrics);
    let req = get("/api/./a/../b?q=1")
        .header("authorization", format!("Bearer {}", token("read", 600)))
        .header("x-auth-scope", "admin")
        .header("connection", "x-secret")
        .header("x-secret", "hop")
        .header("x-kept", "yes")
        .body(empty())
        .unwrap();
    let a = send(&p, req, false).await;
    assert_eq!(a.status, 200, "{}", a.body);
    let lines: Vec<&str> = a.body.lines().collect();
    assert_eq!(lines[0], "GET /api/b?q=1", "{}", a.body);
    for want in ["x-auth-scope: read", "x-kept: yes", "host: api.example"] {
        assert!(lines.contains(&want), "{want} missing:\n{}", a.body);
    }
    for gone in [
        "x-auth-scope: admin",
        "x-secret: hop",
        "connection: x-secret",
    ] {
        assert!(!lines.contains(&gone), "{gone} forwarded:\n{}", a.body);
    }
    assert!(
        !lines.iter().any(|l| l.starts_with("authorization:")),
        "{}",
        a.body
    );
    assert_eq!(
        series(&p, "gateway_requests_total{route=\"api\",status=\"200\"}").as_deref(),
        Some("1")
    );
}

#[tokio::test]
async fn a_refused_head_request_gets_no_body() {
    let p = proxy();
    let req = Request::head("/api/x")
        .header("host", "api.example")
        .body(empty())
        .unwrap();
    let a = send(&p, req, false).await;
    assert_eq!(a.status, 401);
    assert_eq!(a.body, "");
}

fn stripped(pairs: &[(&'static str, &'static str)]) -> Vec<String> {
    let mut h = HeaderMap::new();
    for (n, v) in pairs {
        h.append(HeaderName::from_static(n), HeaderValue::from_static(v));
    }
    strip_hop_by_hop(&mut h);
    let mut names: Vec<String> = h.keys().map(|n| n.as_str().to_owned()).collect();
    names.sort();
    names
}

#[test]
fn connection_never_removes_host() {
    let left = stripped(&[
        ("connection", "host, x-hop"),
        ("connection", "Host"),
        ("host", "example.com"),
        ("x-hop", "x"),
    ]);
    assert_eq!(left, ["host"]);
}

#[test]
fn each_hop_by_hop_header_goes_even_without_connection() {
    for hop in &HOP_BY_HOP {
        let left = stripped(&[
            ("x-end-to-end", "kept"),
            (hop.as_str(), "x"),
            ("accept", "*/*"),
        ]);
        assert_eq!(left, ["accept", "x-end-to-end"], "{hop} alone");
    }
}

#[test]
fn headers_named_by_connection_go_with_it() {
    let left = stripped(&[
        ("connection", "close, X-Hop"),
        ("connection", "x-other"),
        ("x-hop", "secret"),
        ("x-other", "secret"),
        ("x-kept", "yes"),
    ]);
    assert_eq!(left, ["x-kept"]);
}

#[test]
fn end_to_end_headers_are_left_alone() {
    let left = stripped(&[
        ("host", "example.com"),
        ("accept", "*/*"),
        ("authorization", "Bearer x"),
        ("content-length", "0"),
    ]);
    assert_eq!(left, ["accept", "authorization", "content-length", "host"]);
}

/// A client over its route's per-subject limit, a per-source limit or its verification
/// budget gets 429s the abuse engine does not count as client errors, so an address many
/// clients share is not banned for one client's pace; real client errors still are.
#[tokio::test]
async fn limit_429s_are_not_client_errors_for_the_abuse_engine() {
    use crate::abuse::AbuseEngine;
    use crate::config::abuse::Rule;
    use crate::config::{AbuseConfig, DurationSecs};
    use crate::deny::DenyStore;
    use crate::jwt::VerifyBudgetConfig;
    use crate::ratelimit::Rate;
    let plan = plan(
        "127.0.0.1:1",
        "",
        "rate_limit = { key = \"sub\", rate = \"1/h\", burst = 1 }",
        Some("rate_limit = { key = \"source\", rate = \"1/h\", burst = 1 }"),
    );
    // One signature check per source an hour: the second fresh token is over budget.
    let hour = Rate {
        count: 1,
        per: std::time::Duration::from_secs(3600),
    };
    let cfg = VerifierConfig {
        verify_budget: VerifyBudgetConfig {
            rate: hour,
            burst: 1,
            ..VerifyBudgetConfig::default()
        },
        ..VerifierConfig::default()
    };
    let verifier = Arc::new(hmac_verifier(cfg));
    let metrics = route_metrics(&["api", "public"]);
    let rule = Some(Rule {
        limit: 2,
        window: DurationSecs(std::time::Duration::from_secs(60)),
        ban: DurationSecs(std::time::Duration::from_secs(60)),
        fleet_limit: None,
    });
    let engine = Arc::new(AbuseEngine::new(
        &AbuseConfig {
            client_errors: rule,
            ..AbuseConfig::default()
        },
        Arc::new(DenyStore::new(None, None, vec![])),
    ));
    let proxy = Proxy::new(
        &Arc::new(plan),
        |_| Ok::<_, Infallible>(verifier.clone()),
        metrics,
    )
    .unwrap_or_else(|never| match never {})
    .with_abuse(engine.clone());
    let proxy = Arc::new(proxy);
    let ip: std::net::IpAddr = "127.0.0.9".parse().expect("ip"); // `send`'s peer
    let signed = |sub: &str, jti: u32| {
        sign(
            &[
                ("scope", "read write".into()),
                ("sub", sub.into()),
                ("jti", jti.into()),
            ],
            300,
        )
    };
    let bearer = |t: &str| {
        get("/api/x")
            .header("authorization", format!("Bearer {t}"))
            .body(empty())
            .expect("request")
    };

    // Per source: the first goes upstream (nothing listens: 502), then 429s.
    let first = send(
        &proxy,
        get("/public/x").body(empty()).expect("request"),
        false,
    )
    .await;
    assert_eq!(first.status, 502, "{}", first.body);
    for _ in 0..5 {
        let a = send(
            &proxy,
            get("/public/x").body(empty()).expect("request"),
            false,
        )
        .await;
        assert_eq!(a.status, 429, "{}", a.body);
        assert!(a.headers.contains_key("ratelimit"), "{:?}", a.headers);
    }
    // Per subject: one token (verified once, then from the cache), then 429s.
    let alice = signed("alice", 1);
    assert_eq!(send(&proxy, bearer(&alice), false).await.status, 502);
    for _ in 0..5 {
        let a = send(&proxy, bearer(&alice), false).await;
        assert_eq!(a.status, 429, "{}", a.body);
        assert!(
            a.headers.contains_key("ratelimit-policy"),
            "{:?}",
            a.headers
        );
    }
    // The verification budget: every fresh token needs a check, and the one is spent.
    for jti in 2..7 {
        let a = send(&proxy, bearer(&signed("bob", jti)), false).await;
        assert_eq!(a.status, 429, "{}", a.body);
        assert!(a.body.contains("verifications"), "{}", a.body);
    }
    assert!(
        !engine.store().is_denied(ip),
        "15 limit 429s banned the source"
    );
    assert_eq!(
        series(&proxy, "gateway_denials_total{reason=\"rate_limited\"}").as_deref(),
        Some("10")
    );
    assert_eq!(
        series(&proxy, "gateway_denials_total{reason=\"verify_budget\"}").as_deref(),
        Some("5")
    );

    // Real client errors still count: the third 404 crosses the limit of 2.
    for _ in 0..3 {
        assert_eq!(
            send(
                &proxy,
                get("/nowhere").body(empty()).expect("request"),
                false
            )
            .await
            .status,
            404
        );
    }
    assert!(engine.store().is_denied(ip), "404s must still ban");
}

/// An upstream answer whose end cannot be told for sure (here Content-Length with
/// Transfer-Encoding, the response-smuggling pattern) is a 502 counted as a protocol error,
/// never relayed.
#[tokio::test]
async fn an_ambiguously_framed_upstream_answer_is_a_502() {
    let upstream = crate::proxy::pool::tests::TestUpstream::raw(
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n\
          0\r\n\r\nHTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nEVIL",
        true,
    )
    .await;
    let addr = upstream.addr;
    let config = plan(&addr.to_string(), "", "", Some("host = \"public.example\""));
    let p = with_verifier(
        config,
        hmac_verifier(VerifierConfig::default()),
        route_metrics(&["api", "public"]),
    );
    let req = Request::get("/public/x")
        .header("host", "public.example")
        .body(empty())
        .unwrap();
    let a = send(&p, req, false).await;
    assert_eq!(a.status, 502, "{}", a.body);
    assert!(!a.body.contains("EVIL"), "{}", a.body);
    assert_eq!(
        series(
            &p,
            "gateway_upstream_errors_total{upstream=\"app\",kind=\"protocol\"}"
        )
        .as_deref(),
        Some("1")
    );
}
mod access;
