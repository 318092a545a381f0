//! Talking to a running gateway's admin endpoint from the command line: `/metrics` for
//! `gateway stats`, `/deny` for `gateway deny`.
//!
//! Blocking and minimal on purpose: the CLI has no runtime, and the peer is our own admin
//! endpoint. The request is HTTP/1.0, so the answer can never be chunked and ends when the
//! connection closes; sizes and times are bounded so a wrong address cannot hang the CLI.
//!
//! The endpoint is reached over its Unix socket when there is one (`[admin] socket`): the
//! socket's file permissions say who may talk to it, whereas anyone on the host may bind a
//! free loopback port first and collect the API token the CLI sends there.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Where the admin endpoint is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Tcp(a) => write!(f, "{a}"),
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// What the command line said about the endpoint, and what it falls back on.
#[derive(Debug, Default)]
pub struct Choice<'a> {
    /// `--admin-socket`.
    pub socket: Option<&'a Path>,
    /// `--admin`.
    pub addr: Option<SocketAddr>,
    /// The config's `[admin]`, when a config was given (`Some(None)`: it has none).
    pub config: Option<Option<&'a crate::config::admin::AdminConfig>>,
    /// Neither a config nor a pin path was given: the default places apply.
    pub defaults: bool,
}

impl Choice<'_> {
    /// `--admin-socket`, `--admin`, the config's `[admin] socket` then `listen`; with no
    /// config, the default socket when it exists, else the default address.
    pub fn endpoint(&self) -> Option<Endpoint> {
        use crate::config::admin::{DEFAULT_LISTEN, DEFAULT_SOCKET};
        if let Some(p) = self.socket {
            return Some(Endpoint::Unix(p.to_path_buf()));
        }
        if let Some(a) = self.addr {
            return Some(Endpoint::Tcp(a));
        }
        match self.config {
            Some(Some(cfg)) => Some(match &cfg.socket {
                Some(p) => Endpoint::Unix(p.clone()),
                None => Endpoint::Tcp(cfg.listen),
            }),
            Some(None) => None,
            None if !self.defaults => None,
            None if Path::new(DEFAULT_SOCKET).exists() => {
                Some(Endpoint::Unix(PathBuf::from(DEFAULT_SOCKET)))
            }
            None => Some(Endpoint::Tcp(DEFAULT_LISTEN)),
        }
    }
}

/// A connected stream of either kind.
enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Endpoint {
    fn connect(&self, timeout: Duration) -> std::io::Result<Conn> {
        Ok(match self {
            Endpoint::Tcp(a) => {
                let s = TcpStream::connect_timeout(a, timeout)?;
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))?;
                Conn::Tcp(s)
            }
            Endpoint::Unix(p) => {
                let s = UnixStream::connect(p)?;
                s.set_read_timeout(Some(timeout))?;
                s.set_write_timeout(Some(timeout))?;
                Conn::Unix(s)
            }
        })
    }

    /// Whether something accepts connections there now.
    pub fn answers(&self, timeout: Duration) -> bool {
        self.connect(timeout).is_ok()
    }

    /// The Host header: the address, or `localhost` for the socket (the endpoint accepts
    /// only these, against DNS rebinding).
    fn host(&self) -> String {
        match self {
            Endpoint::Tcp(a) => a.to_string(),
            Endpoint::Unix(_) => "localhost".into(),
        }
    }
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.read(buf),
            Conn::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self {
            Conn::Tcp(s) => s.write(buf),
            Conn::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Conn::Tcp(s) => s.flush(),
            Conn::Unix(s) => s.flush(),
        }
    }
}

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

impl From<SocketAddr> for Endpoint {
    fn from(a: SocketAddr) -> Self {
        Endpoint::Tcp(a)
    }
}

impl From<&Endpoint> for Endpoint {
    fn from(e: &Endpoint) -> Self {
        e.clone()
    }
}

/// GETs `path` from `addr`; the body of a 200 answer.
pub fn get(addr: impl Into<Endpoint>, path: &str, timeout: Duration) -> Result<String, FetchError> {
    match request(&addr.into(), "GET", path, None, None, timeout)? {
        (200, body) => Ok(body),
        (status, _) => Err(FetchError::Status(status)),
    }
}

/// One request to the admin endpoint (optionally with a JSON body and a bearer token): the
/// status and the body, whatever the status.
pub fn request(
    addr: &Endpoint,
    method: &str,
    path: &str,
    json_body: Option<&str>,
    token: Option<&str>,
    timeout: Duration,
) -> Result<(u16, String), FetchError> {
    let mut stream = addr.connect(timeout)?;
    let mut req = format!("{method} {path} HTTP/1.0\r\nHost: {}\r\n", addr.host());
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
    fn the_socket_comes_first_then_the_address() {
        use crate::config::admin::{AdminConfig, DEFAULT_LISTEN};
        let tcp: SocketAddr = "127.0.0.1:7000".parse().expect("addr");
        let sock = Path::new("/tmp/flag.sock");
        let with_socket = AdminConfig {
            socket: Some(PathBuf::from("/run/x/admin.sock")),
            ..AdminConfig::default()
        };
        let without = AdminConfig::default();
        let pick = |c: Choice<'_>| c.endpoint();
        // Flags beat the config; the socket flag beats the address flag.
        let flags = Choice {
            socket: Some(sock),
            addr: Some(tcp),
            config: Some(Some(&without)),
            defaults: false,
        };
        assert_eq!(pick(flags), Some(Endpoint::Unix(sock.into())));
        let addr_flag = Choice {
            addr: Some(tcp),
            config: Some(Some(&with_socket)),
            ..Choice::default()
        };
        assert_eq!(pick(addr_flag), Some(Endpoint::Tcp(tcp)));
        // The config's socket beats its listen address.
        let cfg = Choice {
            config: Some(Some(&with_socket)),
            ..Choice::default()
        };
        assert_eq!(pick(cfg), Some(Endpoint::Unix("/run/x/admin.sock".into())));
        let cfg = Choice {
            config: Some(Some(&without)),
            ..Choice::default()
        };
        assert_eq!(pick(cfg), Some(Endpoint::Tcp(DEFAULT_LISTEN)));
        // A config without [admin]: no endpoint; a pin path alone: none either.
        let none = Choice {
            config: Some(None),
            defaults: true,
            ..Choice::default()
        };
        assert_eq!(pick(none), None);
        assert_eq!(pick(Choice::default()), None);
    }

    #[test]
    fn requests_reach_a_unix_socket_with_host_localhost() {
        let dir = std::env::temp_dir().join(format!("gw-client-sock-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("a.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).expect("bind");
        let server = std::thread::spawn(move || {
            let (mut c, _) = listener.accept().expect("accept");
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && c.read(&mut byte).is_ok_and(|n| n == 1) {
                head.push(byte[0]);
            }
            c.write_all(b"HTTP/1.0 200 OK\r\n\r\nhello")
                .expect("answer");
            String::from_utf8_lossy(&head).into_owned()
        });
        let got = get(Endpoint::Unix(path), "/metrics", Duration::from_secs(2)).expect("get");
        assert_eq!(got, "hello");
        let head = server.join().expect("server");
        assert!(
            head.starts_with("GET /metrics HTTP/1.0\r\nHost: localhost\r\n"),
            "{head}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn closed_port_is_an_error_not_a_hang() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = l.local_addr().expect("addr");
        drop(l);
        let e = get(Endpoint::Tcp(addr), "/metrics", Duration::from_secs(1))
            .expect_err("nothing listens");
        assert!(matches!(e, FetchError::Io(_)), "{e}");
    }
}
