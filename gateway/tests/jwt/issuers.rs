//! Named issuers (`[[jwt.issuer]]`) in process: the issuer-confusion attack (a token claiming
//! one issuer, signed with another issuer's key), each issuer's own tokens, `kid`s shared
//! across issuers, the unnamed issuer beside named ones, per-issuer algorithms and
//! audiences, the kid-less bound, the verified-token cache per issuer, and the per-source
//! verification budget under a bad-signature flood. Real keys (the committed RSA and P-256
//! fixtures), real signatures, configs parsed from TOML as the gateway reads them.

use super::support::jwks_server::JwksServer;
use super::support::*;
use gateway::jwt::{Algorithm, SigningKey, Verifier, VerifierConfig, MAX_KIDLESS_KEYS};
use gateway::keys::KeyStore;
use serde_json::{json, Map, Value};
use std::net::IpAddr;

const CORP: &str = "https://corp.test/";
const PARTNERS: &str = "https://partners.test/";

fn signer(key: &str, alg: Algorithm) -> SigningKey {
    SigningKey::from_pem(&read(key), alg).unwrap()
}

fn corp_key() -> SigningKey {
    signer("rsa2048.key", Algorithm::RS256)
}

fn partners_key() -> SigningKey {
    signer("ec256.key", Algorithm::ES256)
}

/// A token from `iss` with `kid`, signed by `key`, with `extra` claims.
fn token(key: &SigningKey, kid: Option<&str>, iss: &str, extra: Value) -> String {
    let mut h = Map::new();
    if let Some(k) = kid {
        h.insert("kid".into(), k.into());
    }
    let mut c = obj(json!({
        "iss": iss, "aud": "api", "sub": "user-1", "iat": NOW - 10, "exp": NOW + 3600,
    }));
    if let Value::Object(more) = extra {
        c.extend(more);
    }
    key.sign(h, &c).unwrap()
}

/// A verifier from a `[jwt]` table (the unnamed issuer's keys loaded like the gateway does).
fn verifier(toml_text: &str) -> Verifier {
    let mut cfg: VerifierConfig = toml::from_str(toml_text).unwrap();
    cfg.cache.enabled = false;
    build(cfg)
}

fn build(cfg: VerifierConfig) -> Verifier {
    let (store, urls) = KeyStore::from_config(&cfg.keys).unwrap();
    assert!(urls.is_empty());
    let (v, urls) = Verifier::load(cfg, store).unwrap();
    assert!(urls.is_empty());
    v
}

fn reason(r: Result<impl Sized, gateway::jwt::Rejection>) -> &'static str {
    match r {
        Ok(_) => "valid",
        Err(e) => e.reason(),
    }
}

/// Corp (RS256) and partners (ES256), both with kid `k1`.
fn two_issuers(extra: &str) -> String {
    format!(
        r#"
audiences = ["api"]
{extra}

[[issuer]]
name = "corp"
iss = "{CORP}"
keys = [{{ pem = "{rsa}", kid = "k1", alg = "RS256" }}]

[[issuer]]
name = "partners"
iss = "{PARTNERS}"
keys = [{{ pem = "{ec}", kid = "k1", alg = "ES256" }}]
"#,
        rsa = data("rsa2048.pub.pem").display(),
        ec = data("ec256.pub.pem").display(),
    )
}

#[test]
fn a_key_never_verifies_another_issuers_token() {
    // The attack against the single key pool: both keys trusted for both `iss` values, so a
    // token claiming partners but signed with corp's key verifies.
    let pooled = verifier(&format!(
        r#"
issuers = ["{CORP}", "{PARTNERS}"]
audiences = ["api"]
keys = [{{ pem = "{rsa}", alg = "RS256" }}, {{ pem = "{ec}", alg = "ES256" }}]
"#,
        rsa = data("rsa2048.pub.pem").display(),
        ec = data("ec256.pub.pem").display(),
    ));
    let forged = token(&corp_key(), None, PARTNERS, json!({}));
    assert_eq!(reason(pooled.verify(&forged, NOW)), "valid", "the hole");

    // Named issuers close it, with every algorithm allowed to each and the same kid in both.
    let v = verifier(&two_issuers(""));
    for (key, kid, iss) in [
        (corp_key(), Some("k1"), PARTNERS),
        (corp_key(), None, PARTNERS),
        (partners_key(), Some("k1"), CORP),
        (partners_key(), None, CORP),
    ] {
        let forged = token(&key, kid, iss, json!({}));
        assert_eq!(
            reason(v.verify(&forged, NOW)),
            "alg_not_allowed",
            "{iss} {kid:?}: the claimed issuer's keys are not bound to the signer's alg"
        );
    }
    // Same algorithm at both issuers (two RSA keys): the other issuer's key is not tried.
    let v = verifier(&format!(
        r#"
audiences = ["api"]
[[issuer]]
name = "corp"
iss = "{CORP}"
keys = [{{ pem = "{a}", alg = "RS256" }}]
[[issuer]]
name = "partners"
iss = "{PARTNERS}"
keys = [{{ pem = "{b}", alg = "RS256" }}]
"#,
        a = data("rsa2048.pub.pem").display(),
        b = data("rsa2048b.pub.pem").display(),
    ));
    let partners_rsa = signer("rsa2048b.key", Algorithm::RS256);
    assert_eq!(
        reason(v.verify(&token(&corp_key(), None, PARTNERS, json!({})), NOW)),
        "bad_signature"
    );
    assert_eq!(
        reason(v.verify(&token(&partners_rsa, None, CORP, json!({})), NOW)),
        "bad_signature"
    );
    let ok = v
        .verify(&token(&partners_rsa, None, PARTNERS, json!({})), NOW)
        .unwrap();
    assert_eq!(ok.issuer_name(), "partners");
}

#[test]
fn each_issuer_verifies_its_own_tokens_with_a_shared_kid() {
    let v = verifier(&two_issuers(""));
    let corp = v
        .verify(&token(&corp_key(), Some("k1"), CORP, json!({})), NOW)
        .unwrap();
    assert_eq!((corp.issuer_name(), corp.alg()), ("corp", Algorithm::RS256));
    let partners = v
        .verify(
            &token(&partners_key(), Some("k1"), PARTNERS, json!({})),
            NOW,
        )
        .unwrap();
    assert_eq!(
        (partners.issuer_name(), partners.alg()),
        ("partners", Algorithm::ES256)
    );
    // No unnamed issuer is configured: an unknown or missing `iss` selects nobody.
    for iss in [json!("https://other.test/"), json!(null), json!(7)] {
        let mut c = claims();
        c.insert("iss".into(), iss.clone());
        let mut h = Map::new();
        h.insert("kid".into(), "k1".into());
        let t = corp_key().sign(h, &c).unwrap();
        assert_eq!(reason(v.verify(&t, NOW)), "bad_issuer", "{iss}");
    }
    assert_eq!(v.unknown_issuer_count(), 3);
    let stats = v.issuer_stats();
    assert_eq!(
        stats
            .iter()
            .map(|s| (s.name.as_str(), s.verified, s.rejected, s.keys))
            .collect::<Vec<_>>(),
        [("corp", 1, 0, 1), ("partners", 1, 0, 1)]
    );
}

#[test]
fn the_unnamed_issuer_never_verifies_a_named_issuers_token() {
    // The unnamed issuer checks no `iss` at all, and holds an RSA key.
    let v = verifier(&format!(
        r#"
audiences = ["api"]
keys = [{{ pem = "{rsa}", alg = "RS256" }}]
[[issuer]]
name = "partners"
iss = "{PARTNERS}"
keys = [{{ pem = "{ec}", alg = "ES256" }}]
"#,
        rsa = data("rsa2048.pub.pem").display(),
        ec = data("ec256.pub.pem").display(),
    ));
    let t = v
        .verify(
            &token(&corp_key(), None, "https://anything.test/", json!({})),
            NOW,
        )
        .unwrap();
    assert_eq!(t.issuer_name(), "default");
    assert_eq!(
        reason(v.verify(&token(&corp_key(), None, PARTNERS, json!({})), NOW)),
        "alg_not_allowed",
        "partners' token signed with the unnamed issuer's key"
    );
    let p = v
        .verify(&token(&partners_key(), None, PARTNERS, json!({})), NOW)
        .unwrap();
    assert_eq!(p.issuer_name(), "partners");
    assert_eq!(
        v.issuer_names().collect::<Vec<_>>(),
        ["default", "partners"]
    );
}

#[test]
fn algorithms_and_audiences_per_issuer() {
    let v = verifier(&format!(
        r#"
audiences = ["api"]
[[issuer]]
name = "corp"
iss = "{CORP}"
algorithms = ["PS256"]
keys = [{{ pem = "{rsa}" }}]
[[issuer]]
name = "partners"
iss = "{PARTNERS}"
audiences = ["partner-api"]
keys = [{{ pem = "{ec}" }}]
"#,
        rsa = data("rsa2048.pub.pem").display(),
        ec = data("ec256.pub.pem").display(),
    ));
    // corp's key would verify RS256, but corp accepts PS256 only.
    assert_eq!(
        reason(v.verify(&token(&corp_key(), None, CORP, json!({})), NOW)),
        "alg_not_allowed"
    );
    let ps = signer("rsa2048.key", Algorithm::PS256);
    assert!(v.verify(&token(&ps, None, CORP, json!({})), NOW).is_ok());
    // corp falls back to [jwt] audiences; partners has its own.
    assert_eq!(
        reason(v.verify(&token(&partners_key(), None, PARTNERS, json!({})), NOW)),
        "bad_audience"
    );
    let aud = json!({"aud": "partner-api"});
    assert!(v
        .verify(&token(&partners_key(), None, PARTNERS, aud.clone()), NOW)
        .is_ok());
    assert_eq!(
        reason(v.verify(&token(&ps, None, CORP, aud), NOW)),
        "bad_audience"
    );
}

#[test]
fn a_kidless_token_is_tried_against_a_bounded_number_of_keys() {
    let dir = TempDir::new("kidless");
    let pairs: Vec<Pair> = (0..MAX_KIDLESS_KEYS + 2)
        .map(|_| pair(Algorithm::ES256, None))
        .collect();
    let mut keys = Vec::new();
    for (i, p) in pairs.iter().enumerate() {
        let pk = p.signer.public_key().unwrap();
        let jwk = json!({"kty": "EC", "crv": "P-256", "alg": "ES256",
            "x": b64(&pk[1..33]), "y": b64(&pk[33..])});
        let path = dir.write(&format!("k{i}.jwk"), jwk.to_string());
        keys.push(format!("{{ jwk = \"{path}\" }}"));
    }
    let v = verifier(&format!(
        "audiences = [\"api\"]\n[[issuer]]\nname = \"many\"\niss = \"{CORP}\"\nkeys = [{}]\n",
        keys.join(", ")
    ));
    for (i, p) in pairs.iter().enumerate() {
        let kidless = token(&p.signer, None, CORP, json!({}));
        let want = if i < MAX_KIDLESS_KEYS {
            "valid"
        } else {
            "bad_signature"
        };
        assert_eq!(reason(v.verify(&kidless, NOW)), want, "key {i}");
    }
}

fn ed25519_jwk(p: &Pair, kid: &str) -> Value {
    let pk = p.signer.public_key().unwrap();
    json!({"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA", "kid": kid, "x": b64(&pk)})
}

/// corp from a JWKS URL (EdDSA), partners from a PEM file (ES256, the same kid), cache on.
async fn jwks_and_pem(dir: &TempDir) -> (JwksServer, Verifier, gateway::keys::JwksSource) {
    let ca = dir.path().join("ca.pem").display().to_string();
    let srv = JwksServer::start().await;
    std::fs::write(&ca, &srv.ca_pem).unwrap();
    let cfg: VerifierConfig = toml::from_str(&format!(
        r#"
audiences = ["api"]
[[issuer]]
name = "corp"
iss = "{CORP}"
keys = [{{ jwks_url = "{url}", ca_file = "{ca}", refetch_interval = "50ms" }}]
[[issuer]]
name = "partners"
iss = "{PARTNERS}"
keys = [{{ pem = "{ec}", kid = "k1", alg = "ES256" }}]
"#,
        url = srv.url,
        ec = data("ec256.pub.pem").display(),
    ))
    .unwrap();
    let (v, mut urls) = Verifier::load(cfg, KeyStore::new()).unwrap();
    assert_eq!(urls.len(), 1);
    let (issuer, source) = urls.remove(0);
    assert_eq!(issuer, "corp");
    (srv, v, source)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwks_rotation_and_refetch_stay_within_one_issuer() {
    let dir = TempDir::new("issuer-jwks");
    let (srv, v, corp_source) = jwks_and_pem(&dir).await;
    let (old, new) = (pair(Algorithm::EdDSA, None), pair(Algorithm::EdDSA, None));
    srv.serve(json!([ed25519_jwk(&old, "k1")]));
    corp_source.refresh().await.unwrap();
    let corp = token(&old.signer, Some("k1"), CORP, json!({}));
    let partners = token(&partners_key(), Some("k1"), PARTNERS, json!({}));
    for _ in 0..2 {
        assert_eq!(v.verify(&corp, NOW).unwrap().issuer_name(), "corp");
        assert_eq!(v.verify(&partners, NOW).unwrap().issuer_name(), "partners");
    }
    assert_eq!(v.cache_stats().unwrap().hits, 2);

    // Corp rotates: its cached token stops verifying, partners' cached token is untouched.
    srv.serve(json!([ed25519_jwk(&new, "k2")]));
    corp_source.refresh().await.unwrap();
    assert_eq!(reason(v.verify(&corp, NOW)), "key_not_found");
    assert!(v.verify(&partners, NOW).is_ok());
    // Both were found in the cache; corp's was dropped there (its key is gone, so it went
    // to a full check), partners' was served.
    let st = v.cache_stats().unwrap();
    assert_eq!(
        (st.hits, st.entries),
        (4, 1),
        "partners' entry survived, corp's did not"
    );
    let rotated = token(&new.signer, Some("k2"), CORP, json!({}));
    assert!(v.verify(&rotated, NOW).is_ok());

    // An unknown kid at partners (no JWKS) never makes corp's source fetch; at corp it does.
    let _task = corp_source.spawn(std::time::Duration::from_secs(3600));
    // Past corp's refetch interval, so a request for a refetch would be granted.
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let before = srv.hits();
    let unknown = token(&partners_key(), Some("k9"), PARTNERS, json!({}));
    let r = v
        .verify_async(&unknown, NOW, std::time::Duration::from_millis(300))
        .await;
    assert_eq!(reason(r), "key_not_found");
    assert_eq!(
        srv.hits(),
        before,
        "partners' unknown kid fetched corp's JWKS"
    );
    let unknown = token(&new.signer, Some("k9"), CORP, json!({}));
    let r = v
        .verify_async(&unknown, NOW, std::time::Duration::from_secs(5))
        .await;
    assert_eq!(reason(r), "key_not_found");
    assert_eq!(
        srv.hits(),
        before + 1,
        "corp's unknown kid refetched corp's JWKS"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn symmetric_keys_are_never_taken_from_a_jwks_url() {
    let dir = TempDir::new("issuer-oct");
    let (srv, v, corp_source) = jwks_and_pem(&dir).await;
    let secret = [7u8; 32];
    let oct = json!({"kty": "oct", "alg": "HS256", "kid": "s1", "k": b64(&secret)});
    let hs = SigningKey::hmac(&secret, Algorithm::HS256).unwrap();
    // Only a secret: the fetch fails (no usable key), nothing is loaded.
    srv.serve(json!([oct.clone()]));
    assert!(corp_source.refresh().await.is_err());
    assert_eq!(v.issuer_keys("corp").unwrap().snapshot().len(), 0);
    // Beside a signature key: the secret is skipped, the other key loads.
    let ed = pair(Algorithm::EdDSA, None);
    srv.serve(json!([oct, ed25519_jwk(&ed, "e1")]));
    corp_source.refresh().await.unwrap();
    assert_eq!(v.issuer_keys("corp").unwrap().snapshot().len(), 1);
    let forged = token(&hs, Some("s1"), CORP, json!({}));
    assert_eq!(reason(v.verify(&forged, NOW)), "key_not_found");
    assert!(v
        .verify(&token(&ed.signer, Some("e1"), CORP, json!({})), NOW)
        .is_ok());
}

#[test]
fn the_verification_budget_holds_a_bad_signature_flood_to_its_source() {
    let cfg = two_issuers("verify_budget = { rate = \"10/s\", burst = 20 }");
    let mut cfg: VerifierConfig = toml::from_str(&cfg).unwrap();
    cfg.cache.enabled = true;
    let v = build(cfg);
    let flooder: IpAddr = "192.0.2.66".parse().unwrap();
    let good: IpAddr = "192.0.2.7".parse().unwrap();
    let valid = token(&partners_key(), Some("k1"), PARTNERS, json!({}));
    // The flooder's valid token is verified once (and cached) before its flood.
    assert!(v.verify_from(&valid, NOW, flooder).is_ok());
    let stranger = pair(Algorithm::ES256, None);
    let mut reasons = std::collections::BTreeMap::new();
    let started = std::time::Instant::now();
    for i in 0..2_000 {
        let bad = token(&stranger.signer, Some("k1"), PARTNERS, json!({ "n": i }));
        *reasons
            .entry(reason(v.verify_from(&bad, NOW, flooder)))
            .or_insert(0) += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let flood_ended = std::time::Instant::now();
    let checked = reasons.get("bad_signature").copied().unwrap_or(0);
    // burst 20, minus the one spent above, plus 10/s while the loop ran.
    let most = 19 + (elapsed * 10.0).ceil() as i32;
    assert!(
        checked <= most && checked >= 19,
        "{checked} signature checks in {elapsed:.2}s: {reasons:?}"
    );
    assert_eq!(
        reasons.get("verify_budget").copied().unwrap_or(0),
        2_000 - checked
    );
    assert!(v.budget_refused_count() >= 1_900);
    // Meanwhile another source verifies fresh tokens normally.
    for i in 0..15 {
        let fresh = token(&corp_key(), Some("k1"), CORP, json!({ "n": i }));
        assert_eq!(reason(v.verify_from(&fresh, NOW, good)), "valid", "{i}");
    }
    // The flooder's cached token costs no check and still passes; a fresh one does not.
    assert!(v.verify_from(&valid, NOW, flooder).is_ok());
    // The budget refills at 10/s meanwhile (more on a loaded machine): at most that many
    // fresh tokens are checked before one is refused again.
    let mut passed = 0;
    let refused_again = (0..1_000).any(|i| {
        let fresh = token(&partners_key(), Some("k1"), PARTNERS, json!({ "x": i }));
        let r = reason(v.verify_from(&fresh, NOW, flooder));
        passed += usize::from(r == "valid");
        r == "verify_budget"
    });
    let refilled = 1 + (flood_ended.elapsed().as_secs_f64() * 10.0).ceil() as usize;
    assert!(
        refused_again && passed <= refilled,
        "{passed} fresh tokens checked, at most {refilled} refilled"
    );
    // IPv6 sources share a budget per /64: rotating the interface id does not help.
    let v6 = |i: u16| -> IpAddr { format!("2001:db8:1:2::{i:x}").parse().unwrap() };
    let mut refused = 0;
    for i in 0..100u16 {
        let bad = token(&stranger.signer, Some("k1"), PARTNERS, json!({ "v6": i }));
        refused += usize::from(reason(v.verify_from(&bad, NOW, v6(i))) == "verify_budget");
    }
    assert!(refused >= 70, "{refused}");
    // Without a source (the CLI) no budget applies.
    let fresh = token(&partners_key(), Some("k1"), PARTNERS, json!({ "n": "cli" }));
    assert!(v.verify(&fresh, NOW).is_ok());
}

#[test]
fn config_mistakes_are_refused() {
    let base = two_issuers("");
    for (extra, want) in [
        ("[[issuer]]\nname = \"corp\"\niss = \"https://x/\"\nkeys = [{ jwk = \"/x\" }]\n", "defined twice"),
        ("[[issuer]]\nname = \"x\"\niss = \"https://corp.test/\"\nkeys = [{ jwk = \"/x\" }]\n", "iss is also issuer `corp`'s"),
        ("[[issuer]]\nname = \"default\"\niss = \"https://x/\"\nkeys = [{ jwk = \"/x\" }]\n", "not `default`"),
        ("[[issuer]]\nname = \"x\"\niss = \"https://x/\"\nkeys = []\n", "has no keys"),
        ("[[issuer]]\nname = \"x\"\niss = \"\"\nkeys = [{ jwk = \"/x\" }]\n", "iss must not be empty"),
        ("[[issuer]]\nname = \"x\"\niss = \"https://x/\"\nkeys = [{ jwk = \"/x\", refresh = \"1m\" }]\n", "applies to jwks_url"),
    ] {
        let cfg: VerifierConfig = toml::from_str(&format!("{base}\n{extra}")).unwrap();
        let e = cfg.validate().unwrap_err().to_string();
        assert!(e.contains(want), "{e}");
    }
    let cfg: VerifierConfig = toml::from_str(&format!("issuers = [\"{CORP}\"]\n{base}")).unwrap();
    assert!(cfg
        .validate()
        .unwrap_err()
        .to_string()
        .contains("also in [jwt] issuers"));
    assert!(toml::from_str::<VerifierConfig>("[[issuer]]\nname = \"x\"\nkeys = []\n").is_err());
    assert!(toml::from_str::<VerifierConfig>("verify_budget = { rate = \"fast\" }").is_err());
}

#[test]
fn token_verify_with_a_config_uses_its_issuers() {
    let dir = TempDir::new("issuer-cli");
    let cfg = dir.write(
        "gw.toml",
        format!(
            "[jwt]\nverify_budget = {{ enabled = false }}\n{}",
            two_issuers("").replace("[[issuer]]", "[[jwt.issuer]]")
        ),
    );
    let now = NOW.to_string();
    let verify = |t: &str| {
        gateway(
            &["token", "verify", "--config", &cfg, "--now", &now, t],
            None,
        )
    };
    let (code, out, err) = verify(&token(&partners_key(), Some("k1"), PARTNERS, json!({})));
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = verify(&token(&corp_key(), Some("k1"), CORP, json!({})));
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, _) = verify(&token(&corp_key(), Some("k1"), PARTNERS, json!({})));
    assert_eq!(code, 1, "cross-signed token: {out}");
    assert!(out.contains("alg_not_allowed"), "{out}");
}

#[test]
fn issuer_config_errors_name_the_entry_line_and_key() {
    let cfg = "[jwt]\naudiences = [\"a\"]\n\n[[jwt.issuer]]\nname = \"corp\"\niss = \"https://c/\"\nkeys = [{ jwk = \"/k\" }]\n\n[[jwt.issuer]]\nname = \"p\"\niss = \"https://c/\"\nkeys = [{ jwk = \"/k\" }]\n";
    let e = gateway::config::Config::parse(std::path::Path::new("gw.toml"), cfg)
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "gw.toml:11: jwt.issuer[1].iss: issuer `p`: iss is also issuer `corp`'s"
    );
    let cfg = cfg.replace("jwk = \"/k\" }]\n\n[[", "jwk = \"/k\", retry = 5 }]\n\n[[");
    let e = gateway::config::Config::parse(std::path::Path::new("gw.toml"), &cfg)
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("gw.toml:7: jwt.issuer[0].keys: issuer `corp`: "),
        "{e}"
    );
}
