//! Request heads HTTP forbids or we will not carry: refused, never forwarded.

use super::Proxy;
use crate::proxy::refusal::Refusal;
use crate::proxy::request_body::ClientFault;
use http::header::{self, HeaderMap};
use http::Request;
use hyper::body::Body;

impl Proxy {
    /// Header limits, Content-Length and transfer codings.
    pub(super) fn check_head<B: Body>(&self, req: &Request<B>) -> Result<(), Refusal> {
        let h = req.headers();
        // hyper's HTTP/1 buffer cannot go below 8 KiB, nor its header count below 100; the
        // configured limits are exact here, for both protocols (name, ": ", value, CRLF per
        // header).
        let head: usize = h.iter().map(|(n, v)| n.as_str().len() + v.len() + 4).sum();
        if head > self.max_header_bytes {
            return Err(Refusal::HeadersTooLarge);
        }
        if h.len() > self.max_headers {
            return Err(Refusal::TooManyHeaders);
        }
        let mut lengths = h.get_all(header::CONTENT_LENGTH).iter();
        if let Some(first) = lengths.next() {
            if lengths.any(|other| other != first) {
                return Err(Refusal::ConflictingContentLength);
            }
            match first
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
            {
                None => return Err(Refusal::InvalidContentLength),
                Some(n) if n > self.max_body_bytes => {
                    return Err(Refusal::ClientBody(ClientFault::TooLarge))
                }
                Some(_) => {}
            }
        }
        // Only a body of unknown length can carry a transfer coding (HTTP/1 chunked).
        if req.body().size_hint().exact().is_none() {
            check_transfer_codings(h)?;
        }
        Ok(())
    }
}

/// hyper decodes `chunked`, and Transfer-Encoding is hop-by-hop: another coding would reach
/// the upstream silently undone, so it is refused (501, RFC 9112 §6.1), as is `chunked`
/// applied twice (400).
fn check_transfer_codings(h: &HeaderMap) -> Result<(), Refusal> {
    let mut chunked = 0;
    for value in h.get_all(header::TRANSFER_ENCODING) {
        let Ok(value) = value.to_str() else {
            return Err(Refusal::InvalidTransferEncoding);
        };
        for coding in value.split(',').map(str::trim).filter(|c| !c.is_empty()) {
            if !coding.eq_ignore_ascii_case("chunked") {
                return Err(Refusal::UnsupportedTransferCoding);
            }
            chunked += 1;
        }
    }
    if chunked > 1 {
        return Err(Refusal::ChunkedTwice);
    }
    Ok(())
}
