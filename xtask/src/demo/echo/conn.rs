//! One client connection: a buffered reader with the idle limit, then requests one after the
//! other (keep-alive), each head parsed, its body read (`Content-Length` or chunked) and
//! answered with the echo; a refusal is answered and closes the connection.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::answer::{echo_json, response};
use super::head::{parse_head, Refusal};
use super::{IDLE_TIMEOUT, MAX_BODY, MAX_HEAD, MAX_LINE, TICK};

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

pub(super) fn serve(stream: TcpStream, stop: &AtomicBool) {
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

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
