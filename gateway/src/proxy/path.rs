//! Request-path normalisation, so that what we match routes and policies against is what the
//! upstream will serve: `//api`, `/./api`, `/x/../api` and `/%2e/api` all become `/api`.
//!
//! Percent-encoded unreserved characters are decoded (RFC 3986 §6.2.2.2); everything else
//! stays encoded, with hex digits upper-cased, so `%2F` is never a path separator. Dot
//! segments are removed (§5.2.4, clamped at the root) and empty segments collapsed. Matching
//! stays case-sensitive, as HTTP paths are.

/// Why a path was refused (answered with 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PathError {
    #[error("the path does not start with `/`")]
    NotAbsolute,
    #[error("invalid percent-encoding in the path")]
    BadEscape,
}

use std::borrow::Cow;

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

/// Decodes unreserved escapes and upper-cases the others.
fn decode_unreserved(segment: &str, out: &mut String) -> Result<(), PathError> {
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
            } else {
                out.push('%');
                out.push(char::from(b"0123456789ABCDEF"[usize::from(h)]));
                out.push(char::from(b"0123456789ABCDEF"[usize::from(l)]));
            }
            i += 3;
        } else {
            out.push(char::from(b));
            i += 1;
        }
    }
    Ok(())
}

/// The normalised form of an origin-form path (without the query); borrowed when the path
/// is already normal, which is the common case and costs no allocation.
pub fn normalize(path: &str) -> Result<Cow<'_, str>, PathError> {
    if !path.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    if is_plain(path.as_bytes()) {
        return Ok(Cow::Borrowed(path));
    }
    normalize_slow(path).map(Cow::Owned)
}

/// Nothing to decode, collapse or resolve: no escape, no empty or dot segment (no `%`, `//`
/// or `/.`). One pass over the bytes: this runs on every request.
fn is_plain(path: &[u8]) -> bool {
    let mut after_slash = false;
    for &b in path {
        if b == b'%' || (after_slash && (b == b'/' || b == b'.')) {
            return false;
        }
        after_slash = b == b'/';
    }
    true
}

fn normalize_slow(path: &str) -> Result<String, PathError> {
    if !path.is_ascii() {
        // hyper only hands us ASCII; anything else is not a valid request target.
        return Err(PathError::BadEscape);
    }
    let trailing_slash =
        path.len() > 1 && (path.ends_with('/') || path.ends_with("/.") || path.ends_with("/.."));
    let mut segments: Vec<String> = Vec::new();
    let mut decoded = String::new();
    for raw in path.split('/') {
        decoded.clear();
        decode_unreserved(raw, &mut decoded)?;
        match decoded.as_str() {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s.to_string()),
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
    Ok(out)
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
            assert_eq!(normalize(input).as_deref(), Ok(want), "{input}");
            if matches!(normalize(input), Ok(Cow::Borrowed(_))) {
                assert_eq!(input, want, "borrowed only when unchanged");
            }
        }
    }

    #[test]
    fn plain_paths_are_borrowed() {
        for p in ["/", "/api/items", "/api/", "/a-b_c~d/e.json"] {
            assert!(matches!(normalize(p), Ok(Cow::Borrowed(_))), "{p}");
        }
    }

    #[test]
    fn plain_check_matches_its_definition_exhaustively() {
        // Every string of up to 6 bytes over the characters that matter.
        let alphabet = [b'/', b'.', b'%', b'a'];
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
            let want = !text.contains('%') && !text.contains("//") && !text.contains("/.");
            assert_eq!(is_plain(&p), want, "{text:?}");
        }
    }

    #[test]
    fn refuses_bad_paths() {
        assert_eq!(normalize("api"), Err(PathError::NotAbsolute));
        assert_eq!(normalize("*"), Err(PathError::NotAbsolute));
        assert_eq!(normalize("/a%2"), Err(PathError::BadEscape));
        assert_eq!(normalize("/a%zz"), Err(PathError::BadEscape));
    }
}
