//! The proxy a worker serves with, replaced whole by a reload.
//!
//! Each request loads the current [`Proxy`] once, at its start, and keeps that `Arc` to
//! the end: a request in flight finishes with the config it started with, and the next
//! request on the same connection gets the new one. Loading is one atomic operation (no
//! lock); the old proxy is freed when its last request ends.

use super::handler::Proxy;
use arc_swap::ArcSwap;
use std::sync::Arc;

/// One worker's current proxy.
pub struct LiveProxy(ArcSwap<Proxy>);

impl LiveProxy {
    pub fn new(proxy: Arc<Proxy>) -> Arc<Self> {
        Arc::new(Self(ArcSwap::new(proxy)))
    }

    /// The proxy for one request, kept by it to its end.
    pub fn current(&self) -> Arc<Proxy> {
        self.0.load_full()
    }

    /// A short look at the current proxy (metrics, the abuse engine); not to be held
    /// across an `.await`.
    pub fn peek(&self) -> arc_swap::Guard<Arc<Proxy>> {
        self.0.load()
    }

    /// From now on requests start with `proxy`.
    pub fn replace(&self, proxy: Arc<Proxy>) {
        self.0.store(proxy);
    }
}
