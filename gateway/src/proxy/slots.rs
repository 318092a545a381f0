//! A count of things in progress under a cap, shared by every worker: requests in flight
//! (`max_requests_in_flight`) and requests on one upstream server (`max_connections`).
//!
//! Taking and giving back a slot is one atomic add each and no lock (a tokio `Semaphore`
//! locks its wait list on every release); only a request that has to wait for a slot
//! registers to be woken, and a slot given back wakes someone only when someone waits.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// The count and its cap.
#[derive(Debug)]
pub struct Slots {
    in_use: AtomicUsize,
    max: usize,
    waiting: AtomicUsize,
    freed: Notify,
}

/// One slot, given back when dropped.
#[derive(Debug)]
pub struct Slot(Arc<Slots>);

impl Slots {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            in_use: AtomicUsize::new(0),
            max,
            waiting: AtomicUsize::new(0),
            freed: Notify::new(),
        })
    }

    /// The cap.
    pub fn capacity(&self) -> usize {
        self.max
    }

    /// A slot if one is free now.
    pub fn try_take(self: &Arc<Self>) -> Option<Slot> {
        if self.in_use.fetch_add(1, Ordering::AcqRel) < self.max {
            return Some(Slot(Arc::clone(self)));
        }
        // Not a slot given back (none was taken): waking a waiter here would wake this very
        // caller when it waits, in a loop.
        self.in_use.fetch_sub(1, Ordering::AcqRel);
        None
    }

    /// A slot, waiting up to `wait` for one to be given back.
    pub async fn take(self: &Arc<Self>, wait: Duration) -> Option<Slot> {
        if let Some(s) = self.try_take() {
            return Some(s);
        }
        self.waiting.fetch_add(1, Ordering::AcqRel);
        let got = tokio::time::timeout(wait, async {
            loop {
                let freed = self.freed.notified();
                tokio::pin!(freed);
                // Registered before trying, so a slot given back in between wakes us.
                freed.as_mut().enable();
                if let Some(s) = self.try_take() {
                    return s;
                }
                freed.await;
            }
        })
        .await
        .ok();
        self.waiting.fetch_sub(1, Ordering::AcqRel);
        got
    }

    /// Slots in use.
    pub fn in_use(&self) -> usize {
        self.in_use.load(Ordering::Acquire).min(self.max)
    }

    fn give_back(&self) {
        self.in_use.fetch_sub(1, Ordering::AcqRel);
        if self.waiting.load(Ordering::Acquire) > 0 {
            self.freed.notify_one();
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.give_back();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_is_exact_and_slots_come_back() {
        let s = Slots::new(2);
        let a = s.try_take().expect("first");
        let b = s.try_take().expect("second");
        assert!(s.try_take().is_none(), "over the cap");
        assert_eq!(s.in_use(), 2);
        drop(a);
        let c = s.try_take().expect("given back");
        drop((b, c));
        assert_eq!(s.in_use(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_gets_a_slot_given_back_within_the_wait_and_none_after_it() {
        let s = Slots::new(1);
        let held = s.try_take().expect("slot");
        let waiter = tokio::spawn({
            let s = s.clone();
            async move { s.take(Duration::from_secs(3)).await.is_some() }
        });
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(held);
        assert!(waiter.await.expect("task"), "woken by the slot given back");
        let held = s.try_take().expect("slot");
        let started = tokio::time::Instant::now();
        assert!(s.take(Duration::from_secs(3)).await.is_none());
        assert_eq!(started.elapsed(), Duration::from_secs(3));
        drop(held);
        assert_eq!(s.in_use(), 0);
    }
}
