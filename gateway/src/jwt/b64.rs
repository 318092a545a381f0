//! Base64 codecs written for this crate so that their strictness is ours to guarantee.
//! Token segments are decoded by `base64-simd` for speed (as strict, see
//! [`decode_url_into`]); the scalar decoder here stays the definition: it judges every
//! refusal and property tests hold both to it and to the `base64` crate's strict engine.
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

/// A foreign byte's entry: bits above the 24 that a group of four characters fills, so that
/// the OR of a group's four entries is both its value and, in the top byte, whether any of
/// them was foreign.
const BAD: u32 = 0xff00_0000;

/// One lookup table per position in a group of four characters: entry `c` of table `k` is
/// the sextet of `c` already shifted to its place in the group's 24 bits (18, 12, 6, 0), or
/// [`BAD`]. Pre-shifted tables turn a group into four loads and three ORs (4 KiB, stays in
/// L1), which is most of what makes the decoder cheap next to the HMAC it feeds.
type Tables = [[u32; 256]; 4];

const fn tables(alphabet: &[u8; 64]) -> Tables {
    let mut t = [[BAD; 256]; 4];
    let mut i = 0;
    while i < 64 {
        let c = alphabet[i] as usize;
        let v = i as u32;
        t[0][c] = v << 18;
        t[1][c] = v << 12;
        t[2][c] = v << 6;
        t[3][c] = v;
        i += 1;
    }
    t
}

static URL_TABLES: Tables = tables(URL_ALPHABET);
static STD_TABLES: Tables = tables(STD_ALPHABET);

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

/// Whether `b` is in the alphabet of `t`.
fn valid(t: &Tables, b: u8) -> bool {
    t[3][usize::from(b)] != BAD
}

/// Strict decode with the given tables into `out`, returning the number of bytes written.
fn decode_strict(t: &Tables, input: &[u8], out: &mut [u8]) -> Result<usize, B64Error> {
    let n = decoded_len(input.len()).ok_or(B64Error::InvalidLength)?;
    let out = out.get_mut(..n).ok_or(B64Error::TooLong)?;
    let [t0, t1, t2, t3] = t;
    let group = |c: [u8; 4]| {
        let [a, b, c, d] = c.map(usize::from);
        t0[a] | t1[b] | t2[c] | t3[d]
    };
    // The OR of every group, tested once after the loops, says whether any character was
    // foreign (branch-free loops are what make this fast; the offending offset is found
    // only on failure).
    let mut bad = 0u32;
    // Eight characters (two groups, six bytes) per step, then single groups. Each step
    // stores a whole word where the output has room (its extra bytes are overwritten by the
    // next step): one store instead of a byte at a time.
    let (mut i, mut o) = (0, 0);
    while let Some(c) = input.get(i..i + 8) {
        let Ok([a, b, c, d, e, f, g, h]) = <[u8; 8]>::try_from(c) else {
            break;
        };
        let (w1, w2) = (group([a, b, c, d]), group([e, f, g, h]));
        bad |= w1 | w2;
        let bytes = (((u64::from(w1) << 24) | u64::from(w2)) << 16).to_be_bytes();
        store(out, o, &bytes, 6);
        i += 8;
        o += 6;
    }
    while let Some(c) = input.get(i..i + 4) {
        let Ok(c) = <[u8; 4]>::try_from(c) else {
            break;
        };
        let w = group(c);
        bad |= w;
        let bytes = (w << 8).to_be_bytes();
        store(out, o, &bytes, 3);
        i += 4;
        o += 3;
    }
    // The tail of 2 or 3 characters, looked up at its positions in a group (the missing
    // positions add nothing), so the same OR gives its bits and its validity.
    let rest = input.get(i..).unwrap_or_default();
    let tail = match *rest {
        [] => 0,
        [a, b] => t0[usize::from(a)] | t1[usize::from(b)],
        [a, b, c] => t0[usize::from(a)] | t1[usize::from(b)] | t2[usize::from(c)],
        _ => return Err(B64Error::InvalidLength),
    };
    if (bad | tail) & BAD != 0 {
        let first_bad = input.iter().position(|&x| !valid(t, x));
        return Err(B64Error::InvalidByte(first_bad.unwrap_or(0)));
    }
    // Bits of the tail's last character that fall outside the bytes it completes.
    let unused = match rest.len() {
        2 => 0x00_ffff,
        3 => 0x00_00ff,
        _ => 0,
    };
    if tail & unused != 0 {
        return Err(B64Error::NonCanonical);
    }
    let [_, x, y, _] = tail.to_be_bytes();
    match out.get_mut(o..).unwrap_or_default() {
        [p] => *p = x,
        [p, q] => {
            *p = x;
            *q = y;
        }
        _ => {}
    }
    Ok(n)
}

/// Writes a decoded step at `o`: the whole `word` where `out` has room (the next step
/// overwrites its extra bytes; one store instead of a byte at a time), else its first
/// `useful` bytes.
#[inline(always)]
fn store(out: &mut [u8], o: usize, word: &[u8], useful: usize) {
    if let Some(dst) = out.get_mut(o..o + word.len()) {
        dst.copy_from_slice(word);
    } else if let (Some(dst), Some(src)) = (out.get_mut(o..o + useful), word.get(..useful)) {
        dst.copy_from_slice(src);
    }
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
    let n = decoded_len(input.len()).ok_or(B64Error::InvalidLength)?;
    let dst = out.get_mut(..n).ok_or(B64Error::TooLong)?;
    // The SIMD decoder is as strict as ours (URL-safe alphabet only, no padding, unused
    // trailing bits zero) but says only "invalid": a refused input is decoded again by ours,
    // which finds the reason and the offset (and has the last word, should they disagree).
    match base64_simd::URL_SAFE_NO_PAD.decode(input, base64_simd::Out::from_slice(dst)) {
        Ok(decoded) if decoded.len() == n => Ok(n),
        _ => decode_strict(&URL_TABLES, input, out),
    }
}

/// Decodes canonical unpadded base64url onto the end of `out`; on failure `out` is as it
/// was. The same decoding and refusals as [`decode_url_into`], without a zeroed buffer to
/// decode into (the SIMD decoder writes into `out`'s spare capacity).
pub fn decode_url_append(input: &[u8], out: &mut Vec<u8>) -> Result<(), B64Error> {
    match base64_simd::URL_SAFE_NO_PAD.decode_append(input, out) {
        Ok(()) => Ok(()),
        Err(_) => {
            // Refused: ours finds the reason (and has the last word, should they disagree).
            let mut bytes = vec![0u8; input.len()];
            let n = decode_strict(&URL_TABLES, input, &mut bytes)?;
            out.extend_from_slice(bytes.get(..n).unwrap_or_default());
            Ok(())
        }
    }
}

/// Checks that `input` is canonical unpadded base64url without producing output.
pub fn validate_url(input: &[u8]) -> Result<(), B64Error> {
    decoded_len(input.len()).ok_or(B64Error::InvalidLength)?;
    let full = input.len() / 4 * 4;
    for (i, &b) in input.iter().enumerate().take(full) {
        if !valid(&URL_TABLES, b) {
            return Err(B64Error::InvalidByte(i));
        }
    }
    // The tail decides canonicality; decode it for real.
    let mut scratch = [0u8; 3];
    decode_strict(
        &URL_TABLES,
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
    decode_url_into(input, &mut out)?;
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
    decode_strict(&STD_TABLES, &clean, &mut out)?;
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

    /// Bytes that are not base64url, and some that are, to put at any position.
    fn odd_byte() -> impl proptest::strategy::Strategy<Value = u8> {
        proptest::sample::select(vec![
            b'=', b'+', b'/', b' ', b'.', b'\n', 0u8, 0x80, 0xff, b'A', b'_', b'-',
        ])
    }

    /// `s` with `odd`'s byte at its position (modulo the length), then `cut` bytes off the end.
    fn mangled(s: String, odd: Option<(usize, u8)>, cut: usize) -> Vec<u8> {
        let mut input = s.into_bytes();
        if let Some((at, byte)) = odd {
            if !input.is_empty() {
                let at = at % input.len();
                input[at] = byte;
            }
        }
        input.truncate(input.len().saturating_sub(cut));
        input
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
                let first = input.iter().position(|&b| !valid(&URL_TABLES, b));
                proptest::prop_assert_eq!(Some(at), first);
            }
            proptest::prop_assert_eq!(validate_url(input).is_ok(), theirs.is_ok());
            let mut scalar = vec![0u8; input.len()];
            let scalar = decode_strict(&URL_TABLES, input, &mut scalar)
                .map(|n| scalar.get(..n).unwrap_or_default().to_vec());
            proptest::prop_assert_eq!(scalar, ours);
        }

        /// Token-sized inputs (the SIMD decoder's 32- and 64-character blocks and their
        /// tails), with at most one odd byte anywhere: the SIMD path, our scalar decoder
        /// and the `base64` crate agree on every input, and the error is the scalar one.
        #[test]
        fn long_inputs_agree(
            s in r"[A-Za-z0-9_\-]{0,400}",
            odd in proptest::option::of((0usize..400, odd_byte())),
            cut in 0usize..4,
        ) {
            use base64::Engine as _;
            let input = mangled(s, odd, cut);
            let theirs = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&input);
            let ours = decode_url(&input);
            proptest::prop_assert_eq!(ours.as_ref().ok(), theirs.as_ref().ok());
            let mut scalar = vec![0u8; input.len()];
            let scalar = decode_strict(&URL_TABLES, &input, &mut scalar)
                .map(|n| scalar.get(..n).unwrap_or_default().to_vec());
            proptest::prop_assert_eq!(scalar, ours);
        }

        /// Appending decodes what [`decode_url`] decodes, after whatever `out` held, and
        /// refuses what it refuses with the same error, leaving `out` as it was.
        #[test]
        fn append_agrees_with_decode(
            s in r"[A-Za-z0-9_\-]{0,200}",
            odd in proptest::option::of((0usize..200, odd_byte())),
            cut in 0usize..4,
            prefix in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..8),
        ) {
            let input = mangled(s, odd, cut);
            let mut out = prefix.clone();
            let appended = decode_url_append(&input, &mut out);
            match decode_url(&input) {
                Ok(bytes) => {
                    proptest::prop_assert_eq!(appended, Ok(()));
                    proptest::prop_assert_eq!(out.get(..prefix.len()), Some(&prefix[..]));
                    proptest::prop_assert_eq!(out.get(prefix.len()..), Some(&bytes[..]));
                }
                Err(e) => {
                    proptest::prop_assert_eq!(appended, Err(e));
                    proptest::prop_assert_eq!(out, prefix);
                }
            }
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
