//! Splitting and decoding a JWS compact serialization, and the protected header.

use super::alg::Algorithm;
use super::b64;
use super::error::{ParseError, Rejection, Segment};
use super::json;
use serde_json::{Map, Value};

/// Default maximum token length in bytes (checked before any decoding).
pub const DEFAULT_MAX_TOKEN_BYTES: usize = 16 * 1024;

/// The three segments of a compact JWS, still encoded.
#[derive(Debug, Clone, Copy)]
pub struct Parts<'a> {
    /// base64url of the header.
    pub header: &'a str,
    /// base64url of the payload.
    pub payload: &'a str,
    /// base64url of the signature.
    pub signature: &'a str,
    /// `header.payload`, the bytes the signature covers.
    pub signing_input: &'a str,
}

/// Splits a token into exactly three segments after the size check.
pub fn split(token: &str, max_len: usize) -> Result<Parts<'_>, ParseError> {
    if token.len() > max_len {
        return Err(ParseError::TooLarge {
            len: token.len(),
            limit: max_len,
        });
    }
    let mut it = token.splitn(4, '.');
    let (Some(header), Some(payload), Some(signature), None) =
        (it.next(), it.next(), it.next(), it.next())
    else {
        return Err(ParseError::Segments);
    };
    let signing_input = token
        .get(..header.len() + 1 + payload.len())
        .ok_or(ParseError::Segments)?;
    Ok(Parts {
        header,
        payload,
        signature,
        signing_input,
    })
}

/// A decoded, checked protected header.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    alg: Algorithm,
    map: Map<String, Value>,
}

impl Header {
    /// Validates the registered parameters of a decoded header object.
    ///
    /// `jku`, `x5u`, `jwk` and `x5c` are deliberately ignored: keys come only from the key
    /// store, never from the token.
    pub fn from_map(map: Map<String, Value>) -> Result<Self, Rejection> {
        let alg = match map.get("alg") {
            None => return Err(ParseError::MissingAlg.into()),
            Some(Value::String(s)) => match Algorithm::from_name(s) {
                Some(a) => a,
                None if s.eq_ignore_ascii_case("none") => {
                    return Err(Rejection::AlgNotAllowed("none".into()))
                }
                None => return Err(Rejection::AlgNotAllowed(truncate(s))),
            },
            Some(_) => return Err(ParseError::HeaderType("alg").into()),
        };
        for name in ["kid", "typ", "cty"] {
            if let Some(v) = map.get(name) {
                if !v.is_string() {
                    return Err(ParseError::HeaderType(name).into());
                }
            }
        }
        if let Some(crit) = map.get("crit") {
            // RFC 7515 §4.1.11: a non-empty array of names; we understand no extension.
            let Value::Array(items) = crit else {
                return Err(ParseError::HeaderType("crit").into());
            };
            let Some(first) = items.first() else {
                return Err(ParseError::HeaderType("crit").into());
            };
            return Err(match first {
                Value::String(s) => ParseError::UnsupportedCrit(truncate(s)),
                _ => ParseError::HeaderType("crit"),
            }
            .into());
        }
        Ok(Header { alg, map })
    }

    /// The algorithm the token claims (still to be matched against the key's binding).
    pub fn alg(&self) -> Algorithm {
        self.alg
    }
    /// The key id, an opaque lookup string.
    pub fn kid(&self) -> Option<&str> {
        self.map.get("kid").and_then(Value::as_str)
    }
    /// The declared media type.
    pub fn typ(&self) -> Option<&str> {
        self.map.get("typ").and_then(Value::as_str)
    }
    /// All header parameters as decoded.
    pub fn as_map(&self) -> &Map<String, Value> {
        &self.map
    }
    /// Consumes the header, returning its parameters.
    pub fn into_map(self) -> Map<String, Value> {
        self.map
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Decodes a base64url segment into a fresh buffer.
pub(crate) fn decode_segment(seg: &str, which: Segment) -> Result<Vec<u8>, ParseError> {
    b64::decode_url(seg.as_bytes()).map_err(|e| ParseError::Base64(which, e))
}

/// Decodes and checks the header segment.
pub fn decode_header(seg: &str) -> Result<Header, Rejection> {
    let bytes = decode_segment(seg, Segment::Header)?;
    let map = json::parse_object(&bytes).map_err(|e| ParseError::Json(Segment::Header, e))?;
    Header::from_map(map)
}

/// Decodes the payload segment as a strict JSON object.
pub fn decode_claims(seg: &str) -> Result<Map<String, Value>, ParseError> {
    let bytes = decode_segment(seg, Segment::Payload)?;
    json::parse_object(&bytes).map_err(|e| ParseError::Json(Segment::Payload, e))
}

/// A token decoded WITHOUT verification, for `gateway token inspect` and diagnostics. Never
/// use it to make an access decision.
#[derive(Debug, Clone)]
pub struct Unverified {
    /// Header parameters (raw, even if the alg is unsupported).
    pub header: Map<String, Value>,
    /// Claims, if the payload is a JSON object.
    pub claims: Result<Map<String, Value>, ParseError>,
    /// Length of the decoded signature, if it decodes.
    pub signature_len: Result<usize, ParseError>,
}

/// Decodes header and payload without checking anything but the encoding.
pub fn decode_unverified(token: &str, max_len: usize) -> Result<Unverified, ParseError> {
    let parts = split(token, max_len)?;
    let hb = decode_segment(parts.header, Segment::Header)?;
    let header = json::parse_object(&hb).map_err(|e| ParseError::Json(Segment::Header, e))?;
    let claims = decode_claims(parts.payload);
    let signature_len = decode_segment(parts.signature, Segment::Signature).map(|s| s.len());
    Ok(Unverified {
        header,
        claims,
        signature_len,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(json: &str) -> Result<Header, Rejection> {
        decode_header(&b64::encode_url(json.as_bytes()))
    }

    #[test]
    fn split_rules() {
        assert!(split("a.b.c", 100).is_ok());
        assert_eq!(split("a.b", 100).unwrap_err(), ParseError::Segments);
        assert_eq!(split("a.b.c.d", 100).unwrap_err(), ParseError::Segments);
        assert!(matches!(
            split("a.b.c", 4).unwrap_err(),
            ParseError::TooLarge { len: 5, limit: 4 }
        ));
        assert_eq!(split("ab.cd.ef", 100).unwrap().signing_input, "ab.cd");
    }

    #[test]
    fn header_rules() {
        assert_eq!(hdr(r#"{"alg":"RS256"}"#).unwrap().alg(), Algorithm::RS256);
        for none in ["none", "None", "NONE", "nOnE"] {
            let r = hdr(&format!(r#"{{"alg":"{none}"}}"#)).unwrap_err();
            assert_eq!(r.reason(), "alg_not_allowed");
        }
        assert_eq!(
            hdr(r#"{"alg":"ES512"}"#).unwrap_err().reason(),
            "alg_not_allowed"
        );
        assert_eq!(
            hdr(r#"{"alg":"rs256"}"#).unwrap_err().reason(),
            "alg_not_allowed"
        );
        assert_eq!(hdr(r#"{"typ":"JWT"}"#).unwrap_err().reason(), "malformed");
        assert_eq!(hdr(r#"{"alg":256}"#).unwrap_err().reason(), "malformed");
        assert_eq!(
            hdr(r#"{"alg":"HS256","kid":1}"#).unwrap_err().reason(),
            "malformed"
        );
        assert_eq!(
            hdr(r#"{"alg":"HS256","crit":["exp"],"exp":1}"#)
                .unwrap_err()
                .reason(),
            "unsupported_crit"
        );
        assert_eq!(
            hdr(r#"{"alg":"HS256","crit":[]}"#).unwrap_err().reason(),
            "malformed"
        );
        assert_eq!(
            hdr(r#"{"alg":"HS256","alg":"HS256"}"#)
                .unwrap_err()
                .reason(),
            "malformed"
        );
        assert_eq!(hdr(r#"["alg"]"#).unwrap_err().reason(), "malformed");
        let h =
            hdr(r#"{"alg":"HS256","jku":"https://evil","jwk":{"kty":"oct","k":"AA"}}"#).unwrap();
        assert_eq!(h.kid(), None);
    }
}
