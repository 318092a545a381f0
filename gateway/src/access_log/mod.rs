//! The access log (`[log] access`): one JSON line per request, and one per connection that
//! failed its TLS handshake or was refused at accept (rate-limited per source, [`limiter`]).
//!
//! The request path never waits for it: a [`Record`] (reference-counted pieces of the
//! request, no formatting) goes into a bounded channel with `try_send`; when the channel is
//! full the line is dropped and counted (`gateway_access_log_dropped_total`). One thread
//! ([`writer`]) formats and writes; SIGUSR1 makes it reopen its file (logrotate).
//! `X-Request-Id` handling lives here too ([`request_id`]): the log's id is the one the
//! upstream and the client see.

mod body;
mod json;
mod limiter;
pub mod record;
pub mod request_id;
mod writer;

pub use body::ClientBody;
pub use record::{ConnEvent, ConnEventKind, Line, Names, Record, Target, TlsInfo};

use crate::config::{AccessTarget, LogConfig};
use prometheus_client::metrics::counter::Counter;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Lines waiting for the writer; beyond this they are dropped.
pub const CAPACITY: usize = 8192;

/// How long the stopping gateway waits for the writer to write what is queued.
const FINISH_WAIT: Duration = Duration::from_secs(2);

/// The handle the request path logs through. Cheap to clone (one `Arc`).
#[derive(Clone, Debug)]
pub struct AccessLog {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    tx: SyncSender<Line>,
    dropped: Counter,
    limiter: limiter::EventLimiter,
    ids: request_id::IdGen,
    /// `[log] query`.
    query: bool,
}

/// The writer thread, for SIGUSR1 and the end.
#[derive(Debug)]
pub struct Writer {
    flags: Arc<writer::Flags>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Why the access log could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AccessLogError {
    #[error("cannot open the access log {}: {source}", .path.display())]
    Open {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start the access log writer: {0}")]
    Thread(#[source] std::io::Error),
}

/// Starts the writer for `cfg` (`None` when the access log is off); `dropped` counts the
/// lines the writer could not keep up with.
pub fn start(
    cfg: &LogConfig,
    dropped: Counter,
) -> Result<Option<(AccessLog, Writer)>, AccessLogError> {
    let out = match &cfg.access {
        AccessTarget::Off => return Ok(None),
        AccessTarget::Stdout => writer::Output::Stdout,
        AccessTarget::File(path) => {
            writer::Output::file(path).map_err(|source| AccessLogError::Open {
                path: path.clone(),
                source,
            })?
        }
    };
    let (tx, rx) = sync_channel(CAPACITY);
    let flags = Arc::new(writer::Flags::default());
    let thread = {
        let flags = flags.clone();
        std::thread::Builder::new()
            .name("gateway-log".into())
            .spawn(move || writer::run(rx, out, flags))
            .map_err(AccessLogError::Thread)?
    };
    let log = AccessLog::new(tx, dropped, cfg.query);
    Ok(Some((
        log,
        Writer {
            flags,
            thread: Some(thread),
        },
    )))
}

impl AccessLog {
    fn new(tx: SyncSender<Line>, dropped: Counter, query: bool) -> Self {
        AccessLog {
            inner: Arc::new(Inner {
                tx,
                dropped,
                limiter: limiter::EventLimiter::default(),
                ids: request_id::IdGen::new(),
                query,
            }),
        }
    }

    /// A log whose lines nobody writes: the tests read them off the channel.
    #[cfg(test)]
    fn unwritten(capacity: usize, dropped: Counter) -> (Self, std::sync::mpsc::Receiver<Line>) {
        let (tx, rx) = sync_channel(capacity);
        let log = AccessLog::new(tx, dropped, false);
        (log, rx)
    }

    /// Queues a line, or drops and counts it when the writer is behind.
    pub fn send(&self, line: Line) {
        match self.inner.tx.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.inner.dropped.inc();
            }
        }
    }

    /// A connection that ended before its first request, if its source has not logged one
    /// this second.
    pub fn conn_event(&self, client: SocketAddr, kind: ConnEventKind) {
        if self.inner.limiter.allow(client.ip()) {
            self.send(Line::Conn(ConnEvent {
                time: SystemTime::now(),
                kind,
                client,
            }));
        }
    }

    /// The request's path (with the query if `[log] query`) and host, copied.
    pub fn target(&self, uri: &http::Uri, host: Option<&http::HeaderValue>) -> Target {
        Target::of(uri, host, self.inner.query)
    }

    /// The request's `X-Request-Id`, and whether it must be set on the request (see
    /// [`request_id::IdGen::take_or_make`]).
    pub fn request_id(&self, headers: &http::HeaderMap) -> (http::HeaderValue, bool) {
        self.inner.ids.take_or_make(headers)
    }
}

impl Writer {
    /// Reopens the file (logrotate's `postrotate`: SIGUSR1); nothing for stdout.
    pub fn reopen(&self) {
        self.flags.reopen.store(true, Ordering::Release);
    }

    /// Writes what is queued and stops the thread (waits at most [`FINISH_WAIT`]).
    pub fn finish(mut self) {
        self.flags.stop.store(true, Ordering::Release);
        let Some(thread) = self.thread.take() else {
            return;
        };
        let deadline = std::time::Instant::now() + FINISH_WAIT;
        while !thread.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        if thread.is_finished() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests;
