//! The admin HTTP endpoint: `/metrics` (Prometheus text format), `/healthz`, `/readyz`, and
//! the deny API (`/deny`, see [`deny_api`]), and the dashboard (`/`, `/stats.json`, see
//! [`dashboard`]).
//!
//! Small on purpose: HTTP/1.1 only; the read-only paths take GET/HEAD and no authentication
//! (hence loopback by default, see [`crate::config::admin`]); the deny API needs a loopback
//! client or the configured API token. It runs on the gateway's runtime, so it guards
//! against a misbehaving local client eating resources: a bounded number of connections and a
//! header-read timeout that also closes idle keep-alive connections.

pub mod client;
pub mod dashboard;
pub mod deny_api;
pub mod stats_json;

use crate::config::admin::AdminConfig;
use crate::deny::DenyStore;
use crate::metrics::Metrics;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, ALLOW, CACHE_CONTROL, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

/// Connections served at once; more are closed at accept. Scrapers and probes need a few.
const MAX_CONNECTIONS: usize = 64;
/// A request's headers must arrive within this time; it also ends idle keep-alive connections.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// After shutdown, in-flight requests get this long to finish before their tasks are aborted.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause after a failed accept (e.g. out of file descriptors) so the loop does not spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

const TEXT: &str = "text/plain; charset=utf-8";

/// Why the admin endpoint could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminError {
    /// The configuration was refused (see [`AdminConfig::validate`]).
    #[error("admin.{key}: {message}")]
    Invalid { key: &'static str, message: String },
    /// The address could not be bound (in use, not local, no permission).
    #[error("cannot listen on {addr} for the admin endpoint: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A bound, not yet serving, admin socket.
#[derive(Debug)]
pub struct AdminListener {
    listener: TcpListener,
    addr: SocketAddr,
    deny: Option<(Arc<DenyStore>, deny_api::Access)>,
    access: deny_api::Access,
    info: stats_json::GatewayInfo,
}

/// Validates `cfg` and binds its address, so that start-up can fail with an error naming the
/// address before anything else runs.
pub async fn bind(cfg: &AdminConfig) -> Result<AdminListener, AdminError> {
    cfg.validate().map_err(|i| AdminError::Invalid {
        key: i.key,
        message: i.message,
    })?;
    let bind_err = |source| AdminError::Bind {
        addr: cfg.listen,
        source,
    };
    let access = match &cfg.api_token_file {
        None => deny_api::Access::Loopback,
        Some(path) => {
            let token = std::fs::read(path).map_err(|e| AdminError::Invalid {
                key: "api_token_file",
                message: format!("cannot read {}: {e}", path.display()),
            })?;
            let token = token.trim_ascii().to_vec();
            if token.len() < 16 {
                return Err(AdminError::Invalid {
                    key: "api_token_file",
                    message: format!("{}: the token must be at least 16 bytes", path.display()),
                });
            }
            deny_api::Access::token(&token).ok_or_else(|| AdminError::Invalid {
                key: "api_token_file",
                message: "the system random generator failed".into(),
            })?
        }
    };
    let listener = TcpListener::bind(cfg.listen).await.map_err(bind_err)?;
    let addr = listener.local_addr().map_err(bind_err)?;
    Ok(AdminListener {
        listener,
        addr,
        deny: None,
        access,
        info: stats_json::GatewayInfo::default(),
    })
}

impl AdminListener {
    /// The bound address (the real port when the config asked for port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serves the deny API from `store` too.
    pub fn with_deny(mut self, store: Arc<DenyStore>) -> Self {
        self.deny = Some((store, self.access.clone()));
        self
    }

    /// What the dashboard shows about the gateway (listeners, data plane, upstreams).
    pub fn with_info(mut self, info: stats_json::GatewayInfo) -> Self {
        self.info = info;
        self
    }

    /// Serves until `shutdown` resolves: then stops accepting, lets in-flight requests finish
    /// (up to a short deadline) and returns.
    pub async fn serve(
        self,
        metrics: Arc<Metrics>,
        ready: Arc<AtomicBool>,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut conns = JoinSet::new();
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .max_headers(64);
        let dashboard = Arc::new(dashboard::Dashboard::new(
            self.info.clone(),
            metrics.clone(),
            self.deny.as_ref().map(|(store, _)| store.clone()),
            self.access.clone(),
            self.addr,
        ));
        tokio::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                () = &mut shutdown => break,
                a = self.listener.accept() => a,
            };
            while conns.try_join_next().is_some() {}
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(addr = %self.addr, error = %e, "admin endpoint: accept failed");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
            };
            if conns.len() >= MAX_CONNECTIONS {
                tracing::debug!(addr = %self.addr, "admin endpoint: connection limit reached");
                drop(stream);
                continue;
            }
            let (metrics, ready) = (Arc::clone(&metrics), Arc::clone(&ready));
            let deny = self.deny.clone();
            let dashboard = dashboard.clone();
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let (metrics, ready, deny) = (metrics.clone(), ready.clone(), deny.clone());
                let dashboard = dashboard.clone();
                async move {
                    if let Some(resp) = dashboard.handle(&req, peer) {
                        return Ok::<_, Infallible>(resp);
                    }
                    let resp = match &deny {
                        Some((store, access)) if req.uri().path().starts_with("/deny") => {
                            deny_api::handle(req, peer, store, access).await
                        }
                        _ => handle(&req, &metrics, &ready),
                    };
                    Ok::<_, Infallible>(resp)
                }
            });
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            let mut stop = stop_rx.clone();
            conns.spawn(async move {
                tokio::pin!(conn);
                tokio::select! {
                    _ = conn.as_mut() => {}
                    // Also when the sender is gone: the server loop has ended either way.
                    () = async { drop(stop.wait_for(|s| *s).await) } => {
                        conn.as_mut().graceful_shutdown();
                        let _ = conn.await;
                    }
                }
            });
        }
        drop(self.listener);
        let _ = stop_tx.send(true);
        let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
            while conns.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            conns.abort_all();
        }
        tracing::debug!(addr = %self.addr, "admin endpoint stopped");
    }
}

fn response(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Monitoring data must never be served from a cache.
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Routes one request. The path decides first (unknown: 404), then the method (405).
fn handle(req: &Request<Incoming>, metrics: &Metrics, ready: &AtomicBool) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if !matches!(path, "/metrics" | "/healthz" | "/readyz") {
        return response(StatusCode::NOT_FOUND, TEXT, "not found\n");
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut resp = response(StatusCode::METHOD_NOT_ALLOWED, TEXT, "method not allowed\n");
        resp.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return resp;
    }
    match path {
        "/metrics" => response(
            StatusCode::OK,
            crate::metrics::CONTENT_TYPE,
            metrics.render(),
        ),
        "/healthz" => response(StatusCode::OK, TEXT, "ok\n"),
        _ if ready.load(Ordering::Acquire) => response(StatusCode::OK, TEXT, "ready\n"),
        _ => response(StatusCode::SERVICE_UNAVAILABLE, TEXT, "not ready\n"),
    }
}
