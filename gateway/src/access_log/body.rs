//! The body of every response to a client. With an access log it counts what it sends and
//! logs its request when it ends: at its last frame, or when dropped (sent in full without
//! polling, abandoned by the client). One type for both, not a box around the boxed body:
//! one allocation and one indirect call per frame fewer for every logged response.

use super::{AccessLog, Names, Record};
use crate::proxy::{BoxError, ProxyBody};
use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Instant;

/// What a logged response needs when it ends: the log, and the names its record's indices
/// refer to. The request's proxy gives both, moved into the body: no reference count that
/// every worker shares is touched per request.
pub trait LogContext: Send + Sync {
    fn log(&self) -> Option<&AccessLog>;
    fn names(&self) -> &Names;
}

pub struct ClientBody {
    inner: ProxyBody,
    /// `None` without an access log, and once logged.
    logged: Option<Logged>,
}

/// What a logged response still has to write.
struct Logged {
    record: Box<Record>,
    context: Arc<dyn LogContext>,
    /// When the request's head arrived (the line's `duration_ms` runs from it).
    started: Instant,
}

impl ClientBody {
    /// A response nobody logs.
    pub fn plain(inner: ProxyBody) -> Self {
        Self {
            inner,
            logged: None,
        }
    }

    /// A response whose line `record` goes to `context`'s log when it ends.
    pub fn logged(
        inner: ProxyBody,
        record: Box<Record>,
        context: Arc<dyn LogContext>,
        started: Instant,
    ) -> Self {
        Self {
            inner,
            logged: Some(Logged {
                record,
                context,
                started,
            }),
        }
    }

    fn finish(&mut self) {
        if let Some(Logged {
            mut record,
            context,
            started,
        }) = self.logged.take()
        {
            record.total = started.elapsed();
            if let Some(log) = context.log() {
                log.request(&record, context.names());
            }
        }
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let frame = ready!(Pin::new(&mut this.inner).poll_frame(cx));
        match &frame {
            Some(Ok(f)) => {
                if let (Some(data), Some(l)) = (f.data_ref(), this.logged.as_mut()) {
                    l.record.bytes_out += data.len() as u64;
                }
            }
            None | Some(Err(_)) => this.finish(),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ClientBody {
    fn drop(&mut self) {
        self.finish();
    }
}
