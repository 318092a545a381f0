//! SIGHUP re-reads the whole config: routes, upstreams, token keys and limits change for
//! the next request (requests in flight finish with the old config, open connections stay);
//! a config with problems changes nothing and names each problem; settings that need a
//! restart are named in one warning line while the rest applies; an upstream that is gone
//! stops being health-checked.

use gateway_tests::client::{raw_exchange, Proto, Req};
use gateway_tests::proxy::{echoed, runtime, wait_until, Gw, Setup};
use gateway_tests::upstream::{ClosedPort, EchoUpstream};
use nix::sys::signal::Signal;
use std::time::{Duration, Instant};

/// Writes `config` over the gateway's config file, sends SIGHUP and waits until the log
/// has one more `needle` line than before (the reload's outcome).
fn reload(gw: &Gw, config: &str, needle: &str) {
    let before = gw.proc.log_text().matches(needle).count();
    std::fs::write(gw.path("gateway.toml"), config).expect("write config");
    gw.proc.signal(Signal::SIGHUP).expect("SIGHUP");
    wait_until(
        &format!("`{needle}` after SIGHUP"),
        Duration::from_secs(10),
        || gw.proc.log_text().matches(needle).count() > before,
    );
}

/// The gateway's config file with each `(from, to)` replaced; each `from` must be there.
fn edited(gw: &Gw, edits: &[(&str, &str)]) -> String {
    let mut text = std::fs::read_to_string(gw.path("gateway.toml")).expect("read config");
    for (from, to) in edits {
        assert!(text.contains(from), "`{from}` not in the config:\n{text}");
        text = text.replacen(from, to, 1);
    }
    text
}

/// The gateway's log has a line containing `needle`.
fn assert_logged(gw: &Gw, needle: &str) {
    let text = gw.proc.log_text();
    assert!(text.contains(needle), "no `{needle}` in the log:\n{text}");
}

const APPLIED: &str = "config reloaded:";
const REFUSED: &str = "reload refused";

/// `wrong.pem`'s public half, for a second `[[jwt.keys]]` entry.
fn write_second_public_key(gw: &Gw) {
    let out = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(gw.path("wrong.pem"))
        .output()
        .expect("run openssl");
    assert!(out.status.success(), "openssl pkey: {out:?}");
    std::fs::write(gw.path("wrong.pub.pem"), out.stdout).expect("write key");
}

#[test]
fn sighup_applies_routes_upstreams_keys_and_limits_without_failing_a_request() {
    let gw = Gw::start(Setup::default());
    let t = gw.tokens();
    let second = EchoUpstream::start().expect("second upstream");
    write_second_public_key(&gw);
    let config = edited(
        &gw,
        &[
            // A renamed route and a new one.
            (
                "name = \"open\"\npath_prefix = \"/open/\"",
                "name = \"opened\"\npath_prefix = \"/opened/\"",
            ),
            // The upstream moves to another server.
            (
                &format!("servers = [\"{}\"]", gw.upstream.addr()),
                &format!("servers = [\"{}\"]", second.addr()),
            ),
            // A second trusted key.
            (
                "[[upstream]]",
                &format!(
                    "[[jwt.keys]]\npem = \"{}\"\nalg = \"RS256\"\n\n[[upstream]]",
                    gw.path("wrong.pub.pem").display()
                ),
            ),
            // A lower body limit.
            (
                "http = [\"127.0.0.1:0\"]\n",
                "http = [\"127.0.0.1:0\"]\nmax_body_bytes = 64\n",
            ),
        ],
    ) + "\n[[route]]\nname = \"fresh\"\npath_prefix = \"/fresh/\"\nupstream = \"app\"\nauth = \"none\"\n";
    let body = "x".repeat(100);

    runtime().block_on(async {
        // Before: the old config answers.
        let r = gw
            .http
            .send(Proto::H1, Req::get("/api/k").bearer(&t.wrong_key))
            .await;
        assert_eq!(
            r.expect("request").status,
            401,
            "the second key is not trusted yet"
        );
        let r = gw
            .http
            .send(Proto::H1, Req::new("POST", "/open/big").body(&body))
            .await
            .expect("request");
        echoed(&r);

        // Connections opened before the reload, each with one request done.
        let mut kept = Vec::new();
        for proto in Proto::BOTH {
            let mut conn = gw.https.connect(proto).await.expect("connect");
            echoed(&conn.send(Req::get("/open/first")).await.expect("first"));
            kept.push(conn);
        }
        // A request in flight across the reload: the old upstream answers it slowly.
        let slow = {
            let client = gw.http.clone();
            tokio::spawn(async move {
                client
                    .send(
                        Proto::H1,
                        Req::get("/open/slow?delay_ms=3000").timeout(Duration::from_secs(10)),
                    )
                    .await
            })
        };
        let upstream = &gw.upstream;
        wait_until(
            "the slow request at the upstream",
            Duration::from_secs(5),
            || !upstream.hits_for("/open/slow").is_empty(),
        );

        reload(&gw, &config, APPLIED);
        assert!(
            !slow.is_finished(),
            "the slow request was in flight across the reload"
        );
        let log = gw.proc.log_text();
        for part in [
            "routes added [fresh, opened], removed [open]",
            "upstreams changed [app]",
            "jwt issuers changed [default]",
            "limits changed [max_body_bytes]",
        ] {
            assert!(log.contains(part), "the summary lacks `{part}`:\n{log}");
        }
        assert!(
            !log.contains("only after a restart"),
            "nothing here needs a restart:\n{log}"
        );

        // The request in flight finished with the old config's answer.
        let r = slow.await.expect("task").expect("the slow request");
        assert_eq!(echoed(&r)["path"], "/open/slow");
        assert!(second.hits_for("/open/slow").is_empty());

        // The connections opened before serve their next request with the new config.
        for conn in &mut kept {
            let what = format!("{:?} connection from before the reload", conn.proto());
            let r = conn.send(Req::get("/fresh/kept")).await.expect(&what);
            echoed(&r);
            let r = conn.send(Req::get("/open/kept")).await.expect(&what);
            assert_eq!(r.status, 404, "{what}: the old route is gone");
        }
        assert_eq!(
            second.hits_for("/fresh/kept").len(),
            2,
            "the new server answers"
        );
        assert!(gw.upstream.hits_for("/fresh/kept").is_empty());

        // New routes served, the old one 404; the new key accepted; the new limit held.
        let r = gw
            .http
            .send(Proto::H1, Req::get("/open/x"))
            .await
            .expect("request");
        assert_eq!(r.status, 404);
        echoed(
            &gw.http
                .send(Proto::H1, Req::get("/opened/x"))
                .await
                .expect("request"),
        );
        assert_eq!(second.hits_for("/opened/x").len(), 1);
        let r = gw
            .http
            .send(Proto::H1, Req::get("/api/k").bearer(&t.wrong_key))
            .await;
        echoed(&r.expect("request"));
        echoed(
            &gw.http
                .send(Proto::H1, Req::get("/api/k").bearer(&t.rw))
                .await
                .expect("request"),
        );
        let r = gw
            .http
            .send(Proto::H1, Req::new("POST", "/opened/big").body(&body))
            .await
            .expect("request");
        assert_eq!(r.status, 413, "max_body_bytes = 64: {r:?}");
        assert!(second.hits_for("/opened/big").is_empty());
    });
}

#[test]
fn a_config_with_problems_changes_nothing_and_names_each_problem() {
    let gw = Gw::start(Setup::default());
    let good = edited(&gw, &[("name = \"open\"\n", "name = \"renamed\"\n")]);
    let closed = ClosedPort::new().expect("closed port");
    let jwks_url = format!("https://{}/jwks.json", closed.addr());
    let broken = [
        // An unknown key: the file, line and key are named.
        (
            edited(
                &gw,
                &[
                    ("name = \"open\"\n", "name = \"renamed\"\n"),
                    (
                        "http = [\"127.0.0.1:0\"]\n",
                        "http = [\"127.0.0.1:0\"]\nmax_body_byte = 5\n",
                    ),
                ],
            ),
            "listen.max_body_byte",
        ),
        // A certificate file that is not there.
        (
            edited(
                &gw,
                &[
                    ("name = \"open\"\n", "name = \"renamed\"\n"),
                    ("tls.crt", "missing.crt"),
                ],
            ),
            "missing.crt",
        ),
        // A new JWKS URL whose first fetch fails: the running keys stay.
        (
            edited(
                &gw,
                &[
                    ("name = \"open\"\n", "name = \"renamed\"\n"),
                    (
                        "[[upstream]]",
                        &format!("[[jwt.keys]]\njwks_url = \"{jwks_url}\"\ntimeout = \"2s\"\n\n[[upstream]]"),
                    ),
                ],
            ),
            &jwks_url,
        ),
    ];
    runtime().block_on(async {
        for (config, problem) in &broken {
            reload(&gw, config, REFUSED);
            let log = gw.proc.log_text();
            assert!(
                log.lines()
                    .any(|l| l.contains("reload:") && l.contains(problem)),
                "no line names `{problem}`:\n{log}"
            );
            if !problem.starts_with("https://") {
                assert!(log.contains("gateway.toml:"), "the file is named:\n{log}");
            }
            assert!(!log.contains(APPLIED), "nothing applied:\n{log}");
            // Still the old config, on both listeners.
            for tls in [false, true] {
                let r = gw
                    .client(tls)
                    .send(Proto::H1, Req::get("/open/still"))
                    .await
                    .expect("request");
                echoed(&r);
            }
        }
        // A good file after the bad ones applies.
        reload(&gw, &good, APPLIED);
        assert!(gw
            .proc
            .log_text()
            .contains("routes added [renamed], removed [open]"));
    });
}

#[test]
fn settings_that_need_a_restart_are_named_and_the_rest_applies() {
    let gw = Gw::start(Setup::default());
    let config = edited(
        &gw,
        &[
            ("http = [\"127.0.0.1:0\"]\n", "http = [\"127.0.0.1:1\"]\n"),
            ("worker_threads = 2", "worker_threads = 3"),
            (
                "name = \"open\"\npath_prefix = \"/open/\"",
                "name = \"opened\"\npath_prefix = \"/opened/\"",
            ),
        ],
    );
    reload(&gw, &config, APPLIED);
    let log = gw.proc.log_text();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("only after a restart"))
        .collect();
    assert_eq!(warnings.len(), 1, "one warning line:\n{log}");
    assert!(
        warnings[0].contains("runtime.worker_threads, listen.http"),
        "{}",
        warnings[0]
    );
    runtime().block_on(async {
        // The listener that runs stays; the route change applied.
        let r = gw
            .http
            .send(Proto::H1, Req::get("/opened/x"))
            .await
            .expect("request");
        echoed(&r);
        let r = gw
            .http
            .send(Proto::H1, Req::get("/open/x"))
            .await
            .expect("request");
        assert_eq!(r.status, 404);
    });
}

/// The upstream names the admin endpoint's `/stats.json` lists.
fn dashboard_upstreams(gw: &Gw) -> Vec<String> {
    // Announced after the proxy's listeners.
    let admin_addr = || -> Option<std::net::SocketAddr> {
        gw.proc
            .log_text()
            .lines()
            .find_map(|l| l.split("admin endpoint on http://").nth(1))
            // The text format follows the message with the event's fields.
            .and_then(|a| a.split_whitespace().next())
            .and_then(|a| a.parse().ok())
    };
    wait_until(
        "the admin address in the log",
        Duration::from_secs(10),
        || admin_addr().is_some(),
    );
    let addr = admin_addr().expect("admin address");
    let reply = raw_exchange(
        addr,
        b"GET /stats.json HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .expect("stats.json");
    let text = reply.text();
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let doc: serde_json::Value = serde_json::from_str(body).expect("stats.json is JSON");
    doc["upstreams"]
        .as_array()
        .expect("upstreams")
        .iter()
        .map(|u| u["name"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn an_upstream_removed_by_a_reload_is_no_longer_health_checked() {
    let gw = Gw::start(Setup {
        listen: "\n[admin]\nlisten = \"127.0.0.1:0\"\n",
        ..Setup::default()
    });
    assert_eq!(dashboard_upstreams(&gw), ["app"]);
    let checked = EchoUpstream::start().expect("checked upstream");
    let base = std::fs::read_to_string(gw.path("gateway.toml")).expect("read config");
    let with_checked = format!(
        "{base}\n[[upstream]]\nname = \"checked\"\nservers = [\"{}\"]\nhealth_check = {{ path = \"/healthz\", interval = \"100ms\", timeout = \"1s\" }}\n\n[[route]]\nname = \"c\"\npath_prefix = \"/c/\"\nupstream = \"checked\"\nauth = \"none\"\n",
        checked.addr()
    );
    let probes = || checked.hits_for("/healthz").len();

    // Added by a reload: its checks start.
    reload(&gw, &with_checked, APPLIED);
    wait_until(
        "health checks of the added upstream",
        Duration::from_secs(5),
        || probes() >= 3,
    );

    // An unrelated change keeps its checks going.
    let renamed = with_checked.replacen("name = \"open\"\n", "name = \"renamed\"\n", 1);
    reload(&gw, &renamed, APPLIED);
    let n = probes();
    wait_until(
        "health checks after an unrelated reload",
        Duration::from_secs(5),
        || probes() >= n + 3,
    );

    // Removed: its checks stop. Over 15 intervals at most the probe that was on its way
    // when the reload ended arrives.
    reload(&gw, &base, APPLIED);
    let stopped_at = probes();
    let deadline = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < deadline {
        assert!(
            probes() <= stopped_at + 1,
            "the removed upstream is still health-checked ({} probes after {stopped_at}):\n{}",
            probes(),
            gw.proc.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    runtime().block_on(async {
        let r = gw
            .http
            .send(Proto::H1, Req::get("/c/x"))
            .await
            .expect("request");
        assert_eq!(r.status, 404, "its route went with it");
    });
}

/// `[log] access` and `query` change with a reload: the next request's line goes to the new
/// file with the new setting, the old file keeps the earlier lines; an output that cannot
/// be opened refuses the reload (the running log keeps writing); `format` is named as
/// needing a restart.
#[test]
fn a_reload_moves_the_access_log_and_names_the_log_format_as_restart_only() {
    let gw = Gw::start(Setup {
        access_log: Some(""),
        ..Setup::default()
    });
    let rt = runtime();
    let get = |path: &str| {
        rt.block_on(gw.http.send(Proto::H1, Req::get(path)))
            .expect("request")
    };
    assert_eq!(get("/open/one?q=1").status, 200);
    let first = gw.access_lines("access.log", 1);
    assert_eq!(first[0]["path"], "/open/one", "query off: {}", first[0]);

    let old = gw.path("access.log").display().to_string();
    let new = gw.path("moved.log").display().to_string();
    reload(
        &gw,
        &edited(
            &gw,
            &[
                (old.as_str(), new.as_str()),
                ("[log]\n", "[log]\nquery = true\n"),
            ],
        ),
        APPLIED,
    );
    assert_logged(&gw, "access log reopened");
    assert_eq!(get("/open/two?q=2").status, 200);
    let moved = gw.access_lines("moved.log", 1);
    assert_eq!(moved.len(), 1, "{moved:?}");
    assert_eq!(moved[0]["path"], "/open/two?q=2", "query on: {}", moved[0]);
    assert_eq!(
        gw.access_lines("access.log", 1).len(),
        1,
        "the old file keeps its line"
    );

    // A directory that does not exist: refused, and the running log keeps its file.
    let missing = gw.path("no-such-dir/x.log").display().to_string();
    reload(
        &gw,
        &edited(&gw, &[(new.as_str(), missing.as_str())]),
        REFUSED,
    );
    assert_logged(&gw, "log.access");
    assert_eq!(get("/open/three").status, 200);
    assert_eq!(gw.access_lines("moved.log", 2).len(), 2);

    // The operational log's format is set once: named, the rest applied.
    reload(
        &gw,
        &edited(
            &gw,
            &[
                (missing.as_str(), new.as_str()),
                ("[log]\n", "[log]\nformat = \"json\"\n"),
            ],
        ),
        APPLIED,
    );
    let text = gw.proc.log_text();
    let warning = text
        .lines()
        .rfind(|l| l.contains("take effect only after a restart"))
        .unwrap_or_else(|| panic!("no restart warning:\n{text}"));
    assert!(warning.contains("log.format"), "{warning}");
}
