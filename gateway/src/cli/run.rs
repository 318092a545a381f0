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
use super::reload::{self, Proxies, RunningProxy};
use crate::abuse::AbuseEngine;
use crate::admin;
use crate::config::{Config, DataPlaneMode, Issue, Plan};
use crate::deny::{DenyError, DenyStore};
use crate::ebpf::{events, DataPlane, MapsError, PinnedMaps};
use crate::keys::KeyError;
use crate::metrics::Metrics;
use crate::proxy::server::{self, Listeners, ServerError};
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
async fn serve(config_path: &Path, mut config: Arc<Plan>) -> ExitCode {
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
    let mut abuse = config
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
    if let Some(log) = plane.as_mut().and_then(DataPlane::take_log) {
        tokio::spawn(async move {
            if let Err(e) = crate::ebpf::kernel_log::forward(log).await {
                tracing::error!(error = %e, "kernel log reader stopped");
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
    let mut running_proxy = None;
    let mut admin_task = None;
    let ready = Arc::new(AtomicBool::new(false));
    let mut metrics = None;
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
                info.proxy = started.running.workers().last().cloned();
                running_proxy = Some(started.running);
                metrics = Some(started.metrics);
                info.listeners = started.listeners;
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
                if let Some(w) = running_proxy.as_ref().and_then(RunningProxy::access_writer) {
                    w.reopen();
                }
            }
            _ = hup.recv() => {
                notify.reloading();
                let running = reload::Running {
                    plan: &mut config,
                    plane: plane.as_mut(),
                    proxy: running_proxy.as_mut(),
                    abuse: &mut abuse,
                    deny: &deny,
                    fleet: fleet.as_mut(),
                };
                reload::reload(config_path, running).await;
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
    if let Some(w) = running_proxy
        .as_mut()
        .and_then(RunningProxy::take_access_writer)
    {
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
    /// What a reload replaces.
    running: RunningProxy,
    metrics: Arc<Metrics>,
    /// Bound proxy listeners (address, TLS), for the dashboard.
    listeners: Vec<(std::net::SocketAddr, bool)>,
}

/// Keys, verifier, upstreams, listeners and TLS; errors name what failed.
async fn start_proxy(
    config: &Arc<Plan>,
    abuse: Option<Arc<AbuseEngine>>,
    deny: Arc<DenyStore>,
    shutdown: watch::Receiver<bool>,
) -> Result<StartedProxy, StartError> {
    let listen = config.listen.clone().unwrap_or_default();
    // Each proxy registers the series of its routes and upstreams (`Metrics::series`).
    let metrics = Arc::new(Metrics::new(&[], &[]));

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
    if let Some(a) = &abuse {
        metrics.set_abuse(Some(a.clone()));
    }
    let workers = match config.runtime.worker_threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    crate::proxy::fd_limit::raise_and_check(crate::proxy::fd_limit::needed(config, workers));
    // Keys and verifier, only when some route checks tokens; JWKS URLs are fetched once
    // before the proxy serves.
    let access = crate::access_log::start(&config.log, metrics.access_log_dropped())?;
    let mut built = Proxies::build(
        config,
        &metrics,
        abuse.as_ref(),
        access.as_ref().map(|(log, _)| log),
        workers,
        None,
    )?;
    let (fetched, failed) = built.fetch_jwks().await;
    for problem in failed {
        tracing::warn!("{problem}; retrying in the background");
    }
    let running = RunningProxy::start(built, fetched, metrics.clone(), certs, access);
    let listeners = Listeners::bind(&listen, workers)?;
    let bound = listeners.local_addrs();
    for &(addr, tls) in &bound {
        let scheme = if tls { "https" } else { "http" };
        tracing::info!(target: "gateway", %addr, tls, "proxy listening on {scheme}://{addr}");
    }
    let threads = server::spawn_workers(
        running.workers().to_vec(),
        listeners,
        acceptor,
        &listen,
        Some(deny),
        shutdown,
    )
    .map_err(StartError::Workers)?;
    // One task that ends when every worker has drained and stopped.
    let task = tokio::task::spawn_blocking(move || {
        for t in threads {
            let _ = t.join();
        }
    });
    Ok(StartedProxy {
        task,
        running,
        metrics,
        listeners: bound,
    })
}

/// The kernel's SYN buckets count IPv6 sources by `[abuse] ipv6_prefix`, as the abuse
/// engine does (the `[ebpf]` section alone writes the default). A restart applies a change.
pub(super) fn apply_ipv6_prefix(maps: &mut PinnedMaps, config: &Plan) -> Result<(), MapsError> {
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
pub(super) enum StartError {
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
