//! The chunked transfer coding of a response body (RFC 9112 §7.1), decoded strictly: lines
//! end in CRLF, chunk sizes are hex that fits a `u64`, chunk extensions and trailer
//! sections are bounded and dropped. Anything else is an error, and the connection is
//! closed: a lenient decoder and the server could disagree on where the message ends.

use super::H1Error;
use bytes::{Buf, Bytes, BytesMut};

/// Longest chunk-size line (size and extensions).
pub const MAX_LINE: usize = 4 * 1024;
/// Largest trailer section; trailers are read and dropped (hyper's server would not relay
/// them to an HTTP/1.1 client that did not ask, and no route needs them).
pub const MAX_TRAILERS: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Size,
    Data(u64),
    DataEnd,
    Trailers(usize),
    Done,
}

/// Where the decoder is in the body.
#[derive(Debug)]
pub struct Decoder(State);

/// What the decoder got out of the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    Data(Bytes),
    /// The buffer holds no complete step: read more.
    NeedMore,
    /// The last chunk and the trailer section have been read.
    End,
}

fn bad(why: &'static str) -> H1Error {
    H1Error::Chunked(why)
}

impl Decoder {
    pub fn new() -> Self {
        Self(State::Size)
    }

    /// Takes the next step out of `buf` (consuming what it decoded).
    pub fn step(&mut self, buf: &mut BytesMut) -> Result<Step, H1Error> {
        loop {
            match self.0 {
                State::Size => {
                    let Some(line) = line(buf, MAX_LINE)? else {
                        return Ok(Step::NeedMore);
                    };
                    let size = chunk_size(&buf[..line])?;
                    buf.advance(line + 2);
                    self.0 = if size == 0 {
                        State::Trailers(0)
                    } else {
                        State::Data(size)
                    };
                }
                State::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Step::NeedMore);
                    }
                    let take = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    let data = buf.split_to(take).freeze();
                    let left = left - take as u64;
                    self.0 = if left == 0 {
                        State::DataEnd
                    } else {
                        State::Data(left)
                    };
                    return Ok(Step::Data(data));
                }
                State::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Step::NeedMore);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(bad("no CRLF after a chunk's data"));
                    }
                    buf.advance(2);
                    self.0 = State::Size;
                }
                State::Trailers(seen) => {
                    let room = MAX_TRAILERS.saturating_sub(seen);
                    let Some(line) = line(buf, room)? else {
                        return Ok(Step::NeedMore);
                    };
                    if line == 0 {
                        buf.advance(2);
                        self.0 = State::Done;
                        return Ok(Step::End);
                    }
                    let field = &buf[..line];
                    if matches!(field.first(), Some(b' ' | b'\t'))
                        || !field.contains(&b':')
                        || field.iter().any(|&b| b == 0 || b == b'\r')
                    {
                        return Err(bad("an invalid trailer field"));
                    }
                    buf.advance(line + 2);
                    self.0 = State::Trailers(seen + line + 2);
                }
                State::Done => return Ok(Step::End),
            }
        }
    }
}

/// The length of the line at the start of `buf` (without its CRLF), once complete; an
/// error past `max` bytes without one, or on a bare LF.
fn line(buf: &[u8], max: usize) -> Result<Option<usize>, H1Error> {
    let window = &buf[..buf.len().min(max.saturating_add(2))];
    match memchr::memchr(b'\n', window) {
        Some(0) => Err(bad("a bare LF")),
        Some(lf) if window[lf - 1] == b'\r' => Ok(Some(lf - 1)),
        Some(_) => Err(bad("a bare LF")),
        None if window.len() > max + 1 => Err(bad("a line too long")),
        None => Ok(None),
    }
}

/// `1*HEXDIG [ BWS ";" chunk-ext ]`, the size fitting a `u64`.
fn chunk_size(line: &[u8]) -> Result<u64, H1Error> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err(bad("no chunk size"));
    }
    if digits > 16 {
        return Err(bad("a chunk size over 64 bits"));
    }
    let size = line[..digits].iter().fold(0u64, |n, &d| {
        let v = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => d - b'A' + 10,
        };
        (n << 4) | u64::from(v)
    });
    let after = &line[digits..];
    let rest = &after[after
        .iter()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count()..];
    match rest.first() {
        None if rest.len() == after.len() => Ok(size),
        None => Err(bad("spaces after a chunk size")),
        Some(b';') if rest.iter().all(|&b| b != 0 && b != b'\r') => Ok(size),
        Some(_) => Err(bad("junk after a chunk size")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `wire` fed in pieces of `piece` bytes: the body, or the first error.
    fn decode(wire: &[u8], piece: usize) -> Result<(Vec<u8>, usize), H1Error> {
        let mut dec = Decoder::new();
        let mut buf = BytesMut::new();
        let mut body = Vec::new();
        let mut fed = 0;
        loop {
            match dec.step(&mut buf)? {
                Step::Data(d) => body.extend_from_slice(&d),
                Step::End => return Ok((body, buf.len())),
                Step::NeedMore if fed >= wire.len() => return Err(H1Error::Truncated),
                Step::NeedMore => {
                    let end = (fed + piece).min(wire.len());
                    buf.extend_from_slice(&wire[fed..end]);
                    fed = end;
                }
            }
        }
    }

    #[test]
    fn well_formed_bodies_decode_in_any_pieces() {
        let wire = b"5\r\nhello\r\n1;name=value\r\n \r\nA\r\n0123456789\r\n0\r\nx-sum: 1\r\n\r\n";
        for piece in [1, 2, 3, 7, wire.len()] {
            let (body, left) = decode(wire, piece).expect("decodes");
            assert_eq!(body, b"hello 0123456789", "pieces of {piece}");
            assert_eq!(left, 0);
        }
        let (body, _) = decode(b"000\r\n\r\n", 4).expect("zero chunk with leading zeros");
        assert!(body.is_empty());
    }

    #[test]
    fn bytes_after_the_end_stay_in_the_buffer() {
        let (_, left) = decode(b"1\r\na\r\n0\r\n\r\nHTTP/1.1 200 OK\r\n", 1024).expect("ok");
        assert_eq!(left, 17, "left for the caller to refuse reuse");
    }

    #[test]
    fn malformed_bodies_are_errors() {
        let cases: &[(&str, &[u8])] = &[
            ("size over u64", b"10000000000000000\r\n"),
            ("huge size", b"ffffffffffffffffffff\r\nx\r\n"),
            ("negative", b"-5\r\nhello\r\n0\r\n\r\n"),
            ("hex prefix", b"0x5\r\nhello\r\n0\r\n\r\n"),
            ("junk", b"5z\r\nhello\r\n0\r\n\r\n"),
            ("no size", b"\r\nhello\r\n0\r\n\r\n"),
            ("space then digits", b"5 5\r\nhello\r\n0\r\n\r\n"),
            ("trailing space", b"5 \r\nhello\r\n0\r\n\r\n"),
            ("bare LF after size", b"5\nhello\r\n0\r\n\r\n"),
            ("bare LF after data", b"5\r\nhello\n0\r\n\r\n"),
            ("missing CRLF after data", b"5\r\nhelloX\r\n0\r\n\r\n"),
            ("too much data", b"3\r\nhello\r\n0\r\n\r\n"),
            ("bare CR in extension", b"5;a\rb\r\nhello\r\n0\r\n\r\n"),
            ("NUL in extension", b"5;a\0\r\nhello\r\n0\r\n\r\n"),
            ("missing final CRLF", b"5\r\nhello\r\n0\r\n"),
            ("truncated data", b"5\r\nhel"),
            ("obs-fold trailer", b"0\r\nx: 1\r\n  more\r\n\r\n"),
            ("trailer without colon", b"0\r\nnot a field\r\n\r\n"),
            ("bare LF in trailers", b"0\r\nx: 1\n\r\n"),
        ];
        for (what, wire) in cases {
            for piece in [1, 4096] {
                assert!(decode(wire, piece).is_err(), "{what} (pieces of {piece})");
            }
        }
    }

    #[test]
    fn lines_and_trailers_are_bounded() {
        let mut long_ext = b"5;".to_vec();
        long_ext.extend(std::iter::repeat_n(b'a', MAX_LINE));
        long_ext.extend_from_slice(b"\r\nhello\r\n0\r\n\r\n");
        assert!(decode(&long_ext, 512).is_err());
        assert!(decode(&long_ext, long_ext.len()).is_err());
        // Endless extension: refused without waiting for the end.
        let mut dec = Decoder::new();
        let mut buf = BytesMut::from(&long_ext[..MAX_LINE + 3]);
        assert!(dec.step(&mut buf).is_err());

        let mut trailers = b"0\r\n".to_vec();
        for i in 0..2000 {
            trailers.extend_from_slice(format!("x-t{i}: value\r\n").as_bytes());
        }
        trailers.extend_from_slice(b"\r\n");
        assert!(decode(&trailers, 100).is_err());
        assert!(decode(&trailers, trailers.len()).is_err());
    }
}
