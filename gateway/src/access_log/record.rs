//! What one access log line says, and its JSON. The request path fills a [`Record`] with
//! what it already has (cheap clones: reference-counted bytes); when the response ends,
//! the worker writes it as a line into its own buffer (see [`super::shard`]).
//!
//! Never in a line: the token, the `Authorization` header, cookies, any other header, or
//! the query string unless `[log] query = true`. A record has no field that could hold them.

use super::json::{bytes_string, field, integer, ip, key, millis, socket_addr, string, Clock};
use crate::jwt::VerifiedToken;
use crate::tls::HandshakeFailure;
use http::header::HeaderValue;
use http::{Method, Uri, Version};
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

/// Route and upstream names by index, of one proxy (a record holds only indices), kept as
/// the line's finished `,"route":"..."` and `,"upstream":"..."` fields.
#[derive(Debug, Default)]
pub struct Names {
    routes: Vec<Box<[u8]>>,
    upstreams: Vec<Box<[u8]>>,
}

impl Names {
    pub fn new<'a>(
        routes: impl IntoIterator<Item = &'a str>,
        upstreams: impl IntoIterator<Item = &'a str>,
    ) -> Self {
        Self {
            routes: routes.into_iter().map(|n| field("route", n)).collect(),
            upstreams: upstreams
                .into_iter()
                .map(|n| field("upstream", n))
                .collect(),
        }
    }
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
    /// An index into the [`Names`] the line is written with.
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

/// A request's path and host, copied into one allocation (bytes: the host is a header's,
/// checked when the line is written, not on the request path).
#[derive(Debug, Default)]
pub struct Target {
    text: Vec<u8>,
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
        let mut text = Vec::with_capacity(path.len() + host.len());
        text.extend_from_slice(path.as_bytes());
        text.extend_from_slice(host);
        Self {
            path_len: path.len(),
            text,
        }
    }

    pub fn path(&self) -> &[u8] {
        self.text.get(..self.path_len).unwrap_or_default()
    }

    /// `None` without a host.
    pub fn host(&self) -> Option<&[u8]> {
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

/// The `protocol` field, as `http::Version`'s `Debug` names it.
fn protocol_field(v: Version) -> &'static [u8] {
    match v {
        Version::HTTP_09 => b",\"protocol\":\"HTTP/0.9\"",
        Version::HTTP_10 => b",\"protocol\":\"HTTP/1.0\"",
        Version::HTTP_11 => b",\"protocol\":\"HTTP/1.1\"",
        Version::HTTP_2 => b",\"protocol\":\"HTTP/2.0\"",
        Version::HTTP_3 => b",\"protocol\":\"HTTP/3.0\"",
        _ => b",\"protocol\":\"other\"",
    }
}

impl Record {
    /// Appends the line's JSON and a newline to `out`.
    pub(super) fn write_json(&self, out: &mut Vec<u8>, clock: &mut Clock, names: &Names) {
        clock.open_line(out, self.time);
        out.extend_from_slice(b",\"event\":\"request\"");
        key!(out, "request_id");
        bytes_string(out, self.request_id.as_bytes());
        key!(out, "client");
        ip(out, self.client);
        if let Some(port) = self.port {
            key!(out, "port");
            integer(out, port);
        }
        if let Some(tls) = self.tls {
            key!(out, "tls");
            string(out, tls.version);
            if let Some(alpn) = tls.alpn {
                key!(out, "alpn");
                string(out, alpn);
            }
        }
        out.extend_from_slice(protocol_field(self.version));
        key!(out, "method");
        string(out, self.method.as_str());
        if let Some(h) = self.target.host() {
            key!(out, "host");
            bytes_string(out, h);
        }
        key!(out, "path");
        bytes_string(out, self.target.path());
        key!(out, "status");
        integer(out, self.status);
        if let Some(route) = self.route.and_then(|i| names.routes.get(i)) {
            out.extend_from_slice(route);
        }
        if let Some(upstream) = self.upstream.and_then(|i| names.upstreams.get(i)) {
            out.extend_from_slice(upstream);
        }
        if let Some(server) = self.server {
            key!(out, "server");
            socket_addr(out, server);
        }
        key!(out, "bytes_in");
        integer(out, self.bytes_in);
        key!(out, "bytes_out");
        integer(out, self.bytes_out);
        key!(out, "duration_ms");
        millis(out, self.total);
        if let Some(d) = self.upstream_time {
            key!(out, "upstream_ms");
            millis(out, d);
        }
        if let Some(t) = &self.token {
            if let Some(sub) = t.subject() {
                key!(out, "sub");
                string(out, sub);
            }
            if let Some(iss) = t.issuer() {
                key!(out, "iss");
                string(out, iss);
            }
        }
        if let Some(reason) = self.reason {
            key!(out, "reason");
            string(out, reason);
        }
        out.extend_from_slice(b"}\n");
    }
}

impl ConnEvent {
    /// Appends the line's JSON and a newline to `out`.
    pub(super) fn write_json(&self, out: &mut Vec<u8>, clock: &mut Clock) {
        clock.open_line(out, self.time);
        let (event, reason) = match self.kind {
            ConnEventKind::HandshakeFailed(r) => ("tls_handshake_failed", r.as_str()),
            ConnEventKind::Refused(r) => ("connection_refused", r),
        };
        key!(out, "event");
        string(out, event);
        key!(out, "client");
        ip(out, self.client.ip());
        key!(out, "port");
        integer(out, self.client.port());
        key!(out, "reason");
        string(out, reason);
        out.extend_from_slice(b"}\n");
    }
}
