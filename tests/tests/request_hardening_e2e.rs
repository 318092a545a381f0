//! Routing and header hardening end to end (issue 13, items 2 and 3), tried the way an
//! attacker would: the real `gateway run`, a real echo upstream that records what reached it,
//! HS256 tokens minted by `gateway token mint`, and real clients (hyper over rustls with
//! HTTP/1.1 and HTTP/2, curl with `--path-as-is` over HTTP/1.1 and HTTP/2 with prior
//! knowledge). Each refusal is also checked not to have reached the upstream.
//!
//! The routes mirror the issue's setup: token routes next to an open catch-all `/` on the
//! same upstream, so every routing differential would land on the open route.

use gateway_tests::client::{Client, Proto, Reply, Req};
use gateway_tests::gateway::{mint_hs256, GatewayProcess};
use gateway_tests::tls::TestCa;
use gateway_tests::upstream::EchoUpstream;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Command;
use tempfile::TempDir;

const ISS: &str = "https://issuer.test/";
const AUD: &str = "https://api.test";

const ROUTES: &str = r#"
[[route]]
name = "admin"
host = "Admin.Example"
path_prefix = "/"
upstream = "app"
scopes = { GET = ["admin"] }

[[route]]
name = "api"
path_prefix = "/api/"
upstream = "app"
scopes = { GET = ["read"], POST = ["write"], DELETE = ["admin"] }
claim_headers = { sub = "X-Auth-Sub", scope = "X-Auth-Scope" }

[[route]]
name = "pub"
path_prefix = "/pub"
upstream = "app"
auth = "none"

[[route]]
name = "pubkeys"
path_prefix = "/pubkeys"
upstream = "app"

[[route]]
name = "nocred"
path_prefix = "/nocred/"
upstream = "app"
forward_authorization = false
query_token = true

[[route]]
name = "legacy"
path_prefix = "/legacy/"
upstream = "app"
strip_override_headers = false

[[route]]
name = "files"
path_prefix = "/files/"
upstream = "app"
auth = "none"
encoded_slashes = "keep"

[[route]]
name = "docs"
path_prefix = "/docs/"
upstream = "app"
auth = "none"
encoded_slashes = "decode"

[[route]]
name = "maybe"
path_prefix = "/maybe/"
upstream = "app"
auth = "optional"
claim_headers = { sub = "X-Auth-Sub" }

[[route]]
name = "open"
path_prefix = "/"
upstream = "app"
auth = "none"
"#;

/// One gateway with its upstream; drops the gateway first, then the upstream and temp dir.
struct Gw {
    _proc: GatewayProcess,
    upstream: EchoUpstream,
    https: Client,
    http: Client,
    dir: TempDir,
}

impl Gw {
    fn start() -> Gw {
        let dir = TempDir::new().expect("temp dir");
        let p = |name: &str| dir.path().join(name);
        std::fs::write(p("secret"), b"issue-13 test secret, 32 bytes or more").expect("secret");
        let ca = TestCa::new().expect("test CA");
        let cert = ca.issue("gateway-hardening", 1).expect("server cert");
        cert.write(&p("tls.crt"), &p("tls.key"))
            .expect("write cert");
        let upstream = EchoUpstream::start().expect("echo upstream");
        let config = format!(
            r#"
[runtime]
worker_threads = 1

[listen]
https = ["127.0.0.1:0"]
http = ["127.0.0.1:0"]

[tls]
[[tls.certificates]]
cert = "{dir}/tls.crt"
key = "{dir}/tls.key"

[jwt]
issuers = ["{ISS}"]
audiences = ["{AUD}"]
algorithms = ["HS256"]

[[jwt.keys]]
secret_file = "{dir}/secret"
alg = "HS256"

[[upstream]]
name = "app"
servers = ["{upstream}"]
{ROUTES}"#,
            dir = dir.path().display(),
            upstream = upstream.addr(),
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
            _proc: proc,
            upstream,
            https,
            http,
            dir,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn mint(&self, claims: &str) -> String {
        mint_hs256(&self.path("secret"), claims, &["--iss", ISS, "--aud", AUD])
    }

    fn plain_addr(&self) -> SocketAddr {
        self.http.addr()
    }

    /// `curl --path-as-is` against the plain listener (HTTP/1.1, or HTTP/2 with prior
    /// knowledge): status and body.
    fn curl(&self, h2: bool, path: &str, args: &[&str]) -> (u16, String) {
        let url = format!("http://{}{path}", self.plain_addr());
        let out = Command::new("curl")
            .args([
                "-sS",
                "--path-as-is",
                "--max-time",
                "10",
                "-w",
                "\n%{http_code}",
            ])
            .arg(if h2 {
                "--http2-prior-knowledge"
            } else {
                "--http1.1"
            })
            .args(args)
            .arg(&url)
            .output()
            .expect("run curl (apt install curl)");
        assert!(out.status.success(), "curl {url} {args:?}: {out:?}");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, status) = text.rsplit_once('\n').expect("status line");
        (status.trim().parse().expect("status"), body.to_string())
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

/// The upstream's echo of what it received.
fn echoed(what: &str, reply: &Reply) -> serde_json::Value {
    assert_eq!(
        reply.status, 200,
        "{what}: expected the echo, got {reply:?}"
    );
    let json = reply.json();
    assert!(json["headers"].is_object(), "{what}: not the echo: {json}");
    json
}

/// Values of header `name` (lower case) in the echo.
fn header_values(json: &serde_json::Value, name: &str) -> Vec<String> {
    json["headers"][name]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Sends `req` on `c` and checks that the gateway refused it itself (see [`assert_refused`]).
async fn expect_refused(
    gw: &Gw,
    c: &Client,
    proto: Proto,
    what: impl AsRef<str>,
    req: Req,
    status: u16,
    error: &str,
) {
    let what = what.as_ref();
    let before = gw.upstream.hits();
    let reply = c.send(proto, req).await.expect(what);
    assert_refused(gw, what, before, &reply, status, error);
}

/// A refusal by the gateway: the status, our JSON error, and nothing reached the upstream.
fn assert_refused(gw: &Gw, what: &str, before: usize, reply: &Reply, status: u16, error: &str) {
    assert_eq!(reply.status, status, "{what}: {reply:?}");
    assert_eq!(reply.json()["error"], error, "{what}: {reply:?}");
    assert_eq!(gw.upstream.hits(), before, "{what}: reached the upstream");
}

#[test]
fn routing_differentials_never_reach_an_open_route() {
    let gw = Gw::start();
    let read = gw.mint(r#"{"sub":"alice","scope":"read"}"#);
    runtime().block_on(async {
        for proto in Proto::BOTH {
            for tls in [true, false] {
                let c = if tls { &gw.https } else { &gw.http };
                let send = |req: Req| c.send(proto, req);
                let at = format!("{proto:?} tls={tls}");
                // Encoded separators and dot-segments with parameters: 400 on the default
                // route setting, before any route (and never the open one) relays them.
                for path in [
                    "/public/..%2Fapi%2Fitems",
                    "/public/..%2fapi%2fitems",
                    "/public/..%5Capi%5Citems",
                    "/public/..\\api\\items",
                    "/public/..;/api/items",
                    "/public/.;/../api/items",
                    "/public/%2e%2e;/api/items",
                    "/public/..;x=1/api/items",
                ] {
                    expect_refused(
                        &gw,
                        c,
                        proto,
                        &format!("{at} {path}"),
                        Req::get(path),
                        400,
                        "bad_request",
                    )
                    .await;
                }
                // What plain normalisation resolves is routed on the result: the token route.
                expect_refused(
                    &gw,
                    c,
                    proto,
                    &format!("{at} /public/../api/items"),
                    Req::get("/public/../api/items"),
                    401,
                    "unauthorized",
                )
                .await;
                // Prefixes match whole segments: `/pub` (open) never takes `/pubkeys/...`.
                expect_refused(
                    &gw,
                    c,
                    proto,
                    &format!("{at} /pubkeys/signing"),
                    Req::get("/pubkeys/signing"),
                    401,
                    "unauthorized",
                )
                .await;
                for open in ["/pub", "/pub/keys"] {
                    let json = echoed(open, &send(Req::get(open)).await.expect(open));
                    assert_eq!(json["path"], open, "{at}");
                }
                // `keep`: forwarded exactly as normalised, the escape intact.
                let json = echoed(
                    "keep",
                    &send(Req::get("/files/a%2fb%5C..;c")).await.expect("keep"),
                );
                assert_eq!(json["path"], "/files/a%2Fb%5C..;c", "{at}");
                // `decode`: decoded, then routed again on what the upstream will serve.
                expect_refused(
                    &gw,
                    c,
                    proto,
                    &format!("{at} decode"),
                    Req::get("/docs/..%2Fapi%2Fitems"),
                    401,
                    "unauthorized",
                )
                .await;
                let reply = send(
                    Req::get("/docs/..%2Fapi%5Citems")
                        .header("authorization", &format!("Bearer {read}")),
                )
                .await
                .expect("decode with token");
                assert_eq!(echoed("decode", &reply)["path"], "/api/items", "{at}");
                let json = echoed(
                    "decode",
                    &send(Req::get("/docs/a%2Fb")).await.expect("docs"),
                );
                assert_eq!(json["path"], "/docs/a/b", "{at}");
                let before = gw.upstream.hits();
                let reply = send(Req::get("/docs/..;/api/items"))
                    .await
                    .expect("decode ..;");
                assert_refused(
                    &gw,
                    &format!("{at} decode ..;"),
                    before,
                    &reply,
                    400,
                    "bad_request",
                );
                // Methods are upper-case letters: `delete` is not DELETE.
                for method in ["delete", "Get", "POST2", "M-SEARCH"] {
                    expect_refused(
                        &gw,
                        c,
                        proto,
                        &format!("{at} {method}"),
                        Req::new(method, "/api/items").bearer(&read),
                        400,
                        "bad_request",
                    )
                    .await;
                    expect_refused(
                        &gw,
                        c,
                        proto,
                        &format!("{at} {method} /open"),
                        Req::new(method, "/open"),
                        400,
                        "bad_request",
                    )
                    .await;
                }
            }
        }
    });
    // The same with curl, which sends the path as written.
    for h2 in [false, true] {
        for path in ["/public/..%2Fapi%2Fitems", "/public/..;/api/items"] {
            let before = gw.upstream.hits();
            let (status, body) = gw.curl(h2, path, &[]);
            assert_eq!(status, 400, "curl h2={h2} {path}: {body}");
            assert_eq!(gw.upstream.hits(), before, "curl h2={h2} {path}");
        }
    }
}

#[test]
fn a_trailing_dot_or_other_case_does_not_miss_a_host_route() {
    let gw = Gw::start();
    let admin = gw.mint(r#"{"sub":"root","scope":"admin"}"#);
    for h2 in [false, true] {
        for host in [
            "admin.example",
            "admin.example.",
            "ADMIN.Example.",
            "admin.example.:80",
        ] {
            let before = gw.upstream.hits();
            let (status, body) = gw.curl(h2, "/", &["-H", &format!("Host: {host}")]);
            assert_eq!(
                status, 401,
                "h2={h2} Host: {host}: the admin route wants a token: {body}"
            );
            assert_eq!(gw.upstream.hits(), before, "h2={h2} Host: {host}");
            let (status, body) = gw.curl(
                h2,
                "/",
                &[
                    "-H",
                    &format!("Host: {host}"),
                    "-H",
                    &format!("Authorization: Bearer {admin}"),
                ],
            );
            assert_eq!(status, 200, "h2={h2} Host: {host}: {body}");
        }
        // Empty labels are no host name at all.
        for host in ["admin.example..", ".admin.example", "admin..example"] {
            let before = gw.upstream.hits();
            let (status, body) = gw.curl(h2, "/", &["-H", &format!("Host: {host}")]);
            assert_eq!(status, 400, "h2={h2} Host: {host}: {body}");
            assert_eq!(gw.upstream.hits(), before, "h2={h2} Host: {host}");
        }
        // Another host is not the admin route's: the open route answers.
        let (status, _) = gw.curl(h2, "/", &["-H", "Host: admin.example.com"]);
        assert_eq!(status, 200, "h2={h2}");
    }
}

#[test]
fn spoofed_and_override_headers_never_reach_the_upstream() {
    let gw = Gw::start();
    let write = gw.mint(r#"{"sub":"alice","scope":"read write"}"#);
    let spoofs = [
        ("X_Auth_Sub", "mallory"),
        ("x_auth_sub", "mallory"),
        ("X-AUTH-SUB", "mallory"),
        ("X-Auth_Scope", "admin"),
        ("X-HTTP-Method-Override", "DELETE"),
        ("X_HTTP_Method_Override", "DELETE"),
        ("X-HTTP-Method", "DELETE"),
        ("X-Method-Override", "DELETE"),
        ("X-Original-URL", "/admin/delete-all"),
        ("X-Rewrite-URL", "/admin/delete-all"),
        ("X-Real-IP", "10.0.0.1"),
        ("X_Real_IP", "10.0.0.1"),
        ("X-Forwarded-Host", "admin.example"),
        ("X-Forwarded-Port", "8443"),
        ("X_Forwarded_For", "10.0.0.1"),
        ("X_Forwarded_Proto", "https"),
    ];
    let with_spoofs = |mut req: Req| {
        for (n, v) in spoofs {
            req = req.header(n, v);
        }
        req
    };
    let gone = [
        "x_auth_sub",
        "x-auth_scope",
        "x-http-method-override",
        "x_http_method_override",
        "x-http-method",
        "x-method-override",
        "x-original-url",
        "x-rewrite-url",
        "x_real_ip",
        "x-forwarded-port",
        "x_forwarded_for",
        "x_forwarded_proto",
    ];
    runtime().block_on(async {
        for proto in Proto::BOTH {
            let at = format!("{proto:?}");
            // A token route: the token's claims, our forwarding values, no overrides.
            let reply = gw
                .https
                .send(
                    proto,
                    with_spoofs(Req::new("POST", "/api/items").bearer(&write).body("{}")),
                )
                .await
                .expect("spoofed POST");
            let json = echoed(&at, &reply);
            assert_eq!(json["method"], "POST");
            for name in gone {
                assert!(
                    header_values(&json, name).is_empty(),
                    "{at}: {name} reached the upstream: {json}"
                );
            }
            assert_eq!(header_values(&json, "x-auth-sub"), ["alice"], "{at}");
            assert_eq!(header_values(&json, "x-auth-scope"), ["read write"], "{at}");
            assert_eq!(header_values(&json, "x-real-ip"), ["127.0.0.1"], "{at}");
            assert_eq!(
                header_values(&json, "x-forwarded-for"),
                ["127.0.0.1"],
                "{at}"
            );
            assert_eq!(
                header_values(&json, "x-forwarded-host"),
                ["localhost"],
                "{at}"
            );
            // An open route: claim look-alikes and forwarding look-alikes still go; override
            // headers stay (no scopes to bypass), as documented.
            let json = echoed(
                &at,
                &gw.https
                    .send(proto, with_spoofs(Req::get("/open")))
                    .await
                    .expect("open"),
            );
            for name in [
                "x_auth_sub",
                "x-auth_scope",
                "x_real_ip",
                "x_forwarded_for",
                "x-forwarded-port",
            ] {
                assert!(
                    header_values(&json, name).is_empty(),
                    "{at} open: {name}: {json}"
                );
            }
            assert!(header_values(&json, "x-auth-sub").is_empty(), "{at} open");
            assert_eq!(
                header_values(&json, "x-http-method-override"),
                ["DELETE"],
                "{at} open"
            );
            // A token route that opted out keeps the override headers.
            let reply = gw
                .https
                .send(
                    proto,
                    with_spoofs(Req::new("POST", "/legacy/x").bearer(&write).body("{}")),
                )
                .await
                .expect("legacy");
            let json = echoed(&at, &reply);
            assert_eq!(
                header_values(&json, "x-http-method-override"),
                ["DELETE"],
                "{at} legacy"
            );
            assert_eq!(
                header_values(&json, "x-original-url"),
                ["/admin/delete-all"],
                "{at} legacy"
            );
            assert!(header_values(&json, "x_auth_sub").is_empty(), "{at} legacy");
        }
        // `Connection: host` must not cost the upstream its Host (HTTP/1.1 only: HTTP/2 has
        // no Connection header).
        for tls in [true, false] {
            let c = if tls { &gw.https } else { &gw.http };
            let reply = c
                .send(
                    Proto::H1,
                    Req::get("/open")
                        .header("connection", "host, x-hop")
                        .header("x-hop", "1"),
                )
                .await
                .expect("connection: host");
            let json = echoed("connection: host", &reply);
            assert_eq!(
                header_values(&json, "host"),
                [format!("localhost:{}", c.addr().port())],
                "tls={tls}"
            );
            assert!(header_values(&json, "x-hop").is_empty(), "tls={tls}");
        }
    });
}

#[test]
fn credentials_are_checked_and_withheld_as_configured() {
    let gw = Gw::start();
    let read = gw.mint(r#"{"sub":"alice","scope":"read"}"#);
    runtime().block_on(async {
        for proto in Proto::BOTH {
            let at = format!("{proto:?}");
            // forward_authorization = false: a query token is used, then removed.
            let reply = gw
                .https
                .send(
                    proto,
                    Req::get(&format!("/nocred/x?a=1&access_token={read}&b=2")),
                )
                .await
                .expect("query token");
            let json = echoed(&at, &reply);
            assert_eq!(json["query"], "a=1&b=2", "{at}");
            assert!(header_values(&json, "authorization").is_empty(), "{at}");
            // ... and so is one riding along with a header token, even encoded.
            let reply = gw
                .https
                .send(
                    proto,
                    Req::get(&format!("/nocred/x?access%5Ftoken={read}")).bearer(&read),
                )
                .await
                .expect("header token");
            let json = echoed(&at, &reply);
            assert_eq!(json["query"], serde_json::Value::Null, "{at}: {json}");
            assert!(header_values(&json, "authorization").is_empty(), "{at}");
            // Malformed bearer credentials: 401 invalid_request on optional routes too,
            // never forwarded as if there were no token.
            for value in [
                "Bearer\tforged",
                "bearer\tforged",
                "Bearer \tforged",
                "Bearerforged",
                &format!("Bearer\t{read}"),
            ] {
                for path in ["/maybe/x", "/api/items"] {
                    let before = gw.upstream.hits();
                    let reply = gw
                        .https
                        .send(proto, Req::get(path).header("authorization", value))
                        .await
                        .expect("malformed");
                    assert_refused(
                        &gw,
                        &format!("{at} {path} {value:?}"),
                        before,
                        &reply,
                        401,
                        "invalid_request",
                    );
                    assert!(
                        reply
                            .header("www-authenticate")
                            .is_some_and(|c| c.contains("invalid_request")),
                        "{at}: {reply:?}"
                    );
                }
            }
            // Another scheme on an optional route is still anonymous (the upstream's).
            let json = echoed(
                &at,
                &gw.https
                    .send(
                        proto,
                        Req::get("/maybe/x").header("authorization", "Basic dXNlcjpwYXNz"),
                    )
                    .await
                    .expect("basic"),
            );
            assert!(header_values(&json, "x-auth-sub").is_empty(), "{at}");
        }
    });
}

#[test]
fn the_soft_open_file_limit_is_raised_and_a_config_that_cannot_fit_is_reported() {
    let gw_dir = TempDir::new().expect("temp dir");
    let upstream = EchoUpstream::start().expect("echo upstream");
    let config = gw_dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            r#"
[runtime]
worker_threads = 1

[listen]
http = ["127.0.0.1:0"]
max_connections = 5000

[[upstream]]
name = "app"
servers = ["{}"]

[[route]]
path_prefix = "/"
upstream = "app"
auth = "none"
"#,
            upstream.addr()
        ),
    )
    .expect("config");
    let log = gw_dir.path().join("gateway.log");
    // Soft 200, hard 4000: raised to 4000, which 5000 connections do not fit (6344
    // descriptors: 5000, the server's 1024 upstream connections in use, its 64 idle ones and
    // the reserve of 256).
    let mut child = Command::new("prlimit")
        .args(["--nofile=200:4000", "--"])
        .arg(gateway_tests::gateway::bin())
        .args(["run", "--config"])
        .arg(&config)
        .stderr(std::fs::File::create(&log).expect("log"))
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("run prlimit (util-linux)");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let text = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("proxy listening") || std::time::Instant::now() > deadline {
            break text;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("gateway exited ({status}): {text}");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let pid = child.id();
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap_or_default();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(i32::try_from(pid).expect("pid")),
        nix::sys::signal::Signal::SIGKILL,
    );
    let _ = child.wait();
    assert!(text.contains("proxy listening"), "did not start: {text}");
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap_or_else(|| panic!("no open-file limit in {limits}"));
    let numbers: Vec<&str> = open_files.split_whitespace().skip(3).take(2).collect();
    assert_eq!(
        numbers,
        ["4000", "4000"],
        "soft limit raised to the hard one: {open_files}"
    );
    assert!(
        text.contains("limit=4000") && text.contains("needed=6344"),
        "a warning with the numbers: {text}"
    );
}
