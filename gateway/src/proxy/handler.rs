//! One request's path: framing checks → path normalisation → route → bearer token → verify
//! → scopes → headers for the upstream → upstream → response. Every refusal is answered here,
//! before the upstream pays anything, and counted by reason.

use super::client_headers;
use super::forwarding::Forwarding;
use super::host::request_host;
use super::idle::Activity;
use super::request_body::{ClientFault, RequestBody};
use super::route::{self, Route};
use super::upstream::{Upstream, UpstreamError};
use super::{full_body, ProxyBody};
use crate::abuse::{AbuseEngine, Signal};
use crate::config::{AuthMode, Config};
use crate::deny::DenyStore;
use crate::jwt::{now_unix, VerifiedToken, Verifier};
use crate::metrics::Metrics;
use crate::policy::{self, TokenProblem};
use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::borrow::Cow;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

/// What the server knows about a connection, shared by its requests.
#[derive(Debug)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// Forwarding header values (they carry whether the connection is TLS), built once for
    /// the connection.
    pub forwarding: Forwarding,
    /// Requests in progress, for closing the connection when it goes quiet.
    pub activity: Activity,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, tls: bool) -> Self {
        Self {
            peer,
            forwarding: Forwarding::new(peer.ip(), tls),
            activity: Activity::new(),
        }
    }
}

/// Everything the request path needs, built once at start.
pub struct Proxy {
    routes: Vec<Route>,
    upstreams: Vec<Arc<Upstream>>,
    verifier: Option<Arc<Verifier>>,
    metrics: Arc<Metrics>,
    /// Every configured claim header: client-sent copies (and look-alikes) are removed on
    /// every route.
    claim_header_names: Vec<HeaderName>,
    max_body_bytes: u64,
    max_header_bytes: usize,
    max_headers: usize,
    realm: HeaderValue,
    abuse: Option<Arc<AbuseEngine>>,
}

/// How long a request with an unknown `kid` waits for the JWKS refetch it triggered.
const KID_REFETCH_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// A refusal built before the request is consumed (boxed: responses are large).
type Refusal = Box<Response<ProxyBody>>;

/// Headers that describe one hop, never forwarded (RFC 9110 §7.6.1), plus the proxy
/// credentials meant for us. Transfer-Encoding is hop-by-hop too: hyper frames the body for
/// the next hop itself.
static HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
    header::TRANSFER_ENCODING,
];

impl Proxy {
    pub fn new(config: &Config, verifier: Option<Arc<Verifier>>, metrics: Arc<Metrics>) -> Self {
        let upstreams: Vec<Arc<Upstream>> = config
            .upstream
            .iter()
            .map(|u| Arc::new(Upstream::new(u)))
            .collect();
        let routes: Vec<Route> = config
            .route
            .iter()
            .map(|r| {
                let idx = config
                    .upstream
                    .iter()
                    .position(|u| u.name == r.upstream)
                    .unwrap_or(0);
                Route::new(r, idx)
            })
            .collect();
        let mut claim_header_names: Vec<HeaderName> = Vec::new();
        for name in routes.iter().flat_map(|r| r.claim_headers.names()) {
            if !claim_header_names.contains(name) {
                claim_header_names.push(name.clone());
            }
        }
        let listen = config.listen.clone().unwrap_or_default();
        Self {
            routes,
            upstreams,
            verifier,
            metrics,
            claim_header_names,
            max_body_bytes: listen.max_body_bytes,
            max_header_bytes: listen.max_header_bytes,
            max_headers: listen.max_headers,
            realm: HeaderValue::from_static("gateway"),
            abuse: None,
        }
    }

    /// A copy for another worker runtime: the same routes, verifier, metrics and abuse
    /// engine, the same upstream health, but connection pools of its own.
    pub fn for_worker(&self, config: &Config) -> Self {
        Self {
            routes: self.routes.clone(),
            upstreams: self
                .upstreams
                .iter()
                .zip(&config.upstream)
                .map(|(u, cfg)| Arc::new(u.for_worker(cfg)))
                .collect(),
            verifier: self.verifier.clone(),
            metrics: self.metrics.clone(),
            claim_header_names: self.claim_header_names.clone(),
            max_body_bytes: self.max_body_bytes,
            max_header_bytes: self.max_header_bytes,
            max_headers: self.max_headers,
            realm: self.realm.clone(),
            abuse: self.abuse.clone(),
        }
    }

    /// Feeds the abuse engine with this proxy's signals, and closes banned sources'
    /// connections.
    pub fn with_abuse(mut self, engine: Arc<AbuseEngine>) -> Self {
        self.abuse = Some(engine);
        self
    }

    pub fn abuse(&self) -> Option<&Arc<AbuseEngine>> {
        self.abuse.as_ref()
    }

    pub fn deny_store(&self) -> Option<&Arc<DenyStore>> {
        self.abuse.as_ref().map(|a| a.store())
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    pub fn upstreams(&self) -> &[Arc<Upstream>] {
        &self.upstreams
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The hyper service body: never fails, every problem is a response.
    /// `ambiguous_framing`: the request head had both Content-Length and Transfer-Encoding
    /// (see [`super::framing`]); hyper has already reconciled them, we refuse the request.
    pub async fn handle(
        self: Arc<Self>,
        conn: Arc<ConnInfo>,
        req: Request<Incoming>,
        ambiguous_framing: bool,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let _in_progress = conn.activity.request(req.version());
        let is_head = req.method() == http::Method::HEAD;
        let (route, mut resp) = if ambiguous_framing {
            let r = plain_error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "both Transfer-Encoding and Content-Length",
            );
            (None, r)
        } else {
            self.route_and_forward(&conn, req).await
        };
        let status = resp.status();
        self.metrics.request(route, status.as_u16());
        if let Some(abuse) = &self.abuse {
            let ip = conn.peer.ip();
            abuse.record(ip, Signal::Request);
            if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                abuse.record(ip, Signal::AuthFailure);
            } else if status.is_client_error() {
                abuse.record(ip, Signal::ClientError);
            }
        }
        if is_head {
            // A HEAD response has no body; our own refusals must not send one either.
            *resp.body_mut() = super::empty_body();
        }
        Ok(resp)
    }

    async fn route_and_forward(
        &self,
        conn: &ConnInfo,
        req: Request<Incoming>,
    ) -> (Option<usize>, Response<ProxyBody>) {
        if let Err(resp) = self.check_framing(&req) {
            return (None, *resp);
        }
        if !route::is_acceptable_method(req.method()) {
            return (
                None,
                plain_error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "the method is not upper-case letters",
                ),
            );
        }
        let host = match request_host(&req) {
            Ok(h) => h.map(Cow::into_owned),
            Err(e) => {
                return (
                    None,
                    plain_error(StatusCode::BAD_REQUEST, "bad_request", &e.to_string()),
                )
            }
        };
        // `normalized` is `None` when the path is already normal and the request's own URI
        // is forwarded as is.
        let (idx, route, normalized) = match route::resolve(
            &self.routes,
            host.as_deref(),
            req.uri().path(),
            req.method(),
        ) {
            Ok(Some(r)) => (r.index, r.route, r.path),
            Ok(None) => {
                return (
                    None,
                    plain_error(
                        StatusCode::NOT_FOUND,
                        "not_found",
                        "no route for this request",
                    ),
                )
            }
            Err(e) => {
                return (
                    None,
                    plain_error(StatusCode::BAD_REQUEST, "bad_request", &e.to_string()),
                )
            }
        };
        let token = match self.authorize(route, &req).await {
            Ok(t) => t,
            Err(resp) => {
                drain(req.into_body()).await;
                return (Some(idx), *resp);
            }
        };
        let resp = self
            .forward(
                conn,
                route,
                req,
                normalized,
                host.as_deref(),
                token.as_deref(),
            )
            .await;
        (Some(idx), resp)
    }

    /// Requests HTTP forbids or we will not carry are refused, never forwarded.
    fn check_framing(&self, req: &Request<Incoming>) -> Result<(), Refusal> {
        let h = req.headers();
        // hyper's HTTP/1 buffer cannot go below 8 KiB, nor its header count below 100; the
        // configured limits are exact here, for both protocols (name, ": ", value, CRLF per
        // header).
        let head: usize = h.iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum();
        if head > self.max_header_bytes {
            return Err(refuse(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large",
                "the request headers are too large",
            ));
        }
        if h.len() > self.max_headers {
            return Err(refuse(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "headers_too_large",
                "the request has too many headers",
            ));
        }
        let mut lengths = h.get_all(header::CONTENT_LENGTH).iter();
        if let Some(first) = lengths.next() {
            if lengths.any(|other| other != first) {
                return Err(refuse(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "conflicting Content-Length",
                ));
            }
            match first
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
            {
                None => {
                    return Err(refuse(
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        "invalid Content-Length",
                    ))
                }
                Some(n) if n > self.max_body_bytes => {
                    let (status, code, message) = ClientFault::TooLarge.answer();
                    return Err(refuse(status, code, message));
                }
                Some(_) => {}
            }
        }
        // Only a body of unknown length can carry a transfer coding (HTTP/1 chunked).
        if hyper::body::Body::size_hint(req.body()).exact().is_none() {
            check_transfer_codings(h)?;
        }
        Ok(())
    }

    /// The verified token (if any) or the refusal.
    async fn authorize(
        &self,
        route: &Route,
        req: &Request<Incoming>,
    ) -> Result<Option<Arc<VerifiedToken>>, Refusal> {
        if route.auth == AuthMode::None {
            return Ok(None);
        }
        let mut found = policy::bearer_token(req.headers());
        if found == Err(TokenProblem::Missing) && route.query_token {
            found = policy::query_token(req.uri().query());
        }
        let raw = match found {
            Ok(t) => t,
            Err(TokenProblem::Missing) if route.auth == AuthMode::Optional => return Ok(None),
            Err(TokenProblem::Missing) => {
                self.metrics.denial("missing_token");
                return Err(self.unauthorized(None, "a bearer token is required"));
            }
            Err(TokenProblem::Invalid(why)) => {
                self.metrics.denial("invalid_request");
                return Err(self.unauthorized(Some("invalid_request"), why));
            }
        };
        let Some(verifier) = &self.verifier else {
            // The config check refuses token routes without [jwt]; be safe anyway.
            return Err(refuse(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "no verifier",
            ));
        };
        let started = Instant::now();
        // An unknown `kid` may mean the issuer rotated keys: a JWKS source refetches (rate
        // limited, single flight) and the token gets one more try.
        let verified = verifier
            .verify_async(raw, now_unix(), KID_REFETCH_WAIT)
            .await;
        self.metrics.verify_latency(started.elapsed());
        let token = match verified {
            Ok(t) => t,
            Err(_) if !policy::is_b64token(raw) => {
                // Not even the syntax of a bearer token (RFC 6750 §2.1).
                self.metrics.denial("invalid_request");
                return Err(self.unauthorized(
                    Some("invalid_request"),
                    "the bearer token has invalid characters",
                ));
            }
            Err(rejection) => {
                let reason = rejection.reason();
                self.metrics.denial(reason);
                let description = if reason == "expired" {
                    "the token expired"
                } else {
                    "the token is not valid"
                };
                return Err(self.unauthorized(Some("invalid_token"), description));
            }
        };
        if let Some(scope) = route.scopes.missing(req.method(), &token) {
            self.metrics.denial("insufficient_scope");
            return Err(self.forbidden(scope));
        }
        Ok(Some(token))
    }

    fn unauthorized(&self, error: Option<&str>, description: &str) -> Refusal {
        let realm = self.realm.to_str().unwrap_or("gateway");
        let challenge = match error {
            None => format!("Bearer realm=\"{realm}\""),
            Some(e) => format!(
                "Bearer realm=\"{realm}\", error=\"{e}\", error_description=\"{description}\""
            ),
        };
        with_challenge(
            plain_error(
                StatusCode::UNAUTHORIZED,
                error.unwrap_or("unauthorized"),
                description,
            ),
            &challenge,
        )
    }

    fn forbidden(&self, scope: &str) -> Refusal {
        let realm = self.realm.to_str().unwrap_or("gateway");
        // Scope tokens are NQCHAR without `"` or `\`; anything else never reaches here
        // from a validated config, but keep the header well-formed regardless.
        let scope: String = scope.chars().filter(|c| *c != '"' && *c != '\\').collect();
        let challenge =
            format!("Bearer realm=\"{realm}\", error=\"insufficient_scope\", scope=\"{scope}\"");
        with_challenge(
            plain_error(
                StatusCode::FORBIDDEN,
                "insufficient_scope",
                &format!("the token lacks the scope `{scope}`"),
            ),
            &challenge,
        )
    }

    async fn forward(
        &self,
        conn: &ConnInfo,
        route: &Route,
        req: Request<Incoming>,
        normalized: Option<String>,
        host: Option<&str>,
        token: Option<&VerifiedToken>,
    ) -> Response<ProxyBody> {
        let (mut parts, body) = req.into_parts();
        let headers = &mut parts.headers;
        strip_hop_by_hop(headers);
        client_headers::remove_spoofable(
            headers,
            &self.claim_header_names,
            route.strip_override_headers,
        );
        if !route.forward_authorization {
            headers.remove(header::AUTHORIZATION);
        }
        if let Some(t) = token {
            route.claim_headers.apply(t, headers);
        }
        conn.forwarding.apply(headers, host);
        // A target with an authority (absolute form, HTTP/2) names the host: the upstream
        // gets that, never a Host header the client added that says otherwise.
        if let Some(auth) = parts.uri.authority() {
            let same = headers
                .get(header::HOST)
                .is_some_and(|h| h.as_bytes() == auth.as_str().as_bytes());
            if !same {
                if let Ok(v) = HeaderValue::from_str(auth.as_str()) {
                    headers.insert(header::HOST, v);
                }
            }
        }
        // An upstream that must not see credentials does not get a query token either.
        let query = match parts.uri.query() {
            Some(q) if !route.forward_authorization => policy::without_query_token(q),
            _ => None,
        };
        // Origin form for the upstream: the normalised path, or the request's own when it
        // was normal already (absolute-form targets lose scheme and authority).
        if normalized.is_some() || parts.uri.scheme().is_some() || query.is_some() {
            let path = normalized.as_deref().unwrap_or(parts.uri.path());
            let target = match query.as_deref().or(parts.uri.query()) {
                Some("") => path.to_string(),
                Some(q) => format!("{path}?{q}"),
                None => path.to_string(),
            };
            parts.uri = match target.parse() {
                Ok(u) => u,
                Err(_) => {
                    return plain_error(
                        StatusCode::BAD_REQUEST,
                        "bad_request",
                        "invalid request target",
                    )
                }
            };
        }
        parts.version = Version::HTTP_11;
        let (body, progress) = RequestBody::new(body, self.max_body_bytes);
        let Some(upstream) = self.upstreams.get(route.upstream) else {
            return plain_error(StatusCode::INTERNAL_SERVER_ERROR, "internal", "no upstream");
        };
        match upstream
            .send(Request::from_parts(parts, body.boxed()))
            .await
        {
            Ok(mut resp) => {
                strip_hop_by_hop(resp.headers_mut());
                resp
            }
            Err(e) => {
                let timed_out = matches!(e, UpstreamError::Timeout { .. });
                if let Some(fault) = progress.client_fault(timed_out) {
                    return client_fault_response(&e, route, fault);
                }
                self.metrics.upstream_error(route.upstream, e.kind());
                tracing::warn!(error = %e, route = %route.name, "upstream failed");
                upstream_error_response(&e)
            }
        }
    }
}

/// hyper decodes `chunked`, and Transfer-Encoding is hop-by-hop: another coding would reach
/// the upstream silently undone, so it is refused (501, RFC 9112 §6.1), as is `chunked`
/// applied twice (400).
fn check_transfer_codings(h: &HeaderMap) -> Result<(), Refusal> {
    let mut chunked = 0;
    for value in h.get_all(header::TRANSFER_ENCODING) {
        let Ok(value) = value.to_str() else {
            return Err(refuse(
                StatusCode::BAD_REQUEST,
                "bad_request",
                "invalid Transfer-Encoding",
            ));
        };
        for coding in value.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            if !coding.eq_ignore_ascii_case("chunked") {
                return Err(refuse(
                    StatusCode::NOT_IMPLEMENTED,
                    "not_implemented",
                    "only the chunked transfer coding is supported",
                ));
            }
            chunked += 1;
        }
    }
    if chunked > 1 {
        return Err(refuse(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "chunked applied more than once",
        ));
    }
    Ok(())
}

/// Reads (and discards) a little of a refused request's body before we answer, so that a
/// client still sending a small body gets our status rather than a reset stream (HTTP/2) or
/// a closed connection. Bounded in bytes and time: a refusal never waits on a slow client.
async fn drain(mut body: Incoming) {
    const MAX_BYTES: usize = 64 * 1024;
    const MAX_WAIT: std::time::Duration = std::time::Duration::from_millis(500);
    let mut seen = 0usize;
    let _ = tokio::time::timeout(MAX_WAIT, async {
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(data) = frame.data_ref() {
                seen += data.len();
                if seen > MAX_BYTES {
                    break;
                }
            }
        }
    })
    .await;
}

/// The answer to an upstream exchange that failed because of the client's body.
#[cold]
fn client_fault_response(
    e: &UpstreamError,
    route: &Route,
    fault: ClientFault,
) -> Response<ProxyBody> {
    tracing::debug!(error = %e, route = %route.name, ?fault, "request body failed on the client's side");
    let (status, code, message) = fault.answer();
    plain_error(status, code, message)
}

fn upstream_error_response(e: &UpstreamError) -> Response<ProxyBody> {
    let (code, message) = match e.status() {
        StatusCode::SERVICE_UNAVAILABLE => {
            ("service_unavailable", "no upstream server is available")
        }
        StatusCode::GATEWAY_TIMEOUT => (
            "gateway_timeout",
            "the upstream server did not answer in time",
        ),
        _ => ("bad_gateway", "the upstream server could not be reached"),
    };
    plain_error(e.status(), code, message)
}

/// Removes hop-by-hop headers, including those the Connection header names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages carry none of them: one pass over the names, without hashing, tells,
    // and spares the common case nine lookups. Connection is in the list, so a message
    // naming more headers in it always takes the full path.
    if !headers.keys().any(|name| HOP_BY_HOP.contains(name)) {
        return;
    }
    let listed: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
        // The upstream needs the Host: `Connection: host` must not remove it.
        .filter(|n| n != header::HOST)
        .collect();
    for name in listed.iter().chain(HOP_BY_HOP.iter()) {
        headers.remove(name);
    }
}

/// A small JSON error body without internals.
pub fn plain_error(status: StatusCode, error: &str, message: &str) -> Response<ProxyBody> {
    let body = serde_json::json!({ "error": error, "message": message }).to_string() + "\n";
    let mut resp = Response::new(full_body(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

fn with_challenge(mut resp: Response<ProxyBody>, challenge: &str) -> Refusal {
    if let Ok(v) = HeaderValue::from_str(challenge) {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    Box::new(resp)
}

fn refuse(status: StatusCode, error: &str, message: &str) -> Refusal {
    Box::new(plain_error(status, error, message))
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn end_to_end_headers_are_left_alone() {
        let left = stripped(&[
            ("host", "example.com"),
            ("accept", "*/*"),
            ("authorization", "Bearer x"),
            ("content-length", "0"),
        ]);
        assert_eq!(left, ["accept", "authorization", "content-length", "host"]);
    }
}
