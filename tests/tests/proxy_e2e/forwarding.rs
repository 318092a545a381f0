//! What the upstream receives: hop-by-hop headers removed and forwarding headers set, the
//! path normalised before a route is matched, and exactly one valid host.

use gateway_tests::client::{raw_exchange, Proto, Req};
use gateway_tests::proxy::{assert_refusal, echoed, echoed_header, runtime, Gw, Setup};
use std::time::Duration;

#[test]
fn hop_by_hop_headers_are_stripped_and_forwarding_headers_set() {
    let gw = Gw::start(Setup::default());
    let t = gw.tokens();
    let rt = runtime();
    rt.block_on(async {
        for (tls, proto) in [(true, Proto::H1), (false, Proto::H1), (true, Proto::H2)] {
            let what = format!("tls={tls} {proto:?}");
            let mut req = Req::get("/api/items")
                .bearer(&t.rw)
                .header("X-Forwarded-For", "203.0.113.9")
                .header("X-Forwarded-Proto", if tls { "http" } else { "https" })
                .header("Forwarded", "for=203.0.113.9;proto=http")
                .header("X-End-To-End", "kept");
            if proto == Proto::H1 {
                // Connection-specific headers exist only in HTTP/1.1.
                req = req
                    .header("Connection", "keep-alive, X-Hop")
                    .header("X-Hop", "secret")
                    .header("Keep-Alive", "timeout=5")
                    .header("Proxy-Connection", "keep-alive")
                    .header("Proxy-Authorization", "Basic dXNlcjpwYXNz")
                    .header("TE", "trailers");
            }
            let json = echoed(
                &gw.client(tls)
                    .send(proto, req)
                    .await
                    .unwrap_or_else(|e| panic!("{what}: {e:#}")),
            );
            for hop in [
                "x-hop",
                "keep-alive",
                "proxy-connection",
                "proxy-authorization",
                "te",
                "transfer-encoding",
            ] {
                assert!(
                    echoed_header(&json, hop).is_empty(),
                    "{what}: {hop} reached the upstream: {json}"
                );
            }
            for v in echoed_header(&json, "connection") {
                assert!(
                    !v.to_ascii_lowercase().contains("x-hop"),
                    "{what}: the client's Connection header was forwarded: {json}"
                );
            }
            let proto_name = if tls { "https" } else { "http" };
            assert_eq!(echoed_header(&json, "x-end-to-end"), ["kept"], "{what}");
            assert_eq!(
                echoed_header(&json, "x-forwarded-for"),
                ["127.0.0.1"],
                "{what}"
            );
            assert_eq!(
                echoed_header(&json, "x-forwarded-proto"),
                [proto_name],
                "{what}"
            );
            assert_eq!(
                echoed_header(&json, "forwarded"),
                [format!(
                    r#"for=127.0.0.1;proto={proto_name};host="localhost""#
                )],
                "{what}"
            );
        }
    });
}

#[test]
fn paths_are_normalised_before_matching() {
    let gw = Gw::start(Setup::default());
    let t = gw.tokens();
    let rt = runtime();
    rt.block_on(async {
        for proto in Proto::BOTH {
            for path in [
                "//api/items",
                "/./api/items",
                "/%2e/api/items",
                "/%2E/api/items",
                "/x/../api/items",
                "/api//items",
            ] {
                let what = format!("{proto:?} {path}");
                let reply = gw
                    .https
                    .send(proto, Req::get(path).bearer(&t.rw))
                    .await
                    .unwrap_or_else(|e| panic!("{what}: {e:#}"));
                let json = echoed(&reply);
                assert_eq!(json["path"], "/api/items", "{what}");
                assert_eq!(echoed_header(&json, "x-auth-sub"), ["alice"], "{what}");
                // The route's policy applies to the normalised path: no bypass.
                let before = gw.upstream.hits();
                let reply = gw
                    .https
                    .send(proto, Req::new("POST", path).bearer(&t.read).body("{}"))
                    .await
                    .unwrap_or_else(|e| panic!("{what}: {e:#}"));
                assert_refusal(&what, &reply, 403, "insufficient_scope");
                assert_eq!(gw.upstream.hits(), before, "{what}");
            }
            // Matching is case-sensitive: /API/ is not /api/.
            let before = gw.upstream.hits();
            let reply = gw
                .https
                .send(proto, Req::get("/API/items").bearer(&t.rw))
                .await
                .expect("/API/items");
            assert_refusal(&format!("{proto:?} /API/items"), &reply, 404, "not_found");
            assert_eq!(
                gw.upstream.hits(),
                before,
                "/API/items reached the upstream"
            );
        }
    });
}

/// The host a route is chosen for is the host the upstream gets: two Host headers, an
/// invalid one, none in HTTP/1.1, and an HTTP/2 `host` that disagrees with `:authority` are
/// 400 (RFC 9112 §3.2, RFC 9113 §8.3.1) and never forwarded; an absolute-form target's
/// authority replaces the client's Host (RFC 9112 §3.2.2).
#[test]
fn one_valid_host_reaches_the_upstream() {
    let gw = Gw::start(Setup::default());
    let addr = gw.http.addr();
    let exchange = |what: &str, request: &str| {
        raw_exchange(addr, request.as_bytes(), Duration::from_secs(6))
            .unwrap_or_else(|e| panic!("{what}: {e:#}"))
    };
    for (what, request) in [
        (
            "two Host headers",
            "GET /open/refused HTTP/1.1\r\nHost: public.example\r\nHost: secret.example\r\nConnection: close\r\n\r\n",
        ),
        (
            "invalid Host",
            "GET /open/refused HTTP/1.1\r\nHost: public.example/x y\r\nConnection: close\r\n\r\n",
        ),
        (
            "user info in Host",
            "GET /open/refused HTTP/1.1\r\nHost: user@public.example\r\nConnection: close\r\n\r\n",
        ),
        (
            "HTTP/1.1 without Host",
            "GET /open/refused HTTP/1.1\r\nConnection: close\r\n\r\n",
        ),
    ] {
        let reply = exchange(what, request);
        assert_eq!(reply.status(), Some(400), "{what}: {}", reply.text());
        assert!(reply.text().contains("\"bad_request\""), "{what}: {}", reply.text());
    }
    assert!(gw.upstream.hits_for("/open/refused").is_empty());

    // HTTP/1.0 may name no host.
    let reply = exchange("HTTP/1.0", "GET /open/ten HTTP/1.0\r\n\r\n");
    assert_eq!(reply.status(), Some(200), "HTTP/1.0: {}", reply.text());

    // Absolute form: the target's authority is the host, for the route and the upstream.
    let reply = exchange(
        "absolute form",
        "GET http://public.example/open/absolute HTTP/1.1\r\nHost: secret.example\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(reply.status(), Some(200), "absolute form: {}", reply.text());
    let seen = gw.upstream.hits_for("/open/absolute");
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].values("host"), ["public.example"]);

    // HTTP/2: a `host` header that disagrees with `:authority` is malformed.
    runtime().block_on(async {
        let reply = gw
            .https
            .send(
                Proto::H2,
                Req::get("/open/h2-conflict").header("host", "secret.example"),
            )
            .await
            .expect("HTTP/2 request");
        assert_refusal("HTTP/2 host conflict", &reply, 400, "bad_request");
        let reply = gw
            .https
            .send(Proto::H2, Req::get("/open/h2"))
            .await
            .expect("HTTP/2 request");
        assert_eq!(reply.status, 200, "{reply:?}");
    });
    assert!(gw.upstream.hits_for("/open/h2-conflict").is_empty());
    let seen = gw.upstream.hits_for("/open/h2");
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].values("host"),
        [format!("localhost:{}", gw.https.addr().port())]
    );
}
