//! The verification latency histogram: fixed buckets, one atomic each, because
//! `prometheus-client`'s `Histogram` takes a mutex on every observation. It is still encoded
//! by `prometheus-client`.

use prometheus_client::encoding::{EncodeMetric, MetricEncoder, NoLabelSet};
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
