//! Pieces of the `cargo xtask run` demo: the config template (`examples/demo.toml`), keys and
//! certificates ([`pki`]), the echo upstream ([`echo`]), and the gateway as a supervised
//! child process that gets our signals forwarded.

pub mod echo;
pub mod pki;

use std::collections::VecDeque;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::cmd;

/// The demo configuration with `${DEMO_*}` references, as shipped in `examples/`.
pub const TEMPLATE: &str = include_str!("../../../examples/demo.toml");

/// Fills every `${NAME}` / `${NAME:-default}` outside comment lines from `vars`. A name that
/// is not in `vars` is an error (the template and this code must agree).
pub fn fill_template(template: &str, vars: &[(&str, String)]) -> Result<String> {
    let mut out = String::with_capacity(template.len());
    for (n, line) in template.split_inclusive('\n').enumerate() {
        if line.trim_start().starts_with('#') {
            out.push_str(line);
            continue;
        }
        let mut rest = line;
        while let Some(start) = rest.find("${") {
            out.push_str(&rest[..start]);
            let after = &rest[start + 2..];
            let Some(end) = after.find('}') else {
                bail!("examples/demo.toml:{}: unterminated `${{`", n + 1);
            };
            let name = after[..end].split(":-").next().unwrap_or("");
            let Some((_, value)) = vars.iter().find(|(k, _)| *k == name) else {
                bail!("examples/demo.toml:{}: `${{{name}}}` has no value", n + 1);
            };
            out.push_str(value);
            rest = &after[end + 1..];
        }
        out.push_str(rest);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// Signals: while the gateway runs, SIGINT/SIGTERM/SIGHUP are recorded here and forwarded.

static PENDING_SIGNAL: AtomicI32 = AtomicI32::new(0);

extern "C" fn record_signal(sig: libc::c_int) {
    PENDING_SIGNAL.store(sig, Ordering::SeqCst);
}

/// From now on SIGINT, SIGTERM and SIGHUP no longer end xtask; [`take_signal`] reports them.
pub fn catch_signals() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: the handler only stores into an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(sig, record_signal as *const () as libc::sighandler_t);
        }
    }
}

/// The last signal received since the previous call, if any.
pub fn take_signal() -> Option<i32> {
    match PENDING_SIGNAL.swap(0, Ordering::SeqCst) {
        0 => None,
        s => Some(s),
    }
}

// ---------------------------------------------------------------------------------------
// The gateway process.

/// What the gateway said on stderr that matters to us.
#[derive(Default)]
struct Seen {
    data_plane_running: bool,
    /// The last `gateway: ...` line (how the binary reports a fatal error).
    last_error: Option<String>,
    tail: VecDeque<String>,
}

/// `gateway run` as a child: its own process group (our terminal's Ctrl-C reaches xtask, which
/// forwards it exactly once), stderr passed through line by line and watched, and SIGTERM
/// from the kernel if xtask dies.
pub struct Gateway {
    child: Child,
    seen: Arc<Mutex<Seen>>,
    reader: Option<JoinHandle<()>>,
    exited: Option<ExitStatus>,
}

/// How start-up went.
pub enum Start {
    Ready,
    /// Exited before it was ready.
    Exited {
        status: ExitStatus,
        data_plane_started: bool,
        last_error: Option<String>,
    },
    /// A signal arrived during start-up; it was forwarded.
    Interrupted,
}

impl Gateway {
    pub fn spawn(bin: &Path, config: &Path) -> Result<Gateway> {
        let shown = cmd::Cmd::new(bin)
            .args([
                OsStr::new("run"),
                OsStr::new("--config"),
                config.as_os_str(),
            ])
            .display();
        println!("==> {shown}");
        let mut command = Command::new(bin);
        command
            .arg("run")
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0);
        // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
        unsafe {
            command.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong);
                Ok(())
            });
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("could not start `{shown}`"))?;
        let stderr = child.stderr.take().context("the gateway's stderr")?;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let reader = {
            let seen = seen.clone();
            thread::Builder::new()
                .name("gateway-stderr".into())
                .spawn(move || pass_through(stderr, &seen))
                .context("starting the stderr reader")?
        };
        Ok(Gateway {
            child,
            seen,
            reader: Some(reader),
            exited: None,
        })
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap_or(0)
    }

    fn signal(&self, sig: i32) {
        if self.exited.is_none() && self.pid() > 0 {
            // SAFETY: kill has no memory-safety preconditions; the pid is our unreaped child.
            unsafe {
                libc::kill(self.pid(), sig);
            }
        }
    }

    /// Forwards a pending signal: SIGINT and SIGTERM as they are, SIGHUP (our terminal went
    /// away) as SIGTERM, because SIGHUP means "reload" to the gateway. Returns whether one was.
    fn forward_signal(&self) -> bool {
        match take_signal() {
            Some(sig) => {
                let to = if sig == libc::SIGHUP {
                    libc::SIGTERM
                } else {
                    sig
                };
                self.signal(to);
                true
            }
            None => false,
        }
    }

    fn poll_exit(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exited = Some(status);
                // stderr reaches EOF now; read what is left before anyone looks at it.
                if let Some(r) = self.reader.take() {
                    let _ = r.join();
                }
            }
        }
        self.exited
    }

    /// Waits until the admin endpoint's `/readyz` answers 200, the process exits, a signal
    /// arrives, or `timeout` passes (then it is stopped and an error returned).
    pub fn wait_ready(&mut self, admin: SocketAddr, timeout: Duration) -> Result<Start> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.forward_signal() {
                return Ok(Start::Interrupted);
            }
            if let Some(status) = self.poll_exit() {
                let seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
                return Ok(Start::Exited {
                    status,
                    data_plane_started: seen.data_plane_running,
                    last_error: seen.last_error.clone(),
                });
            }
            if http_status(admin, "/readyz") == Some(200) {
                return Ok(Start::Ready);
            }
            if Instant::now() > deadline {
                self.signal(libc::SIGTERM);
                let status = self.wait();
                bail!(
                    "the gateway was not ready after {} s (admin endpoint http://{admin}/readyz); stopped it ({status})",
                    timeout.as_secs()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Runs until the gateway exits, forwarding our signals; SIGKILL if it ignores a
    /// forwarded stop for 30 s.
    pub fn wait(&mut self) -> ExitStatus {
        let mut stop_sent: Option<Instant> = None;
        loop {
            if let Some(status) = self.poll_exit() {
                return status;
            }
            if self.forward_signal() {
                stop_sent.get_or_insert_with(Instant::now);
            }
            if stop_sent.is_some_and(|t| t.elapsed() > Duration::from_secs(30)) {
                println!("==> the gateway did not stop within 30 s of the signal; killing it");
                self.signal(libc::SIGKILL);
                stop_sent = None;
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if self.poll_exit().is_none() {
            self.signal(libc::SIGTERM);
            let _ = self.child.wait();
        }
    }
}

fn pass_through(stderr: impl Read, seen: &Mutex<Seen>) {
    let mut reader = BufReader::new(stderr);
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let _ = std::io::stderr().write_all(&line);
        let text = String::from_utf8_lossy(&line).trim_end().to_string();
        let mut s = seen.lock().unwrap_or_else(PoisonError::into_inner);
        // Start-up events are log lines (`TIME  INFO gateway: ...`); fatal errors are
        // plain `gateway: ...` lines.
        if text.contains("gateway: data plane running") {
            s.data_plane_running = true;
        } else if let Some(message) = text.strip_prefix("gateway: ") {
            s.last_error = Some(message.to_string());
        }
        if s.tail.len() == 20 {
            s.tail.pop_front();
        }
        s.tail.push_back(text);
    }
}

/// The shell's view of an exit status: the code, or 128 + the signal.
pub fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

/// `GET path` on a plain-HTTP endpoint; the status code, or `None` when it does not answer.
pub fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    let timeout = Duration::from_secs(2);
    let mut s = TcpStream::connect_timeout(&addr, timeout).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    s.set_write_timeout(Some(timeout)).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut head = [0u8; 64];
    let mut got = 0;
    while got < 12 {
        match s.read(&mut head[got..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    let text = std::str::from_utf8(&head[..got]).ok()?;
    text.strip_prefix("HTTP/1.1 ")
        .or_else(|| text.strip_prefix("HTTP/1.0 "))?
        .get(..3)?
        .parse()
        .ok()
}

/// Runs a command that must succeed and returns its stdout (trimmed), printing it first in
/// the `==>` style; on failure the error carries its stderr.
pub fn output<I, S>(program: &Path, args: I) -> Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<_> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let shown = cmd::Cmd::new(program).args(&args).display();
    println!("==> {shown}");
    let out = Command::new(program)
        .args(&args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start `{shown}`"))?;
    if !out.status.success() {
        bail!(
            "command failed ({}): {shown}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_fills_every_reference_and_leaves_comments() {
        let t = "# see ${DEMO_*}\na = \"${DEMO_DIR:-x}/k\"\nb = [${DEMO_PORT}]\n";
        let out =
            fill_template(t, &[("DEMO_DIR", "/d".into()), ("DEMO_PORT", "1".into())]).unwrap();
        assert_eq!(out, "# see ${DEMO_*}\na = \"/d/k\"\nb = [1]\n");
        assert!(fill_template("a = \"${NOPE}\"\n", &[]).is_err());
        assert!(fill_template("a = \"${DEMO_DIR\"\n", &[]).is_err());
    }

    #[test]
    fn the_shipped_template_uses_only_the_variables_run_fills() {
        let args = crate::run::RunArgs {
            interface: "lo".into(),
            mode: crate::run::Mode::XdpGeneric,
            https_port: 8443,
            admin_port: 9901,
            no_setup: true,
        };
        let upstream = "127.0.0.1:8081".parse().unwrap();
        let vars =
            crate::run::template_vars(Path::new("/d"), upstream, &args, crate::run::Mode::Off);
        let out = fill_template(TEMPLATE, &vars).unwrap();
        assert!(out.contains("mode = \"off\""), "{out}");
        assert!(out.contains("servers = [\"127.0.0.1:8081\"]"), "{out}");
        assert!(
            !out.lines()
                .any(|l| !l.trim_start().starts_with('#') && l.contains("${")),
            "{out}"
        );
    }

    #[test]
    fn exit_codes_follow_the_shell() {
        assert_eq!(exit_code(ExitStatus::from_raw(0)), 0);
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(ExitStatus::from_raw(libc::SIGKILL)), 137);
    }
}
