//! HTTP on one client connection: which protocol it speaks, and, for HTTP/1.1, parking it
//! while it is idle.
//!
//! **Protocol.** ALPN `http/1.1` goes to HTTP/1.1 at once; otherwise (ALPN `h2`, plain TCP,
//! or a TLS client that offered no ALPN) the first bytes are read until they confirm or
//! refute the HTTP/2 connection preface, and are handed back to hyper in front of the
//! stream. This is
//! what hyper-util's `auto` did, which gives nothing back once a connection ends; parking
//! needs the stream back. The preface read has no deadline of its own, as before: a
//! connection that sends nothing is closed by the worker's idle watch ([`super::idle`]).
//!
//! **Parking.** hyper keeps an HTTP/1 connection's read buffer (8 KiB reserved before every
//! read), its header write buffer (8 KiB, kept for reuse) and its dispatcher for as long as
//! the connection lives, idle or not: at 10 000 idle keep-alive connections that was most of
//! our memory (BENCHMARKS.md, issue 18 item 4). So once hyper has been idle for
//! [`PARK_AFTER`], its connection is ended without a byte written
//! (`graceful_shutdown` on an idle connection, polled with `poll_without_shutdown`, which
//! hands back the stream and any bytes read ahead), and the task waits on the bare (TLS or
//! plain) stream. When the next request's head has arrived, a fresh hyper connection starts
//! with those bytes in front of the stream.
//!
//! "hyper is idle" is decided from outside hyper, reliably: every request hyper handed to
//! the service has had its response body dropped by hyper (it drops it once written to its
//! end), the last write was flushed, hyper's last read found nothing, and the framing watch
//! ([`super::framing`]) says every byte read so far belongs to a complete request. hyper
//! parses a complete buffered head before it reads again, so "read pending with no partial
//! head" means its buffer holds no request.
//!
//! Limits stay those hyper applied: hyper's header-read timer covers the time between
//! requests and the next head, counted from when the connection went idle; a parked
//! connection gets the same deadline, from the same instant, and keeps reading while it holds
//! only part of a head, so a slowloris trickling a head across the park cannot reset its
//! timer. A shutdown, a ban or the idle watch closes a parked connection as hyper closes an
//! idle one (TLS close_notify and FIN), a deadline passed drops it (hyper's header timeout
//! writes nothing either).
//!
//! The delay before parking keeps busy keep-alive connections on one hyper connection: the
//! cost of parking (a hyper connection set up again) is paid once per idle second at most.
//!
//! **HTTP/2 close.** When an HTTP/2 connection ends with the client's bytes still unread (an
//! abusive client answered with GOAWAY), closing the socket at once would make the kernel
//! send RST, and the client could lose the GOAWAY it had not read yet. The stream is closed
//! like nginx's lingering close instead: write side shut, reads drained for a bounded time
//! and size ([`LINGER_BYTES`], [`LINGER_TIME`]).

use super::closing::{Reason, Registration};
use super::coarse_timer::CoarseTimer;
use super::framing::FramingWatch;
use super::linger::{LINGER_BYTES, LINGER_TIME};
use super::proxy_protocol::Prefixed;
use crate::config::ListenConfig;
use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::{http1, http2};
use hyper::service::Service;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::cell::RefCell;
use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::{Instant, Sleep};

/// How long an HTTP/1.1 connection stays idle on its hyper connection before it is parked.
pub const PARK_AFTER: Duration = Duration::from_secs(1);

/// A banned source's connection gets this long to receive its last response; its packets
/// are already dropped, so nothing it sends (not even its FIN) arrives any more.
const BANNED_CLOSE_GRACE: Duration = Duration::from_secs(1);

/// hyper's own HTTP/1 header count limit when none is set.
const HYPER_MAX_HEADERS: usize = 100;

/// The HTTP/2 connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// hyper's settings for both protocols, and the limits the parking keeps.
pub struct Protocols {
    h1: http1::Builder,
    h2: http2::Builder<TokioExecutor>,
    /// hyper's HTTP/1 header-read timeout, also the deadline of a parked connection.
    header_read_timeout: Duration,
    /// hyper's HTTP/1 read buffer limit: a parked connection reads at most this much of a
    /// head before hyper takes over (and refuses it).
    max_buf: usize,
    /// How long closing connections get to finish their requests.
    shutdown_grace: Duration,
    /// See [`PARK_AFTER`]; shorter in tests.
    park_after: Duration,
    /// Connections parked so far (by this worker), for the tests and the debug log.
    parks: AtomicU64,
}

impl Protocols {
    /// `timer`: the worker's, for hyper's header-read deadline and HTTP/2 keep-alive.
    pub fn new(cfg: &ListenConfig, timer: &CoarseTimer) -> Self {
        let max_buf = cfg.max_header_bytes.max(8192);
        let mut h1 = http1::Builder::new();
        h1.timer(timer.clone())
            .header_read_timeout(cfg.header_read_timeout.0)
            .max_buf_size(max_buf)
            .writev(false)
            .keep_alive(true);
        // hyper parses into a fixed array of HYPER_MAX_HEADERS; an explicit limit instead
        // costs a heap-sized buffer filled on every request. Lower limits are exact in the
        // handler (for both protocols), so hyper needs to hear only of higher ones.
        if cfg.max_headers > HYPER_MAX_HEADERS {
            h1.max_headers(cfg.max_headers);
        }
        let mut h2 = http2::Builder::new(TokioExecutor::new());
        h2.timer(timer.clone())
            .max_concurrent_streams(cfg.max_concurrent_streams)
            .max_header_list_size(u32::try_from(cfg.max_header_bytes).unwrap_or(u32::MAX))
            .keep_alive_interval(cfg.header_read_timeout.0 * 3)
            .keep_alive_timeout(cfg.header_read_timeout.0);
        Self {
            h1,
            h2,
            header_read_timeout: cfg.header_read_timeout.0,
            max_buf,
            shutdown_grace: cfg.shutdown_grace.0,
            park_after: PARK_AFTER,
            parks: AtomicU64::new(0),
        }
    }

    /// How many times a connection was parked.
    pub fn parks(&self) -> u64 {
        self.parks.load(Ordering::Relaxed)
    }

    /// Why a connection is closing, and how long its requests get.
    fn grace(&self, reason: Reason) -> (&'static str, Duration) {
        match reason {
            Reason::Shutdown => ("shutting down", self.shutdown_grace),
            Reason::Banned => ("source banned", BANNED_CLOSE_GRACE),
            Reason::Idle => ("idle", self.shutdown_grace),
        }
    }
}

/// What the TLS handshake negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    H2,
    Http1,
    /// Plain TCP, or no ALPN: the first bytes tell.
    None,
}

impl Alpn {
    pub fn of(protocol: Option<&str>) -> Self {
        match protocol {
            Some("h2") => Alpn::H2,
            Some("http/1.1") => Alpn::Http1,
            _ => Alpn::None,
        }
    }
}

/// The stream as the protocols see it: the framing watch, with bytes read ahead in front.
type Stream<I> = Prefixed<FramingWatch<I>>;

/// Serves HTTP on one connection until it ends; on shutdown, when its source gets banned,
/// or when it has gone quiet (`registration`), it finishes the requests in flight and
/// closes.
pub async fn serve<I, S, B>(
    io: FramingWatch<I>,
    alpn: Alpn,
    service: S,
    protocols: &Protocols,
    registration: &Registration,
    peer: SocketAddr,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>> + Unpin + Send + 'static,
    S::Future: Unpin + Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut io = Prefixed::new(Bytes::new(), io);
    // ALPN `h2` is sniffed too (as hyper-util's `auto` did): hyper's HTTP/2 server writes
    // its SETTINGS at once and, told to close before the client's preface, waits for it, so
    // a client silent after its handshake would hold the connection past the idle limit.
    let h2 = match alpn {
        Alpn::Http1 => false,
        Alpn::H2 | Alpn::None => match sniff(&mut io, registration).await {
            Some(h2) => h2,
            None => return,
        },
    };
    if h2 {
        // Boxed, as the HTTP/1 connection: the task's future is as large as its largest
        // state, and every connection's task would carry an HTTP/2 connection's size. (Built
        // inside the box: a local holding it, even moved from, keeps its room in the future.)
        let conn = Box::pin(
            protocols
                .h2
                .serve_connection(TokioIo::new(Lingering::new(io)), service),
        );
        run_closable(conn, protocols, registration, peer).await;
    } else {
        // Boxed too: the task would otherwise be as large as the largest of its states.
        Box::pin(serve_http1(io, service, protocols, registration, peer)).await;
    }
}

/// Reads until the first bytes confirm or refute the HTTP/2 preface, and puts them back:
/// `Some(true)` for HTTP/2; `None` when the connection ended or was told to close first.
async fn sniff<I>(io: &mut Stream<I>, registration: &Registration) -> Option<bool>
where
    I: AsyncRead + Unpin,
{
    let mut seen = Vec::new();
    let mut closing = std::pin::pin!(registration.closing());
    let h2 = poll_fn(|cx| loop {
        if closing.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        let want = H2_PREFACE.len() - seen.len();
        match ready!(read_some(io, cx, &mut seen, want)) {
            Err(_) => return Poll::Ready(None),
            // hyper sees the end (and what came before it) as well.
            Ok(0) => return Poll::Ready(Some(false)),
            Ok(_) if !H2_PREFACE.starts_with(&seen) => return Poll::Ready(Some(false)),
            Ok(_) if seen.len() == H2_PREFACE.len() => return Poll::Ready(Some(true)),
            Ok(_) => {}
        }
    })
    .await?;
    io.prepend(Bytes::from(seen));
    Some(h2)
}

thread_local! {
    /// Where parked and sniffing connections read into: a worker polls one connection at a
    /// time, so they share one buffer instead of holding one each while they wait.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; 16 * 1024].into_boxed_slice());
}

/// Reads at most `max` bytes onto the end of `into`, through the worker's scratch buffer.
fn read_some<R: AsyncRead + Unpin>(
    io: &mut R,
    cx: &mut Context<'_>,
    into: &mut Vec<u8>,
    max: usize,
) -> Poll<io::Result<usize>> {
    let mut read = |scratch: &mut [u8]| {
        let cap = scratch.len().min(max.max(1));
        let mut buf = ReadBuf::new(&mut scratch[..cap]);
        ready!(Pin::new(&mut *io).poll_read(cx, &mut buf))?;
        into.extend_from_slice(buf.filled());
        Poll::Ready(Ok(buf.filled().len()))
    };
    SCRATCH.with(|s| match s.try_borrow_mut() {
        Ok(mut scratch) => read(&mut scratch),
        // Not reachable (nothing polls a connection from inside a read); a small buffer of
        // its own then.
        Err(_) => read(&mut [0u8; 512]),
    })
}

/// Runs an HTTP connection until it ends; when the connection is told to close, asks it to
/// finish gracefully and gives it its grace time.
async fn run_closable<C>(mut conn: Pin<Box<C>>, p: &Protocols, reg: &Registration, peer: SocketAddr)
where
    C: Future<Output = hyper::Result<()>> + GracefulShutdown,
{
    let reason = tokio::select! {
        biased;
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
            }
            return;
        }
        reason = reg.closing() => reason,
    };
    finish(conn, p.grace(reason), peer).await;
}

/// hyper's two connection types' graceful shutdown.
trait GracefulShutdown {
    fn shut_down_gracefully(self: Pin<&mut Self>);
}

impl<I, S, E> GracefulShutdown for http2::Connection<I, S, E>
where
    S: hyper::service::HttpService<Incoming>,
    S::Future: Send + 'static,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    S::ResBody: Body + Send + 'static,
    <S::ResBody as Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, S::ResBody>,
{
    fn shut_down_gracefully(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S> GracefulShutdown for http1::Connection<I, S>
where
    S: hyper::service::HttpService<Incoming>,
    S::ResBody: Body + 'static,
    <S::ResBody as Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
{
    fn shut_down_gracefully(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Asks a connection to finish (HTTP/1.1 closes after the current response, HTTP/2 sends
/// GOAWAY) and drops it after its grace time.
async fn finish<C>(mut conn: Pin<Box<C>>, (why, grace): (&str, Duration), peer: SocketAddr)
where
    C: Future<Output = hyper::Result<()>> + GracefulShutdown,
{
    tracing::debug!(peer = %peer, "closing connection: {why}");
    conn.as_mut().shut_down_gracefully();
    match tokio::time::timeout(grace, conn).await {
        Ok(Err(e)) => {
            tracing::debug!(peer = %peer, error = %e, "connection ended with an error")
        }
        Ok(Ok(())) => {}
        Err(_) => tracing::debug!(peer = %peer, "connection dropped after {grace:?}: {why}"),
    }
}

/// How an HTTP/1 connection's stretch on one hyper connection ended.
enum Active {
    /// hyper ended it (the client closed, an error, `Connection: close`).
    Ended(hyper::Result<()>),
    Closing(Reason),
    /// Idle since then, for [`Protocols::park_after`].
    Park(Instant),
}

/// How a parked connection's wait ended.
enum Parked {
    /// The next request's head (or what hyper has to refuse) came.
    Resume(Vec<u8>),
    Closing(Reason),
    /// The client closed its side between requests.
    Eof,
    /// The header-read deadline passed.
    Drop,
    /// The read failed (the client reset the connection, or closed TLS without close_notify).
    Failed,
}

async fn serve_http1<I, S, B>(
    io: Stream<I>,
    service: S,
    p: &Protocols,
    reg: &Registration,
    peer: SocketAddr,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>> + Unpin + Send + 'static,
    S::Future: Unpin + Send + 'static,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    B: Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let idle = Arc::new(IdleSignal::default());
    let mut io = ParkIo {
        io,
        idle: idle.clone(),
    };
    let mut service = Counted {
        inner: service,
        idle: idle.clone(),
    };
    // One timer for the connection's life, made when first needed: the park delay while
    // hyper serves, the header-read deadline while parked.
    let mut timer: Option<Pin<Box<Sleep>>> = None;
    let mut closing = std::pin::pin!(reg.closing());
    let mut mark = None;
    loop {
        // Boxed: parked, the task keeps none of hyper's connection.
        let mut conn = Box::new(p.h1.serve_connection(TokioIo::new(io), service));
        let outcome = poll_fn(|cx| {
            if let Poll::Ready(r) = conn.poll_without_shutdown(cx) {
                return Poll::Ready(Active::Ended(r));
            }
            if let Poll::Ready(reason) = closing.as_mut().poll(cx) {
                return Poll::Ready(Active::Closing(reason));
            }
            match idle.since(&mut mark) {
                Some(since) if park_due(&mut timer, since + p.park_after, cx) => {
                    Poll::Ready(Active::Park(since))
                }
                _ => Poll::Pending,
            }
        })
        .await;
        let since = match outcome {
            // hyper ended the connection: the stream is shut down as hyper's own `poll`
            // would have (`poll_without_shutdown` leaves that to us).
            Active::Ended(Ok(())) => {
                let mut io = (*conn).into_parts().io.into_inner();
                let _ = tokio::time::timeout(p.shutdown_grace, io.shutdown()).await;
                return;
            }
            Active::Ended(Err(e)) => {
                tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
                return;
            }
            Active::Closing(reason) => {
                return finish(Box::into_pin(conn), p.grace(reason), peer).await;
            }
            Active::Park(since) => since,
        };
        // hyper is idle: this ends it without writing a byte.
        Pin::new(&mut *conn).graceful_shutdown();
        if let Err(e) = poll_fn(|cx| conn.poll_without_shutdown(cx)).await {
            tracing::debug!(peer = %peer, error = %e, "connection ended with an error");
            return;
        }
        let parts = (*conn).into_parts();
        p.parks.fetch_add(1, Ordering::Relaxed);
        tracing::trace!(peer = %peer, "connection parked");
        io = parts.io.into_inner();
        service = parts.service;
        // Copied out and dropped here: the `Bytes` hyper gives back is a view into its read
        // buffer, and would keep all of it (8 KiB or more) alive while parked.
        let ahead = {
            let read_buf = parts.read_buf;
            read_buf.to_vec()
        };
        let deadline = since + p.header_read_timeout;
        match park(
            &mut io,
            ahead,
            deadline,
            &mut timer,
            closing.as_mut(),
            p.max_buf,
        )
        .await
        {
            Parked::Resume(bytes) => {
                io.idle.read_pending.store(false, Ordering::Relaxed);
                io.io.prepend(Bytes::from(bytes));
            }
            Parked::Closing(reason) => {
                let (why, grace) = p.grace(reason);
                tracing::debug!(peer = %peer, "closing parked connection: {why}");
                let _ = tokio::time::timeout(grace, io.shutdown()).await;
                return;
            }
            Parked::Eof => {
                let _ = tokio::time::timeout(p.shutdown_grace, io.shutdown()).await;
                return;
            }
            Parked::Drop => {
                tracing::debug!(peer = %peer, "parked connection closed: no request head in time");
                return;
            }
            Parked::Failed => return,
        }
    }
}

/// Whether the park timer, due at `at`, has run out; arms it otherwise. It is reset only
/// when it fires early (the connection was busy in between), so a busy connection costs no
/// timer operation per request.
fn park_due(timer: &mut Option<Pin<Box<Sleep>>>, at: Instant, cx: &mut Context<'_>) -> bool {
    let t = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
    if t.deadline() > at {
        t.as_mut().reset(at);
    }
    if t.as_mut().poll(cx).is_pending() {
        return false;
    }
    if Instant::now() >= at {
        return true;
    }
    t.as_mut().reset(at);
    // Registers the wake-up (the deadline is ahead).
    t.as_mut().poll(cx).is_ready()
}

/// Waits, parked, for the next request head until `deadline`.
async fn park<I>(
    io: &mut ParkIo<I>,
    mut ahead: Vec<u8>,
    deadline: Instant,
    timer: &mut Option<Pin<Box<Sleep>>>,
    mut closing: Pin<&mut impl Future<Output = Reason>>,
    max_buf: usize,
) -> Parked
where
    I: AsyncRead + Unpin,
{
    // Bytes hyper read while it was being ended (they came in the instant between the idle
    // check and the end): whatever they hold, hyper takes them at once. Only leading CRLFs,
    // which a request may start with, wait for more.
    if ahead.iter().any(|b| *b != b'\r' && *b != b'\n') {
        return Parked::Resume(ahead);
    }
    io.io.get_mut().release();
    ahead.shrink_to_fit();
    let heads = io.io.get_ref().heads_seen();
    let t = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
    t.as_mut().reset(deadline);
    poll_fn(|cx| loop {
        if let Poll::Ready(reason) = closing.as_mut().poll(cx) {
            return Poll::Ready(Parked::Closing(reason));
        }
        if t.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Parked::Drop);
        }
        let room = max_buf.saturating_sub(ahead.len());
        match ready!(read_some(&mut io.io, cx, &mut ahead, room)) {
            Err(_) => return Poll::Ready(Parked::Failed),
            Ok(0) if ahead.is_empty() => return Poll::Ready(Parked::Eof),
            // hyper reads what came, then the end, and answers as it would have.
            Ok(0) => return Poll::Ready(Parked::Resume(std::mem::take(&mut ahead))),
            Ok(_) => {
                let w = io.io.get_ref();
                if w.heads_seen() != heads || !w.following() || ahead.len() >= max_buf {
                    return Poll::Ready(Parked::Resume(std::mem::take(&mut ahead)));
                }
            }
        }
    })
    .await
}

/// What the drive sees of hyper's HTTP/1 connection from outside (see the module docs).
/// Touched by one worker thread only; atomics because the service must be `Send`.
#[derive(Debug, Default)]
struct IdleSignal {
    /// Responses hyper has not finished (their bodies not dropped yet).
    open: AtomicU32,
    /// hyper's last read found nothing.
    read_pending: AtomicBool,
    /// Written since the last successful flush.
    unflushed: AtomicBool,
    /// At that read, the framing watch was between requests.
    boundary: AtomicBool,
    /// Reads that brought bytes: a new request needs at least one.
    reads: AtomicU64,
}

impl IdleSignal {
    fn is_idle(&self) -> bool {
        self.open.load(Ordering::Relaxed) == 0
            && self.read_pending.load(Ordering::Relaxed)
            && self.boundary.load(Ordering::Relaxed)
            && !self.unflushed.load(Ordering::Relaxed)
    }

    /// When hyper went idle, if it is: `mark` keeps the read count and the time it was
    /// first seen idle with it (a new request would have needed a read).
    fn since(&self, mark: &mut Option<(u64, Instant)>) -> Option<Instant> {
        if !self.is_idle() {
            return None;
        }
        let reads = self.reads.load(Ordering::Relaxed);
        match *mark {
            Some((r, at)) if r == reads => Some(at),
            _ => {
                let at = Instant::now();
                *mark = Some((reads, at));
                Some(at)
            }
        }
    }
}

/// The stream under hyper's HTTP/1 connection, telling [`IdleSignal`] what hyper does.
pub struct ParkIo<I> {
    io: Stream<I>,
    idle: Arc<IdleSignal>,
}

impl<I: AsyncRead + Unpin> AsyncRead for ParkIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let filled = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        match &r {
            Poll::Pending => {
                this.idle.read_pending.store(true, Ordering::Relaxed);
                let between = this.io.get_ref().at_boundary();
                this.idle.boundary.store(between, Ordering::Relaxed);
            }
            Poll::Ready(_) => {
                this.idle.read_pending.store(false, Ordering::Relaxed);
                if buf.filled().len() > filled {
                    this.idle.reads.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> ParkIo<I> {
    fn wrote<T>(&self, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        self.idle.unflushed.store(true, Ordering::Relaxed);
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for ParkIo<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        self.wrote(r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.wrote(r)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.io).poll_flush(cx);
        if let Poll::Ready(Ok(())) = r {
            self.idle.unflushed.store(false, Ordering::Relaxed);
        }
        r
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// The service, counting the responses hyper has not finished.
pub struct Counted<S> {
    inner: S,
    idle: Arc<IdleSignal>,
}

/// One response hyper has not finished: made when hyper hands the request over, dropped
/// with the response body (or with the request's future, when it fails).
struct Open(Arc<IdleSignal>);

impl Open {
    fn new(idle: &Arc<IdleSignal>) -> Self {
        idle.open.fetch_add(1, Ordering::Relaxed);
        Self(idle.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl<S, B> Service<Request<Incoming>> for Counted<S>
where
    S: Service<Request<Incoming>, Response = Response<B>>,
    S::Future: Unpin,
{
    type Response = Response<CountedBody<B>>;
    type Error = S::Error;
    type Future = CountedFuture<S::Future>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        CountedFuture {
            open: Some(Open::new(&self.idle)),
            fut: self.inner.call(req),
        }
    }
}

pub struct CountedFuture<F> {
    fut: F,
    open: Option<Open>,
}

impl<F, B, E> Future for CountedFuture<F>
where
    F: Future<Output = Result<Response<B>, E>> + Unpin,
{
    type Output = Result<Response<CountedBody<B>>, E>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let r = ready!(Pin::new(&mut this.fut).poll(cx));
        let open = this.open.take();
        Poll::Ready(r.map(|res| res.map(|inner| CountedBody { inner, _open: open })))
    }
}

/// A response body that ends its [`Open`] mark when hyper drops it.
pub struct CountedBody<B> {
    inner: B,
    _open: Option<Open>,
}

impl<B: Body + Unpin> Body for CountedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// An HTTP/2 connection's stream, closed lingering (see the module docs) unless the client
/// has closed its side already.
pub struct Lingering<I: AsyncRead + AsyncWrite + Unpin + Send + 'static> {
    io: Option<I>,
    eof: bool,
}

impl<I: AsyncRead + AsyncWrite + Unpin + Send + 'static> Lingering<I> {
    fn new(io: I) -> Self {
        Self {
            io: Some(io),
            eof: false,
        }
    }
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "stream already closed")
}

impl<I: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncRead for Lingering<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let Some(io) = this.io.as_mut() else {
            return Poll::Ready(Err(gone()));
        };
        let filled = buf.filled().len();
        let r = ready!(Pin::new(io).poll_read(cx, buf));
        if r.is_ok() && buf.filled().len() == filled && buf.remaining() > 0 {
            this.eof = true;
        }
        Poll::Ready(r)
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncWrite for Lingering<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.io.as_mut() {
            Some(io) => Pin::new(io).poll_write(cx, buf),
            None => Poll::Ready(Err(gone())),
        }
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.io.as_mut() {
            Some(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            None => Poll::Ready(Err(gone())),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.io.as_ref().is_some_and(|io| io.is_write_vectored())
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.io.as_mut() {
            Some(io) => Pin::new(io).poll_flush(cx),
            None => Poll::Ready(Err(gone())),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.io.as_mut() {
            Some(io) => Pin::new(io).poll_shutdown(cx),
            None => Poll::Ready(Err(gone())),
        }
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin + Send + 'static> Drop for Lingering<I> {
    fn drop(&mut self) {
        let Some(io) = self.io.take() else {
            return;
        };
        if self.eof {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(linger_close(io, LINGER_BYTES, LINGER_TIME));
        }
    }
}

/// Shuts the write side, then reads and discards until the client closes, `max_bytes` or
/// `max_wait`: what the client sent last is read, so closing does not reset the connection
/// under the client's unread bytes.
async fn linger_close<I: AsyncRead + AsyncWrite + Unpin>(
    mut io: I,
    max_bytes: usize,
    max_wait: Duration,
) {
    let _ = tokio::time::timeout(max_wait, async {
        let _ = io.shutdown().await;
        let mut seen = 0usize;
        let mut buf = [0u8; 2048];
        while seen <= max_bytes {
            match io.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen += n,
            }
        }
    })
    .await;
}

/// Hands the memory parked connections freed back to the system, once a second when any
/// connection of this worker was parked in it (runs for the worker's life).
///
/// mimalloc purges freed pages lazily, when later allocations or frees in the same heap come
/// by, and postpones it while frees keep coming: the buffers of connections parked last,
/// with nothing happening after them, stayed in the process (about 4.6 KiB per idle
/// connection, BENCHMARKS.md). A forced collection of the worker's heap purges them; it
/// costs a walk over the heap's pages, once a second at most.
pub async fn return_freed_memory(p: &Protocols) {
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut seen = p.parks();
    loop {
        ticks.tick().await;
        let parks = p.parks();
        if parks != seen {
            seen = parks;
            collect_freed_memory();
        }
    }
}

/// mimalloc's `mi_collect(true)` on this thread's heap (the global allocator, `main.rs`;
/// without it the call finds an empty heap).
#[allow(unsafe_code)]
fn collect_freed_memory() {
    unsafe extern "C" {
        fn mi_collect(force: bool);
    }
    // SAFETY: `mi_collect` takes no pointers and may be called on any thread at any time;
    // the symbol comes from the mimalloc library linked through the `mimalloc` crate.
    unsafe { mi_collect(true) }
}

#[cfg(test)]
mod tests;
