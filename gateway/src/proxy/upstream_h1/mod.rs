//! Our HTTP/1.1 client for upstream exchanges, run on the request's own task: the request
//! head and body are written and the response read by whoever polls the exchange (the
//! request's task for the head, the client's connection for the body), with no connection
//! task, channel or wake-up between them (pingora's model). hyper still serves clients.
//!
//! The upstream's bytes are parsed as hostile: the head by `httparse` (what hyper uses),
//! bounded in size, header count and interim answers; the body framed exactly as RFC 9112
//! §6.3 says ([`framing`]), chunked bodies decoded strictly ([`chunked`]). Any doubt about
//! where a response ends is an error or a connection that is closed after it, never a
//! connection pooled with bytes that would become the next client's answer.
//!
//! The request body is written while the response is read (an upstream may answer before
//! it has read everything, or stream its answer while it reads), and goes on being written
//! while the response body is read ([`body`]). A response that ends before its request
//! does closes the connection rather than make the next request wait behind the upload.

mod body;
mod chunked;
mod framing;

pub use body::UpstreamBody;
pub use framing::{BodyKind, Framing};

use super::{BoxError, ProxyBody};
use crate::access_log::request_id::X_REQUEST_ID;
use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{request, response, Method, Response, StatusCode, Version};
use hyper::body::Body;
use std::future::{poll_fn, Future};
use std::io;
use std::pin::{pin, Pin};
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncReadExt, AsyncWrite};
use tokio::net::TcpStream;

/// Largest response head (status line and fields). nginx's default is 4 or 8 KiB.
pub const MAX_HEAD: usize = 64 * 1024;
/// Most fields in a response head (hyper's default).
pub const MAX_HEADERS: usize = 100;
/// Most interim (1xx) answers before the final one.
pub const MAX_INTERIM: usize = 8;
/// Spare capacity a read is offered at least, at first: an API answer fits. Reads that fill
/// what they are offered double it, up to [`MAX_READ`] (see [`Conn::poll_fill`]).
const MIN_READ: usize = 4 * 1024;
const MAX_READ: usize = 64 * 1024;
/// Request body bytes buffered before they are written.
const WRITE_BATCH: usize = 64 * 1024;

/// Why an exchange failed. The connection is closed with it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum H1Error {
    #[error("i/o")]
    Io(#[source] io::Error),
    /// The server closed the connection before a complete response head.
    #[error("connection closed before a complete response head")]
    Closed,
    #[error("response head over {MAX_HEAD} bytes")]
    HeadTooLarge,
    /// Not a valid response head, or over [`MAX_HEADERS`] fields.
    #[error("invalid response head")]
    Head(#[source] httparse::Error),
    #[error("a response field is not valid")]
    Field,
    #[error("more than {MAX_INTERIM} interim (1xx) answers")]
    TooManyInterim,
    /// The head does not say unambiguously where the body ends.
    #[error("response framing: {0}")]
    Framing(&'static str),
    #[error("chunked response body: {0}")]
    Chunked(&'static str),
    /// The connection closed before the end of a body of known length.
    #[error("response body truncated: the connection closed early")]
    Truncated,
    /// The client's request body failed (its fault is told by [`super::request_body`]).
    #[error("request body")]
    RequestBody(#[source] BoxError),
    #[error("the request body does not match its Content-Length")]
    RequestLength,
}

/// Header fields the gateway adds to a request, already in wire form: written into the head
/// after the request's own, instead of being inserted into its `HeaderMap` (each insert
/// hashes, may grow the map, and is undone again by the head's writer).
#[derive(Debug, Clone, Copy, Default)]
pub struct Added<'a> {
    /// Complete `name: value\r\n` lines (the forwarding headers).
    pub lines: &'a [u8],
    /// An `X-Request-Id` of ours, sent instead of any the request has.
    pub request_id: Option<&'a HeaderValue>,
}

/// One connection to an upstream server, with its read and write buffers.
pub struct Conn {
    io: TcpStream,
    rbuf: BytesMut,
    wbuf: Vec<u8>,
    /// Bytes of `wbuf` already written.
    written: usize,
    /// What the next read asks for.
    read_size: usize,
}

/// An exchange that got its response head: the connection, ready for the body.
pub struct Exchange {
    pub conn: Conn,
    pub head: response::Parts,
    pub framing: Framing,
    pub upload: Upload,
}

/// Why an exchange failed; `unsent` gives the request body back when nothing of the
/// request can have been acted on, so that it may go again on another connection.
pub struct Failed {
    pub error: H1Error,
    pub unsent: Option<ProxyBody>,
}

/// The request body on its way to the server.
pub struct Upload {
    /// `None` once it has been read to its end (or failed).
    body: Option<ProxyBody>,
    encoding: Encoding,
    /// A frame has been taken from the body: it cannot be sent again.
    started: bool,
    /// Writing failed (the server may have answered and closed): the response is still
    /// read, the connection is not reused.
    failed: Option<H1Error>,
    write_failed: bool,
    /// Interim (1xx) answers passed over so far.
    interim: usize,
}

#[derive(Clone, Copy)]
enum Encoding {
    /// This many bytes still to come.
    Length(u64),
    Chunked,
}

impl Conn {
    pub fn new(io: TcpStream) -> Self {
        Self {
            io,
            rbuf: BytesMut::new(),
            wbuf: Vec::new(),
            written: 0,
            read_size: MIN_READ,
        }
    }

    /// Whether the whole request has been written.
    fn upload_done(&self, up: &Upload) -> bool {
        up.body.is_none() && !up.write_failed && self.written >= self.wbuf.len()
    }

    /// Whether an idle connection is still quiet: nothing arrived, not even its close. A
    /// reactor that has not noticed is asked nothing (no system call).
    pub fn is_quiet(&self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Sends the request and reads up to the final response head. `reused`: the
    /// connection served a request before, so a failure that shows it had gone stale may
    /// be retried (see [`Failed`]).
    pub async fn exchange(
        mut self,
        parts: &request::Parts,
        added: Added<'_>,
        body: ProxyBody,
        reused: bool,
    ) -> Result<Exchange, Failed> {
        let mut upload = self.start(parts, added, body);
        let head = poll_fn(|cx| self.poll_head(&mut upload, &parts.method, cx)).await;
        match head {
            Ok((head, framing)) => Ok(Exchange {
                conn: self,
                head,
                framing,
                upload,
            }),
            Err(error) => {
                // Stale: the server had closed it (or reset it) before reading anything we
                // could not send again. After a write error nothing was answered; after a
                // close without a byte, only a request that may be repeated goes again.
                let stale = reused
                    && !upload.started
                    && self.rbuf.is_empty()
                    && match &error {
                        H1Error::Io(_) if upload.write_failed => true,
                        H1Error::Closed | H1Error::Io(_) => parts.method.is_idempotent(),
                        _ => false,
                    };
                let unsent = stale.then(|| upload.body.take().unwrap_or_else(super::empty_body));
                Err(Failed { error, unsent })
            }
        }
    }

    /// Writes the request head into the write buffer, with the fields we add and the
    /// body's framing.
    fn start(&mut self, parts: &request::Parts, added: Added<'_>, body: ProxyBody) -> Upload {
        self.wbuf.clear();
        self.written = 0;
        let w = &mut self.wbuf;
        w.extend_from_slice(parts.method.as_str().as_bytes());
        w.push(b' ');
        let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        w.extend_from_slice(if target.is_empty() {
            b"/"
        } else {
            target.as_bytes()
        });
        w.extend_from_slice(b" HTTP/1.1\r\n");
        let replaced_id = added.request_id.map(|_| &X_REQUEST_ID);
        for (name, value) in &parts.headers {
            if replaced_id == Some(name) {
                continue;
            }
            w.extend_from_slice(name.as_str().as_bytes());
            w.extend_from_slice(b": ");
            w.extend_from_slice(value.as_bytes());
            w.extend_from_slice(b"\r\n");
        }
        w.extend_from_slice(added.lines);
        if let Some(id) = added.request_id {
            w.extend_from_slice(b"x-request-id: ");
            w.extend_from_slice(id.as_bytes());
            w.extend_from_slice(b"\r\n");
        }
        // The handler checked the client's Content-Length and removed Transfer-Encoding
        // (hop by hop): a declared length is kept; otherwise the body's own says.
        let declared = framing::content_length(&parts.headers).ok().flatten();
        let encoding = match declared {
            Some(n) => Encoding::Length(n),
            None if body.is_end_stream() => Encoding::Length(0),
            None => match body.size_hint().exact() {
                Some(n) => {
                    w.extend_from_slice(b"content-length: ");
                    w.extend_from_slice(itoa(n, &mut [0u8; 20]));
                    w.extend_from_slice(b"\r\n");
                    Encoding::Length(n)
                }
                None => {
                    w.extend_from_slice(b"transfer-encoding: chunked\r\n");
                    Encoding::Chunked
                }
            },
        };
        w.extend_from_slice(b"\r\n");
        let body = (!body.is_end_stream() || declared.is_some_and(|n| n > 0)).then_some(body);
        Upload {
            body,
            encoding,
            started: false,
            failed: None,
            write_failed: false,
            interim: 0,
        }
    }

    /// Writes what is buffered and what the body has ready, until the body ends
    /// (`Ready(Ok)`), waits, or fails. The head and a small body go in one write.
    fn poll_upload(&mut self, up: &mut Upload, cx: &mut Context<'_>) -> Poll<Result<(), H1Error>> {
        loop {
            if let Some(body) = up.body.as_mut() {
                if self.wbuf.len() < WRITE_BATCH {
                    if let Poll::Ready(frame) = Pin::new(body).poll_frame(cx) {
                        up.started = true;
                        self.encode(up, frame)?;
                        continue;
                    }
                }
            }
            if self.written < self.wbuf.len() {
                let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.wbuf[self.written..]))
                    .map_err(H1Error::Io)?;
                if n == 0 {
                    return Poll::Ready(Err(H1Error::Io(io::ErrorKind::WriteZero.into())));
                }
                self.written += n;
                continue;
            }
            self.wbuf.clear();
            self.written = 0;
            return if up.body.is_none() {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            };
        }
    }

    /// Appends one request body frame, framed; the body's end closes the framing.
    fn encode(
        &mut self,
        up: &mut Upload,
        frame: Option<Result<hyper::body::Frame<Bytes>, BoxError>>,
    ) -> Result<(), H1Error> {
        match frame {
            None => {
                up.body = None;
                match up.encoding {
                    Encoding::Length(0) => Ok(()),
                    Encoding::Length(_) => Err(H1Error::RequestLength),
                    Encoding::Chunked => {
                        self.wbuf.extend_from_slice(b"0\r\n\r\n");
                        Ok(())
                    }
                }
            }
            Some(Err(e)) => Err(H1Error::RequestBody(e)),
            Some(Ok(frame)) => {
                // Trailers are not sent (the handler forwards no TE: trailers either).
                let Ok(data) = frame.into_data() else {
                    return Ok(());
                };
                if data.is_empty() {
                    return Ok(());
                }
                match &mut up.encoding {
                    Encoding::Length(left) => {
                        let len = data.len() as u64;
                        if len > *left {
                            return Err(H1Error::RequestLength);
                        }
                        *left -= len;
                        self.wbuf.extend_from_slice(&data);
                    }
                    Encoding::Chunked => {
                        let mut hex = [0u8; 16];
                        let size = format_hex(data.len(), &mut hex);
                        self.wbuf.extend_from_slice(size);
                        self.wbuf.extend_from_slice(b"\r\n");
                        self.wbuf.extend_from_slice(&data);
                        self.wbuf.extend_from_slice(b"\r\n");
                    }
                }
                Ok(())
            }
        }
    }

    /// Keeps the upload going; a write failure is kept for later (the server may have
    /// answered before it closed), a failure of the client's body ends the exchange.
    fn poll_upload_alongside(
        &mut self,
        up: &mut Upload,
        cx: &mut Context<'_>,
    ) -> Result<(), H1Error> {
        if self.upload_done(up) || up.write_failed {
            return Ok(());
        }
        match self.poll_upload(up, cx) {
            Poll::Ready(Err(e @ (H1Error::RequestBody(_) | H1Error::RequestLength))) => {
                up.body = None;
                Err(e)
            }
            Poll::Ready(Err(e)) => {
                up.body = None;
                up.failed = Some(e);
                up.write_failed = true;
                Ok(())
            }
            Poll::Ready(Ok(())) | Poll::Pending => Ok(()),
        }
    }

    /// Uploads and reads until the final response head.
    fn poll_head(
        &mut self,
        up: &mut Upload,
        method: &Method,
        cx: &mut Context<'_>,
    ) -> Poll<Result<(response::Parts, Framing), H1Error>> {
        loop {
            self.poll_upload_alongside(up, cx)?;
            if !self.rbuf.is_empty() {
                if let Some(head) = self.parse_head()? {
                    if head.status.is_informational()
                        && head.status != StatusCode::SWITCHING_PROTOCOLS
                    {
                        up.interim += 1;
                        if up.interim > MAX_INTERIM {
                            return Poll::Ready(Err(H1Error::TooManyInterim));
                        }
                        continue;
                    }
                    let framing =
                        framing::response(method, head.status, head.version, &head.headers)?;
                    return Poll::Ready(Ok((head, framing)));
                }
                if self.rbuf.len() >= MAX_HEAD {
                    return Poll::Ready(Err(H1Error::HeadTooLarge));
                }
            }
            match ready!(self.poll_fill(cx)) {
                Ok(0) => {
                    return Poll::Ready(Err(up.failed.take().unwrap_or(H1Error::Closed)));
                }
                Ok(_) => {}
                Err(e) => return Poll::Ready(Err(up.failed.take().unwrap_or(H1Error::Io(e)))),
            }
        }
    }

    /// A complete head at the start of the read buffer, taken out of it.
    fn parse_head(&mut self) -> Result<Option<response::Parts>, H1Error> {
        // Left uninitialised for httparse, as hyper does: no 3 KiB to zero per answer.
        let mut fields =
            [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut []);
        let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
            &mut resp,
            &self.rbuf,
            &mut fields,
        );
        let len = match parsed {
            Ok(httparse::Status::Complete(len)) if len <= MAX_HEAD => len,
            Ok(httparse::Status::Complete(_)) => return Err(H1Error::HeadTooLarge),
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(e) => return Err(H1Error::Head(e)),
        };
        let status = resp
            .code
            .and_then(|c| StatusCode::from_u16(c).ok())
            .ok_or(H1Error::Field)?;
        let version = match resp.version {
            Some(0) => Version::HTTP_10,
            _ => Version::HTTP_11,
        };
        // Names and values are slices of the head, kept as one shared buffer.
        let start = self.rbuf.as_ptr() as usize;
        // Offsets fit in u32: the head is at most MAX_HEAD bytes.
        let offset = |p: &[u8]| (p.as_ptr() as usize - start) as u32;
        let mut spans = [(0u32, 0u32, 0u32, 0u32); MAX_HEADERS];
        let count = resp.headers.len();
        for (span, f) in spans.iter_mut().zip(resp.headers.iter()) {
            *span = (
                offset(f.name.as_bytes()),
                f.name.len() as u32,
                offset(f.value),
                f.value.len() as u32,
            );
        }
        let head = self.rbuf.split_to(len).freeze();
        // One more than the upstream sent: the access log adds `X-Request-Id`, which
        // would otherwise make a full map grow and rehash.
        let mut headers = HeaderMap::with_capacity(count + 1);
        for &(name, name_len, value, value_len) in &spans[..count] {
            let (name, value) = (name as usize, value as usize);
            let (name_len, value_len) = (name_len as usize, value_len as usize);
            let name =
                HeaderName::from_bytes(&head[name..name + name_len]).map_err(|_| H1Error::Field)?;
            let value = HeaderValue::from_maybe_shared(head.slice(value..value + value_len))
                .map_err(|_| H1Error::Field)?;
            headers.append(name, value);
        }
        let (mut parts, ()) = Response::new(()).into_parts();
        parts.status = status;
        parts.version = version;
        parts.headers = headers;
        Ok(Some(parts))
    }

    /// Reads what the server sent into the read buffer's spare capacity; `Ok(0)` at its
    /// close. tokio's `read_buf` offers that capacity uninitialised (`ReadBuf::uninit`), so
    /// nothing is zeroed first, and goes through `poll_read`, which forgets the socket's
    /// readiness after a short read, so that [`Conn::is_quiet`] costs no system call on a
    /// connection that stayed quiet. The capacity offered starts small and grows only for
    /// bodies that fill it.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        self.rbuf.reserve(self.read_size);
        let spare = self.rbuf.capacity() - self.rbuf.len();
        // Polled once and dropped: `read_buf` keeps no state between polls.
        let n = ready!(pin!(self.io.read_buf(&mut self.rbuf)).poll(cx))?;
        if n == spare {
            self.read_size = (self.read_size * 2).min(MAX_READ);
        } else if n < self.read_size / 8 {
            self.read_size = (self.read_size / 2).max(MIN_READ);
        }
        Poll::Ready(Ok(n))
    }
}

/// `n` in decimal, without allocating.
fn itoa(mut n: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// `n` in hex (a chunk size), without allocating.
fn format_hex(mut n: usize, buf: &mut [u8; 16]) -> &[u8] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = DIGITS[n & 0xf];
        n >>= 4;
        if n == 0 {
            return &buf[i..];
        }
    }
}

#[cfg(test)]
mod tests;
