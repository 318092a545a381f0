//! hyper's timer, coarse: HTTP/1's header-read deadline and HTTP/2's keep-alive pings need
//! tenths of a second, not tokio's millisecond wheel. hyper arms the header-read deadline
//! for every request head (a boxed tokio `Sleep`: allocated, put in the wheel, taken out and
//! freed again when the head has come, about a twentieth of a plain request's work); here a
//! deadline is a slot in this worker's list, filled when it is first polled and emptied when
//! it is dropped, and one ticker per worker wakes what is due every [`TICK`]. A deadline
//! fires at most one tick late; `now` is the last tick's clock, so hyper reads no clock
//! either.
//!
//! The worker installs its timer on its thread ([`CoarseTimer::install`]), for what runs
//! there but is built apart from the connections, before and across reloads: the upstream
//! request deadline ([`within`]) and the idle pool's clock ([`now`]). Off a worker (tests,
//! the admin runtime) both fall back to tokio's timer and the precise clock.

use hyper::rt::{Sleep, Timer};
use slab::Slab;
use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// How often due deadlines are woken (and how late one may fire).
pub const TICK: Duration = Duration::from_millis(50);

/// One worker's deadlines (the worker's connections and its ticker share it; the lock is
/// taken by one thread at a time in practice, and never across an await).
#[derive(Clone)]
pub struct CoarseTimer {
    wheel: Arc<Mutex<Wheel>>,
}

struct Wheel {
    /// The clock at the last tick.
    now: Instant,
    /// Deadlines being waited for: when, and whom to wake.
    waiting: Slab<(Instant, Waker)>,
}

impl CoarseTimer {
    pub fn new() -> Self {
        Self {
            wheel: Arc::new(Mutex::new(Wheel {
                now: Instant::now(),
                waiting: Slab::new(),
            })),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Wheel> {
        self.wheel.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Wakes what is due every [`TICK`], for as long as the task runs (its worker's life).
    pub async fn run(self) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut due = Vec::new();
        loop {
            tick.tick().await;
            self.advance(Instant::now(), &mut due);
        }
    }

    /// Moves the clock to `now` and wakes the deadlines it passed (outside the lock: a
    /// woken task may poll on this thread at once).
    fn advance(&self, now: Instant, due: &mut Vec<Waker>) {
        {
            let mut wheel = self.lock();
            wheel.now = now;
            due.extend(
                wheel
                    .waiting
                    .iter()
                    .filter(|(_, (at, _))| *at <= now)
                    .map(|(_, (_, waker))| waker.clone()),
            );
        }
        for waker in due.drain(..) {
            waker.wake();
        }
    }

    /// Makes this the timer of the worker whose thread calls it (see [`now`], [`within`]).
    pub fn install(&self) {
        WORKER.with(|w| *w.borrow_mut() = Some(self.clone()));
    }

    /// A deadline `after` from now that never fires early: `now` may be up to a tick old,
    /// so a tick is added; it fires at most two ticks late.
    fn deadline(&self, after: Duration) -> CoarseSleep {
        CoarseSleep {
            timer: self.clone(),
            deadline: self.now() + TICK + after,
            slot: None,
        }
    }

    /// Deadlines waited for now (tests).
    #[cfg(test)]
    fn waiting(&self) -> usize {
        self.lock().waiting.len()
    }
}

impl Default for CoarseTimer {
    fn default() -> Self {
        Self::new()
    }
}

impl Timer for CoarseTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        self.sleep_until(self.now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        Box::pin(CoarseSleep {
            timer: self.clone(),
            deadline,
            slot: None,
        })
    }

    fn now(&self) -> Instant {
        self.lock().now
    }
}

/// One deadline; its slot in the wheel is taken at its first wait and given back when it
/// fires or is dropped.
struct CoarseSleep {
    timer: CoarseTimer,
    deadline: Instant,
    slot: Option<usize>,
}

impl Future for CoarseSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        let mut wheel = this.timer.lock();
        if wheel.now >= this.deadline {
            if let Some(slot) = this.slot.take() {
                wheel.waiting.try_remove(slot);
            }
            return Poll::Ready(());
        }
        match this.slot.and_then(|s| wheel.waiting.get_mut(s)) {
            Some((_, waker)) => {
                if !waker.will_wake(cx.waker()) {
                    waker.clone_from(cx.waker());
                }
            }
            None => this.slot = Some(wheel.waiting.insert((this.deadline, cx.waker().clone()))),
        }
        Poll::Pending
    }
}

impl Sleep for CoarseSleep {}

impl Drop for CoarseSleep {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            self.timer.lock().waiting.try_remove(slot);
        }
    }
}

thread_local! {
    /// The timer of the worker running on this thread, if any.
    static WORKER: RefCell<Option<CoarseTimer>> = const { RefCell::new(None) };
}

/// The worker's clock as of its last tick (at most a [`TICK`] old), or the precise clock
/// off a worker: for ages measured in seconds, such as idle pooled connections'.
pub fn now() -> Instant {
    WORKER
        .with(|w| w.borrow().as_ref().map(Timer::now))
        .unwrap_or_else(Instant::now)
}

/// `future`, unless `after` passes first: on a worker, on its coarse timer (never early, at
/// most two ticks late); elsewhere on tokio's. The future is borrowed pinned, not moved: an
/// upstream exchange is a few KiB, and each move copies it.
pub async fn within<F: Future>(
    after: Duration,
    mut future: Pin<&mut F>,
) -> Result<F::Output, Elapsed> {
    let deadline = WORKER.with(|w| w.borrow().as_ref().map(|t| t.deadline(after)));
    let mut deadline = match deadline {
        Some(d) => Deadline::Coarse(d),
        None => Deadline::Tokio(Box::pin(tokio::time::sleep(after))),
    };
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = future.as_mut().poll(cx) {
            return Poll::Ready(Ok(out));
        }
        let passed = match &mut deadline {
            Deadline::Coarse(d) => Pin::new(d).poll(cx),
            Deadline::Tokio(d) => d.as_mut().poll(cx),
        };
        passed.map(|()| Err(Elapsed))
    })
    .await
}

/// The deadline of [`within`] passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

enum Deadline {
    Coarse(CoarseSleep),
    Tokio(Pin<Box<tokio::time::Sleep>>),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;

    #[tokio::test(flavor = "current_thread")]
    async fn a_deadline_fires_within_a_tick_of_it() {
        let timer = CoarseTimer::new();
        let ticker = tokio::spawn(timer.clone().run());
        for wait in [
            Duration::ZERO,
            Duration::from_millis(30),
            Duration::from_millis(220),
        ] {
            let start = Instant::now();
            timer.sleep(wait).await;
            let took = start.elapsed();
            // `now` may be a tick old when the deadline is set: it can fire that much early.
            assert!(took + TICK >= wait, "{wait:?}: fired after {took:?}");
            assert!(took <= wait + 4 * TICK, "{wait:?}: fired after {took:?}");
        }
        assert_eq!(timer.waiting(), 0, "a fired deadline gives its slot back");
        ticker.abort();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn dropped_deadlines_give_their_slots_back() {
        let timer = CoarseTimer::new();
        let ticker = tokio::spawn(timer.clone().run());
        // Polled once (so each holds a slot), then dropped: hyper's header-read deadline
        // when the head arrives in time.
        for _ in 0..1000 {
            let mut sleep = timer.sleep(Duration::from_secs(60));
            let first = poll_fn(|cx| Poll::Ready(sleep.as_mut().poll(cx))).await;
            assert!(first.is_pending());
        }
        assert_eq!(timer.waiting(), 0);
        // Some kept, some dropped: the kept ones fire, and only they hold slots meanwhile.
        let kept: Vec<_> = (0..10)
            .map(|i| timer.sleep(Duration::from_millis(20 * i)))
            .collect();
        let mut dropped = timer.sleep(Duration::from_millis(10));
        assert!(poll_fn(|cx| Poll::Ready(dropped.as_mut().poll(cx)))
            .await
            .is_pending());
        drop(dropped);
        let all = tokio::time::timeout(Duration::from_secs(5), async {
            for s in kept {
                s.await;
            }
        });
        assert!(all.await.is_ok(), "every kept deadline fired");
        assert_eq!(timer.waiting(), 0);
        ticker.abort();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_latest_waker_is_woken() {
        let timer = CoarseTimer::new();
        let mut sleep = timer.sleep(Duration::from_millis(10));
        // First polled by one task, then moved to and awaited by another: the second must
        // be the one woken.
        assert!(poll_fn(|cx| Poll::Ready(sleep.as_mut().poll(cx)))
            .await
            .is_pending());
        let waiter = tokio::spawn(sleep);
        let ticker = tokio::spawn(timer.clone().run());
        let done = tokio::time::timeout(Duration::from_secs(5), waiter).await;
        assert!(matches!(done, Ok(Ok(()))), "{done:?}");
        ticker.abort();
    }

    #[tokio::test(flavor = "current_thread")]
    async fn off_a_worker_within_and_now_use_tokio_and_the_precise_clock() {
        let before = Instant::now();
        assert!(now() >= before, "the precise clock, not a tick's");
        let slow = within(
            Duration::from_millis(20),
            std::pin::pin!(std::future::pending::<()>()),
        )
        .await;
        assert_eq!(slow, Err(Elapsed));
        assert!(before.elapsed() >= Duration::from_millis(20));
        assert_eq!(
            within(Duration::from_secs(5), std::pin::pin!(async { 7 })).await,
            Ok(7)
        );
    }

    /// On a worker's thread: the coarse timer, never early, at most two ticks late, and its
    /// slot given back whichever side finishes first.
    #[test]
    fn on_a_worker_within_uses_its_coarse_timer() {
        let worker = std::thread::spawn(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let timer = CoarseTimer::new();
                timer.install();
                let ticker = tokio::spawn(timer.clone().run());
                tokio::time::sleep(TICK / 2).await;
                let before = Instant::now();
                assert!(now() <= before, "the last tick's clock");
                assert!(before - now() <= 2 * TICK, "at most a tick old");
                for wait in [Duration::ZERO, Duration::from_millis(30), 3 * TICK] {
                    let start = Instant::now();
                    let r = within(wait, std::pin::pin!(std::future::pending::<()>())).await;
                    let took = start.elapsed();
                    assert_eq!(r, Err(Elapsed));
                    assert!(took >= wait, "{wait:?}: fired early, after {took:?}");
                    assert!(took <= wait + 4 * TICK, "{wait:?}: fired after {took:?}");
                    assert_eq!(timer.waiting(), 0, "a fired deadline gives its slot back");
                }
                // The future first: its deadline (in this worker's wheel while it waits)
                // goes with it.
                let sleep = std::pin::pin!(tokio::time::sleep(TICK));
                let mut quick = Box::pin(within(Duration::from_secs(60), sleep));
                assert!(poll_fn(|cx| Poll::Ready(quick.as_mut().poll(cx)))
                    .await
                    .is_pending());
                assert_eq!(timer.waiting(), 1, "the deadline waits in the coarse wheel");
                assert_eq!(quick.as_mut().await, Ok(()));
                drop(quick);
                assert_eq!(timer.waiting(), 0);
                ticker.abort();
            });
        });
        if let Err(e) = worker.join() {
            std::panic::resume_unwind(e);
        }
    }
}
