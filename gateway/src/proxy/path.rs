//! Request-path normalisation, so that what we match routes and policies against is what the
//! upstream will serve: `//api`, `/./api`, `/x/../api` and `/%2e/api` all become `/api`.
//!
//! Percent-encoded unreserved characters are decoded (RFC 3986 §6.2.2.2); everything else
//! stays encoded, with hex digits upper-cased, so `%2F` is never a path separator here. Dot
//! segments are removed (§5.2.4, clamped at the root) and empty segments collapsed. Matching
//! stays case-sensitive, as HTTP paths are.
//!
//! What upstreams read in different ways is reported as an [`Ambiguity`] for the route to
//! decide on (`encoded_slashes`): an encoded separator (`%2F`, `%5C`) or a raw `\` (some
//! servers decode the first or treat the second as `/`), and a dot-segment with `;`
//! parameters (`..;`, which Tomcat reads as `..`).

use std::borrow::Cow;

/// Why a path was refused (answered with 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    #[error("the path does not start with `/`")]
    NotAbsolute,
    #[error("invalid percent-encoding in the path")]
    BadEscape,
    #[error("an encoded `/` or `\\`, or a `\\`, in the path")]
    EscapedSeparator,
    #[error("a dot-segment with `;` parameters in the path")]
    DotSegmentParameters,
}

/// What in a path upstreams may read differently from us.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ambiguity {
    /// `%2F` or `%5C` (any case), or a raw `\`.
    pub separator: bool,
    /// A segment `.;…` or `..;…` (after decoding unreserved escapes).
    pub dot_parameters: bool,
}

impl Ambiguity {
    pub fn any(self) -> bool {
        self.separator || self.dot_parameters
    }

    /// The refusal for it, `None` when the path is unambiguous.
    pub fn error(self) -> Option<PathError> {
        if self.dot_parameters {
            Some(PathError::DotSegmentParameters)
        } else if self.separator {
            Some(PathError::EscapedSeparator)
        } else {
            None
        }
    }
}

/// A normalised path: borrowed when the request's own path was normal already, which is the
/// common case and costs no allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Normalized<'a> {
    pub path: Cow<'a, str>,
    pub ambiguity: Ambiguity,
}

fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Decodes unreserved escapes and upper-cases the others; notes separators, encoded or raw
/// backslashes. With `separators_to_slash`, those become `/` instead (`decode` mode).
fn decode_unreserved(
    segment: &str,
    out: &mut String,
    separators_to_slash: bool,
    ambiguity: &mut Ambiguity,
) -> Result<(), PathError> {
    let bytes = segment.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(PathError::BadEscape);
            };
            let v = h * 16 + l;
            if is_unreserved(v) {
                out.push(char::from(v));
            } else if matches!(v, b'/' | b'\\') && separators_to_slash {
                out.push('/');
            } else {
                ambiguity.separator |= matches!(v, b'/' | b'\\');
                out.push('%');
                out.push(char::from(b"0123456789ABCDEF"[usize::from(h)]));
                out.push(char::from(b"0123456789ABCDEF"[usize::from(l)]));
            }
            i += 3;
        } else if b == b'\\' && separators_to_slash {
            out.push('/');
            i += 1;
        } else {
            ambiguity.separator |= b == b'\\';
            out.push(char::from(b));
            i += 1;
        }
    }
    Ok(())
}

/// The normalised form of an origin-form path (without the query), with what in it is
/// ambiguous. Encoded separators stay encoded.
pub fn normalize(path: &str) -> Result<Normalized<'_>, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if is_plain(path.as_bytes()) {
        return Ok(Normalized {
            path: Cow::Borrowed(path),
            ambiguity: Ambiguity::default(),
        });
    }
    normalize_slow(path)
}

/// The normalised form with `%2F`, `%5C` and `\` decoded to `/` first (`encoded_slashes =
/// "decode"`). Only dot-segments with parameters can remain ambiguous.
pub fn normalize_decoding_separators(path: &str) -> Result<Normalized<'static>, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    // Decoding a separator adds one: decode first, then split.
    let mut decoded = String::with_capacity(path.len());
    decode_unreserved(path, &mut decoded, true, &mut Ambiguity::default())?;
    normalize_slow(&decoded)
}

/// Nothing to decode, collapse or resolve, nothing ambiguous: no escape, no `\`, no empty
/// or dot segment (no `%`, `\`, `//` or `/.`). One pass over the bytes: this runs on every
/// request.
fn is_plain(path: &[u8]) -> bool {
    let mut after_slash = false;
    for &b in path {
        if b == b'%' || b == b'\\' || (after_slash && (b == b'/' || b == b'.')) {
            return false;
        }
        after_slash = b == b'/';
    }
    true
}

fn normalize_slow(path: &str) -> Result<Normalized<'static>, PathError> {
    if !path.is_ascii() {
        // hyper only hands us ASCII; anything else is not a valid request target.
        return Err(PathError::BadEscape);
    }
    let trailing_slash =
        path.len() > 1 && (path.ends_with('/') || path.ends_with("/.") || path.ends_with("/.."));
    let mut ambiguity = Ambiguity::default();
    let mut segments: Vec<String> = Vec::new();
    let mut decoded = String::new();
    for raw in path.split('/') {
        decoded.clear();
        decode_unreserved(raw, &mut decoded, false, &mut ambiguity)?;
        match decoded.as_str() {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => {
                ambiguity.dot_parameters |= s.starts_with(".;") || s.starts_with("..;");
                segments.push(s.to_string());
            }
        }
    }
    let mut out = String::with_capacity(path.len());
    for s in &segments {
        out.push('/');
        out.push_str(s);
    }
    if out.is_empty() || (trailing_slash && !segments.is_empty()) {
        out.push('/');
    }
    Ok(Normalized {
        path: Cow::Owned(out),
        ambiguity,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalises_the_usual_tricks() {
        for (input, want) in [
            ("/api/items", "/api/items"),
            ("//api/items", "/api/items"),
            ("/./api/items", "/api/items"),
            ("/x/../api/items", "/api/items"),
            ("/../api/items", "/api/items"),
            ("/%2e/api/items", "/api/items"),
            ("/%2E%2E/api/items", "/api/items"),
            ("/a/%2e%2e/api/items", "/api/items"),
            ("/%61pi/items", "/api/items"),
            ("/api/", "/api/"),
            ("/api//", "/api/"),
            ("/api/.", "/api/"),
            ("/api/x/..", "/api/"),
            ("/", "/"),
            ("/..", "/"),
            ("/API/items", "/API/items"),
            ("/api/a%2fb", "/api/a%2Fb"),
            ("/api/%7euser", "/api/~user"),
            ("/api/a%20b", "/api/a%20b"),
        ] {
            let n = normalize(input).expect(input);
            assert_eq!(n.path, want, "{input}");
            assert_eq!(n.ambiguity.any(), input.contains("%2f"), "{input}");
            if matches!(n.path, Cow::Borrowed(_)) {
                assert_eq!(input, want, "borrowed only when unchanged");
            }
        }
    }

    #[test]
    fn plain_paths_are_borrowed() {
        for p in ["/", "/api/items", "/api/", "/a-b_c~d/e.json"] {
            assert!(
                matches!(normalize(p).map(|n| n.path), Ok(Cow::Borrowed(_))),
                "{p}"
            );
        }
    }

    #[test]
    fn plain_check_matches_its_definition_exhaustively() {
        // Every string of up to 6 bytes over the characters that matter.
        let alphabet = [b'/', b'.', b'%', b'a', b'\\'];
        let mut paths: Vec<Vec<u8>> = vec![Vec::new()];
        let mut last = paths.clone();
        for _ in 0..6 {
            last = last
                .iter()
                .flat_map(|p| {
                    alphabet.iter().map(move |&c| {
                        let mut q = p.clone();
                        q.push(c);
                        q
                    })
                })
                .collect();
            paths.extend(last.iter().cloned());
        }
        for p in paths {
            let text = String::from_utf8(p.clone()).unwrap_or_default();
            let want = !text.contains('%')
                && !text.contains('\\')
                && !text.contains("//")
                && !text.contains("/.");
            assert_eq!(is_plain(&p), want, "{text:?}");
        }
    }

    #[test]
    fn refuses_bad_paths() {
        assert_eq!(normalize("api"), Err(PathError::NotAbsolute));
        assert_eq!(normalize("*"), Err(PathError::NotAbsolute));
        assert_eq!(normalize("/a%2"), Err(PathError::BadEscape));
        assert_eq!(normalize("/a%zz"), Err(PathError::BadEscape));
        assert_eq!(
            normalize_decoding_separators("/a%zz"),
            Err(PathError::BadEscape)
        );
    }

    fn ambiguity(path: &str) -> Option<PathError> {
        normalize(path).expect(path).ambiguity.error()
    }

    #[test]
    fn separators_upstreams_may_decode_are_ambiguous() {
        for p in [
            "/public/..%2Fapi%2Fitems",
            "/public/..%2fapi",
            "/public/..%5Capi",
            "/public/..%5capi",
            "/public/..\\api\\items",
            "/api%2F",
            "/%2F",
        ] {
            assert_eq!(ambiguity(p), Some(PathError::EscapedSeparator), "{p}");
        }
        // `%25` is an escaped `%`: `%252F` is the text `%2F`, which no single decoding turns
        // into a separator; other reserved escapes are not separators either.
        for p in ["/a%252Fb", "/a%3Bb", "/a%2Eb", "/a%20b", "/a%3Fb"] {
            assert_eq!(ambiguity(p), None, "{p}");
        }
    }

    #[test]
    fn dot_segments_with_parameters_are_ambiguous() {
        for p in [
            "/public/..;/api/items",
            "/public/..;x=1/api",
            "/public/.;/api",
            "/public/%2e%2e;/api",
            "/public/.%2e;/api",
            "/..;",
        ] {
            assert_eq!(ambiguity(p), Some(PathError::DotSegmentParameters), "{p}");
        }
        for p in ["/a;b", "/a/b;..", "/a/...;", "/a/x..;", "/a/..x;"] {
            assert_eq!(ambiguity(p), None, "{p}");
        }
    }

    #[test]
    fn decoding_separators_resolves_what_they_hide() {
        for (input, want) in [
            ("/public/..%2Fapi%2Fitems", "/api/items"),
            ("/public/..%5Capi%5citems", "/api/items"),
            ("/public/..\\api\\items", "/api/items"),
            ("/api/a%2fb", "/api/a/b"),
            ("/api/%2e%2e%2f..%2fx", "/x"),
            ("/api/items", "/api/items"),
            ("/a%252Fb", "/a%252Fb"),
        ] {
            let n = normalize_decoding_separators(input).expect(input);
            assert_eq!(n.path, want, "{input}");
            assert!(!n.ambiguity.any(), "{input}");
        }
        // A `..;` hidden behind an encoded separator shows after decoding.
        let n = normalize_decoding_separators("/public%2F..;%2Fapi").expect("decodes");
        assert_eq!(n.ambiguity.error(), Some(PathError::DotSegmentParameters));
    }
}
