//! Per-source counts of the HTTP-level signals (refused tokens, client errors) waiting to be
//! added to the fleet's totals: the request path adds one under a shard's lock (no I/O), the
//! fleet's counting task takes everything every 100 ms. Bounded: when a shard is full, new
//! sources are not counted until the next flush (counted as dropped).

use crate::abuse::Signal;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

const SHARDS: usize = 16;

type Shard = HashMap<(IpAddr, Signal), u32, foldhash::quality::RandomState>;

/// Counts since the last flush.
#[derive(Debug)]
pub struct Counts {
    shards: Vec<Mutex<Shard>>,
    per_shard: usize,
    hasher: foldhash::quality::RandomState,
    dropped: AtomicU64,
}

impl Counts {
    /// At most `max` distinct sources per flush interval.
    pub fn new(max: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            per_shard: (max / SHARDS).max(1),
            hasher: foldhash::quality::RandomState::default(),
            dropped: AtomicU64::new(0),
        }
    }

    /// One event of `signal` from `key` (a source as the abuse engine tracks it).
    pub fn add(&self, key: IpAddr, signal: Signal) {
        let i = (self.hasher.hash_one(key) as usize) % SHARDS;
        let Some(shard) = self.shards.get(i) else {
            return;
        };
        let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = shard.get_mut(&(key, signal)) {
            *n = n.saturating_add(1);
        } else if shard.len() < self.per_shard {
            shard.insert((key, signal), 1);
        } else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Everything counted since the last call.
    pub fn take(&self) -> Vec<(IpAddr, Signal, u32)> {
        let mut out = Vec::new();
        for shard in &self.shards {
            let taken = std::mem::take(&mut *shard.lock().unwrap_or_else(PoisonError::into_inner));
            out.extend(taken.into_iter().map(|((k, s), n)| (k, s, n)));
        }
        out
    }

    /// Events not counted because too many sources came within one interval.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_up_per_source_and_signal_and_stays_bounded() {
        let c = Counts::new(SHARDS * 2);
        let a: IpAddr = "198.51.100.1".parse().unwrap();
        for _ in 0..5 {
            c.add(a, Signal::AuthFailure);
        }
        c.add(a, Signal::ClientError);
        let mut got = c.take();
        got.sort_by_key(|(_, _, n)| *n);
        assert_eq!(
            got,
            [(a, Signal::ClientError, 1), (a, Signal::AuthFailure, 5)]
        );
        assert!(c.take().is_empty());
        // One source and signal per shard at most here: many sources overflow, counted.
        let c = Counts::new(SHARDS);
        for i in 0..=255u8 {
            c.add(IpAddr::from([203, 0, 113, i]), Signal::AuthFailure);
        }
        assert!(c.take().len() <= SHARDS);
        assert!(c.dropped() >= 256 - SHARDS as u64);
    }
}
