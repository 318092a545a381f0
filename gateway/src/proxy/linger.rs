//! The end of an exchange, seen from the client's side: a response sent to its end, and the
//! rest of a request body it did not wait for.
//!
//! An upstream may answer before it has read the request body (an error, a redirect, a
//! server that does not care about the body). Dropping the client's body then would reset
//! its HTTP/2 stream (`CANCEL`) or close its HTTP/1.1 connection with unread bytes, and the
//! client could lose the response it was about to read. So, like nginx's lingering close,
//! the rest of the body is read and discarded, up to [`LINGER_BYTES`] and [`LINGER_TIME`],
//! once the response has been sent: within the bound the stream ends cleanly (and an
//! HTTP/1.1 connection stays reusable); past it, the body is dropped, which on HTTP/2 is a
//! `RST_STREAM(NO_ERROR)` after the complete response, as RFC 9113 §8.1 allows.
//!
//! [`ResponseEnd`] rides with the upstream's response body (in the pool's body, no
//! allocation of its own): dropped when the body has been sent, or abandoned, or with the
//! failed exchange, it starts the lingering and ends the request's
//! [`InFlight`] mark, so an HTTP/2 response that streams for a long time keeps its
//! connection from looking idle.

use super::idle::InFlight;
use super::slots::Slot;
use bytes::Buf;
use http_body_util::BodyExt;
use hyper::body::Body;
use std::sync::Arc;
use std::time::Duration;

/// How much of a body nobody waits for is read before it is dropped.
pub const LINGER_BYTES: usize = 64 * 1024;
/// How long it is read, at most.
pub const LINGER_TIME: Duration = Duration::from_secs(1);

/// A request body that may still have something to linger over once the response is sent.
pub trait Leftover: Send + Sync {
    /// The response has been sent (or abandoned): what is left of the body may go.
    fn response_done(&self);
}

/// What a request holds until its response has been sent: held by the response body,
/// dropped at its end (or with the failed exchange).
#[derive(Default)]
pub struct ResponseEnd {
    /// The request body, to linger over what the upstream side left of it.
    pub leftover: Option<LeftoverBody>,
    /// The HTTP/2 request's mark on its connection (see [`super::idle`]).
    pub in_flight: Option<InFlight>,
    /// Its place under `max_requests_in_flight`.
    pub request_slot: Option<Slot>,
    /// Its place under the upstream server's `max_connections`.
    pub server_slot: Option<Slot>,
}

/// A request body as the response's end holds it: dropped, it is told the response is done.
pub struct LeftoverBody(pub Arc<dyn Leftover>);

impl Drop for LeftoverBody {
    fn drop(&mut self) {
        self.0.response_done();
    }
}

/// Reads and discards what is left of `body`, bounded (see the module docs), in a task of
/// the current runtime; without one, the body is simply dropped.
pub fn linger<B>(body: B)
where
    B: Body + Unpin + Send + 'static,
{
    if body.is_end_stream() {
        return;
    }
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn(discard(body, LINGER_BYTES, LINGER_TIME));
    }
}

/// Reads `body` until its end, `max_bytes` or `max_wait`, whichever comes first.
pub async fn discard<B: Body + Unpin>(mut body: B, max_bytes: usize, max_wait: Duration) {
    let mut seen = 0usize;
    let _ = tokio::time::timeout(max_wait, async {
        while let Some(Ok(frame)) = body.frame().await {
            if let Some(data) = frame.data_ref() {
                seen += data.remaining();
                if seen > max_bytes {
                    break;
                }
            }
        }
    })
    .await;
}
