//! The response body, read from the connection by whoever polls it (the client's
//! connection), with the rest of the request body written alongside. At its clean end the
//! connection goes back to its pool; an error, an abandoned body, bytes past the end or an
//! unfinished upload close it instead.

use super::chunked::{Decoder, Step};
use super::{BodyKind, Conn, Exchange, H1Error, Upload};
use crate::proxy::linger::ResponseEnd;
use crate::proxy::pool::ServerPool;
use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

enum Reading {
    Length(u64),
    Chunked(Decoder),
    UntilClose,
    Done,
}

/// A response body that reads its connection and returns it to `home` at its end.
pub struct UpstreamBody {
    /// `None` once the body ended or failed.
    conn: Option<Conn>,
    upload: Upload,
    reading: Reading,
    reusable: bool,
    home: Arc<ServerPool>,
    /// Dropped at the body's end (see [`ResponseEnd`]), or with the body.
    end: Option<ResponseEnd>,
}

impl UpstreamBody {
    pub fn new(
        ex: Exchange,
        home: Arc<ServerPool>,
        end: ResponseEnd,
    ) -> (http::response::Parts, Self) {
        let reading = match ex.framing.kind {
            BodyKind::Length(0) => Reading::Done,
            BodyKind::Length(n) => Reading::Length(n),
            BodyKind::Chunked => Reading::Chunked(Decoder::new()),
            BodyKind::UntilClose => Reading::UntilClose,
        };
        let body = Self {
            conn: Some(ex.conn),
            upload: ex.upload,
            reading,
            reusable: ex.framing.reusable,
            home,
            end: Some(end),
        };
        (ex.head, body)
    }

    /// The body has been read to its end: the connection goes home if nothing is left
    /// on it either way, and the client's exchange ends.
    fn finish(&mut self) {
        self.reading = Reading::Done;
        self.end = None;
        if let Some(conn) = self.conn.take() {
            if self.reusable && conn.rbuf.is_empty() && conn.upload_done(&self.upload) {
                self.home.checkin(conn);
            }
        }
    }

    fn next(&mut self, cx: &mut Context<'_>) -> Poll<Result<Option<Bytes>, H1Error>> {
        let Some(conn) = self.conn.as_mut() else {
            return Poll::Ready(Ok(None));
        };
        conn.poll_upload_alongside(&mut self.upload, cx)?;
        loop {
            match &mut self.reading {
                Reading::Done => return Poll::Ready(Ok(None)),
                Reading::Length(left) => {
                    if conn.rbuf.is_empty() && ready!(conn.poll_fill(cx)).map_err(H1Error::Io)? == 0
                    {
                        return Poll::Ready(Err(H1Error::Truncated));
                    }
                    let take = usize::try_from(*left)
                        .unwrap_or(usize::MAX)
                        .min(conn.rbuf.len());
                    let data = conn.rbuf.split_to(take).freeze();
                    *left -= take as u64;
                    if *left == 0 {
                        self.reading = Reading::Done;
                    }
                    return Poll::Ready(Ok(Some(data)));
                }
                Reading::UntilClose => {
                    if conn.rbuf.is_empty() && ready!(conn.poll_fill(cx)).map_err(H1Error::Io)? == 0
                    {
                        return Poll::Ready(Ok(None));
                    }
                    return Poll::Ready(Ok(Some(conn.rbuf.split().freeze())));
                }
                Reading::Chunked(dec) => match dec.step(&mut conn.rbuf)? {
                    Step::Data(data) => return Poll::Ready(Ok(Some(data))),
                    Step::End => {
                        self.reading = Reading::Done;
                        return Poll::Ready(Ok(None));
                    }
                    Step::NeedMore => {
                        if ready!(conn.poll_fill(cx)).map_err(H1Error::Io)? == 0 {
                            return Poll::Ready(Err(H1Error::Truncated));
                        }
                    }
                },
            }
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = crate::proxy::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match ready!(this.next(cx)) {
            Ok(Some(data)) => {
                if matches!(this.reading, Reading::Done) {
                    // Give the connection back now: the next request may want it before
                    // this body is polled again.
                    this.finish();
                }
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Ok(None) => {
                this.finish();
                Poll::Ready(None)
            }
            Err(e) => {
                this.conn = None;
                this.reading = Reading::Done;
                Poll::Ready(Some(Err(e.into())))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none() || matches!(self.reading, Reading::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match self.reading {
            Reading::Done => SizeHint::with_exact(0),
            Reading::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // Bodies known to be empty (HEAD, 204, 304, Content-Length: 0) are never polled by
        // hyper's server; their connection is reusable all the same. Any other body that
        // was not read to its end closes its connection.
        if self.conn.is_some() && matches!(self.reading, Reading::Done) {
            self.finish();
        }
    }
}
