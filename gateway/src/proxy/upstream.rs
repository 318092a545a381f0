//! Upstream pools: round robin over healthy servers, pooled keep-alive connections, connect
//! and request timeouts, passive health (consecutive connection failures take a server out
//! for a while) and optional active checks.

use super::coarse_timer;
use super::linger::ResponseEnd;
use super::pool::{PoolError, Retry, ServerPool};
use super::slots::{Slot, Slots};
use super::upstream_h1::Added;
use super::{empty_body, ProxyBody};
use crate::config::UpstreamConfig;
use http::header::{HeaderValue, HOST, USER_AGENT};
use http::request::Parts;
use http::{Request, Response};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why an upstream did not answer. The client's answer is chosen by its [`kind`]
/// (see [`super::refusal::Refusal::Upstream`]); the cause is kept for the log.
///
/// [`kind`]: UpstreamError::kind
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UpstreamError {
    /// Every server is out of rotation.
    #[error("no healthy server in upstream `{0}`")]
    NoHealthy(String),
    /// Could not connect.
    #[error("cannot connect to {addr} (upstream `{upstream}`)")]
    Connect {
        upstream: String,
        addr: SocketAddr,
        #[source]
        source: PoolError,
    },
    /// No response headers in time.
    #[error("{addr} (upstream `{upstream}`) did not answer within {timeout:?}")]
    Timeout {
        upstream: String,
        addr: SocketAddr,
        timeout: Duration,
    },
    /// The exchange broke.
    #[error("{addr} (upstream `{upstream}`)")]
    Protocol {
        upstream: String,
        addr: SocketAddr,
        #[source]
        source: PoolError,
    },
    /// The server has `max_connections` requests in progress, and none ended within the
    /// wait.
    #[error("{addr} (upstream `{upstream}`) stayed at its {max} connections for {waited:?}")]
    Busy {
        upstream: String,
        addr: SocketAddr,
        max: usize,
        waited: Duration,
    },
    /// The server switched protocols unasked (we never forward Upgrade): relayed, the
    /// client would hold a connection nobody speaks.
    #[error("{addr} (upstream `{upstream}`): unsolicited {status}")]
    Unsolicited {
        upstream: String,
        addr: SocketAddr,
        status: http::StatusCode,
    },
}

impl UpstreamError {
    /// What kind of failure (metrics label; decides the client's answer).
    pub fn kind(&self) -> UpstreamErrorKind {
        match self {
            UpstreamError::NoHealthy(_) => UpstreamErrorKind::NoHealthy,
            UpstreamError::Connect { .. } => UpstreamErrorKind::Connect,
            UpstreamError::Timeout { .. } => UpstreamErrorKind::Timeout,
            UpstreamError::Busy { .. } => UpstreamErrorKind::Busy,
            UpstreamError::Protocol { .. } | UpstreamError::Unsolicited { .. } => {
                UpstreamErrorKind::Protocol
            }
        }
    }

    /// Whether the request could be sent again.
    pub fn retry(&self) -> Retry {
        match self {
            UpstreamError::NoHealthy(_) | UpstreamError::Busy { .. } => Retry::Safe,
            UpstreamError::Connect { source, .. } | UpstreamError::Protocol { source, .. } => {
                source.retry()
            }
            UpstreamError::Timeout { .. } | UpstreamError::Unsolicited { .. } => Retry::Unsafe,
        }
    }
}

/// Kinds of upstream failure: the `kind` label of `gateway_upstream_errors_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum UpstreamErrorKind {
    /// No connection could be made: 502.
    Connect,
    /// No response headers within `request_timeout`: 504.
    Timeout,
    /// Every server out of rotation: 503.
    NoHealthy,
    /// The exchange broke, or the answer cannot be relayed: 502.
    Protocol,
    /// The server stayed at `max_connections`: 503 with `Retry-After`.
    Busy,
}

impl UpstreamErrorKind {
    /// Every kind, in declaration order (`ALL[k as usize] == k`).
    pub const ALL: [UpstreamErrorKind; 5] = [
        UpstreamErrorKind::Connect,
        UpstreamErrorKind::Timeout,
        UpstreamErrorKind::NoHealthy,
        UpstreamErrorKind::Protocol,
        UpstreamErrorKind::Busy,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            UpstreamErrorKind::Connect => "connect",
            UpstreamErrorKind::Timeout => "timeout",
            UpstreamErrorKind::NoHealthy => "no_healthy",
            UpstreamErrorKind::Protocol => "protocol",
            UpstreamErrorKind::Busy => "busy",
        }
    }
}

struct Server {
    addr: SocketAddr,
    /// `addr` as a Host header for health checks.
    host: HeaderValue,
    /// Consecutive connection failures.
    fails: AtomicU32,
    /// Milliseconds since the pool's epoch until which the server is out (passive check).
    down_until_ms: AtomicU64,
    /// Verdict of the active check (true without one).
    active_ok: AtomicBool,
    /// Requests in progress on it, all workers (`max_connections`).
    slots: Arc<Slots>,
}

/// A server's health as [`Upstream::health`] reports it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ServerHealth {
    pub addr: SocketAddr,
    /// Requests go to it (active check passing, not out after `max_fails`).
    pub in_rotation: bool,
    /// The active check's last verdict (`true` without an active check).
    pub health_check_ok: bool,
    /// Connection failures in a row (the passive check).
    pub consecutive_fails: u32,
}

/// One named pool. Each proxy worker has its own (its own keep-alive connections, used only
/// by that worker's runtime); the servers' health and the round-robin position are shared.
pub struct Upstream {
    name: String,
    servers: Arc<Vec<Server>>,
    next: Arc<AtomicUsize>,
    /// This worker's connections, one pool per server (same order as `servers`).
    pools: Vec<Arc<ServerPool>>,
    request_timeout: Duration,
    /// How long a request waits for a server's slot (`connect_timeout`).
    slot_wait: Duration,
    max_connections: usize,
    max_fails: u32,
    fail_timeout: Duration,
    epoch: Instant,
}

impl Upstream {
    pub fn new(cfg: &UpstreamConfig) -> Self {
        Self {
            name: cfg.name.clone(),
            servers: Arc::new(
                cfg.servers
                    .iter()
                    .map(|&addr| Server {
                        addr,
                        host: HeaderValue::try_from(addr.to_string())
                            .unwrap_or_else(|_| HeaderValue::from_static("upstream")),
                        fails: AtomicU32::new(0),
                        down_until_ms: AtomicU64::new(0),
                        active_ok: AtomicBool::new(true),
                        slots: Slots::new(cfg.max_connections),
                    })
                    .collect(),
            ),
            next: Arc::new(AtomicUsize::new(0)),
            pools: pools(cfg),
            request_timeout: cfg.request_timeout.0,
            slot_wait: cfg.connect_timeout.0,
            max_connections: cfg.max_connections,
            max_fails: cfg.max_fails,
            fail_timeout: cfg.fail_timeout.0,
            epoch: Instant::now(),
        }
    }

    /// The same pool (health, rotation) with a connection pool of its own, for another
    /// worker.
    pub fn for_worker(&self, cfg: &UpstreamConfig) -> Self {
        Self {
            name: self.name.clone(),
            servers: self.servers.clone(),
            next: self.next.clone(),
            pools: pools(cfg),
            request_timeout: self.request_timeout,
            slot_wait: self.slot_wait,
            max_connections: self.max_connections,
            max_fails: self.max_fails,
            fail_timeout: self.fail_timeout,
            epoch: self.epoch,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Each server's state now, for the admin dashboard (the same for every worker's copy).
    pub fn health(&self) -> Vec<ServerHealth> {
        let now = self.now_ms();
        self.servers
            .iter()
            .map(|s| ServerHealth {
                addr: s.addr,
                in_rotation: self.usable(s, now),
                health_check_ok: s.active_ok.load(Ordering::Relaxed),
                consecutive_fails: s.fails.load(Ordering::Relaxed),
            })
            .collect()
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn usable(&self, s: &Server, now_ms: u64) -> bool {
        s.active_ok.load(Ordering::Relaxed)
            && (s.fails.load(Ordering::Relaxed) < self.max_fails
                || now_ms >= s.down_until_ms.load(Ordering::Relaxed))
    }

    /// The next healthy server (its index, and this worker's pool for it), round robin.
    fn pick(&self) -> Option<(usize, &Server, &Arc<ServerPool>)> {
        let n = self.servers.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = self.now_ms();
        (0..n)
            .map(|i| (start + i) % n)
            .find(|&i| self.usable(&self.servers[i], now))
            .and_then(|i| Some((i, self.servers.get(i)?, self.pools.get(i)?)))
    }

    fn record(&self, s: &Server, connect_failed: bool) {
        if connect_failed {
            let fails = s.fails.fetch_add(1, Ordering::Relaxed) + 1;
            if fails >= self.max_fails {
                let until = self.now_ms()
                    + u64::try_from(self.fail_timeout.as_millis()).unwrap_or(u64::MAX / 2);
                s.down_until_ms.store(until, Ordering::Relaxed);
                if fails == self.max_fails {
                    tracing::warn!(upstream = %self.name, server = %s.addr, "server out of rotation after {fails} failed connections");
                }
            }
        } else if s.fails.load(Ordering::Relaxed) != 0 {
            s.fails.store(0, Ordering::Relaxed);
        }
    }

    /// Sends the request `parts` and `body` (origin-form URI; a Host header is added when
    /// missing) to the next healthy server; `end` goes with the response body (dropped with
    /// a failed exchange). `picked` is set to the server chosen (its index in the
    /// upstream's `servers`, and address), for the latency metrics and the access log.
    /// `added`: fields written after the request's own.
    pub async fn send(
        &self,
        parts: &mut Parts,
        body: ProxyBody,
        added: Added<'_>,
        mut end: ResponseEnd,
        picked: &mut Option<(usize, SocketAddr)>,
    ) -> Result<Response<ProxyBody>, UpstreamError> {
        let (index, server, pool) = self
            .pick()
            .ok_or_else(|| UpstreamError::NoHealthy(self.name.clone()))?;
        *picked = Some((index, server.addr));
        end.server_slot = Some(self.slot(server).await?);
        if !parts.headers.contains_key(HOST) {
            // An HTTP/1.0 client may send none; HTTP/1.1 servers require one.
            parts.headers.insert(HOST, server.host.clone());
        }
        let exchange = std::pin::pin!(pool.send(parts, body, added, end));
        match coarse_timer::within(self.request_timeout, exchange).await {
            Err(_) => Err(UpstreamError::Timeout {
                upstream: self.name.clone(),
                addr: server.addr,
                timeout: self.request_timeout,
            }),
            Ok(Ok(resp)) if resp.status().is_informational() => {
                // Interim answers (100, 103) are passed over (`upstream_h1`); what is left is
                // a 101, and we never ask for an upgrade (Upgrade is hop-by-hop): relayed, it would
                // leave the client with a switched protocol nobody speaks.
                Err(UpstreamError::Unsolicited {
                    upstream: self.name.clone(),
                    addr: server.addr,
                    status: resp.status(),
                })
            }
            Ok(Ok(resp)) => {
                self.record(server, false);
                Ok(resp)
            }
            Ok(Err(source)) if source.is_connect() => {
                self.record(server, true);
                Err(UpstreamError::Connect {
                    upstream: self.name.clone(),
                    addr: server.addr,
                    source,
                })
            }
            Ok(Err(source)) => Err(UpstreamError::Protocol {
                upstream: self.name.clone(),
                addr: server.addr,
                source,
            }),
        }
    }

    /// A place among the server's `max_connections`: at once, or when a request in progress
    /// ends within the wait (a timer only then).
    async fn slot(&self, server: &Server) -> Result<Slot, UpstreamError> {
        server
            .slots
            .take(self.slot_wait)
            .await
            .ok_or_else(|| UpstreamError::Busy {
                upstream: self.name.clone(),
                addr: server.addr,
                max: self.max_connections,
                waited: self.slot_wait,
            })
    }

    /// Runs the active health check of every server until the task is dropped.
    pub async fn health_checks(
        self: Arc<Self>,
        path: String,
        interval: Duration,
        timeout: Duration,
    ) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            for (s, pool) in self.servers.iter().zip(&self.pools) {
                let ok = self.probe(s, pool, &path, timeout).await;
                let was = s.active_ok.swap(ok, Ordering::Relaxed);
                if was != ok {
                    if ok {
                        tracing::info!(upstream = %self.name, server = %s.addr, "health check passes: server back in rotation");
                    } else {
                        tracing::warn!(upstream = %self.name, server = %s.addr, "health check fails: server out of rotation");
                    }
                }
            }
        }
    }

    async fn probe(
        &self,
        s: &Server,
        pool: &Arc<ServerPool>,
        path: &str,
        timeout: Duration,
    ) -> bool {
        let Ok((parts, body)) = Request::get(path)
            .header(HOST, s.host.clone())
            .header(USER_AGENT, "gateway-health-check")
            .body(empty_body())
            .map(Request::into_parts)
        else {
            return false;
        };
        match tokio::time::timeout(
            timeout,
            pool.send(&parts, body, Added::default(), ResponseEnd::default()),
        )
        .await
        {
            Ok(Ok(resp)) => {
                let ok = resp.status().is_success() || resp.status().is_redirection();
                // Read the (small) body so that the connection can be reused.
                let _ = http_body_util::BodyExt::collect(resp.into_body()).await;
                ok
            }
            _ => false,
        }
    }
}

fn pools(cfg: &UpstreamConfig) -> Vec<Arc<ServerPool>> {
    cfg.servers
        .iter()
        .map(|&addr| {
            ServerPool::new(
                addr,
                cfg.connect_timeout.0,
                cfg.max_idle_per_server,
                super::pool::IDLE_TIMEOUT,
            )
        })
        .collect()
}
