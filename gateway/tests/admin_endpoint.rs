//! The admin endpoint over real sockets with a real HTTP/1.1 client (hyper).

use gateway::admin::{self, AdminError};
use gateway::config::admin::AdminConfig;
use gateway::metrics::Metrics;
use gateway_tests::http1::{self, TextReply};
use http_body_util::Empty;
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// One request on a fresh connection.
async fn send(addr: SocketAddr, method: Method, path: &str) -> TextReply {
    http1::send(addr, method, path, &[]).await
}

struct Server {
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

async fn start() -> Server {
    let cfg = AdminConfig {
        listen: "127.0.0.1:0".parse().expect("addr"),
        allow_non_loopback: false,
        ..AdminConfig::default()
    };
    let listener = admin::bind(&cfg).await.expect("bind");
    let addr = listener.local_addr();
    assert_ne!(addr.port(), 0, "the real port is reported");
    let metrics = Arc::new(Metrics::new(&["api".to_owned()], &["pool".to_owned()]));
    let ready = Arc::new(AtomicBool::new(false));
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(
        listener.serve(Arc::clone(&metrics), Arc::clone(&ready), async {
            let _ = rx.await;
        }),
    );
    Server {
        addr,
        metrics,
        ready,
        stop: Some(tx),
        task,
    }
}

impl Server {
    /// Signals shutdown and requires the serving task to end promptly.
    async fn shutdown(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        tokio::time::timeout(Duration::from_secs(5), self.task)
            .await
            .expect("serve() ends after shutdown")
            .expect("serve() does not panic");
    }
}

#[tokio::test]
async fn serves_metrics_health_and_readiness() {
    let s = start().await;
    s.metrics.request(Some(0), 200);
    s.metrics
        .denial(gateway::proxy::refusal::DenialReason::Token(
            gateway::jwt::Reason::Expired,
        ));

    let r = send(s.addr, Method::GET, "/metrics").await;
    assert_eq!(r.status, StatusCode::OK);
    let ct = r.headers["content-type"].to_str().expect("ascii");
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    assert_eq!(r.headers["cache-control"], "no-store");
    assert!(
        r.body
            .contains("gateway_requests_total{route=\"api\",status=\"200\"} 1\n"),
        "{}",
        r.body
    );
    assert!(
        r.body
            .contains("gateway_denials_total{reason=\"expired\"} 1\n"),
        "{}",
        r.body
    );
    assert!(r
        .body
        .contains("# TYPE gateway_verify_duration_seconds histogram\n"));

    let r = send(s.addr, Method::HEAD, "/metrics").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.body.is_empty(), "HEAD has no body");

    let r = send(s.addr, Method::GET, "/healthz").await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "ok\n"));
    let r = send(s.addr, Method::GET, "/healthz?verbose=1").await;
    assert_eq!(r.status, StatusCode::OK, "the query string is ignored");

    let r = send(s.addr, Method::GET, "/readyz").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    s.ready.store(true, Ordering::Release);
    let r = send(s.addr, Method::GET, "/readyz").await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "ready\n"));
    s.ready.store(false, Ordering::Release);
    let r = send(s.addr, Method::GET, "/readyz").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);

    for path in [
        "/index.html",
        "/metrics/",
        "/metricsx",
        "/admin",
        "/../metrics",
    ] {
        let r = send(s.addr, Method::GET, path).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{path}");
    }
    for method in [Method::POST, Method::PUT, Method::DELETE, Method::OPTIONS] {
        let r = send(s.addr, method.clone(), "/metrics").await;
        assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{method}");
        assert_eq!(r.headers["allow"], "GET, HEAD");
    }

    s.shutdown().await;
}

/// After shutdown nothing listens, and connections that were open (idle, or kept alive after
/// a request) do not hold serve() up: they are closed.
#[tokio::test]
async fn shutdown_closes_the_listener_and_idle_connections() {
    let s = start().await;
    let addr = s.addr;
    // An idle client (connected, never sends) must not hold up shutdown.
    let idle = TcpStream::connect(addr).await.expect("connect");
    // A keep-alive client that made one request and stays connected.
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    let conn_task = tokio::spawn(conn);
    let req = Request::get("/healthz")
        .header("host", addr.to_string())
        .body(Empty::<Bytes>::new())
        .expect("request");
    assert_eq!(
        sender.send_request(req).await.expect("response").status(),
        StatusCode::OK
    );

    s.shutdown().await;
    assert!(
        TcpStream::connect(addr).await.is_err(),
        "nothing listens after shutdown"
    );
    // The keep-alive connection was closed by the server.
    tokio::time::timeout(Duration::from_secs(5), conn_task)
        .await
        .expect("server closed the keep-alive connection")
        .expect("join")
        .expect("clean close");
    drop(idle);
}

#[tokio::test]
async fn bind_errors_name_the_address() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let cfg = AdminConfig {
        listen: addr,
        allow_non_loopback: false,
        ..AdminConfig::default()
    };
    let e = admin::bind(&cfg).await.expect_err("address in use");
    assert!(matches!(e, AdminError::Bind { .. }), "{e:?}");
    assert!(e.to_string().contains(&addr.to_string()), "{e}");
}

#[tokio::test]
async fn non_loopback_needs_opt_in() {
    let cfg = AdminConfig {
        listen: "0.0.0.0:0".parse().expect("addr"),
        allow_non_loopback: false,
        ..AdminConfig::default()
    };
    let e = admin::bind(&cfg).await.expect_err("refused");
    assert!(
        matches!(e, AdminError::Invalid { key: "listen", .. }),
        "{e:?}"
    );
    assert!(e.to_string().contains("allow_non_loopback"), "{e}");
}
