//! Keep-alive HTTP/1.1 connections to one upstream server, owned by one proxy worker.
//!
//! Each worker runtime has its own pools, so a connection is only ever used from the thread
//! that opened it: no cross-thread wake-ups, and the pool's lock is never contended. The
//! exchange itself runs on the request's task ([`super::upstream_h1`]); a connection goes
//! back to the pool when its response body has been read to the end with nothing left on
//! it, and is closed otherwise. Requests are sent in origin form, as the client sent them
//! (after our normalisation), with the Host header the handler set.

use super::coarse_timer;
use super::linger::ResponseEnd;
use super::upstream_h1::{Added, Conn, H1Error, UpstreamBody};
use super::ProxyBody;
use http::request::Parts;
use http::Response;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
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
    /// The connection broke or the response was not valid HTTP.
    #[error("exchange")]
    Protocol(#[source] H1Error),
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
            PoolError::Connect(_) | PoolError::ConnectTimeout(_) => Retry::Safe,
            PoolError::Protocol(_) => Retry::Unsafe,
        }
    }

    /// No connection was made (counts against the server's health).
    pub fn is_connect(&self) -> bool {
        matches!(self, PoolError::Connect(_) | PoolError::ConnectTimeout(_))
    }
}

struct Idle {
    conn: Conn,
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

    /// Sends `req` on an idle connection, or on a new one. A request that never reached
    /// the server because its pooled connection had gone stale is sent again on another
    /// (see [`super::upstream_h1::Failed`]).
    /// `end` goes with the response body (see [`ResponseEnd`]).
    ///
    /// The head is borrowed from the request's caller: every `async fn` keeps its arguments
    /// in its future, so a head passed down by value is copied once per level.
    pub async fn send(
        self: &Arc<Self>,
        parts: &Parts,
        mut body: ProxyBody,
        added: Added<'_>,
        end: ResponseEnd,
    ) -> Result<Response<ProxyBody>, PoolError> {
        // One exchange in the future's state, not one per place it is awaited from; the
        // connect (rare with warm pools) boxed: the request's future, moved and copied
        // whole, stays small.
        loop {
            let (conn, reused) = match self.checkout() {
                Some(conn) => (conn, true),
                None => (Box::pin(self.connect()).await?, false),
            };
            match conn.exchange(parts, added, body, reused).await {
                Ok(ex) => return Ok(self.respond(ex, end)),
                Err(failed) => match failed.unsent {
                    // Only a reused connection gives the body back (a fresh one cannot
                    // have gone stale): the next idle one, or a new one, takes it.
                    Some(unsent) => body = unsent,
                    None => return Err(PoolError::Protocol(failed.error)),
                },
            }
        }
    }

    /// The response, with a body that reads the connection and returns it here at its end.
    fn respond(
        self: &Arc<Self>,
        ex: super::upstream_h1::Exchange,
        end: ResponseEnd,
    ) -> Response<ProxyBody> {
        let (parts, body) = UpstreamBody::new(ex, self.clone(), end);
        Response::from_parts(parts, http_body_util::BodyExt::boxed(body))
    }

    /// The most recently used idle connection that is still open and quiet (warm, and the
    /// others can time out).
    fn checkout(&self) -> Option<Conn> {
        let mut idle = self.lock();
        while let Some(c) = idle.pop_back() {
            if self.usable(&c) {
                return Some(c.conn);
            }
        }
        None
    }

    /// Keeps a connection whose exchange ended cleanly.
    pub(super) fn checkin(self: &Arc<Self>, conn: Conn) {
        if self.max_idle == 0 {
            return;
        }
        {
            let mut idle = self.lock();
            if idle.len() >= self.max_idle {
                // Keep the most recent; the oldest connection is closed when dropped.
                idle.pop_front();
            }
            idle.push_back(Idle {
                conn,
                since: coarse_timer::now(),
            });
        }
        if !self.reaping.load(Ordering::Relaxed) && !self.reaping.swap(true, Ordering::Relaxed) {
            self.start_reaper();
        }
    }

    /// Not expired (on the worker's coarse clock, within a tick), and nothing arrived on it
    /// since (not its close, not stray bytes).
    fn usable(&self, c: &Idle) -> bool {
        coarse_timer::now().saturating_duration_since(c.since) < self.idle_timeout
            && c.conn.is_quiet()
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

    async fn connect(&self) -> Result<Conn, PoolError> {
        let stream =
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(self.addr)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Err(PoolError::Connect(e)),
                Err(_) => return Err(PoolError::ConnectTimeout(self.connect_timeout)),
            };
        let _ = stream.set_nodelay(true);
        let keepalive = socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE);
        let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
        Ok(Conn::new(stream))
    }
}

#[cfg(test)]
// The handler's tests borrow its hand-written upstream.
pub(super) mod tests;
