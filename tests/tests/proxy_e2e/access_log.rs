//! The access log and the operational log of the real gateway: lines for real requests over
//! TLS with real tokens, refusals with their reason, a failed handshake, the client named
//! by a PROXY header, the file reopened on SIGUSR1 after a rename, and the JSON format of
//! stderr.

use gateway_tests::client::{Proto, Req};
use gateway_tests::proxy::{echoed, echoed_header, runtime, wait_until, Gw, Setup, ISS};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// The request lines (not connection events) among `lines`.
fn requests(lines: &[serde_json::Value]) -> Vec<&serde_json::Value> {
    lines.iter().filter(|l| l["event"] == "request").collect()
}

/// The one request line with this id. Each worker buffers its own lines, so lines of
/// requests served by different workers may be written out of order within a tick.
fn by_id<'a>(reqs: &[&'a serde_json::Value], id: &str) -> &'a serde_json::Value {
    let found: Vec<_> = reqs.iter().filter(|l| l["request_id"] == id).collect();
    assert_eq!(found.len(), 1, "one line with id {id}: {reqs:?}");
    found[0]
}

#[test]
fn lines_over_tls_name_the_client_tls_token_and_refusals_but_no_secret() {
    let gw = Gw::start(Setup {
        access_log: Some(""),
        ..Setup::default()
    });
    let t = gw.tokens();
    let rt = runtime();
    let (ids, plain_id) = rt.block_on(async {
        let ok = gw
            .https
            .send(
                Proto::H2,
                Req::get("/api/items?secret_q=QSECRET")
                    .bearer(&t.rw)
                    .header("cookie", "sid=COOKIESECRET")
                    .header("x-request-id", "trace-42"),
            )
            .await
            .expect("h2 request");
        let json = echoed(&ok);
        assert_eq!(ok.header("x-request-id"), Some("trace-42"));
        assert_eq!(echoed_header(&json, "x-request-id"), ["trace-42"]);
        let expired = gw
            .https
            .send(Proto::H1, Req::get("/api/items").bearer(&t.expired))
            .await
            .expect("h1 request");
        assert_eq!(expired.status, 401);
        let scope = gw
            .https
            .send(
                Proto::H1,
                Req::new("POST", "/api/items").bearer(&t.read).body("{}"),
            )
            .await
            .expect("h1 request");
        assert_eq!(scope.status, 403);
        // An id with characters we do not take: replaced by ours.
        let plain = gw
            .http
            .send(
                Proto::H1,
                Req::get("/open/x").header("x-request-id", "{\"inject\":1}"),
            )
            .await
            .expect("plain request");
        let json = echoed(&plain);
        let id = plain.header("x-request-id").expect("an id").to_owned();
        assert_eq!(id.len(), 16, "generated: {id}");
        assert_eq!(echoed_header(&json, "x-request-id"), [id.as_str()]);
        let refused = [expired, scope].map(|r| {
            r.header("x-request-id")
                .expect("refusals carry the id too")
                .to_owned()
        });
        (refused, id)
    });
    let lines = gw.access_lines("access.log", 4);
    let text = std::fs::read_to_string(gw.path("access.log")).expect("access.log");
    for secret in [
        &t.rw,
        &t.expired,
        &t.read,
        "QSECRET",
        "COOKIESECRET",
        "Bearer",
    ] {
        assert!(!text.contains(secret), "{secret} logged:\n{text}");
    }
    let reqs = requests(&lines);
    assert_eq!(reqs.len(), 4, "{text}");
    let ok = by_id(&reqs, "trace-42");
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["route"], "api");
    assert_eq!(ok["upstream"], "app");
    assert_eq!(ok["server"], gw.upstream.addr().to_string());
    assert_eq!(ok["sub"], "alice");
    assert_eq!(ok["iss"], ISS);
    assert_eq!(ok["tls"], "TLSv1.3");
    assert_eq!(ok["alpn"], "h2");
    assert_eq!(ok["protocol"], "HTTP/2.0");
    assert_eq!(ok["client"], "127.0.0.1");
    assert!(ok["port"].as_u64().is_some_and(|p| p > 0), "{ok}");
    assert_eq!(ok["path"], "/api/items", "no query: {ok}");
    assert_eq!(ok["request_id"], "trace-42");
    assert!(ok["bytes_out"].as_u64().is_some_and(|b| b > 0), "{ok}");
    assert!(ok["upstream_ms"].as_f64().is_some(), "{ok}");
    let expired = by_id(&reqs, &ids[0]);
    assert_eq!(
        (&expired["status"], &expired["reason"], &expired["alpn"]),
        (&401.into(), &"expired".into(), &"http/1.1".into()),
        "{expired}"
    );
    assert!(expired.get("sub").is_none(), "{expired}");
    assert_eq!(expired["request_id"], ids[0].as_str());
    let scope = by_id(&reqs, &ids[1]);
    assert_eq!(
        (&scope["status"], &scope["reason"], &scope["method"]),
        (&403.into(), &"insufficient_scope".into(), &"POST".into()),
        "{scope}"
    );
    assert_eq!(scope["request_id"], ids[1].as_str());
    let plain = by_id(&reqs, &plain_id);
    assert_eq!(plain["route"], "open");
    assert!(plain.get("tls").is_none(), "{plain}");
}

#[test]
fn a_failed_handshake_gets_a_line_with_its_reason() {
    let gw = Gw::start(Setup {
        access_log: Some(""),
        ..Setup::default()
    });
    // Plain HTTP to the TLS port: not a TLS handshake.
    let mut s = TcpStream::connect(gw.https.addr()).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("write");
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    let port = s.local_addr().expect("local").port();
    let lines = gw.access_lines("access.log", 1);
    let failed: Vec<_> = lines
        .iter()
        .filter(|l| l["event"] == "tls_handshake_failed")
        .collect();
    assert_eq!(failed.len(), 1, "{lines:?}");
    assert_eq!(failed[0]["reason"], "not_tls");
    assert_eq!(failed[0]["client"], "127.0.0.1");
    assert_eq!(failed[0]["port"], port);
    // A flood from one source: one line per second, not one per connection.
    for _ in 0..20 {
        if let Ok(mut s) = TcpStream::connect(gw.https.addr()) {
            let _ = s.write_all(b"\x16\x03\x01\x00\x05hello");
        }
    }
    std::thread::sleep(Duration::from_millis(300));
    let lines = gw.access_lines("access.log", 1);
    let n = lines
        .iter()
        .filter(|l| l["event"] == "tls_handshake_failed")
        .count();
    assert!(n <= 4, "{n} lines for 21 failures within about a second");
}

#[test]
fn the_client_is_the_one_a_proxy_header_names() {
    let gw = Gw::start(Setup {
        listen: "proxy_protocol = true\ntrusted_proxies = [\"127.0.0.1\"]",
        access_log: Some(""),
        ..Setup::default()
    });
    let mut s = TcpStream::connect(gw.http.addr()).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    s.write_all(
        b"PROXY TCP4 203.0.113.9 127.0.0.1 51234 80\r\n\
          GET /open/p HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n",
    )
    .expect("write");
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer)
    );
    let lines = gw.access_lines("access.log", 1);
    let r = requests(&lines)[0];
    assert_eq!(r["client"], "203.0.113.9", "{r}");
    assert_eq!(r["port"], 51234, "{r}");
    assert_eq!(r["host"], "api.test", "{r}");
}

#[test]
fn sigusr1_reopens_the_file_after_logrotate_renamed_it() {
    let gw = Gw::start(Setup {
        access_log: Some("query = true"),
        ..Setup::default()
    });
    let rt = runtime();
    let get = |path: &str| {
        rt.block_on(gw.http.send(Proto::H1, Req::get(path)))
            .expect("request")
    };
    assert_eq!(get("/open/before?q=1").status, 200);
    assert_eq!(gw.access_lines("access.log", 1).len(), 1);
    std::fs::rename(gw.path("access.log"), gw.path("access.log.1")).expect("rename");
    gw.proc
        .signal(nix::sys::signal::Signal::SIGUSR1)
        .expect("SIGUSR1");
    // The signal is handled asynchronously: requests until one lands in the new file.
    let mut sent = 0;
    wait_until(
        "a line in the reopened file",
        Duration::from_secs(10),
        || {
            sent += 1;
            assert_eq!(get(&format!("/open/after{sent}")).status, 200);
            std::thread::sleep(Duration::from_millis(50));
            gw.path("access.log").exists()
                && std::fs::read_to_string(gw.path("access.log")).is_ok_and(|t| !t.is_empty())
        },
    );
    let new = gw.access_lines("access.log", 1);
    let old = gw.access_lines("access.log.1", 1);
    assert_eq!(old[0]["path"], "/open/before?q=1", "query = true keeps it");
    assert!(new
        .iter()
        .all(|l| l["path"].as_str().unwrap().starts_with("/open/after")));
    assert_eq!(old.len() + new.len(), 1 + sent, "no line lost or doubled");
    assert!(
        gw.proc.log_text().contains("access log reopened"),
        "{}",
        gw.proc.log_text()
    );
}

#[test]
fn the_json_operational_log_is_one_object_per_line() {
    let gw = Gw::start(Setup {
        access_log: Some("format = \"json\""),
        ..Setup::default()
    });
    let rt = runtime();
    let r = rt
        .block_on(gw.http.send(Proto::H1, Req::get("/open/x")))
        .expect("request");
    assert_eq!(r.status, 200);
    let log = gw.proc.log_text();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(lines.len() >= 2, "{log}");
    for l in &lines {
        for key in ["time", "level", "target", "message"] {
            assert!(l[key].is_string(), "{key} missing: {l}");
        }
    }
    let listening: Vec<_> = lines
        .iter()
        .filter(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("proxy listening on "))
        })
        .collect();
    assert_eq!(listening.len(), 2, "{log}");
    assert_eq!(listening[0]["target"], "gateway");
    assert_eq!(listening[0]["level"], "INFO");
    assert_eq!(listening[0]["tls"], true);
    assert_eq!(listening[0]["addr"], gw.https.addr().to_string());
}
