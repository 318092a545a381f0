//! The PROXY protocol (v1 text and v2 binary, HAProxy's `accept-proxy`): a trusted proxy in
//! front of us opens each connection with a header naming the real client. Parsing is the
//! `proxy-header` crate's; what is ours is the reading around it: bounded in bytes and
//! time, and never consuming a byte past the header (the TLS or HTTP bytes that may follow
//! in the same segment are handed back through [`Prefixed`]).

use bytes::{Buf, Bytes};
use proxy_header::{ParseConfig, Protocol, ProxyHeader};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// A v1 header is at most 107 bytes (the specification's bound).
const V1_MAX: usize = 107;
/// A v2 header: 16 fixed bytes, addresses (at most 216 for AF_UNIX) and TLVs. Load
/// balancers add a few hundred bytes of TLVs at most; more is refused.
const V2_MAX: usize = 1024;
const V1_START: &[u8] = b"PROXY ";
const V2_START: &[u8] = b"\r\n\r\n\x00\r\nQUIT\n";

/// Why a connection's PROXY header was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProxyHeaderError {
    #[error("no PROXY header within {0:?}")]
    Timeout(Duration),
    #[error("the connection closed inside the PROXY header")]
    Truncated,
    #[error("the connection does not start with a PROXY header")]
    Missing,
    #[error("invalid PROXY header")]
    Invalid,
    #[error("PROXY header longer than {0} bytes")]
    TooLong(usize),
    #[error("PROXY header for a datagram protocol")]
    NotStream,
    #[error("reading the PROXY header failed: {0}")]
    Io(String),
}

/// What the header says about the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// A proxied connection: the client's address and port.
    Client(SocketAddr),
    /// A connection the proxy made itself (v2 `LOCAL`, v1 `UNKNOWN`, or an address family
    /// without addresses): the specification says to use the connection's own addresses.
    Proxy,
}

/// Reads one PROXY header from `io` within `deadline`. Returns what it says and the bytes
/// read past it (the start of the TLS or HTTP stream).
pub async fn read_header<S: AsyncRead + Unpin>(
    io: &mut S,
    deadline: Duration,
) -> Result<(Origin, Bytes), ProxyHeaderError> {
    match tokio::time::timeout(deadline, read_header_unbounded(io)).await {
        Ok(r) => r,
        Err(_) => Err(ProxyHeaderError::Timeout(deadline)),
    }
}

async fn read_header_unbounded<S: AsyncRead + Unpin>(
    io: &mut S,
) -> Result<(Origin, Bytes), ProxyHeaderError> {
    let mut buf = Vec::with_capacity(256);
    loop {
        match parse(&buf)? {
            Some((origin, used)) => {
                let rest = Bytes::from(buf).slice(used..);
                return Ok((origin, rest));
            }
            None => {
                // Never read past the longest header the version allows.
                let max = if buf.starts_with(V1_START[..1].as_ref()) {
                    V1_MAX
                } else {
                    V2_MAX
                };
                if buf.len() >= max {
                    return Err(ProxyHeaderError::TooLong(max));
                }
                let mut chunk = [0u8; 512];
                let want = (max - buf.len()).min(chunk.len());
                let n = io
                    .read(&mut chunk[..want])
                    .await
                    .map_err(|e| ProxyHeaderError::Io(e.to_string()))?;
                if n == 0 {
                    return Err(ProxyHeaderError::Truncated);
                }
                buf.extend_from_slice(&chunk[..n]);
            }
        }
    }
}

/// `Ok(None)`: a valid beginning, more bytes needed.
fn parse(buf: &[u8]) -> Result<Option<(Origin, usize)>, ProxyHeaderError> {
    // The signature is checked here, byte for byte, before the parser sees anything: the
    // crate looks at the first byte only and skips the separator after `PROXY`.
    let (start, max) = if buf.first() == Some(&b'P') {
        (V1_START, V1_MAX)
    } else {
        (V2_START, V2_MAX)
    };
    let n = buf.len().min(start.len());
    if buf[..n] != start[..n] {
        return Err(ProxyHeaderError::Missing);
    }
    let config = ParseConfig {
        include_tlvs: false,
        allow_v1: true,
        allow_v2: true,
    };
    match ProxyHeader::parse(buf, config) {
        Err(proxy_header::Error::BufferTooShort) if buf.len() < max => Ok(None),
        Err(proxy_header::Error::BufferTooShort) => Err(ProxyHeaderError::TooLong(max)),
        Err(_) => Err(ProxyHeaderError::Invalid),
        Ok((_, used)) if used > max => Err(ProxyHeaderError::TooLong(max)),
        Ok((header, used)) => match header.proxied_address() {
            None => Ok(Some((Origin::Proxy, used))),
            Some(a) if a.protocol != Protocol::Stream => Err(ProxyHeaderError::NotStream),
            Some(a) => {
                let client = SocketAddr::new(a.source.ip().to_canonical(), a.source.port());
                Ok(Some((Origin::Client(client), used)))
            }
        },
    }
}

/// A stream that first yields the bytes read past the PROXY header, then the stream's own.
#[derive(Debug)]
pub struct Prefixed<S> {
    head: Bytes,
    io: S,
}

impl<S> Prefixed<S> {
    pub fn new(head: Bytes, io: S) -> Self {
        Self { head, io }
    }

    /// Puts `head` in front of what is still to be read (the bytes a parked connection or
    /// the HTTP/2 preface sniff read ahead, see [`super::park`]).
    pub fn prepend(&mut self, head: Bytes) {
        if self.head.is_empty() {
            self.head = head;
        } else if !head.is_empty() {
            let mut both = Vec::with_capacity(head.len() + self.head.len());
            both.extend_from_slice(&head);
            both.extend_from_slice(&self.head);
            self.head = Bytes::from(both);
        }
    }

    pub fn get_ref(&self) -> &S {
        &self.io
    }

    pub fn get_mut(&mut self) -> &mut S {
        &mut self.io
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.head.has_remaining() {
            let n = self.head.len().min(buf.remaining());
            buf.put_slice(&self.head[..n]);
            self.head.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proxy_header::ProxiedAddress;
    use tokio::io::AsyncWriteExt;

    const SECOND: Duration = Duration::from_secs(1);

    fn v2(src: &str, dst: &str) -> Vec<u8> {
        let mut out = Vec::new();
        let h = ProxyHeader::with_address(ProxiedAddress::stream(
            src.parse().expect("src"),
            dst.parse().expect("dst"),
        ));
        h.encode_v2(&mut out).expect("encode");
        out
    }

    /// Feeds `chunks` to `read_header` with a pause between them, then closes.
    async fn feed(
        chunks: Vec<Vec<u8>>,
        pause: Duration,
        deadline: Duration,
    ) -> Result<(Origin, Bytes), ProxyHeaderError> {
        let (mut client, mut server) = tokio::io::duplex(64 * 1024);
        let writer = tokio::spawn(async move {
            for c in chunks {
                if client.write_all(&c).await.is_err() {
                    return;
                }
                tokio::time::sleep(pause).await;
            }
            let _ = client.shutdown().await;
            // Keep the pipe open a little so a timeout is told from a close.
            tokio::time::sleep(deadline * 2).await;
        });
        let r = read_header(&mut server, deadline).await;
        writer.abort();
        r
    }

    async fn one(bytes: &[u8]) -> Result<(Origin, Bytes), ProxyHeaderError> {
        feed(vec![bytes.to_vec()], Duration::ZERO, SECOND).await
    }

    fn client(s: &str) -> Origin {
        Origin::Client(s.parse().expect("addr"))
    }

    #[tokio::test]
    async fn v1_tcp4_and_tcp6_name_the_client_and_keep_what_follows() {
        let (o, rest) = one(b"PROXY TCP4 203.0.113.7 192.0.2.1 51000 443\r\nGET / HTTP/1.1\r\n")
            .await
            .expect("v1");
        assert_eq!(o, client("203.0.113.7:51000"));
        assert_eq!(&rest[..], b"GET / HTTP/1.1\r\n");
        let (o, rest) = one(b"PROXY TCP6 2001:db8::7 2001:db8::1 51000 443\r\n")
            .await
            .expect("v1 tcp6");
        assert_eq!(o, client("[2001:db8::7]:51000"));
        assert!(rest.is_empty());
    }

    #[tokio::test]
    async fn v1_mapped_ipv4_is_the_ipv4_address() {
        let (o, _) = one(b"PROXY TCP6 ::ffff:203.0.113.7 ::1 1 2\r\n")
            .await
            .expect("v1");
        assert_eq!(o, client("203.0.113.7:1"));
    }

    #[tokio::test]
    async fn v2_proxy_names_the_client_and_keeps_what_follows() {
        let mut bytes = v2("198.51.100.9:40000", "192.0.2.1:443");
        bytes.extend_from_slice(b"\x16\x03\x01");
        let (o, rest) = one(&bytes).await.expect("v2");
        assert_eq!(o, client("198.51.100.9:40000"));
        assert_eq!(&rest[..], b"\x16\x03\x01");
        let (o, _) = one(&v2("[2001:db8::9]:1", "[2001:db8::1]:443"))
            .await
            .expect("v2 v6");
        assert_eq!(o, client("[2001:db8::9]:1"));
    }

    #[tokio::test]
    async fn v2_local_and_v1_unknown_are_the_proxy_itself() {
        let mut local = Vec::new();
        ProxyHeader::with_local()
            .encode_v2(&mut local)
            .expect("encode");
        assert_eq!(one(&local).await.expect("local").0, Origin::Proxy);
        assert_eq!(
            one(b"PROXY UNKNOWN\r\n").await.expect("unknown").0,
            Origin::Proxy
        );
    }

    #[tokio::test]
    async fn a_header_sent_a_byte_at_a_time_is_read_whole() {
        let bytes = v2("198.51.100.9:40000", "192.0.2.1:443");
        let chunks = bytes.iter().map(|b| vec![*b]).collect();
        let (o, _) = feed(chunks, Duration::from_millis(1), SECOND)
            .await
            .expect("slow v2");
        assert_eq!(o, client("198.51.100.9:40000"));
    }

    #[tokio::test]
    async fn truncated_headers_are_refused() {
        let full = b"PROXY TCP4 203.0.113.7 192.0.2.1 51000 443\r\n";
        for cut in [1, 5, 6, 20, full.len() - 1] {
            assert_eq!(
                one(&full[..cut]).await,
                Err(ProxyHeaderError::Truncated),
                "v1 cut {cut}"
            );
        }
        let v2 = v2("198.51.100.9:40000", "192.0.2.1:443");
        for cut in [1, 12, 15, 16, v2.len() - 1] {
            assert_eq!(
                one(&v2[..cut]).await,
                Err(ProxyHeaderError::Truncated),
                "v2 cut {cut}"
            );
        }
    }

    #[tokio::test]
    async fn an_oversized_v1_line_is_refused_without_reading_on() {
        let mut line = b"PROXY UNKNOWN ".to_vec();
        line.extend(std::iter::repeat_n(b'x', 200));
        line.extend_from_slice(b"\r\n");
        assert_eq!(one(&line).await, Err(ProxyHeaderError::TooLong(V1_MAX)));
        // Long but complete within the buffer is refused too.
        let mut line = b"PROXY UNKNOWN ".to_vec();
        line.extend(std::iter::repeat_n(b'x', 100));
        line.extend_from_slice(b"\r\n");
        assert!(one(&line).await.is_err());
    }

    #[tokio::test]
    async fn an_oversized_v2_length_is_refused() {
        let mut h = V2_START.to_vec();
        h.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
        h.extend(std::iter::repeat_n(0u8, 2000));
        assert_eq!(one(&h).await, Err(ProxyHeaderError::TooLong(V2_MAX)));
    }

    /// Each of `inputs` is refused with `want`.
    async fn refused_all(inputs: &[&[u8]], want: ProxyHeaderError) {
        for bytes in inputs {
            let got = one(bytes).await;
            assert_eq!(got.as_ref().err(), Some(&want), "{bytes:?}: {got:?}");
        }
    }

    #[tokio::test]
    async fn bad_signatures_and_plain_traffic_are_refused() {
        refused_all(
            &[
                b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
                b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
                b"PROXY\tTCP4 203.0.113.7 192.0.2.1 51000 443\r\n",
                b"proxy TCP4 203.0.113.7 192.0.2.1 51000 443\r\n",
                b"\r\n\r\n\x00\r\nQUIX\n\x21\x11\x00\x0c",
            ],
            ProxyHeaderError::Missing,
        )
        .await;
    }

    #[tokio::test]
    async fn malformed_fields_are_refused() {
        refused_all(
            &[
                b"PROXY TCP4 203.0.113.777 192.0.2.1 51000 443\r\n",
                b"PROXY TCP4 2001:db8::1 192.0.2.1 51000 443\r\n",
                b"PROXY TCP5 203.0.113.7 192.0.2.1 51000 443\r\n",
                b"PROXY TCP4 203.0.113.7 192.0.2.1 70000 443\r\n",
                b"PROXY TCP4 203.0.113.7 192.0.2.1 51000 443\rX",
            ],
            ProxyHeaderError::Invalid,
        )
        .await;
        // Without the CR the end cannot be told from a header still coming: refused once
        // the connection ends (or the deadline passes), never accepted.
        let r = one(b"PROXY TCP4 203.0.113.7 192.0.2.1 51000 443\n\n").await;
        assert_eq!(r, Err(ProxyHeaderError::Truncated));
    }

    #[tokio::test]
    async fn v2_unknown_version_command_and_family_are_refused() {
        let good = v2("198.51.100.9:40000", "192.0.2.1:443");
        for (at, byte) in [(12, 0x11u8), (12, 0x22), (12, 0x2f), (13, 0x41), (13, 0x13)] {
            let mut bad = good.clone();
            bad[at] = byte;
            assert_eq!(
                one(&bad).await,
                Err(ProxyHeaderError::Invalid),
                "byte {at} = {byte:#x}"
            );
        }
        // A length too short for the addresses it announces (the stream's bytes follow;
        // alone, the parser waits for the addresses until the deadline or the close).
        let mut bad = good.clone();
        bad[15] = 4;
        assert_eq!(one(&bad).await, Err(ProxyHeaderError::Invalid));
    }

    #[tokio::test]
    async fn v2_datagram_is_refused() {
        let mut bad = v2("198.51.100.9:40000", "192.0.2.1:443");
        bad[13] = 0x12;
        assert_eq!(one(&bad).await, Err(ProxyHeaderError::NotStream));
    }

    #[tokio::test]
    async fn a_slowloris_header_meets_the_deadline() {
        let bytes = b"PROXY TCP4 203.0.113.7 192.0.2.1 51000 443\r\n";
        let chunks = bytes.iter().map(|b| vec![*b]).collect();
        let deadline = Duration::from_millis(200);
        let r = feed(chunks, Duration::from_millis(50), deadline).await;
        assert_eq!(r, Err(ProxyHeaderError::Timeout(deadline)));
    }

    proptest::proptest! {
        /// Any bytes, with or without a valid start: no panic, and a header taken never
        /// reaches past the input or the version's bound.
        #[test]
        fn arbitrary_input_never_panics_or_overreaches(
            start in 0usize..3,
            tail in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
        ) {
            let mut input = match start {
                0 => Vec::new(),
                1 => V1_START.to_vec(),
                _ => V2_START.to_vec(),
            };
            input.extend_from_slice(&tail);
            if let Ok(Some((_, used))) = parse(&input) {
                proptest::prop_assert!(used <= input.len());
                proptest::prop_assert!(used <= V2_MAX);
                if input.starts_with(b"P") {
                    proptest::prop_assert!(used <= V1_MAX);
                }
            }
        }

        /// Every well-formed v2 header round-trips, whatever follows it.
        #[test]
        fn v2_headers_round_trip(
            a in proptest::num::u32::ANY,
            port in 1u16..,
            tail in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
        ) {
            let src = SocketAddr::from((std::net::Ipv4Addr::from(a), port));
            let mut input = Vec::new();
            ProxyHeader::with_address(ProxiedAddress::stream(src, "192.0.2.1:443".parse().expect("dst")))
                .encode_v2(&mut input)
                .expect("encode");
            let len = input.len();
            input.extend_from_slice(&tail);
            proptest::prop_assert_eq!(parse(&input), Ok(Some((Origin::Client(src), len))));
        }
    }

    #[tokio::test]
    async fn prefixed_replays_the_head_then_reads_on() {
        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(b" world").await.expect("write");
        drop(a);
        let mut p = Prefixed::new(Bytes::from_static(b"hello"), b);
        let mut out = String::new();
        p.read_to_string(&mut out).await.expect("read");
        assert_eq!(out, "hello world");
    }
}
