//! Rate-limited logging of repeated events: during an outage every failed call meets the same
//! error, and one line per call would bury the log (tens of thousands of lines a second).
//!
//! A [`LogThrottle`] lets the first occurrence through at once, then at most one per
//! `interval`; each line that gets through carries how many occurrences it stands for, so the
//! count is never lost. When the events stop, [`LogThrottle::take_pending`] hands over the
//! occurrences not yet reported (for a closing "recovered" line).
//!
//! ```
//! use std::time::Duration;
//! use tollgate_common::log_throttle::LogThrottle;
//!
//! static STORE_ERRORS: LogThrottle = LogThrottle::new(Duration::from_secs(10));
//!
//! fn on_error(e: &std::io::Error) {
//!     if let Some(occurrences) = STORE_ERRORS.allow() {
//!         eprintln!("store call failed ({occurrences} times since the last line): {e}");
//!     }
//! }
//! # on_error(&std::io::Error::other("refused"));
//! ```

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One throttled stream of log lines. `const`-constructible, so it can be a `static` beside
/// the code that logs; cheap when it says no (one uncontended lock).
#[derive(Debug)]
pub struct LogThrottle {
    interval: Duration,
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    /// When the last line went out; `None` before the first.
    last: Option<Instant>,
    /// Occurrences since the last line went out, not yet reported.
    pending: u64,
}

impl LogThrottle {
    /// At most one line per `interval`.
    pub const fn new(interval: Duration) -> Self {
        Self {
            interval,
            state: Mutex::new(State {
                last: None,
                pending: 0,
            }),
        }
    }

    /// Records one occurrence. `Some(n)` means: write the line now; it stands for `n`
    /// occurrences (this one and those held back since the previous line). `None`: skip it.
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(Instant::now())
    }

    /// [`LogThrottle::allow`] at a given time (for tests).
    pub fn allow_at(&self, now: Instant) -> Option<u64> {
        // A poisoned lock only means another thread panicked mid-update of two integers.
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.pending += 1;
        let due = s
            .last
            .is_none_or(|last| now.saturating_duration_since(last) >= self.interval);
        if !due {
            return None;
        }
        s.last = Some(now);
        Some(std::mem::take(&mut s.pending))
    }

    /// Occurrences held back and not yet reported, which are then forgotten; the next
    /// occurrence is let through at once, as the first of a new episode.
    pub fn take_pending(&self) -> u64 {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.last = None;
        std::mem::take(&mut s.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_occurrence_goes_out_then_one_line_per_interval_with_the_count() {
        let t = LogThrottle::new(Duration::from_secs(10));
        let start = Instant::now();
        assert_eq!(t.allow_at(start), Some(1));
        for ms in [1, 500, 9_999] {
            assert_eq!(t.allow_at(start + Duration::from_millis(ms)), None);
        }
        // The line at the interval stands for itself and the three held back.
        assert_eq!(t.allow_at(start + Duration::from_secs(10)), Some(4));
        assert_eq!(t.allow_at(start + Duration::from_secs(11)), None);
        assert_eq!(t.allow_at(start + Duration::from_secs(25)), Some(2));
    }

    #[test]
    fn many_occurrences_make_few_lines_and_lose_no_count() {
        let t = LogThrottle::new(Duration::from_secs(1));
        let start = Instant::now();
        let (mut lines, mut counted) = (0, 0);
        // 44,000 failures spread over 12 seconds.
        for i in 0..44_000u64 {
            if let Some(n) = t.allow_at(start + Duration::from_micros(i * 12_000_000 / 44_000)) {
                lines += 1;
                counted += n;
            }
        }
        counted += t.take_pending();
        assert!(lines <= 13, "{lines} lines");
        assert_eq!(counted, 44_000);
    }

    #[test]
    fn taking_the_pending_count_starts_a_new_episode() {
        let t = LogThrottle::new(Duration::from_secs(60));
        let start = Instant::now();
        assert_eq!(t.allow_at(start), Some(1));
        assert_eq!(t.allow_at(start + Duration::from_secs(1)), None);
        assert_eq!(t.allow_at(start + Duration::from_secs(2)), None);
        assert_eq!(t.take_pending(), 2);
        assert_eq!(t.take_pending(), 0);
        // The next outage is reported at once rather than up to a minute late.
        assert_eq!(t.allow_at(start + Duration::from_secs(3)), Some(1));
    }

    #[test]
    fn usable_as_a_static_from_many_threads() {
        static T: LogThrottle = LogThrottle::new(Duration::from_secs(3600));
        let handles: Vec<_> = (0..4)
            .map(|_| std::thread::spawn(|| (0..1000).filter_map(|_| T.allow()).sum::<u64>()))
            .collect();
        let through: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
        assert_eq!(through + T.take_pending(), 4000);
    }
}
