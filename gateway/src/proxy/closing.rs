//! Telling a worker's open connections to finish: when the gateway shuts down, when a
//! connection's source gets banned (its packets are dropped from then on, so what it already
//! had open is closed too), and when a connection has gone quiet (see [`super::idle`]).
//!
//! A connection's task checks its signal every time it wakes, next to serving HTTP, so the
//! check is an atomic load and a waker kept up to date, not a channel receive (that cost a
//! locked waiter-list update per wake-up: ~3% of a request) or a timer of its own (polling
//! one cost ~1%). The waiting is done once per worker: [`Closer::watch_bans`] looks up the
//! connections a new deny entry covers (a range query over the worker's connections by
//! address, so a ban costs the same however many connections and bans there are), and
//! [`Closer::watch_idle`] rescans a few times per idle limit.

use super::handler::ConnInfo;
use crate::deny::DenyStore;
use crate::ebpf::addr::{key_range, key_u128};
use crate::ebpf::Target;
use atomic_waker::AtomicWaker;
use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{broadcast, watch};

/// Why a connection is asked to finish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    Shutdown,
    Banned,
    /// Nothing in progress for the idle limit.
    Idle,
}

impl Reason {
    fn code(self) -> u8 {
        match self {
            Reason::Shutdown => 1,
            Reason::Banned => 2,
            Reason::Idle => 3,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        match code {
            1 => Some(Reason::Shutdown),
            2 => Some(Reason::Banned),
            3 => Some(Reason::Idle),
            _ => None,
        }
    }
}

/// One connection's signal: the first reason given wins.
#[derive(Default)]
struct Signal {
    reason: AtomicU8,
    waker: AtomicWaker,
}

impl Signal {
    fn raise(&self, reason: Reason) {
        let _ = self
            .reason
            .compare_exchange(0, reason.code(), Ordering::AcqRel, Ordering::Acquire);
        self.waker.wake();
    }

    fn reason(&self) -> Option<Reason> {
        Reason::from_code(self.reason.load(Ordering::Acquire))
    }

    fn poll(&self, cx: &mut Context<'_>) -> Poll<Reason> {
        if let Some(r) = self.reason() {
            return Poll::Ready(r);
        }
        self.waker.register(cx.waker());
        // Raised between the load and the registration: its wake-up may have found no waker.
        match self.reason() {
            Some(r) => Poll::Ready(r),
            None => Poll::Pending,
        }
    }
}

/// The open connections of one worker.
pub struct Closer {
    conns: Mutex<Conns>,
    shutting_down: AtomicBool,
    store: Option<Arc<DenyStore>>,
}

#[derive(Default)]
struct Conns {
    next: u64,
    open: HashMap<u64, (Arc<ConnInfo>, Arc<Signal>)>,
    /// (peer address in the kernel's key space, connection key): the connections a deny
    /// entry covers are one range.
    by_addr: BTreeSet<(u128, u64)>,
}

/// A connection's place in its worker's [`Closer`]; leaving drops it.
pub struct Registration {
    closer: Arc<Closer>,
    key: u64,
    signal: Arc<Signal>,
}

impl Registration {
    /// Resolves when the connection should finish, with why.
    pub fn closing(&self) -> impl Future<Output = Reason> + '_ {
        std::future::poll_fn(|cx| self.signal.poll(cx))
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let mut conns = self.closer.lock();
        if let Some((conn, _)) = conns.open.remove(&self.key) {
            conns.by_addr.remove(&(key_u128(conn.peer.ip()), self.key));
        }
    }
}

impl Closer {
    /// `store`: the deny list whose bans close connections (none without an abuse engine).
    pub fn new(store: Option<Arc<DenyStore>>) -> Arc<Self> {
        Arc::new(Self {
            conns: Mutex::new(Conns::default()),
            shutting_down: AtomicBool::new(false),
            store,
        })
    }

    pub fn register(self: &Arc<Self>, conn: &Arc<ConnInfo>) -> Registration {
        let signal = Arc::new(Signal::default());
        let ip = conn.peer.ip();
        let key = {
            let mut conns = self.lock();
            let key = conns.next;
            conns.next += 1;
            conns.open.insert(key, (conn.clone(), signal.clone()));
            conns.by_addr.insert((key_u128(ip), key));
            key
        };
        // A shutdown or ban that came between accepting and registering found no entry.
        if self.shutting_down.load(Ordering::Acquire) {
            signal.raise(Reason::Shutdown);
        } else if self.store.as_ref().is_some_and(|s| s.is_denied(ip)) {
            signal.raise(Reason::Banned);
        }
        Registration {
            closer: self.clone(),
            key,
            signal,
        }
    }

    /// Asks every connection, and every one registered from now on, to finish.
    pub fn shut_down(&self) {
        self.shutting_down.store(true, Ordering::Release);
        for (_, signal) in self.lock().open.values() {
            signal.raise(Reason::Shutdown);
        }
    }

    /// Asks the connections whose source `target` covers to finish.
    fn close_covered(&self, target: &Target) {
        let (first, last, _) = key_range(target);
        let conns = self.lock();
        for (_, key) in conns.by_addr.range((first, 0)..=(last, u64::MAX)) {
            if let Some((_, signal)) = conns.open.get(key) {
                signal.raise(Reason::Banned);
            }
        }
    }

    /// Asks the connections of every denied source to finish (after missing entries).
    fn close_banned(&self, store: &DenyStore) {
        for (conn, signal) in self.lock().open.values() {
            if store.is_denied(conn.peer.ip()) {
                signal.raise(Reason::Banned);
            }
        }
    }

    /// Closes the connections of each new deny entry's sources, until the deny list is
    /// dropped (runs for the worker's life; returns at once without a deny list).
    pub async fn watch_bans(self: Arc<Self>) {
        let Some(store) = self.store.clone() else {
            return;
        };
        let mut added = store.subscribe();
        loop {
            match added.recv().await {
                Ok(target) => self.close_covered(&target),
                Err(broadcast::error::RecvError::Lagged(_)) => self.close_banned(&store),
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    /// Closes connections that have had nothing in progress for `limit`, looking a few
    /// times per limit (at most once a second), so one closes within a quarter of the limit
    /// (at most a second) after it is due. Runs for the worker's life.
    pub async fn watch_idle(self: Arc<Self>, limit: Duration) {
        let every = (limit / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let now = tokio::time::Instant::now();
            for (conn, signal) in self.lock().open.values() {
                if conn.activity.is_quiet(limit, now) {
                    signal.raise(Reason::Idle);
                }
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, Conns> {
        self.conns.lock().unwrap_or_else(PoisonError::into_inner)
    }

    #[cfg(test)]
    fn open(&self) -> usize {
        self.lock().open.len()
    }
}

/// Resolves once the flag is true (or its sender is gone).
pub async fn wait_true(rx: &mut watch::Receiver<bool>) {
    while !*rx.borrow_and_update() {
        if rx.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "192.0.2.1:40000";

    fn conn(addr: &str) -> Arc<ConnInfo> {
        let peer = addr
            .parse()
            .unwrap_or(std::net::SocketAddr::from(([192, 0, 2, 9], 1)));
        Arc::new(ConnInfo::new(peer, true))
    }

    fn pending<F: Future + Unpin>(f: &mut F) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        std::pin::Pin::new(f).poll(&mut cx).is_pending()
    }

    #[tokio::test]
    async fn shut_down_reaches_open_and_later_connections() {
        let closer = Closer::new(None);
        let first = closer.register(&conn(A));
        let waiting = tokio::spawn({
            let closer = closer.clone();
            async move {
                let r = closer.register(&conn(A));
                r.closing().await
            }
        });
        tokio::task::yield_now().await;
        let mut before = Box::pin(first.closing());
        assert!(pending(&mut before), "nothing asked yet");
        closer.shut_down();
        assert_eq!(before.await, Reason::Shutdown);
        let woken = tokio::time::timeout(Duration::from_secs(5), waiting).await;
        assert!(
            matches!(woken, Ok(Ok(Reason::Shutdown))),
            "a waiting connection is woken: {woken:?}"
        );
        let late = closer.register(&conn(A));
        assert_eq!(late.closing().await, Reason::Shutdown, "registered after");
    }

    #[tokio::test]
    async fn bans_close_only_the_banned_sources_connections() {
        let store = Arc::new(DenyStore::new(None, None, Vec::new()));
        let closer = Closer::new(Some(store.clone()));
        let watcher = tokio::spawn(closer.clone().watch_bans());
        let banned = closer.register(&conn(A));
        let other = closer.register(&conn("198.51.100.7:40000"));
        tokio::task::yield_now().await;
        store
            .add(
                crate::ebpf::Target::Addr([192, 0, 2, 1].into()),
                None,
                "manual",
                "test",
                1,
            )
            .expect("deny add");
        let closed = tokio::time::timeout(Duration::from_secs(5), banned.closing()).await;
        assert_eq!(closed.ok(), Some(Reason::Banned));
        let mut f = Box::pin(other.closing());
        assert!(pending(&mut f), "another source's connection stays open");
        drop(f);
        // Connecting again after the ban (before the data plane drops it): closed at once.
        assert_eq!(closer.register(&conn(A)).closing().await, Reason::Banned);
        // A prefix closes the connections inside it, IPv4-mapped peers included, and
        // only those.
        let inside = closer.register(&conn("[::ffff:198.51.100.9]:40000"));
        let v6 = closer.register(&conn("[2001:db8:1::5]:40000"));
        let v6_out = closer.register(&conn("[2001:db8:2::5]:40000"));
        store
            .add("198.51.100.0/24".parse().unwrap(), None, "manual", "t", 1)
            .expect("deny add");
        store
            .add("2001:db8:1::/48".parse().unwrap(), None, "manual", "t", 1)
            .expect("deny add");
        for r in [&other, &inside, &v6] {
            let closed = tokio::time::timeout(Duration::from_secs(5), r.closing()).await;
            assert_eq!(closed.ok(), Some(Reason::Banned));
        }
        let mut f = Box::pin(v6_out.closing());
        assert!(pending(&mut f), "outside the prefix");
        drop(f);
        drop(inside);
        drop(v6);
        drop(v6_out);
        drop(other);
        drop(banned);
        assert_eq!(closer.open(), 0, "leaving unregisters from both indexes");
        assert!(closer.lock().by_addr.is_empty());
        watcher.abort();
    }

    #[test]
    fn first_reason_wins_and_leaving_unregisters() {
        let closer = Closer::new(None);
        let r = closer.register(&conn(A));
        let other = closer.register(&conn(A));
        assert_eq!(closer.open(), 2);
        r.signal.raise(Reason::Banned);
        closer.shut_down();
        let mut f = Box::pin(r.closing());
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert_eq!(f.as_mut().poll(&mut cx), Poll::Ready(Reason::Banned));
        drop(f);
        drop(r);
        drop(other);
        assert_eq!(closer.open(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn quiet_connections_are_closed_and_busy_ones_kept() {
        let limit = Duration::from_secs(8);
        let closer = Closer::new(None);
        let (quiet, busy, http1) = (conn(A), conn(A), conn(A));
        let (rq, rb, r1) = (
            closer.register(&quiet),
            closer.register(&busy),
            closer.register(&http1),
        );
        let in_progress = busy.activity.request(http::Version::HTTP_2);
        assert!(http1.activity.request(http::Version::HTTP_11).is_none());
        let watcher = tokio::spawn(closer.clone().watch_idle(limit));
        let mut quiet_closing = Box::pin(rq.closing());
        let mut busy_closing = Box::pin(rb.closing());
        let mut http1_closing = Box::pin(r1.closing());
        tokio::time::sleep(Duration::from_secs(7)).await;
        assert!(pending(&mut quiet_closing), "not quiet for the limit yet");
        // Due at 8 s; looked at every 2 s.
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(quiet_closing.await, Reason::Idle);
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(pending(&mut busy_closing), "a request is in progress");
        assert!(pending(&mut http1_closing), "hyper times HTTP/1");
        drop(in_progress);
        tokio::time::sleep(Duration::from_secs(7)).await;
        assert!(pending(&mut busy_closing), "quiet for 7 s only");
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(busy_closing.await, Reason::Idle);
        assert!(pending(&mut http1_closing));
        watcher.abort();
    }
}
