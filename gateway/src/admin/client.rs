//! Talking to a running gateway's admin endpoint from the command line: `/metrics` for
//! `gateway stats`, `/deny` for `gateway deny`.
//!
//! Blocking and minimal on purpose: the CLI has no runtime, and the peer is our own admin
//! endpoint. The request is HTTP/1.0, so the answer can never be chunked and ends when the
//! connection closes; sizes and times are bounded so a wrong address cannot hang the CLI.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Largest `/metrics` answer accepted.
const MAX_RESPONSE: u64 = 16 * 1024 * 1024;

/// Why `/metrics` could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("not an HTTP response")]
    NotHttp,
    #[error("HTTP status {0}")]
    Status(u16),
    #[error("response larger than {MAX_RESPONSE} bytes")]
    TooLarge,
    #[error("response is not UTF-8")]
    NotUtf8,
}

/// GETs `path` from `addr`; the body of a 200 answer.
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> Result<String, FetchError> {
    match request(addr, "GET", path, None, None, timeout)? {
        (200, body) => Ok(body),
        (status, _) => Err(FetchError::Status(status)),
    }
}

/// One request to the admin endpoint (optionally with a JSON body and a bearer token): the
/// status and the body, whatever the status.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    json_body: Option<&str>,
    token: Option<&str>,
    timeout: Duration,
) -> Result<(u16, String), FetchError> {
    let mut stream = TcpStream::connect_timeout(&addr, timeout)?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut req = format!("{method} {path} HTTP/1.0\r\nHost: {addr}\r\n");
    if let Some(t) = token {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    match json_body {
        Some(b) => req.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{b}",
            b.len()
        )),
        None => req.push_str("\r\n"),
    }
    stream.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    stream.take(MAX_RESPONSE + 1).read_to_end(&mut raw)?;
    if raw.len() as u64 > MAX_RESPONSE {
        return Err(FetchError::TooLarge);
    }
    let head_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or(FetchError::NotHttp)?;
    let head = std::str::from_utf8(&raw[..head_end]).map_err(|_| FetchError::NotHttp)?;
    let status_line = head.lines().next().unwrap_or("");
    let mut parts = status_line.split(' ');
    if !parts.next().unwrap_or("").starts_with("HTTP/1.") {
        return Err(FetchError::NotHttp);
    }
    let status: u16 = parts
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or(FetchError::NotHttp)?;
    let body = raw.split_off(head_end + 4);
    let body = String::from_utf8(body).map_err(|_| FetchError::NotUtf8)?;
    Ok((status, body))
}

/// One sample line of the Prometheus text format.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl Sample {
    /// The value of label `key`, if present.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Every well-formed sample in a Prometheus text (0.0.4) document; comments, blank lines and
/// lines that do not parse are skipped.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(parse_line)
        .collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let name = &line[..name_end];
    if name.is_empty() {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(r) = rest.strip_prefix('{') {
        rest = r;
        loop {
            rest = rest.trim_start();
            if let Some(r) = rest.strip_prefix('}') {
                rest = r;
                break;
            }
            let eq = rest.find('=')?;
            let key = rest[..eq].trim().to_owned();
            rest = rest[eq + 1..].trim_start().strip_prefix('"')?;
            let mut value = String::new();
            let mut chars = rest.char_indices();
            let end = loop {
                match chars.next()? {
                    (i, '"') => break i,
                    (_, '\\') => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        c => value.push(c),
                    },
                    (_, c) => value.push(c),
                }
            };
            labels.push((key, value));
            rest = rest[end + 1..].trim_start();
            rest = rest.strip_prefix(',').unwrap_or(rest);
        }
    }
    // The value, then an optional timestamp.
    let value = rest.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v.parse().ok()?,
    };
    Some(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_names_labels_values_and_escapes() {
        let text = "# HELP x_total X.\n# TYPE x_total counter\n\
                    x_total 3\n\
                    y{a=\"1\",b=\"q\\\"uo\\\\te\\n\"} 2.5 1700000000\n\
                    z_bucket{le=\"+Inf\"} +Inf\n\
                    w{} 7\n\
                    \n\
                    broken{a=\"1\" 3\n\
                    novalue\n";
        let s = parse(text);
        assert_eq!(s.len(), 4, "{s:?}");
        assert_eq!(s[0].name, "x_total");
        assert_eq!(s[0].value, 3.0);
        assert_eq!(s[1].label("a"), Some("1"));
        assert_eq!(s[1].label("b"), Some("q\"uo\\te\n"));
        assert_eq!(s[1].value, 2.5);
        assert_eq!(s[2].label("le"), Some("+Inf"));
        assert!(s[2].value.is_infinite());
        assert_eq!(s[3].name, "w");
        assert!(s[3].labels.is_empty());
    }

    #[test]
    fn round_trips_the_registry_output() {
        let m = crate::metrics::Metrics::new(&["a,b=\"c\"".to_owned()], &[]);
        m.request(Some(0), 201);
        let s = parse(&m.render());
        let req = s
            .iter()
            .find(|s| s.name == "gateway_requests_total")
            .expect("request series");
        assert_eq!(req.label("route"), Some("a,b=\"c\""));
        assert_eq!(req.label("status"), Some("201"));
        assert_eq!(req.value, 1.0);
    }

    #[test]
    fn closed_port_is_an_error_not_a_hang() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        drop(l);
        let e = get(addr, "/metrics", Duration::from_secs(1)).expect_err("nothing listens");
        assert!(matches!(e, FetchError::Io(_)), "{e}");
    }
}
