//! The process's metrics registry, rendered in the Prometheus text format (0.0.4) by the admin
//! endpoint.
//!
//! The request path must not take locks or allocate for metrics, so every series it touches is
//! resolved before the first request: [`Metrics::new`] learns the route and upstream names and
//! keeps a `prometheus-client` [`Counter`] handle (an `Arc<AtomicU64>`) per label combination;
//! recording is one atomic add on a handle found by index. Two exceptions, both lock-free on
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
//! Scrape-time sources (the verifier's cache and key set, JWKS sources, the kernel's pinned
//! counters) are read by a [`Collector`] while rendering, so they cost nothing between scrapes.

use crate::jwt::Verifier;
use crate::keys::JwksSource;
use arc_swap::ArcSwapOption;
use gateway_common::counter;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::{Registry, Unit};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The `Content-Type` of [`Metrics::render`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Every prefix-less metric name is registered under this prefix.
pub const PREFIX: &str = "gateway";

/// The auth layer's own refusal reasons, beside the verifier's codes.
pub const AUTH_LAYER_REASONS: [&str; 3] =
    ["missing_token", "invalid_request", "insufficient_scope"];

/// Denial reasons with their own series: the verifier's stable codes
/// ([`crate::jwt::REASONS`]) and the auth layer's own. Anything else counts as `other`, so a
/// new code shows up instead of disappearing.
pub static DENIAL_REASONS: std::sync::LazyLock<Vec<&'static str>> =
    std::sync::LazyLock::new(|| {
        crate::jwt::REASONS
            .iter()
            .chain(AUTH_LAYER_REASONS.iter())
            .copied()
            .collect()
    });

/// Kinds of upstream failure with their own series; anything else counts as `other`.
pub const UPSTREAM_ERROR_KINDS: &[&str] = &["connect", "timeout", "no_healthy", "protocol"];

/// Reasons a connection is refused at accept; anything else counts as `other`.
pub const REFUSAL_REASONS: &[&str] = &["per_source_limit"];

/// The `other` label value for reasons and kinds outside the fixed lists.
const OTHER: &str = "other";

/// The `route` label of requests that matched no route.
pub const NO_ROUTE: &str = "(none)";

/// Upper bounds of the verification latency buckets, in nanoseconds: 1 µs to 100 ms in
/// 1-2.5-5 steps. A cache hit takes about a microsecond, RS256 tens of microseconds, so the
/// interesting range is covered with room for slow keys and machines.
const VERIFY_BUCKETS_NS: [u64; 16] = [
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
];

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
struct SourceLabel {
    source: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SignalLabel {
    signal: &'static str,
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

/// The process's metrics. Cheap to record into from any thread; share it as `Arc<Metrics>`.
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    /// One per route, then one for "no route matched".
    routes: Vec<RouteRequests>,
    /// Indexed like [`DENIAL_REASONS`], then `other`.
    denials: Vec<Counter>,
    verify: LatencyHistogram,
    tls_ok: Counter,
    tls_failed: Counter,
    /// Per upstream: indexed like [`UPSTREAM_ERROR_KINDS`], then `other`.
    upstream_errors: Vec<Vec<Counter>>,
    /// Indexed like [`REFUSAL_REASONS`], then `other`.
    refused: Vec<Counter>,
    connections_open: Gauge,
    scrape: Arc<ScrapeSources>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("routes", &self.routes.len().saturating_sub(1))
            .field("upstreams", &self.upstream_errors.len())
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
    pub fn new(routes: &[String], upstreams: &[String]) -> Self {
        let mut registry = Registry::with_prefix(PREFIX);

        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Finished requests by route and HTTP status (route=\"(none)\": no route matched)",
            requests.clone(),
        );
        let routes = routes
            .iter()
            .cloned()
            .chain(std::iter::once(NO_ROUTE.to_owned()))
            .map(RouteRequests::new)
            .collect();

        let denial_family = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "denials",
            "Requests refused by the auth layer, by reason",
            denial_family.clone(),
        );
        let denials = with_other(&DENIAL_REASONS)
            .map(|reason| denial_family.get_or_create_owned(&ReasonLabel { reason }))
            .collect();

        let verify = LatencyHistogram::default();
        registry.register_with_unit(
            "verify_duration",
            "Time spent verifying bearer tokens, cache hits included",
            Unit::Seconds,
            verify.clone(),
        );

        let tls = Family::<ResultLabel, Counter>::default();
        registry.register(
            "tls_handshakes",
            "TLS handshakes by result (ok, failed)",
            tls.clone(),
        );
        let tls_ok = tls.get_or_create_owned(&ResultLabel { result: "ok" });
        let tls_failed = tls.get_or_create_owned(&ResultLabel { result: "failed" });

        let upstream_family = Family::<UpstreamErrorLabels, Counter>::default();
        registry.register(
            "upstream_errors",
            "Upstream failures by upstream and kind (connect, timeout, no_healthy, protocol)",
            upstream_family.clone(),
        );
        let upstream_errors = upstreams
            .iter()
            .map(|name| {
                with_other(UPSTREAM_ERROR_KINDS)
                    .map(|kind| {
                        upstream_family.get_or_create_owned(&UpstreamErrorLabels {
                            upstream: name.clone(),
                            kind,
                        })
                    })
                    .collect()
            })
            .collect();

        let refused_family = Family::<ReasonLabel, Counter>::default();
        registry.register(
            "connections_refused",
            "Connections closed at accept, by reason",
            refused_family.clone(),
        );
        let refused = with_other(REFUSAL_REASONS)
            .map(|reason| refused_family.get_or_create_owned(&ReasonLabel { reason }))
            .collect();

        let connections_open = Gauge::default();
        registry.register(
            "connections_open",
            "Client connections currently open",
            connections_open.clone(),
        );

        let scrape = Arc::new(ScrapeSources::default());
        registry.register_collector(Box::new(Arc::clone(&scrape)));

        Self {
            registry,
            requests,
            routes,
            denials,
            verify,
            tls_ok,
            tls_failed,
            upstream_errors,
            refused,
            connections_open,
            scrape,
        }
    }

    /// One finished request: index into the `routes` given to [`Metrics::new`] (`None`: no
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
                self.requests.get_or_create_owned(&RequestLabels {
                    route: r.name.clone(),
                    status,
                })
            })
            .inc();
        }
    }

    /// One refusal by the auth layer; `reason` outside [`DENIAL_REASONS`] counts as `other`.
    pub fn denial(&self, reason: &str) {
        if let Some(c) = self.denials.get(slot(&DENIAL_REASONS, reason)) {
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

    /// One upstream failure by upstream index and kind (`connect`, `timeout`, `no_healthy`,
    /// `protocol`; anything else counts as `other`). An index out of range is ignored: it
    /// names no upstream, and inventing a series for it would hide the caller's bug less well
    /// than a missing count does.
    pub fn upstream_error(&self, upstream: usize, kind: &str) {
        if let Some(c) = self
            .upstream_errors
            .get(upstream)
            .and_then(|kinds| kinds.get(slot(UPSTREAM_ERROR_KINDS, kind)))
        {
            c.inc();
        }
    }

    /// One connection closed at accept (`per_source_limit`; anything else counts as `other`).
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

    /// The verifier whose cache and key set are reported at scrape time. Replaces an earlier
    /// one (a reload builds a new verifier; its counters start again from zero).
    pub fn set_verifier(&self, v: Arc<Verifier>) {
        self.scrape.verifier.store(Some(v));
    }

    /// The fleet link whose state and events are reported.
    pub fn set_fleet(&self, f: Arc<crate::fleet::FleetStats>) {
        self.scrape.fleet.store(Some(f));
    }

    /// The abuse engine whose bans (and would-be bans in monitor mode) are reported.
    pub fn set_abuse(&self, a: Arc<crate::abuse::AbuseEngine>) {
        self.scrape.abuse.store(Some(a));
    }

    /// A JWKS URL source whose refresh counters and key-set age are reported at scrape time.
    /// (The verifier's key store says whether any source is stale, but not when each last
    /// succeeded or how often it failed; those live on the source.)
    pub fn add_jwks_source(&self, source: JwksSource) {
        lock(&self.scrape.jwks).push(source);
    }

    /// Forgets the JWKS sources (before adding a reloaded configuration's).
    pub fn clear_jwks_sources(&self) {
        lock(&self.scrape.jwks).clear();
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

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A fixed-bucket latency histogram with one atomic per bucket: observing never blocks.
/// Clones share the counts (one clone is registered, one is recorded into).
#[derive(Clone, Debug, Default)]
pub struct LatencyHistogram {
    inner: Arc<HistogramInner>,
}

#[derive(Debug, Default)]
struct HistogramInner {
    /// Non-cumulative counts per bucket of [`VERIFY_BUCKETS_NS`], then the overflow bucket.
    buckets: [AtomicU64; VERIFY_BUCKETS_NS.len() + 1],
    sum_ns: AtomicU64,
}

impl LatencyHistogram {
    /// Counts one observation.
    pub fn observe(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        // First bucket whose bound is >= ns (Prometheus buckets are "less than or equal").
        let i = VERIFY_BUCKETS_NS.partition_point(|&b| b < ns);
        if let Some(b) = self.inner.buckets.get(i) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        self.inner.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Number of observations.
    pub fn count(&self) -> u64 {
        self.inner
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .sum()
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        // The count is the sum of the buckets read, so `_count` always equals the `+Inf`
        // bucket; `_sum` may include an observation or two more under load, which is harmless.
        let mut buckets = [(0.0f64, 0u64); VERIFY_BUCKETS_NS.len() + 1];
        let mut count = 0u64;
        for (i, (slot, counter)) in buckets.iter_mut().zip(&self.inner.buckets).enumerate() {
            let n = counter.load(Ordering::Relaxed);
            count += n;
            let bound = VERIFY_BUCKETS_NS
                .get(i)
                .map_or(f64::INFINITY, |&ns| ns as f64 / 1e9);
            *slot = (bound, n);
        }
        let sum = self.inner.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

/// What is read at scrape time rather than counted as it happens.
#[derive(Debug, Default)]
struct ScrapeSources {
    verifier: ArcSwapOption<Verifier>,
    abuse: ArcSwapOption<crate::abuse::AbuseEngine>,
    fleet: ArcSwapOption<crate::fleet::FleetStats>,
    jwks: Mutex<Vec<JwksSource>>,
    pin_path: Mutex<Option<PathBuf>>,
}

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(value);
    c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge<V: prometheus_client::encoding::EncodeGaugeValue>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: V,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(value);
    g.encode(enc.encode_descriptor(name, help, unit, g.metric_type())?)
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Collector for ScrapeSources {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(v) = self.verifier.load_full() {
            if let Some(c) = v.cache_stats() {
                counter(
                    &mut enc,
                    "token_cache_hits",
                    "Verified-token cache hits",
                    c.hits,
                )?;
                counter(
                    &mut enc,
                    "token_cache_misses",
                    "Verified-token cache misses",
                    c.misses,
                )?;
                counter(
                    &mut enc,
                    "token_cache_evictions",
                    "Verified-token cache evictions",
                    c.evictions,
                )?;
                gauge(
                    &mut enc,
                    "token_cache_entries",
                    "Tokens in the verified-token cache",
                    None,
                    i64::try_from(c.entries).unwrap_or(i64::MAX),
                )?;
            }
            let keys = v.keys();
            gauge(
                &mut enc,
                "keyset_keys",
                "Verification keys currently loaded",
                None,
                i64::try_from(keys.snapshot().len()).unwrap_or(i64::MAX),
            )?;
            gauge(
                &mut enc,
                "keyset_stale",
                "1 while a JWKS source serves its last good key set because its last fetch failed",
                None,
                i64::from(keys.is_stale()),
            )?;
        }
        self.encode_jwks(&mut enc)?;
        self.encode_abuse(&mut enc)?;
        self.encode_fleet(&mut enc)?;
        self.encode_kernel(&mut enc)
    }
}

impl ScrapeSources {
    fn encode_jwks(&self, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats: Vec<(String, crate::keys::JwksStats)> = lock(&self.jwks)
            .iter()
            .map(|s| (s.url().to_owned(), s.stats()))
            .collect();
        if stats.is_empty() {
            return Ok(());
        }
        let now = now_unix();
        let ages: Vec<_> = stats
            .iter()
            .filter_map(|(url, s)| Some((url, now.saturating_sub(s.last_success_unix?))))
            .collect();
        if !ages.is_empty() {
            let mut m = enc.encode_descriptor(
                "keyset_age",
                "Seconds since each JWKS source last fetched its key set successfully",
                Some(&Unit::Seconds),
                MetricType::Gauge,
            )?;
            for (url, age) in ages {
                let labels = SourceLabel {
                    source: url.clone(),
                };
                ConstGauge::new(i64::try_from(age).unwrap_or(i64::MAX))
                    .encode(m.encode_family(&labels)?)?;
            }
        }
        for (name, help, get) in [
            (
                "key_refresh_failures",
                "Failed JWKS fetches (the previous key set stayed in use)",
                (|s: &crate::keys::JwksStats| s.fetches_failed) as fn(&_) -> u64,
            ),
            ("key_refreshes", "Successful JWKS fetches", |s| s.fetches_ok),
            (
                "key_refetches_rate_limited",
                "Unknown-kid JWKS refetches refused by the rate limit",
                |s| s.refetches_rate_limited,
            ),
        ] {
            let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (url, s) in &stats {
                let labels = SourceLabel {
                    source: url.clone(),
                };
                ConstCounter::new(get(s)).encode(m.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }

    fn encode_abuse(&self, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use crate::abuse::Signal;
        use std::sync::atomic::Ordering;
        let Some(a) = self.abuse.load_full() else {
            return Ok(());
        };
        let c = a.counters();
        for (name, help, values) in [
            (
                "abuse_bans",
                "Sources banned by the abuse engine, by signal",
                &c.bans,
            ),
            (
                "abuse_would_ban",
                "Bans the abuse engine would have made (monitor mode), by signal",
                &c.monitored,
            ),
        ] {
            let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (signal, v) in Signal::ALL.iter().zip(values.iter()) {
                let labels = SignalLabel {
                    signal: signal.name(),
                };
                ConstCounter::new(v.load(Ordering::Relaxed)).encode(m.encode_family(&labels)?)?;
            }
        }
        counter(
            enc,
            "abuse_protected_skipped",
            "Limits crossed by protected addresses (interfaces, upstreams, JWKS hosts, trusted proxies, allow list), which are never banned",
            c.protected.load(Ordering::Relaxed),
        )?;
        counter(
            enc,
            "deny_evictions",
            "Automatic bans evicted (closest to expiry first) because a kernel deny map was full",
            a.store().evictions(),
        )?;
        Ok(())
    }

    fn encode_fleet(&self, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use crate::fleet::Invalid;
        use std::sync::atomic::Ordering::Relaxed;
        let Some(f) = self.fleet.load_full() else {
            return Ok(());
        };
        gauge(
            enc,
            "fleet_connected",
            "1 while this node follows the fleet's Redis",
            None,
            i64::from(f.connected()),
        )?;
        gauge(
            enc,
            "fleet_queue_length",
            "Events waiting to be published",
            None,
            i64::try_from(f.queued()).unwrap_or(i64::MAX),
        )?;
        counter(
            enc,
            "fleet_events_sent",
            "Events published to Redis",
            f.sent.load(Relaxed),
        )?;
        counter(
            enc,
            "fleet_events_received",
            "Valid events read from Redis (stream and catch-up)",
            f.received.load(Relaxed),
        )?;
        counter(
            enc,
            "fleet_events_dropped",
            "Outgoing events dropped because the queue was full while Redis was away",
            f.dropped(),
        )?;
        counter(
            enc,
            "fleet_bans_refused",
            "Received bans refused here (allow list or protected address)",
            f.refused.load(Relaxed),
        )?;
        counter(
            enc,
            "fleet_counts_lost",
            "Per-source counts not added to the fleet's because Redis was away",
            f.counts_lost.load(Relaxed),
        )?;
        let mut m = enc.encode_descriptor(
            "fleet_events_rejected",
            "Messages from Redis that failed validation, by reason",
            None,
            MetricType::Counter,
        )?;
        for why in Invalid::ALL {
            let labels = ReasonLabel {
                reason: why.label(),
            };
            let v = f.rejected.get(why.index()).map_or(0, |c| c.load(Relaxed));
            ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
        }
        let (sum, count, buckets) = f.lag();
        let mut m = enc.encode_descriptor(
            "fleet_propagation_lag_seconds",
            "From a ban's creation on its node to its application here",
            None,
            MetricType::Histogram,
        )?;
        m.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn encode_kernel(&self, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(dir) = lock(&self.pin_path).clone() else {
            return Ok(());
        };
        let totals = match crate::ebpf::PinnedMaps::open(&dir).and_then(|m| m.totals()) {
            Ok(t) => t,
            Err(e) => {
                tracing::debug!(error = %e, "kernel counters not exported");
                return Ok(());
            }
        };
        for (name, value) in counter::NAMES.iter().zip(totals) {
            let metric = format!("kernel_{name}");
            let help = format!("Kernel data plane counter `{name}`, summed over CPUs");
            counter(enc, &metric, &help, value)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    /// `name{labels} value` lines as a map, for exact comparisons.
    fn samples(text: &str) -> HashMap<String, String> {
        text.lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| l.rsplit_once(' '))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    fn value(text: &str, series: &str) -> Option<String> {
        samples(text).get(series).cloned()
    }

    #[test]
    fn every_verifier_reason_has_its_own_series() {
        for r in crate::jwt::REASONS {
            assert!(
                DENIAL_REASONS.contains(&r),
                "{r} missing from DENIAL_REASONS"
            );
        }
    }

    #[test]
    fn fresh_registry_renders_fixed_series_at_zero() {
        let m = Metrics::new(&names(&["api", "admin"]), &names(&["backend"]));
        let t = m.render();
        for r in DENIAL_REASONS.iter().chain([&"other"]) {
            assert_eq!(
                value(&t, &format!("gateway_denials_total{{reason=\"{r}\"}}")).as_deref(),
                Some("0"),
                "{r}"
            );
        }
        for k in UPSTREAM_ERROR_KINDS.iter().chain([&"other"]) {
            let s = format!("gateway_upstream_errors_total{{upstream=\"backend\",kind=\"{k}\"}}");
            assert_eq!(value(&t, &s).as_deref(), Some("0"), "{s}");
        }
        assert_eq!(
            value(&t, "gateway_tls_handshakes_total{result=\"ok\"}").as_deref(),
            Some("0")
        );
        assert_eq!(value(&t, "gateway_connections_open").as_deref(), Some("0"));
        assert_eq!(
            value(&t, "gateway_verify_duration_seconds_count").as_deref(),
            Some("0")
        );
        // No request yet: no request series (they are created on first use).
        assert!(!t.contains("gateway_requests_total"), "{t}");
        m.request(Some(1), 204);
        let t = m.render();
        assert!(t.contains("# TYPE gateway_requests_total counter"), "{t}");
        assert_eq!(
            value(&t, "gateway_requests_total{route=\"admin\",status=\"204\"}").as_deref(),
            Some("1")
        );
        // Nothing scrape-time is configured.
        assert!(!t.contains("gateway_kernel_"), "{t}");
        assert!(!t.contains("gateway_token_cache"), "{t}");
    }

    #[test]
    fn recorded_events_show_up_with_their_labels() {
        let m = Metrics::new(&names(&["api", "admin"]), &names(&["a", "b"]));
        m.request(Some(0), 200);
        m.request(Some(0), 200);
        m.request(Some(1), 403);
        m.request(None, 404);
        m.request(Some(7), 404); // out of range: no route
        m.request(Some(0), 42); // not an HTTP status
        m.request(Some(0), 700);
        m.denial("expired");
        m.denial("insufficient_scope");
        m.denial("something_new");
        m.tls_handshake(true);
        m.tls_handshake(false);
        m.tls_handshake(false);
        m.upstream_error(1, "timeout");
        m.upstream_error(0, "weird");
        m.upstream_error(9, "connect"); // ignored
        m.connection_refused("per_source_limit");
        m.connection_refused("later");
        m.connection_opened();
        m.connection_opened();
        m.connection_closed();
        let t = m.render();
        let s = samples(&t);
        let get = |k: &str| s.get(k).map(String::as_str);
        assert_eq!(
            get("gateway_requests_total{route=\"api\",status=\"200\"}"),
            Some("2")
        );
        assert_eq!(
            get("gateway_requests_total{route=\"admin\",status=\"403\"}"),
            Some("1")
        );
        assert_eq!(
            get("gateway_requests_total{route=\"(none)\",status=\"404\"}"),
            Some("2")
        );
        assert_eq!(
            get("gateway_requests_total{route=\"api\",status=\"other\"}"),
            Some("2")
        );
        assert_eq!(get("gateway_denials_total{reason=\"expired\"}"), Some("1"));
        assert_eq!(
            get("gateway_denials_total{reason=\"insufficient_scope\"}"),
            Some("1")
        );
        assert_eq!(get("gateway_denials_total{reason=\"other\"}"), Some("1"));
        assert_eq!(
            get("gateway_denials_total{reason=\"malformed\"}"),
            Some("0")
        );
        assert_eq!(
            get("gateway_tls_handshakes_total{result=\"ok\"}"),
            Some("1")
        );
        assert_eq!(
            get("gateway_tls_handshakes_total{result=\"failed\"}"),
            Some("2")
        );
        assert_eq!(
            get("gateway_upstream_errors_total{upstream=\"b\",kind=\"timeout\"}"),
            Some("1")
        );
        assert_eq!(
            get("gateway_upstream_errors_total{upstream=\"a\",kind=\"other\"}"),
            Some("1")
        );
        assert_eq!(
            get("gateway_connections_refused_total{reason=\"per_source_limit\"}"),
            Some("1")
        );
        assert_eq!(
            get("gateway_connections_refused_total{reason=\"other\"}"),
            Some("1")
        );
        assert_eq!(get("gateway_connections_open"), Some("1"));
        let request_series = t
            .lines()
            .filter(|l| l.starts_with("gateway_requests_total{"))
            .count();
        assert_eq!(request_series, 4, "{t}");
    }

    #[test]
    fn label_values_are_escaped() {
        let m = Metrics::new(&names(&["we\"ird\\route\n"]), &[]);
        m.request(Some(0), 200);
        let t = m.render();
        assert!(
            t.contains(r#"gateway_requests_total{route="we\"ird\\route\n",status="200"} 1"#),
            "{t}"
        );
    }

    #[test]
    fn concurrent_increments_add_up_exactly() {
        const THREADS: usize = 8;
        const EACH: u64 = 20_000;
        let m = Arc::new(Metrics::new(&names(&["r0", "r1"]), &names(&["u"])));
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let m = Arc::clone(&m);
                std::thread::spawn(move || {
                    for i in 0..EACH {
                        // Every thread races to create the same lazily created series.
                        m.request(Some(t % 2), if i % 2 == 0 { 200 } else { 503 });
                        m.denial("bad_signature");
                        m.verify_latency(Duration::from_micros(i % 300));
                        m.upstream_error(0, "connect");
                        m.connection_opened();
                        m.connection_closed();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().expect("worker thread");
        }
        let t = m.render();
        let s = samples(&t);
        let per_route_status = (THREADS as u64 / 2) * EACH / 2;
        for r in ["r0", "r1"] {
            for st in ["200", "503"] {
                let k = format!("gateway_requests_total{{route=\"{r}\",status=\"{st}\"}}");
                assert_eq!(s.get(&k), Some(&per_route_status.to_string()), "{k}");
            }
        }
        let total = (THREADS as u64 * EACH).to_string();
        assert_eq!(
            s.get("gateway_denials_total{reason=\"bad_signature\"}"),
            Some(&total)
        );
        assert_eq!(s.get("gateway_verify_duration_seconds_count"), Some(&total));
        assert_eq!(
            s.get("gateway_verify_duration_seconds_bucket{le=\"+Inf\"}"),
            Some(&total)
        );
        assert_eq!(
            s.get("gateway_upstream_errors_total{upstream=\"u\",kind=\"connect\"}"),
            Some(&total)
        );
        assert_eq!(
            s.get("gateway_connections_open").map(String::as_str),
            Some("0")
        );
    }

    #[test]
    fn histogram_buckets_are_cumulative_with_inclusive_bounds() {
        let m = Metrics::new(&[], &[]);
        for d in [
            Duration::from_nanos(500),   // <= 1µs
            Duration::from_micros(1),    // exactly on the 1µs bound
            Duration::from_nanos(1_001), // 2.5µs bucket
            Duration::from_micros(30),   // 50µs bucket
            Duration::from_millis(100),  // on the last bound
            Duration::from_secs(3),      // overflow
            Duration::MAX,               // saturates, still counted
        ] {
            m.verify_latency(d);
        }
        let t = m.render();
        let s = samples(&t);
        let b = |le: &str| {
            s.get(&format!(
                "gateway_verify_duration_seconds_bucket{{le=\"{le}\"}}"
            ))
            .cloned()
            .unwrap_or_else(|| panic!("bucket {le} missing:\n{t}"))
        };
        assert_eq!(b("1e-06"), "2");
        assert_eq!(b("2.5e-06"), "3");
        assert_eq!(b("2.5e-05"), "3");
        assert_eq!(b("5e-05"), "4");
        assert_eq!(b("0.1"), "5");
        assert_eq!(b("+Inf"), "7");
        assert_eq!(
            s.get("gateway_verify_duration_seconds_count")
                .map(String::as_str),
            Some("7")
        );
        assert!(
            t.contains("# TYPE gateway_verify_duration_seconds histogram"),
            "{t}"
        );
        let bucket_lines = t
            .lines()
            .filter(|l| l.starts_with("gateway_verify_duration_seconds_bucket"))
            .count();
        assert_eq!(bucket_lines, VERIFY_BUCKETS_NS.len() + 1, "{t}");
    }

    #[test]
    fn verifier_cache_and_keys_are_read_at_scrape_time() {
        use crate::jwt::{now_unix, Algorithm, SigningKey, Verifier, VerifierConfig};
        use crate::keys::{KeyStore, VerifyingKey};
        let secret = [7u8; 32];
        let key = VerifyingKey::hmac(&secret, None, None, "test").expect("hmac key");
        let v =
            Verifier::new(VerifierConfig::default(), KeyStore::with_keys([key])).expect("verifier");
        let v = Arc::new(v);
        let m = Metrics::new(&[], &[]);
        m.set_verifier(Arc::clone(&v));
        let mut claims = serde_json::Map::new();
        claims.insert("exp".into(), (now_unix() + 300).into());
        let token = SigningKey::hmac(&secret, Algorithm::HS256)
            .expect("signing key")
            .sign(serde_json::Map::new(), &claims)
            .expect("token");
        v.verify(&token, now_unix()).expect("valid (miss)");
        v.verify(&token, now_unix()).expect("valid (hit)");
        let t = m.render();
        let get = |k: &str| value(&t, k).unwrap_or_else(|| panic!("{k} missing:\n{t}"));
        assert_eq!(get("gateway_keyset_keys"), "1");
        assert_eq!(get("gateway_keyset_stale"), "0");
        assert_eq!(get("gateway_token_cache_hits_total"), "1");
        assert_eq!(get("gateway_token_cache_misses_total"), "1");
        assert_eq!(get("gateway_token_cache_entries"), "1");
    }

    #[test]
    fn unpinned_maps_export_nothing() {
        let m = Metrics::new(&[], &[]);
        m.set_pin_path(PathBuf::from("/nonexistent/gateway-metrics-test"));
        let t = m.render();
        assert!(!t.contains("kernel"), "{t}");
        assert!(t.contains("gateway_connections_open"), "{t}");
    }

    #[test]
    fn metrics_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<Metrics>();
    }
}
