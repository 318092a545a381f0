//! The durable deny state: a JSON file rewritten whole (write to a temporary file, fsync,
//! rename), under an advisory lock so that a CLI and a gateway never interleave updates.
//!
//! The gateway runs as root and restores bans from this file, so whoever can plant a file or
//! a symlink in its directory could make it overwrite another file or ban anything. So the
//! directory must be writable only by its owner (or sticky), owned by us or root; the
//! temporary file gets a random name and is created with `O_EXCL | O_NOFOLLOW`; the file and
//! its lock are opened with `O_NOFOLLOW`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

/// The entries by target, as updates see them (ordered, so the file is stable).
pub type Entries = BTreeMap<String, StateEntry>;

/// Why the state file could not be read or written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    #[error("deny state file {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("deny state file {} is not valid: {detail}; fix or remove it", .path.display())]
    Corrupt { path: PathBuf, detail: String },
    #[error("deny state directory {} is unsafe: {detail}", .dir.display())]
    UnsafeDir { dir: PathBuf, detail: String },
}

/// One entry as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateEntry {
    pub target: String,
    pub origin: String,
    pub reason: String,
    pub created_unix: u64,
    /// Wall-clock expiry, unix seconds; 0 = until removed.
    pub expires_unix: u64,
    /// How many bans this target has had (escalation survives restarts).
    pub offenses: u32,
    /// The fleet node the ban came from; absent for this node's own entries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Document {
    version: u32,
    entries: Vec<StateEntry>,
}

const VERSION: u32 = 1;

/// The state file at a path.
#[derive(Debug, Clone)]
pub struct StateFile {
    path: PathBuf,
}

impl StateFile {
    pub fn new(path: PathBuf) -> Self {
        Self { path }
    }

    /// The path of a companion file beside `state` (`deny.json` → `deny.json.NAME`).
    pub fn beside(state: &Path, name: &str) -> PathBuf {
        let mut p = state.as_os_str().to_owned();
        p.push(".");
        p.push(name);
        PathBuf::from(p)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, source: std::io::Error) -> StateError {
        StateError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// The entries; none when the file does not exist yet. A symlink in its place is an
    /// error, not followed.
    pub fn load(&self) -> Result<Vec<StateEntry>, StateError> {
        let mut text = String::new();
        match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&self.path)
        {
            Ok(mut f) => f.read_to_string(&mut text).map_err(|e| self.io(e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(self.io(e)),
        };
        let doc: Document = serde_json::from_str(&text).map_err(|e| StateError::Corrupt {
            path: self.path.clone(),
            detail: e.to_string(),
        })?;
        if doc.version != VERSION {
            return Err(StateError::Corrupt {
                path: self.path.clone(),
                detail: format!("version {} (this gateway writes {VERSION})", doc.version),
            });
        }
        Ok(doc.entries)
    }

    /// Replaces the file's content atomically.
    pub fn save(&self, entries: &[StateEntry]) -> Result<(), StateError> {
        let _lock = self.lock()?;
        self.write(entries)
    }

    /// Read-modify-write under the lock; `f` sees the entries by target, so a batch of
    /// changes costs a read and a write of the file, not a scan per change.
    pub fn update(&self, f: impl FnOnce(&mut Entries)) -> Result<(), StateError> {
        let _lock = self.lock()?;
        let mut entries: Entries = self
            .load()?
            .into_iter()
            .map(|e| (e.target.clone(), e))
            .collect();
        f(&mut entries);
        let entries: Vec<StateEntry> = entries.into_values().collect();
        self.write(&entries)
    }

    /// The file's first `max` bytes, never through a symlink; `None` when it does not exist.
    pub fn read_small(&self, max: u64) -> Result<Option<Vec<u8>>, StateError> {
        let f = match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&self.path)
        {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(self.io(e)),
        };
        let mut out = Vec::new();
        f.take(max).read_to_end(&mut out).map_err(|e| self.io(e))?;
        Ok(Some(out))
    }

    fn dir(&self) -> &Path {
        self.path.parent().unwrap_or_else(|| Path::new("."))
    }

    /// Refuses a directory others could plant files or symlinks in: group- or
    /// world-writable without the sticky bit, or owned by someone other than us or root.
    fn check_dir(&self) -> Result<(), StateError> {
        let dir = self.dir();
        let meta = fs::metadata(dir).map_err(|e| self.io(e))?;
        let unsafe_dir = |detail: String| StateError::UnsafeDir {
            dir: dir.to_path_buf(),
            detail,
        };
        let mode = meta.mode();
        if mode & 0o022 != 0 && mode & 0o1000 == 0 {
            return Err(unsafe_dir(format!(
                "mode {:o} lets others write there without the sticky bit; chmod go-w it",
                mode & 0o7777
            )));
        }
        let me = rustix::process::geteuid().as_raw();
        if meta.uid() != me && meta.uid() != 0 {
            return Err(unsafe_dir(format!(
                "owned by uid {}, neither this user ({me}) nor root",
                meta.uid()
            )));
        }
        Ok(())
    }

    fn lock(&self) -> Result<File, StateError> {
        // Not writable by others whatever the umask, so the check below passes for a
        // directory we made.
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(self.dir())
            .map_err(|e| self.io(e))?;
        self.check_dir()?;
        let mut lock_path = self.path.clone().into_os_string();
        lock_path.push(".lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&lock_path)
            .map_err(|e| self.io(e))?;
        rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)
            .map_err(|e| self.io(e.into()))?;
        Ok(f)
    }

    fn write(&self, entries: &[StateEntry]) -> Result<(), StateError> {
        let doc = Document {
            version: VERSION,
            entries: entries.to_vec(),
        };
        let text = serde_json::to_vec_pretty(&doc).map_err(|e| StateError::Corrupt {
            path: self.path.clone(),
            detail: e.to_string(),
        })?;
        self.replace_with(&text)
    }

    /// Replaces the file with `bytes`: a random temporary name created exclusively, fsync,
    /// rename (the fleet's stream cursor uses it too, beside the state file).
    pub fn replace_with(&self, bytes: &[u8]) -> Result<(), StateError> {
        self.check_dir()?;
        let (tmp, mut f) = self.create_temp()?;
        let written = f
            .write_all(bytes)
            .and_then(|()| f.sync_all())
            .and_then(|()| fs::rename(&tmp, &self.path));
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(self.io(e));
        }
        if let Ok(d) = File::open(self.dir()) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// A new temporary file next to the state file: a random name, created exclusively and
    /// never through a symlink (a name someone planted is an error, never followed).
    fn create_temp(&self) -> Result<(PathBuf, File), StateError> {
        use ring::rand::SecureRandom;
        let mut random = [0u8; 8];
        ring::rand::SystemRandom::new()
            .fill(&mut random)
            .map_err(|_| {
                self.io(std::io::Error::other(
                    "no random numbers for a temporary name",
                ))
            })?;
        let mut name = self.path.clone().into_os_string();
        name.push(format!(".{:016x}.tmp", u64::from_ne_bytes(random)));
        let tmp = PathBuf::from(name);
        create_exclusive(&tmp)
            .map(|f| (tmp, f))
            .map_err(|e| self.io(e))
    }
}

/// `O_CREAT | O_EXCL | O_NOFOLLOW`, mode 0600.
fn create_exclusive(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_update_and_corruption() {
        let dir = std::env::temp_dir().join(format!("gw-state-{}", std::process::id()));
        let f = StateFile::new(dir.join("sub/deny.json"));
        assert_eq!(f.load().unwrap(), vec![]);
        let e = StateEntry {
            target: "10.0.0.1".into(),
            origin: "manual".into(),
            reason: "r".into(),
            created_unix: 1,
            expires_unix: 0,
            offenses: 1,
            node: None,
        };
        f.save(std::slice::from_ref(&e)).unwrap();
        f.update(|v| {
            v.insert(
                "10.0.0.2".into(),
                StateEntry {
                    target: "10.0.0.2".into(),
                    ..e.clone()
                },
            );
        })
        .unwrap();
        assert_eq!(f.load().unwrap().len(), 2);
        fs::write(f.path(), b"{").unwrap();
        assert!(matches!(f.load(), Err(StateError::Corrupt { .. })));
        let _ = fs::remove_dir_all(&dir);
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("gw-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn symlinks_in_the_state_directory_are_never_followed() {
        use std::os::unix::fs::symlink;
        let dir = scratch("state-symlink");
        let victim = dir.join("victim");
        fs::write(&victim, b"precious").unwrap();
        // A planted temporary name: creating through it fails, the victim is untouched.
        let planted = dir.join("deny.json.0123456789abcdef.tmp");
        symlink(&victim, &planted).unwrap();
        assert!(create_exclusive(&planted).is_err());
        // Even a dangling symlink is not created through.
        let dangling = dir.join("dangling.tmp");
        symlink(dir.join("new-file"), &dangling).unwrap();
        assert!(create_exclusive(&dangling).is_err());
        assert!(!dir.join("new-file").exists());
        // The old fixed temporary name and the lock file as symlinks: a save neither
        // follows nor truncates them, the lock is refused.
        let f = StateFile::new(dir.join("deny.json"));
        symlink(&victim, dir.join("deny.json.tmp")).unwrap();
        f.save(&[]).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        fs::remove_file(dir.join("deny.json.lock")).unwrap();
        symlink(&victim, dir.join("deny.json.lock")).unwrap();
        assert!(matches!(f.save(&[]), Err(StateError::Io { .. })));
        // The state file itself as a symlink is not read.
        let g = StateFile::new(dir.join("other.json"));
        symlink(&victim, dir.join("other.json")).unwrap();
        assert!(g.load().is_err());
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        let _ = fs::remove_dir_all(&dir);
    }

    #[test]
    fn writable_state_directories_are_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = scratch("state-perm");
        let f = StateFile::new(dir.join("deny.json"));
        for (mode, ok) in [
            (0o777, false),
            (0o775, false),
            (0o757, false),
            (0o1777, true),
            (0o755, true),
        ] {
            fs::set_permissions(&dir, fs::Permissions::from_mode(mode)).unwrap();
            let r = f.save(&[]);
            assert_eq!(r.is_ok(), ok, "mode {mode:o}: {r:?}");
            if !ok {
                assert!(r.unwrap_err().to_string().contains("chmod go-w"));
            }
        }
        // Owned by another user (not root): refused. Changing the owner needs root.
        if !gateway_tests::privileged::require("writable_state_directories_are_refused") {
            return;
        }
        rustix::fs::chown(&dir, Some(rustix::fs::Uid::from_raw(4242)), None).unwrap();
        let r = f.save(&[]);
        assert!(
            matches!(&r, Err(StateError::UnsafeDir { detail, .. }) if detail.contains("4242")),
            "{r:?}"
        );
        let _ = fs::remove_dir_all(&dir);
    }
}
