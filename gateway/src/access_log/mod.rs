//! The access log (`[log] access`): one JSON line per request, and one per connection that
//! failed its TLS handshake or was refused at accept (rate-limited per source, [`limiter`]).
//!
//! The request path never waits for it: a response's line is formatted when the response
//! ends, into a bounded buffer of the worker's own ([`shard`]); when that is full the line
//! is dropped and counted (`gateway_access_log_dropped_total`). One thread ([`writer`])
//! takes the buffers every few milliseconds and writes them; SIGUSR1 makes it reopen its
//! file (logrotate).
//! `X-Request-Id` handling lives here too ([`request_id`]): the log's id is the one the
//! upstream and the client see.

mod body;
mod json;
mod limiter;
pub mod record;
pub mod request_id;
mod shard;
mod writer;

pub use body::{ClientBody, LogContext};
pub use record::{ConnEvent, ConnEventKind, Names, Record, Target, TlsInfo};

use crate::config::{AccessTarget, LogConfig};
use prometheus_client::metrics::counter::Counter;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// How long the stopping gateway waits for the writer to write what is queued.
const FINISH_WAIT: Duration = Duration::from_secs(2);

/// The handle the request path logs through. Cheap to clone (one `Arc`).
#[derive(Clone, Debug)]
pub struct AccessLog {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    shards: Arc<shard::Shards>,
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
    let shards = Arc::new(shard::Shards::new(shard::LIMIT));
    let flags = Arc::new(writer::Flags::default());
    let thread = {
        let (flags, shards) = (flags.clone(), shards.clone());
        std::thread::Builder::new()
            .name("gateway-log".into())
            .spawn(move || writer::run(shards, out, flags))
            .map_err(AccessLogError::Thread)?
    };
    let log = AccessLog::new(shards, dropped, cfg.query);
    Ok(Some((
        log,
        Writer {
            flags,
            thread: Some(thread),
        },
    )))
}

impl AccessLog {
    fn new(shards: Arc<shard::Shards>, dropped: Counter, query: bool) -> Self {
        AccessLog {
            inner: Arc::new(Inner {
                shards,
                dropped,
                limiter: limiter::EventLimiter::default(),
                ids: request_id::IdGen::new(),
                query,
            }),
        }
    }

    /// A log whose lines nobody writes (each thread may hold `limit` bytes): the tests
    /// take them with [`AccessLog::take_pending`].
    #[cfg(test)]
    fn unwritten(limit: usize, dropped: Counter) -> Self {
        AccessLog::new(Arc::new(shard::Shards::new(limit)), dropped, false)
    }

    /// The lines waiting in every thread's buffer, taken (`last`: as the writer's last
    /// batch).
    #[cfg(test)]
    fn take_pending(&self, last: bool) -> Vec<String> {
        let mut out = Vec::new();
        shard::Taker::default().take(&self.inner.shards, last, |b| out.extend_from_slice(b));
        String::from_utf8_lossy(&out)
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Formats a line into this thread's buffer, or drops and counts it when the writer
    /// is behind (or gone).
    fn append(&self, write: impl FnOnce(&mut Vec<u8>, &mut json::Clock)) {
        if !self.inner.shards.append(write) {
            self.inner.dropped.inc();
        }
    }

    /// Logs a request whose response has ended; `names` are those its route and upstream
    /// indices refer to.
    pub fn request(&self, record: &Record, names: &Names) {
        self.append(|out, clock| record.write_json(out, clock, names));
    }

    /// A connection that ended before its first request, if its source has not logged one
    /// this second.
    pub fn conn_event(&self, client: SocketAddr, kind: ConnEventKind) {
        if self.inner.limiter.allow(client.ip()) {
            let event = ConnEvent {
                time: SystemTime::now(),
                kind,
                client,
            };
            self.append(|out, clock| event.write_json(out, clock));
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
