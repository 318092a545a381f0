//! The kernel programs' own log lines (aya-log's `AYA_LOGS` ring buffer), forwarded into
//! `tracing` under the target [`TARGET`], so `RUST_LOG` filters them like any other line.
//!
//! The kernel side only builds a line when its level is on: the level is fixed when the
//! object is loaded ([`level_for_tracing`]), so turning the lines on or off takes a restart.

use aya::Ebpf;
use aya_log::EbpfLogger;
use tokio::io::unix::AsyncFd;

/// The `tracing` target of every kernel line.
pub const TARGET: &str = "gateway::ebpf";

/// The kernel log level (aya-log's `AYA_LOG_LEVEL`): 0 is off, 1 error ... 5 trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelLevel(pub u8);

impl KernelLevel {
    pub const OFF: Self = Self(0);
    pub const INFO: Self = Self(aya_log::Level::Info as u8);
    pub const DEBUG: Self = Self(aya_log::Level::Debug as u8);
}

/// The finest level the installed `tracing` filter lets through for [`TARGET`].
pub fn level_for_tracing() -> KernelLevel {
    use tracing::Level;
    if tracing::enabled!(target: "gateway::ebpf", Level::TRACE) {
        KernelLevel(aya_log::Level::Trace as u8)
    } else if tracing::enabled!(target: "gateway::ebpf", Level::DEBUG) {
        KernelLevel::DEBUG
    } else if tracing::enabled!(target: "gateway::ebpf", Level::INFO) {
        KernelLevel::INFO
    } else if tracing::enabled!(target: "gateway::ebpf", Level::WARN) {
        KernelLevel(aya_log::Level::Warn as u8)
    } else if tracing::enabled!(target: "gateway::ebpf", Level::ERROR) {
        KernelLevel(aya_log::Level::Error as u8)
    } else {
        KernelLevel::OFF
    }
}

/// Hands aya-log's records to `tracing`.
pub struct ToTracing;

impl log::Log for ToTracing {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let msg = record.args();
        match record.level() {
            log::Level::Error => tracing::error!(target: "gateway::ebpf", "{msg}"),
            log::Level::Warn => tracing::warn!(target: "gateway::ebpf", "{msg}"),
            log::Level::Info => tracing::info!(target: "gateway::ebpf", "{msg}"),
            log::Level::Debug => tracing::debug!(target: "gateway::ebpf", "{msg}"),
            log::Level::Trace => tracing::trace!(target: "gateway::ebpf", "{msg}"),
        }
    }

    fn flush(&self) {}
}

/// The reader of the kernel's log ring buffer, taken from the loaded object.
pub type KernelLogger<L = ToTracing> = EbpfLogger<L>;

/// Takes the log ring buffer out of `ebpf`; an object without one (built before the kernel
/// logged) is warned about, not refused.
pub fn take<L: log::Log>(ebpf: &mut Ebpf, logger: L) -> Option<KernelLogger<L>> {
    match EbpfLogger::init_with_logger(ebpf, logger) {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::warn!(error = %e, "the kernel programs' log lines are not available");
            None
        }
    }
}

/// Forwards lines as they arrive, until the ring buffer fails.
#[allow(unsafe_code)]
pub async fn forward<L: log::Log>(logger: KernelLogger<L>) -> std::io::Result<()> {
    // SAFETY: the logger owns its ring buffer's map fd for as long as the `AsyncFd` owns the
    // logger, and nothing closes or replaces it meanwhile.
    let mut fd = unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)? };
    loop {
        let mut guard = fd.readable_mut().await?;
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}
