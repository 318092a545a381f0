//! The durable deny state: a JSON file rewritten whole (write to a temporary file, fsync,
//! rename), under an advisory lock so that a CLI and a gateway never interleave updates.

use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

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

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn io(&self, source: std::io::Error) -> StateError {
        StateError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// The entries; none when the file does not exist yet.
    pub fn load(&self) -> Result<Vec<StateEntry>, StateError> {
        let text = match fs::read_to_string(&self.path) {
            Ok(t) => t,
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

    /// Read-modify-write under the lock.
    pub fn update(&self, f: impl FnOnce(&mut Vec<StateEntry>)) -> Result<(), StateError> {
        let _lock = self.lock()?;
        let mut entries = self.load()?;
        f(&mut entries);
        self.write(&entries)
    }

    fn dir(&self) -> &Path {
        self.path.parent().unwrap_or_else(|| Path::new("."))
    }

    fn lock(&self) -> Result<File, StateError> {
        fs::create_dir_all(self.dir()).map_err(|e| self.io(e))?;
        let mut lock_path = self.path.clone().into_os_string();
        lock_path.push(".lock");
        let f = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
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
        let mut tmp = self.path.clone().into_os_string();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        let mut f = File::create(&tmp).map_err(|e| self.io(e))?;
        f.write_all(&text).map_err(|e| self.io(e))?;
        f.sync_all().map_err(|e| self.io(e))?;
        fs::rename(&tmp, &self.path).map_err(|e| self.io(e))?;
        if let Ok(d) = File::open(self.dir()) {
            let _ = d.sync_all();
        }
        Ok(())
    }
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
        };
        f.save(std::slice::from_ref(&e)).unwrap();
        f.update(|v| {
            v.push(StateEntry {
                target: "10.0.0.2".into(),
                ..e.clone()
            })
        })
        .unwrap();
        assert_eq!(f.load().unwrap().len(), 2);
        fs::write(f.path(), b"{").unwrap();
        assert!(matches!(f.load(), Err(StateError::Corrupt { .. })));
        let _ = fs::remove_dir_all(&dir);
    }
}
