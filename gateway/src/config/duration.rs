//! Durations as the config writes them: whole seconds (`30`) or a humantime string (`"5m"`,
//! `"1h 30m"`). Shared by every section that has a timeout or an interval.

use serde::{Deserialize, Deserializer};
use std::time::Duration;

/// A duration given as whole seconds (`30`) or a humantime string (`"5m"`, `"1h 30m"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationSecs(pub Duration);

impl<'de> Deserialize<'de> for DurationSecs {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Secs(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Secs(s) => Ok(DurationSecs(Duration::from_secs(s))),
            Raw::Text(t) => humantime::parse_duration(&t)
                .map(DurationSecs)
                .map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct T {
        d: DurationSecs,
    }

    fn parse(v: &str) -> Result<Duration, toml::de::Error> {
        toml::from_str::<T>(&format!("d = {v}")).map(|t| t.d.0)
    }

    #[test]
    fn seconds_and_humantime() {
        assert_eq!(parse("30").unwrap(), Duration::from_secs(30));
        assert_eq!(parse("\"5m\"").unwrap(), Duration::from_secs(300));
        assert_eq!(parse("\"1h 30m\"").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse("\"500ms\"").unwrap(), Duration::from_millis(500));
        for bad in ["-1", "\"soon\"", "\"5\"", "1.5", "true"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
