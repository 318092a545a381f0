//! One verification key, validated once at load and bound to the algorithms it may verify.

use super::der::{self, PublicKeyDer};
use super::KeyError;
use crate::jwt::{AlgSet, Algorithm, KeyFamily};
use ring::{agreement, digest, hmac, rand, signature};

/// Smallest and largest RSA moduli we accept (ring's verification limits).
const RSA_MIN_BITS: usize = 2048;
const RSA_MAX_BITS: usize = 8192;

enum Material {
    Rsa { pkcs1: Box<[u8]> },
    Ec { point: Box<[u8]> },
    Ed25519 { public: [u8; 32] },
    Hmac(Box<HmacKeys>),
}

struct HmacKeys {
    empty: bool,
    k256: Option<hmac::Key>,
    k384: Option<hmac::Key>,
    k512: Option<hmac::Key>,
}

/// The kind of material a key holds (for display and tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyMaterialKind {
    /// RSA public key.
    Rsa {
        /// Modulus size in bits.
        bits: usize,
    },
    /// P-256 public key.
    EcP256,
    /// P-384 public key.
    EcP384,
    /// Ed25519 public key.
    Ed25519,
    /// HMAC secret.
    Hmac {
        /// Secret length in bytes.
        len: usize,
    },
}

/// A verification key ready for ring, with its `kid` and algorithm binding.
pub struct VerifyingKey {
    kid: Option<Box<str>>,
    algs: AlgSet,
    family: KeyFamily,
    kind: KeyMaterialKind,
    material: Material,
    fingerprint: u64,
    origin: Box<str>,
}

impl std::fmt::Debug for VerifyingKey {
    // Never prints key material (HMAC secrets in particular).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("kid", &self.kid)
            .field("algs", &self.algs)
            .field("kind", &self.kind)
            .field("origin", &self.origin)
            .finish()
    }
}

/// The algorithms a key is bound to: its explicit `alg` if any (which must suit the key),
/// otherwise every algorithm of its family.
fn bind(family: KeyFamily, alg: Option<Algorithm>, origin: &str) -> Result<AlgSet, KeyError> {
    match alg {
        Some(a) if a.family() == family => Ok(AlgSet::only(a)),
        Some(a) => Err(KeyError::invalid(
            origin,
            format_args!("algorithm {a} does not suit a {family:?} key"),
        )),
        None => Ok(family.algorithms()),
    }
}

fn fingerprint(family: KeyFamily, kid: Option<&str>, algs: AlgSet, bytes: &[u8]) -> u64 {
    let mut ctx = digest::Context::new(&digest::SHA256);
    ctx.update(format!("{family:?}").as_bytes());
    ctx.update(&[0]);
    if let Some(k) = kid {
        ctx.update(&[1]);
        ctx.update(&(k.len() as u64).to_be_bytes());
        ctx.update(k.as_bytes());
    } else {
        ctx.update(&[0]);
    }
    ctx.update(&algs.bits().to_be_bytes());
    ctx.update(bytes);
    let d = ctx.finish();
    let mut out = [0u8; 8];
    for (o, b) in out.iter_mut().zip(d.as_ref()) {
        *o = *b;
    }
    u64::from_be_bytes(out)
}

impl VerifyingKey {
    fn build(
        family: KeyFamily,
        kind: KeyMaterialKind,
        material: Material,
        material_bytes: &[u8],
        kid: Option<&str>,
        algs: AlgSet,
        origin: &str,
    ) -> Self {
        VerifyingKey {
            kid: kid.map(Into::into),
            fingerprint: fingerprint(family, kid, algs, material_bytes),
            algs,
            family,
            kind,
            material,
            origin: origin.into(),
        }
    }

    /// An RSA key from a PKCS#1 RSAPublicKey. Moduli outside 2048..=8192 bits, even
    /// exponents and exponents below 3 are refused.
    pub fn rsa_pkcs1(
        pkcs1: &[u8],
        kid: Option<&str>,
        alg: Option<Algorithm>,
        origin: &str,
    ) -> Result<Self, KeyError> {
        let (n, e) = der::rsa_components(pkcs1).map_err(|e| KeyError::invalid(origin, e))?;
        Self::rsa_components(n, e, kid, alg, origin)
    }

    /// An RSA key from big-endian modulus and exponent.
    pub fn rsa_components(
        n: &[u8],
        e: &[u8],
        kid: Option<&str>,
        alg: Option<Algorithm>,
        origin: &str,
    ) -> Result<Self, KeyError> {
        let algs = bind(KeyFamily::Rsa, alg, origin)?;
        let skip = n.iter().take_while(|&&b| b == 0).count();
        let n = n.get(skip..).unwrap_or_default();
        let bits = match n.first() {
            Some(&b) => n.len() * 8 - b.leading_zeros() as usize,
            None => 0,
        };
        if !(RSA_MIN_BITS..=RSA_MAX_BITS).contains(&bits) {
            return Err(KeyError::invalid(
                origin,
                format_args!("RSA modulus of {bits} bits (need {RSA_MIN_BITS}..={RSA_MAX_BITS})"),
            ));
        }
        let skip = e.iter().take_while(|&&b| b == 0).count();
        let e = e.get(skip..).unwrap_or_default();
        if e.len() > 5 {
            return Err(KeyError::invalid(
                origin,
                "RSA public exponent is too large",
            ));
        }
        let ev = e.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b));
        if ev < 3 || ev % 2 == 0 || ev >= (1 << 33) {
            return Err(KeyError::invalid(
                origin,
                format_args!("unusable RSA public exponent {ev}"),
            ));
        }
        let pkcs1 = der::encode_rsa_public_key(n, e);
        Ok(Self::build(
            KeyFamily::Rsa,
            KeyMaterialKind::Rsa { bits },
            Material::Rsa {
                pkcs1: pkcs1.clone().into_boxed_slice(),
            },
            &pkcs1,
            kid,
            algs,
            origin,
        ))
    }

    /// An EC key from an uncompressed SEC1 point. The point is checked to be on the curve
    /// now (through an ECDH with a throwaway key), so a bad key fails at load, not per token.
    pub fn ec_point(
        family: KeyFamily,
        point: &[u8],
        kid: Option<&str>,
        alg: Option<Algorithm>,
        origin: &str,
    ) -> Result<Self, KeyError> {
        let (len, curve, kind) = match family {
            KeyFamily::EcP256 => (65, &agreement::ECDH_P256, KeyMaterialKind::EcP256),
            KeyFamily::EcP384 => (97, &agreement::ECDH_P384, KeyMaterialKind::EcP384),
            _ => return Err(KeyError::invalid(origin, "not an EC key family")),
        };
        let algs = bind(family, alg, origin)?;
        if point.len() != len || point.first() != Some(&4) {
            return Err(KeyError::invalid(
                origin,
                "EC public key is not an uncompressed point of the curve's size",
            ));
        }
        let rng = rand::SystemRandom::new();
        let eph = agreement::EphemeralPrivateKey::generate(curve, &rng)
            .map_err(|_| KeyError::invalid(origin, "cannot generate a test key"))?;
        agreement::agree_ephemeral(
            eph,
            &agreement::UnparsedPublicKey::new(curve, point),
            |_| (),
        )
        .map_err(|_| KeyError::invalid(origin, "EC public key is not a point on the curve"))?;
        Ok(Self::build(
            family,
            kind,
            Material::Ec {
                point: point.into(),
            },
            point,
            kid,
            algs,
            origin,
        ))
    }

    /// An Ed25519 key from its 32 raw bytes.
    pub fn ed25519(
        public: &[u8],
        kid: Option<&str>,
        alg: Option<Algorithm>,
        origin: &str,
    ) -> Result<Self, KeyError> {
        let algs = bind(KeyFamily::Ed25519, alg, origin)?;
        let public: [u8; 32] = public
            .try_into()
            .map_err(|_| KeyError::invalid(origin, "Ed25519 public key is not 32 bytes"))?;
        Ok(Self::build(
            KeyFamily::Ed25519,
            KeyMaterialKind::Ed25519,
            Material::Ed25519 { public },
            &public,
            kid,
            algs,
            origin,
        ))
    }

    /// An HMAC secret. It verifies HS* only; an empty secret never verifies.
    pub fn hmac(
        secret: &[u8],
        kid: Option<&str>,
        alg: Option<Algorithm>,
        origin: &str,
    ) -> Result<Self, KeyError> {
        let algs = bind(KeyFamily::Hmac, alg, origin)?;
        Self::hmac_bound(secret, kid, algs, origin)
    }

    /// An HMAC secret bound to a subset of HS*.
    pub(crate) fn hmac_bound(
        secret: &[u8],
        kid: Option<&str>,
        algs: AlgSet,
        origin: &str,
    ) -> Result<Self, KeyError> {
        if algs.is_empty() || !algs.iter().all(|a| a.family() == KeyFamily::Hmac) {
            return Err(KeyError::invalid(
                origin,
                "no HMAC algorithm for this secret",
            ));
        }
        let mk = |a: Algorithm, h| algs.contains(a).then(|| hmac::Key::new(h, secret));
        let keys = HmacKeys {
            empty: secret.is_empty(),
            k256: mk(Algorithm::HS256, hmac::HMAC_SHA256),
            k384: mk(Algorithm::HS384, hmac::HMAC_SHA384),
            k512: mk(Algorithm::HS512, hmac::HMAC_SHA512),
        };
        Ok(Self::build(
            KeyFamily::Hmac,
            KeyMaterialKind::Hmac { len: secret.len() },
            Material::Hmac(Box::new(keys)),
            secret,
            kid,
            algs,
            origin,
        ))
    }

    /// A key from a parsed DER public key.
    pub fn from_public_der(
        der: PublicKeyDer,
        kid: Option<&str>,
        alg: Option<Algorithm>,
        origin: &str,
    ) -> Result<Self, KeyError> {
        match der {
            PublicKeyDer::Rsa(d) => Self::rsa_pkcs1(&d, kid, alg, origin),
            PublicKeyDer::EcP256(p) => Self::ec_point(KeyFamily::EcP256, &p, kid, alg, origin),
            PublicKeyDer::EcP384(p) => Self::ec_point(KeyFamily::EcP384, &p, kid, alg, origin),
            PublicKeyDer::Ed25519(p) => Self::ed25519(&p, kid, alg, origin),
        }
    }

    /// The key id, if any.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }
    /// The algorithms this key may verify.
    pub fn algorithms(&self) -> AlgSet {
        self.algs
    }
    /// The key's family.
    pub fn family(&self) -> KeyFamily {
        self.family
    }
    /// What kind of material the key holds.
    pub fn kind(&self) -> KeyMaterialKind {
        self.kind
    }
    /// Where the key came from (file or URL), for logs.
    pub fn origin(&self) -> &str {
        &self.origin
    }
    /// A stable identity of (family, kid, algorithms, material); equal keys loaded twice
    /// have equal fingerprints, so re-fetching an unchanged JWKS keeps cache entries valid.
    pub fn fingerprint(&self) -> u64 {
        self.fingerprint
    }

    /// Checks `sig` over `msg` with `alg`, which must be bound to this key.
    pub fn verify(&self, alg: Algorithm, msg: &[u8], sig: &[u8]) -> bool {
        if !self.algs.contains(alg) {
            return false;
        }
        let (ring_alg, public): (&'static dyn signature::VerificationAlgorithm, &[u8]) =
            match (&self.material, alg) {
                (Material::Hmac(k), _) => {
                    let key = match alg {
                        Algorithm::HS256 => k.k256.as_ref(),
                        Algorithm::HS384 => k.k384.as_ref(),
                        Algorithm::HS512 => k.k512.as_ref(),
                        _ => None,
                    };
                    // ring compares the tag in constant time.
                    return match key {
                        Some(key) if !k.empty => hmac::verify(key, msg, sig).is_ok(),
                        _ => false,
                    };
                }
                (Material::Rsa { pkcs1 }, Algorithm::RS256) => {
                    (&signature::RSA_PKCS1_2048_8192_SHA256, pkcs1)
                }
                (Material::Rsa { pkcs1 }, Algorithm::RS384) => {
                    (&signature::RSA_PKCS1_2048_8192_SHA384, pkcs1)
                }
                (Material::Rsa { pkcs1 }, Algorithm::RS512) => {
                    (&signature::RSA_PKCS1_2048_8192_SHA512, pkcs1)
                }
                (Material::Rsa { pkcs1 }, Algorithm::PS256) => {
                    (&signature::RSA_PSS_2048_8192_SHA256, pkcs1)
                }
                (Material::Rsa { pkcs1 }, Algorithm::PS384) => {
                    (&signature::RSA_PSS_2048_8192_SHA384, pkcs1)
                }
                (Material::Rsa { pkcs1 }, Algorithm::PS512) => {
                    (&signature::RSA_PSS_2048_8192_SHA512, pkcs1)
                }
                // Raw R||S only: a DER signature has another length and fails here.
                (Material::Ec { point }, Algorithm::ES256) if sig.len() == 64 => {
                    (&signature::ECDSA_P256_SHA256_FIXED, point)
                }
                (Material::Ec { point }, Algorithm::ES384) if sig.len() == 96 => {
                    (&signature::ECDSA_P384_SHA384_FIXED, point)
                }
                (Material::Ed25519 { public }, Algorithm::EdDSA) => (&signature::ED25519, public),
                _ => return false,
            };
        signature::UnparsedPublicKey::new(ring_alg, public)
            .verify(msg, sig)
            .is_ok()
    }
}
