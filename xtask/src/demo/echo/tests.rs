use super::answer::json_str;
use super::*;
use std::io::Read;
use std::net::Shutdown;
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
