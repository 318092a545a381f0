//! Listeners and connections: accept (global and per-source limits), TLS handshake with a
//! deadline, HTTP/1.1 and HTTP/2 with header, stream and timeout limits (a send timeout on
//! blocked writes, [`super::send_timeout`]), and graceful
//! shutdown (stop accepting, let in-flight requests finish up to a deadline).

use super::balance::{Balance, Handoff};
use super::client_addr::{ForwardedClient, TrustedProxies};
use super::closing::{wait_true, Closer};
use super::coarse_timer::CoarseTimer;
use super::framing::{FramingWatch, Verdicts};
use super::handler::{ConnInfo, Proxy};
use super::live::LiveProxy;
use super::park::{self, Alpn, Protocols};
use super::proxy_protocol::{self, Origin, Prefixed};
use super::send_timeout::SendTimeout;
use crate::abuse::{source_key, Signal};
use crate::access_log::{ConnEventKind, TlsInfo};
use crate::config::abuse::AbuseConfig;
use crate::config::ListenConfig;
use crate::deny::DenyStore;
use crate::tls::HandshakeFailure;
use hyper::service::service_fn;
use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
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
    #[error(
        "cannot listen on {addr}: another process already listens there (is this gateway \
         already running?)"
    )]
    InUse { addr: SocketAddr },
}

/// Bound listeners, before serving: binding first lets start-up fail with the address. Each
/// address gets one socket per worker (SO_REUSEPORT), so the kernel spreads connections over
/// the workers and a worker never wakes another for a request; [`super::balance`] evens out
/// what the kernel's hash leaves uneven.
pub struct Listeners {
    per_worker: Vec<Vec<(std::net::TcpListener, bool)>>,
    addrs: Vec<(SocketAddr, bool)>,
}

fn reuseport_listener(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    if addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Refuses an address something already listens on. Our own sockets share each address
/// with SO_REUSEPORT, which would also let a second gateway of the same user join in and
/// silently take a share of the connections; a bind without it fails while anything
/// listens there (SO_REUSEADDR: a previous run's TIME_WAIT connections are no obstacle).
fn check_free(addr: SocketAddr) -> Result<(), ServerError> {
    use socket2::{Domain, Socket, Type};
    if addr.port() == 0 {
        return Ok(());
    }
    let bind_err = |source| ServerError::Bind { addr, source };
    let probe = Socket::new(Domain::for_address(addr), Type::STREAM, None).map_err(bind_err)?;
    probe.set_reuse_address(true).map_err(bind_err)?;
    if addr.is_ipv6() {
        probe.set_only_v6(true).map_err(bind_err)?;
    }
    match probe.bind(&addr.into()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(ServerError::InUse { addr }),
        Err(e) => Err(bind_err(e)),
    }
}

/// Fails on the first configured address something already listens on (see
/// [`check_free`]). `gateway run` asks before it starts anything else, so a second gateway
/// says so before it touches the data plane.
pub fn check_addresses_free(cfg: &ListenConfig) -> Result<(), ServerError> {
    cfg.https
        .iter()
        .chain(&cfg.http)
        .try_for_each(|&a| check_free(a))
}

impl Listeners {
    /// Every address is checked before any is bound, so a start that fails has not taken
    /// (and then dropped) a single connection.
    pub fn bind(cfg: &ListenConfig, workers: usize) -> Result<Self, ServerError> {
        check_addresses_free(cfg)?;
        let workers = workers.max(1);
        let mut per_worker: Vec<Vec<(std::net::TcpListener, bool)>> =
            (0..workers).map(|_| Vec::new()).collect();
        let mut addrs = Vec::new();
        for (list, tls) in [(&cfg.https, true), (&cfg.http, false)] {
            for &addr in list {
                let bind_err = |source| ServerError::Bind { addr, source };
                let first = reuseport_listener(addr).map_err(bind_err)?;
                // Port 0: the others join the port the first one got.
                let actual = first.local_addr().map_err(bind_err)?;
                addrs.push((actual, tls));
                per_worker[0].push((first, tls));
                for w in per_worker.iter_mut().skip(1) {
                    w.push((reuseport_listener(actual).map_err(bind_err)?, tls));
                }
            }
        }
        Ok(Self { per_worker, addrs })
    }

    /// Actual addresses (port 0 resolved), TLS first, in config order.
    pub fn local_addrs(&self) -> Vec<(SocketAddr, bool)> {
        self.addrs.clone()
    }
}

/// Limits shared by every worker: total connections and connections per source.
pub struct Limits {
    permits: Arc<Semaphore>,
    source: Arc<SourceLimit>,
}

impl Limits {
    /// `ipv6_prefix`: IPv6 sources are counted per prefix of this length, as the abuse
    /// engine counts them (one host owns a /64 and could rotate through it).
    pub fn new(cfg: &ListenConfig, ipv6_prefix: u8) -> Arc<Self> {
        Arc::new(Self {
            permits: Arc::new(Semaphore::new(cfg.max_connections)),
            source: Arc::new(SourceLimit {
                max: cfg.max_connections_per_source,
                ipv6_prefix,
                open: Mutex::new(HashMap::new()),
            }),
        })
    }
}

/// Starts one worker thread per proxy, each with a single-threaded runtime serving its own
/// listener sockets; they stop (after draining) when `shutdown` flips to true. A reload
/// replaces each worker's proxy in its [`LiveProxy`].
/// `deny`: the deny list checked in user space (sources the kernel cannot see, such as
/// clients behind a trusted proxy, and every source when no data plane runs).
pub fn spawn_workers(
    proxies: Vec<Arc<LiveProxy>>,
    listeners: Listeners,
    tls: Option<TlsAcceptor>,
    cfg: &ListenConfig,
    deny: Option<Arc<DenyStore>>,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
    let ipv6_prefix = proxies
        .first()
        .and_then(|p| p.peek().abuse().map(|a| a.ipv6_prefix()))
        .unwrap_or(AbuseConfig::default().ipv6_prefix);
    let limits = Limits::new(cfg, ipv6_prefix);
    let (balance, inboxes) = Balance::new(proxies.len());
    let mut handles = Vec::new();
    for (worker, ((proxy, socks), inbox)) in proxies
        .into_iter()
        .zip(listeners.per_worker)
        .zip(inboxes)
        .enumerate()
    {
        let sharing = Sharing {
            limits: limits.clone(),
            balance: balance.clone(),
            worker,
            inbox,
        };
        let (tls, cfg, shutdown, deny) = (tls.clone(), cfg.clone(), shutdown.clone(), deny.clone());
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        handles.push(
            std::thread::Builder::new()
                .name(format!("gateway-w{worker}"))
                .spawn(move || {
                    runtime.block_on(serve(proxy, socks, tls, cfg, deny, shutdown, sharing))
                })?,
        );
    }
    Ok(handles)
}

/// Open connections per source (IPv6 by prefix); the guard gives the slot back.
struct SourceLimit {
    max: usize,
    ipv6_prefix: u8,
    open: Mutex<HashMap<IpAddr, usize>>,
}

struct SourceSlot {
    limit: Arc<SourceLimit>,
    ip: IpAddr,
}

impl SourceLimit {
    fn take(self: &Arc<Self>, ip: IpAddr) -> Option<SourceSlot> {
        let ip = source_key(ip, self.ipv6_prefix);
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

/// What a worker shares with the others: the connection limits, and the even spread of
/// connections (see [`super::balance`]).
struct Sharing {
    limits: Arc<Limits>,
    balance: Arc<Balance>,
    /// This worker's index.
    worker: usize,
    /// Connections other workers accepted for this one.
    inbox: mpsc::UnboundedReceiver<Handoff>,
}

/// Serves one worker's listeners until `shutdown` flips to true, then lets every connection
/// finish its in-flight requests (HTTP/1.1 closes after the current response, HTTP/2 sends
/// GOAWAY) for up to `shutdown_grace`.
async fn serve(
    proxy: Arc<LiveProxy>,
    listeners: Vec<(std::net::TcpListener, bool)>,
    tls: Option<TlsAcceptor>,
    cfg: ListenConfig,
    deny: Option<Arc<DenyStore>>,
    mut shutdown: watch::Receiver<bool>,
    sharing: Sharing,
) {
    let deny = deny.or_else(|| proxy.peek().deny_store().cloned());
    // The config check has refused a list that does not parse.
    let trusted = Arc::new(TrustedProxies::new(
        cfg.trusted_proxy_nets().unwrap_or_default(),
    ));
    // This worker's header-read deadlines, HTTP/2 keep-alive pings, upstream request
    // deadlines and idle pool clock.
    let timer = CoarseTimer::new();
    timer.install();
    let shared = Arc::new(Shared {
        deny: deny.clone(),
        trusted,
        proxy_protocol: cfg.proxy_protocol,
        proxy,
        protocols: Protocols::new(&cfg, &timer),
        permits: sharing.limits.permits.clone(),
        local: Arc::new(Semaphore::new(cfg.max_connections)),
        limit: sharing.limits.source.clone(),
        handshake_timeout: cfg.tls_handshake_timeout.0,
        send_timeout: cfg.send_timeout.0,
        shutdown: shutdown.clone(),
        closer: Closer::new(deny),
        balance: sharing.balance,
        worker: sharing.worker,
    });
    // Deadlines keep firing while connections drain: stopped last.
    let ticker = tokio::spawn(timer.run());
    let mut tasks = vec![
        tokio::spawn(shared.closer.clone().watch_bans()),
        tokio::spawn(shared.closer.clone().watch_idle(cfg.header_read_timeout.0)),
        tokio::spawn({
            let shared = shared.clone();
            async move { park::return_freed_memory(&shared.protocols).await }
        }),
        tokio::spawn(inbox_loop(sharing.inbox, tls.clone(), shared.clone())),
    ];
    for (listener, is_tls) in listeners {
        let listener = match TcpListener::from_std(listener) {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(error = %e, "listener could not join the runtime");
                continue;
            }
        };
        let acceptor = if is_tls { tls.clone() } else { None };
        tasks.push(tokio::spawn(accept_loop(
            listener,
            acceptor,
            shared.clone(),
        )));
    }
    wait_true(&mut shutdown).await;
    shared.closer.shut_down();
    for t in &tasks {
        t.abort();
    }
    for t in tasks {
        let _ = t.await;
    }
    // Every open connection of this worker holds a local permit: all of them back means all
    // connections done.
    let max = u32::try_from(cfg.max_connections).unwrap_or(u32::MAX);
    let open = cfg.max_connections - shared.local.available_permits();
    let grace = cfg.shutdown_grace.0;
    if open > 0 {
        tracing::info!(open, "draining connections for up to {grace:?}");
    }
    if tokio::time::timeout(grace, shared.local.acquire_many(max))
        .await
        .is_err()
    {
        tracing::warn!("drain deadline passed; closing the remaining connections");
    }
    ticker.abort();
}

/// What every accept loop and connection shares.
struct Shared {
    proxy: Arc<LiveProxy>,
    /// Bans checked in user space (see [`spawn_workers`]).
    deny: Option<Arc<DenyStore>>,
    /// `[listen] trusted_proxies`.
    trusted: Arc<TrustedProxies>,
    /// `[listen] proxy_protocol`: every connection starts with a PROXY header.
    proxy_protocol: bool,
    /// hyper's settings for both protocols (see [`park`]).
    protocols: Protocols,
    /// Connections of all workers (`max_connections`).
    permits: Arc<Semaphore>,
    /// Connections of this worker, for draining.
    local: Arc<Semaphore>,
    limit: Arc<SourceLimit>,
    handshake_timeout: std::time::Duration,
    /// Blocked writes longer than this close the connection (see [`super::send_timeout`]).
    send_timeout: std::time::Duration,
    shutdown: watch::Receiver<bool>,
    /// This worker's open connections, to close on shutdown or when their source is banned.
    closer: Arc<Closer>,
    /// Every worker's connection count and inbox.
    balance: Arc<Balance>,
    /// This worker's index in `balance`.
    worker: usize,
}

async fn accept_loop(listener: TcpListener, tls: Option<TlsAcceptor>, shared: Arc<Shared>) {
    let mut shutdown = shared.shutdown.clone();
    loop {
        let permit = tokio::select! {
            _ = wait_true(&mut shutdown) => return,
            p = shared.permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let Ok(local) = shared.local.clone().try_acquire_owned() else {
            return;
        };
        let (stream, peer) = tokio::select! {
            _ = wait_true(&mut shutdown) => return,
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
        let _ = stream.set_nodelay(true);
        let Some(to) = shared.balance.pick(shared.worker) else {
            start(stream, peer, tls.clone(), permit, local, &shared);
            continue;
        };
        drop(local);
        let stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(peer = %peer, error = %e, "connection lost before its hand-over");
                continue;
            }
        };
        let handoff = Handoff {
            stream,
            peer,
            tls: tls.is_some(),
            permit,
        };
        if let Err(back) = shared.balance.hand_off(to, handoff) {
            receive(back, &tls, &shared);
        }
    }
}

/// Connections other workers accepted for this one (see [`super::balance`]).
async fn inbox_loop(
    mut inbox: mpsc::UnboundedReceiver<Handoff>,
    tls: Option<TlsAcceptor>,
    shared: Arc<Shared>,
) {
    while let Some(handoff) = inbox.recv().await {
        receive(handoff, &tls, &shared);
    }
}

/// Serves a connection handed over by another worker (or given back by the hand-over).
fn receive(handoff: Handoff, tls: &Option<TlsAcceptor>, shared: &Arc<Shared>) {
    let Handoff {
        stream,
        peer,
        tls: is_tls,
        permit,
    } = handoff;
    // Every worker has the same acceptor; a TLS connection is never served without one.
    let tls = match (is_tls, tls) {
        (false, _) => None,
        (true, Some(acceptor)) => Some(acceptor.clone()),
        (true, None) => {
            tracing::warn!(peer = %peer, "TLS connection handed to a worker without TLS: closed");
            return;
        }
    };
    // Draining: the connection closes, as one not yet accepted would.
    let Ok(local) = shared.local.clone().try_acquire_owned() else {
        return;
    };
    match TcpStream::from_std(stream) {
        Ok(stream) => start(stream, peer, tls, permit, local, shared),
        Err(e) => {
            tracing::warn!(peer = %peer, error = %e, "handed-over connection could not join the runtime")
        }
    }
}

/// Admits an accepted connection (PROXY header, bans, per-source limit) and serves it on a
/// task of its own.
fn start(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<TlsAcceptor>,
    permit: OwnedSemaphorePermit,
    local: OwnedSemaphorePermit,
    shared: &Arc<Shared>,
) {
    let serving = shared.balance.serving(shared.worker);
    let shared = shared.clone();
    if shared.proxy_protocol {
        if !shared.trusted.contains(peer.ip()) {
            tracing::debug!(peer = %peer, "connection refused: not a trusted proxy");
            refused(&shared, peer, "untrusted_proxy");
            return;
        }
        // The header is read on the connection's own task: a slow proxy never holds up
        // the accept loop.
        tokio::spawn(async move {
            let _held = (permit, local, serving);
            let Some((stream, conn, slot)) = proxied(stream, peer, tls.is_some(), &shared).await
            else {
                return;
            };
            let _slot = slot;
            serve_conn(stream, conn, tls, &shared).await;
        });
        return;
    }
    let Some(slot) = admit(&shared, peer) else {
        return;
    };
    let mut conn = ConnInfo::new(peer, tls.is_some());
    conn.trust_forwarded_for = tls.is_none() && shared.trusted.contains(peer.ip());
    tokio::spawn(async move {
        let _held = (permit, local, serving, slot);
        serve_conn(stream, conn, tls, &shared).await;
    });
}

/// A connection closed at accept: counted, and logged (rate-limited) in the access log.
/// `reason` is one of [`crate::metrics::REFUSAL_REASONS`].
fn refused(shared: &Shared, client: SocketAddr, reason: &'static str) {
    let proxy = shared.proxy.peek();
    proxy.metrics().connection_refused(reason);
    if let Some(log) = proxy.access_log() {
        log.conn_event(client, ConnEventKind::Refused(reason));
    }
}

/// The user-space admission of a client: its bans (the data plane drops a banned TCP peer
/// before it gets here; a client named by a proxy, or every client without a data plane,
/// stops here) and its connection limit.
fn admit(shared: &Shared, client: SocketAddr) -> Option<SourceSlot> {
    let proxy = shared.proxy.peek();
    if shared
        .deny
        .as_ref()
        .is_some_and(|d| d.is_denied(client.ip()))
    {
        refused(shared, client, "denied");
        return None;
    }
    let Some(slot) = shared.limit.take(client.ip()) else {
        refused(shared, client, "per_source_limit");
        if let Some(a) = proxy.abuse() {
            a.record(client.ip(), Signal::ConnectionRefused);
        }
        return None;
    };
    Some(slot)
}

/// Reads a trusted proxy's PROXY header (bounded, under the handshake deadline) and admits
/// the client it names; `None`: the connection is closed (no valid header, banned client,
/// limit reached).
async fn proxied(
    mut stream: TcpStream,
    proxy_addr: SocketAddr,
    tls: bool,
    shared: &Shared,
) -> Option<(Prefixed<TcpStream>, ConnInfo, SourceSlot)> {
    let (origin, rest) =
        match proxy_protocol::read_header(&mut stream, shared.handshake_timeout).await {
            Ok(h) => h,
            Err(e) => {
                tracing::debug!(peer = %proxy_addr, error = %e, "connection refused: PROXY header");
                refused(shared, proxy_addr, "proxy_header");
                return None;
            }
        };
    let client = match origin {
        Origin::Client(c) => c,
        Origin::Proxy => proxy_addr,
    };
    let slot = admit(shared, client)?;
    let mut conn = ConnInfo::new(client, tls);
    conn.via = Some(proxy_addr);
    conn.trust_forwarded_for = !tls && shared.trusted.contains(client.ip());
    Some((Prefixed::new(rest, stream), conn, slot))
}

/// TLS (when the listener has it), then HTTP, on an admitted connection.
async fn serve_conn<IO>(io: IO, conn: ConnInfo, tls: Option<TlsAcceptor>, shared: &Shared)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    shared.proxy.peek().metrics().connection_opened();
    // Boxed, the handshake, the stream and the serving: the task's future is as large as
    // its largest state, and a state's locals keep their room in it even once moved from,
    // so the handshake's state or a stream moved on would stay in every connection's task
    // for its whole life (BENCHMARKS.md, memory).
    match tls {
        None => Box::pin(drive(io, Alpn::None, Arc::new(conn), shared)).await,
        Some(acceptor) => {
            if let Some((s, alpn, conn)) = Box::pin(tls_start(acceptor, io, conn, shared)).await {
                Box::pin(drive(s, alpn, conn, shared)).await
            }
        }
    }
    shared.proxy.peek().metrics().connection_closed();
}

/// The TLS handshake, then what it negotiated: the stream (boxed), its ALPN, and the
/// connection's description with its TLS details.
#[allow(clippy::type_complexity)]
async fn tls_start<IO>(
    acceptor: TlsAcceptor,
    io: IO,
    mut conn: ConnInfo,
    shared: &Shared,
) -> Option<(
    Box<tokio_rustls::server::TlsStream<IO>>,
    Alpn,
    Arc<ConnInfo>,
)>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let s = Box::new(handshake(acceptor, io, &conn, shared).await?);
    let info = TlsInfo::of(s.get_ref().1);
    let alpn = Alpn::of(info.alpn);
    conn.tls = Some(info);
    Some((s, alpn, Arc::new(conn)))
}

/// The TLS handshake under its deadline; failures are counted by reason, logged in the
/// access log (rate-limited) and reported to the abuse engine.
async fn handshake<IO>(
    acceptor: TlsAcceptor,
    stream: IO,
    conn: &ConnInfo,
    shared: &Shared,
) -> Option<tokio_rustls::server::TlsStream<IO>>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let outcome = tokio::time::timeout(shared.handshake_timeout, acceptor.accept(stream)).await;
    let reason = match outcome {
        Ok(Ok(s)) => {
            shared.proxy.peek().metrics().tls_handshake(true);
            return Some(s);
        }
        Ok(Err(e)) => {
            tracing::debug!(peer = %conn.peer, error = %e, "TLS handshake failed");
            HandshakeFailure::of(&e)
        }
        Err(_) => {
            tracing::debug!(peer = %conn.peer, "TLS handshake timed out");
            HandshakeFailure::Timeout
        }
    };
    let proxy = shared.proxy.peek();
    proxy.metrics().tls_handshake_failed(reason);
    if let Some(log) = proxy.access_log() {
        log.conn_event(conn.peer, ConnEventKind::HandshakeFailed(reason));
    }
    if let Some(a) = proxy.abuse() {
        a.record(conn.peer.ip(), Signal::TlsFailure);
    }
    None
}

/// Serves HTTP on one connection until it ends; on shutdown, when its source gets banned,
/// or when it has gone quiet, it finishes the requests in flight and closes.
async fn drive<I>(io: I, alpn: Alpn, conn: Arc<ConnInfo>, shared: &Shared)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let proxy = shared.proxy.clone();
    let verdicts = Arc::new(Verdicts::default());
    let peer = conn.peer;
    conn.activity.start();
    let registration = shared.closer.register(&conn);
    let watched = FramingWatch::new(SendTimeout::new(io, shared.send_timeout), verdicts.clone());
    let deny = shared.deny.clone();
    let trusted = shared.trusted.clone();
    let service = service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        // One verdict per HTTP/1 request head, taken in order (HTTP/2 has none).
        let ambiguous = req.version() < hyper::Version::HTTP_2 && verdicts.next_is_ambiguous();
        if conn.trust_forwarded_for {
            if let Some(ip) = trusted.forwarded_client(req.headers()) {
                let banned = deny.as_ref().is_some_and(|d| d.is_denied(ip));
                req.extensions_mut().insert(ForwardedClient { ip, banned });
            }
        }
        // The proxy of this request, kept to its end (see [`LiveProxy`]). Boxed: hyper
        // keeps a slot for the request's future (a few KiB) for as long as an HTTP/1
        // connection lives, idle or not; boxed, the slot is a pointer and the future's
        // memory goes with the response (BENCHMARKS.md, memory). HTTP/2 runs each request
        // in a task of its own, and spawning moves the future several times: boxed, only a
        // pointer moves.
        Box::pin(Proxy::handle(proxy.current(), conn.clone(), req, ambiguous))
    });
    park::serve(
        watched,
        alpn,
        service,
        &shared.protocols,
        &registration,
        peer,
    )
    .await;
}

#[cfg(test)]
mod tests;
