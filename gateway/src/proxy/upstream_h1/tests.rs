//! The hostile-upstream corpus: each malformed or smuggling answer is refused or relayed
//! correctly, and the next request on the pool gets its own answer (never bytes left over
//! from the hostile one on a pooled connection).

use super::Added;
use crate::proxy::linger::ResponseEnd;
use crate::proxy::pool::{ServerPool, IDLE_TIMEOUT};
use crate::proxy::{empty_body, full_body, BoxError, ProxyBody};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const GOOD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nnext";

/// A server whose first answer (to the first request it gets, on any connection) is
/// `hostile`, and every later one [`GOOD`], on keep-alive connections. It reads request
/// heads only (the corpus sends no bodies) and records every request head.
struct Scripted {
    addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    heads: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Scripted {
    /// `close`: close the connection right after the hostile answer.
    async fn start(hostile: Vec<u8>, close: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
        let hostile: Arc<[u8]> = hostile.into();
        let (count, seen) = (accepted.clone(), heads.clone());
        let task = tokio::spawn(async move {
            let served = Arc::new(AtomicUsize::new(0));
            while let Ok((mut stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let (hostile, served, seen) = (hostile.clone(), served.clone(), seen.clone());
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    loop {
                        let end = loop {
                            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                break i + 4;
                            }
                            match stream.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        };
                        seen.lock().expect("lock").push(buf.drain(..end).collect());
                        let first = served.fetch_add(1, Ordering::SeqCst) == 0;
                        let reply: &[u8] = if first { &hostile } else { GOOD };
                        if stream.write_all(reply).await.is_err() || (first && close) {
                            return;
                        }
                    }
                });
            }
        });
        Self {
            addr,
            accepted,
            heads,
            task,
        }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

fn request(method: Method, body: ProxyBody) -> Request<ProxyBody> {
    Request::builder()
        .method(method)
        .uri("/corpus?x=1")
        .header(http::header::HOST, "upstream.test")
        .body(body)
        .expect("request")
}

/// The status and whole body, or the error that ended the exchange or its body.
async fn exchange(
    pool: &Arc<ServerPool>,
    req: Request<ProxyBody>,
) -> Result<(StatusCode, Bytes), String> {
    let run = async {
        let resp = pool
            .send_request(req, Added::default(), ResponseEnd::default())
            .await
            .map_err(|e| format!("send: {}", crate::proxy::ErrorChain(&e)))?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| format!("body: {e}"))?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
}

#[derive(Debug, Clone, Copy)]
enum Expect {
    /// Refused: the exchange or its body fails, the connection is not reused.
    Fail,
    /// Relayed as (status, body); `reused`: the next request rides the same connection.
    Relay(u16, &'static str, bool),
}

/// Runs one case: the hostile answer, then a request that must get [`GOOD`].
async fn case(name: &str, method: Method, hostile: Vec<u8>, close: bool, expect: Expect) {
    let up = Scripted::start(hostile, close).await;
    let pool = ServerPool::new(up.addr, Duration::from_secs(2), 8, IDLE_TIMEOUT);
    let got = exchange(&pool, request(method, empty_body())).await;
    let reused = match expect {
        Expect::Fail => {
            assert!(got.is_err(), "{name}: must be refused, got {got:?}");
            false
        }
        Expect::Relay(status, body, reused) => {
            let (s, b) = got.unwrap_or_else(|e| panic!("{name}: must be relayed, got {e}"));
            assert_eq!(
                (s.as_u16(), &b[..]),
                (status, body.as_bytes()),
                "{name}: relayed wrong"
            );
            reused
        }
    };
    let next = exchange(&pool, request(Method::GET, empty_body())).await;
    assert_eq!(
        next,
        Ok((StatusCode::OK, Bytes::from_static(b"next"))),
        "{name}: the next request must get its own answer"
    );
    let want = if reused { 1 } else { 2 };
    assert_eq!(up.accepted(), want, "{name}: connections opened");
}

#[tokio::test(flavor = "current_thread")]
async fn hostile_answers_are_refused_or_relayed_and_never_desynchronise_the_pool() {
    use Expect::{Fail, Relay};
    let evil = "HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\nEVIL";
    let ok2 = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
    let many_1xx = "HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n".repeat(20) + ok2;
    let big_field = format!(
        "HTTP/1.1 200 OK\r\nx-big: {}\r\ncontent-length: 2\r\n\r\nok",
        "a".repeat(70 * 1024)
    );
    let many_fields = format!(
        "HTTP/1.1 200 OK\r\n{}content-length: 2\r\n\r\nok",
        (0..150)
            .map(|i| format!("x-f{i}: v\r\n"))
            .collect::<String>()
    );
    let huge_trailers = format!(
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n{}\r\n",
        (0..2000)
            .map(|i| format!("x-t{i}: value\r\n"))
            .collect::<String>()
    );
    let cases: Vec<(&str, Method, String, bool, Expect)> = vec![
        // Smuggling: which framing wins must never be a guess.
        ("CL and TE", Method::GET, format!("HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n{evil}"), false, Fail),
        ("TE and CL", Method::GET, format!("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ncontent-length: 0\r\n\r\n0\r\n\r\n{evil}"), false, Fail),
        ("duplicate CL, equal", Method::GET, format!("HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\nok{evil}"), false, Fail),
        ("duplicate CL, different", Method::GET, format!("HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 40\r\n\r\nok{evil}"), false, Fail),
        ("CL list", Method::GET, format!("HTTP/1.1 200 OK\r\ncontent-length: 2, 2\r\n\r\nok{evil}"), false, Fail),
        ("CL with sign", Method::GET, format!("HTTP/1.1 200 OK\r\ncontent-length: +2\r\n\r\nok{evil}"), false, Fail),
        ("CL with inner space", Method::GET, format!("HTTP/1.1 200 OK\r\ncontent-length: 2 0\r\n\r\nok{evil}"), false, Fail),
        ("CL overflow", Method::GET, format!("HTTP/1.1 200 OK\r\ncontent-length: 18446744073709551617\r\n\r\nok{evil}"), false, Fail),
        ("CL hex", Method::GET, format!("HTTP/1.1 200 OK\r\ncontent-length: 0x2\r\n\r\nok{evil}"), false, Fail),
        ("TE not chunked", Method::GET, format!("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\n\r\nok{evil}"), false, Fail),
        ("TE chunked twice", Method::GET, format!("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n{evil}"), false, Fail),
        ("TE gzip, chunked", Method::GET, format!("HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n{evil}"), false, Fail),
        ("TE with space before colon", Method::GET, format!("HTTP/1.1 200 OK\r\ntransfer-encoding : chunked\r\n\r\n0\r\n\r\n{evil}"), false, Fail),
        ("TE in HTTP/1.0", Method::GET, format!("HTTP/1.0 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n{evil}"), false, Fail),
        // Chunked bodies.
        ("chunk size over u64", Method::GET, format!("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n10000000000000002\r\nok\r\n0\r\n\r\n{evil}"), false, Fail),
        ("negative chunk size", Method::GET, format!("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n-2\r\nok\r\n0\r\n\r\n{evil}"), false, Fail),
        ("hex junk chunk size", Method::GET, format!("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2g\r\nok\r\n0\r\n\r\n{evil}"), false, Fail),
        ("chunk data longer than its size", Method::GET, format!("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n1\r\nok\r\n0\r\n\r\n{evil}"), false, Fail),
        ("missing final CRLF, then close", Method::GET, "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n".into(), true, Fail),
        ("huge trailers", Method::GET, huge_trailers, false, Fail),
        ("chunked with trailers", Method::GET, "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2;ext=1\r\nok\r\n0\r\nx-sum: 1\r\n\r\n".into(), false, Relay(200, "ok", true)),
        ("bytes after a chunked body", Method::GET, format!("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n{evil}"), false, Relay(200, "ok", false)),
        // Lengths and closes.
        ("early close mid-body", Method::GET, "HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc".into(), true, Fail),
        ("close before any byte", Method::GET, String::new(), true, Fail),
        ("close mid-head", Method::GET, "HTTP/1.1 200 OK\r\ncontent-le".into(), true, Fail),
        ("bytes after a CL body", Method::GET, format!("{ok2}{evil}"), false, Relay(200, "ok", false)),
        ("no length: until close", Method::GET, "HTTP/1.1 200 OK\r\n\r\nall of it".into(), true, Relay(200, "all of it", false)),
        ("Connection: close", Method::GET, "HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 2\r\n\r\nok".into(), false, Relay(200, "ok", false)),
        ("HTTP/1.0 keep-alive", Method::GET, "HTTP/1.0 200 OK\r\nconnection: keep-alive\r\ncontent-length: 2\r\n\r\nok".into(), false, Relay(200, "ok", false)),
        // Answers without a body.
        ("204 with a body", Method::GET, format!("HTTP/1.1 204 No Content\r\ncontent-length: 4\r\n\r\n{evil}"), false, Relay(204, "", false)),
        ("204 with TE", Method::GET, format!("HTTP/1.1 204 No Content\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n{evil}"), false, Relay(204, "", false)),
        ("304 with a body", Method::GET, format!("HTTP/1.1 304 Not Modified\r\ncontent-length: 4\r\n\r\n{evil}"), false, Relay(304, "", false)),
        ("304 with its length only", Method::GET, "HTTP/1.1 304 Not Modified\r\ncontent-length: 4\r\n\r\n".into(), false, Relay(304, "", true)),
        ("HEAD with a length", Method::HEAD, "HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n".into(), false, Relay(200, "", true)),
        ("HEAD answered with a body", Method::HEAD, format!("HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n{evil}"), false, Relay(200, "", false)),
        // Interim answers.
        ("100 Continue then 200", Method::GET, format!("HTTP/1.1 100 Continue\r\n\r\n{ok2}"), false, Relay(200, "ok", true)),
        ("many 1xx", Method::GET, many_1xx, false, Fail),
        ("101 unasked", Method::GET, "HTTP/1.1 101 Switching Protocols\r\nupgrade: x\r\nconnection: upgrade\r\n\r\nraw".into(), false, Relay(101, "", false)),
        // Heads.
        ("head too large", Method::GET, big_field, false, Fail),
        ("too many fields", Method::GET, many_fields, false, Fail),
        ("obs-fold", Method::GET, "HTTP/1.1 200 OK\r\nx-a: 1\r\n folded\r\ncontent-length: 2\r\n\r\nok".into(), false, Fail),
        ("NUL in a value", Method::GET, "HTTP/1.1 200 OK\r\nx-a: a\0b\r\ncontent-length: 2\r\n\r\nok".into(), false, Fail),
        ("bare LF lines", Method::GET, "HTTP/1.1 200 OK\ncontent-length: 2\n\nok".into(), false, Relay(200, "ok", true)),
        ("four-digit status", Method::GET, "HTTP/1.1 2000 OK\r\ncontent-length: 2\r\n\r\nok".into(), false, Fail),
        ("two-digit status", Method::GET, "HTTP/1.1 20 OK\r\ncontent-length: 2\r\n\r\nok".into(), false, Fail),
        ("HTTP/1.2", Method::GET, "HTTP/1.2 200 OK\r\ncontent-length: 2\r\n\r\nok".into(), false, Fail),
        ("not HTTP", Method::GET, "ICY 200 OK\r\ncontent-length: 2\r\n\r\nok".into(), false, Fail),
        ("HTTP/0.9 style body", Method::GET, "<html>hello</html>\r\n\r\n".into(), false, Fail),
    ];
    for (name, method, hostile, close, expect) in cases {
        case(name, method, hostile.into_bytes(), close, expect).await;
    }
}

/// A request body of unknown length that sends `parts`, then ends.
struct Parts(Vec<&'static [u8]>);

impl Body for Parts {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.0.is_empty() {
            return Poll::Ready(None);
        }
        let part = self.0.remove(0);
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(part)))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[tokio::test(flavor = "current_thread")]
async fn request_bodies_are_framed_for_the_upstream() {
    let up = Scripted::start(GOOD.to_vec(), false).await;
    let pool = ServerPool::new(up.addr, Duration::from_secs(2), 8, IDLE_TIMEOUT);
    // Known length: Content-Length, in one write with the head.
    let known = request(Method::POST, full_body("hello"));
    assert_eq!(
        exchange(&pool, known).await.map(|r| r.0),
        Ok(StatusCode::OK)
    );
    // Unknown length: chunked.
    let unknown = request(Method::POST, Parts(vec![b"ab", b"", b"cde"]).boxed());
    assert_eq!(
        exchange(&pool, unknown).await.map(|r| r.0),
        Ok(StatusCode::OK)
    );
    // Empty: no framing fields at all.
    assert!(exchange(&pool, request(Method::GET, empty_body()))
        .await
        .is_ok());
    // The server reads heads only: the bodies show up in what it read, between heads (and
    // it answers the chunked body's blank line too, so it may see the last head late).
    let read = || -> String {
        up.heads
            .lock()
            .expect("lock")
            .iter()
            .map(|h| String::from_utf8_lossy(h).into_owned())
            .collect()
    };
    for _ in 0..200 {
        if read().starts_with("GET") || read().contains("\r\nGET") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let all = read();
    let want = [
        "POST /corpus?x=1 HTTP/1.1\r\nhost: upstream.test\r\ncontent-length: 5\r\n\r\nhello",
        "POST /corpus?x=1 HTTP/1.1\r\nhost: upstream.test\r\ntransfer-encoding: chunked\r\n\r\n",
        "2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n",
        "GET /corpus?x=1 HTTP/1.1\r\nhost: upstream.test\r\n\r\n",
    ]
    .concat();
    assert_eq!(all, want);
}

#[tokio::test(flavor = "current_thread")]
async fn a_body_that_breaks_its_content_length_fails_the_exchange() {
    let up = Scripted::start(GOOD.to_vec(), false).await;
    let pool = ServerPool::new(up.addr, Duration::from_secs(2), 8, IDLE_TIMEOUT);
    for (declared, parts) in [("2", vec![&b"abc"[..]]), ("5", vec![&b"ab"[..]])] {
        let mut req = request(Method::POST, Parts(parts).boxed());
        req.headers_mut().insert(
            http::header::CONTENT_LENGTH,
            http::HeaderValue::from_static(declared),
        );
        assert!(
            exchange(&pool, req).await.is_err(),
            "Content-Length {declared}"
        );
    }
}

#[tokio::test(flavor = "current_thread")]
async fn added_fields_follow_the_requests_own_before_the_framing() {
    let up = Scripted::start(GOOD.to_vec(), false).await;
    let pool = ServerPool::new(up.addr, Duration::from_secs(2), 8, IDLE_TIMEOUT);
    let id = http::HeaderValue::from_static("abc-123");
    let added = Added {
        lines: b"x-forwarded-for: 192.0.2.7\r\nforwarded: for=192.0.2.7;proto=http\r\n",
        request_id: Some(&id),
    };
    // The client's id goes: ours replaces it.
    let mut req = request(Method::POST, full_body("hi"));
    req.headers_mut().insert(
        "x-request-id",
        http::HeaderValue::from_static("client's own"),
    );
    let resp = pool
        .send_request(req, added, ResponseEnd::default())
        .await
        .expect("send");
    assert_eq!(resp.status(), StatusCode::OK);
    let _ = resp.into_body().collect().await;
    let head = String::from_utf8_lossy(&up.heads.lock().expect("lock")[0]).into_owned();
    assert_eq!(
        head,
        "POST /corpus?x=1 HTTP/1.1\r\nhost: upstream.test\r\n\
         x-forwarded-for: 192.0.2.7\r\nforwarded: for=192.0.2.7;proto=http\r\n\
         x-request-id: abc-123\r\ncontent-length: 2\r\n\r\n"
    );
}
