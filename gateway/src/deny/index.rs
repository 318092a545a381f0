//! The user plane's index of deny entries, so that no operation costs a walk over the list:
//! adding, removing and finding an entry is a hash or tree operation (O(log n) at most), a
//! source is checked with one exact lookup and one longest-prefix lookup, the sweep touches
//! only what expired, and the automatic ban closest to expiry is found at once when the
//! kernel map is full.
//!
//! Keys are the kernel's (128 bits, IPv4 as `::ffff:a.b.c.d`), so the index matches exactly
//! what the maps match.

use crate::ebpf::addr::{key_of, Target};
use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet};

/// Keys are addresses attackers choose (by getting banned): a randomly seeded hash.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::quality::RandomState>;
use std::net::IpAddr;

/// What the index keeps per entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Meta {
    /// Unix seconds; 0 = until removed.
    pub expires_unix: u64,
    /// Made by the abuse engine: the only kind evicted when a map is full.
    pub automatic: bool,
}

pub fn live(expires_unix: u64, now: u64) -> bool {
    expires_unix == 0 || expires_unix > now
}

/// Prefix length (in the 128-bit key space) and masked key of a prefix.
fn net_key(n: &IpNet) -> (u8, u128) {
    match n {
        IpNet::V4(v4) => (
            96 + v4.prefix_len(),
            u128::from_be_bytes(key_of(IpAddr::V4(v4.network()))),
        ),
        IpNet::V6(v6) => (v6.prefix_len(), u128::from(v6.network())),
    }
}

fn mask(key: u128, len: u8) -> u128 {
    match len {
        0 => 0,
        l => key & (u128::MAX << (128 - u32::from(l))),
    }
}

/// Which kernel map an entry lives in; each has its own capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Address,
    Prefix,
}

impl Kind {
    pub fn of(t: &Target) -> Self {
        match t {
            Target::Addr(_) => Kind::Address,
            Target::Net(_) => Kind::Prefix,
        }
    }
}

#[derive(Debug, Default)]
pub struct Index {
    exact: HashMap<u128, (Target, Meta)>,
    /// Prefixes by length, longest first when iterated in reverse. A longest-prefix lookup
    /// costs one hash lookup per distinct length in use (at most 129, in practice the
    /// abuse engine's one IPv6 length plus a few manual ones), never one per entry.
    nets: BTreeMap<u8, HashMap<u128, (Target, Meta)>>,
    /// Entries with an expiry, by expiry: the sweep pops the expired ones.
    expiring: BTreeSet<(u64, Target)>,
    /// Automatic entries by expiry, per kind: the eviction candidates.
    evictable_addrs: BTreeSet<(u64, Target)>,
    evictable_nets: BTreeSet<(u64, Target)>,
}

impl Index {
    pub fn len(&self) -> usize {
        self.exact.len() + self.nets.values().map(HashMap::len).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.exact.is_empty() && self.nets.is_empty()
    }

    pub fn get(&self, t: &Target) -> Option<Meta> {
        match t {
            Target::Addr(a) => self
                .exact
                .get(&u128::from_be_bytes(key_of(*a)))
                .map(|e| e.1),
            Target::Net(n) => {
                let (len, key) = net_key(n);
                self.nets.get(&len)?.get(&key).map(|e| e.1)
            }
        }
    }

    fn evictable(&mut self, kind: Kind) -> &mut BTreeSet<(u64, Target)> {
        match kind {
            Kind::Address => &mut self.evictable_addrs,
            Kind::Prefix => &mut self.evictable_nets,
        }
    }

    /// Adds or replaces an entry.
    pub fn insert(&mut self, t: Target, meta: Meta) {
        self.remove(&t);
        let slot = match t {
            Target::Addr(a) => self.exact.insert(u128::from_be_bytes(key_of(a)), (t, meta)),
            Target::Net(n) => {
                let (len, key) = net_key(&n);
                self.nets.entry(len).or_default().insert(key, (t, meta))
            }
        };
        debug_assert!(slot.is_none());
        if meta.expires_unix != 0 {
            self.expiring.insert((meta.expires_unix, t));
        }
        if meta.automatic {
            self.evictable(Kind::of(&t)).insert((meta.expires_unix, t));
        }
    }

    /// Removes an entry; its metadata when there was one.
    pub fn remove(&mut self, t: &Target) -> Option<Meta> {
        let meta = match t {
            Target::Addr(a) => self.exact.remove(&u128::from_be_bytes(key_of(*a)))?.1,
            Target::Net(n) => {
                let (len, key) = net_key(n);
                let by_len = self.nets.get_mut(&len)?;
                let meta = by_len.remove(&key)?.1;
                if by_len.is_empty() {
                    self.nets.remove(&len);
                }
                meta
            }
        };
        self.expiring.remove(&(meta.expires_unix, *t));
        if meta.automatic {
            self.evictable(Kind::of(t)).remove(&(meta.expires_unix, *t));
        }
        Some(meta)
    }

    /// Removes and returns up to `max` entries whose expiry has passed; costs what it
    /// returns.
    pub fn drain_expired(&mut self, now: u64, max: usize) -> Vec<Target> {
        let mut out = Vec::new();
        while let Some(&(exp, t)) = self.expiring.first() {
            if live(exp, now) || out.len() >= max {
                break;
            }
            self.remove(&t);
            out.push(t);
        }
        out
    }

    /// The automatic entry of `kind` closest to expiry.
    pub fn eviction_candidate(&self, kind: Kind) -> Option<Target> {
        match kind {
            Kind::Address => self.evictable_addrs.first(),
            Kind::Prefix => self.evictable_nets.first(),
        }
        .map(|e| e.1)
    }

    /// Whether `ip` is denied at `now`: the exact entry, else the longest matching prefix
    /// (as the kernel decides: an expired longest match does not fall back to a shorter one).
    pub fn denies(&self, ip: IpAddr, now: u64) -> bool {
        let key = u128::from_be_bytes(key_of(ip));
        if let Some((_, m)) = self.exact.get(&key) {
            if live(m.expires_unix, now) {
                return true;
            }
        }
        self.longest_match(key)
            .is_some_and(|m| live(m.expires_unix, now))
    }

    fn longest_match(&self, key: u128) -> Option<Meta> {
        self.nets
            .iter()
            .rev()
            .find_map(|(&len, by_key)| by_key.get(&mask(key, len)).map(|e| e.1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> Target {
        s.parse().unwrap()
    }
    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    const AUTO: Meta = Meta {
        expires_unix: 100,
        automatic: true,
    };

    #[test]
    fn exact_longest_prefix_and_mapped_keys() {
        let mut i = Index::default();
        i.insert(
            t("10.0.0.0/8"),
            Meta {
                expires_unix: 0,
                automatic: false,
            },
        );
        i.insert(
            t("10.1.0.0/16"),
            Meta {
                expires_unix: 50,
                automatic: true,
            },
        );
        i.insert(t("2001:db8::/64"), AUTO);
        i.insert(t("192.0.2.1"), AUTO);
        assert!(i.denies(ip("10.9.9.9"), 60));
        assert!(i.denies(ip("10.1.2.3"), 40));
        // The longest match (10.1.0.0/16) has expired: the kernel passes, so do we.
        assert!(!i.denies(ip("10.1.2.3"), 60));
        assert!(i.denies(ip("::ffff:192.0.2.1"), 60), "IPv4-mapped");
        assert!(i.denies(ip("2001:db8::abcd"), 60));
        assert!(!i.denies(ip("2001:db8:0:1::1"), 60));
        assert!(!i.denies(ip("192.0.2.1"), 100), "expired at 100");
        assert_eq!(i.len(), 4);
        assert_eq!(i.get(&t("10.1.0.0/16")).map(|m| m.expires_unix), Some(50));
        assert_eq!(i.get(&t("10.1.0.0/17")), None);
    }

    #[test]
    fn sweep_and_eviction_follow_expiry_and_skip_manual_entries() {
        let mut i = Index::default();
        i.insert(
            t("192.0.2.1"),
            Meta {
                expires_unix: 10,
                automatic: false,
            },
        );
        i.insert(
            t("192.0.2.2"),
            Meta {
                expires_unix: 30,
                automatic: true,
            },
        );
        i.insert(
            t("192.0.2.3"),
            Meta {
                expires_unix: 20,
                automatic: true,
            },
        );
        i.insert(
            t("192.0.2.4"),
            Meta {
                expires_unix: 0,
                automatic: false,
            },
        );
        i.insert(
            t("2001:db8::/64"),
            Meta {
                expires_unix: 5,
                automatic: true,
            },
        );
        assert_eq!(i.eviction_candidate(Kind::Address), Some(t("192.0.2.3")));
        assert_eq!(i.eviction_candidate(Kind::Prefix), Some(t("2001:db8::/64")));
        // Renewal moves the entry in the expiry order.
        i.insert(
            t("192.0.2.3"),
            Meta {
                expires_unix: 40,
                automatic: true,
            },
        );
        assert_eq!(i.eviction_candidate(Kind::Address), Some(t("192.0.2.2")));
        assert_eq!(i.drain_expired(20, 1).len(), 1, "at most `max` at a time");
        let mut gone = i.drain_expired(20, 10);
        gone.extend(i.drain_expired(20, 10));
        assert_eq!(gone.len(), 1);
        assert!(i.get(&t("192.0.2.1")).is_none() && i.get(&t("2001:db8::/64")).is_none());
        assert_eq!(i.eviction_candidate(Kind::Prefix), None);
        assert_eq!(i.len(), 3);
        assert!(i.drain_expired(20, 10).is_empty());
        assert_eq!(i.remove(&t("192.0.2.2")).map(|m| m.automatic), Some(true));
        assert_eq!(i.eviction_candidate(Kind::Address), Some(t("192.0.2.3")));
        i.remove(&t("192.0.2.3"));
        assert_eq!(
            i.eviction_candidate(Kind::Address),
            None,
            "never a manual entry"
        );
    }
}
