//! The deny list as one thing: the kernel maps that enforce it, a durable state file that
//! survives a reboot (pinned maps do not), and an in-memory view for the user plane (closing
//! a banned source's connections, refusing it at accept when no data plane runs).
//!
//! Manual entries (`gateway deny add`, the admin API) and automatic ones (the abuse engine)
//! share it, told apart by their origin. The state file stores wall-clock expiries, since
//! monotonic time restarts at boot; it is rewritten whole and renamed into place, so a crash
//! leaves the old or the new version, never a torn one.

mod index;
mod protected;
mod state;

pub use protected::{check_scope, Hit, Protected, TooBroad, MIN_V4_PREFIX, MIN_V6_PREFIX};
pub use state::{Entries, StateEntry, StateError, StateFile};

use crate::ebpf::maps::{new_deny_entry, origin_name};
use crate::ebpf::{clock, MapsError, PinnedMaps, Target};
use gateway_common::origin;
use index::{live, Index, Kind, Meta};
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::broadcast;

/// The longest TTL a deny entry may have: 100 years. Longer ones would overflow the
/// kernel's nanosecond expiry (u64, about 584 years, counted from boot) or read as a typo.
pub const MAX_TTL: Duration = Duration::from_secs(100 * 365 * 86_400);

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
    #[error(
        "{target} covers {hit}, which is protected (a ban would cut the gateway off from it); \
         use --force (API: \"force\": true) to deny it anyway"
    )]
    Protected { target: Target, hit: Hit },
    #[error(transparent)]
    TooBroad(#[from] TooBroad),
    #[error(
        "ttl {}s is too long: the largest accepted is {}s (100 years)",
        .0.as_secs(),
        MAX_TTL.as_secs()
    )]
    TtlTooLong(Duration),
}

/// Refuses a TTL longer than [`MAX_TTL`].
pub fn check_ttl(ttl: Option<Duration>) -> Result<(), DenyError> {
    match ttl {
        Some(t) if t > MAX_TTL => Err(DenyError::TtlTooLong(t)),
        _ => Ok(()),
    }
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
    /// The fleet node the entry came from (`[fleet]`); absent for this node's own entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// A change this node made to its deny list, as the fleet publishes it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Change {
    Added {
        target: Target,
        /// Unix seconds; 0 = until removed.
        expires_unix: u64,
        origin: String,
        reason: String,
    },
    Removed {
        target: Target,
    },
}

/// What became of a ban received from the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Applied {
    /// Written into the maps and the view.
    New,
    /// An entry lasting at least as long was there already (an event applied twice).
    AlreadyThere,
    /// Its expiry has passed.
    Expired,
}

/// Receives every change made on this node (not those applied from the fleet); must not
/// block: it runs on the request path of the ban that made the change.
pub type Observer = Box<dyn Fn(Change) + Send + Sync>;

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

/// Whether entries of this origin were made by the abuse engine (and may be evicted).
fn is_automatic(origin_name: &str) -> bool {
    !matches!(origin_name, "manual" | "config")
}

impl std::fmt::Debug for DenyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DenyStore")
            .field("maps", &self.maps.is_some())
            .field("state", &self.state.as_ref().map(StateFile::path))
            .finish()
    }
}

/// At most one state-file rewrite per this interval after the first of a burst.
const STATE_WRITE_INTERVAL: Duration = Duration::from_millis(500);

/// New entries a slow subscriber may fall behind by before it is told to rescan.
const ADDED_BACKLOG: usize = 4096;

/// How many entries the sweep removes from the maps under one hold of their lock, so that
/// a ban made meanwhile waits for a chunk, not for the whole sweep.
const SWEEP_CHUNK: usize = 64;

/// The sweep's pause between chunks (50 000 expired entries: about 800 pauses).
const SWEEP_PAUSE: Duration = Duration::from_micros(100);

/// Maps + state file + in-memory index, behind short locks (the request path only reads
/// [`DenyStore::is_denied`]). Lock order: maps, then the index.
pub struct DenyStore {
    maps: Option<Mutex<PinnedMaps>>,
    state: Option<StateFile>,
    /// Every entry with its expiry (unix seconds, 0 = never): what the user plane checks,
    /// and the bookkeeping that spares the maps a scan.
    view: RwLock<Index>,
    /// Addresses no entry may cover without `force`; a reload replaces them
    /// ([`DenyStore::replace_protected`]).
    protected: arc_swap::ArcSwap<Protected>,
    /// Automatic bans evicted because a kernel map was full.
    evicted: AtomicU64,
    /// Every new entry, for the workers that close its sources' open connections.
    added: broadcast::Sender<Target>,
    /// Set by [`DenyStore::persist_in_background`]: state-file updates go to a writer thread
    /// (an fsync must not hold up the request that triggered a ban).
    writer: Mutex<Option<std::sync::mpsc::Sender<Update>>>,
    worker: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The fleet's outbox, when `[fleet]` is on.
    observer: std::sync::OnceLock<Observer>,
    /// The node each entry received from the fleet came from (bounded by the index).
    nodes: RwLock<HashMap<Target, std::sync::Arc<str>>>,
}

/// The allow list's prefixes and the other protected addresses, as one set.
fn protected_set(allow: &[ipnet::IpNet], more: &Protected) -> Protected {
    let mut p = Protected::new();
    p.add_net("on the allow list", allow.iter().copied());
    p.merge(more);
    p
}

/// A change to the state file's entries.
type Update = Box<dyn FnOnce(&mut Entries) + Send>;

impl DenyStore {
    /// `maps`: the data plane's pinned maps (absent when it is off); `state`: the durable
    /// file (absent when not configured); `allow`: prefixes that are never denied.
    pub fn new(maps: Option<PinnedMaps>, state: Option<PathBuf>, allow: Vec<ipnet::IpNet>) -> Self {
        Self {
            maps: maps.map(Mutex::new),
            state: state.map(StateFile::new),
            view: RwLock::new(Index::default()),
            protected: arc_swap::ArcSwap::from_pointee(protected_set(&allow, &Protected::new())),
            evicted: AtomicU64::new(0),
            added: broadcast::channel(ADDED_BACKLOG).0,
            writer: Mutex::new(None),
            worker: Mutex::new(None),
            observer: std::sync::OnceLock::new(),
            nodes: RwLock::new(HashMap::new()),
        }
    }

    /// From now on every change made on this node (not those applied from the fleet) is
    /// handed to `observer`. Set once; a second call is ignored.
    pub fn set_observer(&self, observer: Observer) {
        let _ = self.observer.set(observer);
    }

    fn notify(&self, change: impl FnOnce() -> Change) {
        if let Some(o) = self.observer.get() {
            o(change());
        }
    }

    fn nodes_mut(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<Target, std::sync::Arc<str>>> {
        self.nodes.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// The fleet node an entry came from, if it came from one.
    pub fn node_of(&self, target: &Target) -> Option<std::sync::Arc<str>> {
        self.nodes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(target)
            .cloned()
    }

    /// Entries received from the fleet, with their node (for the reconciliation).
    pub fn from_fleet(&self) -> Vec<Target> {
        self.nodes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .keys()
            .copied()
            .collect()
    }

    /// Applies a ban received from the fleet: the same checks as an automatic ban (never
    /// the allow list, a protected address, all of a family or too short a prefix), and a
    /// received ban never shortens one that is here already, so applying it twice is
    /// harmless. It is not handed to the observer (it travelled already).
    pub fn apply_remote(
        &self,
        target: Target,
        expires_unix: u64,
        origin_name: &str,
        reason: &str,
        node: &str,
    ) -> Result<Applied, DenyError> {
        let now = unix_now();
        if !live(expires_unix, now) {
            return Ok(Applied::Expired);
        }
        let ttl = (expires_unix != 0).then(|| Duration::from_secs(expires_unix - now));
        self.admit(&target, ttl, false)?;
        let present = self
            .view
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&target);
        if let Some(m) = present {
            let longer_or_same =
                m.expires_unix == 0 || (expires_unix != 0 && m.expires_unix >= expires_unix);
            if longer_or_same && live(m.expires_unix, now) {
                return Ok(Applied::AlreadyThere);
            }
        }
        self.write(target, ttl, origin_name, reason, 1, Some(node))?;
        Ok(Applied::New)
    }

    /// Removes an entry because the fleet says so; entries of the config file stay (each
    /// node's own). `false` when there was nothing to remove.
    pub fn remove_remote(&self, target: &Target) -> Result<bool, DenyError> {
        if self
            .view
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(target)
            .is_none()
        {
            return Ok(false);
        }
        if let Some(maps) = &self.maps {
            let maps = maps.lock().unwrap_or_else(PoisonError::into_inner);
            if let Ok(Some(e)) = maps.find_present_deny(target) {
                if e.origin == origin::CONFIG {
                    return Ok(false);
                }
            }
        }
        self.remove_inner(target)
    }

    /// Adds protected addresses (interfaces, upstreams, JWKS hosts, trusted proxies) to the
    /// allow list's.
    pub fn with_protected(self, more: &Protected) -> Self {
        let mut p = Protected::clone(&self.protected.load());
        p.merge(more);
        self.protected.store(std::sync::Arc::new(p));
        self
    }

    /// A reload's protected addresses: its allow list and `more` (see
    /// [`Protected::from_config`]) instead of the running config's. Entries already made
    /// stay.
    pub fn replace_protected(&self, allow: &[ipnet::IpNet], more: &Protected) {
        self.protected
            .store(std::sync::Arc::new(protected_set(allow, more)));
    }

    /// How many entries are indexed (in force or not yet swept).
    pub fn len(&self) -> usize {
        self.view
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Automatic bans evicted so far because a kernel map was full.
    pub fn evictions(&self) -> u64 {
        self.evicted.load(Ordering::Relaxed)
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
                let write = |batch: Vec<Update>| {
                    if let Err(e) = state.update(|entries| {
                        for f in batch {
                            f(entries);
                        }
                    }) {
                        tracing::error!(error = %e, "deny state file not updated");
                    }
                };
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    batch.extend(rx.try_iter());
                    write(batch);
                    // A rewrite costs what the list holds: during a ban storm, collect for
                    // a while instead of rewriting back to back (the kernel maps already
                    // hold every ban; the file is for reboots). A flush ends the wait.
                    let until = std::time::Instant::now() + STATE_WRITE_INTERVAL;
                    let mut pending = Vec::new();
                    loop {
                        let left = until.saturating_duration_since(std::time::Instant::now());
                        match rx.recv_timeout(left) {
                            Ok(f) => pending.push(f),
                            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => break,
                            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                                if !pending.is_empty() {
                                    write(pending);
                                }
                                return;
                            }
                        }
                    }
                    if !pending.is_empty() {
                        write(pending);
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
    fn persist(&self, f: impl FnOnce(&mut Entries) + Send + 'static) -> Result<(), DenyError> {
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
    /// gateway ran), and the index is built. Automatic entries that cover a protected address
    /// (made by an older version) are dropped. Returns how many entries were restored.
    pub fn restore(&self) -> Result<usize, DenyError> {
        let now = unix_now();
        let mut entries = match &self.state {
            Some(s) => s.load()?,
            None => Vec::new(),
        };
        entries.retain(|e| live(e.expires_unix, now));
        let mut dropped = Vec::new();
        entries.retain(|e| {
            let keep = !is_automatic(&e.origin)
                || e.target
                    .parse::<Target>()
                    .is_ok_and(|t| self.protected.load().covered_by(&t).is_none());
            if !keep {
                tracing::warn!(target_addr = %e.target, origin = %e.origin, "deny: automatic entry covers a protected address; dropped");
                dropped.push(e.target.clone());
            }
            keep
        });
        let mut restored = 0;
        let mut index = Index::default();
        if let Some(maps) = &self.maps {
            let mut maps = maps.lock().unwrap_or_else(PoisonError::into_inner);
            let mono = clock::monotonic_ns();
            let in_maps: HashMap<Target, gateway_common::DenyEntry> = maps
                .deny_list()?
                .into_iter()
                .map(|r| (r.target, r.entry))
                .collect();
            let gone: Vec<Target> = dropped.iter().filter_map(|t| t.parse().ok()).collect();
            if !gone.is_empty() {
                maps.undeny_many(&gone)?;
            }
            for e in &entries {
                let Ok(target) = e.target.parse::<Target>() else {
                    continue;
                };
                if !in_maps.contains_key(&target) {
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
            for (target, entry) in &in_maps {
                let expired = entry.expires_ns != 0 && entry.expires_ns <= mono;
                if expired || gone.contains(target) {
                    continue;
                }
                let origin = origin_name(entry.origin);
                if entry.origin == origin::CONFIG {
                    // The config owns these; they are indexed but not kept in the file.
                    index.insert(
                        *target,
                        Meta {
                            expires_unix: 0,
                            automatic: false,
                        },
                    );
                    continue;
                }
                let t = target.to_string();
                if !entries.iter().any(|e| e.target == t) {
                    let left = clock::time_left(entry.expires_ns, mono);
                    entries.push(StateEntry {
                        target: t,
                        origin: origin.to_string(),
                        reason: crate::ebpf::maps::DenyRecord {
                            target: *target,
                            entry: *entry,
                        }
                        .reason(),
                        created_unix: now,
                        expires_unix: left.map_or(0, |d| now + d.as_secs().max(1)),
                        offenses: 1,
                        node: None,
                    });
                }
            }
        }
        if let Some(s) = &self.state {
            s.save(&entries)?;
        }
        for e in &entries {
            if let Ok(t) = e.target.parse::<Target>() {
                index.insert(
                    t,
                    Meta {
                        expires_unix: e.expires_unix,
                        automatic: is_automatic(&e.origin),
                    },
                );
            }
        }
        *self.view.write().unwrap_or_else(PoisonError::into_inner) = index;
        *self.nodes_mut() = entries
            .iter()
            .filter_map(|e| Some((e.target.parse::<Target>().ok()?, e.node.as_deref()?.into())))
            .collect();
        Ok(restored)
    }

    fn inside_allow_list(&self, target: &Target) -> bool {
        self.protected.load().inside_a_net(target)
    }

    /// What a new entry must pass: a TTL that fits, not all of an address family or too
    /// short a prefix (whatever `force` says), not inside the allow list, and (unless
    /// `force`) not covering a protected address.
    fn admit(&self, target: &Target, ttl: Option<Duration>, force: bool) -> Result<(), DenyError> {
        check_ttl(ttl)?;
        check_scope(target)?;
        if self.inside_allow_list(target) {
            return Err(DenyError::Allowed(*target));
        }
        if !force {
            if let Some(hit) = self.protected.load().covered_by(target) {
                return Err(DenyError::Protected {
                    target: *target,
                    hit,
                });
            }
        }
        Ok(())
    }

    /// Adds (or replaces) an automatic entry: refused when it covers a protected address.
    pub fn add(
        &self,
        target: Target,
        ttl: Option<Duration>,
        origin_name: &str,
        reason: &str,
        offenses: u32,
    ) -> Result<(), DenyError> {
        self.admit(&target, ttl, false)?;
        self.write(target, ttl, origin_name, reason, offenses, None)?;
        self.notify_added(target, ttl, origin_name, reason);
        Ok(())
    }

    fn notify_added(&self, target: Target, ttl: Option<Duration>, origin: &str, reason: &str) {
        self.notify(|| Change::Added {
            target,
            expires_unix: ttl.map_or(0, |d| unix_now() + d.as_secs().max(1)),
            origin: origin.to_owned(),
            reason: reason.to_owned(),
        });
    }

    /// Adds (or replaces) a manual entry (`gateway deny add`, the admin API); `force` lets it
    /// cover a protected address, never all of an address family or too short a prefix.
    pub fn add_manual(
        &self,
        target: Target,
        ttl: Option<Duration>,
        reason: &str,
        force: bool,
    ) -> Result<(), DenyError> {
        self.admit(&target, ttl, force)?;
        if force {
            if let Some(hit) = self.protected.load().covered_by(&target) {
                tracing::warn!(target_addr = %target, protected = %hit, "deny: forced over a protected address");
            }
        }
        self.write(target, ttl, "manual", reason, 1, None)?;
        self.notify_added(target, ttl, "manual", reason);
        Ok(())
    }

    /// Writes an entry into the maps, the index and the state file. The map write comes
    /// first: it is what drops packets.
    fn write(
        &self,
        target: Target,
        ttl: Option<Duration>,
        origin_name: &str,
        reason: &str,
        offenses: u32,
        node: Option<&str>,
    ) -> Result<(), DenyError> {
        let now = unix_now();
        let expires_unix = ttl.map_or(0, |d| now + d.as_secs().max(1));
        let meta = Meta {
            expires_unix,
            automatic: is_automatic(origin_name),
        };
        if let Some(maps) = &self.maps {
            let mut maps = maps.lock().unwrap_or_else(PoisonError::into_inner);
            let mut entry = new_deny_entry(clock::expiry_ns(ttl), origin_code(origin_name), reason);
            let present = self
                .view
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&target)
                .is_some();
            if present {
                if let Ok(Some(old)) = maps.find_present_deny(&target) {
                    entry.hits = old.hits;
                }
            }
            match maps.deny(&target, &entry) {
                Err(e) if e.is_full() => {
                    self.evict_one(&mut maps, Kind::of(&target), e)?;
                    maps.deny(&target, &entry)?;
                }
                r => r?,
            }
            self.view
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(target, meta);
        } else {
            self.view
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(target, meta);
        }
        match node {
            Some(n) => self.nodes_mut().insert(target, n.into()),
            None => self.nodes_mut().remove(&target),
        };
        // No subscriber (no proxy) is fine.
        let _ = self.added.send(target);
        let entry = StateEntry {
            target: target.to_string(),
            origin: origin_name.to_string(),
            reason: reason.to_string(),
            created_unix: now,
            expires_unix,
            offenses,
            node: node.map(str::to_owned),
        };
        self.persist(move |entries| {
            entries.insert(entry.target.clone(), entry);
        })
    }

    /// A kernel map is full: removes the automatic entry of that map closest to expiry, so
    /// that a new ban can go in; manual and config entries are never evicted. `full` is
    /// returned when there is no automatic entry to evict.
    fn evict_one(
        &self,
        maps: &mut PinnedMaps,
        kind: Kind,
        full: MapsError,
    ) -> Result<(), DenyError> {
        let victim = {
            let mut view = self.view.write().unwrap_or_else(PoisonError::into_inner);
            let Some(victim) = view.eviction_candidate(kind) else {
                return Err(full.into());
            };
            view.remove(&victim);
            victim
        };
        maps.undeny(&victim)?;
        self.nodes_mut().remove(&victim);
        self.evicted.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(evicted = %victim, "deny map full: evicted the automatic ban closest to expiry");
        let t = victim.to_string();
        self.persist(move |entries| {
            entries.remove(&t);
        })
    }

    /// Removes an entry everywhere; `false` when there was none. The fleet hears of it.
    pub fn remove(&self, target: &Target) -> Result<bool, DenyError> {
        let removed = self.remove_inner(target)?;
        self.notify(|| Change::Removed { target: *target });
        Ok(removed)
    }

    fn remove_inner(&self, target: &Target) -> Result<bool, DenyError> {
        self.nodes_mut().remove(target);
        let mut removed = false;
        if let Some(maps) = &self.maps {
            let mut maps = maps.lock().unwrap_or_else(PoisonError::into_inner);
            removed |= maps.undeny(target)?;
            removed |= self
                .view
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(target)
                .is_some();
        } else {
            removed |= self
                .view
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(target)
                .is_some();
        }
        let t = target.to_string();
        if self.maps.is_none() && !removed {
            // Without maps or index the file is the only record: say whether it was there.
            removed |= self
                .state
                .as_ref()
                .map(|s| s.load())
                .transpose()?
                .is_some_and(|entries| entries.iter().any(|e| e.target == t));
        }
        self.persist(move |entries| {
            entries.remove(&t);
        })?;
        Ok(removed)
    }

    /// Drops expired entries from the index, the maps and the state file; costs what
    /// expired, not what is listed. It works in chunks: the index is write-locked (which
    /// holds up `is_denied` at accept) and the maps locked (which holds up a ban) for one
    /// chunk at a time, never for the whole sweep, with a pause between chunks. It blocks:
    /// call it off the async runtime.
    pub fn sweep(&self) -> Result<(), DenyError> {
        let now = unix_now();
        let mut swept = 0;
        loop {
            let chunk = self
                .view
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .drain_expired(now, SWEEP_CHUNK);
            if chunk.is_empty() {
                break;
            }
            swept += chunk.len();
            let maps = self
                .maps
                .as_ref()
                .map(|m| m.lock().unwrap_or_else(PoisonError::into_inner));
            // An `add` may have renewed one since it was taken out: leave those.
            let gone: Vec<Target> = {
                let view = self.view.read().unwrap_or_else(PoisonError::into_inner);
                chunk
                    .iter()
                    .filter(|t| view.get(t).is_none())
                    .copied()
                    .collect()
            };
            {
                let mut nodes = self.nodes_mut();
                for t in &gone {
                    nodes.remove(t);
                }
            }
            if let Some(mut maps) = maps {
                maps.undeny_many(&gone)?;
            }
            // Expired entries drop nothing: there is no hurry, so leave the CPU to the
            // threads serving requests between chunks.
            if self.maps.is_some() {
                std::thread::sleep(SWEEP_PAUSE);
            }
        }
        if swept == 0 {
            return Ok(());
        }
        tracing::info!(count = swept, "deny entries expired");
        self.persist(move |entries| entries.retain(|_, e| live(e.expires_unix, now)))
    }

    /// Whether `ip` is denied (exactly or by prefix) right now: one exact and one
    /// longest-prefix lookup in the index.
    pub fn is_denied(&self, ip: IpAddr) -> bool {
        let view = self.view.read().unwrap_or_else(PoisonError::into_inner);
        if view.is_empty() {
            return false;
        }
        view.denies(ip, unix_now())
    }

    /// Every entry added from now on. A subscriber that falls more than a few thousand
    /// behind is told it lagged (and should check everything once).
    pub fn subscribe(&self) -> broadcast::Receiver<Target> {
        self.added.subscribe()
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
                    node: self.node_of(&r.target).map(|n| n.to_string()),
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
                    node: e.node.clone(),
                })
            })
            .collect())
    }
}

#[cfg(test)]
mod tests;
