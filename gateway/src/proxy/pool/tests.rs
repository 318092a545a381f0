use super::*;
use crate::proxy::empty_body;
use bytes::Bytes;
use http::header::{CONNECTION, HOST};
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming};
use hyper_util::rt::TokioIo;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A real HTTP/1.1 server on loopback that counts the connections it accepts.
pub(in crate::proxy) struct TestUpstream {
    pub(in crate::proxy) addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    /// Connections closed (counted by the hyper server only).
    closed: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestUpstream {
    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    /// hyper's server: `/ok` (5 bytes), `/empty` (204), `/big` (1 MiB), `/slow` (50 ms),
    /// `/close` (answers with `Connection: close`).
    async fn hyper() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let closed = Arc::new(AtomicUsize::new(0));
        let (count, ended) = (accepted.clone(), closed.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                    let mut resp = Response::new(http_body_util::Full::new(Bytes::new()));
                    match req.uri().path() {
                        "/empty" => *resp.status_mut() = StatusCode::NO_CONTENT,
                        "/big" => *resp.body_mut() = vec![b'x'; 1 << 20].into(),
                        "/slow" => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            *resp.body_mut() = Bytes::from_static(b"slow!").into();
                        }
                        "/close" => {
                            resp.headers_mut()
                                .insert(CONNECTION, http::HeaderValue::from_static("close"));
                            *resp.body_mut() = Bytes::from_static(b"bye").into();
                        }
                        _ => *resp.body_mut() = Bytes::from_static(b"hello").into(),
                    }
                    Ok::<_, std::convert::Infallible>(resp)
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), svc);
                let ended = ended.clone();
                tokio::spawn(async move {
                    let _ = conn.await;
                    ended.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        Self {
            addr,
            accepted,
            closed,
            task,
        }
    }

    /// Answers one request per connection and closes it without saying so, like a
    /// server whose keep-alive timeout fires right after a response.
    async fn closing() -> Self {
        Self::raw(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", false).await
    }

    /// Answers every request with a 401 as soon as its head arrives, then goes on
    /// reading (and discarding) what the client sends, keeping the connection open.
    async fn early() -> Self {
        Self::raw(
            b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 2\r\n\r\nno",
            true,
        )
        .await
    }

    /// A hand-written server: `reply` once a request head has arrived, then either
    /// close, or read and discard until the client closes.
    pub(in crate::proxy) async fn raw(reply: &'static [u8], keep_reading: bool) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut chunk = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&chunk[..n]),
                        }
                    }
                    if stream.write_all(reply).await.is_err() || !keep_reading {
                        return;
                    }
                    while let Ok(n) = stream.read(&mut chunk).await {
                        if n == 0 {
                            return;
                        }
                    }
                });
            }
        });
        Self {
            addr,
            accepted,
            closed: Arc::new(AtomicUsize::new(0)),
            task,
        }
    }
}

fn pool(up: &TestUpstream, max_idle: usize) -> Arc<ServerPool> {
    ServerPool::new(up.addr, Duration::from_secs(2), max_idle, IDLE_TIMEOUT)
}

fn request(method: Method, path: &str) -> Request<ProxyBody> {
    Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, "upstream.test")
        .body(empty_body())
        .expect("request")
}

async fn get(pool: &Arc<ServerPool>, path: &str) -> (StatusCode, Bytes) {
    let resp = pool
        .send_request(
            request(Method::GET, path),
            Added::default(),
            ResponseEnd::default(),
        )
        .await
        .expect("send");
    let status = resp.status();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, body)
}

impl ServerPool {
    fn idle_count(&self) -> usize {
        self.lock().len()
    }

    /// [`ServerPool::send`] with a whole request, as tests build them.
    pub(crate) async fn send_request(
        self: &Arc<Self>,
        req: Request<ProxyBody>,
        added: Added<'_>,
        end: ResponseEnd,
    ) -> Result<http::Response<ProxyBody>, PoolError> {
        let (parts, body) = req.into_parts();
        self.send(&parts, body, added, end).await
    }
}

#[tokio::test(flavor = "current_thread")]
async fn sequential_requests_reuse_one_connection() {
    let up = TestUpstream::hyper().await;
    let pool = pool(&up, 8);
    for _ in 0..50 {
        assert_eq!(
            get(&pool, "/ok").await,
            (StatusCode::OK, Bytes::from("hello"))
        );
    }
    assert_eq!(up.accepted(), 1);
    assert_eq!(pool.idle_count(), 1);
}

#[tokio::test(flavor = "current_thread")]
async fn empty_bodies_give_the_connection_back_unpolled() {
    let up = TestUpstream::hyper().await;
    let pool = pool(&up, 8);
    // HEAD and 204: the body is known empty and dropped without being polled, as
    // hyper's server does with them.
    let head = pool
        .send_request(
            request(Method::HEAD, "/ok"),
            Added::default(),
            ResponseEnd::default(),
        )
        .await
        .expect("head");
    assert!(head.body().is_end_stream());
    drop(head);
    let empty = pool
        .send_request(
            request(Method::GET, "/empty"),
            Added::default(),
            ResponseEnd::default(),
        )
        .await
        .expect("204");
    assert_eq!(empty.status(), StatusCode::NO_CONTENT);
    drop(empty);
    assert_eq!(get(&pool, "/ok").await.0, StatusCode::OK);
    assert_eq!(up.accepted(), 1);
}

#[tokio::test(flavor = "current_thread")]
async fn an_abandoned_body_closes_its_connection() {
    let up = TestUpstream::hyper().await;
    let pool = pool(&up, 8);
    let resp = pool
        .send_request(
            request(Method::GET, "/big"),
            Added::default(),
            ResponseEnd::default(),
        )
        .await
        .expect("big");
    let mut body = resp.into_body();
    let first = body.frame().await.expect("a frame").expect("data");
    assert!(first.data_ref().is_some_and(|d| !d.is_empty()));
    drop(body);
    assert_eq!(
        pool.idle_count(),
        0,
        "a half-read connection must not be pooled"
    );
    assert_eq!(get(&pool, "/ok").await.1, Bytes::from("hello"));
    assert_eq!(up.accepted(), 2);
}

#[tokio::test(flavor = "current_thread")]
async fn connection_close_is_honoured() {
    let up = TestUpstream::hyper().await;
    let pool = pool(&up, 8);
    for _ in 0..5 {
        assert_eq!(get(&pool, "/close").await.1, Bytes::from("bye"));
    }
    assert_eq!(up.accepted(), 5);
}

#[tokio::test(flavor = "current_thread")]
async fn connections_the_server_closes_silently_are_replaced() {
    let up = TestUpstream::closing().await;
    let pool = pool(&up, 8);
    for i in 0..20 {
        let (status, body) = get(&pool, "/ok").await;
        assert_eq!(
            (status, body),
            (StatusCode::OK, Bytes::from("ok")),
            "request {i}"
        );
        // The close is usually seen before the next checkout; when it is seen only
        // once the request is queued, hyper hands the unsent request back for a retry.
        if i % 2 == 0 {
            tokio::task::yield_now().await;
        }
    }
    assert_eq!(up.accepted(), 20);
}

#[tokio::test(flavor = "current_thread")]
async fn concurrent_requests_keep_at_most_max_idle() {
    let up = TestUpstream::hyper().await;
    let pool = pool(&up, 4);
    let burst = |n: usize| {
        let tasks: Vec<_> = (0..n)
            .map(|_| {
                let pool = pool.clone();
                tokio::spawn(async move { get(&pool, "/slow").await })
            })
            .collect();
        async move {
            for t in tasks {
                assert_eq!(t.await.expect("task").1, Bytes::from("slow!"));
            }
        }
    };
    burst(16).await;
    assert_eq!(up.accepted(), 16);
    assert_eq!(pool.idle_count(), 4);
    burst(4).await;
    assert_eq!(up.accepted(), 16, "the pooled connections are reused");
}

/// A request body that sends one chunk, then never ends: a slow upload.
struct Stalled(bool);

impl Body for Stalled {
    type Data = Bytes;
    type Error = crate::proxy::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if self.0 {
            return Poll::Pending;
        }
        self.0 = true;
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"part")))))
    }
}

#[tokio::test(flavor = "current_thread")]
async fn an_early_response_does_not_hold_the_next_request() {
    let up = TestUpstream::early().await;
    let pool = pool(&up, 8);
    let upload = Request::post("/upload")
        .header(HOST, "upstream.test")
        .body(Stalled(false).boxed())
        .expect("request");
    let resp = pool
        .send_request(upload, Added::default(), ResponseEnd::default())
        .await
        .expect("early response");
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    resp.into_body().collect().await.expect("body");
    // The first connection is still busy with the upload: the next request must get
    // another one rather than wait behind it.
    let next = tokio::time::timeout(Duration::from_secs(2), get(&pool, "/ok")).await;
    assert_eq!(
        next.expect("not held"),
        (StatusCode::UNAUTHORIZED, Bytes::from("no"))
    );
    assert_eq!(up.accepted(), 2);
}

#[tokio::test(flavor = "current_thread")]
async fn idle_connections_are_closed_after_the_idle_timeout_without_traffic() {
    let up = TestUpstream::hyper().await;
    let idle_timeout = Duration::from_millis(200);
    let pool = ServerPool::new(up.addr, Duration::from_secs(2), 8, idle_timeout);
    assert_eq!(get(&pool, "/ok").await.0, StatusCode::OK);
    assert_eq!(pool.idle_count(), 1);
    tokio::time::sleep(idle_timeout * 3).await;
    assert_eq!(
        pool.idle_count(),
        0,
        "the reaper closes it, no request needed"
    );
    let closed = tokio::time::timeout(Duration::from_secs(2), async {
        while up.closed.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(closed.is_ok(), "the upstream saw the connection close");
    assert_eq!(get(&pool, "/ok").await.0, StatusCode::OK);
    assert_eq!(up.accepted(), 2);
}

#[tokio::test(flavor = "current_thread")]
async fn max_idle_zero_means_a_connection_per_request() {
    let up = TestUpstream::hyper().await;
    let pool = pool(&up, 0);
    for _ in 0..3 {
        assert_eq!(get(&pool, "/ok").await.0, StatusCode::OK);
    }
    assert_eq!(up.accepted(), 3);
    assert_eq!(pool.idle_count(), 0);
}

#[tokio::test(flavor = "current_thread")]
async fn refused_connections_are_connect_errors() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let pool = ServerPool::new(addr, Duration::from_secs(2), 4, IDLE_TIMEOUT);
    match pool
        .send_request(
            request(Method::GET, "/"),
            Added::default(),
            ResponseEnd::default(),
        )
        .await
    {
        Err(PoolError::Connect(_) | PoolError::ConnectTimeout(_)) => {}
        other => panic!("expected a connect error, got {other:?}"),
    }
}
