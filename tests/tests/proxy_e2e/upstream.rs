//! Upstreams that fail: unreachable (502, then 503), slow (504), a 101 nobody asked for
//! (502), and a dead server that active health checks take out of rotation.

use gateway_tests::client::{raw_exchange, Proto, Req};
use gateway_tests::proxy::{assert_refusal, runtime, wait_until, Gw, Setup};
use gateway_tests::upstream::{ClosedPort, ScriptedUpstream};
use std::time::{Duration, Instant};

#[test]
fn unreachable_upstream_gets_502_quickly() {
    let closed = ClosedPort::new().expect("closed port");
    let gw = Gw::start(Setup {
        upstream_addr: Some(closed.addr()),
        upstream: r#"connect_timeout = "2s""#,
        ..Setup::default()
    });
    let t = gw.tokens();
    let rt = runtime();
    rt.block_on(async {
        let port = closed.addr().port().to_string();
        for (i, proto) in [Proto::H1, Proto::H2, Proto::H1, Proto::H2, Proto::H1]
            .into_iter()
            .enumerate()
        {
            let what = format!("request {i} {proto:?}");
            let started = Instant::now();
            let reply = gw
                .https
                .send(proto, Req::get("/api/items").bearer(&t.rw))
                .await
                .unwrap_or_else(|e| panic!("{what}: {e:#}"));
            assert!(
                started.elapsed() < Duration::from_secs(2),
                "{what}: took {:?}",
                started.elapsed()
            );
            if i == 0 {
                assert_refusal(&what, &reply, 502, "bad_gateway");
            } else {
                // After max_fails failed connections the server is out of rotation: 503.
                match reply.status.as_u16() {
                    502 => assert_refusal(&what, &reply, 502, "bad_gateway"),
                    503 => assert_refusal(&what, &reply, 503, "service_unavailable"),
                    other => panic!("{what}: status {other}: {reply:?}"),
                }
            }
            assert!(
                !reply.text().contains(&port),
                "{what}: the body names the upstream: {}",
                reply.text()
            );
        }
    });
}

#[test]
fn slow_upstream_gets_504_after_request_timeout() {
    let gw = Gw::start(Setup {
        upstream: r#"request_timeout = "1s""#,
        ..Setup::default()
    });
    let t = gw.tokens();
    let rt = runtime();
    rt.block_on(async {
        for proto in Proto::BOTH {
            let what = format!("{proto:?}");
            let started = Instant::now();
            let reply = gw
                .https
                .send(proto, Req::get("/api/slow?delay_ms=4000").bearer(&t.rw))
                .await
                .unwrap_or_else(|e| panic!("{what}: {e:#}"));
            let took = started.elapsed();
            assert_refusal(&what, &reply, 504, "gateway_timeout");
            assert!(
                took >= Duration::from_millis(900) && took < Duration::from_secs(3),
                "{what}: 504 after {took:?}, request_timeout is 1 s"
            );
        }
    });
    assert_eq!(gw.upstream.hits_for("/api/slow").len(), 2);
}

/// We never ask an upstream for an upgrade (Upgrade is hop-by-hop), so a 101 from it is a
/// broken upstream: the client gets 502, never a switched connection nobody speaks.
#[test]
fn an_unsolicited_101_from_the_upstream_is_a_bad_gateway() {
    let upstream = ScriptedUpstream::start(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nraw",
    )
    .expect("scripted upstream");
    let gw = Gw::start(Setup {
        upstream_addr: Some(upstream.addr()),
        ..Setup::default()
    });
    runtime().block_on(async {
        for proto in Proto::BOTH {
            let what = format!("{proto:?}");
            let reply = gw
                .https
                .send(proto, Req::get("/open/switch"))
                .await
                .unwrap_or_else(|e| panic!("{what}: {e:#}"));
            assert_refusal(&what, &reply, 502, "bad_gateway");
        }
    });
    // Also when the client itself asked for a WebSocket upgrade.
    let reply = raw_exchange(
        gw.http.addr(),
        b"GET /open/ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade, close\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        Duration::from_secs(6),
    )
    .expect("raw exchange");
    assert_eq!(reply.status(), Some(502), "{}", reply.text());
}

#[test]
fn active_health_checks_take_a_dead_server_out_of_rotation() {
    // Two servers, one of them dead; passive checks effectively off (max_fails is huge), so
    // only the active check can keep requests away from the dead one.
    let closed = ClosedPort::new().expect("closed port");
    let gw = Gw::start(Setup {
        second_server: Some(closed.addr()),
        upstream: "max_fails = 1000000\nhealth_check = { path = \"/health\", interval = \"200ms\", timeout = \"500ms\" }",
        ..Setup::default()
    });
    let t = gw.tokens();
    let rt = runtime();
    rt.block_on(async {
        // The first round of checks runs at start: once the live server has seen its probe,
        // the dead one's (refused at once) follows; a short margin covers it.
        wait_until("a health check", Duration::from_secs(5), || {
            !gw.upstream.hits_for("/health").is_empty()
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut statuses = Vec::new();
        for i in 0..20 {
            let proto = Proto::BOTH[i % 2];
            let reply = gw
                .https
                .send(proto, Req::get("/api/items").bearer(&t.rw))
                .await
                .expect("reply");
            statuses.push(reply.status.as_u16());
        }
        assert_eq!(
            statuses,
            vec![200; 20],
            "no request went to the dead server"
        );
    });
}
