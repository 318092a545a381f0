//! A client's request body on its way upstream. It holds the body to `max_body_bytes` and
//! keeps note of where it stands, so that an upstream exchange that failed because of the
//! client is answered, logged and counted as the client's doing, not the upstream's:
//!
//! - a body over the limit without a declared length (chunked, or HTTP/2 without
//!   `content-length`; a declared one is refused before forwarding): 413;
//! - a body that stopped arriving, the upstream waiting for it, until the upstream's
//!   `request_timeout`: 408;
//! - a client that went away, or broke its framing, in the middle of its body: 400.
//!
//! A body the upstream stops reading is the upstream's: the deadline then is a 504.

use super::BoxError;
use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

/// Where a forwarded request body stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Stage {
    /// The upstream side has what was read so far and has not asked for more.
    Forwarding = 0,
    /// Asked for more: waiting on the client.
    AwaitingClient = 1,
    Complete = 2,
    TooLarge = 3,
    ClientFailed = 4,
}

impl Stage {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Stage::AwaitingClient,
            2 => Stage::Complete,
            3 => Stage::TooLarge,
            4 => Stage::ClientFailed,
            _ => Stage::Forwarding,
        }
    }
}

/// Why an upstream exchange failed on the client's side (answered as
/// [`super::refusal::Refusal::ClientBody`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientFault {
    /// Over `max_body_bytes`: 413.
    TooLarge,
    /// The body stopped arriving until the upstream's deadline: 408.
    Stalled,
    /// The client went away or broke its framing mid-body: 400.
    Broken,
}

/// The error the upstream side sees when the body goes over the limit.
#[derive(Debug, thiserror::Error)]
#[error("the request body is over {limit} bytes")]
pub struct TooLarge {
    limit: u64,
}

/// The handler's view of a [`RequestBody`] it has sent upstream.
pub struct Progress(Option<Arc<AtomicU8>>);

impl Progress {
    /// Whether an upstream exchange that failed (`timed_out`: at the upstream's deadline)
    /// failed because of the client's body.
    pub fn client_fault(&self, timed_out: bool) -> Option<ClientFault> {
        let stage = Stage::from_u8(self.0.as_ref()?.load(Ordering::Acquire));
        match stage {
            Stage::TooLarge => Some(ClientFault::TooLarge),
            Stage::ClientFailed => Some(ClientFault::Broken),
            Stage::AwaitingClient if timed_out => Some(ClientFault::Stalled),
            _ => None,
        }
    }
}

/// `B` (the client's body) held to a limit, noting its [`Stage`].
pub struct RequestBody<B> {
    inner: B,
    left: u64,
    limit: u64,
    /// `None` for a body that was already at its end: nothing can go wrong with it.
    stage: Option<Arc<AtomicU8>>,
}

impl<B: Body> RequestBody<B> {
    pub fn new(inner: B, limit: u64) -> (Self, Progress) {
        let stage = (!inner.is_end_stream()).then(|| Arc::new(AtomicU8::new(0)));
        let progress = Progress(stage.clone());
        (
            Self {
                inner,
                left: limit,
                limit,
                stage,
            },
            progress,
        )
    }
}

impl<B> RequestBody<B> {
    fn set(&self, stage: Stage) {
        if let Some(s) = &self.stage {
            s.store(stage as u8, Ordering::Release);
        }
    }
}

impl<B> Body for RequestBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        let (stage, out) = match polled {
            Poll::Pending => (Stage::AwaitingClient, Poll::Pending),
            Poll::Ready(None) => (Stage::Complete, Poll::Ready(None)),
            Poll::Ready(Some(Err(e))) => (Stage::ClientFailed, Poll::Ready(Some(Err(e.into())))),
            Poll::Ready(Some(Ok(frame))) => {
                let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                match this.left.checked_sub(len) {
                    Some(left) => {
                        this.left = left;
                        (Stage::Forwarding, Poll::Ready(Some(Ok(frame))))
                    }
                    None => {
                        let e = TooLarge { limit: this.limit };
                        (Stage::TooLarge, Poll::Ready(Some(Err(e.into()))))
                    }
                }
            }
        };
        this.set(stage);
        out
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;

    /// A client's body: each step is a chunk, a pause (`None`: one `Pending`), or, last, an
    /// error.
    struct Client {
        steps: VecDeque<Option<&'static [u8]>>,
        fail_at_end: bool,
    }

    impl Body for Client {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            match self.steps.pop_front() {
                Some(Some(chunk)) => Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(chunk))))),
                Some(None) => {
                    cx.waker().wake_by_ref();
                    Poll::Pending
                }
                None if self.fail_at_end => {
                    Poll::Ready(Some(Err(std::io::Error::other("client went away"))))
                }
                None => Poll::Ready(None),
            }
        }

        fn is_end_stream(&self) -> bool {
            self.steps.is_empty() && !self.fail_at_end
        }
    }

    fn client(steps: &[Option<&'static [u8]>], fail_at_end: bool) -> Client {
        Client {
            steps: steps.iter().copied().collect(),
            fail_at_end,
        }
    }

    /// Polls `body` once.
    fn poll<B: Body<Data = Bytes, Error = BoxError> + Unpin>(
        body: &mut B,
    ) -> Poll<Option<Result<Bytes, String>>> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        Pin::new(body).poll_frame(&mut cx).map(|f| {
            f.map(|r| {
                r.map(|frame| frame.into_data().unwrap_or_default())
                    .map_err(|e| e.to_string())
            })
        })
    }

    #[test]
    fn a_body_within_the_limit_passes_whole() {
        let (mut b, progress) = RequestBody::new(client(&[Some(b"abcd"), Some(b"efgh")], false), 8);
        assert_eq!(
            poll(&mut b),
            Poll::Ready(Some(Ok(Bytes::from_static(b"abcd"))))
        );
        assert_eq!(
            poll(&mut b),
            Poll::Ready(Some(Ok(Bytes::from_static(b"efgh"))))
        );
        assert_eq!(poll(&mut b), Poll::Ready(None));
        assert_eq!(progress.client_fault(true), None);
        assert_eq!(progress.client_fault(false), None);
    }

    #[test]
    fn one_byte_over_the_limit_is_too_large() {
        let (mut b, progress) =
            RequestBody::new(client(&[Some(b"abcd"), Some(b"efghi")], false), 8);
        assert!(matches!(poll(&mut b), Poll::Ready(Some(Ok(_)))));
        assert_eq!(
            poll(&mut b),
            Poll::Ready(Some(Err("the request body is over 8 bytes".into())))
        );
        assert_eq!(progress.client_fault(false), Some(ClientFault::TooLarge));
        assert_eq!(progress.client_fault(true), Some(ClientFault::TooLarge));
    }

    #[test]
    fn a_deadline_is_the_clients_only_while_waiting_on_it() {
        let (mut b, progress) = RequestBody::new(client(&[Some(b"ab"), None], false), 8);
        // Nothing read yet: the upstream side has not asked (say, still connecting).
        assert_eq!(progress.client_fault(true), None);
        assert!(matches!(poll(&mut b), Poll::Ready(Some(Ok(_)))));
        // A chunk handed on, not asked for more: the upstream is not reading.
        assert_eq!(progress.client_fault(true), None);
        assert_eq!(poll(&mut b), Poll::Pending);
        assert_eq!(progress.client_fault(true), Some(ClientFault::Stalled));
        // Another failure while waiting (the upstream broke) is still the upstream's.
        assert_eq!(progress.client_fault(false), None);
    }

    #[test]
    fn a_client_that_goes_away_mid_body_is_broken() {
        let (mut b, progress) = RequestBody::new(client(&[Some(b"ab")], true), 8);
        assert!(matches!(poll(&mut b), Poll::Ready(Some(Ok(_)))));
        assert!(matches!(poll(&mut b), Poll::Ready(Some(Err(_)))));
        assert_eq!(progress.client_fault(false), Some(ClientFault::Broken));
    }

    #[test]
    fn an_empty_body_has_nothing_to_track() {
        let (b, progress) = RequestBody::new(client(&[], false), 0);
        assert!(b.is_end_stream());
        assert!(b.stage.is_none());
        assert_eq!(progress.client_fault(true), None);
    }
}
