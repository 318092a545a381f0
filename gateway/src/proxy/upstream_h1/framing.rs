//! Where a response body ends (RFC 9112 §6.3) and whether its connection can carry another
//! request. Every doubt closes the connection or refuses the response: a pooled connection
//! whose framing we guessed would hand the next client the rest of this response.

use super::H1Error;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode, Version};

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    /// This many bytes (0 for HEAD, 204, 304: §6.3 rules 1 and 2).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the server closes (no Content-Length, no Transfer-Encoding).
    UntilClose,
}

/// What the response head says about its body and its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framing {
    pub kind: BodyKind,
    /// The connection may carry another request once this body has been read to its end.
    pub reusable: bool,
}

/// The framing of a final (non-1xx) response to a `method` request.
///
/// Refused (502) rather than guessed: Content-Length with Transfer-Encoding (a smuggling
/// pattern, §6.3 rule 3), a transfer coding other than one `chunked` (we do not undo
/// compression codings, and relaying their bytes as content would corrupt it),
/// Transfer-Encoding in an HTTP/1.0 response, and a Content-Length that is not exactly one
/// decimal number (repeated, listed, signed, spaced or over `u64`).
pub fn response(
    method: &Method,
    status: StatusCode,
    version: Version,
    headers: &HeaderMap,
) -> Result<Framing, H1Error> {
    let fields = Fields::of(headers);
    let keep_alive = version == Version::HTTP_11 && !(fields.connection && says_close(headers));
    let has_te = fields.transfer_encoding;
    if method == Method::HEAD
        || status == StatusCode::NOT_MODIFIED
        || status == StatusCode::NO_CONTENT
        || status.is_informational()
    {
        // No body whatever the head says. A 204 that announces one anyway may send it:
        // those bytes must never reach the next request.
        let announces_body = status == StatusCode::NO_CONTENT
            && (has_te || !matches!(fields.content_length(), Ok(None | Some(0))));
        return Ok(Framing {
            kind: BodyKind::Length(0),
            reusable: keep_alive && !announces_body && !status.is_informational(),
        });
    }
    if has_te {
        if version != Version::HTTP_11 {
            return Err(H1Error::Framing(
                "Transfer-Encoding in an HTTP/1.0 response",
            ));
        }
        if fields.content_lengths > 0 {
            return Err(H1Error::Framing(
                "both Content-Length and Transfer-Encoding",
            ));
        }
        if !only_chunked(headers) {
            return Err(H1Error::Framing("a transfer coding other than chunked"));
        }
        return Ok(Framing {
            kind: BodyKind::Chunked,
            reusable: keep_alive,
        });
    }
    match fields.content_length()? {
        Some(n) => Ok(Framing {
            kind: BodyKind::Length(n),
            reusable: keep_alive,
        }),
        None => Ok(Framing {
            kind: BodyKind::UntilClose,
            reusable: false,
        }),
    }
}

/// The one Content-Length value, if any: 1 to 19 ASCII digits (a `u64` may hold 20, but no
/// body is that long), in exactly one field line without a list.
pub fn content_length(headers: &HeaderMap) -> Result<Option<u64>, H1Error> {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    one_content_length(values.next(), values.count())
}

/// [`content_length`] of the first of `1 + more` values.
fn one_content_length(first: Option<&HeaderValue>, more: usize) -> Result<Option<u64>, H1Error> {
    let Some(value) = first else {
        return Ok(None);
    };
    if more > 0 {
        return Err(H1Error::Framing("more than one Content-Length"));
    }
    parse_decimal(value.as_bytes())
        .map(Some)
        .ok_or(H1Error::Framing("an invalid Content-Length"))
}

/// The framing fields of a response head, found in one pass over its fields (a response
/// has a handful; three lookups by name cost more).
struct Fields<'a> {
    first_content_length: Option<&'a HeaderValue>,
    content_lengths: usize,
    transfer_encoding: bool,
    connection: bool,
}

impl<'a> Fields<'a> {
    fn of(headers: &'a HeaderMap) -> Self {
        let mut f = Fields {
            first_content_length: None,
            content_lengths: 0,
            transfer_encoding: false,
            connection: false,
        };
        for (name, value) in headers {
            if name == header::CONTENT_LENGTH {
                f.first_content_length.get_or_insert(value);
                f.content_lengths += 1;
            } else if name == header::TRANSFER_ENCODING {
                f.transfer_encoding = true;
            } else if name == header::CONNECTION {
                f.connection = true;
            }
        }
        f
    }

    fn content_length(&self) -> Result<Option<u64>, H1Error> {
        one_content_length(
            self.first_content_length,
            self.content_lengths.saturating_sub(1),
        )
    }
}

fn parse_decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 19 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(
        digits
            .iter()
            .fold(0u64, |n, d| n * 10 + u64::from(d - b'0')),
    )
}

/// Transfer-Encoding is exactly `chunked`, once (its field lines joined as a list).
fn only_chunked(headers: &HeaderMap) -> bool {
    let mut codings = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|c| !c.is_empty());
    matches!(codings.next(), Some(c) if c.eq_ignore_ascii_case(b"chunked"))
        && codings.next().is_none()
}

/// A `close` token in Connection.
fn says_close(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(n.as_bytes()).expect("name"),
                http::HeaderValue::from_bytes(v.as_bytes()).expect("value"),
            );
        }
        h
    }

    fn get(status: u16, pairs: &[(&str, &str)]) -> Result<Framing, H1Error> {
        let status = StatusCode::from_u16(status).expect("status");
        response(&Method::GET, status, Version::HTTP_11, &headers(pairs))
    }

    fn framing(kind: BodyKind, reusable: bool) -> Framing {
        Framing { kind, reusable }
    }

    #[test]
    fn content_length_must_be_one_plain_decimal() {
        assert_eq!(
            get(200, &[("content-length", "5")]).ok(),
            Some(framing(BodyKind::Length(5), true))
        );
        assert_eq!(
            get(200, &[("content-length", "0")]).ok(),
            Some(framing(BodyKind::Length(0), true))
        );
        for bad in [
            "+5",
            "-5",
            "5 5",
            "0x5",
            "5,5",
            "",
            "99999999999999999999",
            "18446744073709551616",
        ] {
            assert!(
                get(200, &[("content-length", bad)]).is_err(),
                "Content-Length {bad:?} must be refused"
            );
        }
        assert!(get(200, &[("content-length", "5"), ("content-length", "5")]).is_err());
        assert!(get(200, &[("content-length", "5"), ("content-length", "6")]).is_err());
    }

    #[test]
    fn transfer_encoding_must_be_chunked_alone_and_without_content_length() {
        for te in ["chunked", "Chunked", " chunked ", "chunked,"] {
            assert_eq!(
                get(200, &[("transfer-encoding", te)]).ok(),
                Some(framing(BodyKind::Chunked, true)),
                "{te:?}"
            );
        }
        for te in [
            "gzip, chunked",
            "chunked, chunked",
            "chunked, gzip",
            "identity",
            "xchunked",
        ] {
            assert!(get(200, &[("transfer-encoding", te)]).is_err(), "{te:?}");
        }
        assert!(get(
            200,
            &[
                ("transfer-encoding", "chunked"),
                ("transfer-encoding", "chunked")
            ]
        )
        .is_err());
        assert!(get(
            200,
            &[("content-length", "3"), ("transfer-encoding", "chunked")]
        )
        .is_err());
        let http10 = response(
            &Method::GET,
            StatusCode::OK,
            Version::HTTP_10,
            &headers(&[("transfer-encoding", "chunked")]),
        );
        assert!(http10.is_err());
    }

    #[test]
    fn bodiless_answers_have_no_body_whatever_they_say() {
        let head = response(
            &Method::HEAD,
            StatusCode::OK,
            Version::HTTP_11,
            &headers(&[("content-length", "100")]),
        );
        assert_eq!(head.ok(), Some(framing(BodyKind::Length(0), true)));
        assert_eq!(
            get(304, &[("content-length", "100")]).ok(),
            Some(framing(BodyKind::Length(0), true))
        );
        assert_eq!(get(204, &[]).ok(), Some(framing(BodyKind::Length(0), true)));
        // A 204 that announces a body may send one: its connection is not reused.
        for announced in [("content-length", "4"), ("transfer-encoding", "chunked")] {
            assert_eq!(
                get(204, &[announced]).ok(),
                Some(framing(BodyKind::Length(0), false)),
                "{announced:?}"
            );
        }
        assert_eq!(
            get(204, &[("content-length", "junk")]).ok(),
            Some(framing(BodyKind::Length(0), false))
        );
    }

    #[test]
    fn only_http11_without_close_is_reused() {
        assert_eq!(
            get(200, &[]).ok(),
            Some(framing(BodyKind::UntilClose, false))
        );
        assert_eq!(
            get(
                200,
                &[("content-length", "1"), ("connection", "keep-alive, Close")]
            )
            .ok(),
            Some(framing(BodyKind::Length(1), false))
        );
        let http10 = response(
            &Method::GET,
            StatusCode::OK,
            Version::HTTP_10,
            &headers(&[("content-length", "1"), ("connection", "keep-alive")]),
        );
        assert_eq!(http10.ok(), Some(framing(BodyKind::Length(1), false)));
    }
}
