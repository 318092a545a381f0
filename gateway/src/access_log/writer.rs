//! The writer thread: takes every worker's buffered lines every few milliseconds, writes
//! each batch with one `write` call, and reopens its file when asked (SIGUSR1, after
//! logrotate has renamed it). It is the only place that blocks on the output, so a slow
//! disk or a stuck stdout reader costs dropped lines, never a waiting request.

use super::shard::{Shards, Taker};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// How often the writer takes what has queued (and looks at the reopen and stop flags): a
/// line waits at most this long; with [`super::shard::LIMIT`] bytes a thread, a worker may
/// log some 300 000 lines/s.
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

/// The thread's loop: until the log is gone or `stop` is set. It never waits for a
/// line: it wakes every [`TICK`] and takes what the workers have buffered. Waking it per
/// line would cost every request a futex call and a context switch (a third of a request's
/// cost in the first measurement).
pub(super) fn run(shards: Arc<Shards>, mut out: Output, flags: Arc<Flags>) {
    let mut taker = Taker::default();
    let mut failing = false;
    loop {
        let stopping = flags.stop.load(Ordering::Acquire);
        if flags.reopen.swap(false, Ordering::AcqRel) {
            out.reopen();
        }
        // Only this thread holds the buffers: no line can come any more.
        let gone = Arc::strong_count(&shards) == 1;
        let last = stopping || gone;
        taker.take(&shards, last, |batch| write(&mut out, batch, &mut failing));
        if last {
            return;
        }
        std::thread::sleep(TICK);
    }
}

/// Writes a batch; a failure is logged once until writing works again (the lines of a
/// failed write are lost).
fn write(out: &mut Output, batch: &[u8], failing: &mut bool) {
    match out.write_all(batch) {
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
}
