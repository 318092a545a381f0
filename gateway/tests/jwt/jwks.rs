//! JWKS over HTTPS against a local server with a self-signed CA (rcgen): rotation, unknown
//! kid refetch with rate limit, server down and bad documents keep the old keys, max-age.

use super::support::jwks_server::JwksServer as TestServer;
use super::support::*;
use gateway::jwt::{Algorithm, CacheConfig, Verifier, VerifierConfig};
use gateway::keys::{JwksConfig, JwksSource, KeyStore};
use serde_json::{json, Value};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

impl TestServer {
    fn set_keys(&self, keys: &[&Pair]) {
        let jwks: Vec<Value> = keys.iter().map(|p| jwk_of(p)).collect();
        *self.state.body.lock().unwrap() = json!({ "keys": jwks }).to_string();
    }

    fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        let blocks = gateway::keys::pem::parse(self.ca_pem.as_bytes()).unwrap();
        roots
            .add(rustls::pki_types::CertificateDer::from(
                blocks[0].der.clone(),
            ))
            .unwrap();
        roots
    }

    fn config(&self) -> JwksConfig {
        let mut c = JwksConfig::new(self.url.clone());
        c.refresh = Duration::from_secs(3600);
        c.min_refresh = Duration::from_millis(100);
        c.max_refresh = Duration::from_secs(3600);
        c.refetch_interval = Duration::from_secs(2);
        c.retry = Duration::from_secs(3600);
        c.timeout = Duration::from_secs(5);
        c
    }
}

/// The JWK of an Ed25519 test pair.
fn jwk_of(p: &Pair) -> Value {
    let pk = p.signer.public_key().unwrap();
    json!({"kty":"OKP","crv":"Ed25519","use":"sig","alg":"EdDSA","kid": kid_of(p), "x": b64(&pk)})
}

fn kid_of(p: &Pair) -> String {
    // A stable kid derived from the public key, so tests need no bookkeeping.
    let pk = p.signer.public_key().unwrap();
    b64(&pk[..6])
}

fn token(p: &Pair) -> String {
    mint(p, Some(&kid_of(p)), &claims())
}

fn verifier_for(store: &KeyStore) -> Verifier {
    let cfg = VerifierConfig {
        leeway: 30,
        cache: CacheConfig::default(),
        ..Default::default()
    };
    Verifier::new(cfg, store.clone()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_without_restart() {
    let srv = TestServer::start().await;
    let (a, b) = (pair(Algorithm::EdDSA, None), pair(Algorithm::EdDSA, None));
    srv.set_keys(&[&a]);
    let store = KeyStore::new();
    let src = JwksSource::with_roots(&store, srv.config(), srv.roots()).unwrap();
    src.refresh().await.unwrap();
    let v = verifier_for(&store);
    assert!(v.verify(&token(&a), NOW).is_ok());
    assert!(v.verify(&token(&a), NOW).is_ok()); // cached
    assert_eq!(
        v.verify(&token(&b), NOW).unwrap_err().reason(),
        "key_not_found"
    );
    // Issuer publishes the new key beside the old one: both verify.
    srv.set_keys(&[&a, &b]);
    src.refresh().await.unwrap();
    assert!(v.verify(&token(&a), NOW).is_ok());
    assert!(v.verify(&token(&b), NOW).is_ok());
    // Old key retired: its (cached) tokens stop verifying.
    srv.set_keys(&[&b]);
    src.refresh().await.unwrap();
    assert_eq!(
        v.verify(&token(&a), NOW).unwrap_err().reason(),
        "key_not_found"
    );
    assert!(v.verify(&token(&b), NOW).is_ok());
    let st = src.stats();
    assert_eq!(
        (st.fetches_ok, st.fetches_failed, st.keys, st.stale),
        (3, 0, 1, false)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_kid_refetch_is_single_flight_and_rate_limited() {
    let srv = TestServer::start().await;
    let (a, b, c) = (
        pair(Algorithm::EdDSA, None),
        pair(Algorithm::EdDSA, None),
        pair(Algorithm::EdDSA, None),
    );
    srv.set_keys(&[&a]);
    let store = KeyStore::new();
    let src = JwksSource::with_roots(&store, srv.config(), srv.roots()).unwrap();
    let next = src.refresh().await.unwrap();
    let _task = src.spawn(next);
    let v = Arc::new(verifier_for(&store));
    assert_eq!(srv.hits(), 1);
    // Wait out the rate-limit window of the initial fetch.
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    // The issuer rotates; the first token with the new kid triggers a refetch and, with
    // verify_async, passes after it.
    srv.set_keys(&[&a, &b]);
    let r = v
        .verify_async(&token(&b), NOW, Duration::from_secs(5))
        .await;
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(srv.hits(), 2);
    // A flood of random kids right after: no further fetch within the window.
    srv.set_keys(&[&a, &b, &c]);
    let mut tasks = Vec::new();
    for i in 0..64 {
        let v = Arc::clone(&v);
        let c_tok = token(&c);
        tasks.push(tokio::spawn(async move {
            let p = pair(Algorithm::HS256, None);
            let t = mint(&p, Some(&format!("random-{i}")), &claims());
            let r = v.verify_async(&t, NOW, Duration::from_millis(200)).await;
            assert_eq!(r.unwrap_err().reason(), "key_not_found");
            // The unknown-but-real kid of `c` is also refused while rate-limited.
            v.verify(&c_tok, NOW).is_ok()
        }));
    }
    for t in tasks {
        assert!(
            !t.await.unwrap(),
            "c verified before its refetch was allowed"
        );
    }
    assert_eq!(srv.hits(), 2, "rate limit held");
    assert!(src.stats().refetches_rate_limited >= 64);
    // After the window, one more refetch is granted and picks up `c`; concurrent askers
    // share it (single flight).
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let v = Arc::clone(&v);
        let t = token(&c);
        tasks.push(tokio::spawn(async move {
            v.verify_async(&t, NOW, Duration::from_secs(5))
                .await
                .is_ok()
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += usize::from(t.await.unwrap());
    }
    assert!(ok >= 1, "the refetch picked up the new key");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(v.verify(&token(&c), NOW).is_ok());
    assert_eq!(srv.hits(), 3, "one fetch for all concurrent askers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_keep_the_last_good_set() {
    let srv = TestServer::start().await;
    let a = pair(Algorithm::EdDSA, None);
    srv.set_keys(&[&a]);
    let store = KeyStore::new();
    let src = JwksSource::with_roots(&store, srv.config(), srv.roots()).unwrap();
    src.refresh().await.unwrap();
    let v = verifier_for(&store);
    let t = token(&a);
    assert!(v.verify(&t, NOW).is_ok());
    let good_body = srv.state.body.lock().unwrap().clone();

    // Server down.
    srv.state.down.store(true, Ordering::SeqCst);
    assert!(src.refresh().await.is_err());
    assert!(src.stats().stale && store.is_stale());
    assert!(v.verify_uncached(&t, NOW).is_ok(), "old keys still in use");
    srv.state.down.store(false, Ordering::SeqCst);

    // Bad JSON, duplicate members, empty key set, no usable key, HTTP error.
    let bads = [
        "{not json".to_owned(),
        r#"{"keys":[],"keys":[]}"#.to_owned(),
        r#"{"keys":[]}"#.to_owned(),
        r#"{"keys":[{"kty":"RSA","use":"enc","n":"AQAB","e":"AQAB"}]}"#.to_owned(),
        "[]".to_owned(),
        "x".repeat(2 << 20),
    ];
    for (i, body) in bads.iter().enumerate() {
        *srv.state.body.lock().unwrap() = body.clone();
        assert!(src.refresh().await.is_err(), "bad body {i} accepted");
        assert!(
            v.verify_uncached(&t, NOW).is_ok(),
            "keys kept after bad body {i}"
        );
    }
    *srv.state.body.lock().unwrap() = good_body;
    *srv.state.status.lock().unwrap() = 500;
    assert!(src.refresh().await.is_err());
    assert!(v.verify_uncached(&t, NOW).is_ok());
    let st = src.stats();
    assert_eq!(st.fetches_failed, 8);
    assert!(st.stale);

    // Recovery clears the stale flag.
    *srv.state.status.lock().unwrap() = 200;
    src.refresh().await.unwrap();
    assert!(!src.stats().stale && !store.is_stale());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_control_max_age_within_bounds() {
    let srv = TestServer::start().await;
    let a = pair(Algorithm::EdDSA, None);
    srv.set_keys(&[&a]);
    let store = KeyStore::new();
    let mut cfg = srv.config();
    cfg.refresh = Duration::from_secs(300);
    cfg.min_refresh = Duration::from_secs(60);
    cfg.max_refresh = Duration::from_secs(3600);
    let src = JwksSource::with_roots(&store, cfg, srv.roots()).unwrap();
    assert_eq!(src.refresh().await.unwrap(), Duration::from_secs(300));
    for (cc, want) in [
        ("public, max-age=600", 600),
        ("max-age=5", 60),
        ("max-age=999999", 3600),
        ("no-store", 60),
    ] {
        *srv.state.cache_control.lock().unwrap() = Some(cc.into());
        assert_eq!(
            src.refresh().await.unwrap(),
            Duration::from_secs(want),
            "{cc}"
        );
    }
    // The background task follows it: max-age=0 clamped to a 100 ms floor refreshes often.
    let store2 = KeyStore::new();
    let src2 = JwksSource::with_roots(&store2, srv.config(), srv.roots()).unwrap();
    *srv.state.cache_control.lock().unwrap() = Some("max-age=0".into());
    let before = srv.hits();
    let task = src2.spawn(Duration::ZERO);
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    task.abort();
    let n = srv.hits() - before;
    assert!((3..=15).contains(&n), "{n} background fetches in 1 s");
    assert_eq!(store2.snapshot().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_certificates_and_plain_http_are_refused() {
    let srv = TestServer::start().await;
    let a = pair(Algorithm::EdDSA, None);
    srv.set_keys(&[&a]);
    let store = KeyStore::new();
    // Trust a different CA than the server's.
    let other = TestServer::start().await;
    let src = JwksSource::with_roots(&store, srv.config(), other.roots()).unwrap();
    assert!(src.refresh().await.is_err());
    assert!(store.snapshot().is_empty());
    assert!(JwksSource::with_roots(
        &store,
        JwksConfig::new(srv.url.replace("https", "http")),
        srv.roots()
    )
    .is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_fetches_a_jwks_url() {
    let srv = TestServer::start().await;
    let a = pair(Algorithm::EdDSA, None);
    srv.set_keys(&[&a]);
    let dir = TempDir::new("jwks-cli");
    let ca = dir.write("ca.pem", &srv.ca_pem);
    let t = token(&a);
    let url = srv.url.clone();
    let now = NOW.to_string();
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        gateway(
            &[
                "token",
                "verify",
                "--json",
                "--jwks",
                &url,
                "--ca-file",
                &ca,
                "--now",
                &now,
                &t,
            ],
            None,
        )
    })
    .await
    .unwrap();
    assert_eq!(code, 0, "{out} {err}");
    // Server down: no keys at all is a key error (exit 2).
    srv.state.down.store(true, Ordering::SeqCst);
    let url = srv.url.clone();
    let ca = dir.path().join("ca.pem").display().to_string();
    let t = token(&a);
    let (code, _, _) = tokio::task::spawn_blocking(move || {
        gateway(
            &["token", "verify", "--jwks", &url, "--ca-file", &ca, &t],
            None,
        )
    })
    .await
    .unwrap();
    assert_eq!(code, 2);
}
