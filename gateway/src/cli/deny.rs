//! `gateway deny add | del | list`: the deny list in the pinned maps.
//!
//! Input is validated completely before any map is opened, so a bad argument never leaves a
//! half-written change behind.

use super::common::{emit, fail, human_duration, MapsArgs, EXIT_FAILURE, EXIT_USAGE};
use crate::ebpf::maps::{new_deny_entry, origin_name, DenyRecord};
use crate::ebpf::{clock, Target};
use clap::Subcommand;
use gateway_common::{limits, origin};
use serde::Serialize;
use std::fmt::Write as _;
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
        #[command(flatten)]
        maps: MapsArgs,
    },
    /// Remove a deny entry (the exact address or prefix that was added).
    Del {
        target: String,
        #[command(flatten)]
        maps: MapsArgs,
    },
    /// List deny entries with time left and hit counts.
    List {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        maps: MapsArgs,
    },
}

pub fn run(cmd: DenyCommand) -> ExitCode {
    match cmd {
        DenyCommand::Add {
            target,
            ttl,
            reason,
            maps,
        } => add(&target, ttl.as_deref(), reason.as_deref(), &maps),
        DenyCommand::Del { target, maps } => del(&target, &maps),
        DenyCommand::List { json, maps } => list(json, &maps),
    }
}

fn parse_ttl(s: &str) -> Result<Duration, String> {
    let ttl = humantime::parse_duration(s).map_err(|e| format!("invalid --ttl `{s}`: {e}"))?;
    if ttl.is_zero() {
        return Err(format!("invalid --ttl `{s}`: must be longer than zero"));
    }
    Ok(ttl)
}

fn add(target: &str, ttl: Option<&str>, reason: Option<&str>, maps: &MapsArgs) -> ExitCode {
    let target: Target = match target.parse() {
        Ok(t) => t,
        Err(e) => return fail(EXIT_USAGE, e),
    };
    let ttl = match ttl.map(parse_ttl).transpose() {
        Ok(t) => t,
        Err(e) => return fail(EXIT_USAGE, e),
    };
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
    let mut maps = match maps.open() {
        Ok(m) => m,
        Err(code) => return code,
    };
    let mut entry = new_deny_entry(clock::expiry_ns(ttl), origin::MANUAL, reason);
    if let Ok(Some(old)) = maps.find_deny(&target) {
        entry.hits = old.hits;
    }
    if let Err(e) = maps.deny(&target, &entry) {
        return fail(EXIT_FAILURE, e);
    }
    match ttl {
        Some(ttl) => println!("denied {target} for {} ({reason})", human_duration(ttl)),
        None => println!("denied {target} until removed ({reason})"),
    }
    ExitCode::SUCCESS
}

fn del(target: &str, maps: &MapsArgs) -> ExitCode {
    let target: Target = match target.parse() {
        Ok(t) => t,
        Err(e) => return fail(EXIT_USAGE, e),
    };
    let mut maps = match maps.open() {
        Ok(m) => m,
        Err(code) => return code,
    };
    match maps.undeny(&target) {
        Ok(true) => {
            println!("removed {target}");
            ExitCode::SUCCESS
        }
        Ok(false) => fail(EXIT_FAILURE, format!("{target} is not on the deny list")),
        Err(e) => fail(EXIT_FAILURE, e),
    }
}

/// One entry of `deny list --json`. Field names are a stable contract.
#[derive(Debug, Serialize)]
pub struct DenyJson {
    pub target: String,
    /// `address` or `prefix`.
    pub kind: &'static str,
    pub origin: &'static str,
    pub reason: String,
    /// Seconds left, rounded up; `null` when the entry lasts until removed.
    pub expires_in_secs: Option<u64>,
    pub expired: bool,
    pub hits: u64,
}

impl DenyJson {
    pub fn new(r: &DenyRecord, now: u64) -> Self {
        Self {
            target: r.target.to_string(),
            kind: match r.target {
                Target::Addr(_) => "address",
                Target::Net(_) => "prefix",
            },
            origin: origin_name(r.entry.origin),
            reason: r.reason(),
            expires_in_secs: r
                .time_left(now)
                .map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0)),
            expired: r.expired(now),
            hits: r.entry.hits,
        }
    }
}

fn list(json: bool, maps: &MapsArgs) -> ExitCode {
    let maps = match maps.open() {
        Ok(m) => m,
        Err(code) => return code,
    };
    let records = match maps.deny_list() {
        Ok(r) => r,
        Err(e) => return fail(EXIT_FAILURE, e),
    };
    let now = clock::monotonic_ns();
    let rows: Vec<DenyJson> = records.iter().map(|r| DenyJson::new(r, now)).collect();
    let mut out = String::new();
    if json {
        match serde_json::to_string_pretty(&rows) {
            Ok(s) => out = s + "\n",
            Err(e) => return fail(EXIT_FAILURE, e),
        }
    } else if rows.is_empty() {
        let _ = writeln!(out, "deny list is empty ({})", maps.dir().display());
    } else {
        let _ = writeln!(
            out,
            "{:<40} {:<14} {:>13} {:>12}  REASON",
            "ADDRESS/PREFIX", "ORIGIN", "TIME LEFT", "HITS"
        );
        for (row, rec) in rows.iter().zip(&records) {
            let left = if row.expired {
                "expired".to_string()
            } else {
                match rec.time_left(now) {
                    Some(d) => human_duration(d),
                    None => "until removed".to_string(),
                }
            };
            let _ = writeln!(
                out,
                "{:<40} {:<14} {:>13} {:>12}  {}",
                row.target, row.origin, left, row.hits, row.reason
            );
        }
    }
    match emit(&out) {
        Ok(()) => ExitCode::SUCCESS,
        Err(code) => code,
    }
}
