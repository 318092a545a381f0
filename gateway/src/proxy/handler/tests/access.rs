//! Access log lines as `Proxy::handle` writes them: a real upstream on loopback, real
//! tokens, the log written to a file by its own thread.

use super::*;
use crate::access_log;
use crate::config::{AccessTarget, LogConfig};
use prometheus_client::metrics::counter::Counter;

/// The tests' proxy (token route `api`, public route `public`, upstream `app` at
/// `upstream`) logging into `path`.
fn logged_proxy(upstream: &str, path: &std::path::Path) -> (Arc<Proxy>, access_log::Writer) {
    let plan = plan(upstream, "max_body_bytes = 100", "", Some(""));
    let verifier = Arc::new(hmac_verifier(VerifierConfig::default()));
    let cfg = LogConfig {
        access: AccessTarget::File(path.to_path_buf()),
        ..LogConfig::default()
    };
    let (log, writer) = access_log::start(&cfg, Counter::default())
        .expect("start")
        .expect("a log");
    let proxy = Proxy::new(
        &Arc::new(plan),
        |_| Ok::<_, Infallible>(verifier.clone()),
        route_metrics(&["api", "public"]),
    )
    .unwrap_or_else(|never| match never {})
    .with_access_log(log);
    (Arc::new(proxy), writer)
}

#[tokio::test]
async fn lines_tell_what_happened_and_never_the_secrets() {
    let upstream = echo_upstream().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("access.log");
    let (p, writer) = logged_proxy(&upstream.to_string(), &path);
    let good = sign(
        &[
            ("scope", "read".into()),
            ("sub", "alice".into()),
            ("iss", "https://idp.example".into()),
        ],
        600,
    );
    let expired = sign(&[("scope", "read".into()), ("sub", "bob".into())], -600);
    let narrow = sign(&[("scope", "write".into()), ("sub", "carol".into())], 600);

    // A valid token, with a cookie and a token in the query too.
    let a = send(
        &p,
        get("/api/items?access_token=QUERYSECRET&page=2")
            .header("authorization", format!("Bearer {good}"))
            .header("cookie", "session=COOKIESECRET")
            .header("x-request-id", "client-id-1")
            .body(empty())
            .unwrap(),
        false,
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(a.headers["x-request-id"], "client-id-1");
    // HTTP/2 sends it never-indexed: a value that never repeats must not churn HPACK's table.
    assert!(a.headers["x-request-id"].is_sensitive());
    assert!(a.body.contains("x-request-id: client-id-1"), "{}", a.body);
    let a_bytes = a.body.len();

    let b = send(
        &p,
        get("/api/x")
            .header("authorization", format!("Bearer {expired}"))
            .body(empty())
            .unwrap(),
        false,
    )
    .await;
    assert_eq!(b.status, 401);
    let c = send(
        &p,
        get("/api/x")
            .header("authorization", format!("Bearer {narrow}"))
            .body(empty())
            .unwrap(),
        false,
    )
    .await;
    assert_eq!(c.status, 403);
    let d = send(&p, get("/nowhere").body(empty()).unwrap(), false).await;
    assert_eq!(d.status, 404);
    // A body, and an id that is not acceptable: replaced by ours, upstream and client alike.
    let e = send(
        &p,
        Request::post("/public/x")
            .header("host", "api.example")
            .header("x-request-id", "has space")
            .body(Full::new(Bytes::from_static(b"hello")))
            .unwrap(),
        false,
    )
    .await;
    assert_eq!(e.status, 200, "{}", e.body);
    let e_id = e.headers["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(e_id.len(), 16, "{e_id}");
    assert!(
        e.body.contains(&format!("x-request-id: {e_id}")),
        "{}",
        e.body
    );
    assert!(!e.body.contains("has space"), "{}", e.body);

    drop(p);
    writer.finish();
    let text = std::fs::read_to_string(&path).expect("log file");
    for secret in [
        good.as_str(),
        expired.as_str(),
        narrow.as_str(),
        "COOKIESECRET",
        "QUERYSECRET",
        "Bearer",
    ] {
        assert!(!text.contains(secret), "{secret} logged:\n{text}");
    }
    let lower = text.to_ascii_lowercase();
    assert!(
        !lower.contains("authorization") && !lower.contains("cookie"),
        "{text}"
    );
    // The signature part alone would identify the token too.
    for t in [&good, &expired, &narrow] {
        let sig = t.rsplit('.').next().unwrap();
        assert!(!text.contains(sig), "a signature logged:\n{text}");
    }
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(lines.len(), 5, "{text}");
    let ok = &lines[0];
    assert_eq!(ok["event"], "request");
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["method"], "GET");
    assert_eq!(ok["host"], "api.example");
    assert_eq!(ok["path"], "/api/items");
    assert_eq!(ok["route"], "api");
    assert_eq!(ok["upstream"], "app");
    assert_eq!(ok["server"], upstream.to_string());
    assert_eq!(ok["sub"], "alice");
    assert_eq!(ok["iss"], "https://idp.example");
    assert_eq!(ok["request_id"], "client-id-1");
    assert_eq!(ok["client"], "127.0.0.9");
    assert_eq!(ok["port"], 5555);
    assert_eq!(ok["protocol"], "HTTP/1.1");
    assert_eq!(ok["bytes_out"], a_bytes);
    assert!(ok.get("tls").is_none(), "plain HTTP: {ok}");
    assert!(ok.get("reason").is_none(), "{ok}");
    assert!(ok["duration_ms"].as_f64().unwrap() >= ok["upstream_ms"].as_f64().unwrap());
    let refused = |l: &serde_json::Value, status: u16, reason: &str| {
        assert_eq!(l["status"], status, "{l}");
        assert_eq!(l["reason"], reason, "{l}");
        assert!(l.get("upstream_ms").is_none(), "never sent upstream: {l}");
        assert!(l.get("server").is_none(), "{l}");
        assert!(l.get("sub").is_none(), "{l}");
    };
    refused(&lines[1], 401, "expired");
    assert_eq!(lines[1]["route"], "api");
    refused(&lines[2], 403, "insufficient_scope");
    refused(&lines[3], 404, "not_found");
    assert!(lines[3].get("route").is_none(), "{}", lines[3]);
    let posted = &lines[4];
    assert_eq!(posted["route"], "public");
    assert_eq!(posted["bytes_in"], 5);
    assert_eq!(posted["request_id"], e_id.as_str());
    // Each generated or taken id appears once.
    assert_ne!(lines[1]["request_id"], lines[2]["request_id"]);
}

#[tokio::test]
async fn the_query_is_logged_only_when_asked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("access.log");
    let plan = plan("127.0.0.1:1", "", "", Some(""));
    let cfg = LogConfig {
        access: AccessTarget::File(path.clone()),
        query: true,
        ..LogConfig::default()
    };
    let (log, writer) = access_log::start(&cfg, Counter::default())
        .expect("start")
        .expect("a log");
    let verifier = Arc::new(hmac_verifier(VerifierConfig::default()));
    let p = Arc::new(
        Proxy::new(
            &Arc::new(plan),
            |_| Ok::<_, Infallible>(verifier.clone()),
            route_metrics(&["api", "public"]),
        )
        .unwrap_or_else(|never| match never {})
        .with_access_log(log),
    );
    let a = send(&p, get("/nowhere?a=1&b=two").body(empty()).unwrap(), false).await;
    assert_eq!(a.status, 404);
    drop(p);
    writer.finish();
    let text = std::fs::read_to_string(&path).expect("log file");
    let line: serde_json::Value = serde_json::from_str(text.trim()).expect("one line");
    assert_eq!(line["path"], "/nowhere?a=1&b=two");
}

#[tokio::test]
async fn without_an_access_log_nothing_changes_on_the_wire() {
    let upstream = echo_upstream().await;
    let plan = plan(&upstream.to_string(), "", "", Some(""));
    let p = with_verifier(
        plan,
        hmac_verifier(VerifierConfig::default()),
        route_metrics(&["api", "public"]),
    );
    let a = send(&p, get("/public/x").body(empty()).unwrap(), false).await;
    assert_eq!(a.status, 200);
    assert!(a.headers.get("x-request-id").is_none());
    assert!(!a.body.contains("x-request-id"), "{}", a.body);
}
