//! The process: a second instance on the same addresses refuses to start, and SIGTERM
//! drains the requests in flight before the gateway exits.

use gateway_tests::client::{Proto, Req};
use gateway_tests::gateway::GatewayProcess;
use gateway_tests::proxy::{echoed, runtime, wait_until, Gw, Setup};
use nix::sys::signal::Signal;
use std::net::TcpStream;
use std::time::{Duration, Instant};

/// A second gateway on addresses the first listens on refuses to start, naming the address,
/// before it binds any: SO_REUSEPORT would otherwise let it join the first one's listeners
/// and silently take a share of the connections. Every address is checked before any is
/// bound, so a taken second address does not briefly expose the first.
#[test]
fn a_second_instance_on_the_same_addresses_refuses_to_start() {
    let gw = Gw::start(Setup::default());
    let t = gw.tokens();
    let config = std::fs::read_to_string(gw.path("gateway.toml")).expect("read config");
    let (https, http) = (gw.https.addr(), gw.http.addr());
    let both = config
        .replacen(
            r#"https = ["127.0.0.1:0"]"#,
            &format!(r#"https = ["{https}"]"#),
            1,
        )
        .replacen(
            r#"http = ["127.0.0.1:0"]"#,
            &format!(r#"http = ["{http}"]"#),
            1,
        );
    let second_only = config.replacen(
        r#"http = ["127.0.0.1:0"]"#,
        &format!(r#"http = ["{http}"]"#),
        1,
    );
    for (name, text, taken) in [("both", both, https), ("second", second_only, http)] {
        assert_ne!(
            text, config,
            "{name}: the config names the first one's addresses"
        );
        let path = gw.path(&format!("{name}.toml"));
        std::fs::write(&path, text).expect("write config");
        let mut second = GatewayProcess::spawn(None, &path, &gw.path(&format!("{name}.log")))
            .expect("spawn gateway");
        let status = second
            .wait_exit(Duration::from_secs(20))
            .expect("wait for the second gateway");
        let log = second.log_text();
        let status = status.unwrap_or_else(|| panic!("{name}: still running:\n{log}"));
        assert!(!status.success(), "{name}: {status:?}\n{log}");
        assert!(
            log.contains(&format!(
                "cannot listen on {taken}: another process already listens there"
            )),
            "{name}: {log}"
        );
        assert!(!log.contains("listening on"), "{name}: {log}");
    }
    // The first one serves on.
    let rt = runtime();
    rt.block_on(async {
        for proto in Proto::BOTH {
            let reply = gw
                .https
                .send(proto, Req::get("/api/items").bearer(&t.rw))
                .await
                .unwrap_or_else(|e| panic!("{proto:?}: {e:#}"));
            assert_eq!(reply.status, 200, "{proto:?}: {reply:?}");
        }
    });
}

#[test]
fn sigterm_drains_in_flight_requests_then_exits() {
    let mut gw = Gw::start(Setup {
        listen: r#"shutdown_grace = "5s""#,
        ..Setup::default()
    });
    let t = gw.tokens();
    let https = gw.https.addr();
    let http = gw.http.addr();
    let rt = runtime();
    let mut in_flight = Vec::new();
    for proto in Proto::BOTH {
        let conn = rt.block_on(gw.https.connect(proto)).expect("connect");
        let token = t.rw.clone();
        in_flight.push(rt.spawn(async move {
            let mut conn = conn;
            conn.send(Req::get("/api/slow?delay_ms=1000").bearer(&token))
                .await
        }));
    }
    // Both requests are at the upstream: they are in flight.
    gw.upstream
        .wait_for_hits(2, Duration::from_secs(5))
        .expect("requests reach the upstream");
    let sigterm = Instant::now();
    gw.proc.signal(Signal::SIGTERM).expect("SIGTERM");

    // New connections are refused once the listeners close.
    for addr in [https, http] {
        wait_until(
            &format!("{addr} refuses connections after SIGTERM"),
            Duration::from_secs(3),
            || {
                matches!(
                    TcpStream::connect_timeout(&addr, Duration::from_millis(500)),
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
                )
            },
        );
    }

    // The in-flight requests still complete.
    for (proto, task) in Proto::BOTH.into_iter().zip(in_flight) {
        let reply = rt
            .block_on(task)
            .expect("task")
            .unwrap_or_else(|e| panic!("{proto:?} in-flight request failed: {e:#}"));
        assert_eq!(echoed(&reply)["path"], "/api/slow", "{proto:?}");
    }
    let status = gw
        .proc
        .wait_exit(Duration::from_secs(5))
        .expect("wait")
        .unwrap_or_else(|| panic!("still running 5 s after SIGTERM:\n{}", gw.proc.log_text()));
    assert!(
        status.success(),
        "exit status {status}:\n{}",
        gw.proc.log_text()
    );
    assert!(
        sigterm.elapsed() < Duration::from_secs(5),
        "took {:?} to exit",
        sigterm.elapsed()
    );
    assert_eq!(gw.upstream.hits(), 2);
}
