//! The abuse engine: per-source signals (refused tokens, client errors, request rate, failed
//! TLS handshakes, connections over the limit) counted over sliding windows; a source that
//! crosses a rule's limit is banned through the [`DenyStore`], so its next packet is dropped
//! in the kernel.
//!
//! Every signal comes from a connection whose TCP handshake completed, so its source address
//! is not forged. The kernel's SYN rate-limit trips are not signals: a SYN's source can be
//! anything, and a ban on it would let anyone ban any address (the kernel keeps limiting
//! the SYNs themselves). Protected addresses (see [`crate::deny::Protected`]) are never
//! banned; each one that crosses a limit is logged once and counted.
//!
//! Memory is bounded: sources live in sharded LRU maps (the least recently seen are
//! forgotten first). The hot path takes one shard's lock for a few counter updates; the ban
//! itself (a map write, then the state file) happens after the lock is released.

mod window;

pub use window::Window;

use crate::config::abuse::{AbuseConfig, Rule};
use crate::deny::{DenyError, DenyStore};
use crate::ebpf::Target;
use ipnet::{IpNet, Ipv6Net};
use lru::LruCache;
use std::collections::HashSet;
use std::hash::BuildHasher;
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// The address a source is counted by: IPv4 (and IPv4-mapped IPv6) as is, IPv6 by its
/// prefix of `ipv6_prefix` bits, so that one host (which owns a whole /64) cannot rotate
/// addresses to look like many. The abuse engine and the per-source connection limit share it.
pub fn source_key(ip: IpAddr, ipv6_prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => Ipv6Net::new(v6, ipv6_prefix)
                .map(|n| IpAddr::V6(n.network()))
                .unwrap_or(ip),
        },
        v4 => v4,
    }
}

/// What a source did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Signal {
    AuthFailure,
    ClientError,
    Request,
    TlsFailure,
    ConnectionRefused,
}

impl Signal {
    pub const ALL: [Signal; 5] = [
        Signal::AuthFailure,
        Signal::ClientError,
        Signal::Request,
        Signal::TlsFailure,
        Signal::ConnectionRefused,
    ];

    fn index(self) -> usize {
        self as usize
    }

    /// The rule's key in `[abuse]`, also the deny entry's origin.
    pub fn name(self) -> &'static str {
        match self {
            Signal::AuthFailure => "auth_failures",
            Signal::ClientError => "client_errors",
            Signal::Request => "rate",
            Signal::TlsFailure => "tls_failures",
            Signal::ConnectionRefused => "connections",
        }
    }
}

const SIGNALS: usize = Signal::ALL.len();
const SHARDS: usize = 64;

/// A rule in the units the engine works in.
#[derive(Debug, Clone, Copy)]
struct CompiledRule {
    limit: u32,
    window_ms: u64,
    ban: Duration,
    fleet_limit: Option<u32>,
}

impl From<&Rule> for CompiledRule {
    fn from(r: &Rule) -> Self {
        Self {
            limit: r.limit,
            window_ms: u64::try_from(r.window.0.as_millis()).unwrap_or(u64::MAX),
            ban: r.ban.0,
            fleet_limit: r.fleet_limit,
        }
    }
}

#[derive(Debug, Default)]
struct SourceState {
    windows: [Window; SIGNALS],
    /// Answered requests and refusals (4xx answers) since the source was first tracked, for
    /// the dashboard's top sources ([`AbuseEngine::source_counts`]).
    counts: SourceCounts,
    /// Bans so far; each doubles the next.
    offenses: u32,
    /// While banned, further events are not counted again.
    banned_until_ms: u64,
}

/// What a source's requests got, since the engine began tracking it (it forgets the least
/// recently seen beyond `max_sources`). Counted whatever the rules are, bans included.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct SourceCounts {
    /// Requests answered (any status).
    pub requests: u64,
    /// Of those, answered 4xx: refused by the gateway (tokens, routes, limits, malformed
    /// requests) or by the upstream.
    pub refusals: u64,
}

/// The signals a request's answer is evidence of, besides [`Signal::Request`]: 401 and 403
/// are auth failures, other 4xx client errors. A 429 is neither: it is a client over a
/// limit of its own (a route's per-subject or per-source limit, its verification budget,
/// the upstream's), and banning its address would ban everyone who shares it for one
/// client's pace.
fn evidence(status: http::StatusCode) -> Option<Signal> {
    use http::StatusCode;
    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        Some(Signal::AuthFailure)
    } else if status.is_client_error() && status != StatusCode::TOO_MANY_REQUESTS {
        Some(Signal::ClientError)
    } else {
        None
    }
}

/// A ban the engine decided on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub target: Target,
    pub signal: Signal,
    pub ban: Duration,
    pub offenses: u32,
    pub count: u32,
}

/// Bans and would-be bans (monitor mode) per signal, for metrics.
#[derive(Debug, Default)]
pub struct AbuseCounters {
    pub bans: [AtomicU64; SIGNALS],
    pub monitored: [AtomicU64; SIGNALS],
    /// Limits crossed by protected addresses, which are never banned.
    pub protected: AtomicU64,
}

impl std::fmt::Debug for AbuseEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AbuseEngine")
            .field("monitor", &self.monitor)
            .field("ipv6_prefix", &self.ipv6_prefix)
            .finish_non_exhaustive()
    }
}

pub struct AbuseEngine {
    rules: [Option<CompiledRule>; SIGNALS],
    monitor: bool,
    ipv6_prefix: u8,
    max_ban: Duration,
    shards: Vec<Mutex<LruCache<IpAddr, SourceState>>>,
    hasher: foldhash::fast::FixedState,
    store: Arc<DenyStore>,
    epoch: Instant,
    counters: AbuseCounters,
    /// Protected addresses already logged (each once; bounded by the protected set).
    logged_protected: Mutex<HashSet<Target>>,
    /// Where events of rules with a `fleet_limit` are also counted (`[fleet]`).
    fleet_counts: std::sync::OnceLock<Arc<crate::fleet::Counts>>,
}

impl AbuseEngine {
    pub fn new(cfg: &AbuseConfig, store: Arc<DenyStore>) -> Self {
        let per_shard =
            NonZeroUsize::new((cfg.max_sources / SHARDS).max(1)).unwrap_or(NonZeroUsize::MIN);
        let rule_for = |s: Signal| {
            match s {
                Signal::AuthFailure => cfg.auth_failures.as_ref(),
                Signal::ClientError => cfg.client_errors.as_ref(),
                Signal::Request => cfg.requests.as_ref(),
                Signal::TlsFailure => cfg.tls_failures.as_ref(),
                Signal::ConnectionRefused => cfg.connections.as_ref(),
            }
            .map(CompiledRule::from)
        };
        Self {
            rules: Signal::ALL.map(rule_for),
            monitor: cfg.monitor,
            ipv6_prefix: cfg.ipv6_prefix,
            max_ban: cfg.max_ban.0,
            shards: (0..SHARDS)
                .map(|_| Mutex::new(LruCache::new(per_shard)))
                .collect(),
            hasher: foldhash::fast::FixedState::default(),
            store,
            epoch: Instant::now(),
            counters: AbuseCounters::default(),
            logged_protected: Mutex::new(HashSet::new()),
            fleet_counts: std::sync::OnceLock::new(),
        }
    }

    /// From now on events of rules with a `fleet_limit` are also counted in `counts`,
    /// which the fleet adds up across nodes. Set once.
    pub fn count_for_fleet(&self, counts: Arc<crate::fleet::Counts>) {
        let _ = self.fleet_counts.set(counts);
    }

    /// A rule's window (ms) and fleet limit, when it has one.
    pub fn fleet_rule(&self, signal: Signal) -> Option<(u64, u32)> {
        let r = self.rules[signal.index()]?;
        Some((r.window_ms, r.fleet_limit?))
    }

    /// The fleet counted more than the rule's `fleet_limit` for `key` (a source as the
    /// engine tracks it): ban it as a local crossing would, unless it is banned already.
    pub fn fleet_crossed(&self, key: IpAddr, signal: Signal, count: u32) -> Option<Decision> {
        let rule = self.rules[signal.index()]?;
        if self.store.is_denied(key) {
            // Banned already (by another node's crossing, received from the fleet).
            return None;
        }
        let now = self.now_ms();
        let offenses = {
            let mut shard = self
                .shard(&key)
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let state = shard.get_or_insert_mut(key, SourceState::default);
            if now < state.banned_until_ms {
                return None;
            }
            self.mark_banned(state, rule, now)
        };
        let decision = Decision {
            target: self.target(key),
            signal,
            ban: self.ban_length(rule.ban, offenses),
            offenses,
            count,
        };
        self.apply(&decision, rule, " fleet-wide");
        Some(decision)
    }

    pub fn counters(&self) -> &AbuseCounters {
        &self.counters
    }

    /// The address a source is tracked and banned by: IPv4 as is, IPv6 by prefix.
    fn key(&self, ip: IpAddr) -> IpAddr {
        source_key(ip, self.ipv6_prefix)
    }

    /// The IPv6 prefix length sources are counted by.
    pub fn ipv6_prefix(&self) -> u8 {
        self.ipv6_prefix
    }

    fn target(&self, key: IpAddr) -> Target {
        match key {
            IpAddr::V6(v6) if self.ipv6_prefix < 128 => Ipv6Net::new(v6, self.ipv6_prefix)
                .map(|n| Target::Net(IpNet::V6(n)))
                .unwrap_or(Target::Addr(key)),
            _ => Target::Addr(key),
        }
    }

    fn shard(&self, key: &IpAddr) -> &Mutex<LruCache<IpAddr, SourceState>> {
        let i = (self.hasher.hash_one(key) as usize) % self.shards.len();
        &self.shards[i]
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Counts one event; bans the source (synchronously: the kernel map is written before
    /// this returns) when it crosses the rule's limit. Returns the decision, if any.
    pub fn record(&self, ip: IpAddr, signal: Signal) -> Option<Decision> {
        let rule = self.rules[signal.index()]?;
        let key = self.key(ip);
        self.count_for_fleet_if(key, signal, rule);
        let now = self.now_ms();
        let crossed = {
            let mut shard = self
                .shard(&key)
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let state = shard.get_or_insert_mut(key, SourceState::default);
            self.count(state, signal, rule, now)?
        };
        Some(self.ban(key, signal, rule, crossed))
    }

    /// One answered request from `ip` with `status`: counted for the dashboard
    /// ([`SourceCounts`]) and as evidence for the rules ([`Signal::Request`], and the
    /// auth-failure or client-error signal its status is, see [`evidence`]), under one
    /// lock. Bans the source when a rule's limit is crossed, as [`AbuseEngine::record`].
    pub fn request(&self, ip: IpAddr, status: http::StatusCode) -> Option<Decision> {
        let key = self.key(ip);
        let signals = [Some(Signal::Request), evidence(status)];
        let rules = signals.map(|s| s.and_then(|s| Some((s, self.rules[s.index()]?))));
        for (signal, rule) in rules.iter().flatten() {
            self.count_for_fleet_if(key, *signal, *rule);
        }
        let now = self.now_ms();
        let (signal, rule, crossed) = {
            let mut shard = self
                .shard(&key)
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let state = shard.get_or_insert_mut(key, SourceState::default);
            state.counts.requests = state.counts.requests.saturating_add(1);
            if status.is_client_error() {
                state.counts.refusals = state.counts.refusals.saturating_add(1);
            }
            // The first rule crossed bans; a banned source is not counted again.
            rules
                .iter()
                .flatten()
                .find_map(|&(s, r)| Some((s, r, self.count(state, s, r, now)?)))?
        };
        Some(self.ban(key, signal, rule, crossed))
    }

    /// The requests and refusals of `ip`'s source (IPv6: its prefix), zero when it is not
    /// tracked (never seen, or forgotten). Does not make the source more recently seen.
    pub fn source_counts(&self, ip: IpAddr) -> SourceCounts {
        let key = self.key(ip);
        self.shard(&key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .peek(&key)
            .map(|s| s.counts)
            .unwrap_or_default()
    }

    fn count_for_fleet_if(&self, key: IpAddr, signal: Signal, rule: CompiledRule) {
        if rule.fleet_limit.is_some() {
            if let Some(c) = self.fleet_counts.get() {
                c.add(key, signal);
            }
        }
    }

    /// Counts one `signal` event in `state`; when that crosses the rule's limit, marks the
    /// source banned and returns the count and the offenses so far. Nothing while banned.
    fn count(
        &self,
        state: &mut SourceState,
        signal: Signal,
        rule: CompiledRule,
        now: u64,
    ) -> Option<(u32, u32)> {
        if now < state.banned_until_ms {
            return None;
        }
        let count = state.windows[signal.index()].add(now, rule.window_ms);
        if count <= rule.limit {
            return None;
        }
        Some((count, self.mark_banned(state, rule, now)))
    }

    /// Bans the source `count` crossed the rule with (outside the shard's lock).
    fn ban(
        &self,
        key: IpAddr,
        signal: Signal,
        rule: CompiledRule,
        (count, offenses): (u32, u32),
    ) -> Decision {
        let decision = Decision {
            target: self.target(key),
            signal,
            ban: self.ban_length(rule.ban, offenses),
            offenses,
            count,
        };
        self.apply(&decision, rule, "");
        decision
    }

    /// Records a ban in the source's state: one more offense, windows cleared, not counted
    /// again until the ban ends. Returns the offenses so far.
    fn mark_banned(&self, state: &mut SourceState, rule: CompiledRule, now: u64) -> u32 {
        state.offenses = state.offenses.saturating_add(1);
        state.windows = Default::default();
        let ban = self.ban_length(rule.ban, state.offenses);
        state.banned_until_ms =
            now.saturating_add(u64::try_from(ban.as_millis()).unwrap_or(u64::MAX));
        state.offenses
    }

    /// `ban` doubled for each earlier offense, capped at `max_ban`.
    fn ban_length(&self, ban: Duration, offenses: u32) -> Duration {
        let doublings = offenses.saturating_sub(1).min(32);
        ban.saturating_mul(1u32 << doublings.min(31))
            .min(self.max_ban)
    }

    /// `scope`: empty, or ` fleet-wide` for a count across the fleet.
    fn apply(&self, d: &Decision, rule: CompiledRule, scope: &str) {
        let reason = format!(
            "{}: {}{scope} in {}s",
            d.signal.name(),
            d.count,
            rule.window_ms / 1000
        );
        if self.monitor {
            self.counters.monitored[d.signal.index()].fetch_add(1, Ordering::Relaxed);
            tracing::warn!(target_addr = %d.target, signal = d.signal.name(), ban_secs = d.ban.as_secs(), offenses = d.offenses, "abuse: would ban (monitor mode)");
            return;
        }
        match self
            .store
            .add(d.target, Some(d.ban), d.signal.name(), &reason, d.offenses)
        {
            Ok(()) => {
                self.counters.bans[d.signal.index()].fetch_add(1, Ordering::Relaxed);
                tracing::warn!(target_addr = %d.target, signal = d.signal.name(), ban_secs = d.ban.as_secs(), offenses = d.offenses, reason = %reason, "abuse: banned");
            }
            Err(DenyError::Allowed(_)) => {
                tracing::info!(target_addr = %d.target, signal = d.signal.name(), "abuse: limit crossed by an allow-listed source; not banned");
                self.forget(d.target);
            }
            Err(DenyError::Protected { hit, .. }) => {
                self.counters.protected.fetch_add(1, Ordering::Relaxed);
                let first = self
                    .logged_protected
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(d.target);
                if first {
                    tracing::warn!(target_addr = %d.target, protected = %hit, signal = d.signal.name(), "abuse: limit crossed by a protected address; never banned (logged once per address)");
                }
                self.forget(d.target);
            }
            Err(e) => {
                tracing::error!(target_addr = %d.target, error = %e, "abuse: ban could not be written");
                self.forget(d.target);
            }
        }
    }

    /// Clears a source's ban bookkeeping (the ban did not happen).
    fn forget(&self, target: Target) {
        let key = match target {
            Target::Addr(a) => a,
            Target::Net(n) => n.network(),
        };
        let mut shard = self
            .shard(&key)
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(s) = shard.get_mut(&key) {
            s.banned_until_ms = 0;
            s.offenses = s.offenses.saturating_sub(1);
        }
    }

    /// The deny store the engine bans through.
    pub fn store(&self) -> &Arc<DenyStore> {
        &self.store
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DurationSecs;

    fn engine(cfg: AbuseConfig, allow: Vec<IpNet>) -> AbuseEngine {
        AbuseEngine::new(&cfg, Arc::new(DenyStore::new(None, None, allow)))
    }

    fn rule(limit: u32, ban_secs: u64) -> Option<Rule> {
        Some(Rule {
            limit,
            window: DurationSecs(Duration::from_secs(10)),
            ban: DurationSecs(Duration::from_secs(ban_secs)),
            fleet_limit: None,
        })
    }

    #[test]
    fn bans_after_the_limit_and_escalates() {
        let e = engine(
            AbuseConfig {
                auth_failures: rule(3, 60),
                ..AbuseConfig::default()
            },
            vec![],
        );
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(e.record(ip, Signal::AuthFailure), None);
        }
        let d = e
            .record(ip, Signal::AuthFailure)
            .expect("fourth failure bans");
        assert_eq!((d.ban, d.offenses), (Duration::from_secs(60), 1));
        assert!(e.store().is_denied(ip));
        assert!(!e.store().is_denied("192.0.2.2".parse().unwrap()));
        // While banned, nothing more is counted.
        assert_eq!(e.record(ip, Signal::AuthFailure), None);
        assert_eq!(e.counters().bans[0].load(Ordering::Relaxed), 1);
        // A second offense doubles.
        assert_eq!(
            e.ban_length(Duration::from_secs(60), 2),
            Duration::from_secs(120)
        );
        assert_eq!(
            e.ban_length(Duration::from_secs(60), 40),
            Duration::from_secs(3600)
        );
    }

    #[test]
    fn ipv6_is_banned_by_prefix() {
        let e = engine(
            AbuseConfig {
                auth_failures: rule(1, 60),
                ..AbuseConfig::default()
            },
            vec![],
        );
        assert_eq!(
            e.record("2001:db8:1:2::1".parse().unwrap(), Signal::AuthFailure),
            None
        );
        // Another host in the same /64 adds to the same count.
        let d = e
            .record("2001:db8:1:2::ffff".parse().unwrap(), Signal::AuthFailure)
            .unwrap();
        assert_eq!(d.target.to_string(), "2001:db8:1:2::/64");
        assert!(e.store().is_denied("2001:db8:1:2:abcd::9".parse().unwrap()));
        assert!(!e.store().is_denied("2001:db8:1:3::1".parse().unwrap()));
    }

    #[test]
    fn monitor_mode_and_allow_list_ban_nothing() {
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        let m = engine(
            AbuseConfig {
                monitor: true,
                auth_failures: rule(1, 60),
                ..AbuseConfig::default()
            },
            vec![],
        );
        m.record(ip, Signal::AuthFailure);
        assert!(m.record(ip, Signal::AuthFailure).is_some());
        assert!(!m.store().is_denied(ip));
        assert_eq!(m.counters().monitored[0].load(Ordering::Relaxed), 1);

        let a = engine(
            AbuseConfig {
                auth_failures: rule(1, 60),
                ..AbuseConfig::default()
            },
            vec!["192.0.2.0/24".parse().unwrap()],
        );
        for _ in 0..10 {
            a.record(ip, Signal::AuthFailure);
        }
        assert!(!a.store().is_denied(ip));
        assert_eq!(a.counters().bans[0].load(Ordering::Relaxed), 0);
    }

    #[test]
    fn protected_addresses_are_counted_never_banned() {
        let mut p = crate::deny::Protected::new();
        p.add("upstream u", ["192.0.2.50".parse().unwrap()]);
        let store = Arc::new(DenyStore::new(None, None, vec![]).with_protected(&p));
        let e = AbuseEngine::new(
            &AbuseConfig {
                auth_failures: rule(1, 60),
                ..AbuseConfig::default()
            },
            store,
        );
        let ip: IpAddr = "192.0.2.50".parse().unwrap();
        for _ in 0..10 {
            e.record(ip, Signal::AuthFailure);
        }
        assert!(!e.store().is_denied(ip));
        assert_eq!(e.counters().bans[0].load(Ordering::Relaxed), 0);
        assert_eq!(e.counters().protected.load(Ordering::Relaxed), 5);
        assert_eq!(e.logged_protected.lock().unwrap().len(), 1);
        // An unprotected neighbour is still banned.
        let other: IpAddr = "192.0.2.51".parse().unwrap();
        e.record(other, Signal::AuthFailure);
        assert!(e.record(other, Signal::AuthFailure).is_some());
        assert!(e.store().is_denied(other));
    }

    #[test]
    fn source_keys_aggregate_ipv6_by_prefix_only() {
        let k = |s: &str, p| source_key(s.parse().unwrap(), p).to_string();
        assert_eq!(k("2001:db8:1:2:aaaa::1", 64), "2001:db8:1:2::");
        assert_eq!(k("2001:db8:1:2:aaaa::1", 48), "2001:db8:1::");
        assert_eq!(k("2001:db8:1:2:aaaa::1", 128), "2001:db8:1:2:aaaa::1");
        assert_eq!(k("::ffff:192.0.2.7", 64), "192.0.2.7");
        assert_eq!(k("192.0.2.7", 64), "192.0.2.7");
    }

    #[test]
    fn a_few_expired_tokens_never_ban_with_defaults() {
        let e = engine(AbuseConfig::default(), vec![]);
        let ip: IpAddr = "192.0.2.3".parse().unwrap();
        for _ in 0..10 {
            assert_eq!(e.record(ip, Signal::AuthFailure), None);
        }
        assert_eq!(
            e.record(ip, Signal::Request),
            None,
            "request rate is off by default"
        );
    }

    #[test]
    fn requests_and_refusals_are_counted_per_source_whatever_the_rules() {
        use http::StatusCode;
        // The default rules: no request-rate rule, yet every request is counted.
        let e = engine(
            AbuseConfig {
                auth_failures: rule(3, 60),
                ..AbuseConfig::default()
            },
            vec![],
        );
        let ip: IpAddr = "192.0.2.20".parse().unwrap();
        let other: IpAddr = "192.0.2.21".parse().unwrap();
        for status in [200, 204, 304, 404, 429, 502] {
            let status = StatusCode::from_u16(status).unwrap();
            assert_eq!(e.request(ip, status), None);
        }
        assert_eq!(
            e.source_counts(ip),
            SourceCounts {
                requests: 6,
                refusals: 2
            }
        );
        assert_eq!(e.source_counts(other), SourceCounts::default());
        // 401s are auth failures: the fourth bans, and counting goes on while banned.
        for i in 1..=5 {
            let d = e.request(ip, StatusCode::UNAUTHORIZED);
            assert_eq!(d.is_some(), i == 4, "request {i}");
        }
        assert!(e.store().is_denied(ip));
        assert_eq!(
            e.source_counts(ip),
            SourceCounts {
                requests: 11,
                refusals: 7
            }
        );
        // IPv6: per prefix, as the engine tracks and bans.
        let a: IpAddr = "2001:db8:5::1".parse().unwrap();
        let b: IpAddr = "2001:db8:5::2".parse().unwrap();
        e.request(a, StatusCode::OK);
        e.request(b, StatusCode::FORBIDDEN);
        assert_eq!(
            e.source_counts(a),
            SourceCounts {
                requests: 2,
                refusals: 1
            }
        );
    }

    #[test]
    fn a_request_is_evidence_of_what_its_status_says() {
        use http::StatusCode;
        let e = engine(
            AbuseConfig {
                auth_failures: None,
                client_errors: rule(2, 60),
                requests: rule(100, 60),
                ..AbuseConfig::default()
            },
            vec![],
        );
        let ip: IpAddr = "192.0.2.30".parse().unwrap();
        // 429 and 401 are not client errors (401 is an auth failure, off here).
        for _ in 0..10 {
            assert_eq!(e.request(ip, StatusCode::TOO_MANY_REQUESTS), None);
            assert_eq!(e.request(ip, StatusCode::UNAUTHORIZED), None);
        }
        assert_eq!(e.request(ip, StatusCode::NOT_FOUND), None);
        assert_eq!(e.request(ip, StatusCode::BAD_REQUEST), None);
        let d = e
            .request(ip, StatusCode::NOT_FOUND)
            .expect("third 4xx bans");
        assert_eq!((d.signal, d.count), (Signal::ClientError, 3));
        // The request-rate rule bans on its own count.
        let fast: IpAddr = "192.0.2.31".parse().unwrap();
        let bans: Vec<_> = (0..101)
            .filter_map(|_| e.request(fast, StatusCode::OK))
            .collect();
        assert_eq!(bans.len(), 1);
        assert_eq!(bans[0].signal, Signal::Request);
    }

    #[test]
    fn memory_is_bounded() {
        let e = engine(
            AbuseConfig {
                max_sources: 640,
                ..AbuseConfig::default()
            },
            vec![],
        );
        for i in 0..100_000u32 {
            e.record(
                IpAddr::from(std::net::Ipv4Addr::from(i)),
                Signal::AuthFailure,
            );
        }
        let total: usize = e.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(total <= 640, "{total}");
    }

    #[test]
    fn concurrent_recording_counts_every_event() {
        let e = Arc::new(engine(
            AbuseConfig {
                auth_failures: rule(4_000, 60),
                ..AbuseConfig::default()
            },
            vec![],
        ));
        let ip: IpAddr = "192.0.2.77".parse().unwrap();
        std::thread::scope(|s| {
            for _ in 0..8 {
                let e = e.clone();
                s.spawn(move || {
                    for _ in 0..500 {
                        e.record(ip, Signal::AuthFailure);
                    }
                });
            }
        });
        // 4000 events: exactly at the limit, no ban yet; the next one bans.
        assert!(!e.store().is_denied(ip));
        assert!(e.record(ip, Signal::AuthFailure).is_some());
    }
}
