//! Events waiting to be published: a bounded queue the request path pushes into without
//! waiting (a short lock, no I/O), drained by the publisher task. While Redis is away it
//! fills; when full, the oldest automatic event goes first (a manual deny or its removal is
//! an operator's decision and is kept longer), and every drop is counted.

use super::message::Event;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use tokio::sync::Notify;

#[derive(Debug)]
struct Queued {
    seq: u64,
    automatic: bool,
    event: Event,
}

#[derive(Debug, Default)]
struct Inner {
    queue: VecDeque<Queued>,
    next_seq: u64,
}

/// The bounded queue of outgoing events.
#[derive(Debug)]
pub struct Outbox {
    inner: Mutex<Inner>,
    cap: usize,
    dropped: AtomicU64,
    ready: Notify,
}

impl Outbox {
    pub fn new(cap: usize) -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            cap: cap.max(1),
            dropped: AtomicU64::new(0),
            ready: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues an event; never waits. When full, drops the oldest automatic event (or the
    /// oldest of all when none is automatic).
    pub fn push(&self, event: Event, automatic: bool) {
        {
            let mut inner = self.lock();
            if inner.queue.len() >= self.cap {
                let victim = inner.queue.iter().position(|q| q.automatic).unwrap_or(0);
                inner.queue.remove(victim);
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            let seq = inner.next_seq;
            inner.next_seq += 1;
            inner.queue.push_back(Queued {
                seq,
                automatic,
                event,
            });
        }
        self.ready.notify_one();
    }

    /// Up to `max` events from the front, with the sequence number to [`Outbox::ack`] once
    /// they are published. They stay queued until then.
    pub fn peek(&self, max: usize) -> (Vec<Event>, Option<u64>) {
        let inner = self.lock();
        let batch: Vec<&Queued> = inner.queue.iter().take(max).collect();
        let last = batch.last().map(|q| q.seq);
        (batch.into_iter().map(|q| q.event.clone()).collect(), last)
    }

    /// Removes published events: every queued one up to `seq`.
    pub fn ack(&self, seq: u64) {
        let mut inner = self.lock();
        while inner.queue.front().is_some_and(|q| q.seq <= seq) {
            inner.queue.pop_front();
        }
    }

    /// Waits until something is pushed (returns at once when a push came since the last wait).
    pub async fn wait(&self) {
        self.ready.notified().await;
    }

    pub fn len(&self) -> usize {
        self.lock().queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Events dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::super::message::Op;
    use super::*;

    fn ev(n: u8) -> Event {
        Event {
            op: Op::Add,
            target: format!("198.51.100.{n}").parse().unwrap(),
            origin: "manual".into(),
            reason: String::new(),
            node: "a".into(),
            created_ms: 0,
            expires_unix: 0,
        }
    }

    fn targets(o: &Outbox) -> Vec<String> {
        o.peek(100).0.iter().map(|e| e.target.to_string()).collect()
    }

    #[test]
    fn full_queue_drops_oldest_automatic_first_and_counts() {
        let o = Outbox::new(3);
        o.push(ev(1), false);
        o.push(ev(2), true);
        o.push(ev(3), true);
        o.push(ev(4), false);
        assert_eq!(
            targets(&o),
            ["198.51.100.1", "198.51.100.3", "198.51.100.4"]
        );
        o.push(ev(5), false);
        assert_eq!(
            targets(&o),
            ["198.51.100.1", "198.51.100.4", "198.51.100.5"]
        );
        // No automatic one left: the oldest of all goes.
        o.push(ev(6), false);
        assert_eq!(
            targets(&o),
            ["198.51.100.4", "198.51.100.5", "198.51.100.6"]
        );
        assert_eq!(o.dropped(), 3);
    }

    #[test]
    fn ack_removes_only_what_was_published() {
        let o = Outbox::new(10);
        o.push(ev(1), true);
        o.push(ev(2), true);
        let (batch, seq) = o.peek(1);
        assert_eq!(batch.len(), 1);
        o.push(ev(3), true);
        o.ack(seq.unwrap());
        assert_eq!(targets(&o), ["198.51.100.2", "198.51.100.3"]);
    }
}
