//! Bearer tokens on the request path: valid ones relayed with their claim headers, refusals
//! as RFC 6750 describes them, routes with `auth = "none"` and `"optional"`, and claim
//! headers a client sends itself.

use gateway_tests::client::{Proto, Req};
use gateway_tests::proxy::{assert_refusal, challenge, echoed, echoed_header, runtime, Gw, Setup};

#[test]
fn valid_token_is_relayed_with_claim_headers() {
    let gw = Gw::start(Setup::default());
    let t = gw.tokens();
    let rt = runtime();
    rt.block_on(async {
        for (tls, proto) in [(true, Proto::H1), (true, Proto::H2), (false, Proto::H1)] {
            let what = format!("tls={tls} {proto:?}");
            let reply = gw
                .client(tls)
                .send(proto, Req::get("/api/items?x=1").bearer(&t.rw))
                .await
                .unwrap_or_else(|e| panic!("{what}: {e:#}"));
            let want_version = match proto {
                Proto::H1 => http::Version::HTTP_11,
                Proto::H2 => http::Version::HTTP_2,
            };
            assert_eq!(reply.version, want_version, "{what}");
            let json = echoed(&reply);
            assert_eq!(json["method"], "GET", "{what}");
            assert_eq!(json["path"], "/api/items", "{what}");
            assert_eq!(json["query"], "x=1", "{what}");
            assert_eq!(echoed_header(&json, "x-auth-sub"), ["alice"], "{what}");
            assert_eq!(
                echoed_header(&json, "x-auth-scope"),
                ["read write"],
                "{what}"
            );
            assert_eq!(
                echoed_header(&json, "authorization"),
                [format!("Bearer {}", t.rw)],
                "{what}: forwarded by default"
            );

            let reply = gw
                .client(tls)
                .send(
                    proto,
                    Req::new("POST", "/api/items")
                        .bearer(&t.write)
                        .header("content-type", "application/json")
                        .body(r#"{"name":"thing"}"#),
                )
                .await
                .unwrap_or_else(|e| panic!("{what}: {e:#}"));
            let json = echoed(&reply);
            assert_eq!(json["method"], "POST", "{what}");
            assert_eq!(json["body_len"], 16, "{what}");
            assert_eq!(echoed_header(&json, "x-auth-sub"), ["carol"], "{what}");
            assert_eq!(echoed_header(&json, "x-auth-scope"), ["write"], "{what}");
        }
    });
    assert_eq!(gw.upstream.hits(), 6);
}

#[test]
fn refusals_follow_rfc6750_and_never_reach_the_upstream() {
    let gw = Gw::start(Setup::default());
    let t = gw.tokens();
    let rt = runtime();
    // (case, request, status, error in the body, challenge check)
    enum Ch {
        /// Exactly this challenge.
        Exact(&'static str),
        /// `error="..."` (and for 403 the scope), after the realm.
        Error(&'static str),
        Scope(&'static str),
    }
    let cases: Vec<(&str, Req, u16, &str, Ch)> = vec![
        (
            "missing token",
            Req::get("/api/items"),
            401,
            "unauthorized",
            Ch::Exact(r#"Bearer realm="gateway""#),
        ),
        (
            "Basic credentials are no bearer token",
            Req::get("/api/items").header("authorization", "Basic dXNlcjpwYXNz"),
            401,
            "unauthorized",
            Ch::Exact(r#"Bearer realm="gateway""#),
        ),
        (
            "malformed token",
            Req::get("/api/items").bearer("not-a-jwt"),
            401,
            "invalid_token",
            Ch::Error("invalid_token"),
        ),
        (
            "three garbage segments",
            Req::get("/api/items").bearer("a.b.c"),
            401,
            "invalid_token",
            Ch::Error("invalid_token"),
        ),
        (
            "expired token",
            Req::get("/api/items").bearer(&t.expired),
            401,
            "invalid_token",
            Ch::Error("invalid_token"),
        ),
        (
            "token signed by an untrusted key",
            Req::get("/api/items").bearer(&t.wrong_key),
            401,
            "invalid_token",
            Ch::Error("invalid_token"),
        ),
        (
            "wrong audience",
            Req::get("/api/items").bearer(&t.wrong_aud),
            401,
            "invalid_token",
            Ch::Error("invalid_token"),
        ),
        (
            "two Authorization headers",
            Req::get("/api/items").bearer(&t.rw).bearer(&t.rw),
            401,
            "invalid_request",
            Ch::Error("invalid_request"),
        ),
        (
            "comma-joined credentials",
            Req::get("/api/items").header(
                "authorization",
                &format!("Bearer {}, Bearer {}", t.rw, t.rw),
            ),
            401,
            "invalid_request",
            Ch::Error("invalid_request"),
        ),
        (
            "read-only token POST",
            Req::new("POST", "/api/items").bearer(&t.read).body("{}"),
            403,
            "insufficient_scope",
            Ch::Scope("write"),
        ),
        (
            "read-only token PATCH",
            Req::new("PATCH", "/api/items").bearer(&t.read).body("{}"),
            403,
            "insufficient_scope",
            Ch::Scope("write"),
        ),
        (
            "write-only token GET",
            Req::get("/api/items").bearer(&t.write),
            403,
            "insufficient_scope",
            Ch::Scope("read"),
        ),
        (
            "unknown method, read-only token: needs the strictest scope",
            Req::new("PURGE", "/api/items").bearer(&t.read),
            403,
            "insufficient_scope",
            Ch::Scope("write"),
        ),
        (
            "unknown method, write-only token: needs the strictest scope",
            Req::new("PURGE", "/api/items").bearer(&t.write),
            403,
            "insufficient_scope",
            Ch::Scope("read"),
        ),
    ];
    rt.block_on(async {
        for proto in Proto::BOTH {
            for (case, req, status, error, ch) in &cases {
                let what = format!("{proto:?} {case}");
                let before = gw.upstream.hits();
                let reply = gw
                    .https
                    .send(proto, req.clone())
                    .await
                    .unwrap_or_else(|e| panic!("{what}: {e:#}"));
                assert_refusal(&what, &reply, *status, error);
                let got = challenge(&reply);
                match ch {
                    Ch::Exact(want) => assert_eq!(got, *want, "{what}"),
                    Ch::Error(e) => assert!(
                        got.starts_with(&format!(r#"Bearer realm="gateway", error="{e}""#)),
                        "{what}: {got}"
                    ),
                    Ch::Scope(s) => {
                        assert!(
                            got.starts_with(
                                r#"Bearer realm="gateway", error="insufficient_scope""#
                            ),
                            "{what}: {got}"
                        );
                        assert!(got.contains(&format!(r#"scope="{s}""#)), "{what}: {got}");
                    }
                }
                assert_eq!(gw.upstream.hits(), before, "{what}: reached the upstream");
            }
            // The strictest scope is enough for the unknown method.
            let reply = gw
                .https
                .send(proto, Req::new("PURGE", "/api/items").bearer(&t.rw))
                .await
                .expect("PURGE with read write");
            assert_eq!(echoed(&reply)["method"], "PURGE");
        }
    });
    assert_eq!(
        gw.upstream.hits(),
        2,
        "only the two PURGE requests with read write"
    );
}

#[test]
fn auth_none_and_optional_routes() {
    let gw = Gw::start(Setup::default());
    let t = gw.tokens();
    let rt = runtime();
    rt.block_on(async {
        for proto in Proto::BOTH {
            // auth = "none": no token needed, a bad one is not looked at.
            for req in [Req::get("/open/x"), Req::get("/open/x").bearer("not-a-jwt")] {
                let json = echoed(&gw.https.send(proto, req).await.expect("open"));
                assert_eq!(json["path"], "/open/x");
                assert!(echoed_header(&json, "x-auth-sub").is_empty(), "{json}");
            }
            // auth = "optional": anonymous passes without claims...
            let json = echoed(
                &gw.https
                    .send(proto, Req::get("/maybe/x"))
                    .await
                    .expect("optional, anonymous"),
            );
            assert!(echoed_header(&json, "x-auth-sub").is_empty(), "{json}");
            // ...a valid token passes with its claims...
            let json = echoed(
                &gw.https
                    .send(proto, Req::get("/maybe/x").bearer(&t.rw))
                    .await
                    .expect("optional, token"),
            );
            assert_eq!(echoed_header(&json, "x-auth-sub"), ["alice"]);
            // ...and a token that is present must be valid.
            let before = gw.upstream.hits();
            for (case, token) in [("expired", &t.expired), ("untrusted key", &t.wrong_key)] {
                let reply = gw
                    .https
                    .send(proto, Req::get("/maybe/x").bearer(token))
                    .await
                    .expect("optional, bad token");
                let what = format!("{proto:?} optional route, {case} token");
                assert_refusal(&what, &reply, 401, "invalid_token");
                assert!(
                    challenge(&reply).contains(r#"error="invalid_token""#),
                    "{what}"
                );
            }
            assert_eq!(gw.upstream.hits(), before);
        }
    });
}

#[test]
fn spoofed_claim_headers_are_stripped() {
    let gw = Gw::start(Setup::default());
    let t = gw.tokens();
    let no_sub = gw.mint(r#"{"scope":"read write"}"#);
    let rt = runtime();
    rt.block_on(async {
        for proto in Proto::BOTH {
            let spoof = |req: Req| {
                req.header("X-Auth-Sub", "mallory")
                    .header("x-auth-sub", "admin")
                    .header("X-Auth-Scope", "admin")
            };
            // The token's own claims replace the client's copies.
            let json = echoed(
                &gw.https
                    .send(proto, spoof(Req::get("/api/items").bearer(&t.rw)))
                    .await
                    .expect("spoof on a required route"),
            );
            assert_eq!(echoed_header(&json, "x-auth-sub"), ["alice"], "{proto:?}");
            assert_eq!(echoed_header(&json, "x-auth-scope"), ["read write"]);
            // A claim the token lacks: the client's copy is removed, nothing is added.
            let json = echoed(
                &gw.https
                    .send(proto, spoof(Req::get("/api/items").bearer(&no_sub)))
                    .await
                    .expect("spoof, token without sub"),
            );
            assert!(echoed_header(&json, "x-auth-sub").is_empty(), "{json}");
            assert_eq!(echoed_header(&json, "x-auth-scope"), ["read write"]);
            // Routes without token checks strip them too (every configured claim header).
            for path in ["/open/x", "/maybe/x"] {
                let json = echoed(
                    &gw.https
                        .send(proto, spoof(Req::get(path)))
                        .await
                        .expect("spoof on an unauthenticated route"),
                );
                assert!(
                    echoed_header(&json, "x-auth-sub").is_empty(),
                    "{path}: {json}"
                );
                assert!(
                    echoed_header(&json, "x-auth-scope").is_empty(),
                    "{path}: {json}"
                );
            }
        }
    });
}
