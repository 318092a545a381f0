//! The real gateway binary, as a CLI and as a running process.

use anyhow::{bail, Context, Result};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// The binary under test: `$GATEWAY_BIN` (set by `cargo xtask test`), else the workspace's
/// `target/debug/gateway`.
pub fn bin() -> PathBuf {
    if let Some(p) = std::env::var_os("GATEWAY_BIN") {
        return PathBuf::from(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/gateway");
    assert!(
        p.exists(),
        "gateway binary not found at {}: build it with `cargo xtask build` or set GATEWAY_BIN",
        p.display()
    );
    p
}

/// Runs `gateway ARGS...` to completion.
pub fn cli(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run the gateway binary")
}

/// `gateway ARGS...` must succeed; returns its stdout.
pub fn cli_ok(args: &[&str]) -> String {
    let out = cli(args);
    assert!(
        out.status.success(),
        "gateway {args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `gateway stats --json` for a pin path.
pub fn stats(pin_path: &Path) -> serde_json::Value {
    let out = cli_ok(&[
        "stats",
        "--json",
        "--top",
        "100",
        "--pin-path",
        &pin_path.to_string_lossy(),
    ]);
    serde_json::from_str(&out).expect("stats --json is JSON")
}

/// The `top_sources` entry for `addr` in a stats document.
pub fn source_stats<'a>(stats: &'a serde_json::Value, addr: &str) -> Option<&'a serde_json::Value> {
    stats["top_sources"]
        .as_array()?
        .iter()
        .find(|s| s["addr"] == addr)
}

/// A running `gateway run`, stopped with SIGTERM on drop.
pub struct GatewayProcess {
    child: Option<Child>,
    log: PathBuf,
}

impl GatewayProcess {
    /// Starts `gateway run --config FILE` (inside `netns` if given) and waits until it says
    /// the data plane runs, or fails with its log.
    pub fn start(netns: Option<&str>, config: &Path, log: &Path) -> Result<Self> {
        let stderr = File::create(log).with_context(|| format!("create {}", log.display()))?;
        let mut cmd = match netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin());
                c
            }
            None => Command::new(bin()),
        };
        cmd.arg("run")
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .env("RUST_LOG", "info");
        let child = cmd.spawn().context("spawn gateway run")?;
        let mut proc = Self {
            child: Some(child),
            log: log.to_path_buf(),
        };
        proc.wait_for("data plane running", Duration::from_secs(20))?;
        Ok(proc)
    }

    /// Waits until the log contains `needle`; fails if the process exits first.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log_text().contains(needle) {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "gateway exited ({status}) before `{needle}`:\n{}",
                        self.log_text()
                    );
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "gateway did not log `{needle}` within {timeout:?}:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then SIGKILL after 10 s; returns the exit status.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        self.stop();
    }
}
