//! Fuzzes token parsing and verification: arbitrary bytes as a token against a verifier with
//! HMAC, ECDSA and Ed25519 keys. Must never panic and never accept.
#![no_main]

use gateway::jwt::{decode_unverified, Algorithm, Verifier, VerifierConfig};
use gateway::keys::{KeyStore, VerifyingKey};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn verifier() -> &'static Verifier {
    static V: OnceLock<Verifier> = OnceLock::new();
    V.get_or_init(|| {
        // Fixed public material; nothing the fuzzer produces can carry a valid signature.
        let ed = VerifyingKey::ed25519(&[0x3b; 32], Some("ed"), None, "fuzz");
        let hs = VerifyingKey::hmac(
            b"fuzz-secret-0123456789abcdef0123",
            Some("hs"),
            None,
            "fuzz",
        );
        let keys: Vec<VerifyingKey> = [ed, hs].into_iter().filter_map(Result::ok).collect();
        let cfg = VerifierConfig {
            issuers: vec!["https://issuer/".into()],
            audiences: vec!["api".into()],
            algorithms: Algorithm::ALL.to_vec(),
            ..Default::default()
        };
        match Verifier::new(cfg, KeyStore::with_keys(keys)) {
            Ok(v) => v,
            Err(e) => panic!("fuzz setup: {e}"),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let token = String::from_utf8_lossy(data);
    let _ = decode_unverified(&token, 16 * 1024);
    let r = verifier().verify(&token, 1_700_000_000);
    assert!(r.is_err(), "fuzzer input verified: {token}");
    // A second call exercises the cache path with the same input.
    assert!(verifier().verify(&token, 1_700_000_000).is_err());
});
