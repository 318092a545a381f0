//! The admin HTTP endpoint: `/metrics` (Prometheus text format), `/healthz`, `/readyz`, and
//! the deny API (`/deny`, see [`deny_api`]), and the dashboard (`/`, `/stats.json`, see
//! [`dashboard`]).
//!
//! Small on purpose: HTTP/1.1 only; the read-only paths take GET/HEAD and no authentication
//! (hence loopback by default, see [`crate::config::admin`]); the deny API needs a loopback
//! client or the configured API token. It runs on the gateway's runtime, so it guards
//! against a misbehaving local client eating resources: a bounded number of connections, a
//! header-read timeout that also closes idle keep-alive connections, and a body deadline.
//!
//! A web page can make a browser send requests to loopback, so every request with an
//! `Origin` header is refused, and the `Host` must name this endpoint (its address or
//! `localhost`: a DNS-rebinding page's requests carry the attacker's host name). The same
//! endpoint can also be served on a Unix socket (`[admin] socket`, mode 0660), whose file
//! permissions decide who talks to it.

mod socket;

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
use std::net::{IpAddr, SocketAddr};
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
    /// The Unix socket could not be made.
    #[error("admin socket {}: {message}", path.display())]
    Socket {
        path: std::path::PathBuf,
        message: String,
    },
}

/// Who is on the other end of an admin connection.
#[derive(Debug, Clone, Copy)]
pub enum Peer {
    Tcp(SocketAddr),
    /// A local process the socket's permissions let in.
    Unix,
}

/// A bound, not yet serving, admin socket.
#[derive(Debug)]
pub struct AdminListener {
    listener: TcpListener,
    addr: SocketAddr,
    socket: Option<socket::AdminSocket>,
    deny: Option<deny_api::DenyApi>,
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
    let socket = match &cfg.socket {
        Some(path) => Some(socket::AdminSocket::bind(path)?),
        None => None,
    };
    Ok(AdminListener {
        listener,
        addr,
        socket,
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

    /// The Unix socket's path, when one is served.
    pub fn socket_path(&self) -> Option<&std::path::Path> {
        self.socket.as_ref().map(socket::AdminSocket::path)
    }

    /// Serves the deny API from `store` too. `enforced`: whether anything acts on a deny
    /// (the data plane, or the proxy's user-space check); without, the API says so.
    pub fn with_deny(mut self, store: Arc<DenyStore>, enforced: bool) -> Self {
        self.deny = Some(deny_api::DenyApi {
            store,
            access: self.access.clone(),
            enforced,
        });
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
            self.deny.as_ref().map(|api| api.store.clone()),
            self.access.clone(),
            self.addr,
        ));
        tokio::pin!(shutdown);
        let hosts = Arc::new(HostCheck::new(self.addr));
        loop {
            let accepted = tokio::select! {
                () = &mut shutdown => break,
                a = self.listener.accept() => a.map(|(s, peer)| (Io::Tcp(s), Peer::Tcp(peer))),
                a = socket::accept(self.socket.as_ref()) => a.map(|s| (Io::Unix(s), Peer::Unix)),
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
            let (deny, hosts) = (self.deny.clone(), hosts.clone());
            let dashboard = dashboard.clone();
            let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                let (metrics, ready, deny) = (metrics.clone(), ready.clone(), deny.clone());
                let dashboard = dashboard.clone();
                let refused = hosts.refuse(&req);
                async move {
                    if refused.is_none() {
                        if let Some(resp) = dashboard.handle(&req, peer) {
                            return Ok::<_, Infallible>(resp);
                        }
                    }
                    let resp = match (refused, &deny) {
                        (Some(r), _) => r,
                        (None, Some(api)) if req.uri().path().starts_with("/deny") => {
                            api.handle(req, peer).await
                        }
                        _ => handle(&req, &metrics, &ready),
                    };
                    Ok::<_, Infallible>(resp)
                }
            });
            let stop = stop_rx.clone();
            match stream {
                Io::Tcp(s) => conns.spawn(serve_one(&builder, s, service, stop)),
                Io::Unix(s) => conns.spawn(serve_one(&builder, s, service, stop)),
            };
        }
        drop(self.listener);
        drop(self.socket);
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

/// An accepted admin connection of either kind.
enum Io {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

/// Serves one connection until it ends, or finishes it gracefully once `stop` is set.
fn serve_one<I, S>(
    builder: &hyper::server::conn::http1::Builder,
    io: I,
    service: S,
    mut stop: watch::Receiver<bool>,
) -> impl Future<Output = ()> + Send + 'static
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: hyper::service::Service<
            Request<Incoming>,
            Response = Response<Full<Bytes>>,
            Error = Infallible,
        > + Send
        + 'static,
    S::Future: Send + 'static,
{
    let conn = builder.serve_connection(TokioIo::new(io), service);
    async move {
        tokio::pin!(conn);
        tokio::select! {
            _ = conn.as_mut() => {}
            // Also when the sender is gone: the server loop has ended either way.
            () = async { drop(stop.wait_for(|s| *s).await) } => {
                conn.as_mut().graceful_shutdown();
                let _ = conn.await;
            }
        }
    }
}

/// The requests a web page could make a browser send: refused before anything else.
struct HostCheck {
    addr: SocketAddr,
}

impl HostCheck {
    fn new(addr: SocketAddr) -> Self {
        Self { addr }
    }

    /// The refusal for a request with an `Origin` or a `Host` other than this endpoint's
    /// address or `localhost` (with this port or none).
    fn refuse(&self, req: &Request<Incoming>) -> Option<Response<Full<Bytes>>> {
        let host = req
            .headers()
            .get(hyper::header::HOST)
            .and_then(|h| h.to_str().ok());
        if !host.is_some_and(|h| self.accepts(h)) {
            return Some(response(
                StatusCode::FORBIDDEN,
                TEXT,
                "the Host header must be this endpoint's address or localhost\n",
            ));
        }
        if let Some(origin) = req.headers().get(hyper::header::ORIGIN) {
            if !same_origin_page(req, origin, host) {
                return Some(response(
                    StatusCode::FORBIDDEN,
                    TEXT,
                    "requests with an Origin header are refused (browsers send it)\n",
                ));
            }
        }
        None
    }

    fn accepts(&self, host: &str) -> bool {
        let Ok(authority) = host.parse::<http::uri::Authority>() else {
            return false;
        };
        if authority.port_u16().is_some_and(|p| p != self.addr.port()) {
            return false;
        }
        let name = authority.host();
        if name.eq_ignore_ascii_case("localhost") {
            return true;
        }
        let literal = name.trim_start_matches('[').trim_end_matches(']');
        match literal.parse::<IpAddr>() {
            // An address literal never comes from DNS; on a wildcard listener any of the
            // host's addresses reaches us.
            Ok(ip) => ip == self.addr.ip() || self.addr.ip().is_unspecified(),
            Err(_) => false,
        }
    }
}

/// A request from the dashboard's own script: its `Origin` is this endpoint as the browser
/// reached it (the `Host`, already checked), and it carries the page's header. Another site
/// cannot send that header without a CORS preflight, which this endpoint never grants, and
/// a rebinding name fails the `Host` check.
fn same_origin_page<B>(req: &Request<B>, origin: &HeaderValue, host: Option<&str>) -> bool {
    let from_page = req
        .headers()
        .get(dashboard::PAGE_HEADER)
        .is_some_and(|v| v.as_bytes() == b"1");
    let same = host.is_some_and(|h| {
        origin
            .as_bytes()
            .strip_prefix(b"http://")
            .is_some_and(|o| o.eq_ignore_ascii_case(h.as_bytes()))
    });
    from_page && same
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

#[cfg(test)]
mod tests {
    use super::HostCheck;

    fn check(listen: &str) -> HostCheck {
        HostCheck::new(listen.parse().expect("addr"))
    }

    #[test]
    fn ipv6_listeners_take_their_bracketed_address() {
        let c = check("[::1]:9901");
        for ok in ["[::1]:9901", "[::1]", "localhost:9901", "localhost"] {
            assert!(c.accepts(ok), "{ok}");
        }
        for bad in [
            "::1",
            "[::1]:9902",
            "127.0.0.1:9901",
            "[::2]:9901",
            "evil:9901",
        ] {
            assert!(!c.accepts(bad), "{bad}");
        }
    }

    #[test]
    fn a_wildcard_listener_takes_address_literals_never_names() {
        let c = check("0.0.0.0:9901");
        for ok in ["10.1.2.3:9901", "[2001:db8::1]:9901", "localhost"] {
            assert!(c.accepts(ok), "{ok}");
        }
        for bad in ["admin.example:9901", "10.1.2.3:80", "10.1.2.3.nip.io:9901"] {
            assert!(!c.accepts(bad), "{bad}");
        }
    }
}
