//! The fleet against a real `redis-server` (started per test on a free loopback port): nodes
//! are deny stores with their fleet links in this process (the end-to-end test with gateway
//! processes is tests/tests/fleet_e2e.rs). Bans and removals travel; the allow list and
//! protected addresses win; Redis killed and back loses nothing; a late node catches up;
//! forged, unsigned and malformed entries written straight into Redis are refused.

use gateway::config::fleet::FleetConfig;
use gateway::config::DurationSecs;
use gateway::deny::{DenyStore, Protected};
use gateway::ebpf::Target;
use gateway::fleet::Fleet;
use gateway_tests::redis::RedisServer;
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

const KEY: [u8; 32] = [0x5a; 32];

fn config(redis: &RedisServer, node: &str, key: Option<&Path>) -> FleetConfig {
    FleetConfig {
        redis_url: redis.url(),
        redis_password_file: None,
        node: Some(node.to_owned()),
        share: ["auth_failures", "client_errors", "manual"]
            .map(String::from)
            .to_vec(),
        key_prefix: "t:".to_owned(),
        hmac_key_file: key.map(Path::to_path_buf),
        max_ttl: DurationSecs(Duration::from_secs(3600)),
        queue: 100,
    }
}

/// One node: its deny store (no data plane) with a state file, and its fleet link.
struct Node {
    store: Arc<DenyStore>,
    fleet: Fleet,
    _dir: tempfile::TempDir,
}

impl Node {
    fn start(cfg: &FleetConfig, protected: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("deny.json");
        let mut p = Protected::new();
        p.add(
            "upstream",
            protected.iter().map(|s| s.parse::<IpAddr>().unwrap()),
        );
        let store = Arc::new(
            DenyStore::new(
                None,
                Some(state.clone()),
                vec!["192.0.2.0/24".parse().unwrap()],
            )
            .with_protected(&p),
        );
        store.restore().unwrap();
        let cursor = gateway::deny::StateFile::beside(&state, "fleet-cursor");
        let fleet = Fleet::start(cfg, store.clone(), Some(cursor)).unwrap();
        Self {
            store,
            fleet,
            _dir: dir,
        }
    }

    fn denies(&self, ip: &str) -> bool {
        self.store.is_denied(ip.parse().unwrap())
    }
}

fn t(s: &str) -> Target {
    s.parse().unwrap()
}

/// Polls `cond` every 10 ms for at most `secs` seconds.
async fn eventually(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("not within {secs}s: {what}");
}

/// Holds for `ms` milliseconds (what must not happen, given time to happen).
async fn never(ms: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_millis(ms);
    while Instant::now() < deadline {
        assert!(!cond(), "{what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

const MIN: Option<Duration> = Some(Duration::from_secs(60));

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bans_and_removals_travel_and_protected_addresses_win() {
    let redis = RedisServer::start();
    let a = Node::start(&config(&redis, "edge-a", None), &[]);
    let b = Node::start(&config(&redis, "edge-b", None), &["198.51.100.9"]);
    let c = Node::start(&config(&redis, "edge-c", None), &[]);
    for n in [&a, &b, &c] {
        let s = n.fleet.stats();
        eventually(5, "connected", || s.connected()).await;
    }

    // An automatic ban on A is enforced on B and C, which say where it came from.
    a.store
        .add(t("198.51.100.7"), MIN, "auth_failures", "bad tokens", 1)
        .unwrap();
    eventually(5, "ban on B and C", || {
        b.denies("198.51.100.7") && c.denies("198.51.100.7")
    })
    .await;
    assert_eq!(
        b.store.node_of(&t("198.51.100.7")).as_deref(),
        Some("edge-a")
    );
    let row = c
        .store
        .list()
        .unwrap()
        .into_iter()
        .find(|r| r.target == "198.51.100.7")
        .unwrap();
    assert_eq!(
        (row.node.as_deref(), row.origin.as_str()),
        (Some("edge-a"), "auth_failures")
    );
    let left = row.expires_in_secs.unwrap();
    assert!((55..=61).contains(&left), "expiry travels: {left}");
    assert!(a.store.node_of(&t("198.51.100.7")).is_none(), "A's own");

    // A manual prefix deny travels, and so does its removal.
    a.store
        .add_manual(t("203.0.113.0/24"), None, "by hand", false)
        .unwrap();
    eventually(5, "manual deny on B and C", || {
        b.denies("203.0.113.77") && c.denies("203.0.113.77")
    })
    .await;
    assert!(a.store.remove(&t("203.0.113.0/24")).unwrap());
    eventually(5, "removal on B and C", || {
        !b.denies("203.0.113.77") && !c.denies("203.0.113.77")
    })
    .await;
    // A removal made on B, of a ban B received, travels back to A too.
    assert!(b.store.remove(&t("198.51.100.7")).unwrap());
    eventually(5, "removal on A and C", || {
        !a.denies("198.51.100.7") && !c.denies("198.51.100.7")
    })
    .await;

    // B protects 198.51.100.9: A's ban of it is refused there, applied on C.
    a.store
        .add(t("198.51.100.9"), MIN, "auth_failures", "x", 1)
        .unwrap();
    eventually(5, "on C", || c.denies("198.51.100.9")).await;
    let bs = b.fleet.stats();
    eventually(5, "refused on B", || {
        bs.refused.load(Ordering::Relaxed) >= 1
    })
    .await;
    assert!(
        !b.denies("198.51.100.9"),
        "a protected address stays reachable"
    );

    // An origin not in `share` stays home.
    a.store
        .add(t("198.51.100.20"), MIN, "rate", "rate", 1)
        .unwrap();
    never(500, "rate ban travelled", || b.denies("198.51.100.20")).await;

    // Nothing echoes: B and C published nothing but B's one removal.
    assert_eq!(c.fleet.stats().sent.load(Ordering::Relaxed), 0);
    assert_eq!(bs.sent.load(Ordering::Relaxed), 1);
    let lag = c.fleet.stats().lag();
    assert!(lag.1 >= 3, "lag observed per applied event: {lag:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_is_not_an_outage_and_what_was_banned_meanwhile_travels() {
    let mut redis = RedisServer::start();
    let a = Node::start(&config(&redis, "edge-a", None), &[]);
    let b = Node::start(&config(&redis, "edge-b", None), &[]);
    let (sa, sb) = (a.fleet.stats(), b.fleet.stats());
    eventually(5, "connected", || sa.connected() && sb.connected()).await;
    a.store
        .add(t("198.51.100.1"), MIN, "auth_failures", "before", 1)
        .unwrap();
    eventually(5, "first ban on B", || b.denies("198.51.100.1")).await;

    redis.stop();
    eventually(5, "both see Redis gone", || {
        !sa.connected() && !sb.connected()
    })
    .await;
    // Banning goes on locally, at once, and what was banned stays enforced.
    let started = Instant::now();
    a.store
        .add(t("198.51.100.2"), MIN, "auth_failures", "during", 1)
        .unwrap();
    b.store
        .add_manual(t("198.51.100.3"), None, "during, by hand", false)
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "a ban waited for Redis: {:?}",
        started.elapsed()
    );
    assert!(a.denies("198.51.100.2") && b.denies("198.51.100.3"));
    assert!(b.denies("198.51.100.1"), "received bans stay enforced");
    assert!(sa.queued() >= 1 && sb.queued() >= 1);

    // Redis returns (empty, as a fresh replica would be): the queues drain both ways.
    redis.resume();
    eventually(15, "bans made while Redis was away travel", || {
        b.denies("198.51.100.2") && a.denies("198.51.100.3")
    })
    .await;
    eventually(5, "queues drained", || sa.queued() == 0 && sb.queued() == 0).await;
    // The ban from before the outage was lost with Redis's data: A put its own back.
    eventually(10, "bans from before the outage are back in Redis", || {
        redis
            .cli(&["ZSCORE", "t:bans", "198.51.100.1"])
            .is_ok_and(|s| !s.trim().is_empty())
    })
    .await;
    eventually(5, "and on B", || b.denies("198.51.100.1")).await;
    assert!(sa.connected() && sb.connected());
    assert_eq!(sa.dropped() + sb.dropped(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_started_later_holds_the_fleets_bans() {
    let redis = RedisServer::start();
    let a = Node::start(&config(&redis, "edge-a", None), &[]);
    let sa = a.fleet.stats();
    eventually(5, "connected", || sa.connected()).await;
    a.store
        .add(t("198.51.100.11"), MIN, "auth_failures", "x", 1)
        .unwrap();
    a.store
        .add_manual(t("2001:db8:7::/48"), None, "y", false)
        .unwrap();
    a.store
        .add(
            t("198.51.100.12"),
            Some(Duration::from_secs(1)),
            "client_errors",
            "short",
            1,
        )
        .unwrap();
    eventually(5, "published", || sa.sent.load(Ordering::Relaxed) == 3).await;
    // The stream is cut down to nothing: the late node must load from the sorted set.
    redis.cli(&["XTRIM", "t:events", "MAXLEN", "0"]).unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;

    let late = Node::start(&config(&redis, "edge-late", None), &[]);
    let sl = late.fleet.stats();
    eventually(5, "late node connected", || sl.connected()).await;
    assert!(late.denies("198.51.100.11"));
    assert!(late.denies("2001:db8:7:1::1"));
    assert!(
        !late.denies("198.51.100.12"),
        "an expired ban is not loaded"
    );
    // Until removed: capped at max_ttl here (renewed by reconciliation while in Redis).
    let row = late
        .store
        .list()
        .unwrap()
        .into_iter()
        .find(|r| r.target == "2001:db8:7::/48")
        .unwrap();
    assert!(row.expires_in_secs.is_some_and(|s| s <= 3600), "{row:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_unsigned_and_malformed_entries_are_refused() {
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("fleet.key");
    std::fs::write(&key, KEY).unwrap();
    let signed = config(&redis, "edge-b", Some(&key));
    let b = Node::start(&signed, &["198.51.100.9"]);
    let sb = b.fleet.stats();
    eventually(5, "connected", || sb.connected()).await;
    let rejected = |label: usize| sb.rejected[label].load(Ordering::Relaxed);

    let msg = |target: &str, extra: &str| {
        format!(
            r#"{{"v":1,"op":"add","target":"{target}","origin":"manual","reason":"forged","node":"edge-x","created_ms":1,"expires_unix":0{extra}}}"#
        )
    };
    let xadd = |m: &str| {
        redis
            .cli(&["XADD", "t:events", "*", "m", m])
            .expect("raw XADD");
    };
    // Unsigned, wrongly signed, with a signature of the wrong shape.
    xadd(&msg("198.51.100.50", ""));
    xadd(&msg(
        "198.51.100.51",
        &format!(r#","sig":"{}""#, "ab".repeat(32)),
    ));
    xadd(&msg("198.51.100.52", r#","sig":"not hex""#));
    // Malformed: not JSON, a field missing, too long, no `m` field.
    xadd("{");
    xadd(r#"{"v":1,"op":"add"}"#);
    xadd(&"x".repeat(5000));
    redis.cli(&["XADD", "t:events", "*", "other", "1"]).unwrap();
    // Straight into the sorted set and hash, for a node that loads them at start.
    redis
        .cli(&["ZADD", "t:bans", "9999999999", "198.51.100.53"])
        .unwrap();
    redis
        .cli(&["HSET", "t:ban", "198.51.100.53", &msg("198.51.100.53", "")])
        .unwrap();
    use gateway::fleet::Invalid;
    eventually(5, "counted", || {
        rejected(Invalid::Unsigned.index()) >= 1
            && rejected(Invalid::Signature.index()) >= 2
            && rejected(Invalid::Malformed.index()) >= 3
            && rejected(Invalid::TooLong.index()) >= 1
    })
    .await;
    let late = Node::start(&signed, &[]);
    let sl = late.fleet.stats();
    eventually(5, "late connected", || sl.connected()).await;
    for n in [&b, &late] {
        for ip in [
            "198.51.100.50",
            "198.51.100.51",
            "198.51.100.52",
            "198.51.100.53",
        ] {
            assert!(!n.denies(ip), "forged ban of {ip} applied");
        }
    }
    assert!(sl.rejected[Invalid::Unsigned.index()].load(Ordering::Relaxed) >= 1);

    // A correctly signed node's bans pass; signed messages cannot ban what no message may.
    let a = Node::start(&config(&redis, "edge-a", Some(&key)), &[]);
    a.store
        .add(t("198.51.100.60"), MIN, "auth_failures", "real", 1)
        .unwrap();
    eventually(5, "signed ban applied", || b.denies("198.51.100.60")).await;

    // Unsigned mode: still never all of IPv4, a short prefix, the allow list or a
    // protected address, even from a raw client.
    let plain = Node::start(&config(&redis, "edge-p", None), &["198.51.100.9"]);
    let sp = plain.fleet.stats();
    eventually(5, "plain connected", || sp.connected()).await;
    for target in [
        "0.0.0.0/0",
        "::/0",
        "0.0.0.0/1",
        "10.0.0.0/7",
        "192.0.2.5",
        "198.51.100.9",
    ] {
        xadd(&msg(target, ""));
    }
    xadd(&msg("198.51.100.61", ""));
    eventually(5, "the valid one applied", || plain.denies("198.51.100.61")).await;
    for ip in ["8.8.8.8", "10.1.2.3", "192.0.2.5", "198.51.100.9"] {
        assert!(!plain.denies(ip), "{ip} banned through Redis");
    }
    assert_eq!(
        sp.rejected[Invalid::Target.index()].load(Ordering::Relaxed),
        4
    );
    assert_eq!(
        sp.refused.load(Ordering::Relaxed),
        2,
        "allow list and protected"
    );

    // Applying the same event twice is harmless: one entry, one application.
    let before = plain.store.len();
    xadd(&msg("198.51.100.61", ""));
    xadd(&msg("198.51.100.61", ""));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(plain.store.len(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_spreading_bad_tokens_over_three_nodes_is_banned_by_the_fleet_count() {
    use gateway::abuse::{AbuseEngine, Signal};
    use gateway::config::abuse::{AbuseConfig, Rule};
    let redis = RedisServer::start();
    // Local limit 20, fleet limit 30, in windows of an hour (fixed windows: the events of
    // this test all fall in one).
    let cfg = AbuseConfig {
        auth_failures: Some(Rule {
            limit: 20,
            window: DurationSecs(Duration::from_secs(3600)),
            ban: DurationSecs(Duration::from_secs(60)),
            fleet_limit: Some(30),
        }),
        ..AbuseConfig::default()
    };
    let mut nodes = Vec::new();
    for name in ["edge-a", "edge-b", "edge-c"] {
        let mut n = Node::start(&config(&redis, name, None), &[]);
        let engine = Arc::new(AbuseEngine::new(&cfg, n.store.clone()));
        n.fleet.count_for(engine.clone());
        let s = n.fleet.stats();
        eventually(5, "connected", || s.connected()).await;
        nodes.push((n, engine));
    }
    let spreader: IpAddr = "198.51.100.70".parse().unwrap();
    let careful: IpAddr = "198.51.100.71".parse().unwrap();
    // 12 refused tokens on each node: under every local limit, 36 over the fleet's 30.
    // Another source: 9 on each, 27 in all, under both.
    for (_, engine) in &nodes {
        for _ in 0..12 {
            assert!(engine.record(spreader, Signal::AuthFailure).is_none());
        }
        for _ in 0..9 {
            assert!(engine.record(careful, Signal::AuthFailure).is_none());
        }
    }
    eventually(5, "the spreader is banned on every node", || {
        nodes.iter().all(|(n, _)| n.store.is_denied(spreader))
    })
    .await;
    never(500, "the careful source was banned", || {
        nodes.iter().any(|(n, _)| n.store.is_denied(careful))
    })
    .await;
    let reason = nodes[0]
        .0
        .store
        .list()
        .unwrap()
        .into_iter()
        .find(|r| r.target == "198.51.100.70")
        .unwrap()
        .reason;
    assert!(reason.contains("fleet-wide"), "{reason}");
    // Without the fleet, the same spread bans nobody: the local limits alone.
    let alone = AbuseEngine::new(&cfg, Arc::new(DenyStore::new(None, None, Vec::new())));
    for _ in 0..12 {
        assert!(alone.record(spreader, Signal::AuthFailure).is_none());
    }
    assert!(!alone.store().is_denied(spreader));
}
