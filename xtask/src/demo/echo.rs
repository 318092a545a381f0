//! The demo's upstream: a small HTTP/1.1 server on loopback that answers every request with a
//! JSON echo of its method, path, query, the `X-*` and `Forwarded` headers it received (so
//! the claim headers the gateway adds show up), whether an `Authorization` header reached it,
//! and the body size.
//!
//! Demo tooling, but robust: keep-alive, `Content-Length` and chunked bodies,
//! `Expect: 100-continue`; bounded head (16 KiB), body (1 MiB) and connection count (256);
//! idle connections closed after 60 s; bad input gets a 4xx and the connection is closed,
//! never a panic.

mod answer;
mod conn;
mod head;

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use answer::response;
use conn::serve;

const MAX_HEAD: usize = 16 * 1024;
const MAX_BODY: usize = 1024 * 1024;
const MAX_LINE: usize = 4096;
const MAX_CONNECTIONS: usize = 256;
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Granularity at which blocked reads notice a stop request.
const TICK: Duration = Duration::from_millis(250);

/// A running echo server; [`Echo::stop`] ends it.
pub struct Echo {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    active: Arc<AtomicUsize>,
    acceptor: Option<JoinHandle<()>>,
}

impl Echo {
    /// Binds `addr` (port 0 picks a free port) and serves in background threads.
    pub fn start(addr: SocketAddr) -> Result<Echo> {
        let listener =
            TcpListener::bind(addr).with_context(|| format!("binding the echo upstream {addr}"))?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let active = Arc::new(AtomicUsize::new(0));
        let acceptor = {
            let (stop, active) = (stop.clone(), active.clone());
            thread::Builder::new()
                .name("echo-accept".into())
                .spawn(move || accept_loop(listener, stop, active))
                .context("starting the echo upstream")?
        };
        Ok(Echo {
            addr,
            stop,
            active,
            acceptor: Some(acceptor),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, then waits (up to 2 s) for open connections to end.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.acceptor.take() {
            let _ = t.join();
        }
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.active.load(Ordering::SeqCst) > 0 && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        if self.acceptor.is_some() {
            self.shutdown();
        }
    }
}

fn accept_loop(listener: TcpListener, stop: Arc<AtomicBool>, active: Arc<AtomicUsize>) {
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(mut stream) = conn else {
            // EMFILE and friends: back off instead of spinning.
            thread::sleep(Duration::from_millis(50));
            continue;
        };
        if active.load(Ordering::SeqCst) >= MAX_CONNECTIONS {
            let _ = stream.set_write_timeout(Some(Duration::from_secs(1)));
            let _ = stream.write_all(&response(
                503,
                "text/plain",
                b"too many connections\n",
                false,
                false,
            ));
            continue;
        }
        active.fetch_add(1, Ordering::SeqCst);
        let guard = Active(active.clone());
        let stop = stop.clone();
        let spawned = thread::Builder::new()
            .name("echo-conn".into())
            .spawn(move || {
                let _guard = guard;
                serve(stream, &stop);
            });
        // On failure the closure (and with it the guard and the stream) is dropped.
        drop(spawned);
    }
}

/// Decrements the open-connection count when a connection thread ends (even by a panic).
struct Active(Arc<AtomicUsize>);

impl Drop for Active {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests;
