//! What the echo upstream sends: the JSON echo of a request and the HTTP/1.1 response
//! around it (or around a refusal).

use super::head::Head;

/// The echo document, pretty-printed so `curl` output reads well.
pub(super) fn echo_json(head: &Head, body_bytes: usize) -> String {
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

pub(super) fn json_str(s: &str) -> String {
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

pub(super) fn response(
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
