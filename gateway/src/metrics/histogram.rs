//! Latency histograms: fixed buckets, one atomic each, because `prometheus-client`'s
//! `Histogram` takes a mutex on every observation. They are still encoded by
//! `prometheus-client`, alone or as a labelled set ([`Labelled`]).

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::{MetricType, TypedMetric};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Upper bounds of the verification latency buckets, in nanoseconds: 1 µs to 100 ms in
/// 1-2.5-5 steps. A cache hit takes about a microsecond, RS256 tens of microseconds, so the
/// interesting range is covered with room for slow keys and machines.
pub(super) const VERIFY_BUCKETS_NS: [u64; 16] = [
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

/// Upper bounds of the request and upstream duration buckets, in nanoseconds: 500 µs to
/// 30 s. A proxied request on a LAN takes a millisecond or two; slow upstreams and long
/// bodies take seconds, and `request_timeout` defaults to 30 s.
pub(super) const REQUEST_BUCKETS_NS: [u64; 14] = [
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    10_000_000_000,
    30_000_000_000,
];

/// A fixed-bucket latency histogram with one atomic per bucket: observing never blocks.
/// Clones share the counts (one clone is registered, one is recorded into).
#[derive(Clone, Debug)]
pub struct LatencyHistogram {
    inner: Arc<HistogramInner>,
}

#[derive(Debug)]
struct HistogramInner {
    /// Upper bounds in nanoseconds, ascending.
    bounds: &'static [u64],
    /// Non-cumulative counts per bucket of `bounds`, then the overflow bucket.
    buckets: Box<[AtomicU64]>,
    sum_ns: AtomicU64,
}

/// The verification latency buckets ([`VERIFY_BUCKETS_NS`]).
impl Default for LatencyHistogram {
    fn default() -> Self {
        Self::with_bounds(&VERIFY_BUCKETS_NS)
    }
}

/// What a histogram says about its observations, for `/stats.json`: the quantiles are the
/// upper bound of the bucket they fall in (so they over-state by at most one bucket).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct LatencySummary {
    pub count: u64,
    /// Mean in milliseconds (`None` without observations).
    pub mean_ms: Option<f64>,
    /// Median bucket bound in milliseconds (`None`: no observation, or past the last bound).
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

impl LatencyHistogram {
    /// A histogram with these upper bounds (nanoseconds, ascending).
    pub fn with_bounds(bounds: &'static [u64]) -> Self {
        Self {
            inner: Arc::new(HistogramInner {
                bounds,
                buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
                sum_ns: AtomicU64::new(0),
            }),
        }
    }

    /// Counts one observation.
    pub fn observe(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        // First bucket whose bound is >= ns (Prometheus buckets are "less than or equal").
        let i = self.inner.bounds.partition_point(|&b| b < ns);
        if let Some(b) = self.inner.buckets.get(i) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        self.inner.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    /// Count, mean and the p50/p99 bucket bounds of what was observed so far.
    pub fn summary(&self) -> LatencySummary {
        let counts: Vec<u64> = self
            .inner
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let count: u64 = counts.iter().sum();
        let bound_of = |q: f64| -> Option<f64> {
            if count == 0 {
                return None;
            }
            // The rank of the quantile, 1-based: the first bucket whose running total
            // reaches it holds it.
            let rank = ((count as f64) * q).ceil().max(1.0) as u64;
            let mut seen = 0;
            for (i, n) in counts.iter().enumerate() {
                seen += n;
                if seen >= rank {
                    return self.inner.bounds.get(i).map(|&ns| ns as f64 / 1e6);
                }
            }
            None
        };
        let sum_ns = self.inner.sum_ns.load(Ordering::Relaxed);
        LatencySummary {
            count,
            mean_ms: (count > 0).then(|| sum_ns as f64 / count as f64 / 1e6),
            p50_ms: bound_of(0.5),
            p99_ms: bound_of(0.99),
        }
    }

    fn encode_into(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        // The count is the sum of the buckets read, so `_count` always equals the `+Inf`
        // bucket; `_sum` may include an observation or two more under load, which is harmless.
        let mut buckets = Vec::with_capacity(self.inner.buckets.len());
        let mut count = 0u64;
        for (i, counter) in self.inner.buckets.iter().enumerate() {
            let n = counter.load(Ordering::Relaxed);
            count += n;
            let bound = self
                .inner
                .bounds
                .get(i)
                .map_or(f64::INFINITY, |&ns| ns as f64 / 1e9);
            buckets.push((bound, n));
        }
        let sum = self.inner.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }
}

/// Histograms of one metric with a label set each (a route, an upstream server). The
/// recording side holds its histograms directly (a [`super::Series`] looks them up once, when
/// it is built), so the lock here is taken only when a set of series is built and at scrape
/// time; a label set asked for again (a reload that keeps a route) continues its histogram.
#[derive(Debug, Clone)]
pub struct Labelled<L> {
    series: Arc<std::sync::Mutex<Vec<(L, LatencyHistogram)>>>,
    bounds: &'static [u64],
}

impl<L: PartialEq + Clone> Labelled<L> {
    /// An empty family whose histograms have `bounds` (ns).
    pub fn new(bounds: &'static [u64]) -> Self {
        Self {
            series: Arc::default(),
            bounds,
        }
    }

    /// The histogram of `labels`, created on first use.
    pub fn get_or_create(&self, labels: &L) -> LatencyHistogram {
        let mut series = self.lock();
        if let Some((_, h)) = series.iter().find(|(l, _)| l == labels) {
            return h.clone();
        }
        let h = LatencyHistogram::with_bounds(self.bounds);
        series.push((labels.clone(), h.clone()));
        h
    }

    /// The histogram of `labels`, if it exists.
    pub fn find(&self, labels: &L) -> Option<LatencyHistogram> {
        self.lock()
            .iter()
            .find(|(l, _)| l == labels)
            .map(|(_, h)| h.clone())
    }

    /// Every label set and its histogram, in creation order.
    pub fn snapshot(&self) -> Vec<(L, LatencyHistogram)> {
        self.lock().clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(L, LatencyHistogram)>> {
        self.series
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl<L> TypedMetric for Labelled<L> {
    const TYPE: MetricType = MetricType::Histogram;
}

impl<L: EncodeLabelSet + PartialEq + Clone + std::fmt::Debug + Send + Sync> EncodeMetric
    for Labelled<L>
{
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (labels, h) in self.snapshot() {
            h.encode_into(encoder.encode_family(&labels)?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        self.encode_into(encoder)
    }

    fn metric_type(&self) -> MetricType {
        Self::TYPE
    }
}
