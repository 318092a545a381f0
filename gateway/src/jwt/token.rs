//! Splitting and decoding a JWS compact serialization, and the protected header.

use super::alg::Algorithm;
use super::b64;
use super::error::{ParseError, Rejection, Segment};
use super::json;
use super::scan::{self, Crit, RawHeader, Str};
use serde_json::{Map, Value};
use std::borrow::Cow;

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
    check_len(token, max_len)?;
    // Three searches for the dots (vectorised) rather than a generic splitter.
    let mut dots = memchr::memchr_iter(b'.', token.as_bytes());
    let (Some(first), Some(second), None) = (dots.next(), dots.next(), dots.next()) else {
        return Err(ParseError::Segments);
    };
    parts_at(token, first, second)
}

/// [`split`] without searching the payload: the first dot by a forward search (the header is
/// short) and the last by a backward one (so is the signature). Two dots or fewer gives the
/// same result as [`split`]; more leave a dot in the payload, which is not base64url, so the
/// token can never verify: the caller must report any failure of a token whose payload has a
/// dot as [`ParseError::Segments`] (the verifier does), and then every token is refused with
/// the same error as after [`split`], at the cost of searching the long payload only when
/// the token fails anyway.
pub(crate) fn split_outer(token: &str, max_len: usize) -> Result<Parts<'_>, ParseError> {
    check_len(token, max_len)?;
    let bytes = token.as_bytes();
    let (Some(first), Some(second)) = (memchr::memchr(b'.', bytes), memchr::memrchr(b'.', bytes))
    else {
        return Err(ParseError::Segments);
    };
    if first == second {
        return Err(ParseError::Segments);
    }
    parts_at(token, first, second)
}

/// The size check both splitters make before looking at the token.
fn check_len(token: &str, max_len: usize) -> Result<(), ParseError> {
    if token.len() > max_len {
        return Err(ParseError::TooLarge {
            len: token.len(),
            limit: max_len,
        });
    }
    Ok(())
}

/// The segments around the dots at `first` and `second` (`first < second`).
fn parts_at(token: &str, first: usize, second: usize) -> Result<Parts<'_>, ParseError> {
    let (Some(header), Some(payload), Some(signature), Some(signing_input)) = (
        token.get(..first),
        token.get(first + 1..second),
        token.get(second + 1..),
        token.get(..second),
    ) else {
        return Err(ParseError::Segments);
    };
    Ok(Parts {
        header,
        payload,
        signature,
        signing_input,
    })
}

/// A checked protected header, borrowing its strings from the decoded JSON.
///
/// `jku`, `x5u`, `jwk` and `x5c` are deliberately ignored: keys come only from the key
/// store, never from the token.
#[derive(Debug, Clone, PartialEq)]
pub struct Header<'a> {
    alg: Algorithm,
    kid: Option<Cow<'a, str>>,
    typ: Option<Cow<'a, str>>,
}

impl<'a> Header<'a> {
    /// Reads and checks a decoded header (strict JSON, `alg` known and not `none`, `kid`,
    /// `typ`, `cty` strings, no `crit`).
    pub fn parse(json: &'a [u8]) -> Result<Self, Rejection> {
        let text = scan::utf8(json).map_err(|e| ParseError::Json(Segment::Header, e))?;
        Self::parse_str(text)
    }

    /// [`Self::parse`] of a header already checked as UTF-8.
    pub fn parse_str(json: &'a str) -> Result<Self, Rejection> {
        let mut raw = RawHeader::default();
        scan::header_into(json, &mut raw).map_err(|e| ParseError::Json(Segment::Header, e))?;
        Self::check(raw)
    }

    #[inline(always)]
    fn check(h: RawHeader<'a>) -> Result<Self, Rejection> {
        let alg = match &h.alg {
            Str::Absent => return Err(ParseError::MissingAlg.into()),
            Str::Text(s) => match Algorithm::from_name(s) {
                Some(a) => a,
                None if s.eq_ignore_ascii_case("none") => {
                    return Err(Rejection::AlgNotAllowed("none".into()))
                }
                None => return Err(Rejection::AlgNotAllowed(truncate(s))),
            },
            Str::Other => return Err(ParseError::HeaderType("alg").into()),
        };
        for (name, v) in [("kid", &h.kid), ("typ", &h.typ), ("cty", &h.cty)] {
            if *v == Str::Other {
                return Err(ParseError::HeaderType(name).into());
            }
        }
        match h.crit {
            Crit::Absent => {}
            // RFC 7515 §4.1.11: a non-empty array of names; we understand no extension.
            Crit::First(Str::Text(s)) => {
                return Err(ParseError::UnsupportedCrit(truncate(&s)).into())
            }
            Crit::NotArray | Crit::Empty | Crit::First(_) => {
                return Err(ParseError::HeaderType("crit").into())
            }
        }
        let string = |v: Str<'a>| match v {
            Str::Text(s) => Some(s),
            _ => None,
        };
        Ok(Header {
            alg,
            kid: string(h.kid),
            typ: string(h.typ),
        })
    }

    /// The algorithm the token claims (still to be matched against the key's binding).
    pub fn alg(&self) -> Algorithm {
        self.alg
    }
    /// The key id, an opaque lookup string.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }
    /// The declared media type.
    pub fn typ(&self) -> Option<&str> {
        self.typ.as_deref()
    }
    /// The same header, owning its strings.
    pub fn into_owned(self) -> Header<'static> {
        Header {
            alg: self.alg,
            kid: self.kid.map(|k| Cow::Owned(k.into_owned())),
            typ: self.typ.map(|t| Cow::Owned(t.into_owned())),
        }
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
pub fn decode_header(seg: &str) -> Result<Header<'static>, Rejection> {
    let bytes = decode_segment(seg, Segment::Header)?;
    Header::parse(&bytes).map(Header::into_owned)
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

    fn hdr(json: &str) -> Result<Header<'static>, Rejection> {
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

    /// Same parts as [`split`] wherever that finds three segments; otherwise refused, or
    /// a payload with a dot (which the verifier reports as [`split`] would).
    #[test]
    fn split_outer_agrees_with_split() {
        for token in [
            "",
            ".",
            "..",
            "...",
            "a",
            "a.b",
            "a.b.c",
            "a.b.c.d",
            "a..c",
            ".b.",
            "a.b.c.",
            ".a.b.c",
            "ab.cd.ef",
            "a.b.c.d.e",
            "é.ü.ß",
            "a.b.c\u{2e}",
        ] {
            let outer = split_outer(token, 100);
            match split(token, 100) {
                Ok(p) => {
                    let o = outer.unwrap();
                    assert_eq!(
                        (o.header, o.payload, o.signature, o.signing_input),
                        (p.header, p.payload, p.signature, p.signing_input),
                        "{token:?}"
                    );
                }
                Err(e) => match outer {
                    Err(o) => assert_eq!(o, e, "{token:?}"),
                    Ok(o) => assert!(o.payload.contains('.'), "{token:?}"),
                },
            }
        }
        assert!(matches!(
            split_outer("a.b.c", 4).unwrap_err(),
            ParseError::TooLarge { len: 5, limit: 4 }
        ));
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
