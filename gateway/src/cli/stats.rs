//! `gateway stats`: the kernel's counters, read from the pinned maps, and the user plane's
//! counters, read from the admin endpoint's `/metrics` when it answers.

use super::common::{emit, fail, human_duration, MapsArgs, EXIT_FAILURE, EXIT_USAGE};
use crate::ebpf::{clock, PinnedMaps};
use clap::{Args, ValueEnum};
use gateway_common::{counter, SourceStats};
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

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
    /// Print again every SECS seconds until interrupted.
    #[arg(long, value_name = "SECS")]
    watch: Option<u64>,
    /// Admin endpoint to read the user-plane counters from [default: the config's
    /// [admin] listen, else 127.0.0.1:9901]. Not answering is not an error.
    #[arg(long, value_name = "ADDR")]
    admin: Option<SocketAddr>,
    #[command(flatten)]
    maps: MapsArgs,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum SortBy {
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
    let maps = match args.maps.open() {
        Ok(m) => m,
        Err(code) => return code,
    };
    let admin = admin_addr(&args);
    loop {
        let mut snapshot = match collect(&maps, args.top, args.sort) {
            Ok(s) => s,
            Err(e) => return fail(EXIT_FAILURE, e),
        };
        let unreachable = match admin.map(|a| (a, user_plane::fetch(a))) {
            Some((_, Ok(up))) => {
                snapshot.user_plane = Some(up);
                None
            }
            Some((a, Err(e))) => Some((a, e)),
            None => None,
        };
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
            let mut t = render_table(&snapshot);
            match (&snapshot.user_plane, unreachable) {
                (Some(up), _) => t.push_str(&user_plane::render(up)),
                (None, Some((a, e))) => {
                    let _ = writeln!(t, "user plane: admin endpoint {a} not reachable ({e})");
                }
                (None, None) => {}
            }
            t
        };
        if let Err(code) = emit(&text) {
            return code;
        }
        match args.watch {
            Some(secs) => {
                std::thread::sleep(Duration::from_secs(secs));
                if !args.json {
                    if let Err(code) = emit("\n") {
                        return code;
                    }
                }
            }
            None => return ExitCode::SUCCESS,
        }
    }
}

/// `--admin`, else the config's `[admin] listen` (none when the config has no `[admin]`),
/// else the default address.
fn admin_addr(args: &StatsArgs) -> Option<SocketAddr> {
    if let Some(a) = args.admin {
        return Some(a);
    }
    match &args.maps.config {
        // The config was loaded (and validated) once already to find the maps.
        Some(file) => crate::config::Config::load(file)
            .ok()
            .and_then(|c| c.admin)
            .map(|a| a.listen),
        None => Some(crate::config::admin::DEFAULT_LISTEN),
    }
}

fn collect(
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

/// The user-plane part of `gateway stats`: a summary of the admin endpoint's `/metrics`.
pub mod user_plane {
    use crate::admin::client::{self, FetchError, Sample};
    use crate::cli::common::human_duration;
    use serde::Serialize;
    use std::collections::BTreeMap;
    use std::fmt::Write as _;
    use std::net::SocketAddr;
    use std::time::Duration;

    /// How long `gateway stats` waits for the admin endpoint (connect, then each read).
    const TIMEOUT: Duration = Duration::from_secs(2);

    /// `user_plane` in `gateway stats --json`. Field names are a stable contract.
    #[derive(Debug, Default, Clone, PartialEq, Serialize)]
    pub struct UserPlane {
        /// The admin endpoint read.
        pub admin: String,
        /// Finished requests, all routes.
        pub requests: u64,
        /// By status class (`1xx`..`5xx`, `other`).
        pub requests_by_class: BTreeMap<String, u64>,
        /// By route name (`(none)`: no route matched).
        pub requests_by_route: BTreeMap<String, u64>,
        /// Auth refusals by reason (every reason the gateway exports, zeros included).
        pub denials: BTreeMap<String, u64>,
        pub verify: Verify,
        /// `null` when the verified-token cache is off or no verifier runs.
        pub token_cache: Option<TokenCache>,
        /// `null` when no verifier runs.
        pub keyset: Option<KeySet>,
        pub tls_handshakes_ok: u64,
        pub tls_handshakes_failed: u64,
        /// By upstream, then kind.
        pub upstream_errors: BTreeMap<String, BTreeMap<String, u64>>,
        pub connections_open: i64,
        /// By reason.
        pub connections_refused: BTreeMap<String, u64>,
        /// `null` without `[fleet]`.
        pub fleet: Option<Fleet>,
    }

    /// The fleet link (`[fleet]`).
    #[derive(Debug, Default, Clone, PartialEq, Serialize)]
    pub struct Fleet {
        pub connected: bool,
        pub queued: u64,
        pub sent: u64,
        pub received: u64,
        pub dropped: u64,
        /// Received bans the allow list or a protected address won over.
        pub refused: u64,
        /// Messages that failed validation, by reason (non-zero ones).
        pub rejected: BTreeMap<String, u64>,
        /// Propagation lag observations, and the upper bound of the p99 bucket (ms).
        pub lag_count: u64,
        pub lag_p99_le_ms: Option<f64>,
    }

    /// Token verification latency.
    #[derive(Debug, Default, Clone, PartialEq, Serialize)]
    pub struct Verify {
        pub count: u64,
        pub mean_us: Option<f64>,
        /// Upper bound of the histogram bucket holding the median; `null` without
        /// observations or when it is the overflow bucket.
        pub p50_le_us: Option<f64>,
        /// Same for the 99th percentile.
        pub p99_le_us: Option<f64>,
    }

    #[derive(Debug, Default, Clone, PartialEq, Serialize)]
    pub struct TokenCache {
        pub hits: u64,
        pub misses: u64,
        pub entries: u64,
    }

    #[derive(Debug, Default, Clone, PartialEq, Serialize)]
    pub struct KeySet {
        pub keys: u64,
        pub stale: bool,
        /// Age of the oldest JWKS source's last good fetch; `null` without JWKS URL sources.
        pub max_age_secs: Option<f64>,
        /// Failed JWKS fetches, all sources.
        pub refresh_failures: u64,
    }

    /// Reads and summarises `/metrics` at `addr`.
    pub fn fetch(addr: SocketAddr) -> Result<UserPlane, FetchError> {
        let text = client::get(addr, "/metrics", TIMEOUT)?;
        Ok(summarise(addr, &client::parse(&text)))
    }

    fn count(v: f64) -> u64 {
        // Counters are non-negative integers; anything else (NaN) reads as zero.
        if v.is_finite() && v > 0.0 {
            v as u64
        } else {
            0
        }
    }

    /// Builds the summary from parsed samples.
    pub fn summarise(addr: SocketAddr, samples: &[Sample]) -> UserPlane {
        let mut up = UserPlane {
            admin: addr.to_string(),
            ..UserPlane::default()
        };
        let label = |s: &Sample, k: &str| s.label(k).unwrap_or("").to_owned();
        let mut buckets: Vec<(f64, u64)> = Vec::new();
        let mut verify_sum = 0.0;
        let mut cache = TokenCache::default();
        let mut has_cache = false;
        let mut keys = KeySet::default();
        let mut has_keys = false;
        let mut fleet: Option<Fleet> = None;
        let mut lag_buckets: Vec<(f64, u64)> = Vec::new();
        for s in samples {
            if s.name.starts_with("gateway_fleet_") {
                let f = fleet.get_or_insert_with(Fleet::default);
                let n = count(s.value);
                match s.name.as_str() {
                    "gateway_fleet_connected" => f.connected = s.value > 0.0,
                    "gateway_fleet_queue_length" => f.queued = n,
                    "gateway_fleet_events_sent_total" => f.sent = n,
                    "gateway_fleet_events_received_total" => f.received = n,
                    "gateway_fleet_events_dropped_total" => f.dropped = n,
                    "gateway_fleet_bans_refused_total" => f.refused = n,
                    "gateway_fleet_events_rejected_total" if n > 0 => {
                        f.rejected.insert(label(s, "reason"), n);
                    }
                    "gateway_fleet_propagation_lag_seconds_count" => f.lag_count = n,
                    "gateway_fleet_propagation_lag_seconds_bucket" => {
                        let le = match s.label("le") {
                            Some("+Inf") | None => f64::INFINITY,
                            Some(v) => v.parse().unwrap_or(f64::INFINITY),
                        };
                        lag_buckets.push((le, n));
                    }
                    _ => {}
                }
                continue;
            }
            let n = count(s.value);
            match s.name.as_str() {
                "gateway_requests_total" => {
                    up.requests += n;
                    let class = match s.label("status") {
                        Some(st) if st.len() == 3 && st.bytes().all(|b| b.is_ascii_digit()) => {
                            format!("{}xx", &st[..1])
                        }
                        _ => "other".to_owned(),
                    };
                    *up.requests_by_class.entry(class).or_default() += n;
                    *up.requests_by_route.entry(label(s, "route")).or_default() += n;
                }
                "gateway_denials_total" => {
                    *up.denials.entry(label(s, "reason")).or_default() += n;
                }
                "gateway_verify_duration_seconds_bucket" => {
                    let le = match s.label("le") {
                        Some("+Inf") => f64::INFINITY,
                        Some(v) => v.parse().unwrap_or(f64::INFINITY),
                        None => continue,
                    };
                    buckets.push((le, n));
                }
                "gateway_verify_duration_seconds_sum" => verify_sum = s.value,
                "gateway_verify_duration_seconds_count" => up.verify.count = n,
                "gateway_token_cache_hits_total" => (cache.hits, has_cache) = (n, true),
                "gateway_token_cache_misses_total" => (cache.misses, has_cache) = (n, true),
                "gateway_token_cache_entries" => (cache.entries, has_cache) = (n, true),
                "gateway_keyset_keys" => (keys.keys, has_keys) = (n, true),
                "gateway_keyset_stale" => (keys.stale, has_keys) = (s.value > 0.0, true),
                "gateway_keyset_age_seconds" => {
                    let age = keys.max_age_secs.unwrap_or(0.0).max(s.value);
                    keys.max_age_secs = Some(age);
                }
                "gateway_key_refresh_failures_total" => keys.refresh_failures += n,
                "gateway_tls_handshakes_total" => match s.label("result") {
                    Some("ok") => up.tls_handshakes_ok += n,
                    _ => up.tls_handshakes_failed += n,
                },
                "gateway_upstream_errors_total" => {
                    *up.upstream_errors
                        .entry(label(s, "upstream"))
                        .or_default()
                        .entry(label(s, "kind"))
                        .or_default() += n;
                }
                "gateway_connections_open" if s.value.is_finite() => {
                    up.connections_open = s.value as i64;
                }
                "gateway_connections_refused_total" => {
                    *up.connections_refused
                        .entry(label(s, "reason"))
                        .or_default() += n;
                }
                _ => {}
            }
        }
        if let Some(f) = fleet.as_mut() {
            f.lag_p99_le_ms = quantile_le(&mut lag_buckets, f.lag_count, 0.99).map(|s| s * 1e3);
        }
        up.fleet = fleet;
        if has_cache {
            up.token_cache = Some(cache);
        }
        if has_keys {
            up.keyset = Some(keys);
        }
        if up.verify.count > 0 {
            up.verify.mean_us = Some(verify_sum / up.verify.count as f64 * 1e6);
            let n = up.verify.count;
            up.verify.p50_le_us = quantile_le(&mut buckets, n, 0.5).map(|le| le * 1e6);
            up.verify.p99_le_us = quantile_le(&mut buckets, n, 0.99).map(|le| le * 1e6);
        }
        up
    }

    /// The upper bound of the cumulative-histogram bucket holding quantile `q` of `count`
    /// observations; `None` without observations or in the overflow bucket.
    fn quantile_le(buckets: &mut [(f64, u64)], count: u64, q: f64) -> Option<f64> {
        if count == 0 {
            return None;
        }
        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
        let want = (q * count as f64).ceil() as u64;
        buckets
            .iter()
            .find(|(_, cumulative)| *cumulative >= want)
            .map(|(le, _)| *le)
            .filter(|le| le.is_finite())
    }

    fn micros(us: f64) -> String {
        if us >= 1000.0 {
            format!("{:.1}ms", us / 1000.0)
        } else {
            format!("{us:.1}µs")
        }
    }

    /// `k v  k v` for the non-zero entries, or `none`.
    fn nonzero(map: &BTreeMap<String, u64>) -> String {
        let parts: Vec<String> = map
            .iter()
            .filter(|(_, v)| **v > 0)
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        if parts.is_empty() {
            "none".to_owned()
        } else {
            parts.join("  ")
        }
    }

    /// The text table's user-plane section.
    pub fn render(up: &UserPlane) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "user plane (admin endpoint {})", up.admin);
        let _ = writeln!(
            out,
            "requests {}  by class: {}",
            up.requests,
            nonzero(&up.requests_by_class)
        );
        let _ = writeln!(out, "  by route: {}", nonzero(&up.requests_by_route));
        let denied: u64 = up.denials.values().sum();
        let _ = writeln!(out, "denials {denied}: {}", nonzero(&up.denials));
        let mut verify = format!("token verifications {}", up.verify.count);
        if let Some(mean) = up.verify.mean_us {
            let _ = write!(verify, "  mean {}", micros(mean));
        }
        if let Some(p) = up.verify.p50_le_us {
            let _ = write!(verify, "  p50 <= {}", micros(p));
        }
        if let Some(p) = up.verify.p99_le_us {
            let _ = write!(verify, "  p99 <= {}", micros(p));
        }
        let _ = writeln!(out, "{verify}");
        if let Some(c) = &up.token_cache {
            let _ = writeln!(
                out,
                "token cache: hits {}  misses {}  entries {}",
                c.hits, c.misses, c.entries
            );
        }
        if let Some(k) = &up.keyset {
            let mut line = format!(
                "key set: {} keys  stale {}  refresh failures {}",
                k.keys,
                if k.stale { "yes" } else { "no" },
                k.refresh_failures
            );
            if let Some(age) = k.max_age_secs {
                let age = Duration::from_secs_f64(age.clamp(0.0, 1e12));
                let _ = write!(line, "  oldest fetch {} ago", human_duration(age));
            }
            let _ = writeln!(out, "{line}");
        }
        let _ = writeln!(
            out,
            "tls handshakes: ok {}  failed {}",
            up.tls_handshakes_ok, up.tls_handshakes_failed
        );
        let _ = writeln!(
            out,
            "connections: open {}  refused: {}",
            up.connections_open,
            nonzero(&up.connections_refused)
        );
        if let Some(f) = &up.fleet {
            let mut line =
                format!(
                "fleet: {}  queued {}  sent {}  received {}  dropped {}  refused {}  rejected: {}",
                if f.connected { "connected" } else { "DISCONNECTED" },
                f.queued,
                f.sent,
                f.received,
                f.dropped,
                f.refused,
                nonzero(&f.rejected)
            );
            if let Some(p99) = f.lag_p99_le_ms {
                let _ = write!(line, "  lag p99 <= {p99}ms");
            }
            let _ = writeln!(out, "{line}");
        }
        let upstream: Vec<String> = up
            .upstream_errors
            .iter()
            .filter(|(_, kinds)| kinds.values().any(|v| *v > 0))
            .map(|(name, kinds)| format!("{name} ({})", nonzero(kinds)))
            .collect();
        let _ = writeln!(
            out,
            "upstream errors: {}",
            if upstream.is_empty() {
                "none".to_owned()
            } else {
                upstream.join("  ")
            }
        );
        out
    }

    #[cfg(test)]
    mod tests {
        use super::*;
        use crate::metrics::Metrics;

        fn addr() -> SocketAddr {
            SocketAddr::from(([127, 0, 0, 1], 9901))
        }

        #[test]
        fn summarises_a_real_registry() {
            let m = Metrics::new(
                &["api".to_owned(), "admin".to_owned()],
                &["pool".to_owned()],
            );
            for _ in 0..3 {
                m.request(Some(0), 200);
            }
            m.request(Some(1), 403);
            m.request(None, 404);
            m.request(Some(0), 502);
            m.denial("expired");
            m.denial("insufficient_scope");
            m.tls_handshake(true);
            m.tls_handshake(false);
            m.upstream_error(0, "connect");
            m.connection_opened();
            m.connection_refused("per_source_limit");
            for us in [2, 3, 4, 40] {
                m.verify_latency(Duration::from_micros(us));
            }
            let up = summarise(addr(), &client::parse(&m.render()));
            assert_eq!(up.admin, "127.0.0.1:9901");
            assert_eq!(up.requests, 6);
            assert_eq!(up.requests_by_class["2xx"], 3);
            assert_eq!(up.requests_by_class["4xx"], 2);
            assert_eq!(up.requests_by_class["5xx"], 1);
            assert_eq!(up.requests_by_route["api"], 4);
            assert_eq!(up.requests_by_route["admin"], 1);
            assert_eq!(up.requests_by_route["(none)"], 1);
            assert_eq!(up.denials["expired"], 1);
            assert_eq!(up.denials["insufficient_scope"], 1);
            assert_eq!(up.denials["malformed"], 0);
            assert_eq!((up.tls_handshakes_ok, up.tls_handshakes_failed), (1, 1));
            assert_eq!(up.upstream_errors["pool"]["connect"], 1);
            assert_eq!(up.upstream_errors["pool"]["timeout"], 0);
            assert_eq!(up.connections_open, 1);
            assert_eq!(up.connections_refused["per_source_limit"], 1);
            assert_eq!(up.verify.count, 4);
            let mean = up.verify.mean_us.expect("mean");
            assert!((mean - 12.25).abs() < 1e-6, "{mean}");
            assert_eq!(up.verify.p50_le_us, Some(5.0));
            assert_eq!(up.verify.p99_le_us, Some(50.0));
            assert_eq!(up.token_cache, None);
            assert_eq!(up.keyset, None);

            let text = render(&up);
            assert!(
                text.starts_with("user plane (admin endpoint 127.0.0.1:9901)\n"),
                "{text}"
            );
            assert!(
                text.contains("requests 6  by class: 2xx 3  4xx 2  5xx 1\n"),
                "{text}"
            );
            assert!(
                text.contains("  by route: (none) 1  admin 1  api 4\n"),
                "{text}"
            );
            assert!(
                text.contains("denials 2: expired 1  insufficient_scope 1\n"),
                "{text}"
            );
            assert!(
                text.contains("token verifications 4  mean 12.2µs  p50 <= 5.0µs  p99 <= 50.0µs\n")
                    || text.contains(
                        "token verifications 4  mean 12.3µs  p50 <= 5.0µs  p99 <= 50.0µs\n"
                    ),
                "{text}"
            );
            assert!(
                text.contains("upstream errors: pool (connect 1)\n"),
                "{text}"
            );

            let json = serde_json::to_value(&up).expect("json");
            assert_eq!(json["requests"], 6);
            assert_eq!(json["verify"]["p99_le_us"], 50.0);
            assert!(json["token_cache"].is_null());
        }

        #[test]
        fn empty_registry_summarises_to_zeros() {
            let up = summarise(addr(), &client::parse(&Metrics::new(&[], &[]).render()));
            assert_eq!(up.requests, 0);
            assert_eq!(up.verify, Verify::default());
            assert!(up.denials.values().all(|v| *v == 0));
            assert!(render(&up).contains("denials 0: none\n"));
        }
    }
}
