//! Real sockets (loopback TCP, rustls), real hyper, a real closer; only the service is a
//! small echo of the request line.

use super::*;
use crate::config::DurationSecs;
use crate::proxy::closing::Closer;
use crate::proxy::framing::Verdicts;
use crate::proxy::handler::ConnInfo;
use gateway_tests::tls::TestCa;
use http_body_util::Full;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::convert::Infallible;
use std::sync::atomic::AtomicUsize;
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

const PARK: Duration = Duration::from_millis(100);

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

type EchoFuture = Pin<Box<dyn Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send>>;

/// Answers every request with its method and target.
fn echo() -> impl Service<
    Request<Incoming>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = EchoFuture,
> + Unpin
       + Send
       + 'static {
    hyper::service::service_fn(|req: Request<Incoming>| -> EchoFuture {
        let line = format!("{} {}", req.method(), req.uri());
        Box::pin(async move { Ok(Response::new(Full::new(Bytes::from(line)))) })
    })
}

struct Server {
    addr: SocketAddr,
    protocols: Arc<Protocols>,
    closer: Arc<Closer>,
    client_tls: Option<Arc<rustls::ClientConfig>>,
    /// Connections whose serving has returned.
    done: Arc<AtomicUsize>,
    accept: tokio::task::JoinHandle<()>,
    /// hyper's timer, as a worker runs it.
    ticker: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.accept.abort();
        self.ticker.abort();
    }
}

async fn start(tls: bool, header_read: Duration) -> Server {
    start_with(tls, header_read, PARK).await
}

async fn start_with(tls: bool, header_read: Duration, park_after: Duration) -> Server {
    let cfg = ListenConfig {
        header_read_timeout: DurationSecs(header_read),
        shutdown_grace: DurationSecs(Duration::from_secs(2)),
        ..ListenConfig::default()
    };
    let timer = CoarseTimer::new();
    let mut protocols = Protocols::new(&cfg, &timer);
    let ticker = tokio::spawn(timer.run());
    protocols.park_after = park_after;
    let protocols = Arc::new(protocols);
    let closer = Closer::new(None);
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (acceptor, client_tls) = if tls {
        let ca = TestCa::new().expect("CA");
        let cert = ca.issue("localhost", 1).expect("cert");
        let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes()).expect("key");
        let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![CertificateDer::from(cert.der.clone())], key)
        .expect("server config");
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let client = ca.client_config(&[b"http/1.1"]).expect("client config");
        (
            Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))),
            Some(client),
        )
    } else {
        (None, None)
    };
    let done = Arc::new(AtomicUsize::new(0));
    let accept = tokio::spawn({
        let (protocols, closer, done) = (protocols.clone(), closer.clone(), done.clone());
        async move {
            while let Ok((stream, peer)) = listener.accept().await {
                let (protocols, closer, done) = (protocols.clone(), closer.clone(), done.clone());
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let conn = Arc::new(ConnInfo::new(peer, acceptor.is_some()));
                    let reg = closer.register(&conn);
                    let verdicts = Arc::new(Verdicts::default());
                    match acceptor {
                        Some(a) => {
                            let Ok(s) = a.accept(stream).await else {
                                return;
                            };
                            let alpn = match s.get_ref().1.alpn_protocol() {
                                Some(b"h2") => Alpn::H2,
                                Some(b"http/1.1") => Alpn::Http1,
                                _ => Alpn::None,
                            };
                            let io = FramingWatch::new(s, verdicts);
                            serve(io, alpn, echo(), &protocols, &reg, peer).await;
                        }
                        None => {
                            let io = FramingWatch::new(stream, verdicts);
                            serve(io, Alpn::None, echo(), &protocols, &reg, peer).await;
                        }
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                });
            }
        }
    });
    Server {
        addr,
        protocols,
        closer,
        client_tls,
        done,
        accept,
        ticker,
    }
}

impl Server {
    async fn connect(&self) -> Client {
        let tcp = TcpStream::connect(self.addr).await.expect("connect");
        tcp.set_nodelay(true).expect("nodelay");
        let io: Box<dyn Io> = match &self.client_tls {
            Some(cfg) => {
                let name = ServerName::try_from("localhost").expect("name");
                let s = tokio_rustls::TlsConnector::from(cfg.clone())
                    .connect(name, tcp)
                    .await
                    .expect("TLS handshake");
                Box::new(s)
            }
            None => Box::new(tcp),
        };
        Client {
            io,
            buf: Vec::new(),
        }
    }

    fn parks(&self) -> u64 {
        self.protocols.parks()
    }

    /// Waits (up to 3 s) until `n` parks have happened.
    async fn parked(&self, n: u64) -> bool {
        for _ in 0..300 {
            if self.parks() >= n {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }
}

struct Client {
    io: Box<dyn Io>,
    buf: Vec<u8>,
}

fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n")
}

impl Client {
    async fn send(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.expect("write");
        self.io.flush().await.expect("flush");
    }

    /// The next response's status and body; `None` when the connection ends first.
    async fn response(&mut self) -> Option<(u16, String)> {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).to_string();
                let status = head.get(9..12)?.parse().ok()?;
                let len = head
                    .lines()
                    .find_map(|l| {
                        let l = l.to_ascii_lowercase();
                        l.strip_prefix("content-length:")
                            .and_then(|v| v.trim().parse::<usize>().ok())
                    })
                    .unwrap_or(0);
                if self.buf.len() >= end + 4 + len {
                    let body = String::from_utf8_lossy(&self.buf[end + 4..end + 4 + len]);
                    let body = body.to_string();
                    self.buf.drain(..end + 4 + len);
                    return Some((status, body));
                }
            }
            let mut chunk = [0u8; 4096];
            match timeout(Duration::from_secs(5), self.io.read(&mut chunk)).await {
                Ok(Ok(n)) if n > 0 => self.buf.extend_from_slice(&chunk[..n]),
                _ => return None,
            }
        }
    }

    async fn ok(&mut self, path: &str) {
        self.send(get(path).as_bytes()).await;
        assert_eq!(
            self.response().await,
            Some((200, format!("GET {path}"))),
            "response to {path}"
        );
    }

    /// Reads until the server closes (up to 5 s): whether it closed cleanly (a plain end of
    /// stream: TLS close_notify on TLS), and whether it wrote anything first.
    async fn end(&mut self) -> (bool, usize) {
        let mut extra = 0;
        let mut chunk = [0u8; 1024];
        loop {
            match timeout(Duration::from_secs(5), self.io.read(&mut chunk)).await {
                Ok(Ok(0)) => return (true, extra),
                Ok(Ok(n)) => extra += n,
                Ok(Err(_)) => return (false, extra),
                Err(_) => panic!("the server did not close the connection"),
            }
        }
    }
}

async fn keep_alive_across_parks(tls: bool) {
    let srv = start(tls, Duration::from_secs(5)).await;
    let mut c = srv.connect().await;
    for i in 0..4u64 {
        c.ok(&format!("/r{i}")).await;
        assert!(srv.parked(i + 1).await, "parked after request {i}");
    }
    // Busy: requests back to back stay on one hyper connection.
    let before = srv.parks();
    for i in 0..20 {
        c.ok(&format!("/busy{i}")).await;
    }
    assert_eq!(srv.parks(), before, "no parking between busy requests");
    assert!(srv.parked(before + 1).await);
    c.ok("/last").await;
}

#[tokio::test]
async fn plain_connections_park_and_unpark_across_keep_alive_requests() {
    keep_alive_across_parks(false).await;
}

#[tokio::test]
async fn tls_connections_park_and_unpark_across_keep_alive_requests() {
    keep_alive_across_parks(true).await;
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_across_parks() {
    for tls in [false, true] {
        let srv = start(tls, Duration::from_secs(5)).await;
        let mut c = srv.connect().await;
        c.ok("/first").await;
        assert!(srv.parked(1).await);
        // Parked: three whole requests and half of a fourth in one write, the rest later.
        let mut burst = format!("{}{}{}", get("/a"), get("/b"), get("/c"));
        let fourth = get("/d");
        burst.push_str(&fourth[..10]);
        c.send(burst.as_bytes()).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
        c.send(&fourth.as_bytes()[10..]).await;
        for p in ["/a", "/b", "/c", "/d"] {
            assert_eq!(c.response().await, Some((200, format!("GET {p}"))), "{tls}");
        }
        // Requests arriving around the moment the connection parks.
        for step in 0..12u64 {
            tokio::time::sleep(PARK - Duration::from_millis(30) + Duration::from_millis(5 * step))
                .await;
            c.send(format!("{}{}", get("/x"), get("/y")).as_bytes())
                .await;
            assert_eq!(
                c.response().await,
                Some((200, "GET /x".into())),
                "{tls} {step}"
            );
            assert_eq!(
                c.response().await,
                Some((200, "GET /y".into())),
                "{tls} {step}"
            );
        }
        assert!(srv.parks() >= 2, "some of them found the connection parked");
    }
}

/// Trickles a head that never ends, a byte every 50 ms, from `after` the last response;
/// returns how long after that response the server closed.
async fn trickle(c: Client, after: Duration) -> Duration {
    let start = Instant::now();
    let (mut r, mut w) = tokio::io::split(c.io);
    let writer = tokio::spawn(async move {
        tokio::time::sleep(after).await;
        for b in b"GET /slow HTTP/1.1\r\nHost: t\r\nX-Slow: 1111111111111111111111111111111" {
            if w.write_all(&[*b]).await.is_err() || w.flush().await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    let mut chunk = [0u8; 256];
    loop {
        match timeout(Duration::from_secs(10), r.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => continue,
            Ok(_) => break,
            Err(_) => panic!("still open after 10 s"),
        }
    }
    writer.abort();
    start.elapsed()
}

#[tokio::test]
async fn a_head_trickled_across_the_park_is_closed_at_the_header_read_deadline() {
    let limit = Duration::from_millis(1000);
    for tls in [false, true] {
        // Trickling from before the park (hyper times it, no park), and from after it (the
        // parked connection keeps reading, hyper must not start its timer afresh).
        for after in [Duration::ZERO, PARK * 6] {
            let srv = start(tls, limit).await;
            let mut c = srv.connect().await;
            c.ok("/first").await;
            let parks = srv.parks();
            let closed = trickle(c, after).await;
            assert!(
                closed >= limit - Duration::from_millis(150)
                    && closed < limit + Duration::from_millis(300),
                "closed {closed:?} after the response (tls {tls}, trickle from {after:?})"
            );
            if after > PARK {
                assert_eq!(srv.parks(), parks + 1, "the trickle started parked");
            } else {
                assert_eq!(srv.parks(), parks, "a partial head is never parked");
            }
        }
    }
}

#[tokio::test]
async fn a_parked_connection_is_closed_at_the_idle_limit_without_a_byte() {
    let limit = Duration::from_millis(700);
    for tls in [false, true] {
        // Parked late: the deadline counts from when the connection went idle, not from the
        // park.
        let srv = start_with(tls, limit, Duration::from_millis(400)).await;
        let mut c = srv.connect().await;
        c.ok("/first").await;
        let start = Instant::now();
        let (_, extra) = c.end().await;
        let closed = start.elapsed();
        assert_eq!(srv.parks(), 1, "tls {tls}");
        assert_eq!(extra, 0, "nothing written on an idle timeout");
        assert!(
            closed >= limit - Duration::from_millis(100)
                && closed < limit + Duration::from_millis(250),
            "closed after {closed:?} (tls {tls})"
        );
    }
}

#[tokio::test]
async fn shutdown_closes_parked_connections_cleanly() {
    for tls in [false, true] {
        let srv = start(tls, Duration::from_secs(30)).await;
        let mut parked = srv.connect().await;
        parked.ok("/first").await;
        assert!(srv.parked(1).await);
        let start = Instant::now();
        srv.closer.shut_down();
        let (clean, extra) = parked.end().await;
        assert!(
            clean,
            "closed as hyper closes an idle connection (tls {tls})"
        );
        assert_eq!(extra, 0);
        assert!(start.elapsed() < Duration::from_secs(1));
        for _ in 0..100 {
            if srv.done.load(Ordering::SeqCst) == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(srv.done.load(Ordering::SeqCst), 1, "its task ended");
    }
}

#[tokio::test]
async fn the_preface_sniff_tells_http2_from_http1_split_or_not() {
    let srv = start(false, Duration::from_secs(5)).await;
    // The HTTP/2 preface in two writes, then an empty SETTINGS frame: the server answers
    // with its own SETTINGS frame.
    let mut c = srv.connect().await;
    c.send(&H2_PREFACE[..9]).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.send(&H2_PREFACE[9..]).await;
    c.send(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await;
    let mut frame = [0u8; 9];
    timeout(Duration::from_secs(5), c.io.read_exact(&mut frame))
        .await
        .expect("in time")
        .expect("a frame");
    assert_eq!(frame[3], 4, "a SETTINGS frame: {frame:?}");
    assert_eq!(&frame[5..9], &[0, 0, 0, 0], "on stream 0");
    // A first line that starts like the preface but is HTTP/1.1 (method PRI), split inside
    // the part the preface shares.
    let mut c = srv.connect().await;
    let req = get("/pri").replacen("GET", "PRI", 1);
    c.send(&req.as_bytes()[..6]).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.send(&req.as_bytes()[6..]).await;
    assert_eq!(c.response().await, Some((200, "PRI /pri".into())));
    // And "PRI * HTTP/1.1" goes wrong only at its version.
    let mut c = srv.connect().await;
    c.send(b"PRI * HTTP/1.1\r\nHost: t\r\n\r\n").await;
    assert_eq!(c.response().await, Some((200, "PRI *".into())));
}

#[tokio::test]
async fn a_client_closing_while_parked_gets_a_clean_close() {
    let srv = start(true, Duration::from_secs(30)).await;
    let mut c = srv.connect().await;
    c.ok("/first").await;
    assert!(srv.parked(1).await);
    c.io.shutdown().await.expect("close_notify");
    let (clean, extra) = c.end().await;
    assert!(clean);
    assert_eq!(extra, 0);
}
