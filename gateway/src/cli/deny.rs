//! `gateway deny add | del | list`: the deny list.
//!
//! While a gateway runs, the command goes through its admin endpoint's deny API, so the
//! gateway's maps, state file and connection handling change together. Otherwise it works
//! on the pinned maps and the state file directly. The output is the same either way. Input
//! is validated completely first, so a bad argument never leaves a half-written change.

use super::common::{emit, fail, human_duration, MapsArgs, EXIT_FAILURE, EXIT_USAGE};
use crate::admin::client;
use crate::admin::deny_api::AddRequest;
use crate::config::ebpf::DEFAULT_STATE_FILE;
use crate::config::Config;
use crate::deny::{check_scope, check_ttl, DenyStore, DenyView, Protected};
use crate::ebpf::Target;
use clap::{Args, Subcommand};
use gateway_common::limits;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, Subcommand)]
pub enum DenyCommand {
    /// Drop all traffic from an address or prefix, in the kernel.
    Add {
        /// IPv4/IPv6 address, or CIDR prefix (e.g. 203.0.113.0/24).
        target: String,
        /// How long the entry lasts (e.g. 90s, 10m, 1h30m); without it, until removed.
        #[arg(long)]
        ttl: Option<String>,
        /// Why; shown by `deny list` (at most 64 bytes).
        #[arg(long)]
        reason: Option<String>,
        /// Deny even when the target covers a protected address (this host's, an
        /// upstream's, a JWKS host's, the allow list's); never more than a /8 (IPv4) or
        /// /16 (IPv6).
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        at: Where,
    },
    /// Remove a deny entry (the exact address or prefix that was added).
    Del {
        target: String,
        #[command(flatten)]
        at: Where,
    },
    /// List deny entries with time left and hit counts.
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        at: Where,
    },
}

/// Which gateway's deny list.
#[derive(Debug, Args)]
pub struct Where {
    #[command(flatten)]
    maps: MapsArgs,
    /// The running gateway's admin endpoint [default: the config's [admin] socket, else
    /// its listen; with neither --config nor --pin-path, /run/gateway/admin.sock when it
    /// exists, else 127.0.0.1:9901].
    #[arg(long, value_name = "ADDR")]
    admin: Option<SocketAddr>,
    /// The running gateway's admin Unix socket (takes precedence over --admin).
    #[arg(long, value_name = "PATH")]
    admin_socket: Option<PathBuf>,
    /// File with the admin API token (when the gateway requires one).
    #[arg(long, value_name = "FILE")]
    api_token_file: Option<PathBuf>,
    /// The deny state file used when no gateway runs [default: the config's [ebpf]
    /// state_file; with neither --config nor --pin-path, /var/lib/gateway/deny-state.json].
    #[arg(long, value_name = "FILE")]
    state_file: Option<PathBuf>,
}

/// How long to wait for a running gateway's admin endpoint.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(2);

/// The two ways to reach the deny list.
enum Backend {
    Api {
        addr: client::Endpoint,
        token: Option<String>,
    },
    Local(Box<DenyStore>),
}

impl Where {
    /// The running gateway's API if it answers, else the maps and the state file.
    fn backend(&self) -> Result<Backend, ExitCode> {
        let config = match &self.maps.config {
            Some(path) => Some(Config::load(path).map_err(|e| fail(EXIT_USAGE, e))?),
            None => None,
        };
        let defaults = self.maps.config.is_none() && self.maps.pin_path.is_none();
        let admin = client::Choice {
            socket: self.admin_socket.as_deref(),
            addr: self.admin,
            config: config.as_ref().map(|c| c.admin.as_ref()),
            defaults,
        }
        .endpoint();
        let token = match &self.api_token_file {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .map_err(|e| fail(EXIT_USAGE, format!("cannot read {}: {e}", p.display())))?
                    .trim()
                    .to_string(),
            ),
            None => None,
        };
        if let Some(addr) = admin {
            if addr.answers(Duration::from_millis(300)) {
                return Ok(Backend::Api { addr, token });
            }
        }
        let state_file = self.state_file.clone().or_else(|| match &config {
            Some(c) => c.ebpf.as_ref().map(|e| e.state_file.clone()),
            None if defaults => Some(PathBuf::from(DEFAULT_STATE_FILE)),
            None => None,
        });
        let maps = self.maps.open()?;
        // The same protection as the gateway's: what the config names (when given) and
        // this host's addresses.
        let allow = match config.as_ref().and_then(|c| c.ebpf.as_ref()) {
            Some(e) => e.allow_nets().map_err(|i| fail(EXIT_USAGE, i.message))?,
            None => Vec::new(),
        };
        let protected = match &config {
            Some(c) => tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map(|rt| rt.block_on(Protected::from_config(c)))
                .map_err(|e| fail(EXIT_FAILURE, format!("cannot start a runtime: {e}")))?,
            None => {
                let mut p = Protected::new();
                p.add(
                    "an address of this host",
                    Protected::interface_addrs().unwrap_or_default(),
                );
                p
            }
        };
        Ok(Backend::Local(Box::new(
            DenyStore::new(Some(maps), state_file, allow).with_protected(&protected),
        )))
    }
}

impl Backend {
    /// A request to the API; the body of a 2xx answer, else its error as one line.
    fn call(&self, method: &str, path: &str, body: Option<&str>) -> Result<String, String> {
        let Backend::Api { addr, token } = self else {
            return Err("no API".into());
        };
        match client::request(addr, method, path, body, token.as_deref(), ADMIN_TIMEOUT) {
            Ok((status, body)) if (200..300).contains(&status) => Ok(body),
            Ok((_, body)) => Err(serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["error"].as_str().map(str::to_string))
                .unwrap_or_else(|| body.trim().to_string())),
            Err(e) => Err(format!("admin endpoint {addr}: {e}")),
        }
    }
}

/// The API's `warning` when nothing enforces the deny it made, on stderr.
fn warn_unenforced(answer: &str) {
    let v = serde_json::from_str::<serde_json::Value>(answer).unwrap_or_default();
    if let Some(w) = v["warning"].as_str() {
        eprintln!("gateway deny: warning: {w}");
    }
}

pub fn run(cmd: DenyCommand) -> ExitCode {
    match cmd {
        DenyCommand::Add {
            target,
            ttl,
            reason,
            force,
            at,
        } => add(&target, ttl.as_deref(), reason.as_deref(), force, &at),
        DenyCommand::Del { target, at } => del(&target, &at),
        DenyCommand::List { json, at } => list(json, &at),
    }
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    let ttl = humantime::parse_duration(s).map_err(|e| format!("invalid --ttl `{s}`: {e}"))?;
    if ttl.is_zero() {
        return Err(format!("invalid --ttl `{s}`: must be longer than zero"));
    }
    Ok(ttl)
}

fn add(target: &str, ttl: Option<&str>, reason: Option<&str>, force: bool, at: &Where) -> ExitCode {
    let target: Target = match target.parse() {
        Ok(t) => t,
        Err(e) => return fail(EXIT_USAGE, e),
    };
    if let Err(e) = check_scope(&target) {
        return fail(EXIT_USAGE, e);
    }
    let ttl_value = match ttl.map(parse_ttl).transpose() {
        Ok(t) => t,
        Err(e) => return fail(EXIT_USAGE, e),
    };
    if let Err(e) = check_ttl(ttl_value) {
        return fail(EXIT_USAGE, e);
    }
    let reason = reason.unwrap_or("manual");
    if reason.len() > limits::REASON_LEN {
        return fail(
            EXIT_USAGE,
            format!(
                "--reason is {} bytes; at most {} fit",
                reason.len(),
                limits::REASON_LEN
            ),
        );
    }
    let backend = match at.backend() {
        Ok(b) => b,
        Err(code) => return code,
    };
    let done = match &backend {
        Backend::Api { .. } => {
            let body = AddRequest {
                target: target.to_string(),
                ttl: ttl.map(str::to_string),
                reason: Some(reason.to_string()),
                force,
            };
            let body = serde_json::to_string(&body).unwrap_or_default();
            backend
                .call("POST", "/deny", Some(&body))
                .map(|answer| warn_unenforced(&answer))
        }
        Backend::Local(store) => store
            .add_manual(target, ttl_value, reason, force)
            .map_err(|e| e.to_string()),
    };
    if let Err(e) = done {
        return fail(EXIT_FAILURE, e);
    }
    let text = match ttl_value {
        Some(ttl) => format!("denied {target} for {} ({reason})\n", human_duration(ttl)),
        None => format!("denied {target} until removed ({reason})\n"),
    };
    emit(&text).err().unwrap_or(ExitCode::SUCCESS)
}

fn del(target: &str, at: &Where) -> ExitCode {
    let target: Target = match target.parse() {
        Ok(t) => t,
        Err(e) => return fail(EXIT_USAGE, e),
    };
    let backend = match at.backend() {
        Ok(b) => b,
        Err(code) => return code,
    };
    let done = match &backend {
        Backend::Api { .. } => {
            let path = format!("/deny/{}", target.to_string().replace('/', "%2F"));
            backend.call("DELETE", &path, None).map(|_| true)
        }
        Backend::Local(store) => store.remove(&target).map_err(|e| e.to_string()),
    };
    match done {
        Ok(true) => emit(&format!("removed {target}\n"))
            .err()
            .unwrap_or(ExitCode::SUCCESS),
        Ok(false) => fail(EXIT_FAILURE, format!("{target} is not on the deny list")),
        Err(e) => fail(EXIT_FAILURE, e),
    }
}

fn list(json: bool, at: &Where) -> ExitCode {
    let backend = match at.backend() {
        Ok(b) => b,
        Err(code) => return code,
    };
    let rows: Vec<DenyView> = match &backend {
        Backend::Api { .. } => match backend
            .call("GET", "/deny", None)
            .and_then(|b| serde_json::from_str(&b).map_err(|e| e.to_string()))
        {
            Ok(r) => r,
            Err(e) => return fail(EXIT_FAILURE, e),
        },
        Backend::Local(store) => match store.list() {
            Ok(r) => r,
            Err(e) => return fail(EXIT_FAILURE, e),
        },
    };
    let mut out = String::new();
    if json {
        match serde_json::to_string_pretty(&rows) {
            Ok(s) => out = s + "\n",
            Err(e) => return fail(EXIT_FAILURE, e),
        }
    } else if rows.is_empty() {
        out.push_str("deny list is empty\n");
    } else {
        let _ = writeln!(
            out,
            "{:<40} {:<14} {:<16} {:>13} {:>12}  REASON",
            "ADDRESS/PREFIX", "ORIGIN", "NODE", "TIME LEFT", "HITS"
        );
        for row in &rows {
            let left = if row.expired {
                "expired".to_string()
            } else {
                match row.expires_in_secs {
                    Some(s) => human_duration(Duration::from_secs(s)),
                    None => "until removed".to_string(),
                }
            };
            // The fleet node a ban came from; `-` for this node's own.
            let node = row.node.as_deref().unwrap_or("-");
            let _ = writeln!(
                out,
                "{:<40} {:<14} {:<16} {:>13} {:>12}  {}",
                row.target, row.origin, node, left, row.hits, row.reason
            );
        }
    }
    emit(&out).err().unwrap_or(ExitCode::SUCCESS)
}
