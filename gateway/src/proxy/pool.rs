//! Keep-alive HTTP/1.1 connections to one upstream server, owned by one proxy worker.
//!
//! Each worker runtime has its own pools, so a connection is only ever used from the thread
//! that opened it: no cross-thread wake-ups, and the pool's lock is never contended. A
//! connection goes back to the pool when its response body has been read to the end (hyper
//! can then reuse it); one whose body was abandoned is closed by hyper instead. Requests
//! are sent in origin form, as the client sent them (after our normalisation), with the
//! Host header the handler set.

use super::linger::ResponseEnd;
use super::ProxyBody;
use bytes::Bytes;
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// How long an idle connection is kept; upstreams commonly close theirs after 60 s or
/// more, and a connection closed by the server is noticed and dropped anyway.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// TCP keepalive probes on upstream connections, so that dead peers behind NAT or
/// firewalls are noticed.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// Why a request got no response from this server. Each keeps its cause; the log renders
/// the whole chain (see [`super::ErrorChain`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// The TCP connection could not be made: the server may be down.
    #[error("connect")]
    Connect(#[source] std::io::Error),
    /// The TCP connection was not made within the connect timeout.
    #[error("connect: timed out after {0:?}")]
    ConnectTimeout(Duration),
    /// The HTTP/1.1 handshake on a new connection failed.
    #[error("connect: handshake")]
    Handshake(#[source] hyper::Error),
    /// The connection broke or the response was not valid HTTP.
    #[error("exchange")]
    Protocol(#[source] hyper::Error),
}

/// Whether a failed request may be sent again (pingora's `RetryType`, reduced to what a
/// proxy that forwards any method needs to know).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Retry {
    /// Nothing of the request left: sending it again, elsewhere, is safe.
    Safe,
    /// Some or all of it may have reached the server: only an idempotent request may go
    /// again.
    Unsafe,
}

impl PoolError {
    /// Whether the request could go again.
    pub fn retry(&self) -> Retry {
        match self {
            PoolError::Connect(_) | PoolError::ConnectTimeout(_) | PoolError::Handshake(_) => {
                Retry::Safe
            }
            PoolError::Protocol(_) => Retry::Unsafe,
        }
    }

    /// No connection was made (counts against the server's health).
    pub fn is_connect(&self) -> bool {
        matches!(
            self,
            PoolError::Connect(_) | PoolError::ConnectTimeout(_) | PoolError::Handshake(_)
        )
    }
}

struct Idle {
    sender: http1::SendRequest<ProxyBody>,
    since: Instant,
}

/// The idle connections to one server, oldest first.
pub struct ServerPool {
    addr: SocketAddr,
    connect_timeout: Duration,
    max_idle: usize,
    idle_timeout: Duration,
    idle: Mutex<VecDeque<Idle>>,
    /// Whether the task closing expired idle connections runs.
    reaping: AtomicBool,
}

impl ServerPool {
    pub fn new(
        addr: SocketAddr,
        connect_timeout: Duration,
        max_idle: usize,
        idle_timeout: Duration,
    ) -> Arc<Self> {
        Arc::new(Self {
            addr,
            connect_timeout,
            max_idle,
            idle_timeout,
            idle: Mutex::new(VecDeque::new()),
            reaping: AtomicBool::new(false),
        })
    }

    /// Sends `req` on an idle connection, or on a new one. A request that never left
    /// because its pooled connection had just closed is sent again on another (nothing of
    /// it reached the server).
    /// `end` goes with the response body (see [`ResponseEnd`]).
    pub async fn send(
        self: &Arc<Self>,
        mut req: Request<ProxyBody>,
        end: ResponseEnd,
    ) -> Result<Response<ProxyBody>, PoolError> {
        while let Some(mut sender) = self.checkout() {
            if sender.ready().await.is_err() {
                continue;
            }
            match sender.try_send_request(req).await {
                Ok(resp) => return Ok(self.returning(sender, resp, end)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(PoolError::Protocol(e.into_error())),
                },
            }
        }
        let mut sender = self.connect().await?;
        match sender.send_request(req).await {
            Ok(resp) => Ok(self.returning(sender, resp, end)),
            Err(e) => Err(PoolError::Protocol(e)),
        }
    }

    /// The most recently used idle connection that is still open (warm, and the others
    /// can time out).
    fn checkout(&self) -> Option<http1::SendRequest<ProxyBody>> {
        let mut idle = self.lock();
        while let Some(c) = idle.pop_back() {
            if self.usable(&c) {
                return Some(c.sender);
            }
        }
        None
    }

    fn checkin(self: &Arc<Self>, sender: http1::SendRequest<ProxyBody>) {
        if self.max_idle == 0 || sender.is_closed() {
            return;
        }
        {
            let mut idle = self.lock();
            if idle.len() >= self.max_idle {
                // Keep the most recent; the oldest connection is closed when dropped.
                idle.pop_front();
            }
            idle.push_back(Idle {
                sender,
                since: Instant::now(),
            });
        }
        if !self.reaping.load(Ordering::Relaxed) && !self.reaping.swap(true, Ordering::Relaxed) {
            self.start_reaper();
        }
    }

    fn usable(&self, c: &Idle) -> bool {
        !c.sender.is_closed() && c.since.elapsed() < self.idle_timeout
    }

    /// Closes (drops) idle connections that expired or that the server closed.
    fn prune(&self) {
        self.lock().retain(|c| self.usable(c));
    }

    /// A task of this worker's runtime that prunes the pool twice per idle timeout, so
    /// that idle connections are closed on time even when no request comes.
    fn start_reaper(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.reaping.store(false, Ordering::Relaxed);
            return;
        };
        let pool: Weak<Self> = Arc::downgrade(self);
        let period = (self.idle_timeout / 2).max(Duration::from_millis(10));
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                match pool.upgrade() {
                    Some(p) => p.prune(),
                    None => return,
                }
            }
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Idle>> {
        match self.idle.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    async fn connect(&self) -> Result<http1::SendRequest<ProxyBody>, PoolError> {
        let stream =
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(self.addr)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Err(PoolError::Connect(e)),
                Err(_) => return Err(PoolError::ConnectTimeout(self.connect_timeout)),
            };
        let _ = stream.set_nodelay(true);
        let keepalive = socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE);
        let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
        let (sender, conn) = http1::Builder::new()
            .writev(false)
            .handshake(TokioIo::new(stream))
            .await
            .map_err(PoolError::Handshake)?;
        let addr = self.addr;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(server = %addr, error = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// The response, with a body that returns the connection here once read to the end.
    fn returning(
        self: &Arc<Self>,
        sender: http1::SendRequest<ProxyBody>,
        resp: Response<Incoming>,
        end: ResponseEnd,
    ) -> Response<ProxyBody> {
        let (parts, body) = resp.into_parts();
        let body = ReturningBody {
            body,
            home: Some((sender, self.clone())),
            end: Some(end),
        };
        Response::from_parts(parts, http_body_util::BodyExt::boxed(body))
    }
}

/// A response body that gives its connection back to the pool at its end, and ends the
/// client's exchange there ([`ResponseEnd`]).
struct ReturningBody {
    body: Incoming,
    home: Option<(http1::SendRequest<ProxyBody>, Arc<ServerPool>)>,
    end: Option<ResponseEnd>,
}

impl ReturningBody {
    fn give_back(&mut self) {
        if let Some((mut sender, pool)) = self.home.take() {
            if sender.is_ready() {
                pool.checkin(sender);
                return;
            }
            // The response ended before the request did (an upstream answering early while
            // the client still uploads): pooled now, the connection would hold the next
            // request until that upload ends. It goes back once it is free.
            let Ok(runtime) = tokio::runtime::Handle::try_current() else {
                return;
            };
            runtime.spawn(async move {
                if sender.ready().await.is_ok() {
                    pool.checkin(sender);
                }
            });
        }
    }
}

impl Body for ReturningBody {
    type Data = Bytes;
    type Error = super::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let frame = ready!(Pin::new(&mut self.body).poll_frame(cx));
        match &frame {
            None => {
                self.give_back();
                self.end = None;
            }
            Some(Err(_)) => self.home = None,
            Some(Ok(_)) => {}
        }
        Poll::Ready(frame.map(|f| f.map_err(super::BoxError::from)))
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for ReturningBody {
    fn drop(&mut self) {
        // Bodies known to be empty (HEAD, 204, 304, Content-Length: 0) are never polled by
        // the server; their connection is reusable all the same.
        if self.body.is_end_stream() {
            self.give_back();
        }
    }
}

#[cfg(test)]
mod tests;
