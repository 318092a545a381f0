//! `gateway run`: start what the config asks for and run until SIGINT/SIGTERM.
//!
//! Start order: a check that the listen addresses are free → data plane → keys and verifier
//! → TLS → listeners → admin; each step fails start-up with what went wrong. With only an
//! `[ebpf]` section the gateway runs the data plane alone, for hosts where another proxy
//! serves the traffic. SIGHUP re-reads the config
//! and applies what can change live. SIGTERM/SIGINT stop accepting, drain in-flight
//! requests up to `[listen] shutdown_grace`, then detach the programs. Under systemd
//! (`Type=notify`) each of these steps is reported on `$NOTIFY_SOCKET` ([`Notifier`]).

use super::common::{fail, EXIT_FAILURE, EXIT_USAGE};
use super::notify::Notifier;
use crate::abuse::AbuseEngine;
use crate::admin;
use crate::config::{Config, DataPlaneMode, Issue, Plan};
use crate::deny::{DenyError, DenyStore};
use crate::ebpf::{events, DataPlane, MapsError, PinnedMaps};
use crate::jwt::{Verifier, VerifierConfig, DEFAULT_ISSUER};
use crate::keys::{JwksSource, KeyError, KeyStore};
use crate::metrics::Metrics;
use crate::proxy::server::{self, Listeners, ServerError};
use crate::proxy::Proxy;
use crate::tls::{self, CertStore, TlsError};
use clap::Args;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

pub const DEFAULT_CONFIG: &str = "/etc/gateway/gateway.toml";

/// How often expired deny entries are removed from the maps (the kernel already ignores them).
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Configuration file (TOML).
    #[arg(long, short, value_name = "FILE", default_value = DEFAULT_CONFIG)]
    config: PathBuf,
}

pub fn run(args: RunArgs) -> ExitCode {
    // The log format comes from the config: until it is read, errors are plain
    // `gateway: ...` lines (as every command's are).
    let config = match Config::load(&args.config) {
        Ok(c) => Arc::new(c),
        Err(e) => return fail(EXIT_USAGE, e),
    };
    super::logging::init(config.log.format);
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
    // A config that starts nothing is refused by `Config::load`.
    // The main runtime runs signals, the admin endpoint, key refreshes and the data plane's
    // housekeeping; the proxy has worker threads of its own (`[runtime] worker_threads`).
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("gateway")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(EXIT_FAILURE, format!("cannot start the runtime: {e}")),
    };
    runtime.block_on(serve(&args.config, config))
}

/// Everything started for one `gateway run`, stopped in reverse order.
async fn serve(config_path: &Path, config: Arc<Plan>) -> ExitCode {
    // Handlers first, so a signal that arrives during start-up is not lost.
    let (mut term, mut int, mut hup) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) {
        (Ok(t), Ok(i), Ok(h)) => (t, i, h),
        _ => return fail(EXIT_FAILURE, "cannot install signal handlers"),
    };
    // SIGUSR1: reopen the access log (logrotate).
    let Ok(mut usr1) = signal(SignalKind::user_defined1()) else {
        return fail(EXIT_FAILURE, "cannot install signal handlers");
    };

    // A second gateway on the same addresses stops here, before it touches the data plane.
    if let Some(listen) = &config.listen {
        if let Err(e) = server::check_addresses_free(listen) {
            return fail(EXIT_FAILURE, e);
        }
    }
    let ebpf = config.ebpf.clone().filter(|e| e.mode != DataPlaneMode::Off);
    let mut plane = match &ebpf {
        Some(cfg) => match DataPlane::start(cfg) {
            Ok(p) => Some(p),
            Err(e) => return fail(EXIT_FAILURE, e),
        },
        None => None,
    };
    if let Some(p) = plane.as_mut() {
        if let Err(e) = apply_ipv6_prefix(p.maps(), &config) {
            return fail(EXIT_FAILURE, e);
        }
    }
    // The deny list: the data plane's maps (when it runs) and the durable state file. At
    // start, bans still in force come back from the file (after a reboot the pins are gone).
    let protected = crate::deny::Protected::from_config(&config).await;
    let deny = match open_deny_store(&config, plane.is_some(), &protected) {
        Ok(d) => d,
        Err(e) => return fail(EXIT_FAILURE, e),
    };
    deny.persist_in_background();
    // The fleet: bans made here travel through Redis, bans made elsewhere arrive; Redis
    // being away at start (or later) only delays them.
    let fleet = match &config.fleet {
        Some(cfg) => {
            let cursor = config
                .ebpf
                .as_ref()
                .map(|e| crate::deny::StateFile::beside(&e.state_file, "fleet-cursor"));
            match crate::fleet::Fleet::start(cfg, deny.clone(), cursor) {
                Ok(f) => Some(f),
                Err(e) => return fail(EXIT_FAILURE, e),
            }
        }
        None => None,
    };
    let abuse = config
        .abuse
        .as_ref()
        .map(|cfg| Arc::new(AbuseEngine::new(cfg, deny.clone())));
    let mut fleet = fleet;
    if let (Some(f), Some(a)) = (fleet.as_mut(), &abuse) {
        f.count_for(a.clone());
    }
    // SYN rate-limit trips are logged, never fed to the abuse engine: their source address
    // can be forged (the kernel keeps limiting the SYNs themselves).
    if let Some(ring) = plane.as_mut().and_then(DataPlane::take_events) {
        tokio::spawn(async move {
            if let Err(e) = events::consume(ring, events::log_event).await {
                tracing::error!(error = %e, "rate-limit event reader stopped");
            }
        });
    }
    if let (Some(p), Some(cfg)) = (&plane, &ebpf) {
        tracing::info!(
            target: "gateway",
            interface = p.interface(),
            mode = %p.mode(),
            pin_path = %cfg.pin_path.display(),
            "data plane running on {} ({}), maps pinned at {}; `gateway stats --pin-path {}` shows counters",
            p.interface(),
            p.mode(),
            cfg.pin_path.display(),
            cfg.pin_path.display()
        );
    }

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let mut proxy_task = None;
    let mut certs = None;
    let mut admin_task = None;
    let ready = Arc::new(AtomicBool::new(false));
    let mut metrics = None;
    let mut access_log = None;
    let mut info = admin::stats_json::GatewayInfo::default();
    if let (Some(p), Some(cfg)) = (&plane, &ebpf) {
        info.data_plane = Some(admin::stats_json::DataPlaneInfo {
            mode: p.mode().to_string(),
            interface: p.interface().to_owned(),
            pin_path: cfg.pin_path.clone(),
        });
    }
    if config.has_proxy() {
        match start_proxy(&config, abuse.clone(), deny.clone(), shutdown_rx.clone()).await {
            Ok(started) => {
                proxy_task = Some(started.task);
                access_log = started.access_log;
                certs = started.certs;
                metrics = Some(started.metrics);
                info.listeners = started.listeners;
                info.upstreams = started.upstreams;
            }
            Err(e) => return fail(EXIT_FAILURE, e),
        }
    }
    if let Some(admin_cfg) = &config.admin {
        let m = metrics
            .clone()
            .unwrap_or_else(|| Arc::new(Metrics::new(&[], &[])));
        if let Some(cfg) = &ebpf {
            m.set_pin_path(cfg.pin_path.clone());
        }
        if let Some(f) = &fleet {
            m.set_fleet(f.stats());
        }
        match admin::bind(admin_cfg).await {
            Ok(listener) => {
                let addr = listener.local_addr();
                tracing::info!(target: "gateway", %addr, "admin endpoint on http://{addr}");
                let mut rx = shutdown_rx.clone();
                let stop = async move {
                    while !*rx.borrow() {
                        if rx.changed().await.is_err() {
                            break;
                        }
                    }
                };
                if let Some(path) = listener.socket_path() {
                    let path = path.display();
                    tracing::info!(target: "gateway", socket = %path, "admin endpoint on unix:{path}");
                }
                // A deny acts through the data plane, or the proxy's user-space check.
                let enforced = plane.is_some() || config.has_proxy();
                if !enforced {
                    tracing::warn!(
                        "deny entries made through the admin endpoint are not enforced: no \
                         data plane and no proxy run in this gateway"
                    );
                }
                let listener = listener.with_deny(deny.clone(), enforced).with_info(info);
                admin_task = Some(tokio::spawn(listener.serve(m, ready.clone(), stop)));
            }
            Err(e) => return fail(EXIT_FAILURE, e),
        }
    }
    ready.store(true, Ordering::Relaxed);
    let notify = Notifier::from_env();
    notify.ready();

    let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = usr1.recv() => {
                if let Some(w) = &access_log {
                    w.reopen();
                }
            }
            _ = hup.recv() => {
                notify.reloading();
                reload(config_path, &config, plane.as_mut(), certs.as_deref());
                notify.ready();
            }
            _ = sweep.tick() => {
                // Blocking (map syscalls, paced): off this runtime, which also serves the
                // admin endpoint and the event reader.
                let d = deny.clone();
                match tokio::task::spawn_blocking(move || d.sweep()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "removing expired deny entries failed"),
                    Err(e) => tracing::warn!(error = %e, "the deny sweep stopped"),
                }
            }
        }
    }
    tracing::info!("signal received, stopping");
    notify.stopping();
    ready.store(false, Ordering::Relaxed);
    let _ = shutdown_tx.send(true);
    if let Some(t) = proxy_task {
        let _ = t.await;
    }
    // The workers are done: what they logged is queued; write it.
    if let Some(w) = access_log {
        w.finish();
    }
    if let Some(t) = admin_task {
        let _ = t.await;
    }
    drop(fleet);
    deny.flush();
    drop(plane);
    ExitCode::SUCCESS
}

/// The running proxy's handles.
struct StartedProxy {
    task: tokio::task::JoinHandle<()>,
    certs: Option<Arc<CertStore>>,
    metrics: Arc<Metrics>,
    /// The access log's writer (SIGUSR1 reopens its file), when the log is on.
    access_log: Option<crate::access_log::Writer>,
    /// Bound proxy listeners (address, TLS) and the upstream pools, for the dashboard.
    listeners: Vec<(std::net::SocketAddr, bool)>,
    upstreams: Vec<Arc<crate::proxy::upstream::Upstream>>,
}

/// Keys, verifier, upstreams, listeners and TLS; errors name what failed.
async fn start_proxy(
    config: &Arc<Plan>,
    abuse: Option<Arc<AbuseEngine>>,
    deny: Arc<DenyStore>,
    shutdown: watch::Receiver<bool>,
) -> Result<StartedProxy, StartError> {
    let listen = config.listen.clone().unwrap_or_default();
    let route_names: Vec<String> = config.routes().iter().map(|r| r.name.clone()).collect();
    let upstream_names: Vec<String> = config.upstreams().iter().map(|u| u.name.clone()).collect();
    let servers: Vec<Vec<std::net::SocketAddr>> = config
        .upstreams()
        .iter()
        .map(|u| u.servers.clone())
        .collect();
    let metrics = Arc::new(Metrics::with_servers(
        &route_names,
        &upstream_names,
        &servers,
    ));

    // Keys and verifier, only when some route checks tokens; JWKS URLs are fetched once
    // before the proxy serves.
    let mut jwks = Vec::new();
    let mut proxy = Proxy::new(
        config,
        |jwt| start_verifier(jwt, &metrics, &mut jwks),
        metrics.clone(),
    )?;
    for (issuer, source) in jwks {
        let delay = match source.refresh().await {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(url = source.url(), error = %e, "first JWKS fetch failed; retrying in the background");
                std::time::Duration::from_secs(5)
            }
        };
        source.spawn(delay);
        metrics.add_jwks_source(&issuer, source);
    }
    if let Some(cfg) = config
        .ebpf
        .as_ref()
        .filter(|e| e.mode != DataPlaneMode::Off)
    {
        metrics.set_pin_path(cfg.pin_path.clone());
    }

    let (acceptor, certs) = match &config.tls {
        Some(tls_cfg) if !listen.https.is_empty() => {
            let store = Arc::new(CertStore::load(&tls_cfg.certificates)?);
            let server = tls::server_config(tls_cfg, store.clone())?;
            (Some(TlsAcceptor::from(Arc::new(server))), Some(store))
        }
        _ => (None, None),
    };
    if let Some(a) = abuse {
        metrics.set_abuse(a.clone());
        proxy = proxy.with_abuse(a);
    }
    let access_log = match crate::access_log::start(&config.log, metrics.access_log_dropped())? {
        Some((log, writer)) => {
            proxy = proxy.with_access_log(log);
            Some(writer)
        }
        None => None,
    };
    for (u, cfg) in proxy.upstreams().iter().zip(config.upstreams()) {
        if let Some(hc) = &cfg.health_check {
            tokio::spawn(
                u.clone()
                    .health_checks(hc.path.clone(), hc.interval.0, hc.timeout.0),
            );
        }
    }
    let workers = match config.runtime.worker_threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    crate::proxy::fd_limit::raise_and_check(crate::proxy::fd_limit::needed(config, workers));
    let listeners = Listeners::bind(&listen, workers)?;
    let bound = listeners.local_addrs();
    let upstreams = proxy.upstreams().to_vec();
    for &(addr, tls) in &bound {
        let scheme = if tls { "https" } else { "http" };
        tracing::info!(target: "gateway", %addr, tls, "proxy listening on {scheme}://{addr}");
    }
    let mut proxies = Vec::with_capacity(workers);
    for _ in 1..workers {
        proxies.push(Arc::new(proxy.for_worker()));
    }
    proxies.push(Arc::new(proxy));
    let threads =
        server::spawn_workers(proxies, listeners, acceptor, &listen, Some(deny), shutdown)
            .map_err(StartError::Workers)?;
    // One task that ends when every worker has drained and stopped.
    let task = tokio::task::spawn_blocking(move || {
        for t in threads {
            let _ = t.join();
        }
    });
    Ok(StartedProxy {
        task,
        certs,
        metrics,
        access_log,
        listeners: bound,
        upstreams,
    })
}

/// The key store and verifier for `[jwt]`: file sources are loaded now, JWKS URL sources are
/// handed back in `jwks` to be fetched and spawned.
fn start_verifier(
    jwt: &VerifierConfig,
    metrics: &Metrics,
    jwks: &mut Vec<(String, JwksSource)>,
) -> Result<Arc<Verifier>, StartError> {
    let (store, urls) = KeyStore::from_config(&jwt.keys)?;
    let (v, named_urls) = Verifier::load(jwt.clone(), store)?;
    jwks.extend(urls.into_iter().map(|s| (DEFAULT_ISSUER.to_owned(), s)));
    jwks.extend(named_urls);
    let v = Arc::new(v);
    metrics.set_verifier(v.clone());
    Ok(v)
}

/// SIGHUP: re-reads the config and applies what can change live: certificate and key files
/// (new handshakes use them; open connections keep theirs) and the data plane's rates,
/// ports and lists. What needs a restart is refused with a log line.
fn reload(path: &Path, running: &Plan, plane: Option<&mut DataPlane>, certs: Option<&CertStore>) {
    let new = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "reload refused: config is invalid; keeping the running one");
            return;
        }
    };
    if let (Some(store), Some(tls)) = (certs, &new.tls) {
        match store.reload(&tls.certificates) {
            Ok(()) => tracing::info!("certificates reloaded"),
            Err(e) => {
                tracing::error!(error = %e, "certificate reload failed; keeping the current ones")
            }
        }
    }
    let (Some(plane), Some(old)) = (plane, running.ebpf.as_ref()) else {
        return;
    };
    let new = new.ebpf.unwrap_or_default();
    if new.interface != old.interface || new.mode != old.mode || new.pin_path != old.pin_path {
        tracing::error!(
            "data plane reload refused: interface, mode and pin_path change only with a restart"
        );
        return;
    }
    let maps = plane.maps();
    let applied = (|| -> Result<(), StartError> {
        let kernel = new.to_kernel()?;
        let allow = new.allow_nets()?;
        let deny = new.deny_targets()?;
        maps.write_config(&kernel)?;
        apply_ipv6_prefix(maps, running)?;
        maps.replace_allow(&allow)?;
        Ok(maps.sync_config_denies(&deny)?)
    })();
    match applied {
        Ok(()) => tracing::info!("data plane config reloaded"),
        Err(e) => tracing::error!(error = %e, "data plane reload failed"),
    }
}

/// The kernel's SYN buckets count IPv6 sources by `[abuse] ipv6_prefix`, as the abuse
/// engine does (the `[ebpf]` section alone writes the default). A restart applies a change.
fn apply_ipv6_prefix(maps: &mut PinnedMaps, config: &Plan) -> Result<(), MapsError> {
    let prefix = config.abuse.as_ref().map_or(
        crate::config::abuse::AbuseConfig::default().ipv6_prefix,
        |a| a.ipv6_prefix,
    );
    let mut kernel = maps.read_config()?;
    kernel.ipv6_prefix = u32::from(prefix);
    maps.write_config(&kernel)
}

/// The deny store of this gateway: its own handle on the pinned maps (when the data plane
/// runs), the state file of `[ebpf]` (when configured), the config's allow list and the
/// other addresses no ban may cover.
fn open_deny_store(
    config: &Plan,
    data_plane: bool,
    protected: &crate::deny::Protected,
) -> Result<Arc<DenyStore>, StartError> {
    let ebpf = config.ebpf.as_ref();
    let maps = match ebpf.filter(|_| data_plane) {
        Some(cfg) => Some(PinnedMaps::open(&cfg.pin_path)?),
        None => None,
    };
    let allow = match ebpf {
        Some(cfg) => cfg.allow_nets()?,
        None => Vec::new(),
    };
    let store =
        DenyStore::new(maps, ebpf.map(|e| e.state_file.clone()), allow).with_protected(protected);
    match store.restore() {
        Ok(0) => {}
        Ok(n) => tracing::info!(restored = n, "deny entries restored from the state file"),
        Err(e) => return Err(e.into()),
    }
    Ok(Arc::new(store))
}

/// Why the proxy, the deny store or a data plane reload could not start. The messages are
/// the underlying errors' own (they name the file, key or address at fault).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
enum StartError {
    #[error("{}", .0.message)]
    Config(Issue),
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error(transparent)]
    Verifier(#[from] crate::jwt::ConfigError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Listen(#[from] ServerError),
    #[error("cannot start the proxy workers: {0}")]
    Workers(#[source] std::io::Error),
    #[error(transparent)]
    Maps(#[from] MapsError),
    #[error(transparent)]
    Deny(#[from] DenyError),
    #[error(transparent)]
    AccessLog(#[from] crate::access_log::AccessLogError),
}

impl From<Issue> for StartError {
    fn from(i: Issue) -> Self {
        StartError::Config(i)
    }
}
