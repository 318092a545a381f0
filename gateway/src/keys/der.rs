//! The little DER we need: SubjectPublicKeyInfo, PKCS#1 RSAPublicKey, and the SPKI inside an
//! X.509 certificate. Everything is bounds-checked; malformed input is an error, never a panic.

/// A DER decoding failure with a short description.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid DER: {0}")]
pub struct DerError(pub &'static str);

pub(crate) const TAG_INTEGER: u8 = 0x02;
pub(crate) const TAG_BIT_STRING: u8 = 0x03;
pub(crate) const TAG_NULL: u8 = 0x05;
pub(crate) const TAG_OID: u8 = 0x06;
pub(crate) const TAG_SEQUENCE: u8 = 0x30;
const TAG_CONTEXT0: u8 = 0xa0;

const OID_RSA_ENCRYPTION: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
const OID_EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
const OID_P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
const OID_P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
const OID_ED25519: &[u8] = &[0x2b, 0x65, 0x70];

/// A forward-only DER reader.
pub(crate) struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Reader { data }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Reads one TLV; returns (tag, contents).
    pub(crate) fn read_any(&mut self) -> Result<(u8, &'a [u8]), DerError> {
        let (&tag, rest) = self.data.split_first().ok_or(DerError("truncated"))?;
        let (&len0, mut rest) = rest.split_first().ok_or(DerError("truncated"))?;
        let len = if len0 < 0x80 {
            usize::from(len0)
        } else {
            let n = usize::from(len0 & 0x7f);
            if n == 0 || n > 4 {
                return Err(DerError("unsupported length"));
            }
            let (bytes, r) = rest.split_at_checked(n).ok_or(DerError("truncated"))?;
            rest = r;
            let mut len = 0usize;
            for &b in bytes {
                len = (len << 8) | usize::from(b);
            }
            if len < 0x80 || bytes.first() == Some(&0) {
                return Err(DerError("non-minimal length"));
            }
            len
        };
        let (contents, rest) = rest.split_at_checked(len).ok_or(DerError("truncated"))?;
        self.data = rest;
        Ok((tag, contents))
    }

    pub(crate) fn read(&mut self, tag: u8) -> Result<&'a [u8], DerError> {
        let (t, c) = self.read_any()?;
        if t != tag {
            return Err(DerError("unexpected tag"));
        }
        Ok(c)
    }

    fn peek_tag(&self) -> Option<u8> {
        self.data.first().copied()
    }
}

/// A public key found in DER, in the form ring verifies with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicKeyDer {
    /// PKCS#1 RSAPublicKey DER.
    Rsa(Vec<u8>),
    /// Uncompressed P-256 point.
    EcP256(Vec<u8>),
    /// Uncompressed P-384 point.
    EcP384(Vec<u8>),
    /// Raw Ed25519 public key.
    Ed25519(Vec<u8>),
}

/// Parses a SubjectPublicKeyInfo.
pub fn parse_spki(der: &[u8]) -> Result<PublicKeyDer, DerError> {
    let mut outer = Reader::new(der);
    let seq = outer.read(TAG_SEQUENCE)?;
    if !outer.is_empty() {
        return Err(DerError("trailing data after SubjectPublicKeyInfo"));
    }
    spki_contents(seq)
}

fn spki_contents(seq: &[u8]) -> Result<PublicKeyDer, DerError> {
    let mut r = Reader::new(seq);
    let mut alg = Reader::new(r.read(TAG_SEQUENCE)?);
    let bits = r.read(TAG_BIT_STRING)?;
    if !r.is_empty() {
        return Err(DerError("trailing data in SubjectPublicKeyInfo"));
    }
    let (&unused, key) = bits.split_first().ok_or(DerError("empty BIT STRING"))?;
    if unused != 0 {
        return Err(DerError("BIT STRING with unused bits"));
    }
    let oid = alg.read(TAG_OID)?;
    if oid == OID_RSA_ENCRYPTION {
        // Parameters are NULL (or absent in some encoders).
        if !alg.is_empty() {
            alg.read(TAG_NULL)?;
        }
        // Validate the inner structure now, so errors name the file.
        rsa_components(key)?;
        Ok(PublicKeyDer::Rsa(key.to_vec()))
    } else if oid == OID_EC_PUBLIC_KEY {
        let curve = alg.read(TAG_OID)?;
        if curve == OID_P256 {
            Ok(PublicKeyDer::EcP256(key.to_vec()))
        } else if curve == OID_P384 {
            Ok(PublicKeyDer::EcP384(key.to_vec()))
        } else {
            Err(DerError(
                "unsupported elliptic curve (only P-256 and P-384)",
            ))
        }
    } else if oid == OID_ED25519 {
        Ok(PublicKeyDer::Ed25519(key.to_vec()))
    } else {
        Err(DerError(
            "unsupported public key algorithm (only RSA, EC P-256/P-384, Ed25519)",
        ))
    }
}

/// Extracts the SubjectPublicKeyInfo of an X.509 certificate. The certificate itself is not
/// validated (no chain, no dates): a configured certificate is just a container for a key.
pub fn parse_certificate(der: &[u8]) -> Result<PublicKeyDer, DerError> {
    let mut outer = Reader::new(der);
    let mut cert = Reader::new(outer.read(TAG_SEQUENCE)?);
    let mut tbs = Reader::new(cert.read(TAG_SEQUENCE)?);
    if tbs.peek_tag() == Some(TAG_CONTEXT0) {
        tbs.read_any()?; // version
    }
    tbs.read(TAG_INTEGER)?; // serialNumber
    tbs.read(TAG_SEQUENCE)?; // signature
    tbs.read(TAG_SEQUENCE)?; // issuer
    tbs.read(TAG_SEQUENCE)?; // validity
    tbs.read(TAG_SEQUENCE)?; // subject
    spki_contents(tbs.read(TAG_SEQUENCE)?)
}

/// Positive INTEGER contents without leading zero bytes.
fn unsigned(int: &[u8]) -> Result<&[u8], DerError> {
    match int.first() {
        None => Err(DerError("empty INTEGER")),
        Some(b) if b & 0x80 != 0 => Err(DerError("negative INTEGER")),
        Some(_) => {
            let skip = int.iter().take_while(|&&b| b == 0).count();
            Ok(int.get(skip..).unwrap_or_default())
        }
    }
}

/// The modulus and exponent (big-endian, no leading zeros) of a PKCS#1 RSAPublicKey.
pub fn rsa_components(der: &[u8]) -> Result<(&[u8], &[u8]), DerError> {
    let mut outer = Reader::new(der);
    let mut seq = Reader::new(outer.read(TAG_SEQUENCE)?);
    if !outer.is_empty() {
        return Err(DerError("trailing data after RSAPublicKey"));
    }
    let n = unsigned(seq.read(TAG_INTEGER)?)?;
    let e = unsigned(seq.read(TAG_INTEGER)?)?;
    if !seq.is_empty() {
        return Err(DerError("trailing data in RSAPublicKey"));
    }
    Ok((n, e))
}

fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|&&b| b == 0).count();
        let sig = bytes.get(skip..).unwrap_or_default();
        out.push(0x80 | sig.len() as u8);
        out.extend_from_slice(sig);
    }
}

fn push_uint(out: &mut Vec<u8>, v: &[u8]) {
    let skip = v.iter().take_while(|&&b| b == 0).count();
    let v = v.get(skip..).unwrap_or_default();
    let pad = v.first().is_none_or(|b| b & 0x80 != 0);
    out.push(TAG_INTEGER);
    push_len(out, v.len() + usize::from(pad));
    if pad {
        out.push(0);
    }
    out.extend_from_slice(v);
}

/// Encodes a PKCS#1 RSAPublicKey from big-endian modulus and exponent.
pub fn encode_rsa_public_key(n: &[u8], e: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(n.len() + e.len() + 16);
    push_uint(&mut body, n);
    push_uint(&mut body, e);
    let mut out = Vec::with_capacity(body.len() + 6);
    out.push(TAG_SEQUENCE);
    push_len(&mut out, body.len());
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rsa_round_trip() {
        let n = [0x00, 0xc0, 0x01, 0x02];
        let der = encode_rsa_public_key(&n, &[1, 0, 1]);
        let (n2, e2) = rsa_components(&der).unwrap();
        assert_eq!(n2, &[0xc0, 1, 2]);
        assert_eq!(e2, &[1, 0, 1]);
        let big = vec![0xffu8; 300];
        let der = encode_rsa_public_key(&big, &[3]);
        assert_eq!(rsa_components(&der).unwrap().0, &big[..]);
    }

    #[test]
    fn garbage_is_an_error() {
        for bad in [
            &[][..],
            &[0x30],
            &[0x30, 0x85, 1, 2, 3, 4, 5],
            &[0x30, 0x81, 0x05, 0, 0, 0, 0, 0],
            &[0x30, 0x03, 0x02, 0x01],
            &[0x30, 0x80, 0x00, 0x00],
        ] {
            assert!(parse_spki(bad).is_err());
            assert!(parse_certificate(bad).is_err());
            assert!(rsa_components(bad).is_err());
        }
    }
}
