//! The last stream id this node read, kept in a small file beside the deny state file, so
//! that a restart reads on from there (the sorted set covers what the stream trimmed).

use crate::deny::StateFile;
use std::path::PathBuf;

/// A stream entry id, `ms-seq`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct StreamId {
    ms: u64,
    seq: u64,
}

impl StreamId {
    pub fn parse(s: &str) -> Option<Self> {
        let (ms, seq) = s.trim().split_once('-')?;
        Some(Self {
            ms: ms.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }

    /// The id just before this one: reading after it starts with this one.
    pub fn before(self) -> Self {
        match (self.ms, self.seq) {
            (0, 0) => self,
            (ms, 0) => Self {
                ms: ms - 1,
                seq: u64::MAX,
            },
            (ms, seq) => Self { ms, seq: seq - 1 },
        }
    }
}

impl std::fmt::Display for StreamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

/// The cursor file.
#[derive(Debug)]
pub struct Cursor(StateFile);

impl Cursor {
    pub fn new(path: PathBuf) -> Self {
        Self(StateFile::new(path))
    }

    /// The saved id; `None` when there is none or it cannot be read (then the node starts
    /// from the stream's end after loading the sorted set, which loses nothing).
    pub fn load(&self) -> Option<StreamId> {
        match self.0.read_small(64) {
            Ok(Some(b)) => StreamId::parse(&String::from_utf8_lossy(&b)),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "fleet: stream cursor unreadable");
                None
            }
        }
    }

    pub fn save(&self, id: StreamId) {
        if let Err(e) = self.0.replace_with(id.to_string().as_bytes()) {
            tracing::warn!(error = %e, "fleet: stream cursor not saved");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_order_and_step_back() {
        let a = StreamId::parse("1700000000000-5").unwrap();
        let b = StreamId::parse("1700000000001-0").unwrap();
        assert!(a < b);
        assert_eq!(b.before().to_string(), format!("1700000000000-{}", u64::MAX));
        assert_eq!(a.before().to_string(), "1700000000000-4");
        for bad in ["", "1", "a-1", "1-", "-1", "1-2-3"] {
            assert_eq!(StreamId::parse(bad), None, "{bad}");
        }
    }
}
