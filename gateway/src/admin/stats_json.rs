//! `/stats.json` on the admin endpoint: what `gateway stats --json` prints (the kernel's totals
//! and top sources from the pinned maps, the user plane's summary of `/metrics`), plus what the
//! dashboard shows beside it: version, uptime, listeners, the data plane, the bans, the
//! upstream servers' health and latency, each top source's requests and refusals (from the
//! abuse engine, when one runs), the build, and the verification latency histogram (so that the page can
//! compute quantiles over its own polling interval rather than since start). Built on request
//! from the same sources as the CLI and `/metrics`; nothing runs between polls.

use super::client;
use crate::abuse::AbuseEngine;
use crate::cli::stats::{self, user_plane, SortBy};
use crate::deny::{DenyStore, DenyView};
use crate::ebpf::PinnedMaps;
use crate::metrics::{BuildInfo, LatencyQuantiles, Metrics, BUILD};
use crate::proxy::live::LiveProxy;
use crate::proxy::upstream::ServerHealth;
use gateway_common::limits;
use serde::Serialize;
use serde_json::{Map, Value};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

/// Sources listed in `top_sources` (as `gateway stats` lists by default).
pub const TOP_SOURCES: usize = 10;

/// What the running gateway tells the dashboard about itself: fixed at start, but for the
/// upstreams, read from the proxy that serves now (a reload replaces them).
#[derive(Clone)]
pub struct GatewayInfo {
    pub started: Instant,
    /// Proxy listeners: address and whether it is TLS.
    pub listeners: Vec<(SocketAddr, bool)>,
    pub data_plane: Option<DataPlaneInfo>,
    /// One worker's proxy, whose upstream pools are shown (health is shared by every
    /// worker's copy). `None`: no proxy runs.
    pub proxy: Option<Arc<LiveProxy>>,
}

impl Default for GatewayInfo {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            listeners: Vec::new(),
            data_plane: None,
            proxy: None,
        }
    }
}

impl std::fmt::Debug for GatewayInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayInfo")
            .field("listeners", &self.listeners)
            .field("data_plane", &self.data_plane)
            .field("proxy", &self.proxy.is_some())
            .finish_non_exhaustive()
    }
}

/// The running data plane.
#[derive(Debug, Clone, Serialize)]
pub struct DataPlaneInfo {
    pub mode: String,
    pub interface: String,
    pub pin_path: PathBuf,
}

#[derive(Serialize)]
struct Listener {
    addr: SocketAddr,
    tls: bool,
}

#[derive(Serialize)]
struct UpstreamJson<'a> {
    name: &'a str,
    servers: Vec<ServerJson>,
}

#[derive(Serialize)]
struct ServerJson {
    #[serde(flatten)]
    health: ServerHealth,
    /// Response latency quantiles (bucket upper bounds, ms); `null` while not measured.
    latency_ms: Option<LatencyQuantiles>,
}

/// One cumulative bucket of `gateway_verify_duration_seconds`.
#[derive(Serialize)]
struct Bucket {
    /// Upper bound in microseconds; `null` for `+Inf`.
    le_us: Option<f64>,
    count: u64,
}

#[derive(Serialize)]
struct DenyCapacity {
    address: u32,
    prefix: u32,
}

/// The fields `/stats.json` has beyond `gateway stats --json`.
#[derive(Serialize)]
struct Extras<'a> {
    version: &'static str,
    build: BuildInfo,
    /// Whether `top_sources` entries carry `requests` and `refusals`: they are counted by
    /// the abuse engine (`[abuse]`), and are `null` without one.
    per_source_requests: bool,
    uptime_secs: f64,
    listeners: Vec<Listener>,
    data_plane: Option<&'a DataPlaneInfo>,
    /// Why the kernel fields are missing although a data plane runs.
    kernel_error: Option<String>,
    deny_capacity: DenyCapacity,
    bans: Vec<DenyView>,
    bans_error: Option<String>,
    upstreams: Vec<UpstreamJson<'a>>,
    verify_buckets: Vec<Bucket>,
}

/// The document. Its top level is a superset of `gateway stats --json` when a data plane runs
/// (without one, the kernel fields are absent and `user_plane` is still there).
pub fn build(
    info: &GatewayInfo,
    metrics: &Metrics,
    deny: Option<&DenyStore>,
    admin: SocketAddr,
) -> Result<Value, serde_json::Error> {
    let samples = client::parse(&metrics.render());
    let abuse = metrics.abuse();
    let up = user_plane::summarise(admin, &samples);
    let mut doc = Map::new();
    let mut kernel_error = None;
    if let Some(dp) = &info.data_plane {
        match PinnedMaps::open(&dp.pin_path)
            .and_then(|m| stats::collect(&m, TOP_SOURCES, SortBy::Packets))
        {
            Ok(s) => {
                if let Value::Object(m) = serde_json::to_value(&s)? {
                    doc = m;
                }
                add_source_counts(&mut doc, abuse.as_deref());
            }
            Err(e) => kernel_error = Some(e.to_string()),
        }
    }
    doc.insert("user_plane".into(), serde_json::to_value(&up)?);
    let (bans, bans_error) = match deny.map(DenyStore::list) {
        Some(Ok(list)) => (list, None),
        Some(Err(e)) => (Vec::new(), Some(e.to_string())),
        None => (Vec::new(), None),
    };
    let mut verify_buckets: Vec<Bucket> = samples
        .iter()
        .filter(|s| s.name == "gateway_verify_duration_seconds_bucket")
        .filter_map(|s| {
            let le = match s.label("le")? {
                "+Inf" => None,
                v => Some(v.parse::<f64>().ok()? * 1e6),
            };
            let count = if s.value.is_finite() && s.value > 0.0 {
                s.value as u64
            } else {
                0
            };
            Some(Bucket { le_us: le, count })
        })
        .collect();
    verify_buckets.sort_by(|a, b| {
        let key = |x: &Bucket| x.le_us.unwrap_or(f64::INFINITY);
        key(a).total_cmp(&key(b))
    });
    // The proxy serving now, held while its upstreams are read.
    let proxy = info.proxy.as_ref().map(|p| p.current());
    let extras = Extras {
        version: BUILD.version,
        build: BUILD,
        per_source_requests: abuse.is_some(),
        uptime_secs: info.started.elapsed().as_secs_f64(),
        listeners: info
            .listeners
            .iter()
            .map(|&(addr, tls)| Listener { addr, tls })
            .collect(),
        data_plane: info.data_plane.as_ref(),
        kernel_error,
        deny_capacity: DenyCapacity {
            address: limits::MAX_DENY,
            prefix: limits::MAX_DENY_CIDR,
        },
        bans,
        bans_error,
        upstreams: proxy
            .as_ref()
            .map(|p| p.upstreams())
            .unwrap_or_default()
            .iter()
            .map(|u| UpstreamJson {
                name: u.name(),
                servers: u
                    .health()
                    .into_iter()
                    .map(|health| ServerJson {
                        latency_ms: metrics.upstream_latency(u.name(), health.addr),
                        health,
                    })
                    .collect(),
            })
            .collect(),
        verify_buckets,
    };
    if let Value::Object(m) = serde_json::to_value(&extras)? {
        doc.extend(m);
    }
    Ok(Value::Object(doc))
}

/// Each `top_sources` entry's `requests` and `refusals`, as the abuse engine counted them
/// for its address (IPv6: its prefix); `null` without an engine, where nobody counts them.
fn add_source_counts(doc: &mut Map<String, Value>, abuse: Option<&AbuseEngine>) {
    let Some(Value::Array(sources)) = doc.get_mut("top_sources") else {
        return;
    };
    for src in sources.iter_mut().filter_map(Value::as_object_mut) {
        let counts = abuse.and_then(|a| {
            let addr: IpAddr = src.get("addr")?.as_str()?.parse().ok()?;
            Some(a.source_counts(addr))
        });
        src.insert("requests".into(), counts.map(|c| c.requests).into());
        src.insert("refusals".into(), counts.map(|c| c.refusals).into());
    }
}
