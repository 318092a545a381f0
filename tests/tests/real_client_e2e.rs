//! The real client behind a proxy, end to end: the real `gateway run`, an echo upstream, and
//! the test playing the proxy in front of it: PROXY protocol v1 (plain HTTP) and v2 (TLS)
//! headers naming clients, and `X-Forwarded-For` on a plain-HTTP listener. A client that
//! sends bad tokens through the proxy is banned and refused in user space (after its PROXY
//! header, or 403), while the proxy and the other clients behind it go on; a header from
//! an address that is not a trusted proxy is refused. `gateway deny` and `gateway stats`
//! reach the gateway through its admin Unix socket.
//!
//! Loopback only: the proxy is 127.0.0.1 (trusted), the untrusted source 127.0.0.2.

use gateway_tests::config::{hs256_jwt_section, open_and_token_routes, tls_section};
use gateway_tests::gateway::{cli_ok, GatewayProcess};
use gateway_tests::tls::{ServerCert, TestCa};
use gateway_tests::upstream::EchoUpstream;
use proxy_header::{ProxiedAddress, ProxyHeader};
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// Bad tokens allowed before the ban (the rule's limit; the next one bans).
const LIMIT: usize = 4;

struct Gw {
    proc: GatewayProcess,
    upstream: EchoUpstream,
    ca: TestCa,
    _cert: ServerCert,
    dir: TempDir,
}

impl Gw {
    /// `listen`: extra `[listen]` lines.
    fn start(listen: &str) -> Gw {
        let dir = TempDir::new().expect("temp dir");
        let p = |name: &str| dir.path().join(name);
        let ca = TestCa::new().expect("test CA");
        let cert = ca.issue("real-client", 1).expect("cert");
        cert.write(&p("tls.crt"), &p("tls.key"))
            .expect("write cert");
        std::fs::write(p("hs.key"), b"0123456789abcdef0123456789abcdef").expect("secret");
        let upstream = EchoUpstream::start().expect("upstream");
        let d = dir.path().display();
        let config = format!(
            r#"
[runtime]
worker_threads = 1

[listen]
https = ["127.0.0.1:0"]
http = ["127.0.0.1:0"]
{listen}

{tls}
{jwt}
{routes}

[abuse]
auth_failures = {{ limit = {LIMIT}, window = "30s", ban = "5m" }}
client_errors = false

[admin]
listen = "127.0.0.1:0"
socket = "{d}/run/admin.sock"

# No data plane: bans of clients behind a proxy are the user space's to enforce anyway.
[ebpf]
mode = "off"
state_file = "{d}/deny-state.json"
"#,
            tls = tls_section(dir.path()),
            jwt = hs256_jwt_section(&p("hs.key")),
            routes = open_and_token_routes(&upstream.addr().to_string()),
        );
        std::fs::write(p("gw.toml"), config).expect("config");
        let mut proc = GatewayProcess::start_proxy(&p("gw.toml"), &p("gw.log"), 2, &[])
            .expect("gateway starts");
        // The admin endpoint comes up after the listeners.
        proc.wait_for("admin endpoint on unix:", Duration::from_secs(10))
            .expect("admin socket");
        Gw {
            proc,
            upstream,
            ca,
            _cert: cert,
            dir,
        }
    }

    fn listener(&self, tls: bool) -> SocketAddr {
        self.proc.listener(tls).expect("listener")
    }

    fn config(&self) -> String {
        self.dir.path().join("gw.toml").display().to_string()
    }

    /// `gateway deny list --json` through the admin socket.
    fn denied(&self) -> Vec<String> {
        let out = cli_ok(&["deny", "list", "--json", "--config", &self.config()]);
        let list: serde_json::Value = serde_json::from_str(&out).expect("json");
        list.as_array()
            .expect("array")
            .iter()
            .map(|e| e["target"].as_str().unwrap_or("").to_string())
            .collect()
    }
}

fn v1(client: &str) -> Vec<u8> {
    let client: SocketAddr = client.parse().expect("client");
    let dst: SocketAddr = if client.is_ipv4() {
        "192.0.2.1:80".parse().expect("dst")
    } else {
        "[2001:db8::1]:80".parse().expect("dst")
    };
    let mut out = Vec::new();
    ProxyHeader::with_address(ProxiedAddress::stream(client, dst))
        .encode_v1(&mut out)
        .expect("v1");
    out
}

fn v2(client: &str) -> Vec<u8> {
    let client: SocketAddr = client.parse().expect("client");
    let dst: SocketAddr = if client.is_ipv4() {
        "192.0.2.1:443".parse().expect("dst")
    } else {
        "[2001:db8::1]:443".parse().expect("dst")
    };
    let mut out = Vec::new();
    ProxyHeader::with_address(ProxiedAddress::stream(client, dst))
        .encode_v2(&mut out)
        .expect("v2");
    out
}

/// A TCP connection to `to` from `from` (a loopback address of our choosing).
fn connect_from(from: IpAddr, to: SocketAddr) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    s.bind(&SocketAddr::new(from, 0).into())
        .expect("bind source");
    s.connect_timeout(&to.into(), Duration::from_secs(3))
        .expect("connect");
    let s: TcpStream = s.into();
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s
}

fn request(path: &str, headers: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n{headers}Connection: close\r\n\r\n")
}

/// What came back: the status and body, or `None` when the gateway closed without a word.
fn read_reply(raw: &[u8]) -> Option<(u16, String)> {
    let text = String::from_utf8_lossy(raw).into_owned();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Some((status, body))
}

/// Plain HTTP from `from`: `prefix` (a PROXY header or nothing), then `req`.
fn plain(from: &str, to: SocketAddr, prefix: &[u8], req: &str) -> Option<(u16, String)> {
    let mut s = connect_from(from.parse().expect("from"), to);
    // The gateway may already have closed (refused): a failed write is part of the answer.
    let _ = s.write_all(prefix);
    let _ = s.write_all(req.as_bytes());
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    read_reply(&raw)
}

/// TLS from 127.0.0.1: `prefix` in the clear, then the handshake and `req`. `None` when
/// the gateway closed before answering (the handshake included).
fn tls(ca: &TestCa, to: SocketAddr, prefix: &[u8], req: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let config = ca.client_config(&[b"http/1.1"]).expect("client config");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let mut tcp = tokio::net::TcpStream::connect(to).await.ok()?;
        tcp.write_all(prefix).await.ok()?;
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
        let connector = tokio_rustls::TlsConnector::from(Arc::clone(&config));
        let mut s = tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp))
            .await
            .ok()?
            .ok()?;
        s.write_all(req.as_bytes()).await.ok()?;
        let mut raw = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut raw)).await;
        read_reply(&raw)
    })
}

fn bad_token() -> &'static str {
    "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.AAAA\r\n"
}

fn forwarded_for(body: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(body).expect("echo JSON");
    v["headers"]["x-forwarded-for"][0]
        .as_str()
        .unwrap_or("")
        .to_string()
}

fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

#[test]
fn proxy_protocol_v1_and_v2_ban_the_client_behind_the_proxy_not_the_proxy() {
    let gw = Gw::start("proxy_protocol = true\ntrusted_proxies = [\"127.0.0.1\"]");
    let (http, https) = (gw.listener(false), gw.listener(true));

    // v1 over plain HTTP: the upstream sees the client the header named.
    let (status, body) = plain(
        "127.0.0.1",
        http,
        &v1("203.0.113.8:4000"),
        &request("/open/a", ""),
    )
    .expect("an answer through the proxy");
    assert_eq!(status, 200, "{body}");
    assert_eq!(forwarded_for(&body), "203.0.113.8");
    // v2 over TLS too, an IPv6 client behind an IPv4 proxy.
    let (status, body) = tls(
        &gw.ca,
        https,
        &v2("[2001:db8::8]:4000"),
        &request("/open/b", ""),
    )
    .expect("an answer over TLS");
    assert_eq!(status, 200, "{body}");
    assert_eq!(forwarded_for(&body), "2001:db8::8");

    // Bad tokens from one client behind the proxy (v1): refused, then banned.
    for i in 0..=LIMIT {
        let r = plain(
            "127.0.0.1",
            http,
            &v1("203.0.113.7:5000"),
            &request("/api", bad_token()),
        );
        assert_eq!(r.map(|r| r.0), Some(401), "bad token {i}");
    }
    assert!(
        eventually(Duration::from_secs(5), || gw
            .denied()
            .contains(&"203.0.113.7".to_string())),
        "the client is banned: {:?}",
        gw.denied()
    );
    // Its next connection through the proxy is closed right after the header, on both
    // listeners, and nothing reaches the upstream.
    let before = gw.upstream.requests().len();
    assert_eq!(
        plain(
            "127.0.0.1",
            http,
            &v1("203.0.113.7:5001"),
            &request("/open/c", "")
        ),
        None
    );
    assert_eq!(
        tls(
            &gw.ca,
            https,
            &v2("203.0.113.7:5002"),
            &request("/open/c", "")
        ),
        None
    );
    assert_eq!(gw.upstream.requests().len(), before);
    // The proxy itself, and the other clients behind it, go on.
    let (status, body) = plain(
        "127.0.0.1",
        http,
        &v1("203.0.113.8:4001"),
        &request("/open/d", ""),
    )
    .expect("another client");
    assert_eq!((status, forwarded_for(&body)), (200, "203.0.113.8".into()));

    // The same over v2 and TLS for an IPv6 client: banned by its /64.
    for i in 0..=LIMIT {
        let r = tls(
            &gw.ca,
            https,
            &v2("[2001:db8:0:7::1]:6000"),
            &request("/api", bad_token()),
        );
        assert_eq!(r.map(|r| r.0), Some(401), "v2 bad token {i}");
    }
    assert!(
        eventually(Duration::from_secs(5), || gw
            .denied()
            .iter()
            .any(|t| t.starts_with("2001:db8:0:7::"))),
        "{:?}",
        gw.denied()
    );
    assert_eq!(
        tls(
            &gw.ca,
            https,
            &v2("[2001:db8:0:7::2]:6001"),
            &request("/open/e", "")
        ),
        None,
        "another address of the banned /64"
    );
    let (status, _) = tls(
        &gw.ca,
        https,
        &v2("[2001:db8:0:8::1]:6002"),
        &request("/open/f", ""),
    )
    .expect("a neighbouring /64");
    assert_eq!(status, 200);

    let denied = gw.denied();
    assert!(
        !denied.iter().any(|t| t.starts_with("127.")),
        "the proxy is never banned: {denied:?}"
    );

    // A valid header from an address that is not a trusted proxy: closed, on both.
    assert_eq!(
        plain(
            "127.0.0.2",
            http,
            &v1("203.0.113.9:1"),
            &request("/open/g", "")
        ),
        None
    );
    // A trusted proxy without a header, or with a broken one: closed.
    assert_eq!(plain("127.0.0.1", http, b"", &request("/open/h", "")), None);
    assert_eq!(
        plain(
            "127.0.0.1",
            http,
            b"PROXY TCP4 203.0.113.9 192.0.2.1 1\r\n",
            &request("/open/i", "")
        ),
        None
    );
    let mut local = Vec::new();
    ProxyHeader::with_local()
        .encode_v2(&mut local)
        .expect("local");
    // v2 LOCAL: the proxy's own connection (a health check); its own address is the client.
    let (status, body) = plain("127.0.0.1", http, &local, &request("/open/j", ""))
        .expect("LOCAL is the proxy itself");
    assert_eq!((status, forwarded_for(&body)), (200, "127.0.0.1".into()));

    // The refusals are counted, and `gateway stats`' user-plane part comes over the socket.
    let metrics = metrics_over_socket(&gw.dir.path().join("run/admin.sock"));
    for reason in ["denied", "untrusted_proxy", "proxy_header"] {
        let line = format!("gateway_connections_refused_total{{reason=\"{reason}\"}}");
        let n: f64 = metrics
            .lines()
            .find(|l| l.starts_with(&line))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        assert!(n >= 1.0, "{reason}: {metrics}");
    }
}

/// `/metrics` read through the admin socket the way the CLI reads it.
fn metrics_over_socket(path: &std::path::Path) -> String {
    let mut s = std::os::unix::net::UnixStream::connect(path).expect("admin socket");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .expect("write");
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let (status, body) = read_reply(&raw).expect("an answer");
    assert_eq!(status, 200);
    body
}

#[test]
fn forwarded_for_is_believed_from_trusted_proxies_only() {
    let gw = Gw::start("trusted_proxies = [\"127.0.0.1\"]");
    let http = gw.listener(false);
    let xff = |v: &str| format!("X-Forwarded-For: {v}\r\n");

    // From the trusted proxy, the right-most untrusted address is the client.
    let (status, body) = plain(
        "127.0.0.1",
        http,
        b"",
        &request("/open/a", &xff("198.51.100.1, 203.0.113.20, 127.0.0.1")),
    )
    .expect("answer");
    assert_eq!((status, forwarded_for(&body)), (200, "203.0.113.20".into()));
    // From anywhere else the header is the client's own say: the peer is the client.
    let (status, body) = plain(
        "127.0.0.2",
        http,
        b"",
        &request("/open/b", &xff("203.0.113.20")),
    )
    .expect("answer");
    assert_eq!((status, forwarded_for(&body)), (200, "127.0.0.2".into()));

    // Bad tokens from a client named by the proxy ban that client...
    for i in 0..=LIMIT {
        let r = plain(
            "127.0.0.1",
            http,
            b"",
            &request("/api", &(xff("203.0.113.21") + bad_token())),
        );
        assert_eq!(r.map(|r| r.0), Some(401), "bad token {i}");
    }
    assert!(
        eventually(Duration::from_secs(5), || gw
            .denied()
            .contains(&"203.0.113.21".to_string())),
        "{:?}",
        gw.denied()
    );
    // ...whose requests are then answered 403 without reaching the upstream,
    let before = gw.upstream.requests().len();
    let (status, _) = plain(
        "127.0.0.1",
        http,
        b"",
        &request("/open/c", &xff("203.0.113.21")),
    )
    .expect("answer");
    assert_eq!(status, 403);
    assert_eq!(gw.upstream.requests().len(), before);
    // a client that prepends another address does not escape,
    let (status, _) = plain(
        "127.0.0.1",
        http,
        b"",
        &request("/open/c", &xff("198.51.100.7, 203.0.113.21")),
    )
    .expect("answer");
    assert_eq!(status, 403);
    // while the proxy and its other clients go on.
    let (status, body) = plain(
        "127.0.0.1",
        http,
        b"",
        &request("/open/d", &xff("203.0.113.22")),
    )
    .expect("answer");
    assert_eq!((status, forwarded_for(&body)), (200, "203.0.113.22".into()));
    let (status, _) = plain("127.0.0.1", http, b"", &request("/open/e", "")).expect("answer");
    assert_eq!(status, 200, "the proxy's own request");
    assert!(!gw.denied().iter().any(|t| t.starts_with("127.")));

    // X-Forwarded-For is not believed on TLS listeners (a TLS client is the client).
    let (status, body) = tls(
        &gw.ca,
        gw.listener(true),
        b"",
        &request("/open/f", &xff("203.0.113.21")),
    )
    .expect("answer");
    assert_eq!((status, forwarded_for(&body)), (200, "127.0.0.1".into()));
}

#[test]
fn gateway_deny_goes_through_the_admin_socket() {
    let gw = Gw::start("");
    let c = gw.config();
    let http = gw.listener(false);
    // The config's TCP admin address is port 0, which nothing answers on, and there is no
    // data plane to write to: the running gateway can only hear of it through the socket.
    let out = cli_ok(&["deny", "add", "127.0.0.2", "--ttl", "1m", "--config", &c]);
    assert_eq!(out.trim(), "denied 127.0.0.2 for 1m00s (manual)");
    assert!(
        eventually(Duration::from_secs(5), || gw
            .denied()
            .contains(&"127.0.0.2".to_string())),
        "{:?}",
        gw.denied()
    );
    // The running gateway refuses the source at once (no data plane: in user space).
    assert_eq!(plain("127.0.0.2", http, b"", &request("/open/a", "")), None);
    let (status, _) = plain("127.0.0.1", http, b"", &request("/open/a", "")).expect("answer");
    assert_eq!(status, 200);
    let out = cli_ok(&["deny", "del", "127.0.0.2", "--config", &c]);
    assert_eq!(out.trim(), "removed 127.0.0.2");
    // The list comes from the state file, which a background writer rewrites.
    assert!(
        eventually(Duration::from_secs(5), || gw.denied().is_empty()),
        "{:?}",
        gw.denied()
    );
    let (status, _) = plain("127.0.0.2", http, b"", &request("/open/b", "")).expect("answer");
    assert_eq!(status, 200);
}
