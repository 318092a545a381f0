//! The file-descriptor budget: every client connection and every upstream connection is a
//! descriptor, and the usual soft `RLIMIT_NOFILE` (1024) is far below what the default
//! connection limits need. At start the soft limit is raised to the hard one; a config whose
//! limits still cannot fit is reported with the numbers (a warning: the limits are ceilings,
//! not what every deployment reaches), instead of `accept` or `connect` failing with EMFILE
//! under load.

use crate::config::Plan;
use rustix::process::{getrlimit, setrlimit, Resource};

/// Descriptors the process needs besides connections: listeners, the runtime's, BPF maps and
/// programs, the state file, the admin endpoint, JWKS fetches.
const RESERVE: u64 = 256;

/// What the connection limits of `config` need at most: each client connection; the upstream
/// connections in use, one per request in progress, capped by every server's
/// `max_connections` and by `max_requests_in_flight`; and the idle upstream connections each
/// worker keeps.
pub fn needed(config: &Plan, workers: usize) -> u64 {
    let Some(listen) = &config.listen else {
        return RESERVE;
    };
    let clients = listen.max_connections as u64;
    let upstreams = config.upstreams();
    let busy = upstreams
        .iter()
        .map(|u| (u.servers.len() as u64).saturating_mul(u.max_connections as u64))
        .sum::<u64>()
        .min(listen.max_requests_in_flight as u64);
    let idle: u64 = upstreams
        .iter()
        .map(|u| (u.servers.len() * u.max_idle_per_server) as u64)
        .sum::<u64>()
        .saturating_mul(workers as u64);
    RESERVE
        .saturating_add(clients)
        .saturating_add(busy)
        .saturating_add(idle)
}

/// The soft limit after start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NoFile {
    pub before: Option<u64>,
    pub now: Option<u64>,
    pub hard: Option<u64>,
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (`None` in a field: unlimited).
pub fn raise() -> Result<NoFile, rustix::io::Errno> {
    let mut limit = getrlimit(Resource::Nofile);
    let before = limit.current;
    if limit.current != limit.maximum {
        limit.current = limit.maximum;
        setrlimit(Resource::Nofile, limit)?;
    }
    let after = getrlimit(Resource::Nofile);
    Ok(NoFile {
        before,
        now: after.current,
        hard: after.maximum,
    })
}

/// Raises the limit and warns when `needed` descriptors do not fit in it.
pub fn raise_and_check(needed: u64) {
    match raise() {
        Ok(n) => {
            if n.before != n.now {
                tracing::info!(before = ?n.before, now = ?n.now, "raised the soft open-file limit (RLIMIT_NOFILE) to the hard limit");
            }
            if let Some(limit) = n.now.filter(|&l| l < needed) {
                tracing::warn!(
                    limit,
                    needed,
                    "the open-file limit (RLIMIT_NOFILE, soft = hard = {limit}) is below what the connection limits need ({needed}: listen.max_connections, the upstream connections in use (every server's max_connections, at most listen.max_requests_in_flight), the upstream idle pools and {RESERVE} for the rest); lower those limits or raise the hard limit (LimitNOFILE= in systemd, ulimit -Hn)"
                );
            }
        }
        Err(e) => {
            tracing::warn!(error = %e, "cannot raise the soft open-file limit (RLIMIT_NOFILE)")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(text: &str) -> Plan {
        crate::config::Config::parse(std::path::Path::new("test.toml"), text).expect("config")
    }

    #[test]
    fn the_budget_counts_clients_upstream_connections_in_use_and_the_idle_pools() {
        let c = config(
            r#"
[listen]
http = ["127.0.0.1:0"]
max_connections = 1000

[[upstream]]
name = "a"
servers = ["127.0.0.1:1", "127.0.0.1:2"]
max_idle_per_server = 10
max_connections = 300

[[route]]
path_prefix = "/"
upstream = "a"
auth = "none"
"#,
        );
        assert_eq!(needed(&c, 4), RESERVE + 1000 + 2 * 300 + 2 * 10 * 4);
    }

    #[test]
    fn upstream_connections_in_use_are_capped_by_the_requests_in_flight() {
        let c = config(
            r#"
[listen]
http = ["127.0.0.1:0"]
max_connections = 1000
max_requests_in_flight = 100

[[upstream]]
name = "a"
servers = ["127.0.0.1:1", "127.0.0.1:2"]
max_idle_per_server = 0

[[route]]
path_prefix = "/"
upstream = "a"
auth = "none"
"#,
        );
        assert_eq!(needed(&c, 4), RESERVE + 1000 + 100);
    }

    #[test]
    fn raising_reaches_the_hard_limit() {
        let n = raise().expect("setrlimit within the hard limit is always allowed");
        assert_eq!(n.now, n.hard);
        let l = getrlimit(Resource::Nofile);
        assert_eq!(l.current, l.maximum);
    }
}
