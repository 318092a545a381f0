//! The user-plane part of `gateway stats`: a summary of the admin endpoint's `/metrics`,
//! read by the series names the metrics module exports (a renamed metric cannot go unseen).

use crate::admin::client::{self, FetchError, Sample};
use crate::cli::common::human_duration;
use crate::metrics::exposed;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
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
pub fn fetch(addr: &client::Endpoint) -> Result<UserPlane, FetchError> {
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
pub fn summarise(addr: impl std::fmt::Display, samples: &[Sample]) -> UserPlane {
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
        let n = count(s.value);
        if s.name.starts_with(exposed::FLEET_PREFIX) {
            let f = fleet.get_or_insert_with(Fleet::default);
            match s.name.as_str() {
                exposed::FLEET_CONNECTED => f.connected = s.value > 0.0,
                exposed::FLEET_QUEUE_LENGTH => f.queued = n,
                exposed::FLEET_EVENTS_SENT => f.sent = n,
                exposed::FLEET_EVENTS_RECEIVED => f.received = n,
                exposed::FLEET_EVENTS_DROPPED => f.dropped = n,
                exposed::FLEET_BANS_REFUSED => f.refused = n,
                exposed::FLEET_EVENTS_REJECTED if n > 0 => {
                    f.rejected.insert(label(s, "reason"), n);
                }
                exposed::FLEET_PROPAGATION_LAG_COUNT => f.lag_count = n,
                exposed::FLEET_PROPAGATION_LAG_BUCKET => {
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
        match s.name.as_str() {
            exposed::REQUESTS => {
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
            exposed::DENIALS => {
                *up.denials.entry(label(s, "reason")).or_default() += n;
            }
            exposed::VERIFY_DURATION_BUCKET => {
                let le = match s.label("le") {
                    Some("+Inf") => f64::INFINITY,
                    Some(v) => v.parse().unwrap_or(f64::INFINITY),
                    None => continue,
                };
                buckets.push((le, n));
            }
            exposed::VERIFY_DURATION_SUM => verify_sum = s.value,
            exposed::VERIFY_DURATION_COUNT => up.verify.count = n,
            exposed::TOKEN_CACHE_HITS => (cache.hits, has_cache) = (n, true),
            exposed::TOKEN_CACHE_MISSES => (cache.misses, has_cache) = (n, true),
            exposed::TOKEN_CACHE_ENTRIES => (cache.entries, has_cache) = (n, true),
            exposed::KEYSET_KEYS => (keys.keys, has_keys) = (n, true),
            exposed::KEYSET_STALE => (keys.stale, has_keys) = (s.value > 0.0, true),
            exposed::KEYSET_AGE => {
                let age = keys.max_age_secs.unwrap_or(0.0).max(s.value);
                keys.max_age_secs = Some(age);
            }
            exposed::KEY_REFRESH_FAILURES => keys.refresh_failures += n,
            exposed::TLS_HANDSHAKES => match s.label("result") {
                Some("ok") => up.tls_handshakes_ok += n,
                _ => up.tls_handshakes_failed += n,
            },
            exposed::UPSTREAM_ERRORS => {
                *up.upstream_errors
                    .entry(label(s, "upstream"))
                    .or_default()
                    .entry(label(s, "kind"))
                    .or_default() += n;
            }
            exposed::CONNECTIONS_OPEN if s.value.is_finite() => {
                up.connections_open = s.value as i64;
            }
            exposed::CONNECTIONS_REFUSED => {
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
        let mut line = format!(
            "fleet: {}  queued {}  sent {}  received {}  dropped {}  refused {}  rejected: {}",
            if f.connected {
                "connected"
            } else {
                "DISCONNECTED"
            },
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
mod tests;
