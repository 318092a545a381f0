//! Property tests: random and mutated input never panics and never verifies.

use super::support::*;
use gateway::jwt::{b64, json, Algorithm, Verifier};
use proptest::prelude::*;
use std::sync::OnceLock;

struct Fixture {
    verifier: Verifier,
    tokens: Vec<String>,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let hs = pair(Algorithm::HS256, Some("h"));
        let es = pair(Algorithm::ES256, Some("e"));
        let ed = pair(Algorithm::EdDSA, None);
        let tokens = vec![
            mint(&hs, Some("h"), &claims()),
            mint(&es, Some("e"), &claims()),
            mint(&ed, None, &claims()),
        ];
        let verifier = verifier(vec![
            public_of(&hs, Some("h")),
            public_of(&es, Some("e")),
            public_of(&ed, None),
        ]);
        for t in &tokens {
            assert!(verifier.verify(t, NOW).is_ok());
        }
        Fixture { verifier, tokens }
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn random_strings_never_verify(s in ".{0,600}") {
        prop_assert!(fixture().verifier.verify(&s, NOW).is_err());
    }

    #[test]
    fn random_segments_never_verify(
        h in proptest::collection::vec(any::<u8>(), 0..200),
        p in proptest::collection::vec(any::<u8>(), 0..200),
        s in proptest::collection::vec(any::<u8>(), 0..130),
    ) {
        let t = format!("{}.{}.{}", b64::encode_url(&h), b64::encode_url(&p), b64::encode_url(&s));
        prop_assert!(fixture().verifier.verify(&t, NOW).is_err());
    }

    #[test]
    fn json_headers_with_random_signatures_never_verify(
        alg in prop::sample::select(vec!["HS256", "ES256", "EdDSA", "none", "RS256", "PS512", "ES384"]),
        kid in prop::option::of(prop::sample::select(vec!["h", "e", "x", "H"])),
        s in proptest::collection::vec(any::<u8>(), 0..130),
    ) {
        let mut h = serde_json::json!({"alg": alg});
        if let Some(k) = kid { h["kid"] = k.into(); }
        let t = format!("{}.{}.{}",
            b64::encode_url(h.to_string().as_bytes()),
            b64::encode_url(serde_json::Value::Object(claims()).to_string().as_bytes()),
            b64::encode_url(&s));
        prop_assert!(fixture().verifier.verify(&t, NOW).is_err());
    }

    #[test]
    fn mutated_valid_tokens_never_verify(
        which in 0usize..3,
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4),
    ) {
        let f = fixture();
        let orig = &f.tokens[which];
        let mut b = orig.as_bytes().to_vec();
        for (pos, byte) in edits {
            let i = pos % b.len();
            b[i] = byte;
        }
        if let Ok(t) = String::from_utf8(b) {
            if &t != orig {
                prop_assert!(f.verifier.verify(&t, NOW).is_err(), "{}", t);
            }
        }
    }

    #[test]
    fn base64_round_trips_and_never_panics(data in proptest::collection::vec(any::<u8>(), 0..300), junk in ".{0,100}") {
        let e = b64::encode_url(&data);
        prop_assert_eq!(b64::decode_url(e.as_bytes()).unwrap(), data);
        let _ = b64::decode_url(junk.as_bytes());
        let _ = b64::decode_std_lenient(junk.as_bytes());
    }

    #[test]
    fn json_parser_never_panics(s in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = json::parse_value(&s);
    }

    #[test]
    fn key_parsers_never_panic(s in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = gateway::keys::parse_jwk_or_jwks(&s, "prop", None);
        let _ = gateway::keys::keys_from_pem(&s, "prop", None, None);
        let _ = gateway::keys::der::parse_spki(&s);
        let _ = gateway::keys::der::parse_certificate(&s);
    }
}
