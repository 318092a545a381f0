//! A sliding-window event counter in two integers: the current fixed window's count and the
//! previous one's, weighted by how much of the previous window the sliding window still
//! covers. Constant memory per source, error bounded by the previous window's count.

/// Counts events over the last `window_ms`, approximately.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    start_ms: u64,
    current: u32,
    previous: u32,
}

impl Window {
    /// Records one event at `now_ms` and returns the estimated number of events in the
    /// sliding window ending now, this one included.
    pub fn add(&mut self, now_ms: u64, window_ms: u64) -> u32 {
        let window_ms = window_ms.max(1);
        let elapsed = now_ms.saturating_sub(self.start_ms);
        if elapsed >= 2 * window_ms {
            *self = Window {
                start_ms: now_ms,
                current: 0,
                previous: 0,
            };
        } else if elapsed >= window_ms {
            self.previous = self.current;
            self.current = 0;
            self.start_ms += window_ms;
        }
        self.current = self.current.saturating_add(1);
        let into = now_ms.saturating_sub(self.start_ms).min(window_ms);
        let carried = u64::from(self.previous) * (window_ms - into) / window_ms;
        u32::try_from(carried)
            .unwrap_or(u32::MAX)
            .saturating_add(self.current)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_within_and_forgets_after() {
        let mut w = Window::default();
        for i in 1..=10 {
            assert_eq!(w.add(1_000 + i, 1_000), i as u32);
        }
        // Half a window later, half of the previous window still counts.
        assert_eq!(w.add(2_500, 1_000), 6);
        // Two windows of silence forget everything.
        assert_eq!(w.add(10_000, 1_000), 1);
    }

    #[test]
    fn steady_rate_is_estimated_close_to_truth() {
        let mut w = Window::default();
        let mut last = 0;
        for t in (0..10_000).step_by(10) {
            last = w.add(t, 1_000);
        }
        assert!((95..=105).contains(&last), "{last}");
    }
}
