//! `gateway token verify | inspect | mint` through the real binary: exit codes and output.

use super::support::*;
use serde_json::Value;

fn path(name: &str) -> String {
    data(name).display().to_string()
}

fn mint_cli(args: &[&str]) -> String {
    let (code, out, err) = gateway(&[&["token", "mint"], args].concat(), None);
    assert_eq!(code, 0, "mint {args:?}: {err}");
    out.trim().to_owned()
}

fn verify_json(args: &[&str], stdin: Option<&str>) -> (i32, Value) {
    let (code, out, err) = gateway(&[&["token", "verify", "--json"], args].concat(), stdin);
    assert!(code == 0 || code == 1, "exit {code}: {err}");
    let v: Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    // The contract's shape, on both 0 and 1.
    let o = v.as_object().unwrap();
    assert_eq!(o.len(), 4, "{v}");
    assert_eq!(o["valid"].as_bool(), Some(code == 0));
    assert!(o["header"].is_object() && o["claims"].is_object(), "{v}");
    if code == 0 {
        assert!(o["reason"].is_null());
    } else {
        assert!(
            gateway::jwt::REASONS.contains(&o["reason"].as_str().unwrap()),
            "{v}"
        );
    }
    (code, v)
}

#[test]
fn mint_then_verify_every_key_kind() {
    let now = NOW.to_string();
    for (alg, key, public, flag) in [
        ("RS256", "rsa2048.key", "rsa2048.pub.pem", "--key"),
        ("RS512", "rsa2048.key", "rsa2048.pkcs1.pub.pem", "--key"),
        ("PS256", "rsa2048.key", "rsa2048.crt", "--key"),
        ("PS512", "rsa2048.key", "rsa2048.pub.pem", "--key"),
        ("ES256", "ec256.key", "ec256.pub.pem", "--key"),
        ("ES384", "ec384.key", "ec384.pub.pem", "--key"),
        ("EdDSA", "ed25519.key", "ed25519.pub.pem", "--key"),
        ("HS256", "hs.secret", "hs.secret", "--secret-file"),
        ("HS512", "hs.secret", "hs.secret", "--secret-file"),
    ] {
        let t = mint_cli(&[
            "--key",
            &path(key),
            "--alg",
            alg,
            "--iss",
            "https://i/",
            "--aud",
            "api",
            "--aud",
            "web",
            "--claims",
            r#"{"sub":"u1","scope":"read"}"#,
            "--now",
            &now,
            "--ttl",
            "10m",
        ]);
        let (code, v) = verify_json(
            &[
                flag,
                &path(public),
                "--iss",
                "https://i/",
                "--aud",
                "web",
                "--now",
                &now,
                &t,
            ],
            None,
        );
        assert_eq!(code, 0, "{alg}: {v}");
        assert_eq!(v["header"]["alg"], alg);
        assert_eq!(v["claims"]["sub"], "u1");
        assert_eq!(v["claims"]["exp"], NOW + 600);
        assert_eq!(v["claims"]["aud"], serde_json::json!(["api", "web"]));
        // Expired ten minutes later (leeway 30 s by default).
        let later = (NOW + 630).to_string();
        let (code, v) = verify_json(&[flag, &path(public), "--now", &later, &t], None);
        assert_eq!((code, v["reason"].as_str()), (1, Some("expired")), "{alg}");
        let later = (NOW + 629).to_string();
        assert_eq!(
            verify_json(&[flag, &path(public), "--now", &later, &t], None).0,
            0
        );
        assert_eq!(
            verify_json(
                &[flag, &path(public), "--now", &later, "--leeway", "0", &t],
                None
            )
            .0,
            1
        );
    }
}

#[test]
fn verify_exit_codes_and_rules() {
    let now = NOW.to_string();
    let key = path("ec256.pub.pem");
    let t = mint_cli(&["--key", &path("ec256.key"), "--alg", "ES256", "--now", &now]);
    // Token from stdin (absent and "-"), whitespace trimmed.
    let padded = format!("  \n{t}\n\n");
    assert_eq!(
        verify_json(&["--key", &key, "--now", &now], Some(&padded)).0,
        0
    );
    assert_eq!(
        verify_json(&["--key", &key, "--now", &now, "-"], Some(&padded)).0,
        0
    );
    // Plain output.
    let (code, out, _) = gateway(&["token", "verify", "--key", &key, "--now", &now, &t], None);
    assert_eq!(code, 0);
    assert!(out.starts_with("valid"), "{out}");
    let (code, out, _) = gateway(&["token", "verify", "--key", &key, "--now", "0", &t], None);
    assert_eq!(code, 1);
    assert!(out.contains("not_yet_valid"), "{out}");
    // Without --iss/--aud those claims are not checked; with them they are.
    let (c, v) = verify_json(&["--key", &key, "--now", &now, "--iss", "x", &t], None);
    assert_eq!((c, v["reason"].as_str()), (1, Some("missing_claim")));
    let (c, v) = verify_json(&["--key", &key, "--now", &now, "--aud", "x", &t], None);
    assert_eq!((c, v["reason"].as_str()), (1, Some("missing_claim")));
    // --alg restricts.
    let (c, v) = verify_json(&["--key", &key, "--now", &now, "--alg", "RS256", &t], None);
    assert_eq!((c, v["reason"].as_str()), (1, Some("alg_not_allowed")));
    assert_eq!(
        verify_json(
            &["--key", &key, "--now", &now, "--alg", "RS256", "--alg", "ES256", &t],
            None
        )
        .0,
        0
    );
    // Missing exp: rejected unless allowed.
    let noexp = mint_cli(&[
        "--key",
        &path("ec256.key"),
        "--alg",
        "ES256",
        "--no-exp",
        "--now",
        &now,
    ]);
    let (c, v) = verify_json(&["--key", &key, "--now", &now, &noexp], None);
    assert_eq!((c, v["reason"].as_str()), (1, Some("missing_claim")));
    assert_eq!(
        verify_json(
            &["--key", &key, "--now", &now, "--allow-missing-exp", &noexp],
            None
        )
        .0,
        0
    );
    // iat in the future beyond the leeway.
    let future = (NOW + 100).to_string();
    let fut = mint_cli(&[
        "--key",
        &path("ec256.key"),
        "--alg",
        "ES256",
        "--now",
        &future,
    ]);
    let (c, v) = verify_json(&["--key", &key, "--now", &now, &fut], None);
    assert_eq!((c, v["reason"].as_str()), (1, Some("not_yet_valid")));
    // Garbage gets exit 1 with empty header/claims objects.
    let (c, v) = verify_json(&["--key", &key, "garbage"], None);
    assert_eq!((c, v["reason"].as_str()), (1, Some("malformed")));
    // Too large: 16385 bytes.
    let big = "A".repeat(16_385);
    let (c, v) = verify_json(&["--key", &key, &big], None);
    assert_eq!((c, v["reason"].as_str()), (1, Some("too_large")));
    // A kid selects only keys with exactly that kid: a PEM key has none.
    let kidt = mint_cli(&[
        "--key",
        &path("ec256.key"),
        "--alg",
        "ES256",
        "--kid",
        "k1",
        "--now",
        &now,
    ]);
    let (c, v) = verify_json(&["--key", &key, "--now", &now, &kidt], None);
    assert_eq!((c, v["reason"].as_str()), (1, Some("key_not_found")));
    assert_eq!(v["header"]["kid"], "k1");
}

#[test]
fn usage_and_key_errors_exit_2() {
    let t = mint_cli(&["--key", &path("ec256.key"), "--alg", "ES256"]);
    let dir = TempDir::new("cli");
    let bad_json = dir.write("bad.json", "{not json");
    let cases: Vec<Vec<String>> = vec![
        vec![t.clone()],
        vec!["--key".into(), "/nonexistent/key.pem".into(), t.clone()],
        vec!["--key".into(), path("rsa1024.pub.pem"), t.clone()],
        vec!["--key".into(), path("ec521.pub.pem"), t.clone()],
        vec!["--key".into(), path("rsa2048.key"), t.clone()],
        vec!["--key".into(), path("README.md"), t.clone()],
        vec!["--jwk".into(), bad_json.clone(), t.clone()],
        vec!["--jwks".into(), bad_json, t.clone()],
        vec!["--secret-file".into(), "/nonexistent".into(), t.clone()],
        vec!["--config".into(), "/nonexistent.toml".into(), t.clone()],
        vec![
            "--key".into(),
            path("ec256.pub.pem"),
            "--alg".into(),
            "none".into(),
            t.clone(),
        ],
        vec![
            "--key".into(),
            path("ec256.pub.pem"),
            "--alg".into(),
            "ES512".into(),
            t.clone(),
        ],
        vec![
            "--key".into(),
            path("ec256.pub.pem"),
            "--leeway".into(),
            "x".into(),
            t.clone(),
        ],
        vec![
            "--key".into(),
            path("ec256.pub.pem"),
            "--bogus".into(),
            t.clone(),
        ],
    ];
    for args in cases {
        let mut full = vec!["token", "verify", "--json"];
        full.extend(args.iter().map(String::as_str));
        let (code, out, err) = gateway(&full, None);
        assert_eq!(code, 2, "{args:?}: {out} {err}");
        assert!(!err.trim().is_empty(), "{args:?}: says why");
    }
    // mint errors.
    for args in [
        vec!["--key", "/nonexistent", "--alg", "ES256"],
        vec!["--key", "ec256.pub.pem", "--alg", "ES256"],
        vec!["--key", "ec256.key", "--alg", "RS256"],
        vec!["--key", "ec256.key", "--alg", "none"],
        vec!["--key", "ec256.key", "--alg", "ES256", "--claims", "[1]"],
        vec![
            "--key",
            "ec256.key",
            "--alg",
            "ES256",
            "--claims",
            r#"{"a":1,"a":2}"#,
        ],
    ] {
        let args: Vec<String> = args
            .iter()
            .map(|a| {
                if a.contains('.') && !a.starts_with('{') && !a.starts_with('/') {
                    path(a)
                } else {
                    a.to_string()
                }
            })
            .collect();
        let mut full = vec!["token", "mint"];
        full.extend(args.iter().map(String::as_str));
        assert_eq!(gateway(&full, None).0, 2, "{args:?}");
    }
}

#[test]
fn secret_files_are_raw_and_empty_never_verifies() {
    let dir = TempDir::new("secret");
    let nl = dir.write("nl.secret", "0123456789abcdef0123456789abcdef\n");
    let bare = dir.write("bare.secret", "0123456789abcdef0123456789abcdef");
    let empty = dir.write("empty.secret", "");
    let t = mint_cli(&["--key", &nl, "--alg", "HS256"]);
    assert_eq!(verify_json(&["--secret-file", &nl, &t], None).0, 0);
    let (c, v) = verify_json(&["--secret-file", &bare, &t], None);
    assert_eq!((c, v["reason"].as_str()), (1, Some("bad_signature")));
    // An empty secret never verifies (even a token HMACed with the empty key).
    let empty_tok = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &serde_json::json!({"exp": 4_000_000_000u64}),
        &jsonwebtoken::EncodingKey::from_secret(b""),
    )
    .unwrap();
    let (code, _, _) = gateway(
        &["token", "verify", "--secret-file", &empty, &empty_tok],
        None,
    );
    assert_ne!(code, 0);
    // Keys of other families never act as HMAC secrets.
    let confused = mint_cli(&["--key", &path("rsa2048.pub.pem"), "--alg", "HS256"]);
    let (c, v) = verify_json(&["--key", &path("rsa2048.pub.pem"), &confused], None);
    assert_eq!((c, v["reason"].as_str()), (1, Some("alg_not_allowed")));
}

#[test]
fn jwk_jwks_and_config_sources() {
    let dir = TempDir::new("jwks");
    let secret = b"jwks-secret-0123456789abcdef0123";
    let jwk = serde_json::json!({"kty":"oct","kid":"h1","alg":"HS256","k": b64(secret)});
    let jwks = serde_json::json!({"keys":[jwk, {"kty":"oct","kid":"H1","alg":"HS256","k": b64(b"another-secret-0123456789abcdef!")}]});
    let jwk_f = dir.write("k.jwk", jwk.to_string());
    let jwks_f = dir.write("k.jwks", jwks.to_string());
    let sec = dir.write("s", secret);
    let t = mint_cli(&["--key", &sec, "--alg", "HS256", "--kid", "h1"]);
    assert_eq!(verify_json(&["--jwk", &jwk_f, &t], None).0, 0);
    assert_eq!(verify_json(&["--jwks", &jwks_f, &t], None).0, 0);
    let wrong_case = mint_cli(&["--key", &sec, "--alg", "HS256", "--kid", "H1"]);
    let (c, v) = verify_json(&["--jwks", &jwks_f, &wrong_case], None);
    assert_eq!((c, v["reason"].as_str()), (1, Some("bad_signature")));
    let nokid = mint_cli(&["--key", &sec, "--alg", "HS256", "--kid", "h2"]);
    let (c, v) = verify_json(&["--jwks", &jwks_f, &nokid], None);
    assert_eq!((c, v["reason"].as_str()), (1, Some("key_not_found")));
    // Combined, repeatable sources.
    assert_eq!(
        verify_json(
            &[
                "--key",
                &path("ec256.pub.pem"),
                "--jwks",
                &jwks_f,
                "--secret-file",
                &sec,
                &t
            ],
            None
        )
        .0,
        0
    );
    // --config with a [jwt] table.
    let cfg = dir.write(
        "gw.toml",
        format!(
            "[jwt]\nissuers = [\"https://i/\"]\nleeway = 0\n[[jwt.keys]]\njwks = \"{jwks_f}\"\n"
        ),
    );
    let with_iss = mint_cli(&[
        "--key",
        &sec,
        "--alg",
        "HS256",
        "--kid",
        "h1",
        "--iss",
        "https://i/",
    ]);
    assert_eq!(verify_json(&["--config", &cfg, &with_iss], None).0, 0);
    let (c, v) = verify_json(&["--config", &cfg, &t], None);
    assert_eq!((c, v["reason"].as_str()), (1, Some("missing_claim")));
    let bad_cfg = dir.write("bad.toml", "[jwt]\nissuer = \"typo\"\n");
    assert_eq!(
        gateway(&["token", "verify", "--config", &bad_cfg, &t], None).0,
        2
    );
}

#[test]
fn inspect_decodes_without_verifying() {
    let t = mint_cli(&[
        "--key",
        &path("ed25519.key"),
        "--alg",
        "EdDSA",
        "--kid",
        "x",
        "--claims",
        r#"{"sub":"s"}"#,
    ]);
    let (code, out, err) = gateway(&["token", "inspect", &t], None);
    assert_eq!(code, 0);
    assert!(err.contains("NOT VERIFIED"), "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["verified"], false);
    assert!(v["warning"].as_str().unwrap().contains("NOT VERIFIED"));
    assert_eq!(v["header"]["kid"], "x");
    assert_eq!(v["claims"]["sub"], "s");
    assert_eq!(v["signature_bytes"], 64);
    // Stdin, and a tampered token still decodes (inspect checks nothing).
    let (head, _) = t.rsplit_once('.').unwrap();
    let (code, out, _) = gateway(&["token", "inspect"], Some(&format!("{head}.AAAA\n")));
    assert_eq!(code, 0);
    assert!(out.contains("\"sub\""));
    let (code, _, _) = gateway(&["token", "inspect", "garbage"], None);
    assert_eq!(code, 1);
}
