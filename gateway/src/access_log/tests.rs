use super::*;
use crate::config::LogConfig;
use crate::tls::HandshakeFailure;
use http::header::HeaderValue;
use std::path::Path;
use std::time::Instant;

fn record(uri: &str) -> Record {
    record_with(uri, false)
}

/// A record of a request for `uri`, its query kept if `query`.
fn record_with(uri: &str, query: bool) -> Record {
    let uri: http::Uri = uri.parse().unwrap();
    Record {
        time: SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_918_483_123),
        request_id: HeaderValue::from_static("abc-123"),
        client: "192.0.2.7".parse().unwrap(),
        port: Some(40_000),
        tls: Some(TlsInfo {
            version: "TLSv1.3",
            alpn: Some("h2"),
        }),
        version: http::Version::HTTP_2,
        method: http::Method::POST,
        target: Target::of(&uri, None, query),
        status: 201,
        route: Some(0),
        upstream: Some(0),
        server: Some("10.0.0.5:8080".parse().unwrap()),
        bytes_in: 12,
        bytes_out: 345,
        total: Duration::from_micros(1_500),
        upstream_time: Some(Duration::from_micros(900)),
        token: None,
        reason: None,
    }
}

fn names() -> Names {
    Names::new(["api"], ["app"])
}

/// The record's line, as text.
fn text(r: &Record) -> Vec<u8> {
    let mut out = Vec::new();
    r.write_json(&mut out, &mut json::Clock::default(), &names());
    out
}

fn json(r: &Record) -> serde_json::Value {
    parse(&text(r))
}

fn parse(out: &[u8]) -> serde_json::Value {
    assert_eq!(out.last(), Some(&b'\n'));
    assert_eq!(out.iter().filter(|b| **b == b'\n').count(), 1, "one line");
    serde_json::from_slice(out).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(out)))
}

#[test]
fn a_request_line_has_every_field() {
    let v = json(&record("https://api.example/v1/items?token=s3cret"));
    let want = serde_json::json!({
        "time": "2025-12-05T07:08:03.123Z",
        "event": "request",
        "request_id": "abc-123",
        "client": "192.0.2.7",
        "port": 40000,
        "tls": "TLSv1.3",
        "alpn": "h2",
        "protocol": "HTTP/2.0",
        "method": "POST",
        "host": "api.example",
        "path": "/v1/items",
        "status": 201,
        "route": "api",
        "upstream": "app",
        "server": "10.0.0.5:8080",
        "bytes_in": 12,
        "bytes_out": 345,
        "duration_ms": 1.5,
        "upstream_ms": 0.9,
    });
    assert_eq!(v, want);
}

#[test]
fn the_query_is_left_out_unless_asked_for() {
    let line = record("/v1/items?token=s3cret&b=2");
    assert_eq!(json(&line)["path"], "/v1/items");
    assert!(!String::from_utf8_lossy(&text(&line)).contains("s3cret"));
    let kept = record_with("/v1/items?token=s3cret&b=2", true);
    assert_eq!(json(&kept)["path"], "/v1/items?token=s3cret&b=2");
    // No query at all: the path alone either way.
    let plain = record_with("/v1/items", true);
    assert_eq!(json(&plain)["path"], "/v1/items");
}

#[test]
fn hostile_values_stay_inside_their_json_strings() {
    let mut r = record("/a%22b/%0A");
    // Header values may hold bytes that are not UTF-8, quotes and backslashes.
    let host = HeaderValue::from_bytes(b"evil\"host\\\xff").unwrap();
    r.target = Target::of(&"/x".parse().unwrap(), Some(&host), false);
    r.request_id = HeaderValue::from_bytes(b"id\",\"status\":1").unwrap();
    r.reason = Some("expired");
    let v = json(&r);
    assert_eq!(v["host"], "evil\"host\\\u{fffd}");
    assert_eq!(v["request_id"], "id\",\"status\":1");
    assert_eq!(v["status"], 201, "the injected status did not win");
    assert_eq!(v["reason"], "expired");
}

#[test]
fn connection_events_name_client_port_and_reason() {
    let client: SocketAddr = "[2001:db8::7]:5555".parse().unwrap();
    for (kind, event, reason) in [
        (
            ConnEventKind::HandshakeFailed(HandshakeFailure::NotTls),
            "tls_handshake_failed",
            "not_tls",
        ),
        (
            ConnEventKind::Refused("per_source_limit"),
            "connection_refused",
            "per_source_limit",
        ),
    ] {
        let line = ConnEvent {
            time: SystemTime::now(),
            kind,
            client,
        };
        let mut out = Vec::new();
        line.write_json(&mut out, &mut json::Clock::default());
        let v = parse(&out);
        assert_eq!(v["event"], event);
        assert_eq!(v["client"], "2001:db8::7");
        assert_eq!(v["port"], 5555);
        assert_eq!(v["reason"], reason);
    }
}

#[test]
fn a_full_buffer_drops_lines_and_counts_them() {
    let dropped = Counter::default();
    // Room for four lines of this length: the fifth finds the buffer at its limit.
    let one = text(&record("/0")).len();
    let log = AccessLog::unwritten(4 * one, dropped.clone());
    for i in 0..10 {
        log.request(&record(&format!("/{i}")), &names());
    }
    assert_eq!(dropped.get(), 6);
    let kept: Vec<String> = log
        .take_pending(false)
        .iter()
        .map(|l| {
            parse(format!("{l}\n").as_bytes())["path"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(kept, ["/0", "/1", "/2", "/3"], "the first ones, in order");
    // Room again: the next line waits for the writer.
    log.request(&record("/next"), &names());
    assert_eq!(dropped.get(), 6);
    // A writer that has ended counts as full.
    assert_eq!(log.take_pending(true).len(), 1);
    log.request(&record("/lost"), &names());
    assert_eq!(dropped.get(), 7);
}

#[test]
fn connection_events_are_rate_limited_per_source() {
    let log = AccessLog::unwritten(shard::LIMIT, Counter::default());
    let a: SocketAddr = "198.51.100.1:1000".parse().unwrap();
    let b: SocketAddr = "198.51.100.2:1000".parse().unwrap();
    for _ in 0..20 {
        log.conn_event(a, ConnEventKind::HandshakeFailed(HandshakeFailure::Closed));
    }
    log.conn_event(b, ConnEventKind::Refused("denied"));
    // Within one second (a slow machine may cross into the next one once).
    let n = log.take_pending(false).len();
    assert!((2..=3).contains(&n), "{n} lines");
}

fn file_config(path: &Path) -> LogConfig {
    LogConfig {
        access: crate::config::AccessTarget::File(path.to_path_buf()),
        ..LogConfig::default()
    }
}

/// Waits (bounded) until `path` has `n` lines; returns them.
fn wait_lines(path: &Path, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        if lines.len() >= n || Instant::now() > deadline {
            return lines;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn the_file_is_reopened_after_a_rename() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("access.log");
    let rotated = dir.path().join("access.log.1");
    let (log, writer) = start(&file_config(&path), Counter::default())
        .unwrap()
        .expect("a file log");
    log.request(&record("/before"), &names());
    assert_eq!(wait_lines(&path, 1).len(), 1);
    std::fs::rename(&path, &rotated).unwrap();
    // Until told, the writer keeps its open file (now the rotated one).
    log.request(&record("/renamed"), &names());
    assert_eq!(wait_lines(&rotated, 2).len(), 2);
    assert!(!path.exists());
    writer.reopen();
    log.request(&record("/after"), &names());
    let new = wait_lines(&path, 1);
    assert_eq!(new.len(), 1, "{new:?}");
    assert!(new[0].contains("\"/after\""), "{new:?}");
    let old = wait_lines(&rotated, 2);
    assert_eq!(old.len(), 2, "{old:?}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode & 0o007, 0, "not world-readable: {mode:o}");
    // Finishing writes what is still queued.
    for i in 0..50 {
        log.request(&record(&format!("/last{i}")), &names());
    }
    writer.finish();
    assert_eq!(wait_lines(&path, 51).len(), 51);
}

#[test]
fn an_unwritable_file_fails_start_with_its_path() {
    let e = start(
        &file_config(Path::new("/nonexistent-dir/access.log")),
        Counter::default(),
    )
    .expect_err("no such directory");
    assert!(
        e.to_string()
            .starts_with("cannot open the access log /nonexistent-dir/access.log:"),
        "{e}"
    );
    let off = LogConfig {
        access: crate::config::AccessTarget::Off,
        ..LogConfig::default()
    };
    assert!(start(&off, Counter::default()).unwrap().is_none());
}
