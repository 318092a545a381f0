//! Issue 13 items 1 and 4 against the real gateway: an upstream that answers before it has
//! read the request body (the HAProxy peer's `backend.cfg`) with curl over HTTP/2 and
//! HTTP/1.1, a response that streams longer than the idle limit, and the limits: a stalled
//! request body (`body_timeout`), a client that stops reading (`send_timeout`), a server at
//! its `max_connections`, and `max_requests_in_flight`.

use gateway_tests::client::{raw_exchange, Proto, Req};
use gateway_tests::haproxy::{peer_dir, start_backend};
use gateway_tests::proxy::{runtime, Gw, Setup};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// An upstream that answers every request once its head is in, with `respond`, then closes.
/// Stops accepting when dropped.
struct RawUpstream {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl RawUpstream {
    fn start(respond: fn(&mut TcpStream) -> std::io::Result<()>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stopped.load(Ordering::Acquire) {
                    return;
                }
                let Ok(mut conn) = conn else { continue };
                std::thread::spawn(move || {
                    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let _ = respond(&mut conn);
                });
            }
        });
        Self { addr, stop }
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        let _ = TcpStream::connect(self.addr);
    }
}

fn chunk(conn: &mut TcpStream, data: &[u8]) -> std::io::Result<()> {
    write!(conn, "{:x}\r\n", data.len())?;
    conn.write_all(data)?;
    conn.write_all(b"\r\n")
}

const CHUNKED_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\
    transfer-encoding: chunked\r\nconnection: close\r\n\r\n";

/// `chunk 0\n` .. `chunk 5\n`, one a second.
fn six_slow_chunks(conn: &mut TcpStream) -> std::io::Result<()> {
    conn.write_all(CHUNKED_HEAD)?;
    for i in 0..6 {
        std::thread::sleep(Duration::from_secs(1));
        chunk(conn, format!("chunk {i}\n").as_bytes())?;
    }
    conn.write_all(b"0\r\n\r\n")
}

/// 64 KiB chunks as fast as the gateway takes them, for at most 2 GiB or 60 s.
fn endless(conn: &mut TcpStream) -> std::io::Result<()> {
    conn.write_all(CHUNKED_HEAD)?;
    let data = vec![b'x'; 64 * 1024];
    let started = Instant::now();
    for _ in 0..32 * 1024 {
        if started.elapsed() > Duration::from_secs(60) {
            break;
        }
        chunk(conn, &data)?;
    }
    conn.write_all(b"0\r\n\r\n")
}

/// Answers at once and closes 200 ms later without reading the body (the gateway has the
/// whole answer by then; its writes of the rest of the body then fail).
fn early_then_close(conn: &mut TcpStream) -> std::io::Result<()> {
    conn.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n")?;
    std::thread::sleep(Duration::from_millis(200));
    Ok(())
}

/// curl over TLS (`proto`: `--http2` or `--http1.1`): `n` POSTs of `body` (a file) with a
/// valid token, each on a new connection; the failures, as curl reported them.
fn curl_posts(
    gw: &Gw,
    token: &str,
    proto: &str,
    body: &std::path::Path,
    n: usize,
    extra: &[&str],
) -> Vec<String> {
    let addr = gw.https.addr();
    let url = format!("https://localhost:{}/api/items", addr.port());
    let resolve = format!("localhost:{}:127.0.0.1", addr.port());
    let auth = format!("authorization: Bearer {token}");
    let want_version = if proto == "--http2" { "2" } else { "1.1" };
    let mut failures = Vec::new();
    for i in 0..n {
        let out = Command::new("curl")
            .args([
                "-sS",
                "-k",
                proto,
                "--resolve",
                &resolve,
                "--max-time",
                "10",
            ])
            .args(["-o", "/dev/null", "-w", "%{http_code} %{http_version}"])
            .args(["-H", &auth, "-H", "content-type: application/json"])
            .args(extra)
            .arg("--data-binary")
            .arg(format!("@{}", body.display()))
            .arg(&url)
            .output()
            .expect("run curl");
        let got = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() || got != format!("200 {want_version}") {
            failures.push(format!(
                "#{i}: {:?} {got} {}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
    }
    failures
}

/// The issue's case: 200 POSTs of `{"x":1}` with a valid token, over HTTP/2 and over
/// HTTP/1.1, to HAProxy answering without reading the body; before the fix 9 to 25 of 200
/// failed over HTTP/2 (`curl: (92) Stream error in the HTTP/2 framing layer`). Not one may
/// fail.
#[test]
fn an_upstream_answering_before_the_body_never_costs_the_client_its_response() {
    let work = TempDir::new().expect("temp dir");
    let (_backend, backend) = start_backend(&peer_dir(), work.path());
    let gw = Gw::start(Setup {
        upstream_addr: Some(backend),
        ..Setup::default()
    });
    let token = gw.mint(r#"{"sub":"alice","scope":"read write"}"#);
    let small = work.path().join("small.json");
    std::fs::write(&small, br#"{"x":1}"#).expect("write body");
    for proto in ["--http2", "--http1.1"] {
        let failures = curl_posts(&gw, &token, proto, &small, 200, &[]);
        assert!(
            failures.is_empty(),
            "{proto}: {} of 200 failed:\n{}\ngateway log:\n{}",
            failures.len(),
            failures.join("\n"),
            gw.proc.log_text()
        );
    }
}

/// 10 POSTs of 48 KiB each, sent at 100 KB/s, over HTTP/2 and HTTP/1.1, to an upstream that
/// answers on the head and closes 200 ms later: most of the body is still to come when the
/// upstream side lets go of it, and is lingered over (within the 64 KiB and 1 s bound): the
/// client gets its response and no reset. This passes without the lingering too (the answer
/// is sent before the body is let go of); it pins that lingering costs no response, the race
/// it fixes is the HAProxy case above. (HAProxy's `backend.cfg` closes with a large body
/// unread, and the TCP reset can destroy its own answer on the way: the upstream's loss,
/// answered 502, so it is not used here.)
#[test]
fn an_early_answer_to_a_large_body_arrives_over_both_protocols() {
    let work = TempDir::new().expect("temp dir");
    let upstream = RawUpstream::start(early_then_close);
    let gw = Gw::start(Setup {
        upstream_addr: Some(upstream.addr),
        ..Setup::default()
    });
    let token = gw.mint(r#"{"sub":"alice","scope":"read write"}"#);
    let large = work.path().join("large.json");
    std::fs::write(&large, vec![b'1'; 48 * 1024]).expect("write body");
    for proto in ["--http2", "--http1.1"] {
        let failures = curl_posts(&gw, &token, proto, &large, 10, &["--limit-rate", "100K"]);
        assert!(
            failures.is_empty(),
            "{proto}: {} of 10 failed:\n{}\ngateway log:\n{}",
            failures.len(),
            failures.join("\n"),
            gw.proc.log_text()
        );
    }
}

/// A response that sends a chunk a second for 6 s, with an idle limit of 2 s: it arrives
/// whole over HTTP/2 (the idle closer took such connections before) and over HTTP/1.1.
#[test]
fn a_response_streaming_longer_than_the_idle_limit_arrives_whole() {
    let upstream = RawUpstream::start(six_slow_chunks);
    let gw = Gw::start(Setup {
        // The idle closer gives a connection it takes `shutdown_grace` to finish: short here,
        // so that taking this one would cut the response.
        listen: "header_read_timeout = \"2s\"\nshutdown_grace = \"1s\"",
        upstream_addr: Some(upstream.addr),
        ..Setup::default()
    });
    let want: String = (0..6).map(|i| format!("chunk {i}\n")).collect();
    runtime().block_on(async {
        for proto in [Proto::H2, Proto::H1] {
            let started = Instant::now();
            let reply = gw
                .https
                .send(
                    proto,
                    Req::get("/open/stream").timeout(Duration::from_secs(20)),
                )
                .await
                .unwrap_or_else(|e| panic!("{proto:?}: {e:#}"));
            assert_eq!(reply.status, 200, "{proto:?}");
            assert_eq!(reply.text(), want, "{proto:?}");
            assert!(
                started.elapsed() >= Duration::from_secs(5),
                "{proto:?}: it did stream"
            );
        }
    });
}

/// A body that stops arriving for `body_timeout` is 408, well before the upstream's
/// `request_timeout`.
#[test]
fn a_stalled_request_body_is_408_after_body_timeout() {
    let gw = Gw::start(Setup {
        listen: "body_timeout = \"1s\"",
        ..Setup::default()
    });
    let request =
        b"POST /open/upload HTTP/1.1\r\nHost: localhost\r\ncontent-length: 100\r\n\r\n0123456789";
    let reply = raw_exchange(gw.http.addr(), request, Duration::from_secs(10)).expect("exchange");
    assert_eq!(reply.status(), Some(408), "{}", reply.text());
    assert!(
        reply.elapsed >= Duration::from_millis(900) && reply.elapsed < Duration::from_secs(5),
        "answered after {:?}",
        reply.elapsed
    );
}

/// An HTTP/1.1 client that stops reading an endless response has its connection closed
/// `send_timeout` after its writes blocked; without it the response would go on for ever.
#[test]
fn a_client_that_stops_reading_is_closed_after_send_timeout() {
    let upstream = RawUpstream::start(endless);
    let gw = Gw::start(Setup {
        listen: "send_timeout = \"2s\"",
        upstream_addr: Some(upstream.addr),
        ..Setup::default()
    });
    let mut s = TcpStream::connect(gw.http.addr()).expect("connect");
    s.write_all(b"GET /open/endless HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .expect("write");
    // Not reading: the gateway's writes block once the socket buffers are full.
    std::thread::sleep(Duration::from_secs(6));
    s.set_read_timeout(Some(Duration::from_secs(1)))
        .expect("timeout");
    let started = Instant::now();
    let mut buf = vec![0u8; 256 * 1024];
    let mut read = 0usize;
    let closed = loop {
        if started.elapsed() > Duration::from_secs(20) {
            break false;
        }
        match s.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => read += n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                // Nothing more and not closed: the gateway still holds the connection.
                break false;
            }
            Err(e) => panic!("read: {e}"),
        }
    };
    assert!(
        closed,
        "the connection stayed open ({read} bytes read after the pause)"
    );
}

/// One request in progress on a server with `max_connections = 1`: the next waits
/// `connect_timeout` (1 s) and gets 503 with `Retry-After`; once the first has ended, the
/// server is usable again.
#[test]
fn a_server_at_max_connections_is_503_with_retry_after_after_a_bounded_wait() {
    let gw = Gw::start(Setup {
        upstream: "max_connections = 1\nconnect_timeout = \"1s\"",
        ..Setup::default()
    });
    runtime().block_on(async {
        let slow = gw
            .http
            .send(Proto::H1, Req::get("/open/slow?delay_ms=3000"));
        let second = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let started = Instant::now();
            let r = gw.http.send(Proto::H1, Req::get("/open/second")).await;
            (r, started.elapsed())
        };
        let (slow, (second, waited)) = tokio::join!(slow, second);
        assert_eq!(slow.expect("slow").status, 200);
        let second = second.expect("second");
        assert_eq!(second.status, 503, "{}", second.text());
        assert_eq!(second.header("retry-after"), Some("1"));
        assert!(
            waited >= Duration::from_millis(900) && waited < Duration::from_secs(3),
            "waited {waited:?}"
        );
        let after = gw
            .http
            .send(Proto::H1, Req::get("/open/after"))
            .await
            .expect("after");
        assert_eq!(after.status, 200);
    });
}

/// `max_requests_in_flight = 1`: a second request while one is in progress is 503 with
/// `Retry-After` at once.
#[test]
fn requests_over_max_requests_in_flight_are_503_with_retry_after() {
    let gw = Gw::start(Setup {
        listen: "max_requests_in_flight = 1",
        ..Setup::default()
    });
    runtime().block_on(async {
        let slow = gw
            .http
            .send(Proto::H1, Req::get("/open/slow?delay_ms=2000"));
        let second = async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let started = Instant::now();
            let r = gw.https.send(Proto::H2, Req::get("/open/second")).await;
            (r, started.elapsed())
        };
        let (slow, (second, took)) = tokio::join!(slow, second);
        assert_eq!(slow.expect("slow").status, 200);
        let second = second.expect("second");
        assert_eq!(second.status, 503, "{}", second.text());
        assert_eq!(second.header("retry-after"), Some("1"));
        assert!(took < Duration::from_secs(1), "took {took:?}");
    });
}
