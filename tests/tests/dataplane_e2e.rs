//! The data plane end to end: the real `gateway run` attached (XDP and TC) to a veth in a
//! network namespace made by the test, a client in a second namespace, real packets (ping,
//! TCP handshakes, an hping3 SYN flood), and the real CLI reading and writing the pins.

use gateway_tests::gateway::{cli, cli_ok, source_stats, stats, GatewayProcess};
use gateway_tests::netns::{in_netns, NetnsPair, TestNet};
use gateway_tests::probe::{connects_from, syn_flood};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

const PORT: u16 = 7000;

/// Everything one test made (see [`TestNet`]).
struct Env(TestNet);

impl std::ops::Deref for Env {
    type Target = TestNet;
    fn deref(&self) -> &TestNet {
        &self.0
    }
}

fn env(test: &str, short: &str) -> Option<Env> {
    TestNet::new(test, short).map(Env)
}

impl Env {
    fn write_config(&self, mode: &str, extra: &str) -> PathBuf {
        let path = self.dir.join("gateway.toml");
        let text = format!(
            "[ebpf]\ninterface = \"{}\"\nmode = \"{mode}\"\npin_path = \"{}\"\nstate_file = \"{}\"\n{extra}\n",
            self.pair.server_if,
            self.pin(),
            self.dir.join("deny-state.json").display()
        );
        std::fs::write(&path, text).expect("write config");
        path
    }

    fn start(&self, config: &Path) -> GatewayProcess {
        GatewayProcess::start(
            Some(&self.pair.server),
            config,
            &self.dir.join("gateway.log"),
        )
        .expect("gateway starts")
    }

    /// A listener on the server's address, inside the server namespace.
    fn listen(&self) -> TcpListener {
        let addr = SocketAddr::from((NetnsPair::SERVER4, PORT));
        in_netns(&self.pair.server, move || TcpListener::bind(addr))
            .expect("enter netns")
            .expect("bind listener")
    }

    /// A TCP handshake from `src` in the client namespace; `true` if it completes in time.
    fn connect(&self, src: Ipv4Addr, timeout: Duration) -> bool {
        let to = SocketAddrV4::new(NetnsPair::SERVER4, PORT);
        connects_from(&self.pair.client, src, to, timeout)
    }

    fn deny_add(&self, target: &str) {
        cli_ok(&[
            "deny",
            "add",
            target,
            "--reason",
            "e2e test",
            "--pin-path",
            &self.pin(),
        ]);
    }
}

fn deny_cycle(mode: &str, short: &str) {
    let Some(env) = env(&format!("deny_cycle_{mode}"), short) else {
        return;
    };
    let cfg = env.write_config(mode, "");
    let mut gw = env.start(&cfg);
    let _listener = env.listen();
    let client = NetnsPair::CLIENT4;

    assert!(env.pair.ping(None), "ping passes before any deny");
    assert!(
        env.connect(client, Duration::from_secs(2)),
        "TCP passes before any deny"
    );

    env.deny_add(&client.to_string());
    assert!(!env.pair.ping(None), "ping from a denied source is dropped");
    assert!(
        !env.connect(client, Duration::from_millis(700)),
        "TCP from a denied source gets no SYN-ACK"
    );
    assert!(
        env.connect(NetnsPair::CLIENT4_B, Duration::from_secs(2)),
        "another source still passes"
    );

    let s = stats(&env.fs.pin_path());
    assert!(s["totals"]["dropped_deny"].as_u64().unwrap() >= 2, "{s}");
    let src = source_stats(&s, &client.to_string()).expect("client is tracked");
    assert!(src["drops_deny"].as_u64().unwrap() >= 2, "{src}");
    let list: serde_json::Value = serde_json::from_str(&cli_ok(&[
        "deny",
        "list",
        "--json",
        "--pin-path",
        &env.pin(),
    ]))
    .unwrap();
    let entry = &list.as_array().unwrap()[0];
    assert_eq!(entry["target"], client.to_string());
    assert_eq!(entry["origin"], "manual");
    assert_eq!(entry["reason"], "e2e test");
    assert!(entry["hits"].as_u64().unwrap() >= 2);

    cli_ok(&["deny", "del", &client.to_string(), "--pin-path", &env.pin()]);
    assert!(env.pair.ping(None), "ping passes again after deny del");
    assert!(
        env.connect(client, Duration::from_secs(2)),
        "TCP passes again"
    );

    let status = gw.stop().expect("gateway was running");
    assert!(
        status.success(),
        "clean exit on SIGTERM: {status}\n{}",
        gw.log_text()
    );
    assert!(
        gw.log_text().contains("data plane detached"),
        "{}",
        gw.log_text()
    );
    // Detached: the namespace's traffic no longer goes through our program.
    let before = stats(&env.fs.pin_path())["totals"]["packets"]
        .as_u64()
        .unwrap();
    assert!(env.pair.ping(None));
    let after = stats(&env.fs.pin_path())["totals"]["packets"]
        .as_u64()
        .unwrap();
    assert_eq!(
        before, after,
        "no program counts packets after the gateway stopped"
    );
}

#[test]
fn deny_add_drops_and_deny_del_restores_xdp() {
    deny_cycle("xdp", "dx");
}

#[test]
fn deny_add_drops_and_deny_del_restores_tc() {
    deny_cycle("tc", "dt");
}

#[test]
fn cidr_deny_from_config_and_cli() {
    let Some(env) = env("cidr_deny_from_config_and_cli", "cd") else {
        return;
    };
    let cfg = env.write_config("xdp", "deny = [\"10.77.0.2/32\"]");
    let gw = env.start(&cfg);
    assert!(!env.pair.ping(None), "config deny list applies");
    assert!(env.pair.ping(Some(NetnsPair::CLIENT4_B)));
    cli_ok(&[
        "deny",
        "add",
        "10.77.0.0/24",
        "--ttl",
        "10m",
        "--pin-path",
        &env.pin(),
    ]);
    assert!(
        !env.pair.ping(Some(NetnsPair::CLIENT4_B)),
        "CLI prefix applies"
    );
    let s = stats(&env.fs.pin_path());
    assert!(
        s["totals"]["dropped_deny_cidr"].as_u64().unwrap() >= 1,
        "{s}"
    );
    drop(gw);
}

#[test]
fn sighup_applies_the_config_deny_list_and_refuses_a_bad_one() {
    let Some(env) = env("sighup_applies_the_config_deny_list", "rd") else {
        return;
    };
    let cfg = env.write_config("xdp", "");
    let mut gw = env.start(&cfg);
    assert!(env.pair.ping(None), "nothing denied at start");
    let reloads = |gw: &GatewayProcess, needle: &str| gw.log_text().matches(needle).count();

    // A deny entry added to the file applies on SIGHUP.
    env.write_config("xdp", "deny = [\"10.77.0.2/32\"]");
    gw.signal(nix::sys::signal::Signal::SIGHUP).expect("SIGHUP");
    gw.wait_for("ebpf settings changed", Duration::from_secs(10))
        .expect("reloaded");
    assert!(!env.pair.ping(None), "the reloaded deny list applies");
    assert!(env.pair.ping(Some(NetnsPair::CLIENT4_B)));

    // A list that does not parse changes nothing, and says why.
    env.write_config("xdp", "deny = [\"10.77.0.2/32\", \"not-an-address\"]");
    gw.signal(nix::sys::signal::Signal::SIGHUP).expect("SIGHUP");
    gw.wait_for("reload refused", Duration::from_secs(10))
        .expect("refused");
    let log = gw.log_text();
    assert!(
        log.contains("not-an-address"),
        "the problem is named:\n{log}"
    );
    assert!(!env.pair.ping(None), "the running deny list stays");

    // Emptied again: the entry is gone; the interface cannot change without a restart.
    let before = reloads(&gw, "config reloaded");
    let text = std::fs::read_to_string(&cfg)
        .expect("read config")
        .replace("deny = [\"10.77.0.2/32\", \"not-an-address\"]", "")
        .replacen(
            &format!("interface = \"{}\"", env.pair.server_if),
            "interface = \"lo\"",
            1,
        );
    std::fs::write(&cfg, text).expect("write config");
    gw.signal(nix::sys::signal::Signal::SIGHUP).expect("SIGHUP");
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while reloads(&gw, "config reloaded") == before {
        assert!(
            std::time::Instant::now() < deadline,
            "no reload:\n{}",
            gw.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(env.pair.ping(None), "the deny entry left with the file");
    let log = gw.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("only after a restart") && l.contains("ebpf.interface")),
        "{log}"
    );
    drop(gw);
}

#[test]
fn syn_flood_is_limited_and_allow_list_is_not() {
    let Some(env) = env("syn_flood_is_limited_and_allow_list_is_not", "sf") else {
        return;
    };
    let (rate, burst, count) = (50u64, 20u64, 1000u64);
    let cfg = env.write_config(
        "xdp",
        &format!(
            "protected_ports = [{PORT}]\nsyn_rate = {rate}\nsyn_burst = {burst}\nallow = [\"{}\"]",
            NetnsPair::CLIENT4_B
        ),
    );
    let gw = env.start(&cfg);
    let _listener = env.listen();

    let to = SocketAddrV4::new(NetnsPair::SERVER4, PORT);
    let flood = |src: Ipv4Addr| syn_flood(&env.pair.client, src, to, count);
    let elapsed = flood(NetnsPair::CLIENT4);
    flood(NetnsPair::CLIENT4_B);

    let s = stats(&env.fs.pin_path());
    let limited = source_stats(&s, &NetnsPair::CLIENT4.to_string()).expect("tracked");
    let syns = limited["syns"].as_u64().unwrap();
    let drops = limited["drops_rate"].as_u64().unwrap();
    assert_eq!(syns, count, "every SYN reached the program: {limited}");
    let passed = syns - drops;
    let allowed_max = burst + (rate as f64 * elapsed.as_secs_f64()).ceil() as u64 + 5;
    assert!(
        passed >= burst && passed <= allowed_max,
        "{passed} SYNs passed in {elapsed:?}; expected {burst}..={allowed_max}: {limited}"
    );

    let allowed = source_stats(&s, &NetnsPair::CLIENT4_B.to_string()).expect("tracked");
    assert_eq!(allowed["syns"].as_u64().unwrap(), count);
    assert_eq!(
        allowed["drops_rate"].as_u64().unwrap(),
        0,
        "allow-listed: {allowed}"
    );
    assert_eq!(s["totals"]["dropped_rate"].as_u64().unwrap(), drops);

    // The limit is per source: a fresh handshake from the allowed source still works.
    assert!(env.connect(NetnsPair::CLIENT4_B, Duration::from_secs(2)));
    drop(gw);
    assert!(
        std::fs::read_to_string(env.dir.join("gateway.log"))
            .unwrap_or_default()
            .contains("SYN rate limit tripped"),
        "the trip was reported from the ring buffer"
    );
}

#[test]
fn deny_entries_survive_a_restart() {
    let Some(env) = env("deny_entries_survive_a_restart", "rs") else {
        return;
    };
    let cfg = env.write_config("xdp", "");
    let mut gw = env.start(&cfg);
    env.deny_add(&NetnsPair::CLIENT4.to_string());
    assert!(!env.pair.ping(None));
    assert!(gw.stop().expect("running").success());

    // Without a running gateway the CLI still reads the pinned maps.
    let listed = cli_ok(&["deny", "list", "--pin-path", &env.pin()]);
    assert!(listed.contains("10.77.0.2"), "{listed}");

    let gw = env.start(&cfg);
    assert!(
        !env.pair.ping(None),
        "the deny entry is back in force after the restart"
    );
    drop(gw);
}

/// A gateway whose listen address is taken (say, by a gateway already running there) says so
/// and stops before it loads, attaches or pins anything.
#[test]
fn a_taken_listen_address_stops_start_up_before_the_data_plane() {
    let Some(env) = env("a_taken_listen_address_stops_start_up", "la") else {
        return;
    };
    let _taken = env.listen();
    let addr = SocketAddr::from((NetnsPair::SERVER4, PORT));
    let cfg = env.write_config(
        "xdp",
        &format!(
            "[listen]\nhttp = [\"{addr}\"]\n\n[[upstream]]\nname = \"app\"\nservers = [\"127.0.0.1:9\"]\n\n\
             [[route]]\nname = \"all\"\npath_prefix = \"/\"\nupstream = \"app\"\nauth = \"none\"\n"
        ),
    );
    let mut gw = GatewayProcess::spawn(Some(&env.pair.server), &cfg, &env.dir.join("gateway.log"))
        .expect("spawn gateway");
    let status = gw.wait_exit(Duration::from_secs(20)).expect("wait");
    let log = gw.log_text();
    let status = status.unwrap_or_else(|| panic!("still running:\n{log}"));
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(
        log.contains(&format!(
            "cannot listen on {addr}: another process already listens there"
        )),
        "{log}"
    );
    assert!(!log.contains("data plane"), "{log}");
    assert!(
        !Path::new(&env.pin()).exists(),
        "nothing pinned at {}",
        env.pin()
    );
}

#[test]
fn startup_errors_are_clear() {
    let Some(env) = env("startup_errors_are_clear", "se") else {
        return;
    };
    let path = env.dir.join("bad-iface.toml");
    std::fs::write(
        &path,
        format!(
            "[ebpf]\ninterface = \"nosuchif0\"\npin_path = \"{}\"\n",
            env.pin()
        ),
    )
    .unwrap();
    let out = cli(&["run", "--config", &path.display().to_string()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("no such interface `nosuchif0`"), "{err}");

    // A pin path outside any bpffs mount.
    std::fs::write(
        &path,
        format!(
            "[ebpf]\ninterface = \"lo\"\nmode = \"xdp-generic\"\npin_path = \"{}\"\n",
            env.dir.join("not-bpffs").display()
        ),
    )
    .unwrap();
    let out = cli(&["run", "--config", &path.display().to_string()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("not on a bpf filesystem") && err.contains("mount -t bpf"),
        "{err}"
    );
}
