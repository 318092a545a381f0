//! The admin dashboard in a real browser: the gateway in a server namespace with XDP on its
//! veth, a TLS listener and the admin endpoint with an API token; real traffic from a client
//! namespace (valid requests, refusals, a banned source whose SYNs the kernel drops); headless
//! Chromium (Debian's `chromium`) in the server namespace, driven through the Chrome DevTools
//! Protocol over `--remote-debugging-pipe`. The page must ask for the token, show the numbers
//! `/stats.json` and `/metrics` give, list the ban and lift it through the deny API, keep its
//! layout still between polls, and log no console errors. Screenshots (laptop and phone
//! widths, light and dark) are kept under `target/dashboard-e2e/`.
//!
//! Also here: the monitoring files in `deploy/` (the Grafana dashboard and the Prometheus
//! alert rules) are well-formed, and every metric they query is one the running gateway
//! exports.

use anyhow::Result;
use gateway_tests::browser::Browser;
use gateway_tests::config::{hs256_jwt_section, self_signed_ip_cert, tls_section, xdp_section};
use gateway_tests::gateway::{bin, mint_hs256, GatewayProcess};
use gateway_tests::netns::{exec_in, in_netns, NetnsPair, TestNet};
use gateway_tests::probe::curl_status_from;
use gateway_tests::upstream::EchoUpstream;
use serde_json::{json, Value};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use yaml_rust2::{Yaml, YamlLoader};

const HTTPS_PORT: u16 = 8443;
const ADMIN: &str = "127.0.0.1:9901";
const ADMIN_TOKEN: &str = "dashboard-e2e-admin-token-7f3a9c";
const CLIENT: Ipv4Addr = NetnsPair::CLIENT4;
const BANNED: Ipv4Addr = NetnsPair::CLIENT4_B;
/// The alerts `prometheus/alerts.yml` must define and `alerts_test.yml` must test.
const REQUIRED_ALERTS: [&str; 6] = [
    "GatewayVerifierFailuresRising",
    "GatewayJwksStale",
    "GatewayUpstreamDown",
    "GatewayUpstreamServerDown",
    "GatewayDropsSpiking",
    "GatewayDenyMapNearlyFull",
];

// ---- the gateway under test -----------------------------------------------------------------

struct Env {
    net: TestNet,
    secret: PathBuf,
    config: PathBuf,
    upstream: EchoUpstream,
}

impl Env {
    /// `abuse`: whether the gateway runs the abuse engine (`[abuse]`), which counts the top
    /// sources' requests and refusals.
    fn new(test: &str, short: &str, abuse: bool) -> Option<Self> {
        let net = TestNet::new(test, short)?;
        let dir = net.dir.clone();
        self_signed_ip_cert(&dir, "10.77.0.1").expect("openssl makes a certificate");
        let secret = dir.join("hs256.secret");
        std::fs::write(&secret, b"dashboard-e2e-secret-0123456789ab").expect("secret");
        std::fs::write(dir.join("admin.token"), format!("{ADMIN_TOKEN}\n")).expect("token");
        let upstream = in_netns(&net.pair.server, EchoUpstream::start)
            .expect("enter netns")
            .expect("upstream");
        let d = dir.display();
        let text = format!(
            r#"
[listen]
https = ["10.77.0.1:{HTTPS_PORT}"]

{tls}
{jwt}

[[upstream]]
name = "app"
servers = ["{upstream}"]

[[route]]
name = "api"
path_prefix = "/api/"
upstream = "app"

[admin]
listen = "{ADMIN}"
api_token_file = "{d}/admin.token"

{abuse}

{ebpf}"#,
            tls = tls_section(&dir),
            jwt = hs256_jwt_section(&secret),
            upstream = upstream.addr(),
            abuse = if abuse { "[abuse]" } else { "" },
            ebpf = xdp_section(&net),
        );
        let config = dir.join("gateway.toml");
        std::fs::write(&config, text).expect("write config");
        Some(Self {
            net,
            secret,
            config,
            upstream,
        })
    }

    fn start(&self) -> GatewayProcess {
        let mut gw = GatewayProcess::start(
            Some(&self.net.pair.server),
            &self.config,
            &self.net.dir.join("gateway.log"),
        )
        .expect("gateway starts");
        gw.wait_for("admin endpoint on", Duration::from_secs(10))
            .expect("admin endpoint");
        gw
    }

    /// One HTTPS GET from `src`; the status, 0 without an HTTP answer.
    fn get(&self, src: Ipv4Addr, token: Option<&str>) -> u16 {
        let auth = token.map(|t| format!("Authorization: Bearer {t}"));
        let mut args = vec!["-k"];
        if let Some(h) = &auth {
            args.extend(["-H", h.as_str()]);
        }
        curl_status_from(
            &self.net.pair.client,
            src,
            2,
            &args,
            &format!("https://10.77.0.1:{HTTPS_PORT}/api/items"),
        )
    }

    /// A request to the admin endpoint from inside the server namespace, with the token.
    fn admin(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        let mut cmd = exec_in(&self.net.pair.server, "curl");
        cmd.args([
            "-s",
            "--max-time",
            "5",
            "-X",
            method,
            "-w",
            "\n%{http_code}",
        ])
        .args(["-H", &format!("Authorization: Bearer {ADMIN_TOKEN}")]);
        if let Some(b) = body {
            cmd.args(["-H", "Content-Type: application/json", "--data-binary", b]);
        }
        let out = cmd
            .arg(format!("http://{ADMIN}{path}"))
            .output()
            .expect("run curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, status) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (status.trim().parse().unwrap_or(0), body.to_owned())
    }

    fn stats_json(&self) -> Value {
        let (status, body) = self.admin("GET", "/stats.json", None);
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).expect("stats.json is JSON")
    }

    /// The sum of every sample of `name` in `/metrics`.
    fn metric(&self, name: &str) -> u64 {
        self.metric_lines(name)
            .iter()
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    /// Every sample line of `name` in `/metrics`.
    fn metric_lines(&self, name: &str) -> Vec<String> {
        let (status, text) = self.admin("GET", "/metrics", None);
        assert_eq!(status, 200);
        text.lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
            })
            .map(str::to_owned)
            .collect()
    }

    /// A token the gateway accepts.
    fn token(&self) -> String {
        mint_hs256(
            &self.secret,
            r#"{"scope":"read write","sub":"dashboard"}"#,
            &[],
        )
    }
}

/// Where the screenshots go: `target/dashboard-e2e/`.
fn artefacts() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("dashboard-e2e");
    std::fs::create_dir_all(&dir).expect("artefact dir");
    dir
}

/// `data-value` of the element `id` as a number.
fn shown(b: &mut Browser, id: &str) -> Result<Option<u64>> {
    let v = b.eval(&format!(
        "document.getElementById({}).dataset.value",
        json!(id)
    ))?;
    Ok(v.as_str().and_then(|s| s.parse().ok()))
}

#[test]
fn the_dashboard_shows_the_gateway_and_lifts_a_ban() {
    let Some(env) = Env::new("the dashboard in a browser", "dash", true) else {
        return;
    };
    let _gw = env.start();
    let token = env.token();

    // Traffic: 6 valid requests, 2 with a broken token, 1 without one.
    for _ in 0..6 {
        assert_eq!(env.get(CLIENT, Some(&token)), 200);
    }
    for _ in 0..2 {
        assert_eq!(env.get(CLIENT, Some("not.a.token")), 401);
    }
    assert_eq!(env.get(CLIENT, None), 401);
    // A ban through the deny API; the banned source's SYNs are then dropped in XDP.
    let (status, body) = env.admin(
        "POST",
        "/deny",
        Some(r#"{"target":"10.77.0.3","ttl":"10m","reason":"dashboard-e2e"}"#),
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        env.get(BANNED, Some(&token)),
        0,
        "the banned source gets no answer"
    );

    let mut b = Browser::launch(&env.net.pair.server, &env.net.dir).expect("chromium starts");
    b.emulate(1280, 900, false, "light").expect("emulate");
    b.call(
        "Page.navigate",
        json!({ "url": format!("http://{ADMIN}/") }),
    )
    .expect("navigate");

    // The token is asked for; a wrong one is refused, the right one kept in the tab only.
    b.wait_for(
        "!document.getElementById('login').hidden",
        Duration::from_secs(10),
    )
    .expect("the login form shows");
    assert_eq!(
        b.eval("document.getElementById('main').hidden")
            .expect("eval"),
        true
    );
    for (attempt, secret) in [
        ("wrong", "not-the-admin-token-at-all"),
        ("right", ADMIN_TOKEN),
    ] {
        b.eval("document.getElementById('token').focus()")
            .expect("focus");
        b.call("Input.insertText", json!({ "text": secret }))
            .expect("type");
        b.click("#login-form button[type=submit]").expect("sign in");
        if attempt == "wrong" {
            b.wait_for(
                "document.getElementById('login-message').textContent.includes('refused')",
                Duration::from_secs(10),
            )
            .expect("a wrong token is refused");
            assert_eq!(
                b.eval("document.getElementById('main').hidden")
                    .expect("eval"),
                true
            );
        }
    }
    b.wait_for(
        "!document.getElementById('main').hidden && document.getElementById('c-requests').dataset.value",
        Duration::from_secs(10),
    )
    .expect("the dashboard shows data after signing in");
    assert_eq!(
        b.eval(
            "[sessionStorage.getItem('gateway-admin-token'), localStorage.length, document.cookie]"
        )
        .expect("eval"),
        json!([ADMIN_TOKEN, 0, ""]),
        "the token is in the tab's session storage only"
    );
    // Enough samples for rates and chart lines.
    b.wait_for(
        "document.querySelectorAll('#ch-requests path.line').length > 0",
        Duration::from_secs(10),
    )
    .expect("the request chart draws");

    // The numbers shown are those of /stats.json and /metrics.
    let stats = env.stats_json();
    assert_eq!(stats["user_plane"]["requests"], 9, "{stats}");
    assert_eq!(env.metric("gateway_requests_total"), 9);
    assert_eq!(shown(&mut b, "c-requests").expect("eval"), Some(9));
    assert_eq!(
        b.eval("document.getElementById('c-requests').textContent")
            .expect("eval"),
        "9"
    );
    let denials: u64 = stats["user_plane"]["denials"]
        .as_object()
        .expect("denials")
        .values()
        .filter_map(Value::as_u64)
        .sum();
    assert_eq!(denials, 3);
    assert_eq!(env.metric("gateway_denials_total"), 3);
    assert_eq!(shown(&mut b, "c-denials").expect("eval"), Some(3));
    assert_eq!(
        shown(&mut b, "c-verifications").expect("eval"),
        stats["user_plane"]["verify"]["count"].as_u64()
    );
    // Kernel counters move with any packet on the veth (neighbour discovery too): compare
    // the page with /stats.json and /metrics read around the same poll.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let before = env.stats_json();
        let metric = env.metric("gateway_kernel_packets_total");
        std::thread::sleep(Duration::from_millis(1200));
        let page = shown(&mut b, "c-packets").expect("eval");
        let after = env.stats_json();
        let (p0, p1) = (
            before["totals"]["packets"].as_u64(),
            after["totals"]["packets"].as_u64(),
        );
        if p0.is_some() && p0 == p1 && page == p0 && Some(metric) == p0 {
            let drops = ["dropped_deny", "dropped_deny_cidr", "dropped_rate"]
                .iter()
                .map(|k| after["totals"][k].as_u64().unwrap_or(0))
                .sum::<u64>();
            assert!(drops >= 1, "the banned source's SYNs were dropped: {after}");
            assert_eq!(shown(&mut b, "c-drops").expect("eval"), Some(drops));
            let client = CLIENT.to_string();
            let src = after["top_sources"]
                .as_array()
                .and_then(|a| a.iter().find(|s| s["addr"] == client.as_str()))
                .expect("the client is a top source")
                .clone();
            let row = b
                .eval(&format!(
                    "Array.from(document.querySelectorAll('#sources tr[data-addr=\"{client}\"] td')).map(td => td.dataset.value || td.textContent)"
                ))
                .expect("eval");
            assert_eq!(row[1], src["packets"].to_string(), "{row}");
            assert_eq!(row[3], src["syns"].to_string(), "{row}");
            // Requests and refusals, counted by the abuse engine: the client's 9 requests,
            // 3 of them refused (401).
            assert_eq!(after["per_source_requests"], true, "{after}");
            assert_eq!((&src["requests"], &src["refusals"]), (&json!(9), &json!(3)));
            assert_eq!((&row[6], &row[7]), (&json!("9"), &json!("3")), "{row}");
            // The banned source's SYNs never made a request.
            let banned = BANNED.to_string();
            if let Some(b) = after["top_sources"]
                .as_array()
                .and_then(|a| a.iter().find(|s| s["addr"] == banned.as_str()))
            {
                assert_eq!((&b["requests"], &b["refusals"]), (&json!(0), &json!(0)));
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "page {page:?}, stats.json {p0:?}/{p1:?}, /metrics {metric}"
        );
    }

    // Every metric the Grafana dashboard and the alert rules query is exported. The JWKS
    // URL source's two series exist only with a `jwks_url` key source (none here); the
    // metrics module's own tests cover them.
    let (_, exported) = env.admin("GET", "/metrics", None);
    for name in deploy_metric_names() {
        let jwks_only = [
            "gateway_keyset_age_seconds",
            "gateway_key_refresh_failures_total",
        ];
        if jwks_only.contains(&name.as_str()) {
            continue;
        }
        let present = exported
            .lines()
            .any(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")));
        assert!(
            present,
            "deploy/ queries {name}, which /metrics does not export"
        );
    }

    // The header: version, listeners, data plane.
    let header = b
        .eval("['version','listeners','dataplane'].map(id => document.getElementById(id).textContent)")
        .expect("eval");
    assert_eq!(
        header[0],
        format!("v{}", stats["version"].as_str().expect("version"))
    );
    assert_eq!(header[1], format!("https://10.77.0.1:{HTTPS_PORT}"));
    assert_eq!(header[2], format!("xdp on {}", env.net.pair.server_if));
    // The upstream server, in rotation.
    let upstream = b
        .eval("Array.from(document.querySelectorAll('#upstreams tbody td')).map(td => td.textContent)")
        .expect("eval");
    assert_eq!(upstream[0], "app", "{upstream}");
    assert_eq!(upstream[2], "in rotation", "{upstream}");
    // Its up/down gauge says the same; its latency comes from the upstream duration
    // histogram (the client's requests above reached it).
    let server = env.upstream.addr().to_string();
    assert_eq!(
        env.metric_lines("gateway_upstream_server_up"),
        [format!(
            "gateway_upstream_server_up{{upstream=\"app\",server=\"{server}\"}} 1"
        )]
    );
    let s0 = &stats["upstreams"][0]["servers"][0];
    assert_eq!(
        (&s0["addr"], &s0["in_rotation"]),
        (&json!(server), &json!(true))
    );
    let (p50, p99) = (
        s0["latency_ms"]["p50"].as_f64().expect("p50"),
        s0["latency_ms"]["p99"].as_f64().expect("p99"),
    );
    assert!(p50 > 0.0 && p50 <= p99, "{s0}");
    let count = env
        .metric_lines("gateway_upstream_duration_seconds_count")
        .into_iter()
        .find(|l| l.contains(&format!("server=\"{server}\"")))
        .expect("the server's upstream duration count");
    assert!(!count.ends_with(" 0"), "{count}");
    let cell = upstream[5].as_str().expect("latency cell");
    assert!(
        cell.starts_with("≤ ") && cell.contains(" / ≤ "),
        "{upstream}"
    );
    // The build: the version the header shows, the compiler that built it.
    let build = env.metric_lines("gateway_build_info");
    assert_eq!(build.len(), 1, "{build:?}");
    assert!(
        build[0].starts_with(&format!(
            "gateway_build_info{{version=\"{}\",commit=\"",
            stats["version"].as_str().expect("version")
        )) && build[0].contains(",rustc=\"rustc 1.")
            && build[0].ends_with("} 1"),
        "{build:?}"
    );
    assert_eq!(stats["build"]["version"], stats["version"]);
    let title = b
        .eval("document.getElementById('version').title")
        .expect("eval");
    assert_eq!(
        title,
        format!(
            "commit {}, {}, {} build",
            stats["build"]["commit"].as_str().expect("commit"),
            stats["build"]["rustc"].as_str().expect("rustc"),
            stats["build"]["profile"].as_str().expect("profile")
        ),
        "the version's tooltip names the build"
    );

    // The ban's row, with its origin, reason and a countdown that moves.
    let ban = "#bans tr[data-target=\"10.77.0.3\"]";
    let cells = b
        .eval(&format!(
            "Array.from(document.querySelectorAll('{ban} td')).map(td => td.textContent)"
        ))
        .expect("eval");
    assert_eq!(cells[0], "10.77.0.3", "{cells}");
    assert_eq!(cells[1], "manual", "{cells}");
    assert_eq!(cells[2], "dashboard-e2e", "{cells}");
    let countdown = |b: &mut Browser| -> u64 {
        let text = b
            .eval(&format!(
                "document.querySelector('{ban} td.countdown').textContent"
            ))
            .expect("eval");
        let text = text.as_str().expect("text").to_owned();
        let (m, s) = text.split_once("m ").expect("`Nm SSs`");
        m.parse::<u64>().expect("minutes") * 60
            + s.trim_end_matches('s').parse::<u64>().expect("seconds")
    };
    let first = countdown(&mut b);
    assert!((500..=600).contains(&first), "{first}");
    std::thread::sleep(Duration::from_millis(2100));
    let second = countdown(&mut b);
    assert!(
        second < first && first - second <= 4,
        "{first} then {second}"
    );

    // No layout jumps: the cards and charts keep their boxes across polls.
    let boxes = "Array.from(document.querySelectorAll('.card, .chart')).map(e => { const r = e.getBoundingClientRect(); return [Math.round(r.x), Math.round(r.y + scrollY), Math.round(r.width), Math.round(r.height)]; })";
    let layout = b.eval(boxes).expect("eval");
    assert_eq!(
        layout.as_array().map(Vec::len),
        Some(16),
        "8 cards and 8 charts"
    );
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        b.eval(boxes).expect("eval"),
        layout,
        "cards and charts moved between polls"
    );

    // Screenshots: laptop and phone, light and dark, after a few seconds of traffic so that
    // the charts have lines (bounded: 40 requests, a quarter of them refused).
    for i in 0..40 {
        let t = if i % 4 == 0 {
            "not.a.token"
        } else {
            token.as_str()
        };
        assert_ne!(env.get(CLIENT, Some(t)), 0);
    }
    let out = artefacts();
    for (name, width, height, mobile, scheme) in [
        ("laptop-light", 1280, 900, false, "light"),
        ("laptop-dark", 1280, 900, false, "dark"),
        ("phone-light", 390, 844, true, "light"),
        ("phone-dark", 390, 844, true, "dark"),
    ] {
        b.emulate(width, height, mobile, scheme).expect("emulate");
        std::thread::sleep(Duration::from_millis(1500));
        let overflow = b
            .eval("document.documentElement.scrollWidth - document.documentElement.clientWidth")
            .expect("eval");
        assert_eq!(overflow, 0, "{name}: the page scrolls sideways");
        let lift_right = b
            .eval(&format!(
                "document.querySelector('{ban} button.lift').getBoundingClientRect().right <= innerWidth"
            ))
            .expect("eval");
        assert_eq!(lift_right, true, "{name}: the lift button is off screen");
        b.screenshot(&out.join(format!("{name}.png")))
            .expect("screenshot");
    }
    b.emulate(1280, 900, false, "light").expect("emulate");

    // The deny map's fill level is in /metrics (for the "nearly full" alert).
    assert_eq!(env.metric("gateway_kernel_deny_entries"), 1);
    assert_eq!(env.metric("gateway_kernel_deny_capacity"), 65536);

    // Lifting the ban from the page goes through the deny API and the row goes away.
    b.click(&format!("{ban} button.lift")).expect("click lift");
    b.wait_for(
        &format!("document.querySelector('{ban}') === null"),
        Duration::from_secs(10),
    )
    .expect("the ban's row disappears");
    let (status, list) = env.admin("GET", "/deny", None);
    assert_eq!(status, 200);
    assert!(!list.contains("10.77.0.3"), "{list}");
    assert_eq!(env.metric("gateway_kernel_deny_entries"), 0);
    assert_eq!(
        env.get(BANNED, Some(&token)),
        200,
        "the lifted source gets answers again"
    );
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        b.eval(&format!("document.querySelector('{ban}') === null"))
            .expect("eval"),
        true,
        "the row stays away after the next poll"
    );
    assert_eq!(
        b.eval("document.getElementById('notice').hidden")
            .expect("eval"),
        true
    );

    // No console errors but the two refusals before signing in (no token, wrong token).
    let errors = b.errors();
    let (refusals, other): (Vec<_>, Vec<_>) = errors
        .iter()
        .partition(|e| e.contains("403") && e.contains("/stats.json"));
    assert!(other.is_empty(), "console errors: {other:#?}");
    assert_eq!(refusals.len(), 2, "{errors:#?}");
}

// ---- `gateway stats --watch` -----------------------------------------------------------------

/// `gateway stats` run in the gateway's namespace, with `args` after `--config`.
fn stats_cmd(env: &Env, args: &[&str]) -> std::process::Command {
    let mut cmd = exec_in(&env.net.pair.server, &bin().display().to_string());
    cmd.args(["stats", "--config", &env.config.display().to_string()])
        .args(args);
    cmd
}

/// `gateway stats --watch` against the running gateway (no abuse engine this time): rates
/// per second between samples, checked against the counters in the same JSON lines and the
/// traffic sent between them; appended blocks when stdout is no terminal, redrawn in place
/// when it is one (`script` gives it a pty). Also: without the abuse engine, `/stats.json`
/// says the top sources' requests and refusals are not counted instead of showing zeros.
#[test]
fn stats_watch_shows_rates_of_the_running_gateway() {
    use std::io::{BufRead, BufReader};
    let Some(env) = Env::new("gateway stats --watch", "dsw", false) else {
        return;
    };
    let _gw = env.start();
    let token = env.token();
    assert_eq!(env.get(CLIENT, Some(&token)), 200);

    // Three samples 2 s apart; 3 requests (2 refused) between the first and the last.
    let mut child = stats_cmd(&env, &["--watch", "2", "--count", "3", "--json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run gateway stats");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut next = || -> Value {
        let line = lines.next().expect("a sample").expect("read");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line}"))
    };
    let first = next();
    assert_eq!(env.get(CLIENT, Some(&token)), 200);
    assert_eq!(env.get(CLIENT, Some("not.a.token")), 401);
    assert_eq!(env.get(CLIENT, None), 401);
    let samples = [first, next(), next()];
    let status = child.wait().expect("wait");
    assert!(status.success(), "{status}");
    assert!(samples[0].get("rates").is_none(), "{}", samples[0]);
    let requests = |s: &Value| s["user_plane"]["requests"].as_u64().expect("requests");
    let denials = |s: &Value| {
        s["user_plane"]["denials"]
            .as_object()
            .expect("denials")
            .values()
            .filter_map(Value::as_u64)
            .sum::<u64>()
    };
    let packets = |s: &Value| s["totals"]["packets"].as_u64().expect("packets");
    let drops = |s: &Value| {
        ["dropped_deny", "dropped_deny_cidr", "dropped_rate"]
            .iter()
            .map(|k| s["totals"][k].as_u64().expect("drop counter"))
            .sum::<u64>()
    };
    for pair in samples.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        let r = &b["rates"];
        let secs = r["interval_secs"].as_f64().expect("interval");
        // A fixed schedule: a late sample makes the next interval shorter (a loaded
        // machine), so only its bounds are checked; the rates must use the measured one.
        assert!((0.2..6.0).contains(&secs), "{r}");
        for (key, f) in [
            ("requests", &requests as &dyn Fn(&Value) -> u64),
            ("denials", &denials),
            ("packets", &packets),
            ("drops", &drops),
        ] {
            let rate = r[key].as_f64().unwrap_or_else(|| panic!("{key}: {r}"));
            let delta = (f(b) - f(a)) as f64;
            assert!(
                (rate * secs - delta).abs() < 1e-6,
                "{key}: {rate}/s over {secs}s, delta {delta}"
            );
        }
    }
    assert_eq!(requests(&samples[2]) - requests(&samples[0]), 3);
    assert_eq!(denials(&samples[2]) - denials(&samples[0]), 2);
    assert!(
        packets(&samples[2]) > packets(&samples[0]),
        "the requests' packets"
    );

    // Text on a pipe: two blocks, the first without rates, no terminal control sequences.
    let out = stats_cmd(&env, &["--watch", "1", "--count", "2"])
        .output()
        .expect("run gateway stats");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).expect("utf-8");
    assert!(
        text.starts_with("rates/s: from the next sample on\n"),
        "{text}"
    );
    assert_eq!(text.matches("\nrates/s over ").count(), 1, "{text}");
    assert_eq!(
        text.matches("user plane (admin endpoint").count(),
        2,
        "{text}"
    );
    assert!(!text.contains('\x1b'), "{text}");

    // On a terminal: each sample drawn from the top left corner, the screen cleared below.
    let command = format!(
        "{} stats --config {} --watch 1 --count 2",
        bin().display(),
        env.config.display()
    );
    let out = exec_in(&env.net.pair.server, "script")
        .args(["-qec", &command, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run script");
    assert!(out.status.success(), "{out:?}");
    let tty = String::from_utf8_lossy(&out.stdout);
    assert!(
        tty.starts_with("\x1b[H\x1b[Jrates/s: from the next sample on\x1b[K"),
        "{tty:?}"
    );
    assert_eq!(tty.matches("\x1b[Hrates/s over ").count(), 1, "{tty:?}");
    assert!(tty.trim_end().ends_with("\x1b[J"), "{tty:?}");

    // Without an abuse engine nobody counts requests per source: null, and said so.
    let stats = env.stats_json();
    assert_eq!(stats["per_source_requests"], false, "{stats}");
    let client = CLIENT.to_string();
    let src = stats["top_sources"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["addr"] == client.as_str()))
        .expect("the client is a top source");
    assert_eq!(
        (&src["requests"], &src["refusals"]),
        (&Value::Null, &Value::Null)
    );
}

// ---- the monitoring files in deploy/ --------------------------------------------------------

fn deploy_file(rel: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(rel);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn yaml(rel: &str) -> Yaml {
    let mut docs = YamlLoader::load_from_str(&deploy_file(rel))
        .unwrap_or_else(|e| panic!("deploy/{rel} is not YAML: {e}"));
    assert_eq!(docs.len(), 1, "deploy/{rel}: one document");
    docs.remove(0)
}

/// Every PromQL expression in the Grafana dashboard and the alert rules.
fn deploy_exprs() -> Vec<String> {
    let mut out = Vec::new();
    let rules = yaml("prometheus/alerts.yml");
    for group in rules["groups"].as_vec().expect("groups") {
        for rule in group["rules"].as_vec().expect("rules") {
            out.push(rule["expr"].as_str().expect("expr").to_owned());
        }
    }
    let dash: Value =
        serde_json::from_str(&deploy_file("grafana/gateway.json")).expect("the dashboard is JSON");
    for panel in dash["panels"].as_array().expect("panels") {
        for t in panel["targets"].as_array().into_iter().flatten() {
            out.push(t["expr"].as_str().expect("expr").to_owned());
        }
    }
    out
}

/// The `gateway_*` series the expressions use, histogram suffixes folded into the series
/// name `/metrics` prints.
fn deploy_metric_names() -> std::collections::BTreeSet<String> {
    let mut names = std::collections::BTreeSet::new();
    for expr in deploy_exprs() {
        let mut rest = expr.as_str();
        while let Some(i) = rest.find("gateway_") {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            // Not part of a longer identifier or a label value.
            let before = rest[..i].chars().next_back();
            if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == '"') {
                names.insert(tail[..end].to_owned());
            }
            rest = &tail[end..];
        }
    }
    names
}

/// Brackets and quotes balance (what a typo in hand-written PromQL breaks first).
fn balanced(expr: &str) -> bool {
    let mut stack = Vec::new();
    let mut quoted = false;
    for c in expr.chars() {
        match c {
            '"' => quoted = !quoted,
            _ if quoted => {}
            '(' | '[' | '{' => stack.push(c),
            ')' | ']' | '}' => {
                let open = match c {
                    ')' => '(',
                    ']' => '[',
                    _ => '{',
                };
                if stack.pop() != Some(open) {
                    return false;
                }
            }
            _ => {}
        }
    }
    stack.is_empty() && !quoted
}

#[test]
fn alert_rules_are_well_formed_and_cover_what_an_operator_must_see() {
    let rules = yaml("prometheus/alerts.yml");
    let mut names = Vec::new();
    for group in rules["groups"].as_vec().expect("a list of groups") {
        assert!(
            group["name"].as_str().is_some_and(|n| !n.is_empty()),
            "group name"
        );
        for rule in group["rules"].as_vec().expect("a list of rules") {
            let name = rule["alert"]
                .as_str()
                .expect("every rule is an alert")
                .to_owned();
            assert!(
                name.starts_with("Gateway") && name.chars().all(|c| c.is_ascii_alphanumeric()),
                "{name}"
            );
            let expr = rule["expr"].as_str().expect("expr");
            assert!(!expr.trim().is_empty() && balanced(expr), "{name}: {expr}");
            assert!(
                matches!(
                    rule["labels"]["severity"].as_str(),
                    Some("warning" | "critical")
                ),
                "{name}: severity"
            );
            for key in ["summary", "description"] {
                assert!(
                    rule["annotations"][key]
                        .as_str()
                        .is_some_and(|s| !s.is_empty()),
                    "{name}: {key}"
                );
            }
            if let Some(f) = rule["for"].as_str() {
                let (n, unit) = f.split_at(f.len() - 1);
                assert!(
                    n.parse::<u32>().is_ok() && matches!(unit, "s" | "m" | "h"),
                    "{name}: for {f}"
                );
            } else {
                assert!(
                    rule["for"].is_badvalue(),
                    "{name}: `for` is a duration string"
                );
            }
            for key in rule.as_hash().expect("rule").keys() {
                let key = key.as_str().expect("key");
                assert!(
                    ["alert", "expr", "for", "labels", "annotations"].contains(&key),
                    "{name}: unknown key {key}"
                );
            }
            names.push(name);
        }
    }
    let mut unique = names.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(
        unique.len(),
        names.len(),
        "alert names are unique: {names:?}"
    );
    for needed in REQUIRED_ALERTS {
        assert!(names.iter().any(|n| n == needed), "{needed} missing");
    }
    // The promtool unit tests name only alerts that exist, and test each required one.
    let tests = yaml("prometheus/alerts_test.yml");
    assert_eq!(tests["rule_files"][0].as_str(), Some("alerts.yml"));
    let mut tested = Vec::new();
    for t in tests["tests"].as_vec().expect("tests") {
        for a in t["alert_rule_test"].as_vec().expect("alert_rule_test") {
            let name = a["alertname"].as_str().expect("alertname").to_owned();
            assert!(
                names.contains(&name),
                "alerts_test.yml tests unknown {name}"
            );
            tested.push(name);
        }
    }
    for needed in REQUIRED_ALERTS {
        assert!(
            tested.iter().any(|n| n == needed),
            "{needed} has no promtool test"
        );
    }
}

#[test]
fn the_grafana_dashboard_is_well_formed() {
    let dash: Value =
        serde_json::from_str(&deploy_file("grafana/gateway.json")).expect("the dashboard is JSON");
    assert_eq!(dash["title"], "gateway");
    assert!(dash["uid"]
        .as_str()
        .is_some_and(|u| !u.is_empty() && u.len() <= 40));
    assert!(dash["schemaVersion"].as_u64().is_some_and(|v| v >= 30));
    let vars: Vec<&str> = dash["templating"]["list"]
        .as_array()
        .expect("templating")
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert_eq!(vars, ["datasource", "instance"]);
    let panels = dash["panels"].as_array().expect("panels");
    let mut ids = std::collections::BTreeSet::new();
    // Every grid cell is used by at most one panel.
    let mut cells = std::collections::BTreeSet::new();
    for p in panels {
        let title = p["title"].as_str().expect("title");
        assert!(
            ids.insert(p["id"].as_u64().expect("id")),
            "{title}: duplicate id"
        );
        let g = &p["gridPos"];
        let (x, y, w, h) = (
            g["x"].as_u64().expect("x"),
            g["y"].as_u64().expect("y"),
            g["w"].as_u64().expect("w"),
            g["h"].as_u64().expect("h"),
        );
        assert!(w > 0 && h > 0 && x + w <= 24, "{title}: {g}");
        for cx in x..x + w {
            for cy in y..y + h {
                assert!(
                    cells.insert((cx, cy)),
                    "{title} overlaps another panel at {cx},{cy}"
                );
            }
        }
        if p["type"] == "row" {
            continue;
        }
        assert!(
            matches!(p["type"].as_str(), Some("timeseries" | "stat")),
            "{title}"
        );
        assert_eq!(p["datasource"]["uid"], "${datasource}", "{title}");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no queries");
        let mut refs = std::collections::BTreeSet::new();
        for t in targets {
            assert!(
                refs.insert(t["refId"].as_str().expect("refId")),
                "{title}: refId"
            );
            let expr = t["expr"].as_str().expect("expr");
            assert!(balanced(expr), "{title}: {expr}");
            assert!(
                expr.contains("instance=~\"$instance\""),
                "{title}: not filtered by instance: {expr}"
            );
        }
        assert!(
            p["fieldConfig"]["defaults"]["unit"].is_string(),
            "{title}: unit"
        );
    }
    // The charts the dashboard page has are there too.
    let titles: Vec<&str> = panels.iter().filter_map(|p| p["title"].as_str()).collect();
    for needed in [
        "Requests/s by status class",
        "Denials/s by reason",
        "Token verification latency",
        "Token cache hit ratio",
        "Kernel packets/s",
        "Kernel drops/s by verdict",
        "SYN rate-limit trips/s",
        "Upstream errors/s",
        "Deny map entries",
    ] {
        assert!(titles.contains(&needed), "{needed} missing: {titles:?}");
    }
    assert!(deploy_metric_names().len() > 20);
}
