//! The writer thread: takes lines off the bounded channel every few milliseconds, formats
//! them in batches, writes each batch with one `write` call, and reopens its file when asked (SIGUSR1, after
//! logrotate has renamed it). It is the only place that blocks on the output, so a slow
//! disk or a stuck stdout reader costs dropped lines, never a waiting request.

use super::json::Clock;
use super::record::Line;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use std::time::Duration;

/// A batch is written once it holds this much.
const BATCH_BYTES: usize = 64 * 1024;

/// How often the writer takes what has queued (and looks at the reopen and stop flags): a
/// line waits at most this long; at [`super::CAPACITY`] lines per tick, 400 000 lines/s
/// fit.
const TICK: Duration = Duration::from_millis(20);

/// Where lines go.
pub(super) enum Output {
    Stdout,
    File { path: PathBuf, file: File },
}

impl Output {
    /// Appends to `path`, creating it (mode 0640) if needed.
    pub(super) fn file(path: &Path) -> std::io::Result<Self> {
        Ok(Output::File {
            path: path.to_path_buf(),
            file: open(path)?,
        })
    }

    fn write_all(&mut self, buf: &[u8]) -> std::io::Result<()> {
        match self {
            Output::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(buf)?;
                out.flush()
            }
            Output::File { file, .. } => file.write_all(buf),
        }
    }

    /// A file is opened again by its name: after a rename, lines go to a new file there.
    fn reopen(&mut self) {
        if let Output::File { path, file } = self {
            match open(path) {
                Ok(f) => {
                    *file = f;
                    tracing::info!(path = %path.display(), "access log reopened");
                }
                Err(e) => {
                    tracing::error!(path = %path.display(), error = %e, "cannot reopen the access log; writing to the old file")
                }
            }
        }
    }
}

fn open(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o640)
        .open(path)
}

/// Flags the handle sets for the thread.
#[derive(Debug, Default)]
pub(super) struct Flags {
    pub reopen: AtomicBool,
    /// Write what is queued and end (the gateway is stopping).
    pub stop: AtomicBool,
}

/// The thread's loop: until every sender is gone or `stop` is set. It never blocks on the
/// channel: it wakes every [`TICK`] and takes what has queued. A receiver waiting in
/// `recv` would make every request's `try_send` wake it (a futex call, a context switch
/// and a `write` per line: a third of a request's cost in the first measurement); polled,
/// the request path only ever touches the channel's atomics and the writer writes one
/// batch per tick.
pub(super) fn run(rx: Receiver<Line>, mut out: Output, flags: Arc<Flags>) {
    let mut buf = Vec::with_capacity(BATCH_BYTES * 2);
    let mut failing = false;
    let mut clock = Clock::default();
    loop {
        let stopping = flags.stop.load(Ordering::Acquire);
        if flags.reopen.swap(false, Ordering::AcqRel) {
            out.reopen();
        }
        let mut gone = false;
        loop {
            match rx.try_recv() {
                Ok(line) => {
                    line.write_json(&mut buf, &mut clock);
                    if buf.len() >= BATCH_BYTES {
                        flush(&mut out, &mut buf, &mut failing);
                    }
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    gone = true;
                    break;
                }
            }
        }
        flush(&mut out, &mut buf, &mut failing);
        if stopping || gone {
            return;
        }
        std::thread::sleep(TICK);
    }
}

/// Writes and empties `buf`; a failure is logged once until writing works again (the lines
/// of a failed write are lost).
fn flush(out: &mut Output, buf: &mut Vec<u8>, failing: &mut bool) {
    if buf.is_empty() {
        return;
    }
    match out.write_all(buf) {
        Ok(()) => {
            if *failing {
                tracing::info!("access log writable again");
            }
            *failing = false;
        }
        Err(e) => {
            if !*failing {
                tracing::error!(error = %e, "cannot write the access log; lines are lost until it works again");
            }
            *failing = true;
        }
    }
    buf.clear();
}
