//! Token signing, for `gateway token mint`, tests and benchmarks (the gateway itself only
//! verifies).

use super::alg::{Algorithm, KeyFamily};
use super::b64;
use crate::keys::pem;
use ring::{hmac, rand, signature};
use serde_json::{Map, Value};

/// Why a signing key could not be loaded or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignError {
    /// The key does not suit the algorithm or cannot be parsed.
    #[error("signing key: {0}")]
    Key(String),
    /// ring refused to sign.
    #[error("signing failed")]
    Sign,
}

enum Inner {
    Hmac(hmac::Key),
    Rsa(signature::RsaKeyPair),
    Ecdsa(signature::EcdsaKeyPair),
    Ed25519(signature::Ed25519KeyPair),
}

/// A private key (or HMAC secret) bound to one algorithm.
pub struct SigningKey {
    alg: Algorithm,
    inner: Inner,
    rng: rand::SystemRandom,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("alg", &self.alg)
            .finish()
    }
}

impl SigningKey {
    /// An HMAC secret for HS256/384/512. Empty secrets are refused: nothing would verify.
    pub fn hmac(secret: &[u8], alg: Algorithm) -> Result<Self, SignError> {
        let h = match alg {
            Algorithm::HS256 => hmac::HMAC_SHA256,
            Algorithm::HS384 => hmac::HMAC_SHA384,
            Algorithm::HS512 => hmac::HMAC_SHA512,
            _ => return Err(SignError::Key(format!("{alg} is not an HMAC algorithm"))),
        };
        if secret.is_empty() {
            return Err(SignError::Key("empty HMAC secret".into()));
        }
        Ok(SigningKey {
            alg,
            inner: Inner::Hmac(hmac::Key::new(h, secret)),
            rng: rand::SystemRandom::new(),
        })
    }

    /// A private key in PKCS#8 DER (RSA may also be PKCS#1 DER).
    pub fn from_der(der: &[u8], alg: Algorithm) -> Result<Self, SignError> {
        let rng = rand::SystemRandom::new();
        let err = |e: &dyn std::fmt::Display| SignError::Key(format!("{alg}: {e}"));
        let inner = match alg.family() {
            KeyFamily::Hmac => {
                return Err(SignError::Key(
                    "HMAC needs a secret, not a private key".into(),
                ))
            }
            KeyFamily::Rsa => Inner::Rsa(
                signature::RsaKeyPair::from_pkcs8(der)
                    .or_else(|_| signature::RsaKeyPair::from_der(der))
                    .map_err(|e| err(&e))?,
            ),
            KeyFamily::EcP256 => Inner::Ecdsa(
                signature::EcdsaKeyPair::from_pkcs8(
                    &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
                    der,
                    &rng,
                )
                .map_err(|e| err(&e))?,
            ),
            KeyFamily::EcP384 => Inner::Ecdsa(
                signature::EcdsaKeyPair::from_pkcs8(
                    &signature::ECDSA_P384_SHA384_FIXED_SIGNING,
                    der,
                    &rng,
                )
                .map_err(|e| err(&e))?,
            ),
            KeyFamily::Ed25519 => Inner::Ed25519(
                signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der).map_err(|e| err(&e))?,
            ),
        };
        Ok(SigningKey { alg, inner, rng })
    }

    /// A private key from PEM (`PRIVATE KEY` PKCS#8, or `RSA PRIVATE KEY` PKCS#1).
    pub fn from_pem(text: &[u8], alg: Algorithm) -> Result<Self, SignError> {
        let blocks = pem::parse(text).map_err(|e| SignError::Key(e.to_string()))?;
        let block = blocks
            .iter()
            .find(|b| b.label == "PRIVATE KEY" || b.label == "RSA PRIVATE KEY")
            .ok_or_else(|| {
                SignError::Key("no PRIVATE KEY (PKCS#8) or RSA PRIVATE KEY block".into())
            })?;
        Self::from_der(&block.der, alg)
    }

    /// The algorithm this key signs with.
    pub fn alg(&self) -> Algorithm {
        self.alg
    }

    /// The public key as SubjectPublicKeyInfo PEM-ready DER is not needed here; the raw
    /// public key bytes (PKCS#1 for RSA, SEC1 point, Ed25519 32 bytes), or `None` for HMAC.
    pub fn public_key(&self) -> Option<Vec<u8>> {
        use signature::KeyPair;
        match &self.inner {
            Inner::Hmac(_) => None,
            Inner::Rsa(k) => Some(k.public().as_ref().to_vec()),
            Inner::Ecdsa(k) => Some(k.public_key().as_ref().to_vec()),
            Inner::Ed25519(k) => Some(k.public_key().as_ref().to_vec()),
        }
    }

    /// Signs `msg` (the JWS signing input).
    pub fn sign_bytes(&self, msg: &[u8]) -> Result<Vec<u8>, SignError> {
        Ok(match &self.inner {
            Inner::Hmac(k) => hmac::sign(k, msg).as_ref().to_vec(),
            Inner::Rsa(k) => {
                let pad: &'static dyn signature::RsaEncoding = match self.alg {
                    Algorithm::RS256 => &signature::RSA_PKCS1_SHA256,
                    Algorithm::RS384 => &signature::RSA_PKCS1_SHA384,
                    Algorithm::RS512 => &signature::RSA_PKCS1_SHA512,
                    Algorithm::PS256 => &signature::RSA_PSS_SHA256,
                    Algorithm::PS384 => &signature::RSA_PSS_SHA384,
                    Algorithm::PS512 => &signature::RSA_PSS_SHA512,
                    _ => return Err(SignError::Sign),
                };
                let mut sig = vec![0u8; k.public().modulus_len()];
                k.sign(pad, &self.rng, msg, &mut sig)
                    .map_err(|_| SignError::Sign)?;
                sig
            }
            Inner::Ecdsa(k) => k
                .sign(&self.rng, msg)
                .map_err(|_| SignError::Sign)?
                .as_ref()
                .to_vec(),
            Inner::Ed25519(k) => k.sign(msg).as_ref().to_vec(),
        })
    }

    /// Builds a compact JWS from a header (its `alg` is set to this key's) and claims.
    pub fn sign(
        &self,
        mut header: Map<String, Value>,
        claims: &Map<String, Value>,
    ) -> Result<String, SignError> {
        header.insert("alg".into(), Value::String(self.alg.as_str().into()));
        let h = serde_json::to_vec(&header).map_err(|_| SignError::Sign)?;
        let c = serde_json::to_vec(claims).map_err(|_| SignError::Sign)?;
        encode_with(&h, &c, |m| self.sign_bytes(m))
    }
}

/// Assembles `b64(header).b64(payload).b64(sign(...))` from raw header and payload bytes
/// (tests use it to build deliberately odd tokens).
pub fn encode_with(
    header: &[u8],
    payload: &[u8],
    sign: impl FnOnce(&[u8]) -> Result<Vec<u8>, SignError>,
) -> Result<String, SignError> {
    let mut out = String::new();
    b64::encode_url_into(header, &mut out);
    out.push('.');
    b64::encode_url_into(payload, &mut out);
    let sig = sign(out.as_bytes())?;
    out.push('.');
    b64::encode_url_into(&sig, &mut out);
    Ok(out)
}
