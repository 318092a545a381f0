//! A client connection whose writes stay blocked for `send_timeout` is closed: a client that
//! stops reading its response (its receive window full) would otherwise hold its connection,
//! and the upstream connection behind it, for as long as it likes. hyper has no such timer.
//!
//! One timer per connection (boxed: hyper needs an `Unpin` connection), armed only while a
//! write is blocked and disarmed by any progress: a slow reader that keeps reading is never
//! cut.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// `I` with a deadline on blocked writes.
pub struct SendTimeout<I> {
    inner: I,
    timeout: Duration,
    deadline: Pin<Box<Sleep>>,
    armed: bool,
}

impl<I> SendTimeout<I> {
    pub fn new(inner: I, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            // Registered with the timer only when armed and polled.
            deadline: Box::pin(tokio::time::sleep(timeout)),
            armed: false,
        }
    }
}

impl<I: Unpin> SendTimeout<I> {
    /// After a write attempt: disarmed on progress; on a blocked write, armed (once) and
    /// checked.
    fn watch<T>(&mut self, cx: &mut Context<'_>, r: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        let this = self;
        if r.is_ready() {
            this.armed = false;
            return r;
        }
        if !this.armed {
            this.armed = true;
            let at = Instant::now() + this.timeout;
            this.deadline.as_mut().reset(at);
        }
        match this.deadline.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the client read nothing for {:?}", this.timeout),
            ))),
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for SendTimeout<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for SendTimeout<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, r)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, r)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let r = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, r)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_reads_nothing_times_out_and_one_that_reads_does_not() {
        let (near, mut far) = tokio::io::duplex(1024);
        let mut conn = Box::pin(SendTimeout::new(near, Duration::from_secs(30)));
        let chunk = [7u8; 512];
        // Fills the pipe, then blocks; the far side reads a little every 20 s.
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 256];
            for _ in 0..5 {
                tokio::time::sleep(Duration::from_secs(20)).await;
                far.read_exact(&mut buf).await.expect("read");
            }
            // Then stops reading (and keeps the pipe open).
            tokio::time::sleep(Duration::from_secs(3600)).await;
            drop(far);
        });
        let started = Instant::now();
        let err = loop {
            if let Err(e) = conn.write_all(&chunk).await {
                break e;
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        // Five reads 20 s apart kept it going; the timeout counts from the last one.
        assert_eq!(started.elapsed(), Duration::from_secs(100 + 30));
        reader.abort();
    }
}
