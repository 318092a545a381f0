//! `gateway run`: start what the config asks for and run until SIGINT/SIGTERM.
//!
//! With only an `[ebpf]` section the gateway runs the data plane alone, for hosts where
//! another proxy serves the traffic. SIGHUP re-reads the config and applies what can change
//! live (rates, ports, enforce, allow and deny lists).

use super::common::{fail, init_tracing, EXIT_FAILURE, EXIT_USAGE};
use crate::config::{Config, DataPlaneMode, EbpfConfig};
use crate::ebpf::{clock, events, DataPlane, PinnedMaps};
use clap::Args;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};

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
    init_tracing();
    let config = match Config::load(&args.config) {
        Ok(c) => c,
        Err(e) => return fail(EXIT_USAGE, e),
    };
    let Some(ebpf) = config.ebpf.filter(|e| e.mode != DataPlaneMode::Off) else {
        return fail(
            EXIT_USAGE,
            format!(
                "{}: nothing to run: the config has no [ebpf] section with a mode other than \"off\"",
                args.config.display()
            ),
        );
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("gateway")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(EXIT_FAILURE, format!("cannot start the runtime: {e}")),
    };
    runtime.block_on(serve(&args.config, ebpf))
}

async fn serve(config_path: &Path, ebpf: EbpfConfig) -> ExitCode {
    // Handlers first, so a signal that arrives during start-up is not lost.
    let (mut term, mut int, mut hup) = match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
        signal(SignalKind::hangup()),
    ) {
        (Ok(t), Ok(i), Ok(h)) => (t, i, h),
        _ => return fail(EXIT_FAILURE, "cannot install signal handlers"),
    };
    let mut plane = match DataPlane::start(&ebpf) {
        Ok(p) => p,
        Err(e) => return fail(EXIT_FAILURE, e),
    };
    if let Some(ring) = plane.take_events() {
        tokio::spawn(async move {
            if let Err(e) = events::consume(ring, events::log_event).await {
                tracing::error!(error = %e, "rate-limit event reader stopped");
            }
        });
    }
    eprintln!(
        "gateway: data plane running on {} ({}), maps pinned at {}; `gateway stats --pin-path {}` shows counters",
        plane.interface(),
        plane.mode(),
        ebpf.pin_path.display(),
        ebpf.pin_path.display()
    );
    let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => reload(config_path, &ebpf, plane.maps()),
            _ = sweep.tick() => {
                if let Err(e) = sweep_expired(plane.maps()) {
                    tracing::warn!(error = %e, "removing expired deny entries failed");
                }
            }
        }
    }
    tracing::info!("signal received, stopping");
    drop(plane);
    ExitCode::SUCCESS
}

/// Applies a changed `[ebpf]` section; what needs a re-attach is refused with a log line.
fn reload(path: &Path, running: &EbpfConfig, maps: &mut PinnedMaps) {
    let new = match Config::load(path) {
        Ok(c) => c.ebpf.unwrap_or_default(),
        Err(e) => {
            tracing::error!(error = %e, "reload refused: config is invalid; keeping the running one");
            return;
        }
    };
    if new.interface != running.interface
        || new.mode != running.mode
        || new.pin_path != running.pin_path
    {
        tracing::error!("reload refused: interface, mode and pin_path change only with a restart");
        return;
    }
    let applied = (|| -> Result<(), String> {
        let kernel = new.to_kernel().map_err(|i| i.message)?;
        let allow = new.allow_nets().map_err(|i| i.message)?;
        let deny = new.deny_targets().map_err(|i| i.message)?;
        maps.write_config(&kernel).map_err(|e| e.to_string())?;
        maps.replace_allow(&allow).map_err(|e| e.to_string())?;
        maps.sync_config_denies(&deny).map_err(|e| e.to_string())
    })();
    match applied {
        Ok(()) => tracing::info!("config reloaded"),
        Err(e) => tracing::error!(error = %e, "reload failed"),
    }
}

/// Removes deny entries whose TTL has passed.
fn sweep_expired(maps: &mut PinnedMaps) -> Result<(), crate::ebpf::MapsError> {
    let now = clock::monotonic_ns();
    for record in maps.deny_list()? {
        if !record.expired(now) {
            continue;
        }
        // Re-read: a `deny add` may have renewed it since the listing.
        if let Some(current) = maps.find_deny(&record.target)? {
            if current.expires_ns != 0 && current.expires_ns <= now {
                maps.undeny(&record.target)?;
                tracing::info!(target = %record.target, "deny entry expired");
            }
        }
    }
    Ok(())
}
