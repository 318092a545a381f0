//! Differential test against an independent implementation (the `jsonwebtoken` crate):
//! tokens minted by either verify with the other, and both agree on mutated tokens.

use super::support::*;
use gateway::jwt::{now_unix, Algorithm, Verifier, VerifierConfig};
use gateway::keys::{self, KeyStore};
use jsonwebtoken as jwtk;
use serde_json::{json, Map, Value};

struct Case {
    ours: Algorithm,
    theirs: jwtk::Algorithm,
    enc: jwtk::EncodingKey,
    dec: jwtk::DecodingKey,
    pub_pem: Option<Vec<u8>>,
    signer: gateway::jwt::SigningKey,
}

const SECRET: &[u8] = b"differential-secret-0123456789abcdef-0123456789abcdef-0123456789";

fn case(ours: Algorithm) -> Case {
    use jwtk::Algorithm as J;
    let theirs = match ours {
        Algorithm::HS256 => J::HS256,
        Algorithm::HS384 => J::HS384,
        Algorithm::HS512 => J::HS512,
        Algorithm::RS256 => J::RS256,
        Algorithm::RS384 => J::RS384,
        Algorithm::RS512 => J::RS512,
        Algorithm::PS256 => J::PS256,
        Algorithm::PS384 => J::PS384,
        Algorithm::PS512 => J::PS512,
        Algorithm::ES256 => J::ES256,
        Algorithm::ES384 => J::ES384,
        _ => J::EdDSA,
    };
    let (privf, pubf) = match ours.family() {
        gateway::jwt::KeyFamily::Rsa => ("rsa2048.key", "rsa2048.pub.pem"),
        gateway::jwt::KeyFamily::EcP256 => ("ec256.key", "ec256.pub.pem"),
        gateway::jwt::KeyFamily::EcP384 => ("ec384.key", "ec384.pub.pem"),
        gateway::jwt::KeyFamily::Ed25519 => ("ed25519.key", "ed25519.pub.pem"),
        _ => ("", ""),
    };
    if privf.is_empty() {
        return Case {
            ours,
            theirs,
            enc: jwtk::EncodingKey::from_secret(SECRET),
            dec: jwtk::DecodingKey::from_secret(SECRET),
            pub_pem: None,
            signer: gateway::jwt::SigningKey::hmac(SECRET, ours).unwrap(),
        };
    }
    let (pk, sk) = (read(pubf), read(privf));
    let (enc, dec) = match ours.family() {
        gateway::jwt::KeyFamily::Rsa => (
            jwtk::EncodingKey::from_rsa_pem(&sk).unwrap(),
            jwtk::DecodingKey::from_rsa_pem(&pk).unwrap(),
        ),
        gateway::jwt::KeyFamily::Ed25519 => (
            jwtk::EncodingKey::from_ed_pem(&sk).unwrap(),
            jwtk::DecodingKey::from_ed_pem(&pk).unwrap(),
        ),
        _ => (
            jwtk::EncodingKey::from_ec_pem(&sk).unwrap(),
            jwtk::DecodingKey::from_ec_pem(&pk).unwrap(),
        ),
    };
    Case {
        ours,
        theirs,
        enc,
        dec,
        pub_pem: Some(pk),
        signer: gateway::jwt::SigningKey::from_pem(&sk, ours).unwrap(),
    }
}

fn claims_now() -> Map<String, Value> {
    let now = now_unix();
    obj(
        json!({"iss":"https://issuer.test/","aud":["api","x"],"sub":"s","iat":now-5,"exp":now+3600,"nbf":now-5}),
    )
}

fn ours(c: &Case) -> Verifier {
    let mut cfg = VerifierConfig {
        issuers: vec!["https://issuer.test/".into()],
        audiences: vec!["api".into()],
        algorithms: vec![c.ours],
        ..Default::default()
    };
    cfg.cache.enabled = false;
    let keys = match &c.pub_pem {
        None => vec![keys::VerifyingKey::hmac(SECRET, None, Some(c.ours), "t").unwrap()],
        Some(pem) => keys::keys_from_pem(pem, "t", None, Some(c.ours)).unwrap(),
    };
    Verifier::new(cfg, KeyStore::with_keys(keys)).unwrap()
}

fn theirs_ok(c: &Case, token: &str) -> bool {
    let mut v = jwtk::Validation::new(c.theirs);
    v.set_issuer(&["https://issuer.test/"]);
    v.set_audience(&["api"]);
    v.validate_nbf = true;
    v.leeway = 30;
    jwtk::decode::<Value>(token, &c.dec, &v).is_ok()
}

/// A small deterministic PRNG (xorshift64*), so failures reproduce.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn mutate(rng: &mut Rng, token: &str, c: &Case) -> String {
    let mut b = token.as_bytes().to_vec();
    let segs: Vec<&str> = token.split('.').collect();
    match rng.below(10) {
        0 => {
            let i = rng.below(b.len());
            b[i] ^= 1 << rng.below(7);
        }
        1 => {
            let i = rng.below(b.len());
            b[i] = B64[rng.below(64)];
        }
        2 => {
            let i = rng.below(b.len());
            b.remove(i);
        }
        3 => {
            let i = rng.below(b.len());
            b.insert(i, B64[rng.below(64)]);
        }
        4 => b.truncate(rng.below(b.len())),
        5 => {
            // Swap the payload of another valid token in.
            let mut cl = claims_now();
            cl.insert("sub".into(), "admin".into());
            let other = c.signer.sign(Map::new(), &cl).unwrap();
            return format!(
                "{}.{}.{}",
                segs[0],
                other.split('.').nth(1).unwrap(),
                segs[2]
            );
        }
        6 => {
            // Change the header's alg, keep the signature.
            let algs = [
                "none", "HS256", "RS256", "ES256", "EdDSA", "PS256", "NONE", "HS512",
            ];
            let h = b64(json!({"alg": algs[rng.below(algs.len())], "typ":"JWT"})
                .to_string()
                .as_bytes());
            return format!("{h}.{}.{}", segs[1], segs[2]);
        }
        7 => return format!("{}.{}.", segs[0], segs[1]),
        8 => {
            // Re-sign with the public key bytes as an HMAC secret (algorithm confusion).
            let secret = c.signer.public_key().unwrap_or_else(|| b"x".to_vec());
            let hs = gateway::jwt::SigningKey::hmac(&secret, Algorithm::HS256).unwrap();
            return hs.sign(Map::new(), &claims_now()).unwrap();
        }
        _ => {
            let i = rng.below(b.len());
            let j = rng.below(b.len());
            b.swap(i, j);
        }
    }
    String::from_utf8_lossy(&b).into_owned()
}

#[test]
fn tokens_interoperate_both_ways() {
    for alg in Algorithm::ALL {
        let c = case(alg);
        let v = ours(&c);
        let claims = claims_now();
        // Theirs → ours.
        let mut h = jwtk::Header::new(c.theirs);
        h.kid = None;
        let t = jwtk::encode(&h, &claims, &c.enc).unwrap();
        let got = v.verify(&t, now_unix());
        assert!(got.is_ok(), "{alg}: jsonwebtoken token rejected: {got:?}");
        assert_eq!(got.unwrap().claims(), &claims);
        // Ours → theirs.
        let t = c.signer.sign(Map::new(), &claims).unwrap();
        assert!(
            theirs_ok(&c, &t),
            "{alg}: our token rejected by jsonwebtoken"
        );
        assert!(v.verify(&t, now_unix()).is_ok());
    }
}

#[test]
fn both_agree_on_mutated_tokens() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut compared = 0;
    for alg in Algorithm::ALL {
        let c = case(alg);
        let v = ours(&c);
        let base = jwtk::encode(&jwtk::Header::new(c.theirs), &claims_now(), &c.enc).unwrap();
        let per_alg = if alg.family() == gateway::jwt::KeyFamily::Hmac {
            400
        } else {
            120
        };
        for _ in 0..per_alg {
            let m = mutate(&mut rng, &base, &c);
            if m == base {
                continue;
            }
            let a = v.verify(&m, now_unix()).is_ok();
            let b = theirs_ok(&c, &m);
            assert_eq!(
                a, b,
                "{alg}: disagreement on {m} (ours {a}, jsonwebtoken {b})"
            );
            assert!(!a, "{alg}: mutated token accepted: {m}");
            compared += 1;
        }
        // And both still accept the original.
        assert!(v.verify(&base, now_unix()).is_ok() && theirs_ok(&c, &base));
    }
    assert!(compared > 1_500);
}
