//! An even spread of client connections over the workers.
//!
//! Each worker accepts on its own SO_REUSEPORT socket, and the kernel picks the socket by a
//! hash of the connection's addresses. For many short connections that evens out; for a
//! few dozen long-lived ones (a load balancer's or CDN's keep-alive pool, a benchmark's 50)
//! it often does not: 31/21 on two workers is common, and the busier worker's requests wait
//! longer. So a worker that accepts a connection while another serves fewer hands it over,
//! as HAProxy's thread selection and Envoy's `exact_balance` do. The cost is a channel send
//! and a wake-up of the other worker per connection handed over; nothing per request.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, OwnedSemaphorePermit};

/// A connection one worker accepted for another to serve.
#[derive(Debug)]
pub struct Handoff {
    pub stream: std::net::TcpStream,
    pub peer: SocketAddr,
    /// Accepted on a TLS listener.
    pub tls: bool,
    /// Its place in `[listen] max_connections`, which also bounds the inboxes.
    pub permit: OwnedSemaphorePermit,
}

/// Every worker's count of connections it serves, and its inbox.
#[derive(Debug)]
pub struct Balance {
    workers: Box<[Worker]>,
}

#[derive(Debug)]
struct Worker {
    open: AtomicUsize,
    inbox: mpsc::UnboundedSender<Handoff>,
}

impl Balance {
    /// `workers` counts and inboxes; the receivers go to the workers, in order.
    pub fn new(workers: usize) -> (Arc<Self>, Vec<mpsc::UnboundedReceiver<Handoff>>) {
        let (workers, inboxes): (Vec<Worker>, Vec<_>) = (0..workers.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::unbounded_channel();
                (
                    Worker {
                        open: AtomicUsize::new(0),
                        inbox: tx,
                    },
                    rx,
                )
            })
            .unzip();
        (
            Arc::new(Self {
                workers: workers.into_boxed_slice(),
            }),
            inboxes,
        )
    }

    /// The worker that should serve a connection worker `me` just accepted, when not `me`:
    /// the one serving the fewest, if that is fewer than `me` serves. Ties stay, so
    /// connections move only to correct an imbalance; a worker whose inbox is gone (it
    /// has stopped) is never picked.
    pub fn pick(&self, me: usize) -> Option<usize> {
        let mine = self.workers.get(me)?.open.load(Ordering::Relaxed);
        let (least, count) = self
            .workers
            .iter()
            .enumerate()
            .filter(|(i, w)| *i != me && !w.inbox.is_closed())
            .map(|(i, w)| (i, w.open.load(Ordering::Relaxed)))
            .min_by_key(|&(_, open)| open)?;
        (count < mine).then_some(least)
    }

    /// Hands a connection to worker `to`. `Err` gives it back when that worker has stopped
    /// in between (or the stream cannot leave this worker's reactor), for the caller to
    /// serve itself.
    pub fn hand_off(&self, to: usize, handoff: Handoff) -> Result<(), Handoff> {
        match self.workers.get(to) {
            Some(w) => w.inbox.send(handoff).map_err(|e| e.0),
            None => Err(handoff),
        }
    }

    /// Counts a connection worker `me` serves, until the guard drops.
    pub fn serving(self: &Arc<Self>, me: usize) -> Serving {
        if let Some(w) = self.workers.get(me) {
            w.open.fetch_add(1, Ordering::Relaxed);
        }
        Serving {
            balance: self.clone(),
            me,
        }
    }

    /// Connections each worker serves, in worker order.
    pub fn open(&self) -> Vec<usize> {
        self.workers
            .iter()
            .map(|w| w.open.load(Ordering::Relaxed))
            .collect()
    }
}

/// One connection in its worker's count (see [`Balance::serving`]).
#[derive(Debug)]
pub struct Serving {
    balance: Arc<Balance>,
    me: usize,
}

impl Drop for Serving {
    fn drop(&mut self) {
        if let Some(w) = self.balance.workers.get(self.me) {
            w.open.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests;
