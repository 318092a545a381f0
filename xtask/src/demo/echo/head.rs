//! A request head, parsed strictly: anything unusual is a [`Refusal`] (the status to send
//! before closing), never a guess.

/// A request head as parsed.
#[derive(Debug, PartialEq)]
pub(super) struct Head {
    pub(super) method: String,
    pub(super) target: String,
    pub(super) http10: bool,
    pub(super) headers: Vec<(String, String)>,
}

impl Head {
    pub(super) fn header<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> {
        self.headers
            .iter()
            .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub(super) fn has_token(&self, name: &str, token: &str) -> bool {
        self.header(name)
            .flat_map(|v| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    pub(super) fn keep_alive(&self) -> bool {
        if self.http10 {
            self.has_token("connection", "keep-alive")
        } else {
            !self.has_token("connection", "close")
        }
    }
}

/// Why a request cannot be answered normally: the status to send before closing.
#[derive(Debug, PartialEq)]
pub(super) struct Refusal(pub(super) u16, pub(super) &'static str);

pub(super) fn parse_head(bytes: &[u8]) -> Result<Head, Refusal> {
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
