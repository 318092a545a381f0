//! What one access log line says, and its JSON. The request path fills a [`Record`] with
//! what it already has (cheap clones: reference-counted bytes and `Arc`s); the writer
//! thread turns it into text, so formatting costs the workers nothing.
//!
//! Never in a line: the token, the `Authorization` header, cookies, any other header, or
//! the query string unless `[log] query = true`. A record has no field that could hold them.

use crate::jwt::VerifiedToken;
use crate::tls::HandshakeFailure;
use http::header::HeaderValue;
use http::{Method, Uri, Version};
use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// The TLS side of a connection, as the access log names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsInfo {
    /// `TLSv1.2` or `TLSv1.3`.
    pub version: &'static str,
    /// The negotiated ALPN protocol (`h2`, `http/1.1`), `None` without ALPN.
    pub alpn: Option<&'static str>,
}

impl TlsInfo {
    /// What a finished rustls handshake negotiated.
    pub fn of(conn: &rustls::ServerConnection) -> Self {
        let version = match conn.protocol_version() {
            Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
            Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
            _ => "other",
        };
        let alpn = match conn.alpn_protocol() {
            Some(b"h2") => Some("h2"),
            Some(b"http/1.1") => Some("http/1.1"),
            Some(_) => Some("other"),
            None => None,
        };
        Self { version, alpn }
    }
}

/// Route and upstream names by index, shared by every record of one proxy (one `Arc`
/// increment per request instead of copying names).
#[derive(Debug, Default)]
pub struct Names {
    pub routes: Vec<Box<str>>,
    pub upstreams: Vec<Box<str>>,
}

/// One request, as logged when its response has been sent.
#[derive(Debug)]
pub struct Record {
    /// When the request's head arrived.
    pub time: SystemTime,
    pub request_id: HeaderValue,
    /// The client: after a trusted proxy's PROXY header or `X-Forwarded-For`.
    pub client: IpAddr,
    /// The client's port, when the connection is the client's own (or a PROXY header named it).
    pub port: Option<u16>,
    pub tls: Option<TlsInfo>,
    pub version: Version,
    pub method: Method,
    /// The path as the client sent it (with the query when `[log] query = true`), then the
    /// host: copied, because holding pieces of the request would pin the connection's read
    /// buffer until the line is written, and make the server allocate a new one for every
    /// request.
    pub target: Target,
    pub status: u16,
    pub names: Arc<Names>,
    pub route: Option<usize>,
    pub upstream: Option<usize>,
    /// The upstream server that got the request.
    pub server: Option<SocketAddr>,
    /// Request body bytes passed upstream by the time its response head arrived.
    pub bytes_in: u64,
    /// Response body bytes sent to the client.
    pub bytes_out: u64,
    /// From the request's head until the end of its response body.
    pub total: Duration,
    /// From sending upstream until the upstream's response head.
    pub upstream_time: Option<Duration>,
    /// The verified token, for its `sub` and `iss`.
    pub token: Option<Arc<VerifiedToken>>,
    /// Why the gateway answered itself: a denial reason (`expired`, `insufficient_scope`,
    /// ...) or the refusal's error code.
    pub reason: Option<&'static str>,
}

/// A request's path and host, copied into one allocation.
#[derive(Debug, Default)]
pub struct Target {
    text: String,
    path_len: usize,
}

impl Target {
    /// `uri`'s path (and query if `query`), and its host or else the `Host` header.
    pub fn of(uri: &Uri, host_header: Option<&HeaderValue>, query: bool) -> Self {
        let path = match (query, uri.path_and_query()) {
            (true, Some(pq)) => pq.as_str(),
            _ => uri.path(),
        };
        let host = uri
            .host()
            .map(str::as_bytes)
            .or(host_header.map(HeaderValue::as_bytes))
            .unwrap_or_default();
        let mut text = String::with_capacity(path.len() + host.len());
        text.push_str(path);
        text.push_str(&String::from_utf8_lossy(host));
        Self {
            path_len: path.len(),
            text,
        }
    }

    pub fn path(&self) -> &str {
        self.text.get(..self.path_len).unwrap_or_default()
    }

    /// `None` without a host.
    pub fn host(&self) -> Option<&str> {
        self.text.get(self.path_len..).filter(|h| !h.is_empty())
    }
}

/// A connection that ended before any request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnEvent {
    pub time: SystemTime,
    pub kind: ConnEventKind,
    pub client: SocketAddr,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnEventKind {
    /// The TLS handshake failed.
    HandshakeFailed(HandshakeFailure),
    /// Closed at accept; the reason is one of [`crate::metrics::REFUSAL_REASONS`].
    Refused(&'static str),
}

/// A line for the writer.
#[derive(Debug)]
pub enum Line {
    Request(Box<Record>),
    Conn(ConnEvent),
}

impl Line {
    /// Appends the line's JSON and a newline to `out`.
    pub fn write_json(&self, out: &mut Vec<u8>) {
        match self {
            Line::Request(r) => r.write_json(out),
            Line::Conn(e) => e.write_json(out),
        }
        out.push(b'\n');
    }
}

/// `"key":` with the separator before it (every line starts with `time`).
fn key(out: &mut Vec<u8>, k: &str) {
    out.push(b',');
    out.push(b'"');
    out.extend_from_slice(k.as_bytes());
    out.extend_from_slice(b"\":");
}

/// A JSON string, escaped; bytes that are not UTF-8 are replaced.
fn string(out: &mut Vec<u8>, s: &str) {
    // Writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

fn bytes_string(out: &mut Vec<u8>, b: &[u8]) {
    string(out, &String::from_utf8_lossy(b));
}

fn time(out: &mut Vec<u8>, t: SystemTime) {
    out.extend_from_slice(b"{\"time\":\"");
    let _ = write!(out, "{}", humantime::format_rfc3339_millis(t));
    out.push(b'"');
}

fn millis(out: &mut Vec<u8>, d: Duration) {
    let _ = write!(out, "{:.3}", d.as_secs_f64() * 1e3);
}

impl Record {
    fn write_json(&self, out: &mut Vec<u8>) {
        time(out, self.time);
        out.extend_from_slice(b",\"event\":\"request\"");
        key(out, "request_id");
        bytes_string(out, self.request_id.as_bytes());
        key(out, "client");
        let _ = write!(out, "\"{}\"", self.client);
        if let Some(port) = self.port {
            key(out, "port");
            let _ = write!(out, "{port}");
        }
        if let Some(tls) = self.tls {
            key(out, "tls");
            string(out, tls.version);
            if let Some(alpn) = tls.alpn {
                key(out, "alpn");
                string(out, alpn);
            }
        }
        key(out, "protocol");
        let _ = write!(out, "\"{:?}\"", self.version);
        key(out, "method");
        string(out, self.method.as_str());
        if let Some(h) = self.target.host() {
            key(out, "host");
            string(out, h);
        }
        key(out, "path");
        string(out, self.target.path());
        key(out, "status");
        let _ = write!(out, "{}", self.status);
        if let Some(name) = self.route.and_then(|i| self.names.routes.get(i)) {
            key(out, "route");
            string(out, name);
        }
        if let Some(name) = self.upstream.and_then(|i| self.names.upstreams.get(i)) {
            key(out, "upstream");
            string(out, name);
        }
        if let Some(server) = self.server {
            key(out, "server");
            let _ = write!(out, "\"{server}\"");
        }
        key(out, "bytes_in");
        let _ = write!(out, "{}", self.bytes_in);
        key(out, "bytes_out");
        let _ = write!(out, "{}", self.bytes_out);
        key(out, "duration_ms");
        millis(out, self.total);
        if let Some(d) = self.upstream_time {
            key(out, "upstream_ms");
            millis(out, d);
        }
        if let Some(t) = &self.token {
            if let Some(sub) = t.subject() {
                key(out, "sub");
                string(out, sub);
            }
            if let Some(iss) = t.issuer() {
                key(out, "iss");
                string(out, iss);
            }
        }
        if let Some(reason) = self.reason {
            key(out, "reason");
            string(out, reason);
        }
        out.push(b'}');
    }
}

impl ConnEvent {
    fn write_json(&self, out: &mut Vec<u8>) {
        time(out, self.time);
        let (event, reason) = match self.kind {
            ConnEventKind::HandshakeFailed(r) => ("tls_handshake_failed", r.as_str()),
            ConnEventKind::Refused(r) => ("connection_refused", r),
        };
        key(out, "event");
        string(out, event);
        key(out, "client");
        let _ = write!(out, "\"{}\"", self.client.ip());
        key(out, "port");
        let _ = write!(out, "{}", self.client.port());
        key(out, "reason");
        string(out, reason);
        out.push(b'}');
    }
}
