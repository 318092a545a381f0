//! JWK and JWK Set documents (RFC 7517/7518) into [`VerifyingKey`]s.
//!
//! A single JWK that cannot be used is an error. In a JWK Set, keys we cannot use for
//! signature verification (`use: enc`, unknown `kty`/`crv`/`alg`, bad material) are skipped
//! with a warning, because real issuers publish encryption keys beside signing keys; a set
//! with no usable key at all is an error. Private members (`d`, `p`, ...) are ignored.

use super::{KeyError, VerifyingKey};
use crate::jwt::{b64, json, AlgSet, Algorithm, KeyFamily};
use serde_json::{Map, Value};

fn field<'a>(jwk: &'a Map<String, Value>, name: &str) -> Result<Option<&'a str>, String> {
    match jwk.get(name) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(format!("member {name:?} is not a string")),
    }
}

fn bytes(jwk: &Map<String, Value>, name: &str) -> Result<Vec<u8>, String> {
    let s = field(jwk, name)?.ok_or_else(|| format!("missing member {name:?}"))?;
    b64::decode_url(s.as_bytes()).map_err(|e| format!("member {name:?}: {e}"))
}

/// Converts one JWK object; `alg_override` binds a key that has no `alg` of its own.
fn convert(
    jwk: &Map<String, Value>,
    origin: &str,
    alg_override: Option<Algorithm>,
) -> Result<VerifyingKey, String> {
    let kty = field(jwk, "kty")?.ok_or("missing member \"kty\"")?;
    if let Some(u) = field(jwk, "use")? {
        if u != "sig" {
            return Err(format!("key use {u:?} is not \"sig\""));
        }
    }
    if let Some(ops) = jwk.get("key_ops") {
        let Value::Array(ops) = ops else {
            return Err("member \"key_ops\" is not an array".into());
        };
        if !ops.iter().any(|o| o.as_str() == Some("verify")) {
            return Err("key_ops does not include \"verify\"".into());
        }
    }
    let alg = match field(jwk, "alg")? {
        None => alg_override,
        Some(name) => {
            let a = Algorithm::from_name(name)
                .ok_or_else(|| format!("unsupported algorithm {name:?}"))?;
            if alg_override.is_some_and(|o| o != a) {
                return Err(format!(
                    "key alg {name} conflicts with the configured algorithm"
                ));
            }
            Some(a)
        }
    };
    let kid = field(jwk, "kid")?;
    let key = match kty {
        "RSA" => {
            let n = bytes(jwk, "n")?;
            let e = bytes(jwk, "e")?;
            VerifyingKey::rsa_components(&n, &e, kid, alg, origin)
        }
        "EC" => {
            let (family, len) = match field(jwk, "crv")? {
                Some("P-256") => (KeyFamily::EcP256, 32),
                Some("P-384") => (KeyFamily::EcP384, 48),
                Some(c) => return Err(format!("unsupported curve {c:?}")),
                None => return Err("missing member \"crv\"".into()),
            };
            let x = bytes(jwk, "x")?;
            let y = bytes(jwk, "y")?;
            // RFC 7518 §6.2.1.2: coordinates are full length, never shortened.
            if x.len() != len || y.len() != len {
                return Err("EC coordinates are not the curve's length".into());
            }
            let mut point = Vec::with_capacity(1 + 2 * len);
            point.push(4);
            point.extend_from_slice(&x);
            point.extend_from_slice(&y);
            VerifyingKey::ec_point(family, &point, kid, alg, origin)
        }
        "OKP" => match field(jwk, "crv")? {
            Some("Ed25519") => VerifyingKey::ed25519(&bytes(jwk, "x")?, kid, alg, origin),
            Some(c) => return Err(format!("unsupported OKP curve {c:?}")),
            None => return Err("missing member \"crv\"".into()),
        },
        "oct" => {
            let k = bytes(jwk, "k")?;
            if k.is_empty() {
                return Err("empty HMAC secret".into());
            }
            // RFC 7518 §3.2: the key must be at least as long as the hash output.
            let need = match alg {
                Some(Algorithm::HS384) => 48,
                Some(Algorithm::HS512) => 64,
                _ => 32,
            };
            if k.len() < need {
                return Err(format!(
                    "HMAC secret of {} bytes is shorter than the {need} the algorithm needs",
                    k.len()
                ));
            }
            let algs = match alg {
                Some(a) => AlgSet::only(a),
                // Without alg, only the HS* whose hash the key is long enough for.
                None => [
                    (Algorithm::HS256, 32),
                    (Algorithm::HS384, 48),
                    (Algorithm::HS512, 64),
                ]
                .into_iter()
                .filter(|&(_, n)| k.len() >= n)
                .map(|(a, _)| a)
                .collect(),
            };
            VerifyingKey::hmac_bound(&k, kid, algs, origin)
        }
        other => return Err(format!("unsupported key type {other:?}")),
    };
    key.map_err(|e| match e {
        KeyError::Invalid { detail, .. } => detail,
        other => other.to_string(),
    })
}

/// Parses one JWK document.
pub fn parse_jwk(
    bytes: &[u8],
    origin: &str,
    alg: Option<Algorithm>,
) -> Result<VerifyingKey, KeyError> {
    let map = json::parse_object(bytes).map_err(|e| KeyError::invalid(origin, e))?;
    convert(&map, origin, alg).map_err(|d| KeyError::invalid(origin, d))
}

/// Parses a JWK Set document, skipping unusable keys (see the module docs).
pub fn parse_jwks(
    bytes: &[u8],
    origin: &str,
    alg: Option<Algorithm>,
) -> Result<Vec<VerifyingKey>, KeyError> {
    let map = json::parse_object(bytes).map_err(|e| KeyError::invalid(origin, e))?;
    jwks_from_map(&map, origin, alg, Secrets::Allowed)
}

/// Parses a JWK Set fetched from a URL: like [`parse_jwks`], but symmetric (`oct`) keys are
/// skipped. An HMAC secret served over the network is a secret every fetcher knows, so it
/// would let anyone who can read the URL mint tokens.
pub fn parse_remote_jwks(
    bytes: &[u8],
    origin: &str,
    alg: Option<Algorithm>,
) -> Result<Vec<VerifyingKey>, KeyError> {
    let map = json::parse_object(bytes).map_err(|e| KeyError::invalid(origin, e))?;
    jwks_from_map(&map, origin, alg, Secrets::Refused)
}

/// Whether a JWK Set may supply HMAC secrets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Secrets {
    Allowed,
    Refused,
}

fn jwks_from_map(
    map: &Map<String, Value>,
    origin: &str,
    alg: Option<Algorithm>,
    secrets: Secrets,
) -> Result<Vec<VerifyingKey>, KeyError> {
    let Some(Value::Array(items)) = map.get("keys") else {
        return Err(KeyError::invalid(
            origin,
            "not a JWK Set (no \"keys\" array)",
        ));
    };
    let mut out: Vec<VerifyingKey> = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let Value::Object(jwk) = item else {
            tracing::warn!(%origin, index = i, "JWKS entry is not an object; skipped");
            continue;
        };
        if secrets == Secrets::Refused && jwk.get("kty").and_then(Value::as_str) == Some("oct") {
            tracing::warn!(%origin, index = i, kid = ?jwk.get("kid"), "symmetric (oct) key in a JWKS URL's set; skipped: secrets are never taken from a URL");
            continue;
        }
        match convert(jwk, origin, alg) {
            Ok(k) => {
                if let Some(kid) = k.kid() {
                    if out.iter().any(|o| o.kid() == Some(kid)) {
                        return Err(KeyError::invalid(
                            origin,
                            format_args!("two keys share kid {kid:?}"),
                        ));
                    }
                }
                out.push(k);
            }
            Err(why) => {
                tracing::warn!(%origin, index = i, kid = ?jwk.get("kid"), %why, "JWKS key skipped");
            }
        }
    }
    if out.is_empty() {
        return Err(KeyError::invalid(
            origin,
            "JWK Set has no usable signature key",
        ));
    }
    Ok(out)
}

/// Parses a JWK or a JWK Set, deciding by the presence of `keys`.
pub fn parse_jwk_or_jwks(
    bytes: &[u8],
    origin: &str,
    alg: Option<Algorithm>,
) -> Result<Vec<VerifyingKey>, KeyError> {
    let map = json::parse_object(bytes).map_err(|e| KeyError::invalid(origin, e))?;
    if map.contains_key("keys") {
        jwks_from_map(&map, origin, alg, Secrets::Allowed)
    } else {
        convert(&map, origin, alg)
            .map(|k| vec![k])
            .map_err(|d| KeyError::invalid(origin, d))
    }
}
