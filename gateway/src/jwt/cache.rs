//! The verified-token cache: skips signature checks for tokens seen recently.
//!
//! - Keyed by a (randomly seeded) hash of the whole token, and the full token is compared on
//!   a hit, so a hash collision can never make an unverified token pass.
//! - Sharded `RwLock`s: a hit takes one shard's read lock, so worker threads do not contend
//!   on a global lock.
//! - Bounded by entries and by bytes; tokens over a size cap are not cached. When a shard is
//!   full, expired entries go first, then an arbitrary eighth of the shard (hash order is
//!   random, so this approximates random eviction at O(1) amortized cost).
//! - It stores only successes. The verifier re-checks `exp`/`nbf` and that the signing key is
//!   still in the key set on every hit.

use super::verifier::VerifiedToken;
use hashbrown::HashTable;
use serde::Deserialize;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

/// Cache sizing.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Whether the cache is used at all.
    pub enabled: bool,
    /// Maximum number of cached tokens.
    pub max_entries: usize,
    /// Maximum accounted bytes (token + decoded claims estimate).
    pub max_bytes: usize,
    /// Tokens longer than this are not cached.
    pub max_token_bytes: usize,
}

impl Default for CacheConfig {
    /// 100k tokens, 128 MiB, tokens up to 8 KiB.
    fn default() -> Self {
        CacheConfig {
            enabled: true,
            max_entries: 100_000,
            max_bytes: 128 << 20,
            max_token_bytes: 8 << 10,
        }
    }
}

/// Number of shards; a power of two.
const SHARDS: usize = 64;

struct Entry {
    hash: u64,
    token: Box<str>,
    cost: usize,
    value: Arc<VerifiedToken>,
}

#[derive(Default)]
struct ShardInner {
    table: HashTable<Entry>,
    bytes: usize,
}

/// One shard, padded to its own cache lines so shards do not false-share.
#[repr(align(128))]
#[derive(Default)]
struct Shard {
    inner: RwLock<ShardInner>,
    hits: AtomicU64,
    misses: AtomicU64,
    evictions: AtomicU64,
}

/// Counters for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Lookups that found the token.
    pub hits: u64,
    /// Lookups that did not.
    pub misses: u64,
    /// Entries evicted for space.
    pub evictions: u64,
    /// Entries now.
    pub entries: usize,
    /// Accounted bytes now.
    pub bytes: usize,
}

/// A bounded, sharded map from token to its verified form.
pub struct TokenCache {
    shards: Box<[Shard; SHARDS]>,
    hasher: foldhash::fast::RandomState,
    max_entries_per_shard: usize,
    max_bytes_per_shard: usize,
    max_token_bytes: usize,
}

impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache")
            .field("stats", &self.stats())
            .finish()
    }
}

impl TokenCache {
    /// A cache with the given limits.
    pub fn new(cfg: &CacheConfig) -> Self {
        TokenCache {
            shards: Box::new(std::array::from_fn(|_| Shard::default())),
            hasher: foldhash::fast::RandomState::default(),
            max_entries_per_shard: cfg.max_entries.div_ceil(SHARDS).max(1),
            max_bytes_per_shard: cfg.max_bytes.div_ceil(SHARDS).max(1),
            max_token_bytes: cfg.max_token_bytes,
        }
    }

    #[inline]
    fn locate(&self, token: &str) -> (u64, &Shard) {
        let hash = self.hasher.hash_one(token.as_bytes());
        // The low bits pick the bucket inside the table; use high bits for the shard.
        // Masking a fixed-size array index cannot go out of bounds.
        let shard = &self.shards[(hash >> 58) as usize & (SHARDS - 1)];
        (hash, shard)
    }

    /// Whether a token of this length may be cached.
    #[inline]
    pub fn cacheable(&self, token: &str) -> bool {
        token.len() <= self.max_token_bytes
    }

    /// The cached verification of `token`, if present.
    #[inline]
    pub fn get(&self, token: &str) -> Option<Arc<VerifiedToken>> {
        if !self.cacheable(token) {
            return None;
        }
        let (hash, shard) = self.locate(token);
        let found = {
            let g = shard.inner.read().unwrap_or_else(PoisonError::into_inner);
            g.table
                .find(hash, |e| e.hash == hash && *e.token == *token)
                .map(|e| Arc::clone(&e.value))
        };
        let counter = if found.is_some() {
            &shard.hits
        } else {
            &shard.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        found
    }

    /// Caches a verified token. `now` lets a full shard drop expired entries first.
    pub fn insert(&self, token: &str, value: Arc<VerifiedToken>, now: i64) {
        if !self.cacheable(token) {
            return;
        }
        // Rough footprint: the token, the decoded JSON (about twice its encoded size), and
        // fixed overhead.
        let cost = token.len() * 3 + 256;
        if cost > self.max_bytes_per_shard {
            return;
        }
        let (hash, shard) = self.locate(token);
        let mut g = shard.inner.write().unwrap_or_else(PoisonError::into_inner);
        let g = &mut *g;
        if let Some(old) = g
            .table
            .find_mut(hash, |e| e.hash == hash && *e.token == *token)
        {
            old.value = value;
            return;
        }
        if g.table.len() >= self.max_entries_per_shard || g.bytes + cost > self.max_bytes_per_shard
        {
            let evicted = self.make_room(g, now);
            shard.evictions.fetch_add(evicted, Ordering::Relaxed);
        }
        g.bytes += cost;
        g.table.insert_unique(
            hash,
            Entry {
                hash,
                token: token.into(),
                cost,
                value,
            },
            |e| e.hash,
        );
    }

    fn make_room(&self, g: &mut ShardInner, now: i64) -> u64 {
        let before = g.table.len();
        let mut freed = 0usize;
        g.table.retain(|e| {
            let keep = e.value.exp().is_none_or(|exp| exp > now);
            if !keep {
                freed += e.cost;
            }
            keep
        });
        g.bytes -= freed;
        let target_entries = self.max_entries_per_shard - self.max_entries_per_shard / 8;
        let target_bytes = self.max_bytes_per_shard - self.max_bytes_per_shard / 8;
        if g.table.len() >= self.max_entries_per_shard
            || g.bytes + self.max_bytes_per_shard / 8 > self.max_bytes_per_shard
        {
            let mut len = g.table.len();
            let mut bytes = g.bytes;
            g.table.retain(|e| {
                if len > target_entries.saturating_sub(1) || bytes > target_bytes {
                    len -= 1;
                    bytes -= e.cost;
                    false
                } else {
                    true
                }
            });
            g.bytes = bytes;
        }
        (before - g.table.len()) as u64
    }

    /// Removes one token (e.g. its key was rotated out).
    pub fn remove(&self, token: &str) {
        let (hash, shard) = self.locate(token);
        let mut g = shard.inner.write().unwrap_or_else(PoisonError::into_inner);
        if let Ok(e) = g
            .table
            .find_entry(hash, |e| e.hash == hash && *e.token == *token)
        {
            let (old, _) = e.remove();
            g.bytes -= old.cost;
        }
    }

    /// Drops every entry.
    pub fn clear(&self) {
        for s in self.shards.iter() {
            let mut g = s.inner.write().unwrap_or_else(PoisonError::into_inner);
            g.table.clear();
            g.bytes = 0;
        }
    }

    /// Current counters.
    pub fn stats(&self) -> CacheStats {
        let mut st = CacheStats::default();
        for s in self.shards.iter() {
            st.hits += s.hits.load(Ordering::Relaxed);
            st.misses += s.misses.load(Ordering::Relaxed);
            st.evictions += s.evictions.load(Ordering::Relaxed);
            let g = s.inner.read().unwrap_or_else(PoisonError::into_inner);
            st.entries += g.table.len();
            st.bytes += g.bytes;
        }
        st
    }
}
