//! A client's request body on its way upstream. It holds the body to `max_body_bytes` and
//! `body_timeout`, and keeps note of where it stands, so that an upstream exchange that
//! failed because of the client is answered, logged and counted as the client's doing, not
//! the upstream's:
//!
//! - a body over the limit without a declared length (chunked, or HTTP/2 without
//!   `content-length`; a declared one is refused before forwarding): 413;
//! - a body that stopped arriving for `body_timeout` while the upstream waits for it, or
//!   until the upstream's `request_timeout`: 408;
//! - a client that went away, or broke its framing, in the middle of its body: 400.
//!
//! A body the upstream stops reading is the upstream's: the deadline then is a 504. A body
//! the upstream let go of before its end (it answered early) is kept for the response's end
//! and then lingered over (see [`super::linger::ResponseEnd`]).

use super::linger::{self, Leftover, LeftoverBody};
use super::BoxError;
use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

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
    /// Nothing arrived for `body_timeout` while the upstream side waited.
    Stalled = 5,
}

impl Stage {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => Stage::AwaitingClient,
            2 => Stage::Complete,
            3 => Stage::TooLarge,
            4 => Stage::ClientFailed,
            5 => Stage::Stalled,
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
    /// The body stopped arriving (`body_timeout`, or the upstream's deadline): 408.
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

/// The error the upstream side sees when the body stalls.
#[derive(Debug, thiserror::Error)]
#[error("no request body data for {0:?}")]
pub struct Stalled(Duration);

/// What the body and the handler share: the stage, and the client's body once the upstream
/// side has let go of it before its end.
struct Shared<B> {
    stage: AtomicU8,
    /// Body bytes passed to the upstream side so far (the access log's `bytes_in`).
    received: AtomicU64,
    rest: Mutex<Rest<B>>,
}

enum Rest<B> {
    /// The upstream side still holds the body (or it ended there).
    Upstream,
    /// Let go of before its end, waiting for the response to be sent.
    Left(B),
    /// The response has been sent: a body let go of now lingers at once.
    ResponseDone,
}

impl<B> Shared<B> {
    fn stage(&self) -> Stage {
        Stage::from_u8(self.stage.load(Ordering::Acquire))
    }

    fn rest(&self) -> std::sync::MutexGuard<'_, Rest<B>> {
        self.rest.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl<B> Leftover for Shared<B>
where
    B: Body + Unpin + Send + 'static,
{
    fn response_done(&self) {
        let rest = std::mem::replace(&mut *self.rest(), Rest::ResponseDone);
        if let Rest::Left(body) = rest {
            linger::linger(body);
        }
    }
}

/// The handler's view of a [`RequestBody`] it has sent upstream.
pub struct Progress<B>(Option<Arc<Shared<B>>>);

impl<B> Progress<B>
where
    B: Body + Unpin + Send + 'static,
{
    /// Whether an upstream exchange that failed (`timed_out`: at the upstream's deadline)
    /// failed because of the client's body.
    pub fn client_fault(&self, timed_out: bool) -> Option<ClientFault> {
        match self.0.as_ref()?.stage() {
            Stage::TooLarge => Some(ClientFault::TooLarge),
            Stage::ClientFailed => Some(ClientFault::Broken),
            Stage::Stalled => Some(ClientFault::Stalled),
            Stage::AwaitingClient if timed_out => Some(ClientFault::Stalled),
            _ => None,
        }
    }

    /// Body bytes passed to the upstream side so far.
    pub fn received(&self) -> u64 {
        self.0
            .as_ref()
            .map_or(0, |s| s.received.load(Ordering::Relaxed))
    }

    /// The body as the response's end holds it (see [`super::linger::ResponseEnd::leftover`]), to linger
    /// over what the upstream side left of it.
    pub fn leftover(&self) -> Option<LeftoverBody> {
        self.0
            .as_ref()
            .map(|s| LeftoverBody(Arc::clone(s) as Arc<dyn Leftover>))
    }
}

pin_project_lite::pin_project! {
    /// `B` (the client's body) held to a limit and a stall timeout, noting its [`Stage`].
    pub struct RequestBody<B>
    where
        B: Body,
        B: Unpin,
        B: Send,
        B: 'static,
    {
        // `None` once handed to the shared state on drop.
        inner: Option<B>,
        left: u64,
        limit: u64,
        // `None` for a body that was already at its end: nothing can go wrong with it.
        shared: Option<Arc<Shared<B>>>,
        stall_after: Duration,
        // Armed while the client keeps the upstream side waiting.
        #[pin]
        stall: Sleep,
        armed: bool,
    }

    impl<B> PinnedDrop for RequestBody<B>
    where
        B: Body,
        B: Unpin,
        B: Send,
        B: 'static,
    {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            let (Some(body), Some(shared)) = (this.inner.take(), this.shared.as_ref()) else {
                return;
            };
            if body.is_end_stream() || shared.stage() == Stage::Complete {
                return;
            }
            let mut rest = shared.rest();
            match *rest {
                Rest::ResponseDone => {
                    drop(rest);
                    linger::linger(body);
                }
                _ => *rest = Rest::Left(body),
            }
        }
    }
}

impl<B> RequestBody<B>
where
    B: Body + Unpin + Send + 'static,
{
    /// `stall_after`: `body_timeout`.
    pub fn new(inner: B, limit: u64, stall_after: Duration) -> (Self, Progress<B>) {
        let shared = (!inner.is_end_stream()).then(|| {
            Arc::new(Shared {
                stage: AtomicU8::new(0),
                received: AtomicU64::new(0),
                rest: Mutex::new(Rest::Upstream),
            })
        });
        let progress = Progress(shared.clone());
        (
            Self {
                inner: Some(inner),
                left: limit,
                limit,
                shared,
                stall_after,
                // Not registered with the timer until first polled (when armed).
                stall: tokio::time::sleep_until(far_future()),
                armed: false,
            },
            progress,
        )
    }
}

/// The body for the upstream and the handler's view of it. A body already at its end (every
/// GET) is sent as the empty body, without tracking or timer.
pub fn forwarded<B>(inner: B, limit: u64, stall_after: Duration) -> (super::ProxyBody, Progress<B>)
where
    B: Body<Data = Bytes> + Unpin + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    use http_body_util::BodyExt;
    if inner.is_end_stream() {
        return (super::empty_body(), Progress(None));
    }
    let (body, progress) = RequestBody::new(inner, limit, stall_after);
    (body.boxed(), progress)
}

/// A deadline never reached.
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86400 * 365)
}

impl<B> Body for RequestBody<B>
where
    B: Body<Data = Bytes> + Unpin + Send + 'static,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(inner).poll_frame(cx);
        let (stage, out) = match polled {
            Poll::Pending => {
                if !*this.armed {
                    *this.armed = true;
                    this.stall
                        .as_mut()
                        .reset(Instant::now() + *this.stall_after);
                }
                match this.stall.as_mut().poll(cx) {
                    Poll::Pending => (Stage::AwaitingClient, Poll::Pending),
                    Poll::Ready(()) => {
                        let e = Stalled(*this.stall_after);
                        (Stage::Stalled, Poll::Ready(Some(Err(e.into()))))
                    }
                }
            }
            Poll::Ready(None) => (Stage::Complete, Poll::Ready(None)),
            Poll::Ready(Some(Err(e))) => (Stage::ClientFailed, Poll::Ready(Some(Err(e.into())))),
            Poll::Ready(Some(Ok(frame))) => {
                *this.armed = false;
                let len = frame.data_ref().map_or(0, |d| d.len() as u64);
                match this.left.checked_sub(len) {
                    Some(left) => {
                        *this.left = left;
                        if let Some(s) = this.shared.as_ref() {
                            s.received.fetch_add(len, Ordering::Relaxed);
                        }
                        (Stage::Forwarding, Poll::Ready(Some(Ok(frame))))
                    }
                    None => {
                        let e = TooLarge { limit: *this.limit };
                        (Stage::TooLarge, Poll::Ready(Some(Err(e.into()))))
                    }
                }
            }
        };
        if let Some(s) = this.shared.as_ref() {
            s.stage.store(stage as u8, Ordering::Release);
        }
        out
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::linger::ResponseEnd;
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

    const STALL: Duration = Duration::from_secs(10);

    fn body(c: Client, limit: u64) -> (Pin<Box<RequestBody<Client>>>, Progress<Client>) {
        let (b, p) = RequestBody::new(c, limit, STALL);
        (Box::pin(b), p)
    }

    /// Polls `body` once.
    fn poll<B: Body<Data = Bytes, Error = BoxError>>(
        body: &mut Pin<Box<B>>,
    ) -> Poll<Option<Result<Bytes, String>>> {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        body.as_mut().poll_frame(&mut cx).map(|f| {
            f.map(|r| {
                r.map(|frame| frame.into_data().unwrap_or_default())
                    .map_err(|e| e.to_string())
            })
        })
    }

    #[tokio::test]
    async fn a_body_within_the_limit_passes_whole() {
        let (mut b, progress) = body(client(&[Some(b"abcd"), Some(b"efgh")], false), 8);
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

    #[tokio::test]
    async fn one_byte_over_the_limit_is_too_large() {
        let (mut b, progress) = body(client(&[Some(b"abcd"), Some(b"efghi")], false), 8);
        assert!(matches!(poll(&mut b), Poll::Ready(Some(Ok(_)))));
        assert_eq!(
            poll(&mut b),
            Poll::Ready(Some(Err("the request body is over 8 bytes".into())))
        );
        assert_eq!(progress.client_fault(false), Some(ClientFault::TooLarge));
        assert_eq!(progress.client_fault(true), Some(ClientFault::TooLarge));
    }

    #[tokio::test]
    async fn a_deadline_is_the_clients_only_while_waiting_on_it() {
        let (mut b, progress) = body(client(&[Some(b"ab"), None], false), 8);
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

    #[tokio::test]
    async fn a_client_that_goes_away_mid_body_is_broken() {
        let (mut b, progress) = body(client(&[Some(b"ab")], true), 8);
        assert!(matches!(poll(&mut b), Poll::Ready(Some(Ok(_)))));
        assert!(matches!(poll(&mut b), Poll::Ready(Some(Err(_)))));
        assert_eq!(progress.client_fault(false), Some(ClientFault::Broken));
    }

    #[tokio::test]
    async fn an_empty_body_has_nothing_to_track() {
        let (b, progress) = body(client(&[], false), 0);
        assert!(b.is_end_stream());
        assert!(b.shared.is_none());
        assert_eq!(progress.client_fault(true), None);
    }

    /// A body that never sends anything more.
    struct Stuck;

    impl Body for Stuck {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            Poll::Pending
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_stalls_for_the_timeout_is_refused_as_the_clients() {
        let (b, progress) = RequestBody::new(Stuck, 8, STALL);
        let mut b = Box::pin(b);
        let started = Instant::now();
        let got = std::future::poll_fn(|cx| b.as_mut().poll_frame(cx)).await;
        let e = got.expect("an answer").expect_err("an error");
        assert_eq!(e.to_string(), "no request body data for 10s");
        assert_eq!(started.elapsed(), STALL);
        assert_eq!(progress.client_fault(false), Some(ClientFault::Stalled));
    }

    /// `chunks` chunks of 1 KiB, counting how many were read.
    struct Counted {
        left: usize,
        read: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl Body for Counted {
        type Data = Bytes;
        type Error = std::io::Error;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
            if self.left == 0 {
                return Poll::Ready(None);
            }
            self.left -= 1;
            self.read.fetch_add(1, Ordering::Relaxed);
            Poll::Ready(Some(Ok(Frame::data(Bytes::from(vec![0u8; 1024])))))
        }
    }

    fn counted(chunks: usize) -> (Counted, Arc<std::sync::atomic::AtomicUsize>) {
        let read = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        (
            Counted {
                left: chunks,
                read: read.clone(),
            },
            read,
        )
    }

    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_body_left_before_its_end_is_kept_until_the_response_ends_then_lingered_over() {
        // The upstream reads one chunk, answers, and lets go of the body.
        let (c, read) = counted(200);
        let (b, progress) = RequestBody::new(c, u64::MAX, STALL);
        let mut b = Box::pin(b);
        assert!(matches!(poll(&mut b), Poll::Ready(Some(Ok(_)))));
        let end = ResponseEnd {
            leftover: progress.leftover(),
            ..Default::default()
        };
        drop(b);
        settle().await;
        assert_eq!(
            read.load(Ordering::Relaxed),
            1,
            "nothing read while the response is sent"
        );
        drop(end);
        settle().await;
        // Lingered over up to the bound (64 KiB, one chunk past it), then dropped.
        assert_eq!(read.load(Ordering::Relaxed), 1 + 65);
    }

    #[tokio::test]
    async fn a_body_left_after_the_response_ended_lingers_at_once() {
        let (c, read) = counted(3);
        let (b, progress) = RequestBody::new(c, u64::MAX, STALL);
        drop(ResponseEnd {
            leftover: progress.leftover(),
            ..Default::default()
        });
        drop(b);
        settle().await;
        assert_eq!(read.load(Ordering::Relaxed), 3, "read to its end");
    }

    #[tokio::test]
    async fn a_body_read_to_its_end_leaves_nothing() {
        let (c, read) = counted(1);
        let (b, progress) = RequestBody::new(c, u64::MAX, STALL);
        let mut b = Box::pin(b);
        assert!(matches!(poll(&mut b), Poll::Ready(Some(Ok(_)))));
        assert_eq!(poll(&mut b), Poll::Ready(None));
        drop(b);
        drop(ResponseEnd {
            leftover: progress.leftover(),
            ..Default::default()
        });
        settle().await;
        assert_eq!(read.load(Ordering::Relaxed), 1);
    }
}
