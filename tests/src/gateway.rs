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

/// `gateway token mint` of an HS256 token with the secret in `secret`, `claims` (JSON)
/// and `extra` arguments (`--iss`, `--aud`, ...).
pub fn mint_hs256(secret: &Path, claims: &str, extra: &[&str]) -> String {
    let key = secret.display().to_string();
    let mut args = vec![
        "token", "mint", "--key", &key, "--alg", "HS256", "--claims", claims,
    ];
    args.extend_from_slice(extra);
    cli_ok(&args).trim().to_owned()
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

/// The listeners announced in a gateway's stderr: the message `proxy listening on
/// SCHEME://ADDR`, in the text format (`TIME  INFO gateway: proxy listening on ... addr=..`)
/// or inside a JSON line's `message`.
pub fn listeners_in(log: &str) -> Vec<(std::net::SocketAddr, bool)> {
    log.lines()
        .filter_map(|l| l.split("proxy listening on ").nth(1))
        .filter_map(|rest| {
            let url = rest.split(|c: char| c.is_whitespace() || c == '"').next()?;
            let (scheme, addr) = url.split_once("://")?;
            Some((addr.parse().ok()?, scheme == "https"))
        })
        .collect()
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
        let mut proc = Self::spawn(netns, config, log)?;
        proc.wait_for("data plane running", Duration::from_secs(20))?;
        Ok(proc)
    }

    /// Starts `gateway run --config FILE` for a proxy and waits until it has logged
    /// `listeners` lines `gateway: proxy listening on SCHEME://ADDR` (the listeners are bound
    /// by then). Listeners configured with port 0 get their real port from these lines.
    /// `env` is added to the process's environment (for `${VAR}` in the config).
    pub fn start_proxy(
        config: &Path,
        log: &Path,
        listeners: usize,
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Result<Self> {
        let mut proc = Self::spawn_with_env(None, config, log, env)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if proc.proxy_listeners().len() >= listeners {
                return Ok(proc);
            }
            proc.check_running("the proxy listeners")?;
            if Instant::now() > deadline {
                bail!(
                    "gateway did not log {listeners} proxy listener(s) within 20 s:\n{}",
                    proc.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts `gateway run --config FILE` without waiting for anything.
    pub fn spawn(netns: Option<&str>, config: &Path, log: &Path) -> Result<Self> {
        Self::spawn_with_env(netns, config, log, &[])
    }

    /// Like [`GatewayProcess::start`], with `wrapper` (e.g. `setpriv ...`) running the
    /// gateway inside the namespace.
    pub fn start_wrapped(netns: &str, wrapper: &[&str], config: &Path, log: &Path) -> Result<Self> {
        let mut proc = Self::spawn_cmd(Some(netns), wrapper, config, log, &[])?;
        proc.wait_for("data plane running", Duration::from_secs(20))?;
        Ok(proc)
    }

    fn spawn_with_env(
        netns: Option<&str>,
        config: &Path,
        log: &Path,
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Result<Self> {
        Self::spawn_cmd(netns, &[], config, log, env)
    }

    fn spawn_cmd(
        netns: Option<&str>,
        wrapper: &[&str],
        config: &Path,
        log: &Path,
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Result<Self> {
        let stderr = File::create(log).with_context(|| format!("create {}", log.display()))?;
        let mut cmd = match (netns, wrapper) {
            (Some(ns), _) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).args(wrapper).arg(bin());
                c
            }
            (None, [first, rest @ ..]) => {
                let mut c = Command::new(first);
                c.args(rest).arg(bin());
                c
            }
            (None, []) => Command::new(bin()),
        };
        cmd.arg("run")
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied());
        let child = cmd.spawn().context("spawn gateway run")?;
        Ok(Self {
            child: Some(child),
            log: log.to_path_buf(),
        })
    }

    /// The proxy listeners the log announced so far: (address, is TLS), in log order.
    pub fn proxy_listeners(&self) -> Vec<(std::net::SocketAddr, bool)> {
        listeners_in(&self.log_text())
    }

    /// The first announced listener of the kind asked for (TLS or plain).
    pub fn listener(&self, tls: bool) -> Option<std::net::SocketAddr> {
        self.proxy_listeners()
            .into_iter()
            .find(|(_, t)| *t == tls)
            .map(|(a, _)| a)
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: nix::sys::signal::Signal) -> Result<()> {
        let pid = self.pid().context("the gateway was already stopped")?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal)
            .with_context(|| format!("send {signal} to the gateway"))
    }

    /// Waits up to `timeout` for the process to exit by itself; `None` if it still runs.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self
                .child
                .as_mut()
                .context("the gateway was already stopped")?;
            if let Some(status) = child.try_wait()? {
                self.child = None;
                return Ok(Some(status));
            }
            if Instant::now() > deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Fails with the log if the process has exited.
    fn check_running(&mut self, waiting_for: &str) -> Result<()> {
        if let Some(child) = self.child.as_mut() {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "gateway exited ({status}) before {waiting_for}:\n{}",
                    self.log_text()
                );
            }
        }
        Ok(())
    }

    /// Waits until the log contains `needle`; fails if the process exits first.
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log_text().contains(needle) {
                return Ok(());
            }
            self.check_running(&format!("`{needle}`"))?;
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
