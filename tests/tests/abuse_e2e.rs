//! The abuse engine end to end: the real gateway in a server namespace with XDP on its veth
//! and a TLS listener, a real HTTPS client (curl) in a client namespace sending bad tokens,
//! and the kernel dropping the client's packets once the engine has banned it.

use gateway_tests::config::{hs256_jwt_section, self_signed_ip_cert, tls_section, xdp_section};
use gateway_tests::gateway::{cli, cli_ok, mint_hs256, source_stats, stats, GatewayProcess};
use gateway_tests::netns::{exec_in, in_netns, NetnsPair, TestNet};
use gateway_tests::probe::{connects_from, curl_status_from};
use socket2::{Domain, Socket, Type};
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const HTTPS_PORT: u16 = 8443;
const UPSTREAM_PORT: u16 = 8090;
const ATTACKER: Ipv4Addr = NetnsPair::CLIENT4;
const GOOD: Ipv4Addr = NetnsPair::CLIENT4_B;

/// A minimal upstream in the server namespace: answers every request with 200 `ok`.
struct Upstream {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Upstream {
    fn start(ns: &str) -> Self {
        let addr = SocketAddr::from((NetnsPair::SERVER4, UPSTREAM_PORT));
        let listener = in_netns(ns, move || TcpListener::bind(addr))
            .expect("enter netns")
            .expect("bind upstream");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                        let mut buf = [0u8; 8192];
                        let _ = s.read(&mut buf);
                        let _ = s.write_all(
                            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n",
                        );
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Env {
    net: TestNet,
    secret: PathBuf,
    _upstream: Upstream,
}

impl std::ops::Deref for Env {
    type Target = TestNet;
    fn deref(&self) -> &TestNet {
        &self.net
    }
}

fn env(test: &str, short: &str) -> Option<Env> {
    let net = TestNet::new(test, short)?;
    let dir = net.dir.clone();
    // The server certificate (for 10.77.0.1) and the HMAC secret tokens are signed with.
    self_signed_ip_cert(&dir, "10.77.0.1").expect("openssl makes a certificate");
    let secret = dir.join("hs256.secret");
    std::fs::write(&secret, b"abuse-e2e-secret-0123456789abcdef").expect("secret");
    let upstream = Upstream::start(&net.pair.server);
    Some(Env {
        net,
        secret,
        _upstream: upstream,
    })
}

impl Env {
    fn config(&self, abuse: &str, ebpf_extra: &str) -> PathBuf {
        let text = format!(
            r#"
[listen]
https = ["10.77.0.1:{HTTPS_PORT}"]
header_read_timeout = "5s"

{tls}
{jwt}

[[upstream]]
name = "app"
servers = ["10.77.0.1:{UPSTREAM_PORT}"]

[[route]]
path_prefix = "/api/"
upstream = "app"

[abuse]
{abuse}

{ebpf}{ebpf_extra}
"#,
            tls = tls_section(&self.dir),
            jwt = hs256_jwt_section(&self.secret),
            ebpf = xdp_section(&self.net),
        );
        let path = self.dir.join("gateway.toml");
        std::fs::write(&path, text).expect("write config");
        path
    }

    fn start(&self, config: &Path) -> GatewayProcess {
        let mut gw = GatewayProcess::start(
            Some(&self.pair.server),
            config,
            &self.dir.join("gateway.log"),
        )
        .expect("gateway starts");
        gw.wait_for("proxy listening", Duration::from_secs(10))
            .expect("proxy listens");
        gw
    }

    fn token(&self) -> String {
        mint_hs256(
            &self.secret,
            r#"{"scope":"read write","sub":"good-client"}"#,
            &[],
        )
    }

    /// One HTTPS GET from `src` in the client namespace; the status, or 0 when no HTTP
    /// answer came (connection refused, dropped or reset).
    fn get(&self, src: Ipv4Addr, token: &str) -> u16 {
        curl_status_from(
            &self.pair.client,
            src,
            3,
            &["-k", "-H", &format!("Authorization: Bearer {token}")],
            &format!("https://10.77.0.1:{HTTPS_PORT}/api/items"),
        )
    }

    /// A TCP handshake from `src`; `true` if the server answered the SYN in time.
    fn connects(&self, src: Ipv4Addr) -> bool {
        let to = SocketAddrV4::new(NetnsPair::SERVER4, HTTPS_PORT);
        connects_from(&self.pair.client, src, to, Duration::from_millis(700))
    }

    fn deny_list(&self, config: &Path) -> serde_json::Value {
        let out = cli_ok(&[
            "deny",
            "list",
            "--json",
            "--config",
            &config.display().to_string(),
        ]);
        serde_json::from_str(&out).expect("deny list --json")
    }

    /// Sends `n` requests with a token that is not valid from the attacker.
    fn fail(&self, n: usize) -> Vec<u16> {
        (0..n).map(|_| self.get(ATTACKER, "not.a.token")).collect()
    }
}

/// Polls `f` until it is true or `limit` passes.
fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

const RULE: &str = r#"auth_failures = { limit = 5, window = "30s", ban = "3s" }
max_ban = "1h""#;

#[test]
fn failures_ban_in_the_kernel_then_expire_and_escalate() {
    let Some(env) = env("failures_ban_in_the_kernel_then_expire_and_escalate", "ab") else {
        return;
    };
    let cfg = env.config(RULE, "");
    let gw = env.start(&cfg);
    let good = env.token();
    assert_eq!(env.get(GOOD, &good), 200, "a valid token is relayed");

    // Five refusals are within the limit; the sixth crosses it.
    let statuses = env.fail(5);
    assert_eq!(statuses, vec![401; 5]);
    assert!(env.connects(ATTACKER), "not banned yet");
    let crossing = env.get(ATTACKER, "not.a.token");
    assert!(crossing == 401 || crossing == 0, "{crossing}");

    // Banned: the next SYN gets no SYN-ACK (dropped in XDP), the other client is served.
    assert!(
        !env.connects(ATTACKER),
        "the banned source's SYN is dropped"
    );
    assert_eq!(env.get(GOOD, &good), 200);
    let s = stats(&env.fs.pin_path());
    let src = source_stats(&s, &ATTACKER.to_string()).expect("tracked");
    assert!(src["drops_deny"].as_u64().unwrap() >= 1, "{src}");
    let list = env.deny_list(&cfg);
    let entry = &list[0];
    assert_eq!(entry["target"], ATTACKER.to_string(), "{list}");
    assert_eq!(entry["origin"], "auth_failures");
    assert!(entry["expires_in_secs"].as_u64().unwrap() <= 3, "{entry}");

    // The ban ends with its TTL.
    assert!(
        eventually(Duration::from_secs(8), || env.connects(ATTACKER)),
        "ban expired"
    );
    assert_eq!(
        env.get(ATTACKER, &good),
        200,
        "and the source is served again"
    );

    // A repeat offender gets double the ban.
    env.fail(6);
    assert!(!env.connects(ATTACKER));
    let entry = &env.deny_list(&cfg)[0];
    let left = entry["expires_in_secs"].as_u64().unwrap();
    assert!((4..=6).contains(&left), "second ban is 6 s: {entry}");
    drop(gw);
    let log = std::fs::read_to_string(env.dir.join("gateway.log")).unwrap_or_default();
    assert!(log.contains("abuse: banned"), "{log}");
}

#[test]
fn monitor_mode_bans_nothing_but_reports() {
    let Some(env) = env("monitor_mode_bans_nothing_but_reports", "am") else {
        return;
    };
    let cfg = env.config(&format!("monitor = true\n{RULE}"), "");
    let gw = env.start(&cfg);
    assert_eq!(env.fail(10), vec![401; 10]);
    assert!(env.connects(ATTACKER), "monitor mode bans nothing");
    assert_eq!(env.deny_list(&cfg), serde_json::json!([]));
    drop(gw);
    let log = std::fs::read_to_string(env.dir.join("gateway.log")).unwrap_or_default();
    assert!(log.contains("would ban (monitor mode)"), "{log}");
}

#[test]
fn allow_listed_sources_are_never_banned() {
    let Some(env) = env("allow_listed_sources_are_never_banned", "aa") else {
        return;
    };
    let cfg = env.config(RULE, &format!("allow = [\"{ATTACKER}\"]"));
    let gw = env.start(&cfg);
    assert_eq!(env.fail(12), vec![401; 12]);
    assert!(env.connects(ATTACKER), "allow-listed: never banned");
    assert_eq!(env.deny_list(&cfg), serde_json::json!([]));
    drop(gw);
}

#[test]
fn bans_survive_a_restart_and_a_reboot() {
    let Some(env) = env("bans_survive_a_restart_and_a_reboot", "ar") else {
        return;
    };
    let cfg = env.config(
        r#"auth_failures = { limit = 2, window = "30s", ban = "5m" }"#,
        "",
    );
    let mut gw = env.start(&cfg);
    env.fail(3);
    assert!(!env.connects(ATTACKER), "banned");
    let status = gw.stop().expect("running");
    assert!(status.success(), "{status}: {}", gw.log_text());

    // Restart: the pinned map still holds the ban.
    let mut gw = env.start(&cfg);
    assert!(!env.connects(ATTACKER), "still banned after a restart");
    let status = gw.stop().expect("running");
    assert!(status.success(), "{status}: {}", gw.log_text());

    // Reboot: the pins are gone; the state file brings the ban back.
    for name in std::fs::read_dir(env.fs.pin_path()).expect("pins") {
        std::fs::remove_file(name.expect("entry").path()).expect("unpin");
    }
    let out = cli(&["deny", "list", "--pin-path", &env.pin()]);
    assert!(!out.status.success(), "no maps pinned any more");
    let gw = env.start(&cfg);
    assert!(
        gw.log_text().contains("restored from the state file"),
        "{}",
        gw.log_text()
    );
    assert!(
        !env.connects(ATTACKER),
        "the ban is back in force after the reboot"
    );
    let list = env.deny_list(&cfg);
    assert_eq!(list[0]["origin"], "auth_failures", "{list}");
    assert!(list[0]["expires_in_secs"].as_u64().unwrap() > 240);
}

/// Runs `gateway ARGS...` inside namespace `ns` (where the gateway's loopback admin
/// endpoint is).
fn cli_in(ns: &str, args: &[&str]) -> std::process::Output {
    let mut c = exec_in(ns, &gateway_tests::gateway::bin().display().to_string());
    c.args(args).output().expect("run gateway in the namespace")
}

#[test]
fn deny_api_and_cli_go_through_the_running_gateway() {
    let Some(env) = env("deny_api_and_cli_go_through_the_running_gateway", "ad") else {
        return;
    };
    let token_file = env.dir.join("api.token");
    std::fs::write(&token_file, "0123456789abcdef-admin-token\n").unwrap();
    let cfg = env.config("auth_failures = false", "");
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str(&format!(
        "\n[admin]\nlisten = \"127.0.0.1:9901\"\napi_token_file = \"{}\"\n",
        token_file.display()
    ));
    std::fs::write(&cfg, text).unwrap();
    let gw = env.start(&cfg);
    let c = cfg.display().to_string();
    let t = token_file.display().to_string();

    // Without the token the running gateway's API refuses, and the CLI says so.
    let out = cli_in(
        &env.pair.server,
        &["deny", "add", "10.77.0.2", "--config", &c],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("needs a loopback client or the API token"),
        "{err}"
    );
    assert!(env.connects(ATTACKER), "nothing was written");

    // With it, the entry goes in through the API and drops at once.
    let out = cli_in(
        &env.pair.server,
        &[
            "deny",
            "add",
            "10.77.0.2",
            "--ttl",
            "5m",
            "--reason",
            "api",
            "--config",
            &c,
            "--api-token-file",
            &t,
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "denied 10.77.0.2 for 5m00s (api)"
    );
    assert!(!env.connects(ATTACKER));
    let out = cli_in(
        &env.pair.server,
        &[
            "deny",
            "list",
            "--json",
            "--config",
            &c,
            "--api-token-file",
            &t,
        ],
    );
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(list[0]["target"], "10.77.0.2");
    assert_eq!(list[0]["origin"], "manual");
    assert_eq!(list[0]["reason"], "api");

    // The API itself, with curl: list, add a prefix, delete it, refuse junk.
    let curl = |args: &[&str]| -> String {
        let out = exec_in(&env.pair.server, "curl")
            .args([
                "-s",
                "--max-time",
                "3",
                "-H",
                "Authorization: Bearer 0123456789abcdef-admin-token",
                "-H",
                "Content-Type: application/json",
            ])
            .args(args)
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let posted = curl(&[
        "-X",
        "POST",
        "--data",
        r#"{"target":"10.78.0.0/16","ttl":"1m"}"#,
        "http://127.0.0.1:9901/deny",
    ]);
    assert!(posted.contains("10.78.0.0/16"), "{posted}");
    assert!(curl(&["http://127.0.0.1:9901/deny"]).contains("10.78.0.0/16"));
    let deleted = curl(&["-X", "DELETE", "http://127.0.0.1:9901/deny/10.78.0.0%2F16"]);
    assert!(deleted.contains("removed"), "{deleted}");
    let junk = curl(&[
        "-X",
        "POST",
        "--data",
        r#"{"target":"nope"}"#,
        "http://127.0.0.1:9901/deny",
    ]);
    assert!(junk.contains("not an IP address"), "{junk}");

    // The CLI removes through the API too; the state file follows.
    let out = cli_in(
        &env.pair.server,
        &[
            "deny",
            "del",
            "10.77.0.2",
            "--config",
            &c,
            "--api-token-file",
            &t,
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(env.connects(ATTACKER));
    drop(gw);
    let state = std::fs::read_to_string(env.dir.join("deny-state.json")).unwrap();
    assert!(!state.contains("10.77.0.2"), "{state}");
}

#[test]
fn a_banned_source_loses_the_connections_it_already_had() {
    use rustls::pki_types::ServerName;
    let Some(env) = env("a_banned_source_loses_the_connections_it_already_had", "ak") else {
        return;
    };
    // A certificate from a test CA the client below trusts (curl elsewhere does not check).
    let ca = gateway_tests::tls::TestCa::new().expect("test CA");
    ca.issue("abuse-e2e", 1)
        .expect("cert")
        .write(&env.dir.join("tls.crt"), &env.dir.join("tls.key"))
        .expect("write cert");
    let cfg = env.config(RULE, "");
    let gw = env.start(&cfg);
    let good = env.token();

    // A keep-alive TLS connection from the attacker's address, opened before the ban.
    let tcp = in_netns(
        &env.pair.client,
        || -> std::io::Result<std::net::TcpStream> {
            let s = Socket::new(Domain::IPV4, Type::STREAM, None)?;
            s.bind(&SocketAddr::from((ATTACKER, 0)).into())?;
            let to = SocketAddr::V4(SocketAddrV4::new(NetnsPair::SERVER4, HTTPS_PORT));
            s.connect_timeout(&to.into(), Duration::from_secs(2))?;
            Ok(s.into())
        },
    )
    .expect("enter netns")
    .expect("connect");
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der()).expect("root");
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = ServerName::try_from("localhost").expect("name");
    let conn = rustls::ClientConnection::new(Arc::new(config), name).expect("client");
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.sock
        .set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    let request = format!(
        "GET /api/items HTTP/1.1\r\nHost: 10.77.0.1\r\nAuthorization: Bearer {good}\r\n\r\n"
    );
    tls.write_all(request.as_bytes()).expect("request");
    let mut buf = [0u8; 4096];
    let n = tls.read(&mut buf).expect("response");
    assert!(
        String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&buf[..n])
    );

    // The source crosses the limit on other connections...
    env.fail(6);
    assert!(!env.connects(ATTACKER), "banned");
    // ...and the gateway closes the one it already had: the next read sees the end of the
    // stream (or a reset), not a timeout.
    let started = Instant::now();
    match tls.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!("unexpected data: {}", String::from_utf8_lossy(&buf[..n])),
        Err(e) => assert!(
            !matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "the connection stayed open: {e} after {:?}",
            started.elapsed()
        ),
    }
    drop(gw);
}
