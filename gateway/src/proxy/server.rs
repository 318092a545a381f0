//! Listeners and connections: accept (global and per-source limits), TLS handshake with a
//! deadline, HTTP/1.1 and HTTP/2 with header, stream and timeout limits, and graceful
//! shutdown (stop accepting, let in-flight requests finish up to a deadline).

use super::handler::{ConnInfo, Proxy};
use crate::config::ListenConfig;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio_rustls::TlsAcceptor;

/// A listener that could not be opened.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Bound listeners, before serving: binding first lets start-up fail with the address.
pub struct Listeners {
    bound: Vec<(TcpListener, bool)>,
}

impl Listeners {
    pub async fn bind(cfg: &ListenConfig) -> Result<Self, ServerError> {
        let mut bound = Vec::new();
        for (addrs, tls) in [(&cfg.https, true), (&cfg.http, false)] {
            for &addr in addrs {
                let l = TcpListener::bind(addr)
                    .await
                    .map_err(|source| ServerError::Bind { addr, source })?;
                bound.push((l, tls));
            }
        }
        Ok(Self { bound })
    }

    /// Actual addresses (port 0 resolved), TLS first, in config order.
    pub fn local_addrs(&self) -> Vec<(SocketAddr, bool)> {
        self.bound
            .iter()
            .filter_map(|(l, tls)| l.local_addr().ok().map(|a| (a, *tls)))
            .collect()
    }
}

/// Open connections per source address; the guard gives the slot back.
struct SourceLimit {
    max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

struct SourceSlot {
    limit: Arc<SourceLimit>,
    ip: IpAddr,
}

impl SourceLimit {
    fn take(self: &Arc<Self>, ip: IpAddr) -> Option<SourceSlot> {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let n = open.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(SourceSlot {
            limit: self.clone(),
            ip,
        })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut open = self
            .limit
            .open
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Serves every listener until `shutdown` flips to true, then waits for in-flight requests
/// up to `shutdown_grace`.
pub async fn serve(
    proxy: Arc<Proxy>,
    listeners: Listeners,
    tls: Option<TlsAcceptor>,
    cfg: ListenConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    let graceful = Arc::new(GracefulShutdown::new());
    let builder = Arc::new(http_builder(&cfg));
    let permits = Arc::new(Semaphore::new(cfg.max_connections));
    let limit = Arc::new(SourceLimit {
        max: cfg.max_connections_per_source,
        open: Mutex::new(HashMap::new()),
    });
    let mut tasks = Vec::new();
    for (listener, is_tls) in listeners.bound {
        let acceptor = if is_tls { tls.clone() } else { None };
        tasks.push(tokio::spawn(accept_loop(
            listener,
            acceptor,
            proxy.clone(),
            builder.clone(),
            permits.clone(),
            limit.clone(),
            graceful.clone(),
            cfg.clone(),
            shutdown.clone(),
        )));
    }
    while !*shutdown.borrow() {
        if shutdown.changed().await.is_err() {
            break;
        }
    }
    for t in &tasks {
        t.abort();
    }
    for t in tasks {
        let _ = t.await;
    }
    // The accept loops are gone, so this is the last handle.
    let Ok(graceful) = Arc::try_unwrap(graceful) else {
        return;
    };
    let grace = cfg.shutdown_grace.0;
    tracing::info!(
        in_flight = graceful.count(),
        "draining connections for up to {grace:?}"
    );
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("drain deadline passed; closing the remaining connections");
    }
}

fn http_builder(cfg: &ListenConfig) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(cfg.header_read_timeout.0)
        .max_buf_size(cfg.max_header_bytes.max(8192))
        .max_headers(cfg.max_headers)
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(cfg.max_concurrent_streams)
        .max_header_list_size(u32::try_from(cfg.max_header_bytes).unwrap_or(u32::MAX))
        .keep_alive_interval(cfg.header_read_timeout.0 * 3)
        .keep_alive_timeout(cfg.header_read_timeout.0);
    b
}

#[allow(clippy::too_many_arguments)]
async fn accept_loop(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    proxy: Arc<Proxy>,
    builder: Arc<auto::Builder<TokioExecutor>>,
    permits: Arc<Semaphore>,
    limit: Arc<SourceLimit>,
    graceful: Arc<GracefulShutdown>,
    cfg: ListenConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let permit = tokio::select! {
            _ = shutdown.changed() => return,
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.changed() => return,
            r = listener.accept() => match r {
                Ok(s) => s,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Some(slot) = limit.take(peer.ip()) else {
            proxy.metrics().connection_refused("per_source_limit");
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let conn = ConnInfo {
            peer,
            tls: tls.is_some(),
        };
        let proxy = proxy.clone();
        let builder = builder.clone();
        let tls = tls.clone();
        let watcher = graceful.watcher();
        let handshake_timeout = cfg.tls_handshake_timeout.0;
        tokio::spawn(async move {
            let _permit = permit;
            let _slot = slot;
            proxy.metrics().connection_opened();
            serve_connection(
                stream,
                conn,
                tls,
                handshake_timeout,
                proxy.clone(),
                &builder,
                watcher,
            )
            .await;
            proxy.metrics().connection_closed();
        });
    }
}

async fn serve_connection(
    stream: TcpStream,
    conn: ConnInfo,
    tls: Option<TlsAcceptor>,
    handshake_timeout: std::time::Duration,
    proxy: Arc<Proxy>,
    builder: &auto::Builder<TokioExecutor>,
    watcher: Watcher,
) {
    let metrics = proxy.metrics().clone();
    let service = service_fn(move |req| proxy.clone().handle(conn, req));
    match tls {
        None => {
            let c = builder.serve_connection(TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(c.into_owned()).await {
                tracing::debug!(peer = %conn.peer, error = %e, "connection ended with an error");
            }
        }
        Some(acceptor) => {
            let tls_stream =
                match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                    Ok(Ok(s)) => {
                        metrics.tls_handshake(true);
                        s
                    }
                    Ok(Err(e)) => {
                        metrics.tls_handshake(false);
                        tracing::debug!(peer = %conn.peer, error = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        metrics.tls_handshake(false);
                        tracing::debug!(peer = %conn.peer, "TLS handshake timed out");
                        return;
                    }
                };
            let c = builder.serve_connection(TokioIo::new(tls_stream), service);
            if let Err(e) = watcher.watch(c.into_owned()).await {
                tracing::debug!(peer = %conn.peer, error = %e, "connection ended with an error");
            }
        }
    }
}
