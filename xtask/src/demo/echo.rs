//! The demo's upstream: a small HTTP/1.1 server on loopback that answers every request with a
//! JSON echo of its method, path, query, the `X-*` and `Forwarded` headers it received (so
//! the claim headers the gateway adds show up), whether an `Authorization` header reached it,
//! and the body size.
//!
//! Demo tooling, but robust: keep-alive, `Content-Length` and chunked bodies,
//! `Expect: 100-continue`; bounded head (16 KiB), body (1 MiB) and connection count (256);
//! idle connections closed after 60 s; bad input gets a 4xx and the connection is closed,
//! never a panic.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

const MAX_HEAD: usize = 16 * 1024;
const MAX_BODY: usize = 1024 * 1024;
const MAX_LINE: usize = 4096;
const MAX_CONNECTIONS: usize = 256;
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Granularity at which blocked reads notice a stop request.
const TICK: Duration = Duration::from_millis(250);

/// A running echo server; [`Echo::stop`] ends it.
pub struct Echo {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    active: Arc<AtomicUsize>,
    acceptor: Option<JoinHandle<()>>,
}

impl Echo {
    /// Binds `addr` (port 0 picks a free port) and serves in background threads.
    pub fn start(addr: SocketAddr) -> Result<Echo> {
        let listener =
            TcpListener::bind(addr).with_context(|| format!("binding the echo upstream {addr}"))?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let active = Arc::new(AtomicUsize::new(0));
        let acceptor = {
            let (stop, active) = (stop.clone(), active.clone());
            thread::Builder::new()
                .name("echo-accept".into())
                .spawn(move || accept_loop(listener, stop, active))
                .context("starting the echo upstream")?
        };
        Ok(Echo {
            addr,
            stop,
            active,
            acceptor: Some(acceptor),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, then waits (up to 2 s) for open connections to end.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.active.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        if self.acceptor.is_some() {
            self.shutdown();
        }
    }
}

fn accept_loop(listener: TcpListener, stop: Arc<AtomicBool>, active: Arc<AtomicUsize>) {
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(mut stream) = conn else {
            // EMFILE and friends: back off instead of spinning.
            thread::sleep(Duration::from_millis(50));
            continue;
        };
        if active.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
            let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
            let _ = stream.write_all(&response(
                503,
                "text/plain",
                b"too many connections\n",
                false,
                false,
            ));
            continue;
        }
        active.fetch_add(1, Ordering::SeqCst);
        let guard = Active(active.clone());
        let stop = stop.clone();
        let spawned = thread::Builder::new()
            .name("echo-conn".into())
            .spawn(move || {
                let _guard = guard;
                serve(stream, &stop);
            });
        // On failure the closure (and with it the guard and the stream) is dropped.
        drop(spawned);
    }
}

/// Decrements the open-connection count when a connection thread ends (even by a panic).
struct Active(Arc<AtomicUsize>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A request head as parsed.
#[derive(Debug, PartialEq)]
struct Head {
    method: String,
    target: String,
    http10: bool,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn has_token(&self, name: &str, token: &str) -> bool {
        self.header(name)
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    fn keep_alive(&self) -> bool {
        if self.http10 {
            self.has_token("connection", "keep-alive")
        } else {
            !self.has_token("connection", "close")
        }
    }
}

/// Why a request cannot be answered normally: the status to send before closing.
#[derive(Debug, PartialEq)]
struct Refusal(u16, &'static str);

/// One client connection with its read buffer.
struct Conn<'a> {
    stream: TcpStream,
    buf: Vec<u8>,
    stop: &'a AtomicBool,
    last_activity: Instant,
}

impl Conn<'_> {
    /// Reads more bytes into the buffer; `false` on EOF, error, idle timeout or stop.
    fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 8192];
        loop {
            if self.stop.load(Ordering::SeqCst) || self.last_activity.elapsed() > IDLE_TIMEOUT {
                return false;
            }
            match self.stream.read(&mut chunk) {
                Ok(0) => return false,
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    self.last_activity = Instant::now();
                    return true;
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) => {}
                Err(_) => return false,
            }
        }
    }

    /// The next line (without CRLF), at most `MAX_LINE` bytes.
    fn line(&mut self) -> Result<Option<Vec<u8>>, Refusal> {
        loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                let line = self.buf[..i].to_vec();
                self.buf.drain(..i + 2);
                return Ok(Some(line));
            }
            if self.buf.len() > MAX_LINE {
                return Err(Refusal(400, "line too long"));
            }
            if !self.fill() {
                return Ok(None);
            }
        }
    }

    /// Consumes exactly `n` bytes; `false` when the connection ended first.
    fn skip(&mut self, mut n: usize) -> bool {
        loop {
            let take = n.min(self.buf.len());
            self.buf.drain(..take);
            n -= take;
            if n == 0 {
                return true;
            }
            if !self.fill() {
                return false;
            }
        }
    }

    fn send(&mut self, bytes: &[u8]) -> bool {
        self.stream.write_all(bytes).is_ok()
    }
}

fn serve(stream: TcpStream, stop: &AtomicBool) {
    let _ = stream.set_read_timeout(Some(TICK));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(10)));
    let _ = stream.set_nodelay(true);
    let mut conn = Conn {
        stream,
        buf: Vec::new(),
        stop,
        last_activity: Instant::now(),
    };
    loop {
        match one_request(&mut conn) {
            Ok(Some(true)) => continue,
            Ok(Some(false)) | Ok(None) => break,
            Err(Refusal(status, why)) => {
                let body = format!("{why}\n");
                let _ = conn.send(&response(
                    status,
                    "text/plain",
                    body.as_bytes(),
                    false,
                    false,
                ));
                break;
            }
        }
    }
    let _ = conn.stream.shutdown(Shutdown::Both);
}

/// Reads and answers one request. `Ok(Some(keep_alive))`, `Ok(None)` when the connection
/// ended (or must end) without a response owed, `Err` for a refusal to send before closing.
fn one_request(conn: &mut Conn) -> Result<Option<bool>, Refusal> {
    let head_len = loop {
        // Leading empty lines before a request line are allowed (RFC 9112 §2.2).
        while conn.buf.starts_with(b"\r\n") {
            conn.buf.drain(..2);
        }
        if let Some(i) = find(&conn.buf, b"\r\n\r\n") {
            break i + 4;
        }
        if conn.buf.len() > MAX_HEAD {
            return Err(Refusal(431, "request head too large"));
        }
        if !conn.fill() {
            return Ok(None);
        }
    };
    if head_len > MAX_HEAD {
        return Err(Refusal(431, "request head too large"));
    }
    let head = parse_head(&conn.buf[..head_len])?;
    conn.buf.drain(..head_len);

    let chunked = match head.header("transfer-encoding").last() {
        None => false,
        Some(te)
            if te
                .rsplit(',')
                .next()
                .is_some_and(|c| c.trim().eq_ignore_ascii_case("chunked")) =>
        {
            true
        }
        Some(_) => return Err(Refusal(501, "unsupported transfer-encoding")),
    };
    let lengths: Vec<&str> = head.header("content-length").collect();
    if chunked && !lengths.is_empty() {
        return Err(Refusal(400, "both content-length and transfer-encoding"));
    }
    let length = match lengths.as_slice() {
        [] => 0,
        [one] => one
            .trim()
            .parse::<usize>()
            .map_err(|_| Refusal(400, "bad content-length"))?,
        _ => return Err(Refusal(400, "several content-length headers")),
    };
    if length > MAX_BODY {
        return Err(Refusal(413, "body too large"));
    }
    if head.has_token("expect", "100-continue")
        && !head.http10
        && !conn.send(b"HTTP/1.1 100 Continue\r\n\r\n")
    {
        return Ok(None);
    }
    let body_bytes = if chunked {
        match read_chunked(conn)? {
            Some(n) => n,
            None => return Ok(None),
        }
    } else {
        if !conn.skip(length) {
            return Ok(None);
        }
        length
    };

    let keep_alive = head.keep_alive();
    let body = echo_json(&head, body_bytes);
    let bytes = response(
        200,
        "application/json",
        body.as_bytes(),
        keep_alive,
        head.method == "HEAD",
    );
    if !conn.send(&bytes) {
        return Ok(None);
    }
    Ok(Some(keep_alive))
}

/// Reads a chunked body (RFC 9112 §7.1) and its trailers; returns its decoded size.
fn read_chunked(conn: &mut Conn) -> Result<Option<usize>, Refusal> {
    let mut total = 0usize;
    loop {
        let Some(line) = conn.line()? else {
            return Ok(None);
        };
        let line = String::from_utf8_lossy(&line);
        let size = line.split(';').next().unwrap_or("").trim();
        if size.is_empty() || size.len() > 8 {
            return Err(Refusal(400, "bad chunk size"));
        }
        let size = usize::from_str_radix(size, 16).map_err(|_| Refusal(400, "bad chunk size"))?;
        if size == 0 {
            // Trailers until an empty line.
            let mut trailer_bytes = 0usize;
            loop {
                let Some(t) = conn.line()? else {
                    return Ok(None);
                };
                if t.is_empty() {
                    return Ok(Some(total));
                }
                trailer_bytes += t.len();
                if trailer_bytes > MAX_HEAD {
                    return Err(Refusal(431, "trailers too large"));
                }
            }
        }
        total = total.saturating_add(size);
        if total > MAX_BODY {
            return Err(Refusal(413, "body too large"));
        }
        if !conn.skip(size) {
            return Ok(None);
        }
        match conn.line()? {
            Some(l) if l.is_empty() => {}
            Some(_) => return Err(Refusal(400, "chunk not followed by CRLF")),
            None => return Ok(None),
        }
    }
}

fn parse_head(bytes: &[u8]) -> Result<Head, Refusal> {
    let text = String::from_utf8_lossy(bytes);
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or("");
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Refusal(400, "bad request line"));
    };
    if method.is_empty()
        || !method
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    {
        return Err(Refusal(400, "bad method"));
    }
    if target.is_empty() || target.bytes().any(|b| b.is_ascii_control()) {
        return Err(Refusal(400, "bad request target"));
    }
    let http10 = match version {
        "HTTP/1.1" => false,
        "HTTP/1.0" => true,
        _ => return Err(Refusal(505, "HTTP/1.0 and HTTP/1.1 only")),
    };
    let mut headers = Vec::new();
    for line in lines {
        if line.is_empty() {
            continue;
        }
        if line.starts_with([' ', '\t']) {
            return Err(Refusal(400, "obsolete line folding"));
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err(Refusal(400, "header line without a colon"));
        };
        if name.is_empty()
            || name
                .bytes()
                .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(Refusal(400, "bad header name"));
        }
        headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
    }
    Ok(Head {
        method: method.to_string(),
        target: target.to_string(),
        http10,
        headers,
    })
}

/// The echo document, pretty-printed so `curl` output reads well.
fn echo_json(head: &Head, body_bytes: usize) -> String {
    let (path, query) = match head.target.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (head.target.as_str(), None),
    };
    let mut out = String::from("{\n");
    out.push_str(&format!("  \"method\": {},\n", json_str(&head.method)));
    out.push_str(&format!("  \"path\": {},\n", json_str(path)));
    if let Some(q) = query {
        out.push_str(&format!("  \"query\": {},\n", json_str(q)));
    }
    out.push_str("  \"headers\": {");
    let shown: Vec<&(String, String)> = head
        .headers
        .iter()
        .filter(|(n, _)| n.starts_with("x-") || n == "forwarded")
        .collect();
    for (i, (name, value)) in shown.iter().enumerate() {
        let sep = if i == 0 { "\n" } else { ",\n" };
        out.push_str(&format!("{sep}    {}: {}", json_str(name), json_str(value)));
    }
    out.push_str(if shown.is_empty() { "},\n" } else { "\n  },\n" });
    let auth = head.header("authorization").next().is_some();
    out.push_str(&format!("  \"authorization_forwarded\": {auth},\n"));
    out.push_str(&format!("  \"body_bytes\": {body_bytes}\n}}\n"));
    out
}

fn json_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn response(
    status: u16,
    content_type: &str,
    body: &[u8],
    keep_alive: bool,
    head_only: bool,
) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        413 => "Content Too Large",
        431 => "Request Header Fields Too Large",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        505 => "HTTP Version Not Supported",
        _ => "",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{}\r\n",
        body.len(),
        if keep_alive { "" } else { "Connection: close\r\n" }
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body);
    }
    out
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, SocketAddrV4};

    fn start() -> Echo {
        Echo::start(SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::LOCALHOST, 0))).unwrap()
    }

    /// Sends raw bytes, half-closes, returns everything the server sent.
    fn exchange(echo: &Echo, request: &[u8]) -> String {
        let mut s = TcpStream::connect(echo.addr()).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s.write_all(request).unwrap();
        s.shutdown(Shutdown::Write).unwrap();
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn echoes_method_path_query_and_x_headers() {
        let echo = start();
        let out = exchange(
            &echo,
            b"GET /api/hello?a=1 HTTP/1.1\r\nHost: x\r\nX-Auth-Sub: alice\r\nX-Auth-Scope: read write\r\nAuthorization: Bearer t\r\nConnection: close\r\n\r\n",
        );
        assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
        assert!(out.contains("\"method\": \"GET\""), "{out}");
        assert!(out.contains("\"path\": \"/api/hello\""), "{out}");
        assert!(out.contains("\"query\": \"a=1\""), "{out}");
        assert!(out.contains("\"x-auth-sub\": \"alice\""), "{out}");
        assert!(out.contains("\"x-auth-scope\": \"read write\""), "{out}");
        assert!(out.contains("\"authorization_forwarded\": true"), "{out}");
        assert!(!out.contains("\"host\""), "{out}");
        echo.stop();
    }

    #[test]
    fn keep_alive_serves_several_requests_with_bodies() {
        let echo = start();
        let out = exchange(
            &echo,
            b"POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloPOST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n2\r\nde\r\n0\r\nT: v\r\n\r\nHEAD /c HTTP/1.1\r\n\r\n",
        );
        assert_eq!(out.matches("HTTP/1.1 200 OK").count(), 3, "{out}");
        assert!(out.contains("\"path\": \"/a\""), "{out}");
        assert!(out.contains("\"body_bytes\": 5"), "{out}");
        assert!(out.contains("\"path\": \"/b\""), "{out}");
        assert!(out.contains("\"body_bytes\": 5"), "{out}");
        assert!(!out.contains("\"path\": \"/c\""), "HEAD has no body: {out}");
        echo.stop();
    }

    #[test]
    fn bad_input_is_refused_and_closed() {
        let echo = start();
        for (req, status) in [
            (&b"GARBAGE\r\n\r\n"[..], "400"),
            (b"GET / HTTP/2.0\r\n\r\n", "505"),
            (b"GET / HTTP/1.1\r\nNoColon\r\n\r\n", "400"),
            (b"GET / HTTP/1.1\r\n folded\r\n\r\n", "400"),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                "400",
            ),
            (b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n", "400"),
            (
                b"POST / HTTP/1.1\r\nContent-Length: 99999999999\r\n\r\n",
                "413",
            ),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", "501"),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
                "400",
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
                "400",
            ),
            (
                b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nfffffff\r\n",
                "413",
            ),
        ] {
            let out = exchange(&echo, req);
            assert!(
                out.starts_with(&format!("HTTP/1.1 {status} ")),
                "{}: {out}",
                String::from_utf8_lossy(req)
            );
            assert!(out.contains("Connection: close"), "{out}");
        }
        let mut huge = b"GET / HTTP/1.1\r\nX-A: ".to_vec();
        huge.extend(vec![b'a'; MAX_HEAD + 10]);
        let out = exchange(&echo, &huge);
        assert!(out.starts_with("HTTP/1.1 431 "), "{out}");
        // Truncated input: no response, no hang.
        assert_eq!(exchange(&echo, b"GET / HTTP/1.1\r\nHost"), "");
        assert_eq!(
            exchange(&echo, b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nab"),
            ""
        );
        // Still serving.
        let out = exchange(&echo, b"GET /ok HTTP/1.0\r\n\r\n");
        assert!(out.starts_with("HTTP/1.1 200 OK"), "{out}");
        assert!(out.contains("Connection: close"), "HTTP/1.0 closes: {out}");
        echo.stop();
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_str("a\"b\\c\n\u{1}"), "\"a\\\"b\\\\c\\n\\u0001\"");
    }
}
