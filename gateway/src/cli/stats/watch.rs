//! `gateway stats --watch`: rates per second between two samples, and how each sample is
//! shown (redrawn in place on a terminal, appended otherwise).

use super::StatsJson;
use serde::Serialize;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// The kernel verdicts that drop a packet.
pub const DROP_COUNTERS: [&str; 3] = ["dropped_deny", "dropped_deny_cidr", "dropped_rate"];

/// What rates are computed from: the counters of one sample and when it was taken.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub at: Instant,
    /// Kernel packets seen; `None` when the maps gave no total.
    pub packets: Option<u64>,
    /// Kernel drops (every dropping verdict).
    pub drops: Option<u64>,
    /// User-plane requests and auth denials; `None` when the admin endpoint did not answer.
    pub requests: Option<u64>,
    pub denials: Option<u64>,
}

impl Sample {
    pub fn of(s: &StatsJson, at: Instant) -> Self {
        let total = |name: &str| s.totals.get(name).copied();
        let drops = DROP_COUNTERS
            .iter()
            .try_fold(0u64, |sum, name| Some(sum.saturating_add(total(name)?)));
        Self {
            at,
            packets: total("packets"),
            drops,
            requests: s.user_plane.as_ref().map(|u| u.requests),
            denials: s.user_plane.as_ref().map(|u| u.denials.values().sum()),
        }
    }
}

/// `rates` in `gateway stats --watch --json` (from the second sample on). Per second over
/// `interval_secs`; `null` where either sample lacks the counter or it went backwards (the
/// gateway restarted, or the maps were pinned anew).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Rates {
    pub interval_secs: f64,
    pub packets: Option<f64>,
    pub drops: Option<f64>,
    pub requests: Option<f64>,
    pub denials: Option<f64>,
}

impl Rates {
    /// From `before` to `after`; `None` when no time passed between them.
    pub fn between(before: &Sample, after: &Sample) -> Option<Self> {
        let secs = after.at.checked_duration_since(before.at)?.as_secs_f64();
        if secs <= 0.0 {
            return None;
        }
        let rate = |a: Option<u64>, b: Option<u64>| {
            let delta = b?.checked_sub(a?)?;
            Some(delta as f64 / secs)
        };
        Some(Self {
            interval_secs: secs,
            packets: rate(before.packets, after.packets),
            drops: rate(before.drops, after.drops),
            requests: rate(before.requests, after.requests),
            denials: rate(before.denials, after.denials),
        })
    }

    /// The text table's rates line.
    pub fn render(rates: Option<&Rates>) -> String {
        let Some(r) = rates else {
            return "rates/s: from the next sample on\n".to_owned();
        };
        let f = |v: Option<f64>| v.map_or_else(|| "–".to_owned(), |v| format!("{v:.1}"));
        format!(
            "rates/s over {:.1}s: packets {}  drops {}  requests {}  denials {}\n",
            r.interval_secs,
            f(r.packets),
            f(r.drops),
            f(r.requests),
            f(r.denials)
        )
    }
}

/// ANSI: cursor to the top left corner.
const HOME: &str = "\x1b[H";
/// ANSI: clear to the end of the line, and to the end of the screen.
const CLEAR_LINE: &str = "\x1b[K";
const CLEAR_BELOW: &str = "\x1b[J";

/// One sample's text as printed: on a terminal, drawn over the previous one from the top
/// left corner (each line clears its rest, then everything below is cleared, so nothing
/// flickers and nothing of a longer previous block is left); otherwise the block as is,
/// after a blank line from the second on.
pub fn frame(text: &str, terminal: bool, first: bool) -> String {
    if !terminal {
        return if first {
            text.to_owned()
        } else {
            format!("\n{text}")
        };
    }
    let mut out = String::with_capacity(text.len() + 64);
    out.push_str(HOME);
    if first {
        // The screen may hold anything: start from a clear one.
        out.push_str(CLEAR_BELOW);
    }
    for line in text.lines() {
        let _ = writeln!(out, "{line}{CLEAR_LINE}");
    }
    out.push_str(CLEAR_BELOW);
    out
}

/// When the next sample is due: on a fixed schedule from the first, so that collecting
/// does not stretch the interval; a late sample is taken at once, never twice.
pub fn next_due(start: Instant, interval: Duration, taken: u32, now: Instant) -> Instant {
    let due = start + interval.saturating_mul(taken);
    due.max(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(at: Instant, packets: u64, drops: u64, up: Option<(u64, u64)>) -> Sample {
        Sample {
            at,
            packets: Some(packets),
            drops: Some(drops),
            requests: up.map(|u| u.0),
            denials: up.map(|u| u.1),
        }
    }

    #[test]
    fn rates_are_deltas_over_the_time_between_samples() {
        let t0 = Instant::now();
        let a = sample(t0, 1_000, 10, Some((50, 5)));
        let b = sample(
            t0 + Duration::from_millis(2_500),
            6_000,
            35,
            Some((300, 30)),
        );
        let r = Rates::between(&a, &b).expect("time passed");
        assert_eq!(r.interval_secs, 2.5);
        assert_eq!(r.packets, Some(2_000.0));
        assert_eq!(r.drops, Some(10.0));
        assert_eq!(r.requests, Some(100.0));
        assert_eq!(r.denials, Some(10.0));
        assert_eq!(
            Rates::render(Some(&r)),
            "rates/s over 2.5s: packets 2000.0  drops 10.0  requests 100.0  denials 10.0\n"
        );
    }

    #[test]
    fn missing_or_reset_counters_give_no_rate_rather_than_a_wrong_one() {
        let t0 = Instant::now();
        // The admin endpoint answered only the second time; the kernel counters restarted.
        let a = sample(t0, 5_000, 10, None);
        let b = sample(t0 + Duration::from_secs(1), 100, 12, Some((7, 1)));
        let r = Rates::between(&a, &b).expect("time passed");
        assert_eq!(r.packets, None);
        assert_eq!(r.drops, Some(2.0));
        assert_eq!((r.requests, r.denials), (None, None));
        assert!(Rates::render(Some(&r)).contains("packets –  drops 2.0  requests –"));
        // No time between the samples (or the wrong order): no rates at all.
        assert_eq!(Rates::between(&b, &b), None);
        assert_eq!(Rates::between(&b, &a), None);
        assert_eq!(
            Rates::render(None),
            "rates/s: from the next sample on\n".to_owned()
        );
    }

    #[test]
    fn samples_read_the_kernel_drops_and_the_user_plane() {
        let mut s = StatsJson {
            pin_path: String::new(),
            totals: [
                ("packets", 9),
                ("dropped_deny", 1),
                ("dropped_deny_cidr", 2),
            ]
            .into_iter()
            .collect(),
            sources_tracked: 0,
            deny_entries: 0,
            top_sources: Vec::new(),
            user_plane: None,
            rates: None,
        };
        let at = Instant::now();
        // A counter missing from the totals: no drop count rather than a partial one.
        assert_eq!(Sample::of(&s, at).drops, None);
        s.totals.insert("dropped_rate", 4);
        let mut up = super::super::user_plane::UserPlane {
            requests: 12,
            ..Default::default()
        };
        up.denials.insert("expired".into(), 2);
        up.denials.insert("missing".into(), 3);
        s.user_plane = Some(up);
        assert_eq!(
            Sample::of(&s, at),
            Sample {
                at,
                packets: Some(9),
                drops: Some(7),
                requests: Some(12),
                denials: Some(5)
            }
        );
    }

    #[test]
    fn a_terminal_is_redrawn_in_place_anything_else_appended() {
        let block = "a\nbb\n";
        assert_eq!(frame(block, false, true), "a\nbb\n");
        assert_eq!(frame(block, false, false), "\na\nbb\n");
        assert_eq!(
            frame(block, true, true),
            "\x1b[H\x1b[Ja\x1b[K\nbb\x1b[K\n\x1b[J"
        );
        assert_eq!(frame(block, true, false), "\x1b[Ha\x1b[K\nbb\x1b[K\n\x1b[J");
    }

    #[test]
    fn samples_keep_to_their_schedule() {
        let t0 = Instant::now();
        let s = Duration::from_secs(2);
        assert_eq!(next_due(t0, s, 1, t0 + Duration::from_millis(300)), t0 + s);
        assert_eq!(next_due(t0, s, 3, t0 + Duration::from_secs(5)), t0 + 3 * s);
        // Late: at once.
        let late = t0 + Duration::from_secs(9);
        assert_eq!(next_due(t0, s, 3, late), late);
    }
}
