//! The key store: verification keys parsed once into the form ring verifies with, indexed by
//! `kid` and bound to algorithms, from any mix of sources (PEM public keys and certificates,
//! JWK/JWKS files, JWKS URLs refreshed in the background, HMAC secret files).
//!
//! The current key set is published through an [`arc_swap::ArcSwap`], so the request path
//! reads it without taking a lock, and rotation swaps in a whole new set atomically.

mod config;
pub mod der;
mod jwk;
mod jwks;
mod key;
pub mod pem;

pub use config::{JwksConfig, KeySourceConfig};
pub use jwk::{parse_jwk, parse_jwk_or_jwks, parse_jwks, parse_remote_jwks};
pub use jwks::{JwksSource, JwksStats};
pub use key::{KeyMaterialKind, VerifyingKey};

use arc_swap::ArcSwap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

use crate::jwt::Algorithm;

/// Why keys could not be loaded or fetched.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// A key file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A key document or file is not usable; `origin` names it.
    #[error("{origin}: {detail}")]
    Invalid {
        /// File, URL or description of the source.
        origin: String,
        /// What is wrong.
        detail: String,
    },
    /// A key source configuration is inconsistent.
    #[error("key source configuration: {0}")]
    Config(String),
    /// Fetching a JWKS URL failed.
    #[error("fetching {url}: {detail}")]
    Fetch {
        /// The URL.
        url: String,
        /// What went wrong.
        detail: String,
    },
}

impl KeyError {
    pub(crate) fn invalid(origin: &str, detail: impl std::fmt::Display) -> Self {
        KeyError::Invalid {
            origin: origin.to_owned(),
            detail: detail.to_string(),
        }
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>, KeyError> {
    std::fs::read(path).map_err(|source| KeyError::Io {
        path: path.to_owned(),
        source,
    })
}

/// Loads public keys from PEM text: `PUBLIC KEY` (SPKI), `RSA PUBLIC KEY` (PKCS#1) and
/// `CERTIFICATE` blocks; other labels (private keys in particular) are refused.
pub fn keys_from_pem(
    text: &[u8],
    origin: &str,
    kid: Option<&str>,
    alg: Option<Algorithm>,
) -> Result<Vec<VerifyingKey>, KeyError> {
    let blocks = pem::parse(text).map_err(|e| KeyError::invalid(origin, e))?;
    let mut out = Vec::with_capacity(blocks.len());
    for block in blocks {
        let parsed = match block.label.as_str() {
            "PUBLIC KEY" => der::parse_spki(&block.der),
            "RSA PUBLIC KEY" => {
                der::rsa_components(&block.der).map(|_| der::PublicKeyDer::Rsa(block.der.clone()))
            }
            "CERTIFICATE" => der::parse_certificate(&block.der),
            l if l.contains("PRIVATE") => {
                return Err(KeyError::invalid(
                    origin,
                    "contains a private key; give the public key or certificate instead",
                ))
            }
            l => {
                return Err(KeyError::invalid(
                    origin,
                    format_args!("unsupported PEM block {l:?}"),
                ))
            }
        }
        .map_err(|e| KeyError::invalid(origin, e))?;
        out.push(VerifyingKey::from_public_der(parsed, kid, alg, origin)?);
    }
    Ok(out)
}

/// Loads a PEM file (see [`keys_from_pem`]).
pub fn load_pem_file(
    path: &Path,
    kid: Option<&str>,
    alg: Option<Algorithm>,
) -> Result<Vec<VerifyingKey>, KeyError> {
    let text = read_file(path)?;
    keys_from_pem(&text, &path.display().to_string(), kid, alg)
}

/// Loads a JWK or a JWKS file (the document's shape decides).
pub fn load_jwk_file(path: &Path, alg: Option<Algorithm>) -> Result<Vec<VerifyingKey>, KeyError> {
    let bytes = read_file(path)?;
    parse_jwk_or_jwks(&bytes, &path.display().to_string(), alg)
}

/// Loads an HMAC secret: the file's raw bytes, not trimmed. An empty secret loads (with a
/// warning) but never verifies anything.
pub fn load_secret_file(
    path: &Path,
    kid: Option<&str>,
    alg: Option<Algorithm>,
) -> Result<VerifyingKey, KeyError> {
    let bytes = read_file(path)?;
    let origin = path.display().to_string();
    if bytes.is_empty() {
        tracing::warn!(file = %origin, "HMAC secret file is empty; it will never verify a token");
    } else if bytes.len() < 32 {
        tracing::warn!(file = %origin, len = bytes.len(), "HMAC secret is shorter than 32 bytes");
    }
    VerifyingKey::hmac(&bytes, kid, alg, &origin)
}

/// One published set of keys. Immutable; rotation builds a new one.
#[derive(Debug, Default)]
pub struct KeySet {
    keys: Vec<Arc<VerifyingKey>>,
    fingerprints: Vec<u64>,
    generation: u64,
}

impl KeySet {
    fn build(keys: Vec<Arc<VerifyingKey>>, generation: u64) -> Self {
        let mut fingerprints: Vec<u64> = keys.iter().map(|k| k.fingerprint()).collect();
        fingerprints.sort_unstable();
        KeySet {
            keys,
            fingerprints,
            generation,
        }
    }

    /// All keys.
    pub fn keys(&self) -> &[Arc<VerifyingKey>] {
        &self.keys
    }
    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }
    /// Increases whenever the set of keys changes.
    pub fn generation(&self) -> u64 {
        self.generation
    }
    /// Whether a key with this fingerprint is still in the set (verified-token cache hits
    /// use this to drop tokens whose key was rotated out).
    #[inline]
    pub fn contains_fingerprint(&self, fp: u64) -> bool {
        self.fingerprints.binary_search(&fp).is_ok()
    }
    /// The keys a token's `kid` selects: exact, case-sensitive match only. Without a kid,
    /// every key.
    pub fn select<'a>(&'a self, kid: Option<&'a str>) -> impl Iterator<Item = &'a VerifyingKey> {
        self.keys
            .iter()
            .map(|k| &**k)
            .filter(move |k| kid.is_none_or(|want| k.kid() == Some(want)))
    }
}

struct Slot {
    name: String,
    keys: Vec<Arc<VerifyingKey>>,
}

pub(crate) struct StoreInner {
    current: ArcSwap<KeySet>,
    slots: Mutex<Vec<Slot>>,
    generation: AtomicU64,
    refreshers: Mutex<Vec<Weak<jwks::Shared>>>,
}

/// Identifies one source's keys in a [`KeyStore`], for replacing them on rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotId(usize);

/// The shared, cheaply clonable key store.
#[derive(Clone)]
pub struct KeyStore {
    inner: Arc<StoreInner>,
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStore")
            .field("keys", &self.inner.current.load().len())
            .finish()
    }
}

impl Default for KeyStore {
    fn default() -> Self {
        Self::new()
    }
}

impl KeyStore {
    /// An empty store.
    pub fn new() -> Self {
        KeyStore {
            inner: Arc::new(StoreInner {
                current: ArcSwap::from_pointee(KeySet::default()),
                slots: Mutex::new(Vec::new()),
                generation: AtomicU64::new(0),
                refreshers: Mutex::new(Vec::new()),
            }),
        }
    }

    /// A store holding one static source with these keys.
    pub fn with_keys(keys: impl IntoIterator<Item = VerifyingKey>) -> Self {
        let s = Self::new();
        s.add_source("static", keys);
        s
    }

    /// Adds a source's keys and publishes the new set.
    pub fn add_source(&self, name: &str, keys: impl IntoIterator<Item = VerifyingKey>) -> SlotId {
        let mut slots = self
            .inner
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        slots.push(Slot {
            name: name.to_owned(),
            keys: keys.into_iter().map(Arc::new).collect(),
        });
        let id = SlotId(slots.len() - 1);
        self.publish(&slots);
        id
    }

    /// Replaces one source's keys (rotation). Keys of other sources are untouched; the old
    /// keys of this source stay in use until this call.
    pub fn replace(&self, slot: SlotId, keys: impl IntoIterator<Item = VerifyingKey>) {
        let mut slots = self
            .inner
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(s) = slots.get_mut(slot.0) {
            s.keys = keys.into_iter().map(Arc::new).collect();
            tracing::debug!(source = %s.name, keys = s.keys.len(), "key source replaced");
        }
        self.publish(&slots);
    }

    fn publish(&self, slots: &[Slot]) {
        let mut all: Vec<Arc<VerifyingKey>> = Vec::new();
        for s in slots {
            for k in &s.keys {
                // The same key from two sources is kept once.
                if !all.iter().any(|x| x.fingerprint() == k.fingerprint()) {
                    all.push(Arc::clone(k));
                }
            }
        }
        let old = self.inner.current.load();
        let mut fps: Vec<u64> = all.iter().map(|k| k.fingerprint()).collect();
        fps.sort_unstable();
        let generation = if fps == old.fingerprints {
            old.generation
        } else {
            self.inner.generation.fetch_add(1, Ordering::Relaxed) + 1
        };
        self.inner
            .current
            .store(Arc::new(KeySet::build(all, generation)));
    }

    /// The current key set (lock-free read; hold the guard only briefly).
    #[inline]
    pub fn snapshot(&self) -> arc_swap::Guard<Arc<KeySet>> {
        self.inner.current.load()
    }

    /// The current key set as an owned `Arc`.
    pub fn current(&self) -> Arc<KeySet> {
        self.inner.current.load_full()
    }

    pub(crate) fn register_refresher(&self, r: &Arc<jwks::Shared>) {
        self.inner
            .refreshers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Arc::downgrade(r));
    }

    pub(crate) fn downgrade(&self) -> Weak<StoreInner> {
        Arc::downgrade(&self.inner)
    }

    pub(crate) fn from_inner(inner: Arc<StoreInner>) -> Self {
        KeyStore { inner }
    }

    /// Asks every JWKS URL source to refetch now, subject to each source's rate limit (an
    /// unknown `kid` may mean the issuer rotated). Returns receivers that change when an
    /// accepted refetch completes; empty when every source declined.
    pub fn request_refresh(&self) -> Vec<tokio::sync::watch::Receiver<u64>> {
        let refreshers = self
            .inner
            .refreshers
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        refreshers
            .iter()
            .filter_map(Weak::upgrade)
            .filter_map(|s| s.trigger())
            .collect()
    }

    /// Whether any JWKS URL source is serving a stale set (its last fetch failed).
    pub fn is_stale(&self) -> bool {
        self.inner
            .refreshers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter_map(Weak::upgrade)
            .any(|s| s.is_stale())
    }

    /// Builds a store from configured sources: files are loaded now; JWKS URL sources are
    /// created (empty) and returned so the caller can fetch and spawn them on its runtime.
    pub fn from_config(
        sources: &[KeySourceConfig],
    ) -> Result<(KeyStore, Vec<JwksSource>), KeyError> {
        let store = KeyStore::new();
        let mut urls = Vec::new();
        for src in sources {
            match src.load()? {
                config::Loaded::Keys(name, keys) => {
                    store.add_source(&name, keys);
                }
                config::Loaded::Url(cfg) => urls.push(JwksSource::new(&store, cfg)?),
            }
        }
        Ok((store, urls))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn select_is_exact_and_case_sensitive() {
        let a = VerifyingKey::hmac(&[1u8; 32], Some("k1"), None, "t").unwrap();
        let b = VerifyingKey::hmac(&[2u8; 32], Some("K1"), None, "t").unwrap();
        let c = VerifyingKey::hmac(&[3u8; 32], None, None, "t").unwrap();
        let store = KeyStore::with_keys([a, b, c]);
        let set = store.snapshot();
        assert_eq!(set.select(Some("k1")).count(), 1);
        assert_eq!(set.select(Some("K1")).count(), 1);
        assert_eq!(set.select(Some("k")).count(), 0);
        assert_eq!(set.select(Some("../k1")).count(), 0);
        assert_eq!(set.select(None).count(), 3);
    }

    #[test]
    fn rotation_changes_generation_only_when_keys_change() {
        let store = KeyStore::new();
        let slot = store.add_source(
            "s",
            [VerifyingKey::hmac(&[1u8; 32], None, None, "t").unwrap()],
        );
        let g1 = store.snapshot().generation();
        let fp = store.snapshot().keys()[0].fingerprint();
        store.replace(
            slot,
            [VerifyingKey::hmac(&[1u8; 32], None, None, "t").unwrap()],
        );
        assert_eq!(store.snapshot().generation(), g1);
        store.replace(
            slot,
            [VerifyingKey::hmac(&[2u8; 32], None, None, "t").unwrap()],
        );
        assert!(store.snapshot().generation() > g1);
        assert!(!store.snapshot().contains_fingerprint(fp));
    }
}
