//! Client connections: header read and idle timeouts, and the per-source connection limit.

use gateway_tests::client::{raw_exchange, raw_tls_exchange, read_until_closed, Proto, Req};
use gateway_tests::proxy::{closed_after_one_second, echoed, runtime, Gw, Setup};
use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

#[test]
fn slow_client_is_disconnected_after_header_read_timeout() {
    let gw = Gw::start(Setup {
        listen: r#"header_read_timeout = "1s""#,
        ..Setup::default()
    });
    // Plain HTTP: half a request line, then nothing.
    let reply = raw_exchange(gw.http.addr(), b"GET /api/items HT", Duration::from_secs(6))
        .expect("raw exchange");
    closed_after_one_second("plain", reply.closed.then_some(reply.elapsed));
    assert!(
        matches!(reply.status(), None | Some(408)),
        "answered {reply:?}"
    );

    // TLS: the handshake completes, then half a request line.
    let config = gw.ca.client_config(&[b"http/1.1"]).expect("client config");
    let reply = runtime()
        .block_on(raw_tls_exchange(
            gw.https.addr(),
            config,
            b"GET /api/items HT",
            Duration::from_secs(6),
        ))
        .expect("TLS exchange");
    closed_after_one_second("TLS", reply.closed.then_some(reply.elapsed));
    assert!(
        reply.bytes.is_empty() || reply.status() == Some(408),
        "answered {reply:?}"
    );
    assert_eq!(gw.upstream.hits(), 0);
}

/// `header_read_timeout` is also the idle limit where hyper has no timer of its own: a
/// connection that never sends a byte (plain, or after its TLS handshake), and HTTP/2
/// between requests. Requests in progress, however long, keep a connection open.
#[test]
fn quiet_connections_are_closed_after_the_idle_limit() {
    let gw = Gw::start(Setup {
        listen: r#"header_read_timeout = "1s""#,
        ..Setup::default()
    });
    // Plain TCP, not a byte sent.
    let reply = raw_exchange(gw.http.addr(), b"", Duration::from_secs(6)).expect("raw exchange");
    closed_after_one_second(
        "silent plain connection",
        reply.closed.then_some(reply.elapsed),
    );
    assert!(reply.bytes.is_empty(), "answered {reply:?}");

    let t = gw.tokens();
    let rt = runtime();
    rt.block_on(async {
        // TLS handshake done (either protocol), then not a byte.
        for alpn in [&b"http/1.1"[..], b"h2"] {
            let what = format!("silent TLS connection ({})", String::from_utf8_lossy(alpn));
            let config = gw.ca.client_config(&[alpn]).expect("client config");
            let reply = raw_tls_exchange(gw.https.addr(), config, b"", Duration::from_secs(6))
                .await
                .unwrap_or_else(|e| panic!("{what}: {e:#}"));
            closed_after_one_second(&what, reply.closed.then_some(reply.elapsed));
            assert!(reply.bytes.is_empty(), "{what}: answered {reply:?}");
        }

        // HTTP/2 (TLS, and cleartext with prior knowledge): one request, then quiet.
        for (what, client) in [("TLS HTTP/2", &gw.https), ("cleartext HTTP/2", &gw.http)] {
            let mut conn = client.connect(Proto::H2).await.expect("connect");
            let reply = conn
                .send(Req::get("/api/items").bearer(&t.rw))
                .await
                .unwrap_or_else(|e| panic!("{what}: {e:#}"));
            assert_eq!(reply.status, 200, "{what}: {reply:?}");
            closed_after_one_second(
                &format!("{what} after its request"),
                conn.ended_within(Duration::from_secs(6)).await,
            );
        }

        // A request in progress for 2.5 s, past the limit, and steady requests 300 ms apart
        // for 2.4 s, all on one HTTP/2 connection: it stays open throughout.
        let mut conn = gw.https.connect(Proto::H2).await.expect("connect");
        let reply = conn
            .send(Req::get("/api/slow?delay_ms=2500").bearer(&t.rw))
            .await
            .expect("slow request");
        assert_eq!(reply.status, 200, "{reply:?}");
        for i in 0..9 {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            let reply = conn
                .send(Req::get("/api/items").bearer(&t.rw))
                .await
                .unwrap_or_else(|e| panic!("request {i} after the slow one: {e:#}"));
            assert_eq!(reply.status, 200, "request {i}: {reply:?}");
        }
        closed_after_one_second(
            "HTTP/2 after steady requests",
            conn.ended_within(Duration::from_secs(6)).await,
        );
    });
    assert_eq!(gw.upstream.hits_for("/api/slow").len(), 1);
}

#[test]
fn per_source_connection_limit_closes_the_third_connection() {
    let gw = Gw::start(Setup {
        listen: "max_connections_per_source = 2",
        ..Setup::default()
    });
    let rt = runtime();
    rt.block_on(async {
        // Two keep-alive connections, each proven served.
        let mut first = gw.http.connect(Proto::H1).await.expect("connection 1");
        echoed(
            &first
                .send(Req::get("/open/1"))
                .await
                .expect("on connection 1"),
        );
        let mut second = gw.https.connect(Proto::H2).await.expect("connection 2");
        echoed(
            &second
                .send(Req::get("/open/2"))
                .await
                .expect("on connection 2"),
        );

        // The third is closed without an answer.
        let mut third = TcpStream::connect(gw.http.addr()).expect("TCP connect");
        let _ = third.write_all(b"GET /open/3 HTTP/1.1\r\nHost: localhost\r\n\r\n");
        let reply = read_until_closed(&mut third, Duration::from_secs(5));
        assert!(reply.closed, "third connection still open: {reply:?}");
        assert!(
            reply.bytes.is_empty(),
            "third connection answered: {}",
            reply.text()
        );
        assert!(gw.upstream.hits_for("/open/3").is_empty());

        // The first two still work; closing one frees a slot.
        echoed(
            &second
                .send(Req::get("/open/2b"))
                .await
                .expect("connection 2 again"),
        );
        drop(first);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match gw.http.send(Proto::H1, Req::get("/open/4")).await {
                Ok(reply) => {
                    echoed(&reply);
                    break;
                }
                Err(e) => assert!(
                    Instant::now() < deadline,
                    "no slot freed 5 s after closing a connection: {e:#}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
}
