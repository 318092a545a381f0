//! Typed access to the data plane's pinned maps.
//!
//! Everything in user space (the running gateway, `gateway stats`, `gateway deny`, the tests)
//! opens the maps the same way: from their pins under the pin path. So the CLI works whether
//! or not a gateway is running, and sees exactly what the kernel sees.

use super::addr::{self, Target};
use super::clock;
use aya::maps::{
    lpm_trie::{Key, LpmTrie},
    Array, HashMap, Map, MapData, MapError, PerCpuArray,
};
use gateway_common::{
    class, counter, limits, map_name, origin, AllowEntry, DataPlaneConfig, DenyEntry, SourceKey,
    SourceStats, Totals,
};
use ipnet::IpNet;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Errors opening or using the pinned maps.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MapsError {
    #[error(
        "no gateway has pinned maps at {}: start `gateway run` with a data plane, or point at \
         another pin path with --pin-path DIR or --config FILE",
        .0.display()
    )]
    NotPinned(PathBuf),
    #[error(
        "permission denied opening the pinned map {}: run as root (or with CAP_BPF and \
         CAP_SYS_ADMIN)",
        .0.display()
    )]
    PermissionDenied(PathBuf),
    #[error(
        "the pinned map {} does not match this gateway's map layout ({source}); it was pinned \
         by a different version: stop the old gateway and remove {} to start afresh (this \
         drops the deny list)",
        .path.display(),
        .dir.display()
    )]
    Incompatible {
        path: PathBuf,
        dir: PathBuf,
        #[source]
        source: Box<MapError>,
    },
    #[error("cannot open the pinned map {}: {source}", .path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: Box<MapError>,
    },
    #[error("{op} on map {map} failed: {source}")]
    Op {
        op: &'static str,
        map: &'static str,
        #[source]
        source: Box<MapError>,
    },
}

impl MapsError {
    /// The map had no room for another entry (`E2BIG` from a hash map, `ENOSPC` from an
    /// LPM trie).
    pub fn is_full(&self) -> bool {
        match self {
            MapsError::Op { source, .. } => match &**source {
                MapError::SyscallError(s) => matches!(
                    s.io_error.raw_os_error(),
                    Some(libc::E2BIG) | Some(libc::ENOSPC)
                ),
                _ => false,
            },
            _ => false,
        }
    }
}

/// One deny entry as read back from the maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DenyRecord {
    pub target: Target,
    pub entry: DenyEntry,
}

impl DenyRecord {
    /// The free-text reason, as written.
    pub fn reason(&self) -> String {
        decode_reason(&self.entry.reason)
    }

    /// `None` when the entry never expires.
    pub fn time_left(&self, now_ns: u64) -> Option<Duration> {
        clock::time_left(self.entry.expires_ns, now_ns)
    }

    pub fn expired(&self, now_ns: u64) -> bool {
        self.entry.expires_ns != 0 && self.entry.expires_ns <= now_ns
    }
}

/// The stable name of a deny entry's origin.
pub fn origin_name(o: u32) -> &'static str {
    match o {
        origin::MANUAL => "manual",
        origin::CONFIG => "config",
        origin::AUTH_FAILURES => "auth_failures",
        origin::RATE => "rate",
        origin::CLIENT_ERRORS => "client_errors",
        origin::TLS_FAILURES => "tls_failures",
        origin::CONNECTIONS => "connections",
        origin::KERNEL_RATE => "kernel_rate",
        _ => "unknown",
    }
}

/// Builds a deny entry; the reason is cut at a character boundary to fit the map value.
pub fn new_deny_entry(expires_ns: u64, origin: u32, reason: &str) -> DenyEntry {
    let mut entry = DenyEntry {
        expires_ns,
        created_ns: clock::monotonic_ns(),
        origin,
        ..DenyEntry::default()
    };
    let mut end = reason.len().min(limits::REASON_LEN);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    entry.reason[..end].copy_from_slice(&reason.as_bytes()[..end]);
    entry
}

fn decode_reason(raw: &[u8]) -> String {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end]).into_owned()
}

/// Handles on every pinned map except the event ring buffer (which has a single consumer,
/// the running gateway).
pub struct PinnedMaps {
    dir: PathBuf,
    sources: HashMap<MapData, SourceKey, SourceStats>,
    deny: HashMap<MapData, SourceKey, DenyEntry>,
    deny_cidr: LpmTrie<MapData, SourceKey, DenyEntry>,
    allow: LpmTrie<MapData, SourceKey, AllowEntry>,
    config: Array<MapData, DataPlaneConfig>,
    totals: PerCpuArray<MapData, Totals>,
    generation: Array<MapData, u64>,
}

/// A generation value no process has written before (with overwhelming probability): random,
/// so that two processes changing lists at once, or a load and a list change, never write the
/// same value twice.
pub(super) fn fresh_generation() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(clock::monotonic_ns());
    h.write_u32(std::process::id());
    h.finish()
}

/// Opens the pinned map `name` under `dir` as `T`.
pub(super) fn open_pinned<T>(dir: &Path, name: &str) -> Result<T, MapsError>
where
    T: TryFrom<Map, Error = MapError>,
{
    let path = dir.join(name);
    let data = MapData::from_pin(&path).map_err(|e| classify_open_error(&path, e))?;
    let map = Map::from_map_data(data).map_err(|source| MapsError::Open {
        path: path.clone(),
        source: Box::new(source),
    })?;
    T::try_from(map).map_err(|source| MapsError::Incompatible {
        path,
        dir: dir.to_path_buf(),
        source: Box::new(source),
    })
}

fn classify_open_error(path: &Path, e: MapError) -> MapsError {
    let io_kind = match &e {
        MapError::SyscallError(s) => Some(s.io_error.kind()),
        _ => None,
    };
    match io_kind {
        Some(io::ErrorKind::NotFound) => match path.parent() {
            Some(dir) => MapsError::NotPinned(dir.to_path_buf()),
            None => MapsError::NotPinned(path.to_path_buf()),
        },
        Some(io::ErrorKind::PermissionDenied) => MapsError::PermissionDenied(path.to_path_buf()),
        _ => MapsError::Open {
            path: path.to_path_buf(),
            source: Box::new(e),
        },
    }
}

fn op(op: &'static str, map: &'static str) -> impl FnOnce(MapError) -> MapsError {
    move |source| MapsError::Op {
        op,
        map,
        source: Box::new(source),
    }
}

impl PinnedMaps {
    /// Opens the maps a gateway pinned under `dir`.
    pub fn open(dir: &Path) -> Result<Self, MapsError> {
        if !dir.join(map_name::DENY).exists() {
            return Err(MapsError::NotPinned(dir.to_path_buf()));
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            sources: open_pinned(dir, map_name::SOURCES)?,
            deny: open_pinned(dir, map_name::DENY)?,
            deny_cidr: open_pinned(dir, map_name::DENY_CIDR)?,
            allow: open_pinned(dir, map_name::ALLOW_CIDR)?,
            config: open_pinned(dir, map_name::CONFIG)?,
            totals: open_pinned(dir, map_name::TOTALS)?,
            generation: open_pinned(dir, map_name::GENERATION)?,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Tells the kernel that the lists changed: every source is classified again on its next
    /// packet. A fresh random value (not an increment) so that two processes changing lists
    /// at once can never write the same value twice.
    fn bump_generation(&mut self) -> Result<(), MapsError> {
        self.generation
            .set(0, fresh_generation(), 0)
            .map_err(op("update", map_name::GENERATION))
    }

    /// Adds or replaces a deny entry (exact address or prefix).
    pub fn deny(&mut self, target: &Target, entry: &DenyEntry) -> Result<(), MapsError> {
        self.write_deny(target, entry)?;
        self.bump_generation()
    }

    fn write_deny(&mut self, target: &Target, entry: &DenyEntry) -> Result<(), MapsError> {
        match target {
            Target::Addr(a) => self
                .deny
                .insert(addr::key_of(*a), *entry, 0)
                .map_err(op("insert", map_name::DENY)),
            Target::Net(n) => {
                let (len, key) = addr::lpm_of(n);
                self.deny_cidr
                    .insert(&Key::new(len, key), *entry, 0)
                    .map_err(op("insert", map_name::DENY_CIDR))
            }
        }
    }

    /// Removes a deny entry; `false` when there was none.
    pub fn undeny(&mut self, target: &Target) -> Result<bool, MapsError> {
        let removed = self.remove_deny(target)?;
        self.bump_generation()?;
        Ok(removed)
    }

    fn remove_deny(&mut self, target: &Target) -> Result<bool, MapsError> {
        let res = match target {
            Target::Addr(a) => self.deny.remove(&addr::key_of(*a)),
            Target::Net(n) => {
                let (len, key) = addr::lpm_of(n);
                self.deny_cidr.remove(&Key::new(len, key))
            }
        };
        match res {
            Ok(()) => Ok(true),
            Err(MapError::KeyNotFound) => Ok(false),
            Err(MapError::SyscallError(s)) if s.io_error.kind() == io::ErrorKind::NotFound => {
                Ok(false)
            }
            Err(e) => Err(op("remove", map_name::DENY)(e)),
        }
    }

    /// Removes several deny entries and tells the kernel once; how many there were.
    pub fn undeny_many(&mut self, targets: &[Target]) -> Result<usize, MapsError> {
        let mut removed = 0;
        for t in targets {
            removed += usize::from(self.remove_deny(t)?);
        }
        self.bump_generation()?;
        Ok(removed)
    }

    /// The deny entry of a target the caller knows is in the maps, in one lookup: for a
    /// prefix, the trie's longest match for that exact prefix is the prefix itself.
    pub fn find_present_deny(&self, target: &Target) -> Result<Option<DenyEntry>, MapsError> {
        let res = match target {
            Target::Addr(a) => self.deny.get(&addr::key_of(*a), 0),
            Target::Net(n) => {
                let (len, key) = addr::lpm_of(n);
                self.deny_cidr.get(&Key::new(len, key), 0)
            }
        };
        match res {
            Ok(e) => Ok(Some(e)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(op("lookup", map_name::DENY)(e)),
        }
    }

    /// The deny entry for exactly this target, if any (for a prefix, that exact prefix, not
    /// the longest match an LPM lookup would return). Hits as [`Self::deny_list`] counts them.
    pub fn find_deny(&self, target: &Target) -> Result<Option<DenyEntry>, MapsError> {
        let mut entry = self.find_deny_as_stored(target)?;
        if let (Some(e), Target::Addr(a)) = (&mut entry, target) {
            e.hits += self.pending_hits(&addr::key_of(*a));
        }
        Ok(entry)
    }

    /// [`Self::find_deny`] with the hits as the map holds them: what to carry over when an
    /// entry is rewritten, since the kernel adds the pending ones to the new entry.
    fn find_deny_as_stored(&self, target: &Target) -> Result<Option<DenyEntry>, MapsError> {
        let Target::Addr(a) = target else {
            return Ok(self
                .deny_list()?
                .into_iter()
                .find(|r| r.target == *target)
                .map(|r| r.entry));
        };
        match self.deny.get(&addr::key_of(*a), 0) {
            Ok(e) => Ok(Some(e)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(op("lookup", map_name::DENY)(e)),
        }
    }

    /// Drops of an exactly denied source that the kernel has not yet added to its entry's
    /// hits (see `SourceStats::pending_hits`): at most the drops of the clock tick of its
    /// latest packet. CIDR entries are not completed this way (it would take a scan of every
    /// source), so their hits may lag by that much per source.
    fn pending_hits(&self, key: &SourceKey) -> u64 {
        match self.sources.get(key, 0) {
            Ok(s) if s.cached_class == class::DENY_EXACT => u64::from(s.pending_hits),
            _ => 0,
        }
    }

    /// Every deny entry, exact addresses first, each group in address order. An exact
    /// entry's hits include its source's pending drops.
    pub fn deny_list(&self) -> Result<Vec<DenyRecord>, MapsError> {
        let mut out = Vec::new();
        for item in self.deny.iter() {
            let (key, mut entry) = item.map_err(op("iterate", map_name::DENY))?;
            entry.hits += self.pending_hits(&key);
            out.push(DenyRecord {
                target: Target::Addr(addr::addr_of(&key)),
                entry,
            });
        }
        let mut nets = Vec::new();
        for item in self.deny_cidr.iter() {
            let (key, entry) = item.map_err(op("iterate", map_name::DENY_CIDR))?;
            if let Some(net) = addr::net_of(key.prefix_len(), &key.data()) {
                nets.push(DenyRecord {
                    target: Target::Net(net),
                    entry,
                });
            }
        }
        out.sort_by_key(|r| r.target.to_string());
        nets.sort_by_key(|r| r.target.to_string());
        out.extend(nets);
        Ok(out)
    }

    /// Makes the CIDR deny entries that came from the config exactly `nets`, leaving manual
    /// and automatic entries alone.
    pub fn sync_config_denies(&mut self, nets: &[Target]) -> Result<(), MapsError> {
        let stale: Vec<Target> = self
            .deny_list()?
            .into_iter()
            .filter(|r| r.entry.origin == origin::CONFIG && !nets.contains(&r.target))
            .map(|r| r.target)
            .collect();
        for t in &stale {
            self.remove_deny(t)?;
        }
        for t in nets {
            let hits = match self.find_deny_as_stored(t)? {
                Some(e) if e.origin == origin::CONFIG => e.hits,
                _ => 0,
            };
            let mut entry = new_deny_entry(0, origin::CONFIG, "config");
            entry.hits = hits;
            self.write_deny(t, &entry)?;
        }
        self.bump_generation()
    }

    /// Makes the allow list exactly `nets` (the config owns it).
    pub fn replace_allow(&mut self, nets: &[IpNet]) -> Result<(), MapsError> {
        let wanted: Vec<(u32, SourceKey)> = nets.iter().map(addr::lpm_of).collect();
        let existing: Vec<Key<SourceKey>> = self
            .allow
            .keys()
            .collect::<Result<_, _>>()
            .map_err(op("iterate", map_name::ALLOW_CIDR))?;
        for k in existing {
            if !wanted.contains(&(k.prefix_len(), k.data())) {
                self.allow
                    .remove(&k)
                    .map_err(op("remove", map_name::ALLOW_CIDR))?;
            }
        }
        for (len, key) in wanted {
            let k = Key::new(len, key);
            if self.allow.get(&k, 0).is_err() {
                self.allow
                    .insert(&k, AllowEntry::default(), 0)
                    .map_err(op("insert", map_name::ALLOW_CIDR))?;
            }
        }
        self.bump_generation()
    }

    /// The allow list.
    pub fn allow_list(&self) -> Result<Vec<IpNet>, MapsError> {
        let mut out = Vec::new();
        for key in self.allow.keys() {
            let key = key.map_err(op("iterate", map_name::ALLOW_CIDR))?;
            if let Some(net) = addr::net_of(key.prefix_len(), &key.data()) {
                out.push(net);
            }
        }
        out.sort_by_key(|n| n.to_string());
        Ok(out)
    }

    pub fn write_config(&mut self, cfg: &DataPlaneConfig) -> Result<(), MapsError> {
        self.config
            .set(0, *cfg, 0)
            .map_err(op("update", map_name::CONFIG))
    }

    pub fn read_config(&self) -> Result<DataPlaneConfig, MapsError> {
        self.config
            .get(&0, 0)
            .map_err(op("lookup", map_name::CONFIG))
    }

    /// The global counters, summed over CPUs, indexed by [`counter`].
    pub fn totals(&self) -> Result<[u64; counter::COUNT as usize], MapsError> {
        let per_cpu = self
            .totals
            .get(&0, 0)
            .map_err(op("lookup", map_name::TOTALS))?;
        let mut sum = [0u64; counter::COUNT as usize];
        for cpu in per_cpu.iter() {
            for (s, v) in sum.iter_mut().zip(cpu.counters.iter()) {
                *s = s.wrapping_add(*v);
            }
        }
        Ok(sum)
    }

    /// Every source the kernel is tracking.
    pub fn sources(&self) -> Result<Vec<(IpAddr, SourceStats)>, MapsError> {
        let mut out = Vec::new();
        for item in self.sources.iter() {
            let (key, stats) = item.map_err(op("iterate", map_name::SOURCES))?;
            out.push((addr::addr_of(&key), stats));
        }
        Ok(out)
    }

    pub fn source(&self, addr: IpAddr) -> Result<Option<SourceStats>, MapsError> {
        match self.sources.get(&addr::key_of(addr), 0) {
            Ok(s) => Ok(Some(s)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(e) => Err(op("lookup", map_name::SOURCES)(e)),
        }
    }

    /// Overwrites a source's state. Tests use it to move a token bucket through time without
    /// sleeping; operators have no use for it.
    pub fn set_source(&mut self, addr: IpAddr, stats: &SourceStats) -> Result<(), MapsError> {
        self.sources
            .insert(addr::key_of(addr), *stats, 0)
            .map_err(op("update", map_name::SOURCES))
    }

    /// Forgets every source's counters and bucket.
    pub fn clear_sources(&mut self) -> Result<(), MapsError> {
        let keys: Vec<SourceKey> = self
            .sources
            .keys()
            .collect::<Result<_, _>>()
            .map_err(op("iterate", map_name::SOURCES))?;
        for k in keys {
            match self.sources.remove(&k) {
                Ok(()) | Err(MapError::KeyNotFound) => {}
                Err(e) => return Err(op("remove", map_name::SOURCES)(e)),
            }
        }
        Ok(())
    }
}
