//! One request's path: head checks ([`head`]) → method → host → path normalisation and route
//! ([`route::resolve`]) → bearer
//! token, verify, scopes ([`auth`]) → the head for the upstream ([`outbound`]) → upstream →
//! response. Every refusal is a [`Refusal`], answered and counted in one place
//! ([`Proxy::refuse`]) before the upstream pays anything.
//!
//! The path is generic over the request body, so tests drive it in process with bodies of
//! their own; the server runs it with hyper's `Incoming`.

mod auth;
mod head;
mod outbound;

use super::client_addr::ForwardedClient;
use super::forwarding::Forwarding;
use super::host::request_host;
use super::idle::Activity;
use super::linger::ResponseEnd;
use super::refusal::Refusal;
use super::request_body;
use super::route::{self, Route};
use super::slots::Slots;
use super::upstream::{Upstream, UpstreamError};
use super::upstream_h1::Added;
use super::{BoxError, ErrorChain, ProxyBody};
use crate::abuse::AbuseEngine;
use crate::access_log::{self, AccessLog, ClientBody, Names, Record, TlsInfo};
use crate::config::Plan;
use crate::deny::DenyStore;
use crate::jwt::{VerifiedToken, Verifier, VerifierConfig};
use crate::metrics::{Metrics, Series};
use bytes::Bytes;
use http::header::HeaderName;
use http::{Request, Response};
use hyper::body::Body;
use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// What the server knows about a connection, shared by its requests.
#[derive(Debug)]
pub struct ConnInfo {
    /// The client: the TCP peer, or the address a trusted proxy's PROXY header named.
    pub peer: SocketAddr,
    /// The trusted proxy the connection came through, when a PROXY header named the client.
    pub via: Option<SocketAddr>,
    /// The peer is a trusted proxy on a plain-HTTP listener: its `X-Forwarded-For` names
    /// each request's client (see [`super::client_addr`]).
    pub trust_forwarded_for: bool,
    /// Forwarding header values (they carry whether the connection is TLS), built once for
    /// the connection.
    pub forwarding: Forwarding,
    /// Requests in progress, for closing the connection when it goes quiet.
    pub activity: Arc<Activity>,
    /// The negotiated TLS version and ALPN (for the access log); `None` on plain HTTP.
    pub tls: Option<TlsInfo>,
}

impl ConnInfo {
    pub fn new(peer: SocketAddr, tls: bool) -> Self {
        Self {
            peer,
            via: None,
            trust_forwarded_for: false,
            forwarding: Forwarding::new(peer.ip(), tls),
            activity: Arc::new(Activity::new()),
            tls: None,
        }
    }

    /// The address of one request's client: the connection's, or the one a trusted
    /// proxy's `X-Forwarded-For` named (found at the connection, see `server::drive`).
    pub fn client_of<B>(&self, req: &Request<B>) -> std::net::IpAddr {
        match req.extensions().get::<ForwardedClient>() {
            Some(c) => c.ip,
            None => self.peer.ip(),
        }
    }
}

/// Everything the request path needs, built once at start.
pub struct Proxy {
    /// What this proxy was built from.
    plan: Arc<Plan>,
    routes: Vec<Route>,
    /// Built from the plan's upstreams in order: a route's [`crate::config::UpstreamId`]
    /// indexes it.
    upstreams: Vec<Arc<Upstream>>,
    metrics: Arc<Metrics>,
    /// This plan's route and upstream series, indexed like `routes` and `upstreams`.
    series: Arc<Series>,
    /// Every configured claim header: client-sent copies (and look-alikes) are removed on
    /// every route.
    claim_header_names: Vec<HeaderName>,
    max_body_bytes: u64,
    /// How long the request body may stall (`body_timeout`).
    body_timeout: std::time::Duration,
    max_header_bytes: usize,
    max_headers: usize,
    /// Requests in progress, all workers (`max_requests_in_flight`).
    requests: Arc<Slots>,
    abuse: Option<Arc<AbuseEngine>>,
    /// The access log; also decides whether requests get an `X-Request-Id`.
    access: Option<AccessLog>,
    /// Route and upstream names for access log lines.
    log_names: Arc<Names>,
}

/// What the request path learnt on its way, for the access log.
#[derive(Default)]
struct Trail {
    token: Option<Arc<VerifiedToken>>,
    upstream: Option<usize>,
    server: Option<std::net::SocketAddr>,
    upstream_time: Option<Duration>,
    bytes_in: u64,
    /// An `X-Request-Id` of ours for the upstream (set after the head checks, which count
    /// the client's headers only).
    set_id: Option<http::HeaderValue>,
}

/// The reason code of a refusal, carried on its response to the access log line.
#[derive(Clone, Copy)]
struct RefusalCode(&'static str);

impl Proxy {
    /// `verifier` builds the token verifier from the plan's `[jwt]`: called once, and only
    /// when some route checks tokens (see [`route::build`]).
    pub fn new<E>(
        plan: &Arc<Plan>,
        verifier: impl FnMut(&Arc<VerifierConfig>) -> Result<Arc<Verifier>, E>,
        metrics: Arc<Metrics>,
    ) -> Result<Self, E> {
        let routes = route::build(plan, verifier)?;
        let upstreams: Vec<Arc<Upstream>> = plan
            .upstreams()
            .iter()
            .map(|u| Arc::new(Upstream::new(u)))
            .collect();
        let route_names: Vec<String> = routes.iter().map(|r| r.name.clone()).collect();
        let upstream_names: Vec<String> = plan.upstreams().iter().map(|u| u.name.clone()).collect();
        let servers: Vec<Vec<std::net::SocketAddr>> =
            plan.upstreams().iter().map(|u| u.servers.clone()).collect();
        let series = metrics.series(&route_names, &upstream_names, &servers);
        let mut claim_header_names: Vec<HeaderName> = Vec::new();
        for name in routes.iter().flat_map(|r| r.claim_headers.names()) {
            if !claim_header_names.contains(name) {
                claim_header_names.push(name.clone());
            }
        }
        let listen = plan.listen.clone().unwrap_or_default();
        let log_names = Arc::new(Names::new(
            routes.iter().map(|r| r.name.as_str()),
            upstreams.iter().map(|u| u.name()),
        ));
        Ok(Self {
            plan: Arc::clone(plan),
            routes,
            upstreams,
            metrics,
            series,
            claim_header_names,
            max_body_bytes: listen.max_body_bytes,
            body_timeout: listen.body_timeout.0,
            max_header_bytes: listen.max_header_bytes,
            max_headers: listen.max_headers,
            requests: Slots::new(listen.max_requests_in_flight),
            abuse: None,
            access: None,
            log_names,
        })
    }

    /// A copy for another worker runtime: the same routes, verifier, metrics and abuse
    /// engine, the same upstream health, but connection pools of its own.
    pub fn for_worker(&self) -> Self {
        Self {
            plan: Arc::clone(&self.plan),
            routes: self.routes.clone(),
            upstreams: self
                .upstreams
                .iter()
                .zip(self.plan.upstreams())
                .map(|(u, cfg)| Arc::new(u.for_worker(cfg)))
                .collect(),
            metrics: self.metrics.clone(),
            series: self.series.clone(),
            claim_header_names: self.claim_header_names.clone(),
            max_body_bytes: self.max_body_bytes,
            body_timeout: self.body_timeout,
            max_header_bytes: self.max_header_bytes,
            max_headers: self.max_headers,
            requests: Arc::clone(&self.requests),
            abuse: self.abuse.clone(),
            access: self.access.clone(),
            log_names: Arc::clone(&self.log_names),
        }
    }

    /// This worker's proxy after a reload to `self`'s plan from `running` (the worker's
    /// proxy until now): upstreams whose config did not change keep their connection pools,
    /// health and rotation, and the in-flight limit keeps its count when it did not change.
    pub fn continuing(mut self, running: &Proxy) -> Self {
        for (i, cfg) in self.plan.upstreams().iter().enumerate() {
            if let Some(j) = running.plan.unchanged_upstream(cfg) {
                if let (Some(new), Some(old)) =
                    (self.upstreams.get_mut(i), running.upstreams.get(j))
                {
                    *new = Arc::clone(old);
                }
            }
        }
        if self.requests.capacity() == running.requests.capacity() {
            self.requests = Arc::clone(&running.requests);
        }
        self
    }

    /// The plan this proxy serves.
    pub fn plan(&self) -> &Arc<Plan> {
        &self.plan
    }

    /// Logs every request (and gives each an `X-Request-Id`) into `log`.
    pub fn with_access_log(mut self, log: AccessLog) -> Self {
        self.access = Some(log);
        self
    }

    pub fn access_log(&self) -> Option<&AccessLog> {
        self.access.as_ref()
    }
}

impl access_log::LogContext for Proxy {
    fn log(&self) -> Option<&AccessLog> {
        self.access.as_ref()
    }

    fn names(&self) -> &Names {
        &self.log_names
    }
}

impl Proxy {
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

    pub fn upstreams(&self) -> &[Arc<Upstream>] {
        &self.upstreams
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The hyper service body: never fails, every problem is a response.
    /// `ambiguous_framing`: the request head had both Content-Length and Transfer-Encoding
    /// (see [`super::framing`]); hyper has already reconciled them, we refuse the request.
    #[expect(
        clippy::manual_async_fn,
        reason = "an `async fn` holds its arguments twice"
    )]
    pub fn handle<B>(
        self: Arc<Self>,
        conn: Arc<ConnInfo>,
        req: Request<B>,
        ambiguous_framing: bool,
    ) -> impl Future<Output = Result<Response<ClientBody>, Infallible>>
    where
        B: Body<Data = Bytes> + Send + Sync + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        // Not an `async fn`: one copies its arguments into its body's locals, so every
        // request's future would hold the request twice, and the future is moved whole
        // several times per request. An `async move` block uses what it captured in place.
        async move {
            let started = Instant::now();
            // What the request holds ends with the response (it goes into the upstream's
            // response body), or here.
            let mut end = ResponseEnd {
                in_flight: conn.activity.request(req.version()),
                ..ResponseEnd::default()
            };
            let client = conn.client_of(&req);
            let forwarded = req.extensions().get::<ForwardedClient>();
            let banned = forwarded.is_some_and(|c| c.banned);
            let port = forwarded.is_none().then_some(conn.peer.port());
            let is_head = req.method() == http::Method::HEAD;
            // With an access log: its line, begun with what it needs of the head (taken before
            // the request is consumed) and the request's id, which the upstream gets too. Boxed
            // at once: the request's future holds it across every await, as a pointer.
            let (record, set_id) = match self.access.as_ref() {
                Some(log) => {
                    let (record, ours) = begin_record(log, &req, client, port, conn.tls);
                    (Some(record), ours)
                }
                None => (None, None),
            };
            let mut trail = Trail {
                set_id,
                ..Trail::default()
            };
            let (route, mut resp) = if banned {
                // A banned client behind a trusted proxy: the kernel sees only the proxy.
                (None, self.refuse(None, Refusal::Banned))
            } else if ambiguous_framing {
                (None, self.refuse(None, Refusal::AmbiguousFraming))
            } else if let Some(slot) = self.requests.try_take() {
                end.request_slot = Some(slot);
                self.route_and_forward(&conn, req, end, &mut trail).await
            } else {
                (None, self.refuse(None, Refusal::Overloaded))
            };
            let status = resp.status();
            self.series.request(route, status.as_u16());
            self.series.request_duration(route, started.elapsed());
            // A banned client's refusals are not evidence again.
            if let Some(abuse) = self.abuse.as_ref().filter(|_| !banned) {
                abuse.request(client, status);
            }
            if is_head {
                // A HEAD response has no body; our own refusals must not send one either.
                *resp.body_mut() = super::empty_body();
            }
            if let Some(mut record) = record {
                record.status = status.as_u16();
                record.route = route;
                record.upstream = trail.upstream;
                record.server = trail.server;
                record.bytes_in = trail.bytes_in;
                record.upstream_time = trail.upstream_time;
                record.token = trail.token;
                record.reason = resp.extensions().get::<RefusalCode>().map(|c| c.0);
                // Marked sensitive, HTTP/2 sends it as a never-indexed literal: an id differs
                // on every response, so indexing it only churns the HPACK table (measured:
                // a fifth of an HTTP/2 request's CPU with the log on) and evicts useful entries.
                let mut id = record.request_id.clone();
                id.set_sensitive(true);
                resp.headers_mut()
                    .insert(access_log::request_id::X_REQUEST_ID.clone(), id);
                // The proxy goes with the response to its end, to log it there.
                return Ok(resp.map(|body| ClientBody::logged(body, record, self, started)));
            }
            Ok(resp.map(ClientBody::plain))
        }
    }

    /// Not an `async fn`, for the reason given in [`Proxy::handle`].
    #[expect(
        clippy::manual_async_fn,
        reason = "an `async fn` holds its arguments twice"
    )]
    fn route_and_forward<'a, B>(
        &'a self,
        conn: &'a ConnInfo,
        req: Request<B>,
        end: ResponseEnd,
        trail: &'a mut Trail,
    ) -> impl Future<Output = (Option<usize>, Response<ProxyBody>)> + 'a
    where
        B: Body<Data = Bytes> + Send + Sync + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        async move {
            if let Err(r) = self.check_head(&req) {
                return (None, self.refuse(None, r));
            }
            if !route::is_acceptable_method(req.method()) {
                return (None, self.refuse(None, Refusal::MethodNotUpperCase));
            }
            let host = match request_host(&req) {
                Ok(h) => h.map(Cow::into_owned),
                Err(e) => return (None, self.refuse(None, Refusal::Host(e))),
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
                Ok(None) => return (None, self.refuse(None, Refusal::NoRoute)),
                Err(e) => return (None, self.refuse(None, Refusal::Path(e))),
            };
            let token = match self.authorize(route, &req, conn.client_of(&req)).await {
                Ok(t) => t,
                Err(r) => {
                    // Boxed: a refusal's path, kept out of every request's future.
                    Box::pin(drain(req.into_body())).await;
                    return (Some(idx), self.refuse(Some(route), r));
                }
            };
            let (mut parts, body) = req.into_parts();
            let rewritten = self.rewrite_head(
                &mut parts,
                conn,
                route,
                normalized,
                host.as_deref(),
                token.as_deref(),
            );
            trail.token = token;
            let forwarding = match rewritten {
                Ok(lines) => lines,
                Err(r) => return (Some(idx), self.refuse(Some(route), r)),
            };
            let request_id = trail.set_id.take();
            let added = Added {
                lines: &forwarding,
                request_id: request_id.as_ref(),
            };
            let resp = self
                .forward(route, &mut parts, added, body, end, trail)
                .await;
            (Some(idx), resp)
        }
    }

    /// Sends the request (its head rewritten for the upstream) and relays the answer (or
    /// refuses).
    async fn forward<B>(
        &self,
        route: &Route,
        parts: &mut http::request::Parts,
        added: Added<'_>,
        body: B,
        mut end: ResponseEnd,
        trail: &mut Trail,
    ) -> Response<ProxyBody>
    where
        B: Body<Data = Bytes> + Send + Sync + Unpin + 'static,
        B::Error: Into<BoxError>,
    {
        let (body, progress) =
            request_body::forwarded(body, self.max_body_bytes, self.body_timeout);
        // Routes and upstreams come from one plan, whose ids always index its upstreams.
        let index = route.upstream.index();
        let upstream = &self.upstreams[index];
        end.leftover = progress.leftover();
        let mut picked = None;
        let sending = Instant::now();
        let sent = upstream.send(parts, body, added, end, &mut picked).await;
        trail.upstream = Some(index);
        trail.bytes_in = progress.received();
        if let Some((server, addr)) = picked {
            trail.server = Some(addr);
            if sent.is_ok() {
                let took = sending.elapsed();
                self.series.upstream_duration(index, server, took);
                trail.upstream_time = Some(took);
            }
        }
        match sent {
            Ok(mut resp) => {
                outbound::strip_hop_by_hop(resp.headers_mut());
                resp
            }
            Err(e) => {
                let timed_out = matches!(e, UpstreamError::Timeout { .. });
                let refusal = failure(&e, route, progress.client_fault(timed_out));
                self.refuse(Some(route), refusal)
            }
        }
    }

    /// The answer to a refusal, counted: the auth layer's by reason, the upstream's by
    /// upstream and kind. (The request itself is counted by [`Proxy::handle`].)
    #[cold]
    #[inline(never)]
    fn refuse(&self, route: Option<&Route>, refusal: Refusal) -> Response<ProxyBody> {
        if let Some(reason) = refusal.denial_reason() {
            self.metrics.denial(reason);
        }
        if let (Refusal::Upstream(kind), Some(route)) = (&refusal, route) {
            self.series.upstream_error(route.upstream.index(), *kind);
        }
        let code = self.access.as_ref().map(|_| {
            refusal
                .denial_reason()
                .map_or_else(|| refusal.code(), |r| r.as_str())
        });
        let mut resp = refusal.into_response();
        if let Some(code) = code {
            resp.extensions_mut().insert(RefusalCode(code));
        }
        resp
    }
}

/// A request's access log line, begun with what it needs of the head: the rest is filled in
/// when the response is known. With it, the request's id when it is ours: the upstream gets
/// it in place of whatever the client sent.
fn begin_record<B>(
    log: &AccessLog,
    req: &Request<B>,
    client: std::net::IpAddr,
    port: Option<u16>,
    tls: Option<TlsInfo>,
) -> (Box<Record>, Option<http::HeaderValue>) {
    let (request_id, set_id) = log.request_id(req.headers());
    let ours = set_id.then(|| request_id.clone());
    let record = Box::new(Record {
        time: SystemTime::now(),
        request_id,
        client,
        port,
        tls,
        version: req.version(),
        method: req.method().clone(),
        target: log.target(req.uri(), req.headers().get(http::header::HOST)),
        status: 0,
        route: None,
        upstream: None,
        server: None,
        bytes_in: 0,
        bytes_out: 0,
        total: Duration::ZERO,
        upstream_time: None,
        token: None,
        reason: None,
    });
    (record, ours)
}

/// Why an upstream exchange failed, logged: the client's body (`fault`), or the upstream.
#[cold]
fn failure(
    e: &UpstreamError,
    route: &Route,
    fault: Option<super::request_body::ClientFault>,
) -> Refusal {
    match fault {
        Some(fault) => {
            tracing::debug!(error = %ErrorChain(e), route = %route.name, ?fault, "request body failed on the client's side");
            Refusal::ClientBody(fault)
        }
        None => {
            tracing::warn!(error = %ErrorChain(e), route = %route.name, "upstream failed");
            Refusal::Upstream(e.kind())
        }
    }
}

/// Reads (and discards) a little of a refused request's body before we answer, so that a
/// client still sending a small body gets our status rather than a reset stream (HTTP/2) or
/// a closed connection. Bounded in bytes and time: a refusal never waits on a slow client.
async fn drain<B: Body + Unpin>(body: B) {
    super::linger::discard(
        body,
        super::linger::LINGER_BYTES,
        std::time::Duration::from_millis(500),
    )
    .await;
}

#[cfg(test)]
mod tests;
