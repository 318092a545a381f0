//! Real HTTP clients for the proxy's tests: hyper's HTTP/1.1 and HTTP/2 client connections,
//! over rustls (trusting only the test CA, ALPN `http/1.1` or `h2`) or plain TCP, plus raw
//! TCP exchanges for requests that a well-behaved client cannot send.
//!
//! Every exchange is bounded in time, so a test fails instead of hanging.

use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_rustls::TlsConnector;

/// How long one request (connect, handshake, response and body) may take by default.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// HTTP version of a connection. Over TLS it is negotiated with ALPN (and checked); over
/// plain TCP HTTP/2 uses prior knowledge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    H1,
    H2,
}

impl Proto {
    pub const BOTH: [Proto; 2] = [Proto::H1, Proto::H2];

    fn alpn(self) -> &'static [u8] {
        match self {
            Proto::H1 => b"http/1.1",
            Proto::H2 => b"h2",
        }
    }
}

/// Where and how to connect: one address, TLS (with a client configuration per protocol) or
/// plain.
#[derive(Clone)]
pub struct Client {
    addr: SocketAddr,
    tls: Option<(Arc<ClientConfig>, Arc<ClientConfig>)>,
}

impl Client {
    /// TLS to `addr` with server name `localhost`; `h1` must offer only `http/1.1` and `h2`
    /// only `h2` (see [`crate::tls::TestCa::client_config`]).
    pub fn tls(addr: SocketAddr, h1: Arc<ClientConfig>, h2: Arc<ClientConfig>) -> Self {
        Self {
            addr,
            tls: Some((h1, h2)),
        }
    }

    pub fn plain(addr: SocketAddr) -> Self {
        Self { addr, tls: None }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// A new connection (TCP, TLS handshake, HTTP handshake).
    pub async fn connect(&self, proto: Proto) -> Result<Conn> {
        tokio::time::timeout(REQUEST_TIMEOUT, self.connect_inner(proto))
            .await
            .map_err(|_| anyhow!("connecting to {} timed out", self.addr))?
    }

    async fn connect_inner(&self, proto: Proto) -> Result<Conn> {
        let tcp = tokio::net::TcpStream::connect(self.addr)
            .await
            .with_context(|| format!("connect to {}", self.addr))?;
        tcp.set_nodelay(true)?;
        let authority = format!("localhost:{}", self.addr.port());
        let Some((h1, h2)) = &self.tls else {
            let (sender, task) = Sender::handshake(proto, TokioIo::new(tcp)).await?;
            return Ok(Conn {
                sender,
                task,
                proto,
                scheme: "http",
                authority,
                peer_cert: None,
            });
        };
        let config = match proto {
            Proto::H1 => h1.clone(),
            Proto::H2 => h2.clone(),
        };
        let name = ServerName::try_from("localhost").expect("valid name");
        let stream = TlsConnector::from(config)
            .connect(name, tcp)
            .await
            .with_context(|| format!("TLS handshake with {}", self.addr))?;
        let (_, session) = stream.get_ref();
        let alpn = session.alpn_protocol().map(<[u8]>::to_vec);
        if alpn.as_deref() != Some(proto.alpn()) {
            bail!(
                "ALPN: asked for {:?}, the server chose {:?}",
                String::from_utf8_lossy(proto.alpn()),
                alpn.map(|a| String::from_utf8_lossy(&a).into_owned())
            );
        }
        let peer_cert = session
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec());
        let (sender, task) = Sender::handshake(proto, TokioIo::new(stream)).await?;
        Ok(Conn {
            sender,
            task,
            proto,
            scheme: "https",
            authority,
            peer_cert,
        })
    }

    /// One request on a new connection.
    pub async fn send(&self, proto: Proto, req: Req) -> Result<Reply> {
        let mut conn = self.connect(proto).await?;
        conn.send(req).await
    }
}

enum Sender {
    H1(http1::SendRequest<Full<Bytes>>),
    H2(http2::SendRequest<Full<Bytes>>),
}

impl Sender {
    /// The sender, and the task driving the connection (it ends when the connection does).
    async fn handshake<T>(
        proto: Proto,
        io: TokioIo<T>,
    ) -> Result<(Self, tokio::task::JoinHandle<()>)>
    where
        T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        Ok(match proto {
            Proto::H1 => {
                let (sender, conn) = http1::handshake(io).await.context("HTTP/1.1 handshake")?;
                let task = tokio::spawn(async move {
                    let _ = conn.await;
                });
                (Sender::H1(sender), task)
            }
            Proto::H2 => {
                let (sender, conn) = http2::handshake(TokioExecutor::new(), io)
                    .await
                    .context("HTTP/2 handshake")?;
                let task = tokio::spawn(async move {
                    let _ = conn.await;
                });
                (Sender::H2(sender), task)
            }
        })
    }
}

/// One open client connection.
pub struct Conn {
    sender: Sender,
    /// Drives the connection; finished once either side has closed it.
    task: tokio::task::JoinHandle<()>,
    proto: Proto,
    scheme: &'static str,
    authority: String,
    /// The leaf certificate the server presented (TLS only), in DER.
    pub peer_cert: Option<Vec<u8>>,
}

impl Conn {
    pub fn proto(&self) -> Proto {
        self.proto
    }

    /// Waits up to `timeout` for the connection to end (the server closed it, for HTTP/2
    /// after a GOAWAY); returns how long that took, or `None` if it is still open.
    pub async fn ended_within(&mut self, timeout: Duration) -> Option<Duration> {
        let started = Instant::now();
        tokio::time::timeout(timeout, &mut self.task)
            .await
            .ok()
            .map(|_| started.elapsed())
    }

    /// Sends `req` on this connection and reads the whole response.
    pub async fn send(&mut self, req: Req) -> Result<Reply> {
        let timeout = req.timeout;
        tokio::time::timeout(timeout, self.send_inner(req))
            .await
            .map_err(|_| anyhow!("no complete response within {timeout:?}"))?
    }

    async fn send_inner(&mut self, req: Req) -> Result<Reply> {
        let uri = match self.proto {
            // Origin form, exactly as given (`//api`, `/%2e/api` stay as they are).
            Proto::H1 => req.path.clone(),
            Proto::H2 => format!("{}://{}{}", self.scheme, self.authority, req.path),
        };
        let mut builder = Request::builder().method(req.method.clone()).uri(&uri);
        if self.proto == Proto::H1 {
            builder = builder.header(http::header::HOST, &self.authority);
        }
        let mut request = builder
            .body(Full::new(req.body.clone()))
            .with_context(|| format!("build request {} {uri}", req.method))?;
        for (name, value) in &req.headers {
            request.headers_mut().append(
                HeaderName::from_bytes(name.as_bytes())?,
                HeaderValue::from_str(value)?,
            );
        }
        let resp = match &mut self.sender {
            Sender::H1(s) => {
                s.ready().await.context("connection not ready")?;
                s.send_request(request).await
            }
            Sender::H2(s) => {
                s.ready().await.context("connection not ready")?;
                s.send_request(request).await
            }
        }
        .with_context(|| format!("{} {}", req.method, req.path))?;
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.context("read the body")?.to_bytes();
        Ok(Reply {
            status: parts.status,
            version: parts.version,
            headers: parts.headers,
            body,
        })
    }
}

/// A request to send: method, path (sent exactly as written), headers, body.
#[derive(Debug, Clone)]
pub struct Req {
    pub method: Method,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    pub timeout: Duration,
}

impl Req {
    pub fn new(method: &str, path: &str) -> Self {
        Self {
            method: Method::from_bytes(method.as_bytes()).expect("valid method"),
            path: path.to_string(),
            headers: Vec::new(),
            body: Bytes::new(),
            timeout: REQUEST_TIMEOUT,
        }
    }

    pub fn get(path: &str) -> Self {
        Self::new("GET", path)
    }

    /// Adds a header (repeat the name to send it twice).
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_string(), value.to_string()));
        self
    }

    pub fn bearer(self, token: &str) -> Self {
        self.header("authorization", &format!("Bearer {token}"))
    }

    pub fn body(mut self, body: &str) -> Self {
        self.body = Bytes::from(body.to_string());
        self
    }

    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// A complete response.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// The only value of header `name` (fails the test if it is repeated).
    pub fn header(&self, name: &str) -> Option<&str> {
        let mut all = self.headers.get_all(name).iter();
        let first = all.next()?;
        assert!(all.next().is_none(), "header {name} repeated in {self:?}");
        Some(first.to_str().expect("ASCII header"))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The body as JSON (fails the test with the body if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {:?}", self.text()))
    }
}

/// Raw TCP: connects to `addr`, writes `request`, and reads until the server closes the
/// connection or `timeout` passes. Returns what was read and whether the server closed
/// (EOF or reset) before the timeout.
pub fn raw_exchange(addr: SocketAddr, request: &[u8], timeout: Duration) -> Result<RawReply> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(3))
        .with_context(|| format!("connect to {addr}"))?;
    s.write_all(request).context("write the request")?;
    Ok(read_until_closed(&mut s, timeout))
}

/// [`raw_exchange`] over TLS: the handshake with `config` (server name `localhost`), then
/// `request` as is, then reading until the server closes (close_notify, EOF or reset) or
/// `timeout` passes. `elapsed` counts from the end of the handshake.
pub async fn raw_tls_exchange(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    request: &[u8],
    timeout: Duration,
) -> Result<RawReply> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connect to {addr}"))?;
    let name = ServerName::try_from("localhost").expect("valid name");
    let mut tls = TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .with_context(|| format!("TLS handshake with {addr}"))?;
    tls.write_all(request).await.context("write the request")?;
    tls.flush().await.context("flush the request")?;
    let started = Instant::now();
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    let closed = tokio::time::timeout(timeout, async {
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => bytes.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .is_ok();
    Ok(RawReply {
        bytes,
        closed,
        elapsed: started.elapsed(),
    })
}

/// What a raw exchange read.
#[derive(Debug)]
pub struct RawReply {
    pub bytes: Vec<u8>,
    /// The server closed (EOF or reset) before the deadline.
    pub closed: bool,
    /// When the server closed, counted from the start of the read.
    pub elapsed: Duration,
}

impl RawReply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    /// The status code of the first response, if a status line arrived.
    pub fn status(&self) -> Option<u16> {
        let text = self.text();
        let line = text.lines().next()?;
        let mut parts = line.split(' ');
        if !parts.next()?.starts_with("HTTP/1.") {
            return None;
        }
        parts.next()?.parse().ok()
    }
}

/// Reads from `s` until EOF, a reset, or `timeout`.
pub fn read_until_closed(s: &mut TcpStream, timeout: Duration) -> RawReply {
    let started = Instant::now();
    let deadline = started + timeout;
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return RawReply {
                bytes,
                closed: false,
                elapsed: started.elapsed(),
            };
        }
        s.set_read_timeout(Some(left)).expect("set read timeout");
        match s.read(&mut buf) {
            Ok(0) => {
                return RawReply {
                    bytes,
                    closed: true,
                    elapsed: started.elapsed(),
                }
            }
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => {
                // Reset by the server: closed too.
                return RawReply {
                    bytes,
                    closed: true,
                    elapsed: started.elapsed(),
                };
            }
        }
    }
}
