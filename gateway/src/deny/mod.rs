//! The deny list as one thing: the kernel maps that enforce it, a durable state file that
//! survives a reboot (pinned maps do not), and an in-memory view for the user plane (closing
//! a banned source's connections, refusing it at accept when no data plane runs).
//!
//! Manual entries (`gateway deny add`, the admin API) and automatic ones (the abuse engine)
//! share it, told apart by their origin. The state file stores wall-clock expiries, since
//! monotonic time restarts at boot; it is rewritten whole and renamed into place, so a crash
//! leaves the old or the new version, never a torn one.

mod state;

pub use state::{StateEntry, StateError, StateFile};

use crate::ebpf::maps::{new_deny_entry, origin_name};
use crate::ebpf::{clock, MapsError, PinnedMaps, Target};
use gateway_common::origin;
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::watch;

/// Errors of the deny store.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DenyError {
    #[error(transparent)]
    Maps(#[from] MapsError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error("{0} is on the allow list and cannot be denied")]
    Allowed(Target),
}

/// One deny entry as the user plane sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DenyView {
    pub target: String,
    /// `address` or `prefix`.
    pub kind: String,
    pub origin: String,
    pub reason: String,
    /// Seconds left, rounded up; `null` when the entry lasts until removed.
    pub expires_in_secs: Option<u64>,
    pub expired: bool,
    pub hits: u64,
}

fn kind_of(t: &Target) -> &'static str {
    match t {
        Target::Addr(_) => "address",
        Target::Net(_) => "prefix",
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The origin code for a name (`manual`, `auth_failures`, ...).
pub fn origin_code(name: &str) -> u32 {
    (1..=16)
        .find(|&o| origin_name(o) == name)
        .unwrap_or(origin::MANUAL)
}

impl std::fmt::Debug for DenyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DenyStore")
            .field("maps", &self.maps.is_some())
            .field("state", &self.state.as_ref().map(StateFile::path))
            .finish()
    }
}

/// Targets in force with their expiry (unix seconds, 0 = never): addresses by hash and
/// prefixes apart (there are few), so a check is one lookup plus the prefixes, however many
/// sources are banned.
#[derive(Debug, Default)]
struct View {
    exact: HashMap<IpAddr, u64>,
    nets: HashMap<ipnet::IpNet, u64>,
}

fn live(expires_unix: u64, now: u64) -> bool {
    expires_unix == 0 || expires_unix > now
}

impl View {
    fn insert(&mut self, t: Target, expires_unix: u64) {
        match t {
            Target::Addr(a) => self.exact.insert(a, expires_unix),
            Target::Net(n) => self.nets.insert(n, expires_unix),
        };
    }

    fn remove(&mut self, t: &Target) -> bool {
        match t {
            Target::Addr(a) => self.exact.remove(a).is_some(),
            Target::Net(n) => self.nets.remove(n).is_some(),
        }
    }

    fn retain_live(&mut self, now: u64) {
        self.exact.retain(|_, e| live(*e, now));
        self.nets.retain(|_, e| live(*e, now));
    }

    fn denies(&self, ip: IpAddr, now: u64) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.exact.get(&ip).is_some_and(|e| live(*e, now))
            || self
                .nets
                .iter()
                .any(|(n, e)| live(*e, now) && n.contains(&ip))
    }
}

/// Maps + state file + in-memory view, behind short locks (deny changes are rare; the
/// request path only reads [`DenyStore::is_denied`]).
pub struct DenyStore {
    maps: Option<Mutex<PinnedMaps>>,
    state: Option<StateFile>,
    /// Targets in force, with their expiry (unix seconds, 0 = never), for the user plane.
    view: RwLock<View>,
    /// Bumped on every new entry: connection tasks re-check their peer.
    changed: watch::Sender<u64>,
    allow: Vec<ipnet::IpNet>,
    /// Set by [`DenyStore::persist_in_background`]: state-file updates go to a writer thread
    /// (an fsync must not hold up the request that triggered a ban).
    writer: Mutex<Option<std::sync::mpsc::Sender<Update>>>,
    worker: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// A change to the state file's entries.
type Update = Box<dyn FnOnce(&mut Vec<StateEntry>) + Send>;

impl DenyStore {
    /// `maps`: the data plane's pinned maps (absent when it is off); `state`: the durable
    /// file (absent when not configured); `allow`: prefixes that are never denied.
    pub fn new(maps: Option<PinnedMaps>, state: Option<PathBuf>, allow: Vec<ipnet::IpNet>) -> Self {
        Self {
            maps: maps.map(Mutex::new),
            state: state.map(StateFile::new),
            view: RwLock::new(View::default()),
            changed: watch::channel(0).0,
            allow,
            writer: Mutex::new(None),
            worker: Mutex::new(None),
        }
    }

    /// From now on the state file is written by a background thread, updates in order,
    /// batched when they come quickly. [`DenyStore::flush`] waits for it.
    pub fn persist_in_background(&self) {
        let Some(state) = self.state.clone() else {
            return;
        };
        let (tx, rx) = std::sync::mpsc::channel::<Update>();
        let worker = std::thread::Builder::new()
            .name("deny-state".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    batch.extend(rx.try_iter());
                    if let Err(e) = state.update(|entries| {
                        for f in batch {
                            f(entries);
                        }
                    }) {
                        tracing::error!(error = %e, "deny state file not updated");
                    }
                }
            });
        match worker {
            Ok(handle) => {
                *self.writer.lock().unwrap_or_else(PoisonError::into_inner) = Some(tx);
                *self.worker.lock().unwrap_or_else(PoisonError::into_inner) = Some(handle);
            }
            Err(e) => {
                tracing::warn!(error = %e, "no background writer; the state file is written inline")
            }
        }
    }

    /// Waits until every queued state-file update is written (at shutdown).
    pub fn flush(&self) {
        drop(
            self.writer
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        if let Some(h) = self
            .worker
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            let _ = h.join();
        }
    }

    /// Applies `f` to the state file's entries, inline or through the writer thread.
    fn persist(
        &self,
        f: impl FnOnce(&mut Vec<StateEntry>) + Send + 'static,
    ) -> Result<(), DenyError> {
        let Some(state) = &self.state else {
            return Ok(());
        };
        let f: Update = Box::new(f);
        let f = match &*self.writer.lock().unwrap_or_else(PoisonError::into_inner) {
            Some(tx) => match tx.send(f) {
                Ok(()) => return Ok(()),
                Err(std::sync::mpsc::SendError(f)) => f,
            },
            None => f,
        };
        state.update(f)?;
        Ok(())
    }

    /// At start: entries of the state file still in force go back into the maps (after a
    /// reboot the pins are gone), map entries the file lacks are added to it (added while no
    /// gateway ran), and the view is built. Returns how many entries were restored.
    pub fn restore(&self) -> Result<usize, DenyError> {
        let now = unix_now();
        let mut entries = match &self.state {
            Some(s) => s.load()?,
            None => Vec::new(),
        };
        entries.retain(|e| e.expires_unix == 0 || e.expires_unix > now);
        let mut restored = 0;
        if let Some(maps) = &self.maps {
            let mut maps = maps.lock().unwrap_or_else(PoisonError::into_inner);
            let mono = clock::monotonic_ns();
            for e in &entries {
                let Ok(target) = e.target.parse::<Target>() else {
                    continue;
                };
                if maps.find_deny(&target)?.is_none() {
                    let expires_ns = match e.expires_unix {
                        0 => 0,
                        t => mono.saturating_add((t - now).saturating_mul(1_000_000_000)),
                    };
                    maps.deny(
                        &target,
                        &new_deny_entry(expires_ns, origin_code(&e.origin), &e.reason),
                    )?;
                    restored += 1;
                }
            }
            for r in maps.deny_list()? {
                if r.expired(mono) || r.entry.origin == origin::CONFIG {
                    continue;
                }
                let t = r.target.to_string();
                if !entries.iter().any(|e| e.target == t) {
                    entries.push(StateEntry {
                        target: t,
                        origin: origin_name(r.entry.origin).to_string(),
                        reason: r.reason(),
                        created_unix: now,
                        expires_unix: r.time_left(mono).map_or(0, |d| now + d.as_secs().max(1)),
                        offenses: 1,
                    });
                }
            }
        }
        if let Some(s) = &self.state {
            s.save(&entries)?;
        }
        let mut view = self.view.write().unwrap_or_else(PoisonError::into_inner);
        for e in &entries {
            if let Ok(t) = e.target.parse::<Target>() {
                view.insert(t, e.expires_unix);
            }
        }
        Ok(restored)
    }

    fn allowed(&self, target: &Target) -> bool {
        self.allow.iter().any(|n| match target {
            Target::Addr(a) => n.contains(a),
            Target::Net(t) => n.contains(t),
        })
    }

    /// Adds (or replaces) an entry in the maps, the view and the state file. The map write
    /// comes first: it is what drops packets.
    pub fn add(
        &self,
        target: Target,
        ttl: Option<Duration>,
        origin_name: &str,
        reason: &str,
        offenses: u32,
    ) -> Result<(), DenyError> {
        if self.allowed(&target) {
            return Err(DenyError::Allowed(target));
        }
        if let Some(maps) = &self.maps {
            let mut maps = maps.lock().unwrap_or_else(PoisonError::into_inner);
            let mut entry = new_deny_entry(clock::expiry_ns(ttl), origin_code(origin_name), reason);
            if let Ok(Some(old)) = maps.find_deny(&target) {
                entry.hits = old.hits;
            }
            maps.deny(&target, &entry)?;
        }
        let now = unix_now();
        let expires_unix = ttl.map_or(0, |d| now + d.as_secs().max(1));
        self.view
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(target, expires_unix);
        self.changed.send_modify(|g| *g += 1);
        let entry = StateEntry {
            target: target.to_string(),
            origin: origin_name.to_string(),
            reason: reason.to_string(),
            created_unix: now,
            expires_unix,
            offenses,
        };
        self.persist(move |entries| {
            entries.retain(|e| e.target != entry.target);
            entries.push(entry);
        })
    }

    /// Removes an entry everywhere; `false` when there was none.
    pub fn remove(&self, target: &Target) -> Result<bool, DenyError> {
        let mut removed = false;
        if let Some(maps) = &self.maps {
            removed |= maps
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .undeny(target)?;
        }
        removed |= self
            .view
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(target);
        let t = target.to_string();
        if self.maps.is_none() && !removed {
            // Without maps or view the file is the only record: say whether it was there.
            removed |= self
                .state
                .as_ref()
                .map(|s| s.load())
                .transpose()?
                .is_some_and(|entries| entries.iter().any(|e| e.target == t));
        }
        self.persist(move |entries| entries.retain(|e| e.target != t))?;
        Ok(removed)
    }

    /// Drops expired entries from the maps, the view and the state file.
    pub fn sweep(&self) -> Result<(), DenyError> {
        let now = unix_now();
        if let Some(maps) = &self.maps {
            let mut maps = maps.lock().unwrap_or_else(PoisonError::into_inner);
            let mono = clock::monotonic_ns();
            for r in maps.deny_list()? {
                // Re-read: an `add` may have renewed it since the listing.
                if r.expired(mono) {
                    if let Some(cur) = maps.find_deny(&r.target)? {
                        if cur.expires_ns != 0 && cur.expires_ns <= mono {
                            maps.undeny(&r.target)?;
                            tracing::info!(target = %r.target, "deny entry expired");
                        }
                    }
                }
            }
        }
        self.view
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .retain_live(now);
        self.persist(move |entries| entries.retain(|e| e.expires_unix == 0 || e.expires_unix > now))
    }

    /// Whether `ip` is denied (exactly or by prefix) right now, from the in-memory view.
    pub fn is_denied(&self, ip: IpAddr) -> bool {
        let view = self.view.read().unwrap_or_else(PoisonError::into_inner);
        if view.exact.is_empty() && view.nets.is_empty() {
            return false;
        }
        view.denies(ip, unix_now())
    }

    /// Changes whenever an entry is added.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Every entry, from the maps when there are any, else from the state file.
    pub fn list(&self) -> Result<Vec<DenyView>, DenyError> {
        if let Some(maps) = &self.maps {
            let maps = maps.lock().unwrap_or_else(PoisonError::into_inner);
            let now = clock::monotonic_ns();
            return Ok(maps
                .deny_list()?
                .iter()
                .map(|r| DenyView {
                    target: r.target.to_string(),
                    kind: kind_of(&r.target).to_string(),
                    origin: origin_name(r.entry.origin).to_string(),
                    reason: r.reason(),
                    expires_in_secs: r
                        .time_left(now)
                        .map(|d| d.as_secs() + u64::from(d.subsec_nanos() > 0)),
                    expired: r.expired(now),
                    hits: r.entry.hits,
                })
                .collect());
        }
        let now = unix_now();
        let entries = match &self.state {
            Some(s) => s.load()?,
            None => Vec::new(),
        };
        Ok(entries
            .iter()
            .filter_map(|e| {
                let t = e.target.parse::<Target>().ok()?;
                Some(DenyView {
                    target: e.target.clone(),
                    kind: kind_of(&t).to_string(),
                    origin: origin_name(origin_code(&e.origin)).to_string(),
                    reason: e.reason.clone(),
                    expires_in_secs: (e.expires_unix != 0)
                        .then(|| e.expires_unix.saturating_sub(now)),
                    expired: e.expires_unix != 0 && e.expires_unix <= now,
                    hits: 0,
                })
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn view_matches_addresses_prefixes_and_expiry() {
        let store = DenyStore::new(None, None, vec!["192.0.2.0/24".parse().unwrap()]);
        store
            .add("198.51.100.7".parse().unwrap(), None, "manual", "t", 1)
            .unwrap();
        store
            .add(
                "2001:db8::/32".parse().unwrap(),
                Some(Duration::from_secs(60)),
                "manual",
                "t",
                1,
            )
            .unwrap();
        assert!(store.is_denied("198.51.100.7".parse().unwrap()));
        assert!(
            store.is_denied("::ffff:198.51.100.7".parse().unwrap()),
            "IPv4-mapped"
        );
        assert!(store.is_denied("2001:db8:1::1".parse().unwrap()));
        assert!(!store.is_denied("198.51.100.8".parse().unwrap()));
        assert!(matches!(
            store.add("192.0.2.9".parse().unwrap(), None, "manual", "t", 1),
            Err(DenyError::Allowed(_))
        ));
        assert!(store.remove(&"198.51.100.7".parse().unwrap()).unwrap());
        assert!(!store.is_denied("198.51.100.7".parse().unwrap()));

        let mut view = View::default();
        view.insert("203.0.113.1".parse().unwrap(), 100);
        assert!(view.denies("203.0.113.1".parse().unwrap(), 99));
        assert!(!view.denies("203.0.113.1".parse().unwrap(), 100), "expired");
        view.retain_live(100);
        assert!(view.exact.is_empty());
    }
}
