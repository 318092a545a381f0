//! Noticing that a connection has gone quiet: no request in progress, and none for the idle
//! limit.
//!
//! hyper times HTTP/1 itself once a connection has started on it (the header read timeout,
//! which also runs between requests; a parked connection keeps the same deadline, see
//! [`super::park`]). Two cases have no timer there: a connection that never sends a byte
//! ([`super::park`] reads the first bytes to tell HTTP/1 from HTTP/2 with no deadline, on
//! plain TCP and after a TLS handshake without ALPN), and an HTTP/2 connection between
//! streams, or one that never opens a stream (its pings only prove the peer is alive). Each
//! would hold a connection slot for as long as the client likes.
//!
//! Requests mark their connection's [`Activity`] (a few atomic operations, no timer); each
//! worker's [`super::closing::Closer`] looks at its connections a few times per limit and
//! closes the quiet ones. A request counts as in progress until its response has been sent
//! to its end (the guard travels with the response body, see
//! [`super::linger::ResponseEnd`]): an HTTP/2 response that streams for minutes (a
//! download, server-sent events) keeps its connection, however long the idle limit.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

/// One connection's activity.
#[derive(Debug)]
pub struct Activity {
    /// When the connection was accepted; times below are milliseconds since then.
    epoch: Instant,
    in_flight: AtomicU32,
    /// When the last request ended, or (none yet) when the connection was ready for one.
    quiet_since_ms: AtomicU64,
    /// An HTTP/1 request came: hyper times the rest of this connection.
    http1: AtomicBool,
}

impl Default for Activity {
    fn default() -> Self {
        Self::new()
    }
}

impl Activity {
    pub fn new() -> Self {
        Self {
            epoch: Instant::now(),
            in_flight: AtomicU32::new(0),
            quiet_since_ms: AtomicU64::new(0),
            http1: AtomicBool::new(false),
        }
    }

    /// The connection is ready for requests (its TLS handshake, if any, is done): the limit
    /// counts from now, not from the accept.
    pub fn start(&self) {
        self.quiet_since_ms
            .store(self.millis_since_epoch(), Ordering::Release);
    }

    /// A request starts. HTTP/1 only marks the connection as hyper's to time; an HTTP/2
    /// request is in progress until the guard is dropped.
    pub fn request(self: &Arc<Self>, version: http::Version) -> Option<InFlight> {
        if version < http::Version::HTTP_2 {
            self.http1.store(true, Ordering::Relaxed);
            return None;
        }
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        Some(InFlight(Arc::clone(self)))
    }

    /// Whether, at `now`, nothing has been in progress for `limit` (counted from
    /// [`Activity::start`] for a connection that has had no request). Never for HTTP/1
    /// connections after their first request.
    pub fn is_quiet(&self, limit: Duration, now: Instant) -> bool {
        if self.http1.load(Ordering::Relaxed) || self.in_flight.load(Ordering::Acquire) > 0 {
            return false;
        }
        let since = Duration::from_millis(self.quiet_since_ms.load(Ordering::Acquire));
        now >= self.epoch + since + limit
    }

    fn millis_since_epoch(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

/// An HTTP/2 request in progress; dropping it (with the response sent to its end, or the
/// request abandoned) ends it.
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        // The time first, then the count: a check that sees the count at 0 sees this time.
        a.quiet_since_ms
            .store(a.millis_since_epoch(), Ordering::Release);
        a.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Version;

    const LIMIT: Duration = Duration::from_secs(10);

    async fn advance(secs: u64) {
        tokio::time::advance(Duration::from_secs(secs)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_with_no_request_is_quiet_after_the_limit() {
        let a = Arc::new(Activity::new());
        // A 3 s TLS handshake: the limit counts from its end.
        advance(3).await;
        a.start();
        advance(9).await;
        assert!(!a.is_quiet(LIMIT, Instant::now()));
        advance(1).await;
        assert!(a.is_quiet(LIMIT, Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn the_limit_counts_from_the_end_of_the_last_request() {
        let a = Arc::new(Activity::new());
        advance(4).await;
        let first = a.request(Version::HTTP_2);
        let second = a.request(Version::HTTP_2);
        assert!(first.is_some() && second.is_some());
        advance(30).await;
        drop(first);
        assert!(!a.is_quiet(LIMIT, Instant::now()), "one still in progress");
        advance(5).await;
        drop(second);
        // Quiet from t = 39 s.
        advance(9).await;
        assert!(!a.is_quiet(LIMIT, Instant::now()));
        advance(1).await;
        assert!(a.is_quiet(LIMIT, Instant::now()));
        // And a new request makes it busy again.
        let third = a.request(Version::HTTP_2);
        assert!(!a.is_quiet(LIMIT, Instant::now()));
        drop(third);
        assert!(!a.is_quiet(LIMIT, Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_in_progress_holds_it_busy_past_the_limit() {
        let a = Arc::new(Activity::new());
        let busy = a.request(Version::HTTP_2);
        advance(50).await;
        assert!(!a.is_quiet(LIMIT, Instant::now()));
        drop(busy);
        advance(10).await;
        assert!(a.is_quiet(LIMIT, Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn http1_connections_are_left_to_hyper() {
        let a = Arc::new(Activity::new());
        assert!(a.request(Version::HTTP_11).is_none());
        advance(100).await;
        assert!(!a.is_quiet(LIMIT, Instant::now()));
    }
}
