//! What a reload changes: the running plan against the new one, as one summary for the
//! log, and the settings that keep their running values until a restart.
//!
//! Sections are compared as parsed (their `Debug` form, so a comment or reordering of keys
//! is no change). Files the config names (certificates, keys) are re-read by every reload
//! whether or not their paths changed, so only path changes show here.

use super::{EbpfConfig, ListenConfig, Plan, UpstreamConfig};
use std::collections::BTreeMap;
use std::fmt::Debug;

/// What a reload changes, and what it cannot.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// One entry per changed part, e.g. `routes added [a], removed [b]`.
    pub applied: Vec<String>,
    /// Dotted keys whose new values take effect only after a restart.
    pub restart: Vec<&'static str>,
}

impl Changes {
    /// The log line of what was applied.
    pub fn summary(&self) -> String {
        match self.applied.is_empty() {
            true => "nothing changed".to_owned(),
            false => self.applied.join("; "),
        }
    }
}

/// `[listen]` keys the connection layer (sockets, hyper, the accept loop) reads once at
/// start; the request path's own limits (`max_body_bytes`, `body_timeout`,
/// `max_requests_in_flight`) change live.
fn listen_restart_only(old: &ListenConfig, new: &ListenConfig, out: &mut Vec<&'static str>) {
    macro_rules! keys {
        ($($k:ident),*) => {
            $(if differ(&old.$k, &new.$k) {
                out.push(concat!("listen.", stringify!($k)));
            })*
        };
    }
    keys!(
        https,
        http,
        max_connections,
        max_connections_per_source,
        tls_handshake_timeout,
        header_read_timeout,
        max_header_bytes,
        max_headers,
        max_concurrent_streams,
        shutdown_grace,
        proxy_protocol,
        trusted_proxies,
        send_timeout
    );
}

/// `[listen]` keys the request path reads from each new config.
fn listen_live(old: &ListenConfig, new: &ListenConfig) -> Vec<&'static str> {
    let mut out = Vec::new();
    macro_rules! keys {
        ($($k:ident),*) => {
            $(if differ(&old.$k, &new.$k) {
                out.push(stringify!($k));
            })*
        };
    }
    keys!(max_body_bytes, body_timeout, max_requests_in_flight);
    out
}

/// `[ebpf]` keys fixed by the running data plane (the attached program, its pins, the
/// state file and the event reader).
fn ebpf_restart_only(old: &EbpfConfig, new: &EbpfConfig, out: &mut Vec<&'static str>) {
    macro_rules! keys {
        ($($k:ident),*) => {
            $(if differ(&old.$k, &new.$k) {
                out.push(concat!("ebpf.", stringify!($k)));
            })*
        };
    }
    keys!(
        interface,
        mode,
        pin_path,
        pin_group,
        state_file,
        event_interval
    );
}

/// `new` with the restart-only `[ebpf]` keys of `old`: what a reload applies.
fn ebpf_applied(old: &EbpfConfig, new: &EbpfConfig) -> EbpfConfig {
    EbpfConfig {
        interface: old.interface.clone(),
        mode: old.mode,
        pin_path: old.pin_path.clone(),
        pin_group: old.pin_group.clone(),
        state_file: old.state_file.clone(),
        event_interval: old.event_interval.clone(),
        ..new.clone()
    }
}

fn differ<T: Debug>(a: &T, b: &T) -> bool {
    !same_settings(a, b)
}

/// Whether two parsed sections say the same.
pub fn same_settings<T: Debug>(a: &T, b: &T) -> bool {
    format!("{a:?}") == format!("{b:?}")
}

/// Names added, removed and changed between two keyed lists, as `what added [..], ...`;
/// `None` when nothing changed.
fn named<T: Debug>(
    what: &str,
    old: impl IntoIterator<Item = (String, T)>,
    new: impl IntoIterator<Item = (String, T)>,
) -> Option<String> {
    let old: BTreeMap<String, T> = old.into_iter().collect();
    let new: BTreeMap<String, T> = new.into_iter().collect();
    let added: Vec<&str> = new
        .keys()
        .filter(|k| !old.contains_key(*k))
        .map(String::as_str)
        .collect();
    let removed: Vec<&str> = old
        .keys()
        .filter(|k| !new.contains_key(*k))
        .map(String::as_str)
        .collect();
    let changed: Vec<&str> = new
        .iter()
        .filter(|(k, v)| old.get(*k).is_some_and(|o| differ(o, *v)))
        .map(|(k, _)| k.as_str())
        .collect();
    let mut parts = Vec::new();
    for (verb, list) in [("added", added), ("removed", removed), ("changed", changed)] {
        if !list.is_empty() {
            parts.push(format!("{verb} [{}]", list.join(", ")));
        }
    }
    (!parts.is_empty()).then(|| format!("{what} {}", parts.join(", ")))
}

/// Compares the running plan with a reload's.
pub fn diff(old: &Plan, new: &Plan) -> Changes {
    let mut c = Changes::default();
    if differ(&old.runtime.worker_threads, &new.runtime.worker_threads) {
        c.restart.push("runtime.worker_threads");
    }
    match (&old.listen, &new.listen) {
        (Some(o), Some(n)) => {
            listen_restart_only(o, n, &mut c.restart);
            let live = listen_live(o, n);
            if !live.is_empty() {
                c.applied
                    .push(format!("limits changed [{}]", live.join(", ")));
            }
        }
        (None, None) => {}
        _ => c.restart.push("listen"),
    }
    // A proxy started or stopped by the file only runs so after a restart: until then the
    // running one keeps its routes.
    if old.listen.is_some() && new.listen.is_some() {
        proxy_parts(old, new, &mut c.applied);
    }
    if new.abuse.is_some() && ipv6_prefix(old) != ipv6_prefix(new) {
        c.restart.push("abuse.ipv6_prefix");
    }
    match (&old.abuse, &new.abuse) {
        (Some(o), Some(n)) => {
            let applied = super::AbuseConfig {
                ipv6_prefix: o.ipv6_prefix,
                ..n.clone()
            };
            if differ(o, &applied) {
                c.applied.push("abuse rules changed".to_owned());
            }
        }
        (None, Some(_)) => c.applied.push("abuse rules added".to_owned()),
        (Some(_), None) => c.applied.push("abuse rules removed".to_owned()),
        (None, None) => {}
    }
    match (&old.tls, &new.tls) {
        (Some(o), Some(n)) => {
            if o.session_tickets != n.session_tickets {
                c.restart.push("tls.session_tickets");
            }
            if differ(&o.certificates, &n.certificates) {
                c.applied.push("certificate list changed".to_owned());
            }
        }
        (None, None) => {}
        _ => c.restart.push("tls"),
    }
    match (&old.ebpf, &new.ebpf) {
        (Some(o), Some(n)) => {
            ebpf_restart_only(o, n, &mut c.restart);
            if differ(o, &ebpf_applied(o, n)) {
                c.applied.push("ebpf settings changed".to_owned());
            }
        }
        (None, None) => {}
        _ => c.restart.push("ebpf"),
    }
    if differ(&old.admin, &new.admin) {
        c.restart.push("admin");
    }
    if differ(&old.fleet, &new.fleet) {
        c.restart.push("fleet");
    }
    // The operational log's format is set once, when logging starts.
    if old.log.format != new.log.format {
        c.restart.push("log.format");
    }
    if access_log_changed(old, new) {
        c.applied.push("access log reopened".to_owned());
    }
    c
}

/// Whether a reload starts a new access log: its output or what its lines hold changed.
pub fn access_log_changed(old: &Plan, new: &Plan) -> bool {
    old.log.access != new.log.access || old.log.query != new.log.query
}

/// What changed of the proxy's routes, upstreams and token issuers.
fn proxy_parts(old: &Plan, new: &Plan, applied: &mut Vec<String>) {
    let routes = |p: &Plan| -> Vec<(String, String)> {
        p.routes()
            .iter()
            .map(|r| (r.name.clone(), format!("{:?}", r.config)))
            .collect()
    };
    applied.extend(named("routes", routes(old), routes(new)));
    let upstreams = |p: &Plan| -> Vec<(String, String)> {
        p.upstreams()
            .iter()
            .map(|u| (u.name.clone(), format!("{u:?}")))
            .collect()
    };
    applied.extend(named("upstreams", upstreams(old), upstreams(new)));
    applied.extend(jwt(old, new));
}

/// The prefix IPv6 sources are counted by (`[abuse] ipv6_prefix`, or its default).
fn ipv6_prefix(p: &Plan) -> u8 {
    p.abuse
        .as_ref()
        .map_or(super::AbuseConfig::default().ipv6_prefix, |a| a.ipv6_prefix)
}

/// Token issuers added, removed or changed: the named `[[jwt.issuer]]` sections and the
/// `[jwt]` section's own issuer (`default`).
fn jwt(old: &Plan, new: &Plan) -> Option<String> {
    let issuers = |p: &Plan| -> Vec<(String, String)> {
        let Some(j) = p.jwt() else {
            return Vec::new();
        };
        let mut default = (**j).clone();
        default.issuer.clear();
        let mut out = vec![(
            crate::jwt::DEFAULT_ISSUER.to_owned(),
            format!("{default:?}"),
        )];
        out.extend(j.issuer.iter().map(|i| (i.name.clone(), format!("{i:?}"))));
        out
    };
    named("jwt issuers", issuers(old), issuers(new))
}

impl Plan {
    /// The position of the upstream of this plan with `cfg`'s name and the same settings: a
    /// reload keeps its pools and health.
    pub fn unchanged_upstream(&self, cfg: &UpstreamConfig) -> Option<usize> {
        self.upstreams()
            .iter()
            .position(|u| u.name == cfg.name && !differ(u, cfg))
    }

    /// This plan with the settings a reload cannot change taken from `running`, so that
    /// what is built from it agrees with what runs: `[abuse] ipv6_prefix` (the connection
    /// limits and the kernel count by it).
    pub fn keeping_restart_only(mut self, running: &Plan) -> Plan {
        let prefix = ipv6_prefix(running);
        if let Some(new) = self.abuse.as_mut() {
            new.ipv6_prefix = prefix;
        }
        self
    }
}

#[cfg(test)]
mod tests;
