//! What the fleet did, for `/metrics` and `gateway stats`: connection state, events sent,
//! received, dropped and refused, and the propagation lag (a ban's creation on its node to
//! its application here).

use super::message::Invalid;
use super::outbox::Outbox;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Upper bounds of the lag histogram's buckets, seconds.
pub const LAG_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0,
];

/// Counters shared by the fleet's tasks and read at scrape time.
#[derive(Debug)]
pub struct FleetStats {
    pub node: String,
    pub signed: bool,
    connected: AtomicBool,
    pub sent: AtomicU64,
    /// Valid events read (stream and catch-up), whether or not they changed anything.
    pub received: AtomicU64,
    /// Received bans refused here: the allow list or a protected address won.
    pub refused: AtomicU64,
    /// Per-source counts that could not be added to the fleet's (Redis away).
    pub counts_lost: AtomicU64,
    /// Messages that failed validation, by reason.
    pub rejected: [AtomicU64; Invalid::ALL.len()],
    lag_buckets: [AtomicU64; LAG_BUCKETS.len() + 1],
    lag_sum_us: AtomicU64,
    pub(super) outbox: Arc<Outbox>,
}

impl FleetStats {
    pub(super) fn new(node: String, signed: bool, outbox: Arc<Outbox>) -> Self {
        Self {
            node,
            signed,
            connected: AtomicBool::new(false),
            sent: AtomicU64::new(0),
            received: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            counts_lost: AtomicU64::new(0),
            rejected: Default::default(),
            lag_buckets: Default::default(),
            lag_sum_us: AtomicU64::new(0),
            outbox,
        }
    }

    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    pub(super) fn set_connected(&self, up: bool) {
        let was = self.connected.swap(up, Ordering::Relaxed);
        if was != up {
            if up {
                tracing::info!("fleet: connected to Redis");
            } else {
                tracing::warn!("fleet: Redis unreachable; banning locally, events queued");
            }
        }
    }

    pub fn queued(&self) -> usize {
        self.outbox.len()
    }

    pub fn dropped(&self) -> u64 {
        self.outbox.dropped()
    }

    pub(super) fn reject(&self, why: Invalid) {
        if let Some(c) = self.rejected.get(why.index()) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(super) fn observe_lag(&self, lag: Duration) {
        let secs = lag.as_secs_f64();
        let i = LAG_BUCKETS.partition_point(|&b| b < secs);
        if let Some(b) = self.lag_buckets.get(i) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        self.lag_sum_us.fetch_add(
            u64::try_from(lag.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// The lag histogram as prometheus-client encodes it: sum (seconds), count, and the
    /// count of each bucket alone (the encoder accumulates).
    pub fn lag(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut count = 0;
        let mut buckets = Vec::with_capacity(LAG_BUCKETS.len() + 1);
        for (i, c) in self.lag_buckets.iter().enumerate() {
            let n = c.load(Ordering::Relaxed);
            count += n;
            buckets.push((LAG_BUCKETS.get(i).copied().unwrap_or(f64::INFINITY), n));
        }
        let sum = self.lag_sum_us.load(Ordering::Relaxed) as f64 / 1e6;
        (sum, count, buckets)
    }
}
