//! The verified-token cache: hits, time re-checks, rotation, bounds, and concurrency.

use super::support::*;
use gateway::jwt::{Algorithm, CacheConfig, Verifier, VerifierConfig};
use gateway::keys::KeyStore;
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

fn cached(store: KeyStore, cache: CacheConfig) -> Verifier {
    let cfg = VerifierConfig {
        cache,
        leeway: 0,
        ..Default::default()
    };
    Verifier::new(cfg, store).unwrap()
}

#[test]
fn hits_share_the_entry_and_recheck_time() {
    let p = pair(Algorithm::ES256, None);
    let v = cached(
        KeyStore::with_keys([public_of(&p, None)]),
        CacheConfig::default(),
    );
    let mut c = claims();
    c.insert("nbf".into(), json!(NOW - 5));
    c.insert("exp".into(), json!(NOW + 10));
    let t = mint(&p, None, &c);
    let a = v.verify(&t, NOW).unwrap();
    let b = v.verify(&t, NOW).unwrap();
    assert!(Arc::ptr_eq(&a, &b), "second verify is a cache hit");
    let st = v.cache_stats().unwrap();
    assert_eq!((st.hits, st.entries), (1, 1));
    // exp and nbf are checked on every hit.
    assert_eq!(v.verify(&t, NOW + 10).unwrap_err().reason(), "expired");
    assert_eq!(v.verify(&t, NOW - 6).unwrap_err().reason(), "not_yet_valid");
    assert!(v.verify(&t, NOW + 9).is_ok());
}

#[test]
fn failures_are_never_cached() {
    let p = pair(Algorithm::HS256, None);
    let v = cached(
        KeyStore::with_keys([public_of(&p, None)]),
        CacheConfig::default(),
    );
    let t = mint(&p, None, &claims());
    let (head, _) = t.rsplit_once('.').unwrap();
    let forged = format!("{head}.{}", b64(&[0u8; 32]));
    for _ in 0..3 {
        assert_eq!(
            v.verify(&forged, NOW).unwrap_err().reason(),
            "bad_signature"
        );
    }
    assert_eq!(v.cache_stats().unwrap().entries, 0);
    // An expired token is not cached either, and a valid one afterwards is.
    let mut c = claims();
    c.insert("exp".into(), json!(NOW - 1));
    assert!(v.verify(&mint(&p, None, &c), NOW).is_err());
    assert_eq!(v.cache_stats().unwrap().entries, 0);
    v.verify(&t, NOW).unwrap();
    assert_eq!(v.cache_stats().unwrap().entries, 1);
    // A cached token's prefix/suffix variants are separate (full-token comparison).
    assert!(v.verify(&format!("{t}A"), NOW).is_err());
    assert!(v.verify(&t[..t.len() - 1], NOW).is_err());
}

#[test]
fn rotation_invalidates_entries_of_removed_keys() {
    let old = pair(Algorithm::EdDSA, Some("old"));
    let new = pair(Algorithm::EdDSA, Some("new"));
    let store = KeyStore::new();
    let slot = store.add_source("rotating", [public_of(&old, Some("old"))]);
    let v = cached(store.clone(), CacheConfig::default());
    let t_old = mint(&old, Some("old"), &claims());
    v.verify(&t_old, NOW).unwrap();
    v.verify(&t_old, NOW).unwrap();
    assert_eq!(v.cache_stats().unwrap().hits, 1);
    // Overlap: both keys present, old tokens keep hitting.
    store.replace(
        slot,
        [public_of(&old, Some("old")), public_of(&new, Some("new"))],
    );
    v.verify(&t_old, NOW).unwrap();
    assert_eq!(v.cache_stats().unwrap().hits, 2);
    // Old key gone: the cached entry no longer counts.
    store.replace(slot, [public_of(&new, Some("new"))]);
    assert_eq!(v.verify(&t_old, NOW).unwrap_err().reason(), "key_not_found");
    assert!(v.verify(&mint(&new, Some("new"), &claims()), NOW).is_ok());
}

#[test]
fn bounded_by_entries_bytes_and_token_size() {
    let p = pair(Algorithm::HS256, None);
    let cfg = CacheConfig {
        max_entries: 640,
        max_bytes: 10 << 20,
        max_token_bytes: 600,
        ..Default::default()
    };
    let v = cached(KeyStore::with_keys([public_of(&p, None)]), cfg);
    for i in 0..5_000 {
        let mut c = claims();
        c.insert("n".into(), json!(i));
        v.verify(&mint(&p, None, &c), NOW).unwrap();
    }
    let st = v.cache_stats().unwrap();
    assert!(st.entries <= 640, "{st:?}");
    assert!(st.evictions > 0);
    // Over the size cap: verified, not cached.
    let mut c = claims();
    c.insert("big".into(), json!("x".repeat(1_000)));
    let big = mint(&p, None, &c);
    let a = v.verify(&big, NOW).unwrap();
    let b = v.verify(&big, NOW).unwrap();
    assert!(!Arc::ptr_eq(&a, &b));
    // Byte bound.
    let cfg = CacheConfig {
        max_entries: 1_000_000,
        max_bytes: 64 * 2_000,
        max_token_bytes: 8_192,
        ..Default::default()
    };
    let v = cached(KeyStore::with_keys([public_of(&p, None)]), cfg);
    for i in 0..2_000 {
        let mut c = claims();
        c.insert("n".into(), json!(i));
        v.verify(&mint(&p, None, &c), NOW).unwrap();
    }
    let st = v.cache_stats().unwrap();
    assert!(st.bytes <= 64 * 2_000, "{st:?}");
    assert!(st.entries < 2_000, "{st:?}");
}

/// Many threads verifying a shared token mix while another thread rotates keys: no
/// token is ever accepted after its key is gone, and everything stays consistent.
#[test]
fn concurrent_hits_with_rotation() {
    let a = pair(Algorithm::HS256, Some("a"));
    let b = pair(Algorithm::HS256, Some("b"));
    let store = KeyStore::new();
    let slot = store.add_source("rot", [public_of(&a, Some("a")), public_of(&b, Some("b"))]);
    let cfg = CacheConfig {
        max_entries: 256,
        ..Default::default()
    };
    let v = Arc::new(cached(store.clone(), cfg));
    let tokens: Arc<Vec<(String, bool)>> = Arc::new(
        (0..400)
            .map(|i| {
                let mut c = claims();
                c.insert("n".into(), json!(i));
                if i % 2 == 0 {
                    (mint(&a, Some("a"), &c), true)
                } else {
                    (mint(&b, Some("b"), &c), false)
                }
            })
            .collect(),
    );
    // Phase counter: even = both keys loaded; odd = only key "b".
    let phase = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let oks = Arc::new(AtomicU64::new(0));
    let mut handles = Vec::new();
    for t in 0..8 {
        let (v, tokens, phase, stop, oks) = (
            Arc::clone(&v),
            Arc::clone(&tokens),
            Arc::clone(&phase),
            Arc::clone(&stop),
            Arc::clone(&oks),
        );
        handles.push(std::thread::spawn(move || {
            let mut i = t * 7;
            while !stop.load(Ordering::Relaxed) {
                let (tok, is_a) = &tokens[i % tokens.len()];
                // If "a" was absent for the whole call, an "a" token must not pass.
                let before = phase.load(Ordering::SeqCst);
                let r = v.verify(tok, NOW);
                let after = phase.load(Ordering::SeqCst);
                if *is_a && before == after && before % 2 == 1 {
                    assert!(r.is_err(), "token of a removed key accepted");
                }
                if !*is_a {
                    assert!(r.is_ok(), "key b is always loaded: {r:?}");
                }
                if r.is_ok() {
                    oks.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
            }
        }));
    }
    for round in 0..40 {
        std::thread::sleep(std::time::Duration::from_millis(5));
        if round % 2 == 0 {
            // Remove "a": publish the store first, then the phase (the phase lags the store).
            store.replace(slot, [public_of(&b, Some("b"))]);
            phase.fetch_add(1, Ordering::SeqCst);
        } else {
            phase.fetch_add(1, Ordering::SeqCst);
            store.replace(slot, [public_of(&a, Some("a")), public_of(&b, Some("b"))]);
        }
    }
    stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().expect("worker panicked");
    }
    let st = v.cache_stats().unwrap();
    assert!(st.hits > 1_000, "{st:?}");
    assert!(st.entries <= 256, "{st:?}");
    assert!(oks.load(Ordering::Relaxed) > 0);
}
