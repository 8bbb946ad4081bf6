//! Deadlines on Redis' clock: how a call whose caller has given up is kept from counting.
//!
//! A command already written to Redis cannot be taken back: a Redis that hangs (SIGSTOP, a
//! long fork, a network path gone silent) runs it whenever it resumes, long after its caller
//! answered with the failure mode. So every script call carries the instant, on Redis' own
//! clock, after which it must change nothing; the script reads `TIME` first and, when late,
//! replies with its clock alone.
//!
//! The caller's clock and Redis' are different machines' clocks, so the deadline is never the
//! caller's wall time sent as is. Each reply carries Redis' clock `t`; the caller notes its own
//! monotonic clock `r` when the reply is in hand. Since the script ran before `r`, the offset
//! `t - r` is a lower bound of the true offset between the two clocks, whatever their skew;
//! the estimate is the largest bound seen recently (the tightest; recent, so that a step of
//! Redis' clock is followed within [`PERIOD`]). A deadline computed with a lower bound is early
//! by at most the round trip of the best sample: a late execution is always refused, and at
//! worst one that runs just before the caller's deadline is refused too (that call then fails
//! as a timeout, as it nearly did).
//!
//! The deadline is the caller's give-up instant minus a margin (a fifth of the timeout, at
//! most [`MAX_MARGIN`]), so that a script that ran in time also has time for its reply to
//! come back before the caller gives up.

use std::sync::LazyLock;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How long a sample shapes the estimate (at most two periods).
const PERIOD: Duration = Duration::from_secs(1);
/// The most time kept between the deadline and the caller's giving up.
const MAX_MARGIN: Duration = Duration::from_millis(10);

static ORIGIN: LazyLock<Instant> = LazyLock::new(Instant::now);

/// This process' monotonic clock in µs (since the first use).
pub(super) fn mono_us(at: Instant) -> i64 {
    at.saturating_duration_since(*ORIGIN).as_micros() as i64
}

/// The estimated offset from this process' monotonic clock to one Redis node's clock.
#[derive(Debug, Default)]
pub(super) struct RedisClock {
    samples: Mutex<Samples>,
}

#[derive(Debug, Default)]
struct Samples {
    /// The best bound of the current period, of the previous one, and when the current began.
    current: Option<i64>,
    previous: Option<i64>,
    since_us: i64,
}

impl RedisClock {
    /// Notes a reply: Redis read `redis_us` on its clock before the reply was in hand at
    /// `received`.
    pub(super) fn observe(&self, redis_us: i64, received: Instant) {
        let at = mono_us(received);
        let bound = redis_us - at;
        let mut s = self.samples.lock();
        let period = PERIOD.as_micros() as i64;
        if s.current.is_some() && at - s.since_us >= period {
            s.previous = if at - s.since_us >= 2 * period {
                None
            } else {
                s.current
            };
            s.current = None;
        }
        if s.current.is_none() {
            s.since_us = at;
        }
        s.current = Some(s.current.map_or(bound, |c| c.max(bound)));
    }

    /// Whether there is an estimate.
    pub(super) fn has_sample(&self) -> bool {
        let s = self.samples.lock();
        s.current.is_some() || s.previous.is_some()
    }

    /// Forgets every sample (a new connection, perhaps to another node).
    pub(super) fn reset(&self) {
        *self.samples.lock() = Samples::default();
    }

    /// The deadline to send with a call whose caller gives up at `give_up`, having waited
    /// `timeout` in all: µs on Redis' clock, or `None` before the first sample.
    pub(super) fn deadline(&self, give_up: Instant, timeout: Duration) -> Option<u64> {
        let offset = {
            let s = self.samples.lock();
            match (s.current, s.previous) {
                (Some(c), Some(p)) => c.max(p),
                (Some(c), None) => c,
                (None, p) => p?,
            }
        };
        let margin = (timeout / 5).min(MAX_MARGIN);
        let at = mono_us(give_up.checked_sub(margin).unwrap_or(give_up));
        Some((at + offset).max(1) as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deadline_uses_the_tightest_recent_lower_bound() {
        let clock = RedisClock::default();
        let t0 = *ORIGIN;
        let timeout = Duration::from_millis(50);
        assert_eq!(clock.deadline(t0, timeout), None, "no sample, no deadline");
        // Redis' clock reads 1e15 + mono; samples arrive 300 and 40 µs after the script ran.
        let base = 1_000_000_000_000_000;
        let at = |d: u64| t0 + Duration::from_micros(d);
        clock.observe(base + mono_us(at(1_000)) - 300, at(1_000));
        clock.observe(base + mono_us(at(2_000)) - 40, at(2_000));
        let give_up = at(100_000);
        let d = clock.deadline(give_up, timeout).unwrap() as i64;
        // 10 ms margin, 40 µs early (the best sample's delay): never later than the truth.
        assert_eq!(d, base + mono_us(give_up) - 10_000 - 40);
        // A slower sample does not loosen it.
        clock.observe(base + mono_us(at(3_000)) - 5_000, at(3_000));
        assert_eq!(clock.deadline(give_up, timeout).unwrap() as i64, d);
    }

    #[test]
    fn a_stepped_redis_clock_is_followed_within_two_periods() {
        let clock = RedisClock::default();
        let t0 = *ORIGIN;
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let timeout = Duration::from_millis(50);
        let base: i64 = 5_000_000_000;
        clock.observe(base + mono_us(at(0)), at(0));
        // Redis' clock steps back by a second: the old, larger bound lasts at most two periods.
        let stepped = base - 1_000_000;
        clock.observe(stepped + mono_us(at(1_100)), at(1_100));
        assert_eq!(
            clock.deadline(at(1_200), timeout).unwrap() as i64,
            base + mono_us(at(1_200)) - 10_000
        );
        clock.observe(stepped + mono_us(at(2_200)), at(2_200));
        assert_eq!(
            clock.deadline(at(2_300), timeout).unwrap() as i64,
            stepped + mono_us(at(2_300)) - 10_000
        );
        // Stepping forward is followed at once (a larger bound).
        clock.observe(base + 9_000_000 + mono_us(at(2_400)), at(2_400));
        assert_eq!(
            clock.deadline(at(2_500), timeout).unwrap() as i64,
            base + 9_000_000 + mono_us(at(2_500)) - 10_000
        );
        clock.reset();
        assert_eq!(clock.deadline(at(2_500), timeout), None);
    }
}
