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

/// Where this node was: the last stream id read, and the epoch of the Redis it was read
/// from (a random value Redis holds; another one means Redis lost its data).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Position {
    pub id: StreamId,
    pub epoch: String,
}

impl Position {
    fn parse(s: &str) -> Option<Self> {
        let mut parts = s.split_whitespace();
        let id = StreamId::parse(parts.next()?)?;
        let epoch = parts.next().unwrap_or("").to_owned();
        (epoch.len() <= 64 && parts.next().is_none()).then_some(Self { id, epoch })
    }
}

/// The cursor file.
#[derive(Debug)]
pub struct Cursor(StateFile);

impl Cursor {
    pub fn new(path: PathBuf) -> Self {
        Self(StateFile::new(path))
    }

    /// The saved position; `None` when there is none or it cannot be read (then the node
    /// starts from the stream's end after loading the sorted set, which loses nothing).
    pub fn load(&self) -> Option<Position> {
        match self.0.read_small(160) {
            Ok(Some(b)) => Position::parse(&String::from_utf8_lossy(&b)),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(error = %e, "fleet: stream cursor unreadable");
                None
            }
        }
    }

    pub fn save(&self, p: &Position) {
        let text = format!("{} {}\n", p.id, p.epoch);
        if let Err(e) = self.0.replace_with(text.as_bytes()) {
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
        assert_eq!(
            b.before().to_string(),
            format!("1700000000000-{}", u64::MAX)
        );
        assert_eq!(a.before().to_string(), "1700000000000-4");
        for bad in ["", "1", "a-1", "1-", "-1", "1-2-3"] {
            assert_eq!(StreamId::parse(bad), None, "{bad}");
        }
        let p = Position::parse("5-1 abcd\n").unwrap();
        assert_eq!((p.id.to_string(), p.epoch.as_str()), ("5-1".into(), "abcd"));
        assert_eq!(Position::parse("5-1 a b"), None);
        assert_eq!(Position::parse(&format!("5-1 {}", "e".repeat(65))), None);
    }
}
