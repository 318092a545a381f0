//! The process's metrics registry, rendered in the Prometheus text format (0.0.4) by the admin
//! endpoint.
//!
//! The request path must not take locks or allocate for metrics, so every series it touches is
//! resolved before the first request: [`Metrics::series`] learns one config's route and
//! upstream names (each proxy has its [`Series`]; a reload's new names get new series beside
//! the running ones) and keeps a `prometheus-client` [`Counter`] handle (an
//! `Arc<AtomicU64>`) per label combination; recording is one atomic add on a handle found by
//! index. Two exceptions, both lock-free on
//! the hot path too:
//!
//! - Requests by status: one slot per route and per status code 100–599 (plus `other`), each a
//!   [`OnceLock`] that creates its series on the first request with that code. Only that first
//!   request takes the family's write lock; after it, recording is an atomic load and an add.
//!   Series exist only for codes seen, and their number is bounded (routes × 501).
//! - The verification latency histogram is our own ([`LatencyHistogram`]: one atomic per
//!   bucket), because `prometheus-client`'s `Histogram` takes a mutex on every observation.
//!   It is still encoded by `prometheus-client`.
//!
//! Scrape-time sources (the verifier's cache and key set, JWKS sources, the abuse engine, the
//! kernel's pinned counters) are read by a `Collector` while rendering ([`exposition`]), so
//! they cost nothing between scrapes. Denial reasons and upstream error kinds are enums
//! ([`DenialReason`], [`UpstreamErrorKind`]) whose counters are indexed directly. Every series
//! name is in [`names`], which `gateway stats` reads too.

mod build_info;
mod exposition;
mod histogram;
mod names;

pub use build_info::{BuildInfo, BUILD};
pub use histogram::{LatencyHistogram, LatencySummary};
pub use names::{exposed, name};

use crate::jwt::Verifier;
use crate::keys::JwksSource;
use crate::proxy::refusal::DenialReason;
use crate::proxy::upstream::UpstreamErrorKind;
use crate::tls::HandshakeFailure;
use exposition::ScrapeSources;
use histogram::{Labelled, REQUEST_BUCKETS_NS};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

/// The `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Every prefix-less metric name is registered under this prefix.
pub const PREFIX: &str = "gateway";

/// Reasons a connection is refused at accept; anything else counts as `other`.
pub const REFUSAL_REASONS: &[&str] = &[
    "per_source_limit",
    "denied",
    "untrusted_proxy",
    "proxy_header",
];

/// The `other` label value for reasons outside the fixed lists.
const OTHER: &str = "other";

/// The `route` label of requests that matched no route.
pub const NO_ROUTE: &str = "(none)";

/// Status codes with their own slot: 100..=599. Slot `STATUS_SLOTS - 1` is `other`.
const STATUS_MIN: u16 = 100;
const STATUS_MAX: u16 = 599;
const STATUS_SLOTS: usize = (STATUS_MAX - STATUS_MIN) as usize + 2;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabel {
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamErrorLabels {
    upstream: String,
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabel {
    route: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServerLabels {
    upstream: String,
    server: String,
}

/// One upstream server's latency (response heads), for `/stats.json`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ServerLatency {
    pub upstream: String,
    pub server: String,
    #[serde(flatten)]
    pub latency: LatencySummary,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceLabel {
    issuer: String,
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IssuerLabel {
    issuer: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct IssuerResultLabel {
    issuer: String,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SignalLabel {
    signal: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamServerLabels {
    upstream: String,
    server: String,
}

/// Latency quantiles of one upstream server, as upper bounds of the histogram buckets that
/// hold them (milliseconds); `None` in the overflow bucket.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct LatencyQuantiles {
    pub p50: Option<f64>,
    pub p99: Option<f64>,
}

/// One route's request counters: lazily created series per status slot.
struct RouteRequests {
    name: String,
    slots: Box<[OnceLock<Counter>]>,
}

impl RouteRequests {
    fn new(name: String) -> Self {
        Self {
            name,
            slots: (0..STATUS_SLOTS).map(|_| OnceLock::new()).collect(),
        }
    }
}

/// The series of one set of route and upstream names, recorded into by index. A reload
/// that changes the routes or upstreams gets a new set ([`Metrics::series`]) beside the
/// running one: requests in flight keep recording by the indices they started with, and a
/// name both sets know continues the same series.
pub struct Series {
    families: Families,
    /// One per route, then one for "no route matched".
    routes: Vec<RouteRequests>,
    /// Time to the response head, indexed like `routes`.
    durations: Vec<LatencyHistogram>,
    /// Per upstream: indexed by [`UpstreamErrorKind`].
    upstream_errors: Vec<[Counter; UpstreamErrorKind::ALL.len()]>,
    /// Per upstream, per server (config order): time to the server's response head.
    server_durations: Vec<Vec<LatencyHistogram>>,
}

/// The metric families whose series depend on the config's route, upstream and server
/// names; every [`Series`] records into them.
#[derive(Clone)]
struct Families {
    requests: Family<RequestLabels, Counter>,
    upstream_errors: Family<UpstreamErrorLabels, Counter>,
    request_durations: Labelled<RouteLabel>,
    upstream_durations: Labelled<ServerLabels>,
}

/// The process's metrics. Cheap to record into from any thread; share it as `Arc<Metrics>`.
pub struct Metrics {
    registry: Registry,
    families: Families,
    /// The series of the names given to [`Metrics::new`].
    series: Arc<Series>,
    /// Indexed by [`DenialReason::index`].
    denials: [Counter; DenialReason::COUNT],
    verify: LatencyHistogram,
    tls_ok: Counter,
    tls_failed: Counter,
    /// Indexed by [`HandshakeFailure::index`].
    tls_failures: [Counter; HandshakeFailure::ALL.len()],
    access_log_dropped: Counter,
    /// Indexed like [`REFUSAL_REASONS`], then `other`.
    refused: Vec<Counter>,
    connections_open: Gauge,
    scrape: Arc<ScrapeSources>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("routes", &self.series.routes.len().saturating_sub(1))
            .field("upstreams", &self.series.upstream_errors.len())
            .finish_non_exhaustive()
    }
}

/// Index of `value` in `list`, or `list.len()` (the `other` slot).
fn slot(list: &[&str], value: &str) -> usize {
    list.iter().position(|r| *r == value).unwrap_or(list.len())
}

/// `list` followed by `other`, as label values.
fn with_other(list: &'static [&'static str]) -> impl Iterator<Item = &'static str> {
    list.iter().copied().chain(std::iter::once(OTHER))
}

impl Metrics {
    /// Registers every metric and creates the per-route, per-reason and per-upstream series.
    /// `routes` and `upstreams` give the names behind the indices the recording calls use.
    /// No upstream has servers (see [`Metrics::with_servers`]).
    pub fn new(routes: &[String], upstreams: &[String]) -> Self {
        Self::with_servers(routes, upstreams, &[])
    }

    /// [`Metrics::new`], with each upstream's servers (in the order of `upstreams`, then of
    /// their `servers`): their latency histograms exist from the start.
    pub fn with_servers(
        routes: &[String],
        upstreams: &[String],
        servers: &[Vec<std::net::SocketAddr>],
    ) -> Self {
        let mut registry = Registry::with_prefix(PREFIX);

        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            name::REQUESTS,
            "Finished requests by route and HTTP status (route=\"(none)\": no route matched)",
            requests.clone(),
        );
        let denial_family = Family::<ReasonLabel, Counter>::default();
        registry.register(
            name::DENIALS,
            "Requests refused by the auth layer, by reason",
            denial_family.clone(),
        );
        let denials = DenialReason::ALL
            .map(|r| denial_family.get_or_create_owned(&ReasonLabel { reason: r.as_str() }));

        let verify = LatencyHistogram::default();
        registry.register_with_unit(
            name::VERIFY_DURATION,
            "Time spent verifying bearer tokens, cache hits included",
            Unit::Seconds,
            verify.clone(),
        );

        let request_durations = Labelled::new(&REQUEST_BUCKETS_NS);
        registry.register_with_unit(
            name::REQUEST_DURATION,
            "Time from a request's head until its response head, by route",
            Unit::Seconds,
            request_durations.clone(),
        );
        let upstream_durations = Labelled::new(&REQUEST_BUCKETS_NS);
        registry.register_with_unit(
            name::UPSTREAM_DURATION,
            "Time from sending a request to an upstream server until its response head, by \
             upstream and server",
            Unit::Seconds,
            upstream_durations.clone(),
        );

        let tls = Family::<ResultLabel, Counter>::default();
        registry.register(
            name::TLS_HANDSHAKES,
            "TLS handshakes by result (ok, failed)",
            tls.clone(),
        );
        let tls_ok = tls.get_or_create_owned(&ResultLabel { result: "ok" });
        let tls_failed = tls.get_or_create_owned(&ResultLabel { result: "failed" });
        let failure_family = Family::<ReasonLabel, Counter>::default();
        registry.register(
            name::TLS_HANDSHAKE_FAILURES,
            "Failed TLS handshakes by reason (timeout, closed, not_tls, incompatible, \
             no_certificate, client_alert, other)",
            failure_family.clone(),
        );
        let tls_failures = HandshakeFailure::ALL
            .map(|r| failure_family.get_or_create_owned(&ReasonLabel { reason: r.as_str() }));
        let access_log_dropped = Counter::default();
        registry.register(
            name::ACCESS_LOG_DROPPED,
            "Access log lines dropped because the writer could not keep up",
            access_log_dropped.clone(),
        );

        let upstream_family = Family::<UpstreamErrorLabels, Counter>::default();
        registry.register(
            name::UPSTREAM_ERRORS,
            "Upstream failures by upstream and kind (connect, timeout, no_healthy, protocol)",
            upstream_family.clone(),
        );
        let families = Families {
            requests,
            upstream_errors: upstream_family,
            request_durations,
            upstream_durations,
        };
        let series = Arc::new(Series::new(&families, routes, upstreams, servers));

        let refused_family = Family::<ReasonLabel, Counter>::default();
        registry.register(
            name::CONNECTIONS_REFUSED,
            "Connections closed at accept, by reason",
            refused_family.clone(),
        );
        let refused = with_other(REFUSAL_REASONS)
            .map(|reason| refused_family.get_or_create_owned(&ReasonLabel { reason }))
            .collect();

        let connections_open = Gauge::default();
        registry.register(
            name::CONNECTIONS_OPEN,
            "Client connections currently open",
            connections_open.clone(),
        );

        let scrape = Arc::new(ScrapeSources::default());
        registry.register_collector(Box::new(Arc::clone(&scrape)));

        Self {
            registry,
            families,
            series,
            denials,
            verify,
            tls_ok,
            tls_failed,
            tls_failures,
            access_log_dropped,
            refused,
            connections_open,
            scrape,
        }
    }

    /// One finished request, by the indices of the names given to [`Metrics::new`] (see
    /// [`Series::request`]).
    pub fn request(&self, route: Option<usize>, status: u16) {
        self.series.request(route, status);
    }

    /// One upstream failure, by the index of the names given to [`Metrics::new`] (see
    /// [`Series::upstream_error`]).
    pub fn upstream_error(&self, upstream: usize, kind: UpstreamErrorKind) {
        self.series.upstream_error(upstream, kind);
    }

    /// See [`Series::request_duration`] (the names given to [`Metrics::new`]).
    pub fn request_duration(&self, route: Option<usize>, d: Duration) {
        self.series.request_duration(route, d);
    }

    /// See [`Series::upstream_duration`] (the names given to [`Metrics::with_servers`]).
    pub fn upstream_duration(&self, upstream: usize, server: usize, d: Duration) {
        self.series.upstream_duration(upstream, server, d);
    }

    /// The series of another set of route and upstream names (a reload's), in this
    /// registry: a name the running set also has continues its counts.
    /// `servers`: each upstream's servers, in the order of `upstreams`.
    pub fn series(
        &self,
        routes: &[String],
        upstreams: &[String],
        servers: &[Vec<std::net::SocketAddr>],
    ) -> Arc<Series> {
        Arc::new(Series::new(&self.families, routes, upstreams, servers))
    }

    /// One refusal by the auth layer.
    pub fn denial(&self, reason: DenialReason) {
        if let Some(c) = self.denials.get(reason.index()) {
            c.inc();
        }
    }

    /// Time spent in token verification (cache hits included).
    pub fn verify_latency(&self, d: Duration) {
        self.verify.observe(d);
    }

    /// One finished TLS handshake.
    pub fn tls_handshake(&self, ok: bool) {
        if ok { &self.tls_ok } else { &self.tls_failed }.inc();
    }

    /// One failed TLS handshake, by reason (counted in `tls_handshakes_total` too).
    pub fn tls_handshake_failed(&self, reason: HandshakeFailure) {
        self.tls_failed.inc();
        if let Some(c) = self.tls_failures.get(reason.index()) {
            c.inc();
        }
    }

    /// Every upstream server's latency so far (count, mean, p50, p99), servers of earlier
    /// configs included, in the order they were first served.
    pub fn server_latencies(&self) -> Vec<ServerLatency> {
        self.families
            .upstream_durations
            .snapshot()
            .into_iter()
            .map(|(labels, h)| ServerLatency {
                upstream: labels.upstream,
                server: labels.server,
                latency: h.summary(),
            })
            .collect()
    }

    /// The counter of access log lines dropped (the access log's writer counts into it).
    pub fn access_log_dropped(&self) -> Counter {
        self.access_log_dropped.clone()
    }

    /// One connection closed at accept (one of [`REFUSAL_REASONS`]; anything else counts as
    /// `other`).
    pub fn connection_refused(&self, reason: &str) {
        if let Some(c) = self.refused.get(slot(REFUSAL_REASONS, reason)) {
            c.inc();
        }
    }

    /// A client connection was accepted (pair with [`Metrics::connection_closed`]).
    pub fn connection_opened(&self) {
        self.connections_open.inc();
    }

    /// A client connection ended.
    pub fn connection_closed(&self) {
        self.connections_open.dec();
    }

    /// The verifier whose cache and key set are reported at scrape time.
    pub fn set_verifier(&self, v: Arc<Verifier>) {
        self.scrape.verifier.store(Some(v));
    }

    /// The fleet link whose state and events are reported.
    pub fn set_fleet(&self, f: Arc<crate::fleet::FleetStats>) {
        self.scrape.fleet.store(Some(f));
    }

    /// The abuse engine whose bans (and would-be bans in monitor mode) are reported.
    pub fn set_abuse(&self, a: Option<Arc<crate::abuse::AbuseEngine>>) {
        self.scrape.abuse.store(a);
    }

    /// A JWKS URL source of `issuer` (a `[[jwt.issuer]]` name or `default`) whose refresh
    /// counters and key-set age are reported at scrape time, labelled with both. (The
    /// verifier's key store says whether any source is stale, but not when each last
    /// succeeded or how often it failed; those live on the source.)
    pub fn add_jwks_source(&self, issuer: &str, source: JwksSource) {
        lock(&self.scrape.jwks).push((issuer.into(), source));
    }

    /// Replaces the JWKS sources reported (a reload's new key sources).
    pub fn set_jwks_sources(&self, sources: Vec<(String, JwksSource)>) {
        *lock(&self.scrape.jwks) = sources
            .into_iter()
            .map(|(issuer, s)| (issuer.into(), s))
            .collect();
    }

    /// The upstream pools whose servers' health is exported at scrape time
    /// (`gateway_upstream_server_up`). One copy of each pool is enough: every worker's copy
    /// shares the servers' health.
    pub fn set_upstreams(&self, upstreams: Vec<Arc<crate::proxy::upstream::Upstream>>) {
        lock(&self.scrape.upstreams).0 = upstreams;
    }

    /// The abuse engine, when one runs (the dashboard reads its per-source counts).
    pub fn abuse(&self) -> Option<Arc<crate::abuse::AbuseEngine>> {
        self.scrape.abuse.load_full()
    }

    /// Response latency quantiles of `server` in `upstream`, from the upstream duration
    /// histogram; `None` before its first answer (the dashboard says "not measured"
    /// rather than inventing a number).
    pub fn upstream_latency(&self, upstream: &str, server: SocketAddr) -> Option<LatencyQuantiles> {
        let labels = ServerLabels {
            upstream: upstream.to_owned(),
            server: server.to_string(),
        };
        let summary = self.families.upstream_durations.find(&labels)?.summary();
        (summary.count > 0).then_some(LatencyQuantiles {
            p50: summary.p50_ms,
            p99: summary.p99_ms,
        })
    }

    /// Where the kernel's maps are pinned; their global counters are read at scrape time and
    /// exported as `gateway_kernel_<name>_total`. Nothing is exported while they cannot be
    /// opened (not pinned, no permission).
    pub fn set_pin_path(&self, p: PathBuf) {
        *lock(&self.scrape.pin_path) = Some(p);
    }

    /// Everything, in the Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        // Writing into a String cannot fail, and no metric of ours returns an error.
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)
        {
            tracing::warn!(error = %e, "metrics encoding failed; output may be partial");
        }
        out
    }
}

impl Series {
    fn new(
        families: &Families,
        routes: &[String],
        upstreams: &[String],
        servers: &[Vec<std::net::SocketAddr>],
    ) -> Self {
        let routes: Vec<RouteRequests> = routes
            .iter()
            .cloned()
            .chain(std::iter::once(NO_ROUTE.to_owned()))
            .map(RouteRequests::new)
            .collect();
        let upstream_errors = upstreams
            .iter()
            .map(|name| {
                UpstreamErrorKind::ALL.map(|kind| {
                    families
                        .upstream_errors
                        .get_or_create_owned(&UpstreamErrorLabels {
                            upstream: name.clone(),
                            kind: kind.as_str(),
                        })
                })
            })
            .collect();
        let durations = routes
            .iter()
            .map(|r| {
                families.request_durations.get_or_create(&RouteLabel {
                    route: r.name.clone(),
                })
            })
            .collect();
        let server_durations = upstreams
            .iter()
            .enumerate()
            .map(|(i, upstream)| {
                servers
                    .get(i)
                    .map_or(&[][..], Vec::as_slice)
                    .iter()
                    .map(|addr| {
                        families.upstream_durations.get_or_create(&ServerLabels {
                            upstream: upstream.clone(),
                            server: addr.to_string(),
                        })
                    })
                    .collect()
            })
            .collect();
        Self {
            families: families.clone(),
            routes,
            durations,
            upstream_errors,
            server_durations,
        }
    }

    /// Time until the response head of a request: index into the route names (`None` or
    /// out of range: no route).
    pub fn request_duration(&self, route: Option<usize>, d: Duration) {
        let none = self.durations.len() - 1;
        let i = route.filter(|&i| i < none).unwrap_or(none);
        if let Some(h) = self.durations.get(i) {
            h.observe(d);
        }
    }

    /// Time until server `server` (index into the upstream's servers) of upstream
    /// `upstream` sent its response head. Indices out of range are ignored.
    pub fn upstream_duration(&self, upstream: usize, server: usize, d: Duration) {
        if let Some(h) = self
            .server_durations
            .get(upstream)
            .and_then(|s| s.get(server))
        {
            h.observe(d);
        }
    }

    /// One finished request: index into the route names the series was built with (`None`: no
    /// route matched), and the status sent. An index out of range counts as no route.
    pub fn request(&self, route: Option<usize>, status: u16) {
        let none = self.routes.len() - 1;
        let r = match route {
            Some(i) if i < none => &self.routes[i],
            _ => &self.routes[none],
        };
        let i = if (STATUS_MIN..=STATUS_MAX).contains(&status) {
            usize::from(status - STATUS_MIN)
        } else {
            STATUS_SLOTS - 1
        };
        // `i < STATUS_SLOTS` by construction; `get` keeps the hot path free of panics anyway.
        if let Some(cell) = r.slots.get(i) {
            cell.get_or_init(|| {
                let status = if i == STATUS_SLOTS - 1 {
                    OTHER.to_owned()
                } else {
                    status.to_string()
                };
                self.families.requests.get_or_create_owned(&RequestLabels {
                    route: r.name.clone(),
                    status,
                })
            })
            .inc();
        }
    }

    /// One upstream failure by upstream index and kind. An index out of range is ignored:
    /// it names no upstream, and inventing a series for it would hide the caller's bug less
    /// well than a missing count does.
    pub fn upstream_error(&self, upstream: usize, kind: UpstreamErrorKind) {
        if let Some(kinds) = self.upstream_errors.get(upstream) {
            kinds[kind as usize].inc();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[cfg(test)]
mod tests;
