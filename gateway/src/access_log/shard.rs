//! Lines waiting for the writer, one buffer per thread that logs: a request's line is
//! formatted where its response ended, into that worker's own buffer, and the writer thread
//! swaps each buffer for an empty one every tick. Nothing crosses threads per line: no
//! channel operation, no record freed on another thread, no reference count shared by all
//! workers. It runs the same instructions as a channel of records formatted by the writer;
//! the CPU it saves showed in a side harness but not beyond the e2e bench's spread
//! (BENCHMARKS.md, access log: third pass).
//!
//! Each buffer is bounded ([`Shards::new`]'s `limit`): past it, lines are dropped and
//! counted, so a stalled output costs lines, never a waiting request.

use super::json::Clock;
use std::cell::RefCell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Bytes a thread may have waiting before its lines are dropped: at ~350 bytes a line,
/// about 6 000 lines, a few hundred milliseconds of a busy worker's requests.
pub const LIMIT: usize = 2 * 1024 * 1024;

/// What a buffer keeps between ticks once the writer has emptied it: a burst's capacity
/// is given back.
const KEEP: usize = 256 * 1024;

/// One thread's waiting lines.
#[derive(Debug, Default)]
pub(super) struct Shard {
    pending: Mutex<Pending>,
}

#[derive(Debug, Default)]
struct Pending {
    bytes: Vec<u8>,
    /// The time's date part, formatted once a second for this thread's lines.
    clock: Clock,
    /// The writer has written its last batch: what comes now is dropped.
    closed: bool,
}

impl Shard {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        // A panic while formatting leaves at worst a partial line; keep logging.
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Every thread's buffer for one access log.
#[derive(Debug)]
pub(super) struct Shards {
    /// Tells this log's buffers from another's in a thread's slot (tests and reloads
    /// make several logs in one process).
    id: u64,
    limit: usize,
    all: Mutex<List>,
    /// For a thread whose own slot is gone (it is ending).
    fallback: Arc<Shard>,
}

#[derive(Debug)]
struct List {
    shards: Vec<Arc<Shard>>,
    /// The writer has ended: no new buffer joins.
    closed: bool,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

thread_local! {
    /// This thread's buffer, and the log it belongs to.
    static LOCAL: RefCell<Option<(u64, Arc<Shard>)>> = const { RefCell::new(None) };
}

impl Shards {
    pub(super) fn new(limit: usize) -> Self {
        let fallback = Arc::new(Shard::default());
        Self {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            limit,
            all: Mutex::new(List {
                shards: vec![fallback.clone()],
                closed: false,
            }),
            fallback,
        }
    }

    fn all(&self) -> MutexGuard<'_, List> {
        self.all.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends a line written by `write` to this thread's buffer; `false` (nothing
    /// written) when the buffer is full or the writer has ended.
    pub(super) fn append(&self, write: impl FnOnce(&mut Vec<u8>, &mut Clock)) -> bool {
        let mut write = Some(write);
        let mut to = |shard: &Shard| {
            let mut p = shard.lock();
            if p.closed || p.bytes.len() >= self.limit {
                return false;
            }
            let p = &mut *p;
            if let Some(write) = write.take() {
                write(&mut p.bytes, &mut p.clock);
            }
            true
        };
        let local = LOCAL.try_with(|slot| {
            let mut slot = slot.try_borrow_mut().ok()?;
            if !matches!(&*slot, Some((id, _)) if *id == self.id) {
                let mut all = self.all();
                if all.closed {
                    return Some(false);
                }
                let shard = Arc::new(Shard::default());
                all.shards.push(shard.clone());
                *slot = Some((self.id, shard));
            }
            slot.as_ref().map(|(_, shard)| to(shard))
        });
        match local {
            Ok(Some(appended)) => appended,
            _ => to(&self.fallback),
        }
    }
}

/// The writer's side: its copy of the buffer list, and an empty buffer for each to swap in.
#[derive(Debug, Default)]
pub(super) struct Taker {
    shards: Vec<(Arc<Shard>, Vec<u8>)>,
    spares: Vec<Vec<u8>>,
}

impl Taker {
    /// Takes every buffer's lines, in turn, handing each batch to `write` (outside the
    /// buffer's lock: a slow output never holds up a request). `last`: the writer ends, so
    /// every buffer is closed as it is emptied.
    pub(super) fn take(&mut self, from: &Shards, last: bool, mut write: impl FnMut(&[u8])) {
        self.sync(from, last);
        for (shard, spare) in &mut self.shards {
            {
                let mut p = shard.lock();
                std::mem::swap(&mut p.bytes, spare);
                p.closed |= last;
            }
            if !spare.is_empty() {
                write(spare);
            }
            spare.clear();
            spare.shrink_to(KEEP);
        }
    }

    /// Copies the list, leaving out the buffers of threads that have ended (only the list
    /// holds them) once they are empty. Under the list's lock, so that no thread joins
    /// meanwhile.
    fn sync(&mut self, from: &Shards, last: bool) {
        let mut all = from.all();
        all.closed |= last;
        self.spares
            .extend(self.shards.drain(..).map(|(_, spare)| spare));
        all.shards.retain(|s| {
            Arc::ptr_eq(s, &from.fallback) || Arc::strong_count(s) > 1 || !s.lock().bytes.is_empty()
        });
        for shard in &all.shards {
            let spare = self.spares.pop().unwrap_or_default();
            self.shards.push((shard.clone(), spare));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn taken(taker: &mut Taker, shards: &Shards) -> String {
        let mut out = Vec::new();
        taker.take(shards, false, |b| out.extend_from_slice(b));
        String::from_utf8(out).unwrap()
    }

    fn line(s: &'static str) -> impl FnOnce(&mut Vec<u8>, &mut Clock) {
        move |out, _| out.extend_from_slice(s.as_bytes())
    }

    #[test]
    fn each_thread_writes_its_own_buffer_and_the_taker_empties_all() {
        let shards = Arc::new(Shards::new(LIMIT));
        let mut taker = Taker::default();
        assert!(shards.append(line("main\n")));
        let others: Vec<_> = (0..4)
            .map(|i| {
                let shards = shards.clone();
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        assert!(shards.append(move |out, _| {
                            out.extend_from_slice(format!("t{i}\n").as_bytes())
                        }));
                    }
                })
            })
            .collect();
        for t in others {
            t.join().unwrap();
        }
        let text = taken(&mut taker, &shards);
        assert_eq!(text.lines().filter(|l| *l == "main").count(), 1);
        for i in 0..4 {
            let n = text.lines().filter(|l| *l == format!("t{i}")).count();
            assert_eq!(n, 100, "thread {i}");
        }
        // The ended threads' buffers are forgotten once emptied; this thread's stays.
        assert_eq!(taken(&mut taker, &shards), "");
        assert_eq!(taker.shards.len(), 2, "fallback and this thread");
        assert_eq!(shards.all().shards.len(), 2);
        assert!(shards.append(line("again\n")));
        assert_eq!(taken(&mut taker, &shards), "again\n");
    }

    #[test]
    fn a_full_buffer_refuses_and_a_taken_one_has_room_again() {
        let shards = Shards::new(10);
        let mut taker = Taker::default();
        assert!(shards.append(line("123456\n")));
        assert!(shards.append(line("abc\n")), "below the limit before it");
        assert!(!shards.append(line("lost\n")), "at the limit");
        assert_eq!(taken(&mut taker, &shards), "123456\nabc\n");
        assert!(shards.append(line("room\n")));
        assert_eq!(taken(&mut taker, &shards), "room\n");
    }

    #[test]
    fn two_logs_on_one_thread_keep_their_lines_apart() {
        let (a, b) = (Shards::new(LIMIT), Shards::new(LIMIT));
        let (mut ta, mut tb) = (Taker::default(), Taker::default());
        assert!(a.append(line("a1\n")));
        assert!(b.append(line("b1\n")));
        assert!(a.append(line("a2\n")));
        assert_eq!(taken(&mut ta, &a), "a1\na2\n");
        assert_eq!(taken(&mut tb, &b), "b1\n");
    }

    #[test]
    fn after_the_last_take_lines_are_refused() {
        let shards = Shards::new(LIMIT);
        let mut taker = Taker::default();
        assert!(shards.append(line("kept\n")));
        let mut out = Vec::new();
        taker.take(&shards, true, |b| out.extend_from_slice(b));
        assert_eq!(out, b"kept\n");
        assert!(!shards.append(line("late\n")));
        // Nor does a thread that joins only now get a buffer nobody would write.
        let shards = Arc::new(shards);
        let other = shards.clone();
        let joined = std::thread::spawn(move || other.append(line("new\n")));
        assert!(!joined.join().unwrap());
    }
}
