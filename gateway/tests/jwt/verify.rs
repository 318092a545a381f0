//! Verifier behaviour with real keys: every algorithm, every reason code, the attack classes.

use super::support::*;
use gateway::jwt::{Algorithm, Rejection, VerifierConfig, REASONS};
use gateway::keys::{self, KeyStore};
use serde_json::{json, Value};
use std::collections::BTreeSet;

fn reason(r: Result<impl Sized, Rejection>) -> &'static str {
    match r {
        Ok(_) => "valid",
        Err(e) => e.reason(),
    }
}

#[test]
fn every_algorithm_verifies_and_rejects_tampering() {
    for alg in Algorithm::ALL {
        let p = pair(alg, None);
        let v = verifier(vec![public_of(&p, None)]);
        let t = mint(&p, None, &claims());
        let ok = v.verify(&t, NOW).unwrap_or_else(|e| panic!("{alg}: {e}"));
        assert_eq!(ok.alg(), alg);
        assert_eq!(ok.subject(), Some("user-1"));

        // Flip one signature bit (keep the base64 canonical by changing the first char).
        let (head, sig) = t.rsplit_once('.').unwrap();
        let mut s = sig.as_bytes().to_vec();
        s[0] = if s[0] == b'A' { b'B' } else { b'A' };
        let bad = format!("{head}.{}", String::from_utf8(s).unwrap());
        assert_eq!(reason(v.verify(&bad, NOW)), "bad_signature", "{alg}");

        // Payload changed, signature kept.
        let mut c = claims();
        c.insert("sub".into(), "admin".into());
        let other = mint(&p, None, &c);
        let forged = format!(
            "{}.{}.{}",
            t.split('.').next().unwrap(),
            other.split('.').nth(1).unwrap(),
            sig
        );
        assert_eq!(reason(v.verify(&forged, NOW)), "bad_signature", "{alg}");

        // Signed by another key of the same algorithm.
        let stranger = pair(alg, None);
        if alg.family() != gateway::jwt::KeyFamily::Rsa {
            let t2 = mint(&stranger, None, &claims());
            assert_eq!(reason(v.verify(&t2, NOW)), "bad_signature", "{alg}");
        }
    }
    // RSA with a second fixture key.
    let a = rsa_pair("rsa2048", Algorithm::RS256, None, None);
    let b = rsa_pair("rsa2048b", Algorithm::RS256, None, None);
    let v = verifier(vec![a.public]);
    assert_eq!(
        reason(v.verify(&mint(&b, None, &claims()), NOW)),
        "bad_signature"
    );
}

#[test]
fn every_reason_code_is_reachable() {
    let p = pair(Algorithm::ES256, Some("k1"));
    let v = verifier_with(vec![public_of(&p, Some("k1"))], |c| {
        c.required_claims = vec!["sub".into()];
    });
    let mut seen = BTreeSet::new();
    let mut check = |token: String, want: &str| {
        let got = reason(v.verify(&token, NOW));
        assert_eq!(got, want, "token {token}");
        seen.insert(got);
    };
    let good = mint(&p, Some("k1"), &claims());
    assert_eq!(reason(v.verify(&good, NOW)), "valid");

    check("not a token".into(), "malformed");
    check(
        mint_raw(
            &p,
            r#"{"alg":"none","kid":"k1"}"#,
            &json!(claims()).to_string(),
        ),
        "alg_not_allowed",
    );
    check(mint(&p, Some("k2"), &claims()), "key_not_found");
    let other = pair(Algorithm::ES256, None);
    check(mint(&other, Some("k1"), &claims()), "bad_signature");
    let mut c = claims();
    c.insert("exp".into(), json!(NOW - 100));
    check(mint(&p, Some("k1"), &c), "expired");
    let mut c = claims();
    c.insert("nbf".into(), json!(NOW + 100));
    check(mint(&p, Some("k1"), &c), "not_yet_valid");
    let mut c = claims();
    c.remove("sub");
    check(mint(&p, Some("k1"), &c), "missing_claim");
    let mut c = claims();
    c.insert("iss".into(), json!("https://evil.test/"));
    check(mint(&p, Some("k1"), &c), "bad_issuer");
    let mut c = claims();
    c.insert("aud".into(), json!(["other"]));
    check(mint(&p, Some("k1"), &c), "bad_audience");
    check(
        mint_raw(
            &p,
            r#"{"alg":"ES256","kid":"k1","crit":["b64"],"b64":false}"#,
            &json!(claims()).to_string(),
        ),
        "unsupported_crit",
    );
    check(format!("{}.{}", good, "x".repeat(20_000)), "too_large");
    // A source's budget of signature checks (one per hour here): the second is refused
    // without being checked.
    let tight = verifier_with(vec![public_of(&p, Some("k1"))], |c| {
        c.verify_budget.rate = "1/h".parse().unwrap();
        c.verify_budget.burst = 1;
    });
    let source = "192.0.2.1".parse().unwrap();
    assert_eq!(reason(tight.verify_from(&good, NOW, source)), "valid");
    seen.insert(reason(tight.verify_from(&good, NOW, source)));
    assert_eq!(seen.len(), REASONS.len(), "{seen:?}");
}

#[test]
fn alg_none_in_any_case_is_rejected() {
    let p = pair(Algorithm::HS256, None);
    let v = verifier(vec![p.public]);
    let body = b64(json!(claims()).to_string().as_bytes());
    for none in ["none", "None", "NONE", "nOnE", "NoNe"] {
        let h = b64(format!(r#"{{"alg":"{none}","typ":"JWT"}}"#).as_bytes());
        for sig in ["", "AAAA"] {
            let t = format!("{h}.{body}.{sig}");
            assert_eq!(reason(v.verify(&t, NOW)), "alg_not_allowed", "{t}");
        }
    }
}

#[test]
fn rsa_public_key_is_never_an_hmac_secret() {
    let rsa = rsa_pair("rsa2048", Algorithm::RS256, None, None);
    let pem = read("rsa2048.pub.pem");
    let v = verifier(vec![rsa.public]);
    for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
        for secret in [&pem[..], pem.trim_ascii_end()] {
            let attacker = gateway::jwt::SigningKey::hmac(secret, alg).unwrap();
            let t = attacker.sign(Default::default(), &claims()).unwrap();
            assert_eq!(reason(v.verify(&t, NOW)), "alg_not_allowed", "{alg}");
        }
    }
    // Also when the verifier allows HS256 and an HMAC key exists beside the RSA key.
    let rsa = rsa_pair("rsa2048", Algorithm::RS256, Some("rsa"), None);
    let hs = pair(Algorithm::HS256, Some("hs"));
    let v = verifier(vec![rsa.public, hs.public]);
    let attacker = gateway::jwt::SigningKey::hmac(&pem, Algorithm::HS256).unwrap();
    let mut h = serde_json::Map::new();
    h.insert("kid".into(), "rsa".into());
    let t = attacker.sign(h, &claims()).unwrap();
    assert_eq!(reason(v.verify(&t, NOW)), "alg_not_allowed");
    // Keys bound to one algorithm refuse the others of their family.
    let bound = rsa_pair("rsa2048", Algorithm::RS256, None, Some(Algorithm::RS256));
    let v = verifier(vec![bound.public]);
    let ps = rsa_pair("rsa2048", Algorithm::PS256, None, None);
    assert_eq!(
        reason(v.verify(&mint(&ps, None, &claims()), NOW)),
        "alg_not_allowed"
    );
}

#[test]
fn psychic_and_der_ecdsa_signatures_are_rejected() {
    for (alg, len) in [(Algorithm::ES256, 64), (Algorithm::ES384, 96)] {
        let p = pair(alg, None);
        let pk = public_of(&p, None);
        let v = verifier(vec![pk]);
        let good = mint(&p, None, &claims());
        let (head, sig) = good.rsplit_once('.').unwrap();
        // r = s = 0 ("psychic signature", CVE-2022-21449).
        let zeros = format!("{head}.{}", b64(&vec![0u8; len]));
        assert_eq!(reason(v.verify(&zeros, NOW)), "bad_signature");
        // r = 0 or s = 0 alone, and r = s = n-ish all-ones.
        let raw = gateway::jwt::b64::decode_url(sig.as_bytes()).unwrap();
        let mut r0 = raw.clone();
        r0[..len / 2].fill(0);
        assert_eq!(
            reason(v.verify(&format!("{head}.{}", b64(&r0)), NOW)),
            "bad_signature"
        );
        let mut s0 = raw.clone();
        s0[len / 2..].fill(0);
        assert_eq!(
            reason(v.verify(&format!("{head}.{}", b64(&s0)), NOW)),
            "bad_signature"
        );
        let ones = format!("{head}.{}", b64(&vec![0xffu8; len]));
        assert_eq!(reason(v.verify(&ones, NOW)), "bad_signature");
        // The same valid signature in DER form.
        let der = format!("{head}.{}", b64(&raw_to_der(&raw)));
        assert_eq!(reason(v.verify(&der, NOW)), "bad_signature");
        // Truncated and extended.
        let short = format!("{head}.{}", b64(&raw[..len - 1]));
        assert_eq!(reason(v.verify(&short, NOW)), "bad_signature");
        let mut long = raw.clone();
        long.push(0);
        assert_eq!(
            reason(v.verify(&format!("{head}.{}", b64(&long)), NOW)),
            "bad_signature"
        );
        assert_eq!(reason(v.verify(&good, NOW)), "valid");
    }
}

#[test]
fn embedded_keys_and_key_urls_are_ignored() {
    let trusted = pair(Algorithm::ES256, Some("k1"));
    let v = verifier(vec![trusted.public]);
    let attacker = pair(Algorithm::ES256, None);
    let pk = attacker.signer.public_key().unwrap();
    let jwk = json!({"kty":"EC","crv":"P-256","x": b64(&pk[1..33]),"y": b64(&pk[33..])});
    let body = json!(claims()).to_string();
    for header in [
        json!({"alg":"ES256","jwk":jwk}),
        json!({"alg":"ES256","kid":"k1","jwk":jwk}),
        json!({"alg":"ES256","jku":"https://evil.test/jwks.json"}),
        json!({"alg":"ES256","kid":"k1","x5u":"https://evil.test/cert.pem"}),
        json!({"alg":"ES256","kid":"k1","x5c":["MIIB"]}),
    ] {
        let t = mint_raw(&attacker, &header.to_string(), &body);
        assert_eq!(reason(v.verify(&t, NOW)), "bad_signature", "{header}");
    }
}

#[test]
fn kid_is_an_exact_opaque_lookup() {
    let k1 = pair(Algorithm::HS256, Some("k1"));
    let signer = k1.signer;
    let v = verifier(vec![
        k1.public,
        pair(Algorithm::HS256, Some("other")).public,
    ]);
    let claims = claims();
    let sign = |kid: Option<&str>| {
        let mut h = serde_json::Map::new();
        if let Some(k) = kid {
            h.insert("kid".into(), k.into());
        }
        signer.sign(h, &claims).unwrap()
    };
    assert_eq!(reason(v.verify(&sign(Some("k1")), NOW)), "valid");
    // No kid: every key bound to the alg is tried.
    assert_eq!(reason(v.verify(&sign(None), NOW)), "valid");
    for kid in [
        "K1",
        "k1 ",
        " k1",
        "k",
        "k1\u{0}",
        "../k1",
        "../../../../etc/passwd",
        "/dev/null",
        "k1/../k1",
        "file:///etc/passwd",
        "' OR '1'='1",
        "",
    ] {
        assert_eq!(
            reason(v.verify(&sign(Some(kid)), NOW)),
            "key_not_found",
            "{kid:?}"
        );
    }
    // A non-string kid is malformed.
    let p = pair(Algorithm::HS256, None);
    let t = mint_raw(&p, r#"{"alg":"HS256","kid":1}"#, "{}");
    assert_eq!(reason(v.verify(&t, NOW)), "malformed");
}

/// The verifier checks header and payload as UTF-8 in one pass and searches the payload for
/// dots only when a token fails: each failure is still reported for the right segment, in
/// the order of the checks, exactly as before.
#[test]
fn utf8_and_segment_errors_name_the_right_part() {
    use gateway::jwt::{encode_with, json::JsonError, ParseError, Segment};
    let p = pair(Algorithm::EdDSA, None);
    let v = verifier(vec![public_of(&p, None)]);
    let good_payload = format!(
        r#"{{"iss":"https://issuer.test/","aud":"api","exp":{},"sub":"ü"}}"#,
        NOW + 60
    );
    let sign = |h: &[u8], c: &[u8]| encode_with(h, c, |m| p.signer.sign_bytes(m)).unwrap();
    let parse_err = |t: &str| match v.verify(t, NOW) {
        Err(Rejection::Parse(e)) => e,
        other => panic!("{other:?}"),
    };
    // Non-ASCII but valid: accepted.
    let t = sign(
        "{\"alg\":\"EdDSA\",\"x\":\"é\"}".as_bytes(),
        good_payload.as_bytes(),
    );
    assert_eq!(reason(v.verify(&t, NOW)), "valid");
    // Invalid UTF-8 in the header: the header's error.
    let t = sign(
        b"{\"alg\":\"EdDSA\",\"x\":\"\xff\"}",
        good_payload.as_bytes(),
    );
    assert!(matches!(
        parse_err(&t),
        ParseError::Json(Segment::Header, JsonError::Syntax(_))
    ));
    // In the payload: the header's own checks come first, then the payload's error.
    let bad_payload = b"{\"iss\":\"https://issuer.test/\",\"x\":\"\xc3\x28\"}";
    let t = sign(br#"{"alg":"EdDSA"}"#, bad_payload);
    assert!(matches!(
        parse_err(&t),
        ParseError::Json(Segment::Payload, JsonError::Syntax(_))
    ));
    let t = sign(br#"{"alg":"none"}"#, bad_payload);
    assert_eq!(reason(v.verify(&t, NOW)), "alg_not_allowed");
    // A character split by the header/payload boundary is valid in neither.
    let t = sign(b"{\"alg\":\"EdDSA\",\"x\":\"\xc3", b"\xa9\"}");
    assert!(matches!(
        parse_err(&t),
        ParseError::Json(Segment::Header, _)
    ));
    // Non-ASCII member names are compared after unescaping, as bytes.
    let t = sign(
        br#"{"alg":"EdDSA"}"#,
        format!(
            r#"{{"iss":"https://issuer.test/","aud":"api","exp":{},"\u00e9":1,"é":2}}"#,
            NOW + 60
        )
        .as_bytes(),
    );
    assert!(matches!(
        parse_err(&t),
        ParseError::Json(Segment::Payload, _)
    ));
    // Extra dots: four or more segments are `Segments`, wherever the header or signature
    // would have failed first.
    let good = sign(br#"{"alg":"EdDSA"}"#, good_payload.as_bytes());
    let (hp, sig) = good.rsplit_once('.').unwrap();
    let (h, pl) = hp.split_once('.').unwrap();
    for t in [
        format!("{h}.{pl}.x.{sig}"),
        format!("{h}.x.{pl}.{sig}"),
        format!("{h}..{pl}.{sig}"),
        format!("!!.{pl}.{sig}.{sig}"),
        format!("{h}.{pl}.{sig}.!!"),
        format!("{h}.{pl}.{sig}."),
        format!(".{h}.{pl}.{sig}"),
    ] {
        assert_eq!(parse_err(&t), ParseError::Segments, "{t}");
    }
    for t in [format!("{h}.{pl}"), h.to_string(), String::new()] {
        assert_eq!(parse_err(&t), ParseError::Segments, "{t}");
    }
}

#[test]
fn duplicate_members_are_malformed_at_any_depth() {
    let p = pair(Algorithm::EdDSA, None);
    let pk = public_of(&p, None);
    let v = verifier(vec![pk]);
    let base = format!(
        r#""iss":"https://issuer.test/","aud":"api","exp":{},"sub":"u""#,
        NOW + 60
    );
    for payload in [
        format!(r#"{{{base},"sub":"admin"}}"#),
        format!(r#"{{{base},"x":{{"a":1,"a":2}}}}"#),
        format!(r#"{{{base},"x":[{{"a":1,"\u0061":2}}]}}"#),
        format!(r#"{{{base},"exp":{}}}"#, NOW + 99_999),
    ] {
        let t = mint_raw(&p, r#"{"alg":"EdDSA"}"#, &payload);
        assert_eq!(reason(v.verify(&t, NOW)), "malformed", "{payload}");
    }
    let t = mint_raw(
        &p,
        r#"{"alg":"EdDSA","alg":"EdDSA"}"#,
        &format!("{{{base}}}"),
    );
    assert_eq!(reason(v.verify(&t, NOW)), "malformed");
    let t = mint_raw(&p, r#"{"alg":"EdDSA"}"#, &format!("{{{base}}}"));
    assert_eq!(reason(v.verify(&t, NOW)), "valid");
}

#[test]
fn non_canonical_base64_is_malformed() {
    let p = pair(Algorithm::HS256, None);
    let pk = public_of(&p, None);
    let v = verifier(vec![pk]);
    let good = mint(&p, None, &claims());
    assert_eq!(reason(v.verify(&good, NOW)), "valid");
    let segs: Vec<&str> = good.split('.').collect();
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    // HS256 signatures are 32 bytes = 43 chars, the last carrying 2 unused bits: set them.
    let mut sig = segs[2].as_bytes().to_vec();
    let last = sig.pop().unwrap();
    let i = alphabet.iter().position(|&c| c == last).unwrap();
    assert_eq!(i & 3, 0);
    sig.push(alphabet[i | 1]);
    let trailing = format!(
        "{}.{}.{}",
        segs[0],
        segs[1],
        String::from_utf8(sig).unwrap()
    );
    let variants = [
        trailing,
        format!("{}.{}.{}=", segs[0], segs[1], segs[2]),
        format!("{}=.{}.{}", segs[0], segs[1], segs[2]),
        format!(
            "{}.{}.{}",
            segs[0],
            segs[1].replace('-', "+"),
            segs[2].replace('_', "/") + "+"
        ),
        format!(" {}.{}.{}", segs[0], segs[1], segs[2]),
        format!("{}.{}\n.{}", segs[0], segs[1], segs[2]),
        // 41 characters: a length (1 mod 4) no base64 string can have. Dropping one
        // character instead would leave a valid length that is canonical whenever
        // the new last character's low bits are zero (1 key in 16).
        format!("{}.{}.{}", segs[0], segs[1], &segs[2][..segs[2].len() - 2]),
        format!("{}.{}.{}.", segs[0], segs[1], segs[2]),
        format!("{}.{}", segs[0], segs[1]),
    ];
    for t in variants {
        assert_eq!(reason(v.verify(&t, NOW)), "malformed", "{t}");
    }
}

#[test]
fn size_limit_is_exact() {
    let p = pair(Algorithm::HS256, None);
    let pk = public_of(&p, None);
    let v = verifier_with(vec![pk], |c| {
        c.issuers.clear();
        c.audiences.clear();
    });
    let enc = gateway::jwt::b64::encoded_len;
    // Token = b64(header) . b64(payload) . 43 signature chars; choose lengths to hit 16384.
    let mut exact = None;
    'outer: for hpad in 0..4 {
        let header = format!(r#"{{"alg":"HS256","x":"{}"}}"#, "h".repeat(hpad));
        let want = 16_384 - enc(header.len()) - 2 - 43;
        let prefix = format!(r#"{{"exp":{},"pad":""#, NOW + 60);
        for n in 0..want {
            if enc(n) == want && n > prefix.len() + 2 {
                let payload = format!("{prefix}{}\"}}", "x".repeat(n - prefix.len() - 2));
                exact = Some(mint_raw(&p, &header, &payload));
                break 'outer;
            }
        }
    }
    let at = exact.expect("a 16384-byte token");
    assert_eq!(at.len(), 16_384);
    assert_eq!(reason(v.verify(&at, NOW)), "valid");
    let over = format!("{at}A");
    assert_eq!(over.len(), 16_385);
    assert_eq!(reason(v.verify(&over, NOW)), "too_large");
    assert_eq!(reason(v.verify(&"A".repeat(1 << 20), NOW)), "too_large");
}

#[test]
fn deeply_nested_and_huge_inputs_are_errors_not_crashes() {
    let p = pair(Algorithm::HS256, None);
    let pk = public_of(&p, None);
    let v = verifier_with(vec![pk], |c| c.max_token_bytes = 4 << 20);
    for depth in [40, 1_000, 100_000] {
        let payload = format!(
            r#"{{"exp":{},"x":{}{}}}"#,
            NOW + 60,
            "[".repeat(depth),
            "]".repeat(depth)
        );
        let t = mint_raw(&p, r#"{"alg":"HS256"}"#, &payload);
        assert_eq!(reason(v.verify(&t, NOW)), "malformed");
        let t = mint_raw(
            &p,
            &format!(
                r#"{{"alg":"HS256","x":{}{}}}"#,
                "{\"a\":".repeat(depth),
                "}".repeat(depth)
            ),
            "{}",
        );
        assert_eq!(reason(v.verify(&t, NOW)), "malformed");
    }
    // Ten nesting levels are fine.
    let payload = format!(r#"{{"x":{}{}}}"#, "[".repeat(10), "]".repeat(10));
    let t = mint_raw(&p, r#"{"alg":"HS256"}"#, &payload);
    assert_eq!(reason(v.verify(&t, NOW)), "missing_claim");
}

#[test]
fn numeric_dates() {
    let p = pair(Algorithm::HS256, None);
    let pk = public_of(&p, None);
    let v = verifier_with(vec![pk], |c| c.leeway = 0);
    let with = |k: &str, val: Value| {
        let mut c = claims();
        c.insert(k.into(), val);
        mint(&p, None, &c)
    };
    assert_eq!(
        reason(v.verify(&with("exp", json!("1999999999")), NOW)),
        "malformed"
    );
    assert_eq!(
        reason(v.verify(&with("exp", json!(1e300)), NOW)),
        "malformed"
    );
    assert_eq!(
        reason(v.verify(&with("exp", json!(u64::MAX)), NOW)),
        "malformed"
    );
    assert_eq!(
        reason(v.verify(&with("exp", json!(9_223_372_036_854_775_807i64)), NOW)),
        "valid"
    );
    assert_eq!(
        reason(v.verify(&with("exp", json!(NOW as f64 + 0.5)), NOW)),
        "expired"
    );
    assert_eq!(
        reason(v.verify(&with("exp", json!(NOW as f64 + 1.5)), NOW)),
        "valid"
    );
    assert_eq!(reason(v.verify(&with("exp", json!(NOW)), NOW)), "expired");
    assert_eq!(
        reason(v.verify(&with("exp", json!(null)), NOW)),
        "malformed"
    );
    assert_eq!(reason(v.verify(&with("nbf", json!("0")), NOW)), "malformed");
    assert_eq!(reason(v.verify(&with("nbf", json!(NOW)), NOW)), "valid");
    assert_eq!(
        reason(v.verify(&with("nbf", json!(NOW + 1)), NOW)),
        "not_yet_valid"
    );
    assert_eq!(
        reason(v.verify(&with("iat", json!(NOW + 1)), NOW)),
        "not_yet_valid"
    );
    assert_eq!(
        reason(v.verify(&with("iat", json!(-1e19)), NOW)),
        "malformed"
    );
    assert_eq!(reason(v.verify(&with("iat", json!(-1)), NOW)), "valid");
    // Leeway.
    let pk = public_of(&p, None);
    let v = verifier_with(vec![pk], |c| c.leeway = 30);
    assert_eq!(
        reason(v.verify(&with("exp", json!(NOW - 29)), NOW)),
        "valid"
    );
    assert_eq!(
        reason(v.verify(&with("exp", json!(NOW - 30)), NOW)),
        "expired"
    );
    assert_eq!(
        reason(v.verify(&with("iat", json!(NOW + 30)), NOW)),
        "valid"
    );
    assert_eq!(
        reason(v.verify(&with("iat", json!(NOW + 31)), NOW)),
        "not_yet_valid"
    );
    assert_eq!(
        reason(v.verify(&with("nbf", json!(NOW + 31)), NOW)),
        "not_yet_valid"
    );
    // exp required by default, optional when configured.
    let mut c = claims();
    c.remove("exp");
    let t = mint(&p, None, &c);
    assert_eq!(reason(v.verify(&t, NOW)), "missing_claim");
    let pk = public_of(&p, None);
    let v = verifier_with(vec![pk], |c| c.require_exp = false);
    assert_eq!(reason(v.verify(&t, NOW)), "valid");
}

#[test]
fn issuer_audience_and_payload_shape() {
    let p = pair(Algorithm::HS256, None);
    let pk = public_of(&p, None);
    let v = verifier(vec![pk]);
    let with = |k: &str, val: Value| {
        let mut c = claims();
        c.insert(k.into(), val);
        mint(&p, None, &c)
    };
    assert_eq!(
        reason(v.verify(&with("aud", json!(["x", "api"])), NOW)),
        "valid"
    );
    assert_eq!(
        reason(v.verify(&with("aud", json!("API")), NOW)),
        "bad_audience"
    );
    assert_eq!(
        reason(v.verify(&with("aud", json!("ap")), NOW)),
        "bad_audience"
    );
    assert_eq!(
        reason(v.verify(&with("iss", json!("https://issuer.test")), NOW)),
        "bad_issuer"
    );
    let mut c = claims();
    c.remove("aud");
    assert_eq!(reason(v.verify(&mint(&p, None, &c), NOW)), "missing_claim");
    // Without configured iss/aud nothing about them is checked.
    let pk = public_of(&p, None);
    let open = verifier_with(vec![pk], |c| {
        c.issuers.clear();
        c.audiences.clear();
    });
    assert_eq!(reason(open.verify(&mint(&p, None, &c), NOW)), "valid");
    assert_eq!(reason(open.verify(&with("iss", json!(42)), NOW)), "valid");
    // A payload that is not a JSON object.
    for payload in ["[1,2]", "\"str\"", "42", "null", "foo", ""] {
        let t = mint_raw(&p, r#"{"alg":"HS256"}"#, payload);
        assert_eq!(reason(open.verify(&t, NOW)), "malformed", "{payload}");
    }
}

#[test]
fn typ_and_algorithm_allow_list() {
    let p = pair(Algorithm::ES256, None);
    let pk = public_of(&p, None);
    let v = verifier_with(vec![pk], |c| c.typ = Some("at+jwt".into()));
    let h = |typ: &str| {
        mint_raw(
            &p,
            &json!({"alg":"ES256","typ":typ}).to_string(),
            &json!(claims()).to_string(),
        )
    };
    assert_eq!(reason(v.verify(&h("at+jwt"), NOW)), "valid");
    assert_eq!(reason(v.verify(&h("application/AT+JWT"), NOW)), "valid");
    assert_eq!(reason(v.verify(&h("JWT"), NOW)), "malformed");
    assert_eq!(
        reason(v.verify(&mint_raw(&p, r#"{"alg":"ES256"}"#, "{}"), NOW)),
        "malformed"
    );
    let pk = public_of(&p, None);
    let v = verifier_with(vec![pk], |c| c.algorithms = vec![Algorithm::RS256]);
    assert_eq!(
        reason(v.verify(&mint(&p, None, &claims()), NOW)),
        "alg_not_allowed"
    );
    for alg in ["ES512", "RS1", "HS1", "A128KW", "dir", "", "es256"] {
        let t = mint_raw(&p, &json!({"alg":alg}).to_string(), "{}");
        assert_eq!(reason(v.verify(&t, NOW)), "alg_not_allowed", "{alg}");
    }
}

#[test]
fn scopes_are_exact_tokens() {
    let p = pair(Algorithm::HS256, None);
    let pk = public_of(&p, None);
    let v = verifier(vec![pk]);
    let mut c = claims();
    c.insert("scope".into(), json!("read  write:all"));
    c.insert("scp".into(), json!(["admin", 5]));
    let t = v.verify(&mint(&p, None, &c), NOW).unwrap();
    let got: Vec<&str> = t.scopes().collect();
    assert_eq!(got, ["read", "write:all", "admin"]);
    assert!(t.has_scope("write:all"));
    assert!(!t.has_scope("write"));
    assert!(!t.has_scope("rea"));
    assert_eq!(t.exp(), Some(NOW + 3600));
    assert_eq!(t.claims().get("sub"), Some(&json!("user-1")));
}

#[test]
fn hmac_secrets() {
    let dir = TempDir::new("hmac");
    let empty = dir.write("empty", b"");
    let k = keys::load_secret_file(std::path::Path::new(&empty), None, None).unwrap();
    let v = verifier(vec![k]);
    // jsonwebtoken happily signs with an empty secret; we never accept it.
    let t = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!(claims()),
        &jsonwebtoken::EncodingKey::from_secret(b""),
    )
    .unwrap();
    assert_eq!(reason(v.verify(&t, NOW)), "bad_signature");
    // The secret is raw bytes: a trailing newline is part of it.
    let nl = dir.write("nl", b"secret-with-newline-0123456789abcdef\n");
    let k = keys::load_secret_file(std::path::Path::new(&nl), None, None).unwrap();
    let v = verifier(vec![k]);
    let sign = |s: &[u8]| {
        gateway::jwt::SigningKey::hmac(s, Algorithm::HS256)
            .unwrap()
            .sign(Default::default(), &claims())
            .unwrap()
    };
    assert_eq!(
        reason(v.verify(&sign(b"secret-with-newline-0123456789abcdef\n"), NOW)),
        "valid"
    );
    assert_eq!(
        reason(v.verify(&sign(b"secret-with-newline-0123456789abcdef"), NOW)),
        "bad_signature"
    );
    // HMAC keys never verify asymmetric algorithms.
    let es = pair(Algorithm::ES256, None);
    assert_eq!(
        reason(v.verify(&mint(&es, None, &claims()), NOW)),
        "alg_not_allowed"
    );
}

#[test]
fn key_files_in_every_format() {
    let rs = rsa_pair("rsa2048", Algorithm::RS256, None, None);
    let t = mint(&rs, None, &claims());
    for f in ["rsa2048.pub.pem", "rsa2048.pkcs1.pub.pem", "rsa2048.crt"] {
        let keys = keys::load_pem_file(&data(f), None, None).unwrap();
        assert_eq!(keys.len(), 1);
        let v = verifier(keys);
        assert_eq!(reason(v.verify(&t, NOW)), "valid", "{f}");
    }
    for (alg, keyf, pubf) in [
        (Algorithm::ES256, "ec256.key", "ec256.pub.pem"),
        (Algorithm::ES384, "ec384.key", "ec384.pub.pem"),
        (Algorithm::EdDSA, "ed25519.key", "ed25519.pub.pem"),
    ] {
        let s = gateway::jwt::SigningKey::from_pem(&read(keyf), alg).unwrap();
        let t = s.sign(Default::default(), &claims()).unwrap();
        let v = verifier(keys::load_pem_file(&data(pubf), None, None).unwrap());
        assert_eq!(reason(v.verify(&t, NOW)), "valid", "{pubf}");
    }
    // Refused with a clear error: tiny RSA, P-521, private keys, garbage.
    for f in [
        "rsa1024.pub.pem",
        "ec521.pub.pem",
        "rsa2048.key",
        "README.md",
        "hs.secret",
    ] {
        let e = keys::load_pem_file(&data(f), None, None).unwrap_err();
        assert!(e.to_string().contains(f), "{e}");
    }
    // A missing file is an I/O error naming it.
    let e = keys::load_pem_file(&data("nope.pem"), None, None).unwrap_err();
    assert!(matches!(e, keys::KeyError::Io { .. }));
}

#[test]
fn jwk_documents() {
    let p = pair(Algorithm::ES256, None);
    let pk = p.signer.public_key().unwrap();
    let jwk = json!({"kty":"EC","crv":"P-256","kid":"e1","alg":"ES256","use":"sig",
        "x": b64(&pk[1..33]), "y": b64(&pk[33..])});
    let k = keys::parse_jwk(jwk.to_string().as_bytes(), "t", None).unwrap();
    assert_eq!(k.kid(), Some("e1"));
    let v = verifier(vec![k]);
    assert_eq!(
        reason(v.verify(&mint(&p, Some("e1"), &claims()), NOW)),
        "valid"
    );
    // A point off the curve, wrong lengths, wrong use, unknown alg: refused.
    let mut bad_y = pk[33..].to_vec();
    bad_y[31] ^= 1;
    for bad in [
        json!({"kty":"EC","crv":"P-256","x": b64(&pk[1..33]), "y": b64(&bad_y)}),
        json!({"kty":"EC","crv":"P-256","x": b64(&pk[2..33]), "y": b64(&pk[33..])}),
        json!({"kty":"EC","crv":"P-256","use":"enc","x": b64(&pk[1..33]), "y": b64(&pk[33..])}),
        json!({"kty":"EC","crv":"P-256","alg":"ES512","x": b64(&pk[1..33]), "y": b64(&pk[33..])}),
        json!({"kty":"EC","crv":"P-256","alg":"HS256","x": b64(&pk[1..33]), "y": b64(&pk[33..])}),
        json!({"kty":"EC","crv":"P-521","x": b64(&pk[1..33]), "y": b64(&pk[33..])}),
        json!({"kty":"oct","k":""}),
        json!({"kty":"oct","k":"c2hvcnQ"}),
        json!({"kty":"oct","k":b64(&[7u8; 40]),"alg":"HS512"}),
        json!({"kty":"RSA","n":"AQAB","e":"AQAB"}),
        json!({"kty":"OKP","crv":"X25519","x":b64(&[1u8; 32])}),
        json!({"kty":"EC","crv":"P-256","key_ops":["encrypt"],"x": b64(&pk[1..33]), "y": b64(&pk[33..])}),
        json!({"x":"y"}),
    ] {
        assert!(
            keys::parse_jwk(bad.to_string().as_bytes(), "t", None).is_err(),
            "{bad}"
        );
    }
    // oct keys are HMAC secrets; without alg they serve the HS* their length allows.
    let secret = [9u8; 40];
    let k = keys::parse_jwk(
        json!({"kty":"oct","k":b64(&secret)}).to_string().as_bytes(),
        "t",
        None,
    )
    .unwrap();
    assert!(k.algorithms().contains(Algorithm::HS256));
    assert!(!k.algorithms().contains(Algorithm::HS512));
    // JWKS: unusable keys skipped, duplicates refused, empty refused.
    let ok = json!({"keys":[{"kty":"oct","k":b64(&secret),"kid":"a"}, {"kty":"EC","use":"enc"}]});
    assert_eq!(
        keys::parse_jwks(ok.to_string().as_bytes(), "t", None)
            .unwrap()
            .len(),
        1
    );
    let dup = json!({"keys":[{"kty":"oct","k":b64(&secret),"kid":"a"},{"kty":"oct","k":b64(&[1u8;32]),"kid":"a"}]});
    assert!(keys::parse_jwks(dup.to_string().as_bytes(), "t", None).is_err());
    assert!(keys::parse_jwks(br#"{"keys":[]}"#, "t", None).is_err());
    assert!(keys::parse_jwks(br#"{"keys":[],"keys":[]}"#, "t", None).is_err());
    assert!(keys::parse_jwks(b"[]", "t", None).is_err());
}

#[test]
fn config_embeds_as_toml() {
    let text = r#"
        issuers = ["https://issuer.test/"]
        audiences = ["api"]
        algorithms = ["ES256", "RS256"]
        leeway = 10
        required_claims = ["sub"]
        typ = "at+jwt"
        [cache]
        max_entries = 1000
        [[keys]]
        pem = "x.pem"
        kid = "k1"
        [[keys]]
        jwks_url = "https://issuer.test/jwks"
        refresh = "10m"
        refetch_interval = 5
    "#;
    let cfg: VerifierConfig = toml::from_str(text).unwrap();
    cfg.validate().unwrap();
    assert_eq!(cfg.keys.len(), 2);
    assert_eq!(cfg.leeway, 10);
    for bad in [
        "isuers = []",
        "[cache]\nmax_entrys = 1",
        "[[keys]]\npem = \"a\"\njwk = \"b\"",
        "[[keys]]\npem = \"a\"\nrefresh = 5",
        "[[keys]]\njwks_url = \"http://plain/\"",
        "algorithms = [\"none\"]",
    ] {
        let r: Result<VerifierConfig, _> = toml::from_str(bad);
        assert!(r.is_err() || r.unwrap().validate().is_err(), "{bad}");
    }
    let _ = KeyStore::new();
}

#[test]
fn escaped_strings_many_members_and_claims_read_back() {
    let p = pair(Algorithm::HS256, Some("k/1"));
    let v = verifier_with(vec![public_of(&p, Some("k/1"))], |c| {
        c.required_claims = vec!["sub".into(), "tenant".into()];
        c.typ = Some("application/at+JWT".into());
    });
    let exp = NOW + 60;
    // Every string the verifier reads is escaped: compared by value, not by bytes.
    let header = r#"{"alg":"HS\u0032\u00356","kid":"k\/1","typ":"AT+jwt"}"#;
    let payload = format!(
        r#"{{"iss":"https:\/\/issuer.test\/","aud":["a","b","c","d","e","\u0061pi"],"exp":{exp},"sub":"\"u\"","tenant":null,"\u0073cope":"read"}}"#
    );
    let t = mint_raw(&p, header, &payload);
    let ok = v.verify(&t, NOW).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(ok.kid(), Some("k/1"));
    assert_eq!(ok.subject(), Some("\"u\""));
    assert_eq!(ok.issuer(), Some("https://issuer.test/"));
    assert_eq!(ok.exp(), Some(exp));
    assert!(ok.has_scope("read"));
    assert_eq!(ok.claim("tenant"), Some(&Value::Null));
    assert_eq!(ok.header().get("alg"), Some(&json!("HS256")));
    assert_eq!(
        ok.claims(),
        &obj(serde_json::from_str::<Value>(&payload).unwrap())
    );
    // The required name only nested, or the typ not matching: refused.
    let nested = format!(
        r#"{{"iss":"https://issuer.test/","aud":"api","exp":{exp},"sub":"u","x":{{"tenant":1}}}}"#
    );
    let t = mint_raw(&p, header, &nested);
    assert_eq!(reason(v.verify(&t, NOW)), "missing_claim");
    let t = mint_raw(&p, r#"{"alg":"HS256","kid":"k/1","typ":"JWT"}"#, &payload);
    assert_eq!(reason(v.verify(&t, NOW)), "malformed");
    let t = mint_raw(&p, r#"{"alg":"HS256","kid":"k/1"}"#, &payload);
    assert_eq!(reason(v.verify(&t, NOW)), "malformed");

    // Hundreds of members (past the inline duplicate check): fine, and a late duplicate of
    // an early registered claim is still caught.
    let filler: Vec<String> = (0..500).map(|i| format!(r#""m{i}":{i}"#)).collect();
    let base = format!(
        r#""iss":"https://issuer.test/","aud":"api","exp":{exp},"sub":"u","tenant":1,{}"#,
        filler.join(",")
    );
    let t = mint_raw(&p, header, &format!("{{{base}}}"));
    assert_eq!(reason(v.verify(&t, NOW)), "valid");
    for late in [
        r#""iss":"https://evil/""#,
        r#""\u0069ss":"https://evil/""#,
        r#""m0":0"#,
    ] {
        let t = mint_raw(&p, header, &format!("{{{base},{late}}}"));
        assert_eq!(reason(v.verify(&t, NOW)), "malformed", "{late}");
    }
}
