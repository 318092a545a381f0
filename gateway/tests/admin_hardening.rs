//! The admin endpoint against what a web page (or a careless local user) can make it do:
//! bodies a browser sends without a preflight, requests carrying an `Origin`, DNS-rebinding
//! host names, a body that never finishes, and the Unix socket's permissions. Real sockets,
//! raw HTTP written byte for byte, the real deny store.

use gateway::admin;
use gateway::config::admin::AdminConfig;
use gateway::deny::DenyStore;
use gateway::metrics::Metrics;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

struct Server {
    addr: SocketAddr,
    socket: Option<PathBuf>,
    store: Arc<DenyStore>,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
    _dir: TempDir,
}

/// A directory of this test's own, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("gw-admin-hard-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("tempdir");
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Server {
    async fn start(with_socket: bool, enforced: bool) -> Self {
        let dir = TempDir::new();
        let socket = with_socket.then(|| dir.0.join("run/admin.sock"));
        let cfg = AdminConfig {
            listen: "127.0.0.1:0".parse().expect("addr"),
            socket: socket.clone(),
            ..AdminConfig::default()
        };
        let store = Arc::new(DenyStore::new(None, None, Vec::new()));
        let listener = admin::bind(&cfg)
            .await
            .expect("bind")
            .with_deny(store.clone(), enforced);
        let addr = listener.local_addr();
        let metrics = Arc::new(Metrics::new(&[], &[]));
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(
            listener.serve(metrics, Arc::new(AtomicBool::new(true)), async {
                let _ = rx.await;
            }),
        );
        Self {
            addr,
            socket,
            store,
            stop: Some(tx),
            task,
            _dir: dir,
        }
    }

    async fn shutdown(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("serve() ends")
            .expect("no panic");
    }

    fn host(&self) -> String {
        self.addr.to_string()
    }
}

/// Writes `request` on a fresh connection (blocking, off the runtime) and reads the answer
/// until the server closes: (status, body).
async fn exchange(addr: SocketAddr, request: String) -> (u16, String) {
    tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        s.write_all(request.as_bytes()).expect("write");
        read_answer(&mut s)
    })
    .await
    .expect("join")
}

fn read_answer(s: &mut impl Read) -> (u16, String) {
    let mut raw = Vec::new();
    let _ = s.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    (status, body)
}

fn post_deny(host: &str, content_type: Option<&str>, extra: &str, body: &str) -> String {
    let ct = content_type
        .map(|c| format!("Content-Type: {c}\r\n"))
        .unwrap_or_default();
    format!(
        "POST /deny HTTP/1.1\r\nHost: {host}\r\n{ct}{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
}

fn get(path: &str, host: &str, extra: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n")
}

const ENTRY: &str = r#"{"target":"203.0.113.7","ttl":"1m"}"#;

#[tokio::test]
async fn a_deny_needs_a_json_content_type() {
    let s = Server::start(false, true).await;
    // What a page can send with fetch(..., {mode: 'no-cors'}) or a form: no preflight.
    for ct in [
        Some("text/plain"),
        Some("text/plain;charset=UTF-8"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        Some("application/jsonx"),
        None,
    ] {
        let (status, body) = exchange(s.addr, post_deny(&s.host(), ct, "", ENTRY)).await;
        assert_eq!(status, 415, "{ct:?}: {body}");
        assert!(
            !s.store.is_denied("203.0.113.7".parse().expect("ip")),
            "{ct:?}"
        );
    }
    for ct in ["application/json", "Application/JSON; charset=utf-8"] {
        let (status, body) = exchange(s.addr, post_deny(&s.host(), Some(ct), "", ENTRY)).await;
        assert_eq!(status, 200, "{ct}: {body}");
        assert!(s.store.is_denied("203.0.113.7".parse().expect("ip")));
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        assert_eq!(v["enforced"], true, "{body}");
    }
    s.shutdown().await;
}

#[tokio::test]
async fn a_request_with_an_origin_is_refused() {
    let s = Server::start(false, true).await;
    for origin in ["http://evil.example", "null", "http://127.0.0.1"] {
        let extra = format!("Origin: {origin}\r\n");
        let (status, _) = exchange(
            s.addr,
            post_deny(&s.host(), Some("application/json"), &extra, ENTRY),
        )
        .await;
        assert_eq!(status, 403, "POST with Origin {origin}");
        let (status, _) = exchange(s.addr, get("/metrics", &s.host(), &extra)).await;
        assert_eq!(status, 403, "GET /metrics with Origin {origin}");
        let (status, _) = exchange(s.addr, get("/deny", &s.host(), &extra)).await;
        assert_eq!(status, 403, "GET /deny with Origin {origin}");
    }
    assert!(!s.store.is_denied("203.0.113.7".parse().expect("ip")));
    s.shutdown().await;
}

/// The dashboard's own script (same origin, with the page's header) may use the API; the
/// header from another origin, or the same origin without the header, may not.
#[tokio::test]
async fn only_the_dashboards_own_script_may_send_an_origin() {
    let s = Server::start(false, true).await;
    let own = format!("http://{}", s.host());
    let page = gateway::admin::dashboard::PAGE_HEADER;
    for (origin, header, want) in [
        ("http://evil.example".to_string(), true, 403),
        (format!("https://{}", s.host()), true, 403),
        (format!("{own}.evil.example"), true, 403),
        ("null".to_string(), true, 403),
        (own.clone(), false, 403),
        (own.clone(), true, 200),
    ] {
        let extra = if header {
            format!("Origin: {origin}\r\n{page}: 1\r\n")
        } else {
            format!("Origin: {origin}\r\n")
        };
        let (status, body) = exchange(s.addr, get("/deny", &s.host(), &extra)).await;
        assert_eq!(
            status, want,
            "Origin {origin}, page header {header}: {body}"
        );
    }
    // A browser's page header with a wrong value is no proof either.
    let extra = format!("Origin: {own}\r\n{page}: yes\r\n");
    let (status, _) = exchange(s.addr, get("/deny", &s.host(), &extra)).await;
    assert_eq!(status, 403);
    s.shutdown().await;
}

#[tokio::test]
async fn only_the_endpoints_own_host_names_are_served() {
    let s = Server::start(false, true).await;
    let port = s.addr.port();
    let other = port.wrapping_add(1).max(1);
    for host in [
        "evil.example".to_string(),
        format!("evil.example:{port}"),
        format!("127.0.0.1.evil.example:{port}"),
        format!("localhost.evil.example:{port}"),
        format!("127.0.0.1:{other}"),
        format!("127.0.0.2:{port}"),
        format!("[::1]:{port}"),
        String::new(),
        "127.0.0.1:9901@evil".into(),
    ] {
        let (status, _) = exchange(s.addr, get("/metrics", &host, "")).await;
        assert_eq!(status, 403, "Host {host:?}");
        let (status, _) = exchange(
            s.addr,
            post_deny(&host, Some("application/json"), "", ENTRY),
        )
        .await;
        assert_eq!(status, 403, "POST with Host {host:?}");
    }
    // No Host at all (HTTP/1.0 allows it) is refused too.
    let (status, _) = exchange(s.addr, "GET /metrics HTTP/1.0\r\n\r\n".into()).await;
    assert_eq!(status, 403, "no Host");
    assert!(!s.store.is_denied("203.0.113.7".parse().expect("ip")));
    for host in [
        s.host(),
        "127.0.0.1".into(),
        "localhost".into(),
        format!("localhost:{port}"),
        format!("LocalHost:{port}"),
    ] {
        let (status, body) = exchange(s.addr, get("/metrics", &host, "")).await;
        assert_eq!(status, 200, "Host {host:?}: {body}");
    }
    s.shutdown().await;
}

#[tokio::test]
async fn a_slow_body_times_out_and_does_not_hold_up_metrics() {
    let s = Server::start(false, true).await;
    let addr = s.addr;
    let head = format!(
        "POST /deny HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{{\"target\":",
        ENTRY.len()
    );
    // Several slow bodies at once, each trickling a byte a second, never finishing.
    let slow: Vec<_> = (0..8)
        .map(|_| {
            let head = head.clone();
            tokio::task::spawn_blocking(move || {
                let mut c = TcpStream::connect(addr).expect("connect");
                c.set_read_timeout(Some(Duration::from_millis(900)))
                    .expect("timeout");
                c.write_all(head.as_bytes()).expect("write");
                let started = Instant::now();
                let mut raw = Vec::new();
                let mut buf = [0u8; 1024];
                while started.elapsed() < Duration::from_secs(15) {
                    match c.read(&mut buf) {
                        Ok(0) => break,
                        Ok(n) => raw.extend_from_slice(&buf[..n]),
                        Err(_) => {
                            if !raw.is_empty() {
                                break;
                            }
                            // Still waiting: one more byte of the body.
                            if c.write_all(b" ").is_err() {
                                break;
                            }
                        }
                    }
                }
                (
                    String::from_utf8_lossy(&raw).into_owned(),
                    started.elapsed(),
                )
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Meanwhile /metrics answers at once.
    for _ in 0..3 {
        let started = Instant::now();
        let (status, _) = exchange(addr, get("/metrics", &addr.to_string(), "")).await;
        assert_eq!(status, 200);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "/metrics took {:?} beside slow bodies",
            started.elapsed()
        );
    }
    for t in slow {
        let (answer, took) = t.await.expect("join");
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(
            took >= Duration::from_secs(4) && took < Duration::from_secs(8),
            "the body deadline is 5 s, answered after {took:?}"
        );
    }
    assert!(!s.store.is_denied("203.0.113.7".parse().expect("ip")));
    s.shutdown().await;
}

#[tokio::test]
async fn the_socket_is_0660_serves_the_api_and_goes_away() {
    let s = Server::start(true, true).await;
    let path = s.socket.clone().expect("socket");
    let meta = std::fs::symlink_metadata(&path).expect("socket exists");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    let p = path.clone();
    let (status, body) = tokio::task::spawn_blocking(move || {
        let mut c = UnixStream::connect(&p).expect("connect");
        c.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        c.write_all(post_deny("localhost", Some("application/json"), "", ENTRY).as_bytes())
            .expect("write");
        read_answer(&mut c)
    })
    .await
    .expect("join");
    assert_eq!(status, 200, "{body}");
    assert!(s.store.is_denied("203.0.113.7".parse().expect("ip")));
    // The same checks apply on the socket.
    let p = path.clone();
    let (status, _) = tokio::task::spawn_blocking(move || {
        let mut c = UnixStream::connect(&p).expect("connect");
        c.write_all(post_deny("localhost", Some("text/plain"), "", ENTRY).as_bytes())
            .expect("write");
        read_answer(&mut c)
    })
    .await
    .expect("join");
    assert_eq!(status, 415);
    s.shutdown().await;
    assert!(!path.exists(), "the socket is removed at shutdown");
}

#[tokio::test]
async fn a_deny_nothing_enforces_says_so() {
    let s = Server::start(false, false).await;
    let (status, body) = exchange(
        s.addr,
        post_deny(&s.host(), Some("application/json"), "", ENTRY),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert_eq!(v["enforced"], false, "{body}");
    assert!(
        v["warning"]
            .as_str()
            .is_some_and(|w| w.contains("nothing enforces")),
        "{body}"
    );
    s.shutdown().await;
}
