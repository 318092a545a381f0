//! Requests refused for their size or framing: body, header size and header count limits,
//! bodies that fail on the client's side, and conflicting or unsupported framing.

use gateway_tests::client::{raw_exchange, read_until_closed, Proto, RawReply, Req};
use gateway_tests::proxy::{closed_after_one_second, echoed, runtime, Gw, Setup};
use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

/// `max_body_bytes`, and request bodies that fail on the client's side: each is answered as
/// the client's doing (413, 408, 400), never as an upstream failure (502, 504).
#[test]
fn request_body_limits_and_failures_are_the_clients() {
    let gw = Gw::start(Setup {
        listen: "max_body_bytes = 4096",
        upstream: r#"request_timeout = "1s""#,
        ..Setup::default()
    });
    let addr = gw.http.addr();
    let head = |framing: &str| {
        format!("POST /open/upload HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{framing}\r\n\r\n")
    };
    let chunked = |n: usize| {
        let mut r = head("Transfer-Encoding: chunked").into_bytes();
        r.extend_from_slice(format!("{n:x}\r\n").as_bytes());
        r.extend(std::iter::repeat_n(b'x', n));
        r.extend_from_slice(b"\r\n0\r\n\r\n");
        r
    };
    let sized = |n: usize| {
        let mut r = head(&format!("Content-Length: {n}")).into_bytes();
        r.extend(std::iter::repeat_n(b'x', n));
        r
    };
    let exchange = |what: &str, request: &[u8]| {
        let reply = raw_exchange(addr, request, Duration::from_secs(6))
            .unwrap_or_else(|e| panic!("{what}: {e:#}"));
        assert!(reply.closed, "{what}: {reply:?}");
        reply
    };
    let error_code = |reply: &RawReply| {
        let text = reply.text();
        let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
        serde_json::from_str::<serde_json::Value>(body)
            .map(|v| v["error"].as_str().unwrap_or("").to_string())
            .unwrap_or_default()
    };

    // At the limit: relayed whole, chunked or sized.
    for (what, request) in [("chunked 4096", chunked(4096)), ("sized 4096", sized(4096))] {
        let reply = exchange(what, &request);
        assert_eq!(reply.status(), Some(200), "{what}: {}", reply.text());
        assert!(
            reply.text().contains(r#""body_len":4096"#),
            "{what}: {}",
            reply.text()
        );
    }
    // One byte over: 413 either way (chunked used to be a 502 blamed on the upstream).
    for (what, request) in [("chunked 4097", chunked(4097)), ("sized 4097", sized(4097))] {
        let reply = exchange(what, &request);
        assert_eq!(reply.status(), Some(413), "{what}: {}", reply.text());
        assert_eq!(error_code(&reply), "payload_too_large", "{what}");
    }

    // A body that stops arriving: 408 at the upstream's deadline (was 504).
    let mut stalled = head("Content-Length: 100").into_bytes();
    stalled.extend_from_slice(b"0123456789");
    let reply = exchange("stalled", &stalled);
    assert_eq!(reply.status(), Some(408), "stalled: {}", reply.text());
    assert_eq!(error_code(&reply), "request_timeout");
    closed_after_one_second("stalled body", Some(reply.elapsed));

    // A client that stops sending mid-body (half-closes) but reads on: 400 (was 502).
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(&stalled).expect("write");
    s.shutdown(std::net::Shutdown::Write).expect("half-close");
    let reply = read_until_closed(&mut s, Duration::from_secs(6));
    assert_eq!(reply.status(), Some(400), "broken: {}", reply.text());
    assert_eq!(error_code(&reply), "bad_request");

    // HTTP/2 (the client declares the length): at the limit relayed, over it 413.
    let t = gw.tokens();
    runtime().block_on(async {
        for (n, status) in [(4096, 200), (4097, 413)] {
            let reply = gw
                .https
                .send(
                    Proto::H2,
                    Req::new("POST", "/api/upload")
                        .bearer(&t.rw)
                        .body(&"x".repeat(n)),
                )
                .await
                .unwrap_or_else(|e| panic!("HTTP/2 {n}: {e:#}"));
            assert_eq!(reply.status, status, "HTTP/2 {n}: {reply:?}");
        }
    });
    // A declared length over the limit is refused before anything is forwarded.
    assert_eq!(gw.upstream.hits_for("/api/upload").len(), 1);
}

#[test]
fn oversized_headers_are_refused() {
    let gw = Gw::start(Setup {
        listen: "max_header_bytes = 8192",
        ..Setup::default()
    });
    let t = gw.tokens();
    let rt = runtime();
    let big = "x".repeat(12 * 1024);
    rt.block_on(async {
        for proto in Proto::BOTH {
            let what = format!("{proto:?} 12 KiB header, limit 8 KiB");
            match gw
                .https
                .send(
                    proto,
                    Req::get("/api/items").bearer(&t.rw).header("X-Big", &big),
                )
                .await
            {
                Ok(reply) => assert!(
                    matches!(reply.status.as_u16(), 431 | 400),
                    "{what}: {reply:?}"
                ),
                // Closing the connection (or resetting the stream) is a refusal too.
                Err(e) => eprintln!("{what}: refused without a status: {e:#}"),
            }
            // The gateway still serves a normal request.
            let reply = gw
                .https
                .send(proto, Req::get("/api/items").bearer(&t.rw))
                .await
                .expect("normal request after the big one");
            echoed(&reply);
        }
    });
    assert_eq!(
        gw.upstream.hits(),
        2,
        "only the normal requests reached the upstream"
    );
}

#[test]
fn header_limit_below_8k_is_enforced() {
    // `max_header_bytes` accepts 1024 and up; a 6 KiB head is over a 4 KiB limit.
    let gw = Gw::start(Setup {
        listen: "max_header_bytes = 4096",
        ..Setup::default()
    });
    let t = gw.tokens();
    let rt = runtime();
    let big = "x".repeat(6 * 1024);
    let mut wrong = Vec::new();
    rt.block_on(async {
        for proto in Proto::BOTH {
            let before = gw.upstream.hits();
            let req = Req::get("/api/items").bearer(&t.rw).header("X-Big", &big);
            let status = match gw.https.send(proto, req).await {
                Ok(reply) => Some(reply.status.as_u16()),
                Err(_) => None,
            };
            let forwarded = gw.upstream.hits() - before;
            if forwarded != 0 || !matches!(status, None | Some(431 | 400)) {
                wrong.push(format!(
                    "{proto:?}: status {status:?}, forwarded {forwarded}x"
                ));
            }
        }
    });
    assert!(
        wrong.is_empty(),
        "a 6 KiB request head with max_header_bytes = 4096 must be refused:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn header_count_limit_is_enforced_on_both_protocols() {
    // The default (100, hyper's own HTTP/1 limit), below it (enforced by the handler) and
    // above it (by hyper, whose limit is raised), for HTTP/1.1 and HTTP/2 alike.
    for (listen, within, over) in [
        ("", 90, 110),
        ("max_headers = 20", 15, 25),
        ("max_headers = 150", 140, 160),
    ] {
        let gw = Gw::start(Setup {
            listen,
            ..Setup::default()
        });
        let t = gw.tokens();
        let rt = runtime();
        let mut wrong = Vec::new();
        rt.block_on(async {
            for proto in Proto::BOTH {
                for (count, allowed) in [(within, true), (over, false)] {
                    let mut req = Req::get("/api/items").bearer(&t.rw);
                    for i in 0..count {
                        req = req.header(&format!("x-n{i}"), "v");
                    }
                    let before = gw.upstream.hits();
                    let status = match gw.https.send(proto, req).await {
                        Ok(reply) => Some(reply.status.as_u16()),
                        Err(_) => None,
                    };
                    let forwarded = gw.upstream.hits() - before;
                    let right = if allowed {
                        status == Some(200) && forwarded == 1
                    } else {
                        status == Some(431) && forwarded == 0
                    };
                    if !right {
                        wrong.push(format!(
                            "{listen}, {proto:?}, {count} extra headers: \
                             status {status:?}, forwarded {forwarded}x"
                        ));
                    }
                }
            }
        });
        assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    }
}

/// Conflicting or unsupported framing: 400 (or 501 for a transfer coding other than chunked,
/// which would otherwise reach the upstream silently undone), never forwarded.
#[test]
fn bad_framing_is_refused_before_the_upstream() {
    let gw = Gw::start(Setup::default());
    let t = gw.tokens();
    let cases = [
        (
            "Content-Length and Transfer-Encoding",
            "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
        (
            "Transfer-Encoding and Content-Length",
            "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n0\r\n\r\n",
            400,
        ),
        (
            "two different Content-Length",
            "Content-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
            400,
        ),
        (
            "a Content-Length list with different values",
            "Content-Length: 5, 6\r\n\r\nhello!",
            400,
        ),
        (
            "chunked in two Transfer-Encoding headers",
            "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
        (
            "chunked listed twice",
            "Transfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n",
            400,
        ),
        (
            "gzip before chunked",
            "Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
            501,
        ),
    ];
    let mut wrong = Vec::new();
    for (case, tail, status) in cases {
        let before = gw.upstream.hits();
        let request = format!(
            "POST /api/items HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\n\
             Content-Type: application/json\r\nConnection: close\r\n{tail}",
            t.rw
        );
        let reply = raw_exchange(gw.http.addr(), request.as_bytes(), Duration::from_secs(5))
            .expect("raw exchange");
        let forwarded = gw.upstream.hits() - before;
        if reply.status() != Some(status) || forwarded != 0 || !reply.closed {
            wrong.push(format!(
                "{case}: status {:?}, forwarded {forwarded}x, closed {}",
                reply.status(),
                reply.closed
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "requests with bad framing must be refused, never reach the upstream, and close the \
         connection:\n{}",
        wrong.join("\n")
    );
    // The same connection setup with clean framing is relayed.
    let clean = format!(
        "POST /api/items HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\n\
         Content-Length: 2\r\nConnection: close\r\n\r\n{{}}",
        t.rw
    );
    let reply = raw_exchange(gw.http.addr(), clean.as_bytes(), Duration::from_secs(5))
        .expect("raw exchange");
    assert_eq!(reply.status(), Some(200), "{}", reply.text());
    assert_eq!(gw.upstream.hits(), 1);
}
