//! Base64 codecs written for this crate so that their strictness is ours to guarantee.
//!
//! Tokens use the URL-safe alphabet without padding (RFC 7515 §2), and we accept exactly the
//! canonical encoding: no `=`, no `+`/`/`, no whitespace, and unused trailing bits must be
//! zero. Otherwise two different strings would decode to the same bytes, which breaks the
//! "one token, one cache entry" assumption and hides tampering. PEM bodies use the standard
//! alphabet with padding and line breaks; that decoder is lenient about whitespace only.

use thiserror::Error;

/// Why a base64 string was refused.
#[derive(Debug, Error, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum B64Error {
    /// A byte outside the alphabet (including `=`, whitespace, or the other alphabet).
    #[error("invalid base64 character at offset {0}")]
    InvalidByte(usize),
    /// A length of 4n+1 characters cannot encode whole bytes.
    #[error("invalid base64 length")]
    InvalidLength,
    /// The last character carries non-zero bits that no encoder would emit.
    #[error("non-canonical base64 (trailing bits set)")]
    NonCanonical,
    /// The decoded data does not fit the output buffer.
    #[error("decoded data is too long")]
    TooLong,
}

const URL_ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
const STD_ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const INVALID: u8 = 0xff;

const fn table(alphabet: &[u8; 64]) -> [u8; 256] {
    let mut t = [INVALID; 256];
    let mut i = 0;
    while i < 64 {
        t[alphabet[i] as usize] = i as u8;
        i += 1;
    }
    t
}

static URL_TABLE: [u8; 256] = table(URL_ALPHABET);
static STD_TABLE: [u8; 256] = table(STD_ALPHABET);

/// Number of bytes that `len` base64 characters (unpadded) decode to, or `None` for an
/// impossible length.
pub fn decoded_len(len: usize) -> Option<usize> {
    match len % 4 {
        1 => None,
        0 => Some(len / 4 * 3),
        r => Some(len / 4 * 3 + r - 1),
    }
}

/// Number of characters of the unpadded encoding of `len` bytes.
pub fn encoded_len(len: usize) -> usize {
    len / 3 * 4
        + match len % 3 {
            0 => 0,
            r => r + 1,
        }
}

#[inline]
fn sextet(t: &[u8; 256], input: &[u8], i: usize) -> Result<u32, B64Error> {
    let b = input.get(i).copied().ok_or(B64Error::InvalidLength)?;
    let v = t[usize::from(b)];
    if v == INVALID {
        Err(B64Error::InvalidByte(i))
    } else {
        Ok(u32::from(v))
    }
}

/// Strict decode with the given table into `out`, returning the number of bytes written.
fn decode_strict(t: &[u8; 256], input: &[u8], out: &mut [u8]) -> Result<usize, B64Error> {
    let n = decoded_len(input.len()).ok_or(B64Error::InvalidLength)?;
    let out = out.get_mut(..n).ok_or(B64Error::TooLong)?;
    let mut chunks_out = out.chunks_exact_mut(3);
    let mut chunks_in = input.chunks_exact(4);
    // INVALID has the top bit set, which no sextet has: the OR of every looked-up value,
    // tested once after the loop, says whether any character was foreign (the branch-free
    // loop is what makes this fast; the offending offset is found only on failure).
    let mut bad = 0u8;
    for (o, c) in (&mut chunks_out).zip(&mut chunks_in) {
        let &[a, b, c2, d] = c else {
            return Err(B64Error::InvalidLength);
        };
        let [a, b, c2, d] = [a, b, c2, d].map(|x| t[usize::from(x)]);
        bad |= a | b | c2 | d;
        let w = (u32::from(a) << 18) | (u32::from(b) << 12) | (u32::from(c2) << 6) | u32::from(d);
        o.copy_from_slice(&w.to_be_bytes()[1..]);
    }
    let pos = input.len() / 4 * 4;
    if bad & 0x80 != 0 {
        let first_bad = input
            .get(..pos)
            .unwrap_or_default()
            .iter()
            .position(|&x| t[usize::from(x)] == INVALID);
        return Err(B64Error::InvalidByte(first_bad.unwrap_or(0)));
    }
    let rest = chunks_in.remainder();
    let o = chunks_out.into_remainder();
    match rest.len() {
        0 => {}
        2 => {
            let a = sextet(t, rest, 0).map_err(|e| shift(e, pos))?;
            let b = sextet(t, rest, 1).map_err(|e| shift(e, pos))?;
            if b & 0x0f != 0 {
                return Err(B64Error::NonCanonical);
            }
            let w = (a << 18) | (b << 12);
            o.copy_from_slice(&w.to_be_bytes()[1..2]);
        }
        3 => {
            let a = sextet(t, rest, 0).map_err(|e| shift(e, pos))?;
            let b = sextet(t, rest, 1).map_err(|e| shift(e, pos))?;
            let c = sextet(t, rest, 2).map_err(|e| shift(e, pos))?;
            if c & 0x03 != 0 {
                return Err(B64Error::NonCanonical);
            }
            let w = (a << 18) | (b << 12) | (c << 6);
            o.copy_from_slice(&w.to_be_bytes()[1..3]);
        }
        _ => return Err(B64Error::InvalidLength),
    }
    Ok(n)
}

fn shift(e: B64Error, pos: usize) -> B64Error {
    match e {
        B64Error::InvalidByte(i) => B64Error::InvalidByte(i + pos),
        other => other,
    }
}

/// Decodes canonical unpadded base64url into the front of `out`; returns the length.
/// Fails with [`B64Error::TooLong`] when `out` is too small (the input is still rejected
/// first if its length is impossible).
pub fn decode_url_into(input: &[u8], out: &mut [u8]) -> Result<usize, B64Error> {
    decode_strict(&URL_TABLE, input, out)
}

/// Checks that `input` is canonical unpadded base64url without producing output.
pub fn validate_url(input: &[u8]) -> Result<(), B64Error> {
    decoded_len(input.len()).ok_or(B64Error::InvalidLength)?;
    let full = input.len() / 4 * 4;
    for (i, &b) in input.iter().enumerate().take(full) {
        if URL_TABLE[usize::from(b)] == INVALID {
            return Err(B64Error::InvalidByte(i));
        }
    }
    // The tail decides canonicality; decode it for real.
    let mut scratch = [0u8; 3];
    decode_strict(
        &URL_TABLE,
        input.get(full..).unwrap_or_default(),
        &mut scratch,
    )
    .map_err(|e| shift(e, full))?;
    Ok(())
}

/// Decodes canonical unpadded base64url into a new vector.
pub fn decode_url(input: &[u8]) -> Result<Vec<u8>, B64Error> {
    let n = decoded_len(input.len()).ok_or(B64Error::InvalidLength)?;
    let mut out = vec![0u8; n];
    decode_strict(&URL_TABLE, input, &mut out)?;
    Ok(out)
}

/// Appends the unpadded base64url encoding of `data` to `out`.
pub fn encode_url_into(data: &[u8], out: &mut String) {
    out.reserve(encoded_len(data.len()));
    let mut chunks = data.chunks_exact(3);
    for c in &mut chunks {
        let w = (u32::from(c[0]) << 16) | (u32::from(c[1]) << 8) | u32::from(c[2]);
        for s in [18u32, 12, 6, 0] {
            out.push(char::from(URL_ALPHABET[((w >> s) & 63) as usize]));
        }
    }
    match *chunks.remainder() {
        [a] => {
            let w = u32::from(a) << 16;
            out.push(char::from(URL_ALPHABET[((w >> 18) & 63) as usize]));
            out.push(char::from(URL_ALPHABET[((w >> 12) & 63) as usize]));
        }
        [a, b] => {
            let w = (u32::from(a) << 16) | (u32::from(b) << 8);
            out.push(char::from(URL_ALPHABET[((w >> 18) & 63) as usize]));
            out.push(char::from(URL_ALPHABET[((w >> 12) & 63) as usize]));
            out.push(char::from(URL_ALPHABET[((w >> 6) & 63) as usize]));
        }
        _ => {}
    }
}

/// The unpadded base64url encoding of `data`.
pub fn encode_url(data: &[u8]) -> String {
    let mut s = String::new();
    encode_url_into(data, &mut s);
    s
}

/// Decodes a PEM body: standard alphabet, ASCII whitespace ignored, `=` padding allowed
/// only at the end. Trailing bits must still be zero.
pub fn decode_std_lenient(input: &[u8]) -> Result<Vec<u8>, B64Error> {
    let mut clean: Vec<u8> = input
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let pads = clean.iter().rev().take_while(|&&b| b == b'=').count();
    if pads > 2 || (pads > 0 && !clean.len().is_multiple_of(4)) {
        return Err(B64Error::InvalidLength);
    }
    clean.truncate(clean.len() - pads);
    let n = decoded_len(clean.len()).ok_or(B64Error::InvalidLength)?;
    let mut out = vec![0u8; n];
    decode_strict(&STD_TABLE, &clean, &mut out)?;
    Ok(out)
}

/// Standard base64 with padding (PEM output).
pub fn encode_std(data: &[u8]) -> String {
    let mut s = encode_url(data)
        .chars()
        .map(|c| match c {
            '-' => '+',
            '_' => '/',
            c => c,
        })
        .collect::<String>();
    while !s.len().is_multiple_of(4) {
        s.push('=');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_all_lengths() {
        for len in 0..64usize {
            let data: Vec<u8> = (0..len).map(|i| (i * 37 + 11) as u8).collect();
            let enc = encode_url(&data);
            assert_eq!(enc.len(), encoded_len(len));
            assert_eq!(decode_url(enc.as_bytes()).unwrap(), data);
            validate_url(enc.as_bytes()).unwrap();
        }
    }

    #[test]
    fn rejects_non_canonical_and_foreign_bytes() {
        assert_eq!(decode_url(b"QR"), Err(B64Error::NonCanonical));
        assert_eq!(decode_url(b"QQ"), Ok(b"A".to_vec()));
        assert_eq!(decode_url(b"QUI"), Ok(b"AB".to_vec()));
        assert_eq!(decode_url(b"QUJ"), Err(B64Error::NonCanonical));
        assert_eq!(decode_url(b"QQ=="), Err(B64Error::InvalidByte(2)));
        assert_eq!(decode_url(b"a+b/"), Err(B64Error::InvalidByte(1)));
        assert_eq!(decode_url(b"ab c"), Err(B64Error::InvalidByte(2)));
        assert_eq!(decode_url(b"abcde"), Err(B64Error::InvalidLength));
        assert_eq!(validate_url(b"QR"), Err(B64Error::NonCanonical));
        assert_eq!(validate_url(b"AAAA*AAA"), Err(B64Error::InvalidByte(4)));
        let mut small = [0u8; 2];
        assert_eq!(decode_url_into(b"AAAA", &mut small), Err(B64Error::TooLong));
    }

    #[test]
    fn std_lenient() {
        assert_eq!(decode_std_lenient(b"QU\nJD\r\n").unwrap(), b"ABC");
        assert_eq!(decode_std_lenient(b"QQ==").unwrap(), b"A");
        assert!(decode_std_lenient(b"QQ=").is_err());
        assert_eq!(encode_std(b"A"), "QQ==");
        assert_eq!(encode_std(&[0xfb, 0xff]), "+/8=");
    }

    proptest::proptest! {
        /// Any string of base64url characters, foreign bytes, padding and whitespace, at
        /// every length: accepted exactly when the `base64` crate's strict URL-safe,
        /// unpadded engine (trailing bits refused) accepts it, with the same bytes; the
        /// offset of a foreign byte is the first one.
        #[test]
        fn decode_agrees_with_the_base64_crate(
            s in r"[A-Za-z0-9_\-]{0,40}[A-Za-z0-9_\-=+/ .\x00\xff]{0,3}[A-Za-z0-9_\-]{0,6}",
        ) {
            use base64::Engine as _;
            let input = s.as_bytes();
            let theirs = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(input);
            let ours = decode_url(input);
            proptest::prop_assert_eq!(ours.as_ref().ok(), theirs.as_ref().ok());
            if let Err(B64Error::InvalidByte(at)) = ours {
                let first = input.iter().position(|&b| URL_TABLE[usize::from(b)] == INVALID);
                proptest::prop_assert_eq!(Some(at), first);
            }
            proptest::prop_assert_eq!(validate_url(input).is_ok(), theirs.is_ok());
        }

        /// Arbitrary bytes: our encoding is the crate's, and decodes back.
        #[test]
        fn encode_agrees_with_the_base64_crate(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..100)) {
            use base64::Engine as _;
            let enc = encode_url(&data);
            proptest::prop_assert_eq!(&enc, &base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&data));
            proptest::prop_assert_eq!(decode_url(enc.as_bytes()).ok(), Some(data));
        }
    }
}
