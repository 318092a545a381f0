//! Token buckets per key (a subject, a claim value, a source address), memory-bounded.
//!
//! Used for two things: the per-route `rate_limit` (key taken from the verified token or the
//! client address) and the verifier's per-source budget of signature verifications. Keys
//! come from clients, so the buckets live in sharded LRU maps: at most `max_keys` are kept,
//! the least recently seen forgotten first (a forgotten key starts again with a full bucket,
//! which errs on the side of serving). One shard's mutex is held for a lookup and a few
//! float operations, never across an `.await`.

use lru::LruCache;
use serde::{Deserialize, Deserializer};
use std::borrow::Borrow;
use std::hash::{BuildHasher, Hash};
use std::num::NonZeroUsize;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// A rate written `N/s`, `N/m` or `N/h` (N a positive whole number).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    /// Events per `per`.
    pub count: u32,
    /// The unit: one second, minute or hour.
    pub per: Duration,
}

/// A rate that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RateError {
    /// Not `N/s`, `N/m` or `N/h` with a positive whole N.
    #[error("rate {0:?} is not N/s, N/m or N/h with N a positive whole number")]
    Syntax(String),
}

impl Rate {
    /// Events per second.
    pub fn per_second(&self) -> f64 {
        f64::from(self.count) / self.per.as_secs_f64()
    }
}

impl std::str::FromStr for Rate {
    type Err = RateError;
    fn from_str(s: &str) -> Result<Self, RateError> {
        let bad = || RateError::Syntax(s.to_owned());
        let (n, unit) = s.trim().split_once('/').ok_or_else(bad)?;
        let count: u32 = n.trim().parse().map_err(|_| bad())?;
        let per = match unit.trim() {
            "s" => Duration::from_secs(1),
            "m" => Duration::from_secs(60),
            "h" => Duration::from_secs(3600),
            _ => return Err(bad()),
        };
        if count == 0 {
            return Err(bad());
        }
        Ok(Rate { count, per })
    }
}

impl std::fmt::Display for Rate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let unit = match self.per.as_secs() {
            60 => "m",
            3600 => "h",
            _ => "s",
        };
        write!(f, "{}/{unit}", self.count)
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// `Retry-After` seconds for a wait: whole seconds, rounded up, at least 1.
pub fn retry_after_secs(wait: Duration) -> u64 {
    (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1)
}

/// One bucket: tokens left as of `at`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The answer of [`KeyedLimiter::take`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    /// Allowed; whole tokens left in the bucket.
    Allowed { remaining: u64 },
    /// Refused; a token will be there after this long.
    Limited { retry_after: Duration },
}

const SHARDS: usize = 32;

/// Token buckets per key: `rate` refill, `burst` capacity, at most `max_keys` keys.
pub struct KeyedLimiter<K> {
    shards: Box<[Mutex<LruCache<K, Bucket>>]>,
    hasher: foldhash::fast::RandomState,
    per_sec: f64,
    burst: f64,
}

impl<K> std::fmt::Debug for KeyedLimiter<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyedLimiter")
            .field("per_sec", &self.per_sec)
            .field("burst", &self.burst)
            .finish()
    }
}

impl<K: Hash + Eq> KeyedLimiter<K> {
    /// `burst` is at least 1; `max_keys` is spread over the shards (at least one each).
    pub fn new(rate: Rate, burst: u32, max_keys: usize) -> Self {
        let per_shard = NonZeroUsize::new(max_keys.div_ceil(SHARDS)).unwrap_or(NonZeroUsize::MIN);
        Self {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(LruCache::new(per_shard)))
                .collect(),
            hasher: foldhash::fast::RandomState::default(),
            per_sec: rate.per_second(),
            burst: f64::from(burst.max(1)),
        }
    }

    fn shard<Q: Hash + ?Sized>(&self, key: &Q) -> &Mutex<LruCache<K, Bucket>> {
        let h = self.hasher.hash_one(key);
        // The index is reduced modulo the length, so it is always in range.
        &self.shards[(h >> 40) as usize % self.shards.len()]
    }

    /// Takes one token from `key`'s bucket at time `now`. `own` makes the owned key, called
    /// only the first time a key is seen (so a known key costs no allocation).
    pub fn take<Q>(&self, key: &Q, own: impl FnOnce() -> K, now: Instant) -> Decision
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let mut shard = self
            .shard(key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let bucket = match shard.get_mut(key) {
            Some(b) => {
                let elapsed = now.saturating_duration_since(b.at).as_secs_f64();
                b.tokens = (b.tokens + elapsed * self.per_sec).min(self.burst);
                b.at = now;
                b
            }
            None => {
                shard.push(
                    own(),
                    Bucket {
                        tokens: self.burst,
                        at: now,
                    },
                );
                match shard.get_mut(key) {
                    Some(b) => b,
                    // Just inserted; the map holds at least one entry.
                    None => return Decision::Allowed { remaining: 0 },
                }
            }
        };
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Decision::Allowed {
                remaining: bucket.tokens as u64,
            }
        } else {
            let wait = (1.0 - bucket.tokens) / self.per_sec;
            Decision::Limited {
                retry_after: Duration::try_from_secs_f64(wait).unwrap_or(Duration::MAX),
            }
        }
    }

    /// Keys held now (for tests and metrics).
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).len())
            .sum()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    #[test]
    fn rates_parse_strictly() {
        assert_eq!(
            "100/s".parse::<Rate>().unwrap(),
            Rate {
                count: 100,
                per: Duration::from_secs(1)
            }
        );
        assert_eq!("6/m".parse::<Rate>().unwrap().per_second(), 0.1);
        assert_eq!("3600/h".parse::<Rate>().unwrap().per_second(), 1.0);
        for bad in [
            "", "100", "0/s", "-1/s", "1.5/s", "10/d", "10/", "/s", "10/ss", "1e3/s",
        ] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
        assert_eq!("7/m".parse::<Rate>().unwrap().to_string(), "7/m");
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1_001)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(60)), 60);
    }

    #[test]
    fn burst_then_refill_per_key() {
        let l: KeyedLimiter<String> = KeyedLimiter::new("2/s".parse().unwrap(), 3, 100);
        let t0 = Instant::now();
        for left in [2, 1, 0] {
            assert_eq!(
                l.take("alice", || "alice".into(), t0),
                Decision::Allowed { remaining: left }
            );
        }
        let Decision::Limited { retry_after } = l.take("alice", || "alice".into(), t0) else {
            panic!("fourth request at once must be limited");
        };
        assert_eq!(retry_after, Duration::from_millis(500));
        // Another key has its own bucket.
        assert!(matches!(
            l.take("bob", || "bob".into(), t0),
            Decision::Allowed { remaining: 2 }
        ));
        // Half a second later one token is back, not more.
        let t1 = t0 + Duration::from_millis(500);
        assert!(matches!(
            l.take("alice", || "alice".into(), t1),
            Decision::Allowed { .. }
        ));
        assert!(matches!(
            l.take("alice", || "alice".into(), t1),
            Decision::Limited { .. }
        ));
        // A long pause refills to the burst, never beyond.
        let t2 = t1 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert!(matches!(
                l.take("alice", || "alice".into(), t2),
                Decision::Allowed { .. }
            ));
        }
        assert!(matches!(
            l.take("alice", || "alice".into(), t2),
            Decision::Limited { .. }
        ));
    }

    #[test]
    fn memory_is_bounded_by_max_keys() {
        let l: KeyedLimiter<IpAddr> = KeyedLimiter::new("1/s".parse().unwrap(), 1, 64);
        let t0 = Instant::now();
        for i in 0..10_000u32 {
            let ip = IpAddr::V4(Ipv4Addr::from(i));
            l.take(&ip, || ip, t0);
        }
        assert!(l.len() <= 64 + SHARDS, "{}", l.len());
    }
}
