//! JWT verification cost per algorithm against the raw ring verification of the same
//! signature (the floor), the verified-token cache hit, and the cost of named issuers: the
//! verify path with three `[[jwt.issuer]]`s (the token's the last one looked at) against
//! one, and with the per-source verification budget.
//!
//! `cargo bench -p gateway --bench jwt -- --warm-up-time 1 --measurement-time 3`
//! (`-- issuers` for the issuer comparison only)

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use gateway::jwt::{Algorithm, CacheConfig, SigningKey, Verifier, VerifierConfig};
use gateway::keys::{self, KeyStore, VerifyingKey};
use ring::signature::{self, KeyPair};
use ring::{hmac, rand::SystemRandom};
use serde_json::json;
use std::path::PathBuf;

const NOW: i64 = 1_700_000_000;

fn fixture(name: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data/jwt")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A realistic access token's claims.
fn claims() -> serde_json::Map<String, serde_json::Value> {
    match json!({
        "iss": "https://issuer.example.com/",
        "sub": "248289761001",
        "aud": ["api.example.com", "web"],
        "iat": NOW - 60,
        "exp": NOW + 3600,
        "scope": "openid profile read:orders write:orders",
        "client_id": "s6BhdRkqt3",
        "jti": "9f1c2a3b-0d4e-4f5a-8b6c-7d8e9f0a1b2c",
    }) {
        serde_json::Value::Object(m) => m,
        _ => unreachable!(),
    }
}

/// The raw ring verification of (message, signature).
type Floor = Box<dyn Fn(&[u8], &[u8]) -> bool>;

struct Setup {
    name: &'static str,
    token: String,
    key: VerifyingKey,
    floor: Floor,
}

fn setups() -> Vec<Setup> {
    let rng = SystemRandom::new();
    let mut out = Vec::new();
    for (name, alg, ring_alg) in [
        (
            "RS256-2048",
            Algorithm::RS256,
            &signature::RSA_PKCS1_2048_8192_SHA256,
        ),
        (
            "PS256-2048",
            Algorithm::PS256,
            &signature::RSA_PSS_2048_8192_SHA256,
        ),
    ] {
        let signer = SigningKey::from_pem(&fixture("rsa2048.key"), alg).unwrap();
        let pk = signer.public_key().unwrap();
        let key = keys::keys_from_pem(&fixture("rsa2048.pub.pem"), "bench", Some("k"), Some(alg))
            .unwrap()
            .remove(0);
        let token = signer.sign(kid_header(), &claims()).unwrap();
        out.push(Setup {
            name,
            token,
            key,
            floor: Box::new(move |m, s| {
                signature::UnparsedPublicKey::new(ring_alg, &pk)
                    .verify(m, s)
                    .is_ok()
            }),
        });
    }
    let doc =
        signature::EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .unwrap();
    let kp = signature::EcdsaKeyPair::from_pkcs8(
        &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        doc.as_ref(),
        &rng,
    )
    .unwrap();
    let pk = kp.public_key().as_ref().to_vec();
    let signer = SigningKey::from_der(doc.as_ref(), Algorithm::ES256).unwrap();
    out.push(Setup {
        name: "ES256",
        token: signer.sign(kid_header(), &claims()).unwrap(),
        key: VerifyingKey::ec_point(gateway::jwt::KeyFamily::EcP256, &pk, Some("k"), None, "b")
            .unwrap(),
        floor: Box::new(move |m, s| {
            signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, &pk)
                .verify(m, s)
                .is_ok()
        }),
    });
    let doc = signature::Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let kp = signature::Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap();
    let pk = kp.public_key().as_ref().to_vec();
    let signer = SigningKey::from_der(doc.as_ref(), Algorithm::EdDSA).unwrap();
    out.push(Setup {
        name: "EdDSA",
        token: signer.sign(kid_header(), &claims()).unwrap(),
        key: VerifyingKey::ed25519(&pk, Some("k"), None, "b").unwrap(),
        floor: Box::new(move |m, s| {
            signature::UnparsedPublicKey::new(&signature::ED25519, &pk)
                .verify(m, s)
                .is_ok()
        }),
    });
    let secret = b"bench-secret-0123456789abcdef0123456789".to_vec();
    let signer = SigningKey::hmac(&secret, Algorithm::HS256).unwrap();
    let hk = hmac::Key::new(hmac::HMAC_SHA256, &secret);
    out.push(Setup {
        name: "HS256",
        token: signer.sign(kid_header(), &claims()).unwrap(),
        key: VerifyingKey::hmac(&secret, Some("k"), Some(Algorithm::HS256), "b").unwrap(),
        floor: Box::new(move |m, s| hmac::verify(&hk, m, s).is_ok()),
    });
    out
}

fn kid_header() -> serde_json::Map<String, serde_json::Value> {
    let mut h = serde_json::Map::new();
    h.insert("typ".into(), "at+jwt".into());
    h.insert("kid".into(), "k".into());
    h
}

fn config(cache: bool) -> VerifierConfig {
    VerifierConfig {
        issuers: vec!["https://issuer.example.com/".into()],
        audiences: vec!["api.example.com".into()],
        required_claims: vec!["sub".into()],
        cache: CacheConfig {
            enabled: cache,
            ..Default::default()
        },
        ..Default::default()
    }
}

fn bench(c: &mut Criterion) {
    for s in setups() {
        let (msg, sig) = s.token.rsplit_once('.').unwrap();
        let sig = gateway::jwt::b64::decode_url(sig.as_bytes()).unwrap();
        assert!((s.floor)(msg.as_bytes(), &sig));
        let v = Verifier::new(config(false), KeyStore::with_keys([s.key])).unwrap();
        v.verify_uncached(&s.token, NOW).unwrap();
        let mut g = c.benchmark_group(s.name);
        g.bench_function("ring_floor", |b| {
            b.iter(|| (s.floor)(black_box(msg.as_bytes()), black_box(&sig)))
        });
        g.bench_function("verify", |b| {
            b.iter(|| v.verify_uncached(black_box(&s.token), NOW).is_ok())
        });
        g.finish();
    }
    // Cache hit, with a realistic cache population.
    let s = setups().pop().unwrap();
    let v = Verifier::new(config(true), KeyStore::with_keys([s.key])).unwrap();
    let signer_secret = b"bench-secret-0123456789abcdef0123456789";
    let signer = SigningKey::hmac(signer_secret, Algorithm::HS256).unwrap();
    for i in 0..10_000 {
        let mut cl = claims();
        cl.insert("n".into(), i.into());
        let t = signer.sign(kid_header(), &cl).unwrap();
        v.verify(&t, NOW).unwrap();
    }
    v.verify(&s.token, NOW).unwrap();
    c.bench_function("cache_hit", |b| {
        b.iter(|| v.verify(black_box(&s.token), NOW).is_ok())
    });
}

/// A verifier with `n` named issuers from the fixture keys (`[[jwt.issuer]]`, keys from
/// PEM and secret files as the gateway loads them); the bench token's issuer is the last.
fn issuers_verifier(n: usize, alg: Algorithm, budget: bool) -> Verifier {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/jwt");
    let key = |file: &str, alg: &str| {
        format!(
            "{{ {kind} = \"{}\", kid = \"k\", alg = \"{alg}\" }}",
            dir.join(file).display(),
            kind = if file.ends_with(".secret") {
                "secret_file"
            } else {
                "pem"
            },
        )
    };
    let own = match alg {
        Algorithm::HS256 => key("hs.secret", "HS256"),
        _ => key("ec256.pub.pem", "ES256"),
    };
    let others = [
        key("rsa2048.pub.pem", "RS256"),
        key("ed25519.pub.pem", "EdDSA"),
    ];
    let mut text = format!(
        "audiences = [\"api.example.com\"]\nrequired_claims = [\"sub\"]\ncache = {{ enabled = false }}\nverify_budget = {{ enabled = {budget}, rate = \"1000000/s\", burst = 1000000 }}\n"
    );
    for (i, k) in others.iter().take(n - 1).enumerate() {
        text += &format!("[[issuer]]\nname = \"other{i}\"\niss = \"https://other{i}.example.com/\"\nkeys = [{k}]\n");
    }
    text += &format!(
        "[[issuer]]\nname = \"ours\"\niss = \"https://issuer.example.com/\"\nkeys = [{own}]\n"
    );
    let cfg: VerifierConfig = toml::from_str(&text).unwrap();
    Verifier::load(cfg, KeyStore::new()).unwrap().0
}

fn bench_issuers(c: &mut Criterion) {
    let source: std::net::IpAddr = "192.0.2.1".parse().unwrap();
    for (name, alg, signer) in [
        (
            "ES256",
            Algorithm::ES256,
            SigningKey::from_pem(&fixture("ec256.key"), Algorithm::ES256).unwrap(),
        ),
        (
            "HS256",
            Algorithm::HS256,
            SigningKey::hmac(&fixture("hs.secret"), Algorithm::HS256).unwrap(),
        ),
    ] {
        let token = signer.sign(kid_header(), &claims()).unwrap();
        let mut g = c.benchmark_group(format!("issuers/{name}"));
        for n in [1, 3] {
            let v = issuers_verifier(n, alg, false);
            assert_eq!(
                v.verify_uncached(&token, NOW).unwrap().issuer_name(),
                "ours"
            );
            g.bench_function(format!("{n}"), |b| {
                b.iter(|| v.verify_uncached(black_box(&token), NOW).is_ok())
            });
        }
        let v = issuers_verifier(3, alg, true);
        assert!(v.verify_from(&token, NOW, source).is_ok());
        g.bench_function("3+budget", |b| {
            b.iter(|| v.verify_from(black_box(&token), NOW, source).is_ok())
        });
        g.finish();
    }
}

criterion_group!(benches, bench, bench_issuers);
criterion_main!(benches);
