//! A client behind a proxy, with the kernel data plane running: the real gateway in a server
//! namespace with XDP on its veth and a plain-HTTP listener that takes PROXY headers from
//! one trusted address; the test plays that proxy (and an untrusted host) in a client
//! namespace. The client the proxy names is banned for bad tokens and refused in user space
//! after its header; the proxy's packets keep passing XDP, so its other clients go on.

use gateway_tests::config::{hs256_jwt_section, open_and_token_routes, xdp_section};
use gateway_tests::gateway::{cli_ok, source_stats, stats, GatewayProcess};
use gateway_tests::netns::{in_netns, NetnsPair, TestNet};
use proxy_header::{ProxiedAddress, ProxyHeader};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

const PORT: u16 = 8080;
/// The trusted proxy.
const PROXY: Ipv4Addr = NetnsPair::CLIENT4;
/// A host that is not a trusted proxy.
const OTHER: Ipv4Addr = NetnsPair::CLIENT4_B;
const LIMIT: usize = 4;

fn header(v2: bool, client: &str) -> Vec<u8> {
    let addr = ProxiedAddress::stream(
        client.parse().expect("client"),
        SocketAddr::from((NetnsPair::SERVER4, PORT)),
    );
    let mut out = Vec::new();
    let h = ProxyHeader::with_address(addr);
    if v2 {
        h.encode_v2(&mut out).expect("v2");
    } else {
        h.encode_v1(&mut out).expect("v1");
    }
    out
}

/// From `from` in the client namespace: `prefix`, then a GET of `path`. The status, or
/// `None` when the connection was refused, dropped or closed without an answer.
fn via(ns: &str, from: Ipv4Addr, prefix: Vec<u8>, path: &str, token: bool) -> Option<u16> {
    let auth = if token {
        "Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.AAAA\r\n"
    } else {
        ""
    };
    let req = format!("GET {path} HTTP/1.1\r\nHost: api\r\n{auth}Connection: close\r\n\r\n");
    in_netns(ns, move || {
        use socket2::{Domain, Socket, Type};
        let s = Socket::new(Domain::IPV4, Type::STREAM, None).ok()?;
        s.bind(&SocketAddr::from((from, 0)).into()).ok()?;
        s.connect_timeout(
            &SocketAddr::from((NetnsPair::SERVER4, PORT)).into(),
            Duration::from_secs(2),
        )
        .ok()?;
        let mut s: TcpStream = s.into();
        s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
        let _ = s.write_all(&prefix);
        let _ = s.write_all(req.as_bytes());
        let mut raw = Vec::new();
        let _ = s.read_to_end(&mut raw);
        String::from_utf8_lossy(&raw)
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
    })
    .expect("enter the client namespace")
}

#[test]
fn a_client_behind_a_proxy_is_banned_in_user_space_and_the_proxy_passes_xdp() {
    let Some(net) = TestNet::new(
        "a_client_behind_a_proxy_is_banned_in_user_space_and_the_proxy_passes_xdp",
        "rc",
    ) else {
        return;
    };
    let d = net.dir.display();
    std::fs::write(net.dir.join("hs.key"), b"real-client-secret-0123456789abcd").expect("key");
    let config = format!(
        r#"
[listen]
http = ["10.77.0.1:{PORT}"]
proxy_protocol = true
trusted_proxies = ["{PROXY}"]

{jwt}
# Nothing listens at the upstream: requests that pass every check get 502.
{routes}

[abuse]
auth_failures = {{ limit = {LIMIT}, window = "30s", ban = "5m" }}
client_errors = false

# Port 0 on the server namespace's loopback: the CLI can only reach it through the socket.
[admin]
listen = "127.0.0.1:0"
socket = "{d}/run/admin.sock"

{ebpf}"#,
        jwt = hs256_jwt_section(&net.dir.join("hs.key")),
        routes = open_and_token_routes("10.77.0.1:1"),
        ebpf = xdp_section(&net),
    );
    let path = net.dir.join("gateway.toml");
    std::fs::write(&path, config).expect("config");
    let mut gw = GatewayProcess::start(Some(&net.pair.server), &path, &net.dir.join("gateway.log"))
        .expect("gateway starts");
    gw.wait_for("proxy listening", Duration::from_secs(10))
        .expect("proxy listens");
    gw.wait_for("admin endpoint on unix:", Duration::from_secs(10))
        .expect("admin socket");
    let ns = net.pair.client.clone();

    assert_eq!(
        via(
            &ns,
            PROXY,
            header(false, "203.0.113.8:1000"),
            "/open/a",
            false
        ),
        Some(502),
        "through the proxy, past every check"
    );
    for i in 0..=LIMIT {
        assert_eq!(
            via(
                &ns,
                PROXY,
                header(i % 2 == 0, "203.0.113.7:2000"),
                "/api",
                true
            ),
            Some(401),
            "bad token {i}"
        );
    }
    let denied = || -> Vec<String> {
        let out = cli_ok(&["deny", "list", "--json", "--pin-path", &net.pin()]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("json");
        v.as_array()
            .expect("array")
            .iter()
            .map(|e| e["target"].as_str().unwrap_or("").to_string())
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while !denied().contains(&"203.0.113.7".to_string()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    let list = denied();
    assert!(list.contains(&"203.0.113.7".to_string()), "{list:?}");
    assert!(
        !list.contains(&PROXY.to_string()),
        "the proxy is not banned: {list:?}"
    );

    // The banned client: its connections end right after the header, v1 and v2.
    assert_eq!(
        via(
            &ns,
            PROXY,
            header(false, "203.0.113.7:2001"),
            "/open/b",
            false
        ),
        None
    );
    assert_eq!(
        via(
            &ns,
            PROXY,
            header(true, "203.0.113.7:2002"),
            "/open/b",
            false
        ),
        None
    );
    // The proxy itself passes XDP, and its other clients are served.
    assert_eq!(
        via(
            &ns,
            PROXY,
            header(true, "203.0.113.8:1001"),
            "/open/c",
            false
        ),
        Some(502)
    );
    let s = stats(&net.fs.pin_path());
    let proxy = source_stats(&s, &PROXY.to_string()).expect("the proxy's packets are counted");
    assert_eq!(proxy["drops_deny"], 0, "{proxy}");
    assert!(proxy["packets"].as_u64().unwrap_or(0) > 0, "{proxy}");

    // A valid header from a host that is not a trusted proxy: closed at accept.
    assert_eq!(
        via(
            &ns,
            OTHER,
            header(false, "203.0.113.8:1002"),
            "/open/d",
            false
        ),
        None
    );

    // `gateway stats` reads the user plane through the admin socket: the refusals above
    // are there, by reason.
    let out = cli_ok(&["stats", "--json", "--config", &path.display().to_string()]);
    let s: serde_json::Value = serde_json::from_str(&out).expect("stats json");
    let up = &s["user_plane"];
    assert!(
        up["admin"].as_str().is_some_and(|a| a.starts_with("unix:")),
        "{up}"
    );
    let refused = &up["connections_refused"];
    for reason in ["denied", "untrusted_proxy"] {
        assert!(
            refused[reason].as_u64().unwrap_or(0) >= 1,
            "{reason}: {refused}"
        );
    }
    drop(gw);
}
