//! The fleet end to end: `gateway run` processes sharing one real `redis-server` (started by
//! the test on a free loopback port and a Unix socket). Nodes A, B and the late D run on the
//! host's loopback (admin endpoint, no data plane) and reach Redis over TCP; node C runs in a
//! server namespace with XDP on its veth and reaches Redis through the Unix socket, so a ban
//! received from the fleet is seen dropping a client namespace's pings in the kernel.
//!
//! A manual deny on A is enforced on C and listed on B with its node; its removal travels;
//! with Redis killed, bans already received keep dropping and a ban made on B is enforced on B
//! at once, then reaches A and C when Redis is back; a node started later holds the fleet's
//! bans. (Automatic bans, forged messages and signed mode: gateway/tests/fleet.rs, same code
//! against the same real Redis.)

use gateway_tests::gateway::{bin, cli, GatewayProcess};
use gateway_tests::netns::{exec_in, NetnsPair, TestNet};
use gateway_tests::redis::RedisServer;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
}

/// A node's config: its admin endpoint, the fleet, and a proxy or a data plane.
fn write_config(dir: &Path, name: &str, redis_url: &str, admin: SocketAddr, rest: &str) -> PathBuf {
    let text = format!(
        r#"
[admin]
listen = "{admin}"

[fleet]
redis_url = "{redis_url}"
node = "{name}"
key_prefix = "e2e:"
{rest}
"#
    );
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).expect("write config");
    path
}

/// A proxy on loopback (user-space enforcement only), its upstream never reached.
const LOOPBACK_PROXY: &str = r#"
[listen]
http = ["127.0.0.1:0"]

[[upstream]]
name = "app"
servers = ["127.0.0.1:9"]

[[route]]
path_prefix = "/"
upstream = "app"
auth = "none"
"#;

fn start_loopback_node(
    dir: &Path,
    name: &str,
    redis: &RedisServer,
) -> (GatewayProcess, SocketAddr) {
    let admin = free_addr();
    // No data plane; the state file is what the deny list is read from.
    let rest = format!(
        "{LOOPBACK_PROXY}\n[ebpf]\nmode = \"off\"\nstate_file = \"{}/{name}-deny.json\"\n",
        dir.display()
    );
    let config = write_config(dir, name, &redis.url(), admin, &rest);
    let mut gw = GatewayProcess::start_proxy(&config, &dir.join(format!("{name}.log")), 1, &[])
        .expect("gateway starts");
    gw.wait_for("admin endpoint on", Duration::from_secs(20))
        .expect("admin endpoint");
    (gw, admin)
}

/// The deny list of the gateway whose admin endpoint is `admin` (inside `netns` if given).
fn deny_list(netns: Option<&str>, admin: SocketAddr) -> Vec<serde_json::Value> {
    let args = ["deny", "list", "--json", "--admin", &admin.to_string()];
    let out = match netns {
        Some(ns) => exec_in(ns, &bin().display().to_string())
            .args(args)
            .output()
            .expect("run gateway deny list"),
        None => cli(&args),
    };
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .expect("deny list --json")
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn entry(list: &[serde_json::Value], target: &str) -> Option<serde_json::Value> {
    list.iter().find(|e| e["target"] == target).cloned()
}

fn deny(admin: SocketAddr, args: &[&str]) {
    let mut all = vec!["deny"];
    all.extend_from_slice(args);
    let a = admin.to_string();
    all.extend_from_slice(&["--admin", &a]);
    let out = cli(&all);
    assert!(out.status.success(), "gateway {all:?}: {out:?}");
}

/// One plain GET of `path` from the admin endpoint: the body.
fn admin_get(admin: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect_timeout(&admin, Duration::from_secs(2)).expect("connect admin");
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn eventually(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if cond() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("not within {secs}s: {what}");
}

#[test]
fn bans_travel_between_three_gateways_through_redis_and_survive_its_outage() {
    let Some(net) = TestNet::new(
        "bans_travel_between_three_gateways_through_redis_and_survive_its_outage",
        "flt",
    ) else {
        return;
    };
    let mut redis = RedisServer::start();
    let dir = &net.dir;
    let (mut a, admin_a) = start_loopback_node(dir, "edge-a", &redis);
    let (mut b, admin_b) = start_loopback_node(dir, "edge-b", &redis);
    // C: the data plane on the server side of the veth pair, in the server namespace.
    let admin_c = SocketAddr::from(([127, 0, 0, 1], 9911));
    let ebpf = format!(
        "[ebpf]\ninterface = \"{}\"\nmode = \"xdp\"\npin_path = \"{}\"\nstate_file = \"{}/c-deny.json\"\n",
        net.pair.server_if,
        net.pin(),
        dir.display()
    );
    let config_c = write_config(dir, "edge-c", &redis.unix_url(), admin_c, &ebpf);
    let mut c = GatewayProcess::start(Some(&net.pair.server), &config_c, &dir.join("edge-c.log"))
        .expect("gateway C with its data plane");
    c.wait_for("admin endpoint on", Duration::from_secs(10))
        .expect("C's admin endpoint");
    for (gw, name) in [(&mut a, "A"), (&mut b, "B"), (&mut c, "C")] {
        gw.wait_for("fleet: connected to Redis", Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("{name} connects: {e}"));
    }
    let client = NetnsPair::CLIENT4.to_string();
    let client_b = NetnsPair::CLIENT4_B.to_string();
    assert!(net.pair.ping(None), "the client reaches C before any ban");

    // A manual deny on A: dropped by C's XDP, listed on B with its node.
    deny(
        admin_a,
        &["add", &client, "--ttl", "10m", "--reason", "fleet e2e"],
    );
    eventually(10, "C drops the client", || !net.pair.ping(None));
    eventually(5, "B lists the ban", || {
        entry(&deny_list(None, admin_b), &client).is_some()
    });
    let on_b = entry(&deny_list(None, admin_b), &client).expect("B lists the ban");
    assert_eq!(on_b["node"], "edge-a", "{on_b}");
    assert_eq!(on_b["origin"], "manual");
    let on_c = entry(&deny_list(Some(&net.pair.server), admin_c), &client).expect("C lists it");
    assert_eq!(on_c["node"], "edge-a");
    eventually(5, "A lists its own ban without a node", || {
        entry(&deny_list(None, admin_a), &client).is_some_and(|e| e["node"].is_null())
    });

    // Its removal travels.
    deny(admin_a, &["del", &client]);
    eventually(10, "C lets the client through again", || {
        net.pair.ping(None)
    });
    eventually(5, "B drops the entry", || {
        entry(&deny_list(None, admin_b), &client).is_none()
    });

    // Banned again, then Redis killed: what C holds keeps dropping, B bans alone at once.
    deny(admin_a, &["add", &client, "--ttl", "10m"]);
    eventually(10, "C drops the client again", || !net.pair.ping(None));
    redis.stop();
    eventually(10, "B reports Redis gone", || {
        admin_get(admin_b, "/metrics").contains("gateway_fleet_connected 0")
    });
    deny(admin_b, &["add", &client_b, "--ttl", "10m"]);
    // Listed from the state file, which a background thread writes (within 500 ms).
    eventually(5, "B lists its own ban", || {
        entry(&deny_list(None, admin_b), &client_b).is_some()
    });
    assert!(!net.pair.ping(None), "C still drops what it received");
    assert!(
        net.pair.ping(Some(NetnsPair::CLIENT4_B)),
        "B's ban cannot have reached C with Redis down"
    );
    let metrics_b = admin_get(admin_b, "/metrics");
    assert!(
        metrics_b.contains("gateway_fleet_queue_length 1"),
        "{metrics_b}"
    );

    // Redis back (empty): B's queued ban reaches A and C; A puts its own ban back.
    redis.resume();
    eventually(20, "C drops B's ban", || {
        !net.pair.ping(Some(NetnsPair::CLIENT4_B))
    });
    eventually(5, "A lists B's ban", || {
        entry(&deny_list(None, admin_a), &client_b).is_some()
    });
    let on_a = entry(&deny_list(None, admin_a), &client_b).expect("A lists B's ban");
    assert_eq!(on_a["node"], "edge-b");
    eventually(10, "A's ban is back in Redis", || {
        redis
            .cli(&["ZSCORE", "e2e:bans", &client])
            .is_ok_and(|s| !s.trim().is_empty())
    });

    // A node started now holds the fleet's bans.
    let (_d, admin_d) = start_loopback_node(dir, "edge-d", &redis);
    eventually(10, "D holds both bans", || {
        let list = deny_list(None, admin_d);
        entry(&list, &client).is_some_and(|e| e["node"] == "edge-a")
            && entry(&list, &client_b).is_some_and(|e| e["node"] == "edge-b")
    });

    // `gateway stats` shows the fleet's state.
    let out = exec_in(&net.pair.server, &bin().display().to_string())
        .args([
            "stats",
            "--pin-path",
            &net.pin(),
            "--admin",
            &admin_c.to_string(),
        ])
        .output()
        .expect("gateway stats");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("fleet: connected"), "{text}");
    drop(c);
}
