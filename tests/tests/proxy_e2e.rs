//! The TLS reverse proxy end to end: the real `gateway run` with a config written by the test
//! (listeners on 127.0.0.1 port 0, read back from the log), a real echo upstream, real RS256
//! keys (openssl) and tokens (`gateway token mint`), a test CA and server certificates
//! (rcgen), and real clients: hyper over rustls with ALPN `http/1.1` and `h2`, and raw TCP
//! for what a well-behaved client cannot send.
//!
//! Every test owns its gateway, upstream and temp dir; guards stop and remove them even
//! when an assertion fails. Waits poll with deadlines; nothing sleeps for a fixed time.

use gateway_tests::client::{
    raw_exchange, raw_tls_exchange, read_until_closed, Client, Proto, RawReply, Reply, Req,
};
use gateway_tests::gateway::{cli_ok, GatewayProcess};
use gateway_tests::tls::{ServerCert, TestCa};
use gateway_tests::upstream::{ClosedPort, EchoUpstream, ScriptedUpstream};
use nix::sys::signal::Signal;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tempfile::TempDir;

const ISS: &str = "https://issuer.test/";
const AUD: &str = "https://api.test";

/// RS256 key pairs in PEM: the trusted issuer key and an untrusted one. Generated once per
/// test binary with the openssl CLI (in a temp dir that is removed at once).
struct RsaKeys {
    private: String,
    public: String,
    wrong_private: String,
}

fn rsa_keys() -> &'static RsaKeys {
    static KEYS: OnceLock<RsaKeys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let dir = TempDir::new().expect("temp dir");
        let gen = |name: &str| -> String {
            let path = dir.path().join(name);
            let out = std::process::Command::new("openssl")
                .args([
                    "genpkey",
                    "-algorithm",
                    "RSA",
                    "-pkeyopt",
                    "rsa_keygen_bits:2048",
                ])
                .arg("-out")
                .arg(&path)
                .output()
                .expect("run openssl (apt install openssl)");
            assert!(out.status.success(), "openssl genpkey: {out:?}");
            std::fs::read_to_string(&path).expect("read key")
        };
        let private = gen("issuer.pem");
        let wrong_private = gen("wrong.pem");
        let out = std::process::Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(dir.path().join("issuer.pem"))
            .output()
            .expect("run openssl");
        assert!(out.status.success(), "openssl pkey: {out:?}");
        RsaKeys {
            private,
            public: String::from_utf8(out.stdout).expect("PEM"),
            wrong_private,
        }
    })
}

/// Knobs of one gateway's config.
#[derive(Default)]
struct Setup {
    /// Extra lines for `[listen]`.
    listen: &'static str,
    /// Extra lines for the `[[upstream]]`.
    upstream: &'static str,
    /// The upstream server instead of the echo upstream.
    upstream_addr: Option<SocketAddr>,
    /// A second server in the upstream pool, after the first.
    second_server: Option<SocketAddr>,
}

/// One running gateway with everything it needs. Fields drop in order: the gateway first
/// (SIGTERM, then SIGKILL), then the upstream, then the temp dir.
struct Gw {
    proc: GatewayProcess,
    upstream: EchoUpstream,
    ca: TestCa,
    cert: ServerCert,
    https: Client,
    http: Client,
    dir: TempDir,
}

impl Gw {
    fn start(setup: Setup) -> Gw {
        let dir = TempDir::new().expect("temp dir");
        let keys = rsa_keys();
        let p = |name: &str| dir.path().join(name);
        std::fs::write(p("issuer.pem"), &keys.private).expect("write key");
        std::fs::write(p("issuer.pub.pem"), &keys.public).expect("write key");
        std::fs::write(p("wrong.pem"), &keys.wrong_private).expect("write key");
        let ca = TestCa::new().expect("test CA");
        let cert = ca.issue("gateway-test-a", 1).expect("server cert");
        cert.write(&p("tls.crt"), &p("tls.key"))
            .expect("write cert");
        let upstream = EchoUpstream::start().expect("echo upstream");
        let upstream_addr = setup.upstream_addr.unwrap_or(upstream.addr());
        let config = format!(
            r#"
[runtime]
worker_threads = 2

[listen]
https = ["127.0.0.1:0"]
http = ["127.0.0.1:0"]
{listen}

[tls]
[[tls.certificates]]
cert = "{dir}/tls.crt"
key = "{dir}/tls.key"

[jwt]
issuers = ["{ISS}"]
audiences = ["{AUD}"]
algorithms = ["RS256"]

[[jwt.keys]]
pem = "{dir}/issuer.pub.pem"
alg = "RS256"

[[upstream]]
name = "app"
servers = ["{upstream_addr}"{second}]
{upstream_extra}

[[route]]
name = "open"
path_prefix = "/open/"
upstream = "app"
auth = "none"

[[route]]
name = "maybe"
path_prefix = "/maybe/"
upstream = "app"
auth = "optional"
claim_headers = {{ sub = "X-Auth-Sub" }}

[[route]]
name = "api"
path_prefix = "/api/"
upstream = "app"
auth = "required"
claim_headers = {{ sub = "X-Auth-Sub", scope = "X-Auth-Scope" }}
"#,
            listen = setup.listen,
            upstream_extra = setup.upstream,
            second = setup
                .second_server
                .map(|a| format!(", \"{a}\""))
                .unwrap_or_default(),
            dir = dir.path().display(),
        );
        std::fs::write(p("gateway.toml"), config).expect("write config");
        let proc = GatewayProcess::start_proxy(&p("gateway.toml"), &p("gateway.log"), 2, &[])
            .expect("gateway starts");
        let https = Client::tls(
            proc.listener(true).expect("https listener"),
            ca.client_config(&[b"http/1.1"]).expect("client config"),
            ca.client_config(&[b"h2"]).expect("client config"),
        );
        let http = Client::plain(proc.listener(false).expect("http listener"));
        Gw {
            proc,
            upstream,
            ca,
            cert,
            https,
            http,
            dir,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `gateway token mint` with the trusted key (or `key` = "wrong.pem"), issuer and
    /// audience, the given claims and extra arguments.
    fn mint_with(&self, key: &str, claims: &str, extra: &[&str]) -> String {
        let key = self.path(key).display().to_string();
        let mut args = vec![
            "token", "mint", "--key", &key, "--alg", "RS256", "--iss", ISS, "--aud", AUD,
            "--claims", claims,
        ];
        args.extend_from_slice(extra);
        cli_ok(&args).trim().to_string()
    }

    fn mint(&self, claims: &str) -> String {
        self.mint_with("issuer.pem", claims, &[])
    }

    fn tokens(&self) -> Tokens {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let two_hours_ago = (now - 7200).to_string();
        Tokens {
            rw: self.mint(r#"{"sub":"alice","scope":"read write"}"#),
            read: self.mint(r#"{"sub":"bob","scope":"read"}"#),
            write: self.mint(r#"{"sub":"carol","scope":"write"}"#),
            expired: self.mint_with(
                "issuer.pem",
                r#"{"sub":"alice","scope":"read write"}"#,
                &["--now", &two_hours_ago, "--ttl", "1h"],
            ),
            wrong_key: self.mint_with("wrong.pem", r#"{"sub":"alice","scope":"read write"}"#, &[]),
            wrong_aud: self
                .mint(r#"{"sub":"alice","scope":"read write","aud":"https://other.test"}"#),
        }
    }

    fn client(&self, tls: bool) -> &Client {
        if tls {
            &self.https
        } else {
            &self.http
        }
    }
}

struct Tokens {
    rw: String,
    read: String,
    write: String,
    expired: String,
    wrong_key: String,
    wrong_aud: String,
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

/// The upstream's echo of what it received.
fn echoed(reply: &Reply) -> serde_json::Value {
    assert_eq!(
        reply.status, 200,
        "expected the upstream's echo, got {reply:?}"
    );
    let json = reply.json();
    assert!(json["headers"].is_object(), "not the echo: {json}");
    json
}

/// The values of `name` the upstream received, as the echo reports them.
fn echoed_header(json: &serde_json::Value, name: &str) -> Vec<String> {
    json["headers"][name]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|v| v.as_str().expect("string").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Asserts a refusal made by the gateway: status, `WWW-Authenticate`, small JSON body.
fn assert_refusal(what: &str, reply: &Reply, status: u16, error: &str) {
    assert_eq!(reply.status, status, "{what}: {reply:?}");
    assert_eq!(
        reply.header("content-type"),
        Some("application/json"),
        "{what}: {reply:?}"
    );
    let body = reply.json();
    assert_eq!(body["error"], error, "{what}: body {body}");
    assert!(reply.body.len() < 512, "{what}: body too large: {body}");
}

fn challenge(reply: &Reply) -> &str {
    reply
        .header("www-authenticate")
        .unwrap_or_else(|| panic!("no WWW-Authenticate in {reply:?}"))
}

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

/// `took`: how long a connection took to close with a 1 s limit (`None`: still open after
/// the 6 s the tests wait).
fn closed_after_one_second(what: &str, took: Option<Duration>) {
    let took = took.unwrap_or_else(|| panic!("{what}: still open after 6 s"));
    assert!(
        took >= Duration::from_millis(800) && took < Duration::from_secs(4),
        "{what}: closed after {took:?}, the limit is 1 s"
    );
}

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

/// A second gateway on addresses the first listens on refuses to start, naming the address,
/// before it binds any: SO_REUSEPORT would otherwise let it join the first one's listeners
/// and silently take a share of the connections. Every address is checked before any is
/// bound, so a taken second address does not briefly expose the first.
#[test]
fn a_second_instance_on_the_same_addresses_refuses_to_start() {
    let gw = Gw::start(Setup::default());
    let t = gw.tokens();
    let config = std::fs::read_to_string(gw.path("gateway.toml")).expect("read config");
    let (https, http) = (gw.https.addr(), gw.http.addr());
    let both = config
        .replacen(
            r#"https = ["127.0.0.1:0"]"#,
            &format!(r#"https = ["{https}"]"#),
            1,
        )
        .replacen(
            r#"http = ["127.0.0.1:0"]"#,
            &format!(r#"http = ["{http}"]"#),
            1,
        );
    let second_only = config.replacen(
        r#"http = ["127.0.0.1:0"]"#,
        &format!(r#"http = ["{http}"]"#),
        1,
    );
    for (name, text, taken) in [("both", both, https), ("second", second_only, http)] {
        assert_ne!(
            text, config,
            "{name}: the config names the first one's addresses"
        );
        let path = gw.path(&format!("{name}.toml"));
        std::fs::write(&path, text).expect("write config");
        let mut second = GatewayProcess::spawn(None, &path, &gw.path(&format!("{name}.log")))
            .expect("spawn gateway");
        let status = second
            .wait_exit(Duration::from_secs(20))
            .expect("wait for the second gateway");
        let log = second.log_text();
        let status = status.unwrap_or_else(|| panic!("{name}: still running:\n{log}"));
        assert!(!status.success(), "{name}: {status:?}\n{log}");
        assert!(
            log.contains(&format!(
                "cannot listen on {taken}: another process already listens there"
            )),
            "{name}: {log}"
        );
        assert!(!log.contains("listening on"), "{name}: {log}");
    }
    // The first one serves on.
    let rt = runtime();
    rt.block_on(async {
        for proto in Proto::BOTH {
            let reply = gw
                .https
                .send(proto, Req::get("/api/items").bearer(&t.rw))
                .await
                .unwrap_or_else(|e| panic!("{proto:?}: {e:#}"));
            assert_eq!(reply.status, 200, "{proto:?}: {reply:?}");
        }
    });
}

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

#[test]
fn sighup_reloads_the_certificate_without_failing_requests() {
    let gw = Gw::start(Setup::default());
    let t = gw.tokens();
    let cert_b = gw.ca.issue("gateway-test-b", 2).expect("second cert");
    assert_ne!(gw.cert.der, cert_b.der);
    let rt = runtime();
    rt.block_on(async {
        // Keep-alive connections opened before the reload.
        let mut old = Vec::new();
        for proto in Proto::BOTH {
            let mut conn = gw.https.connect(proto).await.expect("connect");
            assert_eq!(conn.peer_cert.as_deref(), Some(&gw.cert.der[..]));
            echoed(
                &conn
                    .send(Req::get("/api/before").bearer(&t.rw))
                    .await
                    .expect("before"),
            );
            old.push(conn);
        }

        // A bounded loop of requests on new connections across the reload.
        let stop = Arc::new(AtomicBool::new(false));
        // Per request: the certificate its handshake saw, or what failed.
        type Outcomes = Arc<Mutex<Vec<Result<Vec<u8>, String>>>>;
        let log: Outcomes = Arc::default();
        let looper = {
            let (stop, log, client, token) =
                (stop.clone(), log.clone(), gw.https.clone(), t.rw.clone());
            tokio::spawn(async move {
                for i in 0..2000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let proto = Proto::BOTH[i % 2];
                    let result = async {
                        let mut conn = client.connect(proto).await?;
                        let reply = conn.send(Req::get("/api/during").bearer(&token)).await?;
                        anyhow::ensure!(reply.status == 200, "status {}", reply.status);
                        Ok(conn.peer_cert.unwrap_or_default())
                    }
                    .await;
                    log.lock()
                        .unwrap()
                        .push(result.map_err(|e| format!("{e:#}")));
                }
            })
        };
        let count = || log.lock().unwrap().len();
        wait_until(
            "5 requests before the reload",
            Duration::from_secs(10),
            || count() >= 5,
        );

        cert_b
            .write(&gw.path("tls.crt"), &gw.path("tls.key"))
            .expect("replace the cert files");
        gw.proc.signal(Signal::SIGHUP).expect("SIGHUP");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let conn = gw.https.connect(Proto::H1).await.expect("connect");
            if conn.peer_cert.as_deref() == Some(&cert_b.der[..]) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "new handshakes still see the old certificate 10 s after SIGHUP:\n{}",
                gw.proc.log_text()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let after = count();
        wait_until(
            "5 requests after the reload",
            Duration::from_secs(10),
            || count() >= after + 5,
        );
        stop.store(true, Ordering::Relaxed);
        looper.await.expect("request loop");

        let log = std::mem::take(&mut *log.lock().unwrap());
        let failures: Vec<&String> = log.iter().filter_map(|r| r.as_ref().err()).collect();
        assert!(
            failures.is_empty(),
            "requests failed during the reload: {failures:?}"
        );
        let certs: Vec<&Vec<u8>> = log.iter().filter_map(|r| r.as_ref().ok()).collect();
        assert!(
            certs.iter().any(|c| **c == gw.cert.der),
            "loop never saw cert A"
        );
        assert!(
            certs.iter().any(|c| **c == cert_b.der),
            "loop never saw cert B"
        );
        // Once a handshake saw B, none saw A again.
        let first_b = certs.iter().position(|c| **c == cert_b.der).unwrap();
        assert!(
            certs[first_b..].iter().all(|c| **c == cert_b.der),
            "cert A served again after cert B"
        );

        // The connections from before the reload still work.
        for conn in &mut old {
            let what = format!("{:?} connection from before the reload", conn.proto());
            let reply = conn
                .send(Req::get("/api/after").bearer(&t.rw))
                .await
                .unwrap_or_else(|e| panic!("{what}: {e:#}"));
            assert_eq!(echoed(&reply)["path"], "/api/after", "{what}");
        }
    });
    assert!(gw.proc.log_text().contains("certificates reloaded"));
}

#[test]
fn sigterm_drains_in_flight_requests_then_exits() {
    let mut gw = Gw::start(Setup {
        listen: r#"shutdown_grace = "5s""#,
        ..Setup::default()
    });
    let t = gw.tokens();
    let https = gw.https.addr();
    let http = gw.http.addr();
    let rt = runtime();
    let mut in_flight = Vec::new();
    for proto in Proto::BOTH {
        let conn = rt.block_on(gw.https.connect(proto)).expect("connect");
        let token = t.rw.clone();
        in_flight.push(rt.spawn(async move {
            let mut conn = conn;
            conn.send(Req::get("/api/slow?delay_ms=1000").bearer(&token))
                .await
        }));
    }
    // Both requests are at the upstream: they are in flight.
    gw.upstream
        .wait_for_hits(2, Duration::from_secs(5))
        .expect("requests reach the upstream");
    let sigterm = Instant::now();
    gw.proc.signal(Signal::SIGTERM).expect("SIGTERM");

    // New connections are refused once the listeners close.
    for addr in [https, http] {
        wait_until(
            &format!("{addr} refuses connections after SIGTERM"),
            Duration::from_secs(3),
            || {
                matches!(
                    TcpStream::connect_timeout(&addr, Duration::from_millis(500)),
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused
                )
            },
        );
    }

    // The in-flight requests still complete.
    for (proto, task) in Proto::BOTH.into_iter().zip(in_flight) {
        let reply = rt
            .block_on(task)
            .expect("task")
            .unwrap_or_else(|e| panic!("{proto:?} in-flight request failed: {e:#}"));
        assert_eq!(echoed(&reply)["path"], "/api/slow", "{proto:?}");
    }
    let status = gw
        .proc
        .wait_exit(Duration::from_secs(5))
        .expect("wait")
        .unwrap_or_else(|| panic!("still running 5 s after SIGTERM:\n{}", gw.proc.log_text()));
    assert!(
        status.success(),
        "exit status {status}:\n{}",
        gw.proc.log_text()
    );
    assert!(
        sigterm.elapsed() < Duration::from_secs(5),
        "took {:?} to exit",
        sigterm.elapsed()
    );
    assert_eq!(gw.upstream.hits(), 2);
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

/// Polls `cond` every 10 ms until it holds; panics with `what` after `timeout`.
fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// One TLS handshake with `server_name` (`None`: connect by IP, which sends no SNI), using
/// `config`; the certificate the server presented and whether the session was resumed.
async fn handshake(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    server_name: Option<&str>,
) -> (Vec<u8>, bool) {
    use rustls::pki_types::ServerName;
    let name = match server_name {
        Some(n) => ServerName::try_from(n.to_string()).expect("name"),
        None => ServerName::IpAddress(addr.ip().into()),
    };
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .expect("handshake");
    let (_, session) = tls.get_ref();
    let cert = session.peer_certificates().expect("certificate")[0].to_vec();
    let resumed = session.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    // TLS 1.3 tickets arrive after the handshake: read until the server's answer so the
    // client has stored them.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tls.write_all(b"GET /open/x HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut sink)).await;
    (cert, resumed)
}

#[test]
fn certificates_are_chosen_by_sni_and_sessions_resume() {
    let mut gw = Gw::start(Setup::default());
    // A second certificate for the name `localhost`; the first stays the default.
    let sni = gw.ca.issue("gateway-test-sni", 7).expect("second cert");
    sni.write(&gw.path("sni.crt"), &gw.path("sni.key"))
        .expect("write");
    let mut config = std::fs::OpenOptions::new()
        .append(true)
        .open(gw.path("gateway.toml"))
        .expect("config");
    writeln!(
        config,
        "\n[[tls.certificates]]\ncert = \"{}\"\nkey = \"{}\"\nserver_names = [\"localhost\"]",
        gw.path("sni.crt").display(),
        gw.path("sni.key").display()
    )
    .expect("append");
    gw.proc.signal(Signal::SIGHUP).expect("SIGHUP");
    gw.proc
        .wait_for("certificates reloaded", Duration::from_secs(10))
        .expect("reloaded");

    let addr = gw.https.addr();
    let rt = runtime();
    rt.block_on(async {
        let fresh = gw.ca.client_config(&[b"http/1.1"]).expect("client config");
        let (cert, _) = handshake(addr, fresh.clone(), Some("localhost")).await;
        assert_eq!(cert, sni.der, "SNI `localhost` selects its certificate");
        let (cert, _) = handshake(addr, fresh, None).await;
        assert_eq!(cert, gw.cert.der, "no SNI: the default certificate");

        // Session resumption: a client that keeps its sessions resumes the second time.
        let mut resuming = (*gw.ca.client_config(&[b"http/1.1"]).expect("config")).clone();
        resuming.resumption = rustls::client::Resumption::in_memory_sessions(16);
        let resuming = Arc::new(resuming);
        let (_, first) = handshake(addr, resuming.clone(), Some("localhost")).await;
        let (_, second) = handshake(addr, resuming, Some("localhost")).await;
        assert!(!first, "the first handshake is a full one");
        assert!(second, "the second handshake resumes the session");
    });
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
