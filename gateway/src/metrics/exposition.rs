//! What is read at scrape time rather than counted as it happens: the verifier's cache and
//! key set, JWKS sources, the abuse engine's bans, the kernel's pinned counters.

use super::{
    lock, name, IssuerLabel, IssuerResultLabel, ReasonLabel, SignalLabel, SourceLabel,
    UpstreamServerLabels, BUILD,
};
use crate::jwt::Verifier;
use crate::keys::JwksSource;
use crate::proxy::upstream::Upstream;
use arc_swap::ArcSwapOption;
use gateway_common::counter;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Unit;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

/// What is read at scrape time rather than counted as it happens.
#[derive(Debug, Default)]
pub(super) struct ScrapeSources {
    pub(super) verifier: ArcSwapOption<Verifier>,
    pub(super) abuse: ArcSwapOption<crate::abuse::AbuseEngine>,
    pub(super) fleet: ArcSwapOption<crate::fleet::FleetStats>,
    /// With the name of the issuer each serves.
    pub(super) jwks: Mutex<Vec<(Box<str>, JwksSource)>>,
    pub(super) pin_path: Mutex<Option<PathBuf>>,
    /// One copy of each upstream pool (health is shared by every worker's copy).
    pub(super) upstreams: Mutex<Upstreams>,
}

/// The upstream pools, named in debug output.
#[derive(Default)]
pub(super) struct Upstreams(pub(super) Vec<Arc<Upstream>>);

impl std::fmt::Debug for Upstreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|u| u.name()))
            .finish()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    commit: &'static str,
    rustc: &'static str,
    profile: &'static str,
}

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), std::fmt::Error> {
    let c = ConstCounter::new(value);
    c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge<V: prometheus_client::encoding::EncodeGaugeValue>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: V,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(value);
    g.encode(enc.encode_descriptor(name, help, unit, g.metric_type())?)
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Collector for ScrapeSources {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        encode_build_info(&mut enc)?;
        self.encode_upstreams(&mut enc)?;
        if let Some(v) = self.verifier.load_full() {
            if let Some(c) = v.cache_stats() {
                counter(
                    &mut enc,
                    name::TOKEN_CACHE_HITS,
                    "Verified-token cache hits",
                    c.hits,
                )?;
                counter(
                    &mut enc,
                    name::TOKEN_CACHE_MISSES,
                    "Verified-token cache misses",
                    c.misses,
                )?;
                counter(
                    &mut enc,
                    name::TOKEN_CACHE_EVICTIONS,
                    "Verified-token cache evictions",
                    c.evictions,
                )?;
                gauge(
                    &mut enc,
                    name::TOKEN_CACHE_ENTRIES,
                    "Tokens in the verified-token cache",
                    None,
                    i64::try_from(c.entries).unwrap_or(i64::MAX),
                )?;
            }
            gauge(
                &mut enc,
                name::KEYSET_KEYS,
                "Verification keys currently loaded",
                None,
                i64::try_from(v.key_count()).unwrap_or(i64::MAX),
            )?;
            gauge(
                &mut enc,
                name::KEYSET_STALE,
                "1 while a JWKS source serves its last good key set because its last fetch failed",
                None,
                i64::from(v.is_stale()),
            )?;
            encode_issuers(&v, &mut enc)?;
        }
        self.encode_jwks(&mut enc)?;
        self.encode_abuse(&mut enc)?;
        self.encode_fleet(&mut enc)?;
        self.encode_kernel(&mut enc)
    }
}

/// `gateway_build_info{version, commit, rustc, profile} 1` (see [`super::BuildInfo`]).
fn encode_build_info(enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    let labels = BuildLabels {
        version: BUILD.version,
        commit: BUILD.commit,
        rustc: BUILD.rustc,
        profile: BUILD.profile,
    };
    let mut m = enc.encode_descriptor(
        name::BUILD_INFO,
        "Always 1; the labels say which build runs (commit and rustc are `unknown` when the build did not record them)",
        None,
        MetricType::Gauge,
    )?;
    ConstGauge::new(1i64).encode(m.encode_family(&labels)?)
}

/// Per-issuer token counts and key-set sizes (`issuer` is a `[[jwt.issuer]]` name or
/// `default`).
fn encode_issuers(v: &Verifier, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
    let stats = v.issuer_stats();
    let mut m = enc.encode_descriptor(
        name::ISSUER_TOKENS,
        "Tokens by the issuer their iss selected: verified (cache hits included) or rejected",
        None,
        MetricType::Counter,
    )?;
    for s in &stats {
        for (result, n) in [("verified", s.verified), ("rejected", s.rejected)] {
            let labels = IssuerResultLabel {
                issuer: s.name.clone(),
                result,
            };
            ConstCounter::new(n).encode(m.encode_family(&labels)?)?;
        }
    }
    let mut m = enc.encode_descriptor(
        name::ISSUER_KEYS,
        "Verification keys loaded per issuer",
        None,
        MetricType::Gauge,
    )?;
    for s in &stats {
        let labels = IssuerLabel {
            issuer: s.name.clone(),
        };
        ConstGauge::new(i64::try_from(s.keys).unwrap_or(i64::MAX))
            .encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

impl ScrapeSources {
    fn encode_jwks(&self, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let stats: Vec<(SourceLabel, crate::keys::JwksStats)> = lock(&self.jwks)
            .iter()
            .map(|(issuer, s)| {
                let labels = SourceLabel {
                    issuer: issuer.to_string(),
                    source: s.url().to_owned(),
                };
                (labels, s.stats())
            })
            .collect();
        if stats.is_empty() {
            return Ok(());
        }
        let now = now_unix();
        let ages: Vec<_> = stats
            .iter()
            .filter_map(|(labels, s)| Some((labels, now.saturating_sub(s.last_success_unix?))))
            .collect();
        if !ages.is_empty() {
            let mut m = enc.encode_descriptor(
                name::KEYSET_AGE,
                "Seconds since each JWKS source last fetched its key set successfully",
                Some(&Unit::Seconds),
                MetricType::Gauge,
            )?;
            for (labels, age) in ages {
                ConstGauge::new(i64::try_from(age).unwrap_or(i64::MAX))
                    .encode(m.encode_family(labels)?)?;
            }
        }
        for (name, help, get) in [
            (
                name::KEY_REFRESH_FAILURES,
                "Failed JWKS fetches (the previous key set stayed in use)",
                (|s: &crate::keys::JwksStats| s.fetches_failed) as fn(&_) -> u64,
            ),
            (name::KEY_REFRESHES, "Successful JWKS fetches", |s| {
                s.fetches_ok
            }),
            (
                name::KEY_REFETCHES_RATE_LIMITED,
                "Unknown-kid JWKS refetches refused by the rate limit",
                |s| s.refetches_rate_limited,
            ),
        ] {
            let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (labels, s) in &stats {
                ConstCounter::new(get(s)).encode(m.encode_family(labels)?)?;
            }
        }
        Ok(())
    }

    /// `gateway_upstream_server_up`: 1 while a server takes requests (its active check
    /// passes and it is not out after `max_fails` failed connections), else 0.
    fn encode_upstreams(&self, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let upstreams = lock(&self.upstreams).0.clone();
        if upstreams.is_empty() {
            return Ok(());
        }
        let mut m = enc.encode_descriptor(
            name::UPSTREAM_SERVER_UP,
            "1 while an upstream server is in rotation, 0 while it is out (failed health check or max_fails)",
            None,
            MetricType::Gauge,
        )?;
        for u in &upstreams {
            for s in u.health() {
                let labels = UpstreamServerLabels {
                    upstream: u.name().to_owned(),
                    server: s.addr.to_string(),
                };
                ConstGauge::new(i64::from(s.in_rotation)).encode(m.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }

    fn encode_abuse(&self, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use crate::abuse::Signal;
        use std::sync::atomic::Ordering;
        let Some(a) = self.abuse.load_full() else {
            return Ok(());
        };
        let c = a.counters();
        for (name, help, values) in [
            (
                name::ABUSE_BANS,
                "Sources banned by the abuse engine, by signal",
                &c.bans,
            ),
            (
                name::ABUSE_WOULD_BAN,
                "Bans the abuse engine would have made (monitor mode), by signal",
                &c.monitored,
            ),
        ] {
            let mut m = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
            for (signal, v) in Signal::ALL.iter().zip(values.iter()) {
                let labels = SignalLabel {
                    signal: signal.name(),
                };
                ConstCounter::new(v.load(Ordering::Relaxed)).encode(m.encode_family(&labels)?)?;
            }
        }
        counter(
            enc,
            name::ABUSE_PROTECTED_SKIPPED,
            "Limits crossed by protected addresses (interfaces, upstreams, JWKS hosts, trusted proxies, allow list), which are never banned",
            c.protected.load(Ordering::Relaxed),
        )?;
        counter(
            enc,
            name::DENY_EVICTIONS,
            "Automatic bans evicted (closest to expiry first) because a kernel deny map was full",
            a.store().evictions(),
        )?;
        Ok(())
    }

    fn encode_fleet(&self, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        use crate::fleet::Invalid;
        use prometheus_client::encoding::NoLabelSet;
        use std::sync::atomic::Ordering::Relaxed;
        let Some(f) = self.fleet.load_full() else {
            return Ok(());
        };
        gauge(
            enc,
            name::FLEET_CONNECTED,
            "1 while this node follows the fleet's Redis",
            None,
            i64::from(f.connected()),
        )?;
        gauge(
            enc,
            name::FLEET_QUEUE_LENGTH,
            "Events waiting to be published",
            None,
            i64::try_from(f.queued()).unwrap_or(i64::MAX),
        )?;
        counter(
            enc,
            name::FLEET_EVENTS_SENT,
            "Events published to Redis",
            f.sent.load(Relaxed),
        )?;
        counter(
            enc,
            name::FLEET_EVENTS_RECEIVED,
            "Valid events read from Redis (stream and catch-up)",
            f.received.load(Relaxed),
        )?;
        counter(
            enc,
            name::FLEET_EVENTS_DROPPED,
            "Outgoing events dropped because the queue was full while Redis was away",
            f.dropped(),
        )?;
        counter(
            enc,
            name::FLEET_BANS_REFUSED,
            "Received bans refused here (allow list or protected address)",
            f.refused.load(Relaxed),
        )?;
        counter(
            enc,
            name::FLEET_COUNTS_LOST,
            "Per-source counts not added to the fleet's because Redis was away",
            f.counts_lost.load(Relaxed),
        )?;
        let mut m = enc.encode_descriptor(
            name::FLEET_EVENTS_REJECTED,
            "Messages from Redis that failed validation, by reason",
            None,
            MetricType::Counter,
        )?;
        for why in Invalid::ALL {
            let labels = ReasonLabel {
                reason: why.label(),
            };
            let v = f.rejected.get(why.index()).map_or(0, |c| c.load(Relaxed));
            ConstCounter::new(v).encode(m.encode_family(&labels)?)?;
        }
        let (sum, count, buckets) = f.lag();
        let mut m = enc.encode_descriptor(
            name::FLEET_PROPAGATION_LAG,
            "From a ban's creation on its node to its application here",
            Some(&Unit::Seconds),
            MetricType::Histogram,
        )?;
        m.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn encode_kernel(&self, enc: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(dir) = lock(&self.pin_path).clone() else {
            return Ok(());
        };
        let (maps, totals) =
            match crate::ebpf::PinnedMaps::open(&dir).and_then(|m| m.totals().map(|t| (m, t))) {
                Ok(mt) => mt,
                Err(e) => {
                    tracing::debug!(error = %e, "kernel counters not exported");
                    return Ok(());
                }
            };
        for (name, value) in counter::NAMES.iter().zip(totals) {
            let metric = format!("kernel_{name}");
            let help = format!("Kernel data plane counter `{name}`, summed over CPUs");
            counter(enc, &metric, &help, value)?;
        }
        // How full the deny maps are: an insert into a full map fails, so an operator must
        // see it coming (deploy/prometheus/alerts.yml).
        if let Ok(list) = maps.deny_list() {
            let exact = list
                .iter()
                .filter(|r| matches!(r.target, crate::ebpf::Target::Addr(_)))
                .count();
            use gateway_common::limits::{MAX_DENY, MAX_DENY_CIDR};
            for (name, help, value) in [
                (
                    "kernel_deny_entries",
                    "Entries in the exact-address deny map",
                    exact,
                ),
                (
                    "kernel_deny_cidr_entries",
                    "Entries in the CIDR deny map",
                    list.len() - exact,
                ),
                (
                    "kernel_deny_capacity",
                    "Size of the exact-address deny map",
                    MAX_DENY as usize,
                ),
                (
                    "kernel_deny_cidr_capacity",
                    "Size of the CIDR deny map",
                    MAX_DENY_CIDR as usize,
                ),
            ] {
                gauge(
                    enc,
                    name,
                    help,
                    None,
                    i64::try_from(value).unwrap_or(i64::MAX),
                )?;
            }
        }
        Ok(())
    }
}
