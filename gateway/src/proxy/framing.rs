//! Spotting HTTP/1 request heads with both `Content-Length` and `Transfer-Encoding`.
//!
//! hyper follows RFC 9112 §6.3 for such a request: it drops the `Content-Length`, reads the
//! body as chunked and closes the connection afterwards, so by the time the handler sees the
//! request the conflict is gone. It is still how request smuggling starts, and the gateway
//! refuses it (the RFC allows either). So the bytes from the client pass through
//! [`FramingWatch`] on their way to hyper: it follows the HTTP/1 framing (heads, then bodies
//! by length or by chunks) and records one verdict per request head, in order; the handler
//! takes them in the same order, since hyper serves HTTP/1 requests one after another.
//!
//! The watch only reads; it never changes a byte. When it cannot follow the stream (HTTP/2,
//! an upgrade, garbage) it stops looking and hyper's own checks stand alone.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Longest head the watch follows; beyond it hyper refuses the request anyway.
const MAX_HEAD: usize = 64 * 1024;
/// Longest chunk-size or trailer line followed.
const MAX_LINE: usize = 4096;

/// The verdicts of one connection: `true` for a head with both framing headers.
#[derive(Debug, Default)]
pub struct Verdicts {
    queue: Mutex<VecDeque<bool>>,
}

impl Verdicts {
    /// The verdict for the next request hyper hands to the service (`false` when the watch
    /// has none, e.g. after it stopped following).
    pub fn next_is_ambiguous(&self) -> bool {
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front()
            .unwrap_or(false)
    }

    fn push(&self, ambiguous: bool) {
        self.queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back(ambiguous);
    }
}

#[derive(Debug)]
enum State {
    /// Collecting a request head into `line`.
    Head,
    /// Skipping a body of known length.
    Body(u64),
    /// Collecting a chunk-size line.
    ChunkSize,
    /// Skipping chunk data, then its CRLF.
    ChunkData(u64),
    /// Collecting trailer lines until the empty one.
    Trailers,
    /// Not following any more.
    Lost,
}

/// Passes reads through, following the request framing.
pub struct FramingWatch<I> {
    inner: I,
    state: State,
    line: Vec<u8>,
    verdicts: Arc<Verdicts>,
    /// Request heads completed so far (see [`FramingWatch::heads_seen`]).
    heads: u64,
}

/// How many CRLFs (or bare LFs) `data` starts with: allowed before a request line (RFC
/// 9112 §2.2).
fn leading_crlfs(data: &[u8]) -> usize {
    data.iter()
        .position(|b| *b != b'\r' && *b != b'\n')
        .unwrap_or(data.len())
}

/// What the framing of one request head says.
#[derive(Debug, Clone, Copy, Default)]
struct HeadFacts {
    /// The request line is HTTP/2's preface.
    h2: bool,
    has_cl: bool,
    /// Content-Length's value, when it is one number.
    length: Option<u64>,
    has_te: bool,
    /// Transfer-Encoding ends with `chunked`.
    chunked: bool,
    upgrade: bool,
}

impl HeadFacts {
    /// Reads the head `data` starts with, line by line, up to its blank line: its length
    /// (blank line included) and what it says; `None` if its end is not in `data`. One pass:
    /// this runs for every request.
    fn scan(data: &[u8]) -> Option<(usize, Self)> {
        let mut facts = Self::default();
        let first = memchr::memchr(b'\n', data)?;
        facts.h2 = data.starts_with(b"PRI * HTTP/2");
        let mut from = first + 1;
        loop {
            let nl = from + memchr::memchr(b'\n', &data[from..])?;
            let line = &data[from..=nl];
            // The end is `\r\n\r\n`: a blank line after a line that ended in CRLF too.
            if line == b"\r\n" && data[..from].ends_with(b"\r\n") {
                return Some((nl + 1, facts));
            }
            facts.line(line);
            from = nl + 1;
        }
    }

    /// One header line (with its line end).
    fn line(&mut self, raw: &[u8]) {
        // Only names starting with `c`, `t` or `u` (or with whitespace before them, which
        // the trim below takes off) can be one of the three; the rest need no search for
        // their colon.
        if !matches!(
            raw.first(),
            Some(b'c' | b'C' | b't' | b'T' | b'u' | b'U' | b' ' | b'\t' | b'\r' | b'\x0c')
        ) {
            return;
        }
        let Some(colon) = memchr::memchr(b':', raw) else {
            return;
        };
        let name = raw[..colon].trim_ascii();
        let value = raw[colon + 1..].trim_ascii();
        if name.eq_ignore_ascii_case(b"content-length") {
            self.has_cl = true;
            self.length = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok());
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            self.has_te = true;
            self.chunked = value
                .rsplit(|b| *b == b',')
                .next()
                .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            self.upgrade = true;
        }
    }
}

/// Skips up to `left` bytes of `data`: the bytes after them, and how many are still to skip
/// (`None` when all were).
fn skip(data: &[u8], left: u64) -> (&[u8], Option<u64>) {
    let n = left.min(data.len() as u64);
    let rest = left - n;
    (&data[n as usize..], (rest > 0).then_some(rest))
}

impl<I> FramingWatch<I> {
    pub fn new(inner: I, verdicts: Arc<Verdicts>) -> Self {
        Self {
            inner,
            state: State::Head,
            line: Vec::new(),
            verdicts,
            heads: 0,
        }
    }

    /// How many request heads have been read to their end: a parked connection (see
    /// [`super::park`]) wakes hyper only once this grows, so the bytes of a partial head
    /// stay under the header-read deadline that was already running.
    pub fn heads_seen(&self) -> u64 {
        self.heads
    }

    /// Between requests: every byte read so far belongs to a complete request (leading
    /// CRLFs aside), nothing of the next one has come.
    pub fn at_boundary(&self) -> bool {
        matches!(self.state, State::Head) && self.line.is_empty()
    }

    /// Still following the HTTP/1 framing (not HTTP/2, an upgrade, or garbage).
    pub fn following(&self) -> bool {
        !matches!(self.state, State::Lost)
    }

    /// Gives back the line buffer's memory between requests (a parked connection keeps
    /// nothing it does not need).
    pub fn release(&mut self) {
        if self.line.is_empty() {
            self.line = Vec::new();
        }
    }

    /// Advances the state machine over bytes the client sent.
    fn observe(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match self.state {
                State::Lost => return,
                State::Body(left) => {
                    let rest;
                    (data, rest) = skip(data, left);
                    self.state = rest.map_or(State::Head, State::Body);
                }
                State::ChunkData(left) => {
                    let rest;
                    (data, rest) = skip(data, left);
                    // The CRLF after the data is read as an (empty) chunk-size line.
                    self.state = rest.map_or(State::ChunkSize, State::ChunkData);
                }
                State::Head => {
                    // Usually a whole head arrives in one read: judged where it lies,
                    // without copying it into `line`.
                    if self.line.is_empty() {
                        let start = leading_crlfs(data);
                        if let Some((len, facts)) =
                            HeadFacts::scan(&data[start..]).filter(|(n, _)| *n <= MAX_HEAD)
                        {
                            data = &data[start + len..];
                            self.end_of_head(facts);
                            continue;
                        }
                    }
                    let (taken, done) = self.collect(data, b"\r\n\r\n", MAX_HEAD);
                    data = &data[taken..];
                    if done {
                        // The line holds the whole head, so the scan finds its end (if it
                        // did not, the stream would not be followed any further).
                        match HeadFacts::scan(&self.line) {
                            Some((_, facts)) => {
                                self.line.clear();
                                self.end_of_head(facts);
                            }
                            None => self.lose(),
                        }
                    }
                }
                State::ChunkSize => {
                    let (taken, done) = self.collect(data, b"\n", MAX_LINE);
                    data = &data[taken..];
                    if done {
                        self.end_of_chunk_size();
                    }
                }
                State::Trailers => {
                    let (taken, done) = self.collect(data, b"\n", MAX_LINE);
                    data = &data[taken..];
                    if done {
                        let blank = self.line.iter().all(|b| *b == b'\r' || *b == b'\n');
                        self.line.clear();
                        if blank {
                            self.state = State::Head;
                        }
                    }
                }
            }
        }
    }

    /// Appends `data` to the current line up to and including `end` (whose last byte is
    /// `\n`); returns the bytes taken and whether `end` was reached. Too long a line loses
    /// the stream. Scans for `\n` and copies in bulk: this runs on every request byte.
    fn collect(&mut self, data: &[u8], end: &[u8], max: usize) -> (usize, bool) {
        let mut start = 0;
        if matches!(self.state, State::Head) && self.line.is_empty() {
            start = leading_crlfs(data);
        }
        let mut from = start;
        while let Some(off) = memchr::memchr(b'\n', &data[from..]) {
            let nl = from + off;
            if self.ends_with(&data[start..=nl], end) {
                if self.line.len() + (nl + 1 - start) > max {
                    self.lose();
                    return (data.len(), false);
                }
                self.line.extend_from_slice(&data[start..=nl]);
                return (nl + 1, true);
            }
            from = nl + 1;
        }
        if self.line.len() + (data.len() - start) > max {
            self.lose();
            return (data.len(), false);
        }
        self.line.extend_from_slice(&data[start..]);
        (data.len(), false)
    }

    /// Whether the current line followed by `chunk` ends with `end`.
    fn ends_with(&self, chunk: &[u8], end: &[u8]) -> bool {
        if chunk.len() >= end.len() {
            return chunk.ends_with(end);
        }
        let need = end.len() - chunk.len();
        self.line.len() >= need
            && self.line[self.line.len() - need..] == end[..need]
            && chunk == &end[need..]
    }

    fn lose(&mut self) {
        self.state = State::Lost;
        self.line = Vec::new();
    }

    /// Records a complete head's verdict and moves on to its body.
    fn end_of_head(&mut self, head: HeadFacts) {
        if head.h2 {
            // HTTP/2 with prior knowledge: frames from here on.
            return self.lose();
        }
        self.heads += 1;
        self.verdicts.push(head.has_cl && head.has_te);
        self.state = if head.upgrade {
            State::Lost
        } else if head.has_te {
            if head.chunked {
                State::ChunkSize
            } else {
                State::Lost
            }
        } else {
            match head.length {
                Some(0) | None if !head.has_cl => State::Head,
                Some(0) => State::Head,
                Some(n) => State::Body(n),
                None => State::Lost,
            }
        };
    }

    fn end_of_chunk_size(&mut self) {
        let line = std::mem::take(&mut self.line);
        let digits = line
            .split(|b| *b == b';' || *b == b'\r' || *b == b'\n')
            .next()
            .unwrap_or(&[])
            .trim_ascii();
        if digits.is_empty() {
            // The CRLF that ends chunk data.
            self.line = line;
            self.line.clear();
            return;
        }
        match std::str::from_utf8(digits)
            .ok()
            .and_then(|d| u64::from_str_radix(d, 16).ok())
        {
            Some(0) => self.state = State::Trailers,
            Some(n) => self.state = State::ChunkData(n),
            None => self.lose(),
        }
        if !matches!(self.state, State::Lost) {
            self.line = line;
            self.line.clear();
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for FramingWatch<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = res {
            if !matches!(self.state, State::Lost) {
                self.observe(&buf.filled()[before..]);
            }
        }
        res
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for FramingWatch<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verdicts(stream: &[&[u8]]) -> Vec<bool> {
        let v = Arc::new(Verdicts::default());
        let mut w = FramingWatch::new((), v.clone());
        for part in stream {
            w.observe(part);
        }
        let q = v.queue.lock().unwrap();
        q.iter().copied().collect()
    }

    #[test]
    fn follows_pipelined_requests_with_bodies() {
        let s: &[u8] = b"POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello\
            POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhe\r\n\r\n0\r\nX-T: 1\r\n\r\n\
            GET /c HTTP/1.1\r\nHost: x\r\n\r\n\
            POST /d HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n\
            GET /e HTTP/1.1\r\n\r\n";
        assert_eq!(verdicts(&[s]), vec![false, false, false, true, false]);
        // The same stream one byte at a time.
        let bytes: Vec<&[u8]> = s.chunks(1).collect();
        assert_eq!(verdicts(&bytes), vec![false, false, false, true, false]);
    }

    #[test]
    fn any_split_of_the_stream_gives_the_same_verdicts() {
        let s: &[u8] = b"\r\nPOST /a HTTP/1.1\r\ncontent-length: 5\r\n\r\nhello\
            POST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhe\r\n\r\n0\r\nX-T: 1\r\n\r\n\
            GET /c HTTP/1.1\r\nHost: x\r\n\r\n\
            POST /d HTTP/1.1\r\nX-A: 1\r\n Content-Length: 3\r\nTRANSFER-ENCODING: chunked\r\n\r\n0\r\n\r\n\
            POST /e HTTP/1.1\r\nUpgrade: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let want = vec![false, false, false, true, true];
        for size in 1..=s.len() {
            let parts: Vec<&[u8]> = s.chunks(size).collect();
            assert_eq!(verdicts(&parts), want, "reads of {size} bytes");
        }
        // A bare LF before the blank line does not end the head (`\r\n\r\n` does):
        // whole or byte by byte, the same.
        let bare: &[u8] =
            b"GET /a HTTP/1.1\n\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        for size in [1, bare.len()] {
            let parts: Vec<&[u8]> = bare.chunks(size).collect();
            assert_eq!(verdicts(&parts), vec![true], "reads of {size} bytes");
        }
        // Whitespace before a name (obs-fold) still counts, as before the fast path.
        assert_eq!(
            verdicts(&[
                b"POST / HTTP/1.1\r\n\tcontent-length: 1\r\n\x0ctransfer-encoding: chunked\r\n\r\n"
            ]),
            vec![true]
        );
    }

    #[test]
    fn body_bytes_that_look_like_heads_are_not_heads() {
        let body = "GET /x HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let s = format!(
            "POST /a HTTP/1.1\r\nContent-Length: {}\r\n\r\n{body}GET /b HTTP/1.1\r\n\r\n",
            body.len()
        );
        assert_eq!(verdicts(&[s.as_bytes()]), vec![false, false]);
    }

    #[test]
    fn stops_following_what_it_cannot() {
        assert_eq!(
            verdicts(&[b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00"]),
            Vec::<bool>::new()
        );
        let long = vec![b'a'; MAX_HEAD + 10];
        assert_eq!(verdicts(&[&long, b"\r\n\r\n"]), Vec::<bool>::new());
        assert_eq!(
            verdicts(&[b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"]),
            vec![false]
        );
    }
}
