//! `gateway stats`: the kernel's counters, read from the pinned maps, and the user plane's
//! counters, read from the admin endpoint's `/metrics` when it answers. With `--watch`, again
//! every interval with rates per second ([`watch`]).

use super::common::{emit, fail, human_duration, MapsArgs, EXIT_FAILURE, EXIT_USAGE};
use crate::ebpf::{clock, PinnedMaps};
use clap::{Args, ValueEnum};
use gateway_common::{counter, SourceStats};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::{Duration, Instant};
use watch::{Rates, Sample};

#[derive(Debug, Args)]
pub struct StatsArgs {
    /// Machine-readable output (one JSON document; one per line with --watch).
    #[arg(long)]
    json: bool,
    /// How many sources to list.
    #[arg(long, value_name = "N", default_value_t = 10)]
    top: usize,
    /// Order of the source list.
    #[arg(long, value_enum, default_value_t = SortBy::Packets)]
    sort: SortBy,
    /// Print again every SECS seconds, with rates per second, until interrupted (Ctrl-C) or
    /// --count samples. On a terminal each sample is drawn over the last.
    #[arg(long, value_name = "SECS")]
    watch: Option<u64>,
    /// With --watch: stop after N samples.
    #[arg(long, value_name = "N", requires = "watch")]
    count: Option<u32>,
    /// Admin endpoint to read the user-plane counters from [default: the config's
    /// [admin] listen, else 127.0.0.1:9901]. Not answering is not an error.
    #[arg(long, value_name = "ADDR")]
    admin: Option<SocketAddr>,
    /// Admin Unix socket to read them from instead (takes precedence over --admin).
    #[arg(long, value_name = "PATH")]
    admin_socket: Option<std::path::PathBuf>,
    #[command(flatten)]
    maps: MapsArgs,
}

/// Order of the source list.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum SortBy {
    Packets,
    Drops,
    Syns,
}

/// `gateway stats --json`. Field names are a stable contract.
#[derive(Debug, Serialize)]
pub struct StatsJson {
    pub pin_path: String,
    /// Every counter in `gateway_common::counter::NAMES`, summed over CPUs.
    pub totals: BTreeMap<&'static str, u64>,
    pub sources_tracked: usize,
    pub deny_entries: usize,
    pub top_sources: Vec<SourceJson>,
    /// The running gateway's counters from its admin endpoint; `null` when it did not answer
    /// (or no admin endpoint is configured).
    pub user_plane: Option<user_plane::UserPlane>,
    /// With `--watch`, from the second sample on: rates per second since the previous one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rates: Option<Rates>,
}

#[derive(Debug, Serialize)]
pub struct SourceJson {
    pub addr: String,
    pub packets: u64,
    pub bytes: u64,
    pub syns: u64,
    pub drops_deny: u64,
    pub drops_rate: u64,
    pub monitored_rate: u64,
    pub last_seen_secs_ago: f64,
}

impl SourceJson {
    fn new(addr: IpAddr, s: &SourceStats, now: u64) -> Self {
        Self {
            addr: addr.to_string(),
            packets: s.packets,
            bytes: s.bytes,
            syns: s.syns,
            drops_deny: s.drops_deny,
            drops_rate: s.drops_rate,
            monitored_rate: s.monitored_rate,
            last_seen_secs_ago: now.saturating_sub(s.last_seen_ns) as f64 / 1e9,
        }
    }
}

pub fn run(args: StatsArgs) -> ExitCode {
    if args.watch == Some(0) {
        return fail(EXIT_USAGE, "--watch needs at least 1 second");
    }
    if args.count == Some(0) {
        return fail(EXIT_USAGE, "--count needs at least 1 sample");
    }
    let maps = match args.maps.open() {
        Ok(m) => m,
        Err(code) => return code,
    };
    let admin = admin_addr(&args);
    let terminal = {
        use std::io::IsTerminal;
        args.watch.is_some() && !args.json && std::io::stdout().is_terminal()
    };
    let start = Instant::now();
    let mut previous: Option<Sample> = None;
    let mut taken = 0u32;
    loop {
        let (mut snapshot, unreachable) = match sample(&maps, &args, admin.as_ref()) {
            Ok(s) => s,
            Err(e) => return fail(EXIT_FAILURE, e),
        };
        let now = Sample::of(&snapshot, Instant::now());
        if args.watch.is_some() {
            snapshot.rates = previous.and_then(|p| Rates::between(&p, &now));
        }
        let text = if args.json {
            let json = if args.watch.is_some() {
                serde_json::to_string(&snapshot)
            } else {
                serde_json::to_string_pretty(&snapshot)
            };
            match json {
                Ok(t) => t + "\n",
                Err(e) => return fail(EXIT_FAILURE, e),
            }
        } else {
            let mut t = String::new();
            if args.watch.is_some() {
                t.push_str(&Rates::render(snapshot.rates.as_ref()));
            }
            t.push_str(&render_table(&snapshot));
            match (&snapshot.user_plane, unreachable) {
                (Some(up), _) => t.push_str(&user_plane::render(up)),
                (None, Some(e)) => t.push_str(&e),
                (None, None) => {}
            }
            watch::frame(&t, terminal, taken == 0)
        };
        if let Err(code) = emit(&text) {
            return code;
        }
        taken = taken.saturating_add(1);
        let Some(secs) = args.watch else {
            return ExitCode::SUCCESS;
        };
        if args.count.is_some_and(|n| taken >= n) {
            return ExitCode::SUCCESS;
        }
        previous = Some(now);
        let due = watch::next_due(start, Duration::from_secs(secs), taken, Instant::now());
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
    }
}

/// One sample: the kernel's counters, and the user plane's when the admin endpoint answers
/// (else the line saying why not, for the text table).
fn sample(
    maps: &PinnedMaps,
    args: &StatsArgs,
    admin: Option<&crate::admin::client::Endpoint>,
) -> Result<(StatsJson, Option<String>), crate::ebpf::MapsError> {
    let mut snapshot = collect(maps, args.top, args.sort)?;
    let unreachable = match admin.map(|a| (a, user_plane::fetch(a))) {
        Some((_, Ok(up))) => {
            snapshot.user_plane = Some(up);
            None
        }
        Some((a, Err(e))) => Some(format!(
            "user plane: admin endpoint {a} not reachable ({e})\n"
        )),
        None => None,
    };
    Ok((snapshot, unreachable))
}

/// `--admin-socket`, `--admin`, else the config's `[admin]` socket or listen (none when the
/// config has no `[admin]`), else the default socket or address (see
/// [`crate::admin::client::Choice`]).
fn admin_addr(args: &StatsArgs) -> Option<crate::admin::client::Endpoint> {
    // The config was loaded (and validated) once already to find the maps.
    let config = args
        .maps
        .config
        .as_ref()
        .map(|file| crate::config::Config::load(file).ok().and_then(|c| c.admin));
    crate::admin::client::Choice {
        socket: args.admin_socket.as_deref(),
        addr: args.admin,
        config: config.as_ref().map(Option::as_ref),
        defaults: true,
    }
    .endpoint()
}

/// The kernel part of `gateway stats --json` (`user_plane` left `None`); the admin
/// dashboard's `/stats.json` serves the same.
pub fn collect(
    maps: &PinnedMaps,
    top: usize,
    sort: SortBy,
) -> Result<StatsJson, crate::ebpf::MapsError> {
    let totals = maps.totals()?;
    let mut sources = maps.sources()?;
    let deny_entries = maps.deny_list()?.len();
    let now = clock::monotonic_ns();
    let key = |s: &SourceStats| match sort {
        SortBy::Packets => (s.packets, s.drops_deny + s.drops_rate),
        SortBy::Drops => (s.drops_deny + s.drops_rate, s.packets),
        SortBy::Syns => (s.syns, s.packets),
    };
    sources.sort_by(|a, b| key(&b.1).cmp(&key(&a.1)).then(a.0.cmp(&b.0)));
    Ok(StatsJson {
        pin_path: maps.dir().display().to_string(),
        totals: counter::NAMES
            .iter()
            .zip(totals.iter())
            .map(|(n, v)| (*n, *v))
            .collect(),
        sources_tracked: sources.len(),
        deny_entries,
        top_sources: sources
            .iter()
            .take(top)
            .map(|(a, s)| SourceJson::new(*a, s, now))
            .collect(),
        user_plane: None,
        rates: None,
    })
}

fn render_table(s: &StatsJson) -> String {
    let mut out = String::new();
    let t = |name: &str| s.totals.get(name).copied().unwrap_or(0);
    let _ = writeln!(out, "data plane maps at {}", s.pin_path);
    let _ = writeln!(
        out,
        "packets {}  bytes {}  ipv4 {}  ipv6 {}  new tcp {}  fragments {}",
        t("packets"),
        t("bytes"),
        t("ipv4"),
        t("ipv6"),
        t("new_tcp"),
        t("fragments")
    );
    let _ = writeln!(out, "verdicts:");
    for name in [
        "passed",
        "allowed",
        "dropped_deny",
        "dropped_deny_cidr",
        "dropped_rate",
        "monitored_rate",
        "deny_expired",
        "malformed",
        "non_ip",
        "events_lost",
    ] {
        let _ = writeln!(out, "  {name:<20} {:>14}", t(name));
    }
    let _ = writeln!(
        out,
        "sources tracked {}  deny entries {}",
        s.sources_tracked, s.deny_entries
    );
    if s.top_sources.is_empty() {
        return out;
    }
    let _ = writeln!(
        out,
        "{:<40} {:>12} {:>14} {:>10} {:>12} {:>12} {:>10} {:>10}",
        "SOURCE", "PACKETS", "BYTES", "SYNS", "DROP DENY", "DROP RATE", "MONITORED", "LAST SEEN"
    );
    for src in &s.top_sources {
        let _ = writeln!(
            out,
            "{:<40} {:>12} {:>14} {:>10} {:>12} {:>12} {:>10} {:>10}",
            src.addr,
            src.packets,
            src.bytes,
            src.syns,
            src.drops_deny,
            src.drops_rate,
            src.monitored_rate,
            human_duration(Duration::from_secs_f64(src.last_seen_secs_ago.max(0.0))) + " ago"
        );
    }
    out
}

pub mod user_plane;
pub mod watch;
