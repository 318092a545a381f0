//! What the subcommands share: finding the pinned maps, exit statuses, logging setup.

use crate::config::{ebpf::DEFAULT_PIN_PATH, Config};
use crate::ebpf::PinnedMaps;
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

/// Exit status for bad input or configuration (clap uses 2 for usage errors too).
pub const EXIT_USAGE: u8 = 2;
/// Exit status for a failure while doing what was asked.
pub const EXIT_FAILURE: u8 = 1;

/// Where to find the pinned maps: `--pin-path`, else the config's `[ebpf] pin_path`, else
/// the default.
#[derive(Debug, Args)]
pub struct MapsArgs {
    /// Config file whose [ebpf] pin_path to use.
    #[arg(long, value_name = "FILE", conflicts_with = "pin_path")]
    pub config: Option<PathBuf>,
    /// Directory (on bpffs) where the gateway pinned its maps.
    #[arg(long, value_name = "DIR")]
    pub pin_path: Option<PathBuf>,
}

impl MapsArgs {
    pub fn resolve(&self) -> Result<PathBuf, String> {
        if let Some(p) = &self.pin_path {
            return Ok(p.clone());
        }
        if let Some(file) = &self.config {
            let cfg = Config::load(file).map_err(|e| e.to_string())?;
            return Ok(cfg
                .ebpf
                .map(|e| e.pin_path)
                .unwrap_or_else(|| PathBuf::from(DEFAULT_PIN_PATH)));
        }
        Ok(PathBuf::from(DEFAULT_PIN_PATH))
    }

    /// Opens the maps, or prints one line saying why not.
    pub fn open(&self) -> Result<PinnedMaps, ExitCode> {
        let dir = self.resolve().map_err(|e| fail(EXIT_USAGE, e))?;
        PinnedMaps::open(&dir).map_err(|e| fail(EXIT_FAILURE, e))
    }
}

/// Prints `gateway: <message>` on one line to stderr and returns the exit status.
pub fn fail(code: u8, message: impl std::fmt::Display) -> ExitCode {
    let text = message.to_string();
    eprintln!("gateway: {}", text.trim_end());
    ExitCode::from(code)
}

/// Writes `text` to stdout. A reader that went away (`gateway stats | head`) ends the command
/// quietly instead of a panic.
pub fn emit(text: &str) -> Result<(), ExitCode> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(ExitCode::SUCCESS),
        Err(e) => Err(fail(EXIT_FAILURE, format!("cannot write output: {e}"))),
    }
}

/// A duration for humans: `3m12s`, `45s`, `900ms`.
pub fn human_duration(d: std::time::Duration) -> String {
    let secs = d.as_secs();
    if secs == 0 {
        return format!("{}ms", d.subsec_millis());
    }
    let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
    match (h, m) {
        (0, 0) => format!("{s}s"),
        (0, _) => format!("{m}m{s:02}s"),
        _ => format!("{h}h{m:02}m{s:02}s"),
    }
}
