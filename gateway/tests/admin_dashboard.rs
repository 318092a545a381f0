//! The dashboard on the admin endpoint over real sockets with a real HTTP/1.1 client: the
//! embedded page and its assets with their security headers, and `/stats.json` with its
//! access rule (the API token when one is configured) and content. The page itself runs in a
//! real browser in `tests/tests/dashboard_e2e.rs`.

use gateway::admin;
use gateway::config::admin::AdminConfig;
use gateway::deny::DenyStore;
use gateway::metrics::Metrics;
use gateway_tests::http1::{send, TextReply as Reply};
use hyper::{Method, StatusCode};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU32;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

const TOKEN: &str = "dashboard-test-token-0123456789";

struct Server {
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    _stop: oneshot::Sender<()>,
    _dir: Scratch,
}

/// A directory of this test's own, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("admin-dashboard-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An admin endpoint with a deny store (state file only) and, with `token`, an API token.
async fn start(token: bool) -> Server {
    let dir = Scratch::new();
    let token_file = dir.0.join("admin.token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).expect("token file");
    let cfg = AdminConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        api_token_file: token.then_some(token_file),
        ..AdminConfig::default()
    };
    let store = Arc::new(DenyStore::new(
        None,
        Some(dir.0.join("deny-state.json")),
        Vec::new(),
    ));
    store
        .add(
            "192.0.2.7".parse().expect("target"),
            Some(Duration::from_secs(600)),
            "manual",
            "dashboard-test",
            1,
        )
        .expect("add a ban");
    let listener = admin::bind(&cfg)
        .await
        .expect("bind")
        .with_deny(store, true);
    let addr = listener.local_addr();
    let metrics = Arc::new(Metrics::new(&["api".to_owned()], &["pool".to_owned()]));
    let (tx, rx) = oneshot::channel::<()>();
    tokio::spawn(listener.serve(
        Arc::clone(&metrics),
        Arc::new(AtomicBool::new(true)),
        async {
            let _ = rx.await;
        },
    ));
    Server {
        addr,
        metrics,
        _stop: tx,
        _dir: dir,
    }
}

fn assert_hardened(r: &Reply, what: &str) {
    let csp = r.headers["content-security-policy"]
        .to_str()
        .expect("ascii");
    for directive in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(directive), "{what}: {csp}");
    }
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{csp}"
    );
    assert_eq!(r.headers["x-content-type-options"], "nosniff", "{what}");
    assert_eq!(r.headers["x-frame-options"], "DENY", "{what}");
    assert_eq!(r.headers["cache-control"], "no-store", "{what}");
}

#[tokio::test]
async fn page_and_assets_are_embedded_self_contained_and_hardened() {
    let s = start(true).await;
    let page = send(s.addr, Method::GET, "/", &[]).await;
    assert_eq!(page.status, StatusCode::OK);
    assert_eq!(page.headers["content-type"], "text/html; charset=utf-8");
    assert_hardened(&page, "/");
    assert!(page
        .body
        .contains(r#"<script src="/app.js" defer></script>"#));
    assert!(page
        .body
        .contains(r#"<link rel="stylesheet" href="/app.css">"#));
    // Nothing external, nothing inline that the CSP would have to allow.
    for bad in [
        "http://",
        "https://",
        "//cdn",
        " style=",
        " onclick=",
        "javascript:",
    ] {
        assert!(!page.body.contains(bad), "the page contains {bad:?}");
    }
    assert_eq!(
        page.body.matches("<script").count(),
        1,
        "one script, by src"
    );
    assert!(!page.body.contains("<style"), "no inline style sheet");

    for (path, ctype) in [
        ("/app.js", "text/javascript; charset=utf-8"),
        ("/app.css", "text/css; charset=utf-8"),
    ] {
        let r = send(s.addr, Method::GET, path, &[]).await;
        assert_eq!(r.status, StatusCode::OK, "{path}");
        assert_eq!(r.headers["content-type"], ctype, "{path}");
        assert_hardened(&r, path);
        // The only URLs in them: the SVG namespace and the listener's scheme as text.
        let rest = r
            .body
            .replace("'http://www.w3.org/2000/svg'", "")
            .replace("'https://' : 'http://'", "");
        assert!(
            !rest.contains("http://") && !rest.contains("https://"),
            "{path}"
        );
        assert!(
            !rest.contains("//cdn") && !rest.contains("import("),
            "{path}"
        );
    }
    let js = send(s.addr, Method::GET, "/app.js", &[]).await.body;
    // Values from the gateway (addresses, reasons) only ever reach the page as text.
    for bad in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "eval(",
        "new Function",
        "localStorage",
    ] {
        assert!(!js.contains(bad), "app.js uses {bad}");
    }
    assert!(js.contains("sessionStorage"), "the token is kept per tab");
    assert!(
        js.to_ascii_lowercase()
            .contains(&format!("'{}': '1'", admin::dashboard::PAGE_HEADER)),
        "the page marks its requests with the header the admin endpoint knows"
    );

    let head = send(s.addr, Method::HEAD, "/", &[]).await;
    assert_eq!(head.status, StatusCode::OK);
    assert!(head.body.is_empty());
    for method in [Method::POST, Method::PUT, Method::DELETE] {
        for path in ["/", "/app.js", "/stats.json"] {
            let r = send(
                s.addr,
                method.clone(),
                path,
                &[("authorization", &format!("Bearer {TOKEN}"))],
            )
            .await;
            assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
            assert_eq!(r.headers["allow"], "GET, HEAD");
        }
    }
    for path in [
        "/app.js/",
        "/index.html",
        "/stats.json/",
        "/page/app.js",
        "/app.js%00",
    ] {
        let r = send(s.addr, Method::GET, path, &[]).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
    }
}

#[tokio::test]
async fn stats_json_needs_the_token_when_one_is_configured() {
    let s = start(true).await;
    let wrong = format!("Bearer {TOKEN}x");
    let prefix = format!("Bearer {}", &TOKEN[..TOKEN.len() - 1]);
    let basic = format!("Basic {TOKEN}");
    for auth in [
        None,
        Some(wrong.as_str()),
        Some(prefix.as_str()),
        Some(basic.as_str()),
        Some("Bearer "),
    ] {
        let headers: Vec<(&str, &str)> = auth.map(|a| ("authorization", a)).into_iter().collect();
        let r = send(s.addr, Method::GET, "/stats.json", &headers).await;
        assert_eq!(r.status, StatusCode::FORBIDDEN, "{auth:?}");
        assert_hardened(&r, "/stats.json refused");
        let body: serde_json::Value = serde_json::from_str(&r.body).expect("JSON");
        assert_eq!(body["token_required"], true);
        assert!(!r.body.contains("192.0.2.7"), "a refusal shows no data");
    }
    // The page and its assets load without the token: they hold no data.
    assert_eq!(
        send(s.addr, Method::GET, "/", &[]).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn stats_json_carries_the_cli_data_and_what_the_page_needs() {
    let s = start(true).await;
    for _ in 0..4 {
        s.metrics.request(Some(0), 200);
    }
    s.metrics.request(Some(0), 401);
    s.metrics
        .denial(gateway::proxy::refusal::DenialReason::Token(
            gateway::jwt::Reason::Expired,
        ));
    s.metrics
        .upstream_error(0, gateway::proxy::upstream::UpstreamErrorKind::Connect);
    for us in [3, 30, 30, 3000] {
        s.metrics.verify_latency(Duration::from_micros(us));
    }
    let auth = format!("Bearer {TOKEN}");
    let r = send(
        s.addr,
        Method::GET,
        "/stats.json",
        &[("authorization", &auth)],
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.headers["content-type"], "application/json");
    assert_hardened(&r, "/stats.json");
    let doc: serde_json::Value = serde_json::from_str(&r.body).expect("JSON");

    assert_eq!(doc["version"], env!("CARGO_PKG_VERSION"));
    let uptime = doc["uptime_secs"].as_f64().expect("uptime");
    assert!((0.0..60.0).contains(&uptime), "{uptime}");
    // No data plane here: no kernel fields, and the page is told so.
    assert!(doc["data_plane"].is_null());
    assert!(doc.get("totals").is_none() && doc.get("top_sources").is_none());
    assert_eq!(doc["deny_capacity"]["address"], 65536);
    // `user_plane` is what `gateway stats --json` prints for the same registry.
    let up = &doc["user_plane"];
    assert_eq!(up["admin"], s.addr.to_string());
    assert_eq!(up["requests"], 5);
    assert_eq!(up["requests_by_class"]["2xx"], 4);
    assert_eq!(up["requests_by_class"]["4xx"], 1);
    assert_eq!(up["denials"]["expired"], 1);
    assert_eq!(up["upstream_errors"]["pool"]["connect"], 1);
    assert_eq!(up["verify"]["count"], 4);
    assert_eq!(up["verify"]["p50_le_us"], 50.0);
    // The histogram, cumulative, in microseconds, +Inf last.
    let buckets = doc["verify_buckets"].as_array().expect("buckets");
    assert_eq!(buckets.len(), 17);
    assert_eq!(buckets[0]["le_us"], 1.0);
    assert!(buckets[16]["le_us"].is_null());
    assert_eq!(buckets[16]["count"], 4);
    let counts: Vec<u64> = buckets
        .iter()
        .map(|b| b["count"].as_u64().expect("count"))
        .collect();
    assert!(counts.windows(2).all(|w| w[0] <= w[1]), "{counts:?}");
    assert_eq!(
        (counts[1], counts[2]),
        (0, 1),
        "3 µs is in the 5 µs bucket, not 2.5 µs: {counts:?}"
    );
    // The bans, as the deny API lists them.
    let bans = doc["bans"].as_array().expect("bans");
    assert_eq!(bans.len(), 1, "{bans:?}");
    assert_eq!(bans[0]["target"], "192.0.2.7");
    assert_eq!(bans[0]["origin"], "manual");
    assert_eq!(bans[0]["reason"], "dashboard-test");
    let left = bans[0]["expires_in_secs"].as_u64().expect("expiry");
    assert!((590..=600).contains(&left), "{left}");
    assert!(doc["listeners"].as_array().expect("listeners").is_empty());
    assert!(doc["upstreams"].as_array().expect("upstreams").is_empty());
}

#[tokio::test]
async fn without_a_token_stats_json_answers_loopback_clients() {
    let s = start(false).await;
    let r = send(s.addr, Method::GET, "/stats.json", &[]).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let doc: serde_json::Value = serde_json::from_str(&r.body).expect("JSON");
    assert_eq!(doc["bans"][0]["target"], "192.0.2.7");
}
