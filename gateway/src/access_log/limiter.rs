//! Connection event lines (failed handshakes, refusals at accept) are limited: at most one
//! per source (IPv6: per /64) per second, and [`GLOBAL_PER_SEC`] in all, so a flood of
//! broken handshakes cannot flood the log or crowd out request lines. Lock-free: one slot
//! per hashed source, an atomic swap each.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Slots of the per-source table (sources that share one may log a little more).
const SLOTS: usize = 4096;
/// Event lines per second, all sources together.
pub const GLOBAL_PER_SEC: u64 = 100;

#[derive(Debug)]
pub struct EventLimiter {
    epoch: Instant,
    hasher: foldhash::fast::FixedState,
    /// Per slot: the source's hash tag (high 32 bits) and the second it last logged.
    slots: Box<[AtomicU64]>,
    /// The current second (high 32 bits) and the lines logged in it.
    global: AtomicU64,
}

impl Default for EventLimiter {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            hasher: foldhash::fast::FixedState::with_seed(0x6761_7465),
            slots: (0..SLOTS).map(|_| AtomicU64::new(u64::MAX)).collect(),
            global: AtomicU64::new(0),
        }
    }
}

impl EventLimiter {
    /// Whether `source` may log a line now.
    pub fn allow(&self, source: IpAddr) -> bool {
        let sec = self.epoch.elapsed().as_secs() & 0xffff_ffff;
        self.allow_at(crate::abuse::source_key(source, 64), sec)
    }

    fn allow_at(&self, source: IpAddr, sec: u64) -> bool {
        use std::hash::BuildHasher;
        let h = self.hasher.hash_one(source);
        let tag = h >> 32;
        let stamp = (tag << 32) | sec;
        let slot = &self.slots[(h as usize) % SLOTS];
        if slot.swap(stamp, Ordering::Relaxed) == stamp {
            return false;
        }
        // The global budget: reset when the second changes.
        let mut cur = self.global.load(Ordering::Relaxed);
        loop {
            let (s, n) = (cur >> 32, cur & 0xffff_ffff);
            let next = if s == sec {
                if n >= GLOBAL_PER_SEC {
                    return false;
                }
                cur + 1
            } else {
                (sec << 32) | 1
            };
            match self
                .global
                .compare_exchange_weak(cur, next, Ordering::Relaxed, Ordering::Relaxed)
            {
                Ok(_) => return true,
                Err(actual) => cur = actual,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(i: u32) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i))
    }

    #[test]
    fn one_line_per_source_per_second() {
        let l = EventLimiter::default();
        assert!(l.allow_at(ip(1), 5));
        for _ in 0..100 {
            assert!(!l.allow_at(ip(1), 5));
        }
        assert!(l.allow_at(ip(2), 5), "another source");
        assert!(l.allow_at(ip(1), 6), "the next second");
    }

    #[test]
    fn an_ipv6_host_cannot_rotate_through_its_prefix() {
        let l = EventLimiter::default();
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        assert!(l.allow_at(crate::abuse::source_key(a, 64), 1));
        assert!(!l.allow_at(crate::abuse::source_key(b, 64), 1));
        assert!(l.allow(a));
        assert!(!l.allow(b));
    }

    #[test]
    fn many_sources_share_a_global_budget() {
        let l = EventLimiter::default();
        let allowed = (0..10_000).filter(|&i| l.allow_at(ip(i), 7)).count();
        assert_eq!(allowed as u64, GLOBAL_PER_SEC);
        assert!(l.allow_at(ip(20_000), 8), "a new second, a new budget");
    }
}
