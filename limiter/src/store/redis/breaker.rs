//! The circuit breaker in front of each Redis node: a hung Redis costs a call nothing.
//!
//! Without it every call to a Redis that stopped answering waits its full timeout, which caps
//! a replica at `max_in_flight / timeout` calls a second (through Envoy: from thousands of
//! requests a second to a few hundred). After `after_failures` consecutive failed calls
//! (timeouts, lost or refused connections) the breaker opens: calls fail at once with
//! [`StoreError::CircuitOpen`], which the engine answers with the failure mode. Every
//! `probe_interval` one call goes through as a probe (half-open); when it is answered the
//! breaker closes and counting resumes, otherwise it stays open for another interval.
//!
//! The closed state costs one atomic load per call and one store only after a failure.
//! Opening and closing each log one line (with how long it was open and how many calls failed
//! fast); probes log at debug. `tollgate_ratelimit_store_breakers{state}` counts the nodes in
//! each state (one for standalone and Sentinel, one per master for Cluster).

use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge};
use parking_lot::Mutex;
use serde::Deserialize;
use tollgate_common::config::{Errors, Validate, join};

use super::StoreError;
use crate::metrics::{BREAKER_STATES, BREAKER_TRIPS, BREAKERS};

/// `store.breaker`: when to stop waiting for a Redis node that does not answer.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerConfig {
    /// Consecutive failed calls that open the breaker; 0 turns it off.
    pub after_failures: u32,
    /// While open, one call per interval probes the node.
    #[serde(with = "humantime_serde")]
    pub probe_interval: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            after_failures: 3,
            probe_interval: Duration::from_millis(250),
        }
    }
}

impl Validate for BreakerConfig {
    fn validate(&self, at: &str, errors: &mut Errors) {
        if self.after_failures > 0 && self.probe_interval.is_zero() {
            errors.push(join(at, "probe_interval"), "must be positive");
        }
    }
}

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

/// The breaker of one node.
#[derive(Debug)]
pub(super) struct Breaker {
    /// The node, for log lines (an address, never a URL with credentials).
    node: String,
    config: BreakerConfig,
    state: AtomicU8,
    failures: AtomicU32,
    open: Mutex<Open>,
    metrics: BreakerMetrics,
}

#[derive(Debug)]
struct Open {
    since: Instant,
    /// When the last probe was let through (or the breaker opened); `None`: a probe may go now.
    probed_at: Option<Instant>,
    probing: bool,
    failed_fast: u64,
}

/// Whether a call may go to the node, and in which role. Dropping it without an outcome
/// (the caller gave up, or another node refused the call) gives a probe back.
#[derive(Debug)]
#[must_use]
pub(super) struct Ticket<'a> {
    breaker: &'a Breaker,
    probe: bool,
    settled: bool,
}

/// How a call went, for the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Outcome {
    /// Redis answered (a reply, even an error reply).
    Answered,
    /// No usable answer: a timeout, a lost or refused connection.
    Failed,
    /// Not the node's doing (e.g. the local in-flight bound).
    Neither,
}

impl Outcome {
    pub(super) fn of<T>(r: &Result<T, StoreError>) -> Self {
        match r {
            Ok(_) => Outcome::Answered,
            Err(StoreError::Timeout | StoreError::Unavailable(_)) => Outcome::Failed,
            Err(_) => Outcome::Neither,
        }
    }
}

impl Breaker {
    pub(super) fn new(node: impl Into<String>, config: BreakerConfig) -> Self {
        let metrics = BreakerMetrics::new();
        metrics.states[CLOSED as usize].increment(1.0);
        let now = Instant::now();
        Self {
            node: node.into(),
            config,
            state: AtomicU8::new(CLOSED),
            failures: AtomicU32::new(0),
            open: Mutex::new(Open {
                since: now,
                probed_at: Some(now),
                probing: false,
                failed_fast: 0,
            }),
            metrics,
        }
    }

    /// Lets a call through (closed), lets it probe (open for a whole interval), or refuses it.
    pub(super) fn admit(&self) -> Result<Ticket<'_>, StoreError> {
        if self.state.load(Ordering::Acquire) == CLOSED {
            return Ok(self.ticket(false));
        }
        let now = Instant::now();
        let mut open = self.open.lock();
        let state = self.state.load(Ordering::Acquire);
        if state == CLOSED {
            return Ok(self.ticket(false));
        }
        if state == OPEN
            && !open.probing
            && open
                .probed_at
                .is_none_or(|t| now.saturating_duration_since(t) >= self.config.probe_interval)
        {
            open.probing = true;
            open.probed_at = Some(now);
            self.set(OPEN, HALF_OPEN);
            tracing::debug!(redis = %self.node, "redis circuit half-open: probing");
            return Ok(self.ticket(true));
        }
        open.failed_fast += 1;
        Err(StoreError::CircuitOpen)
    }

    fn ticket(&self, probe: bool) -> Ticket<'_> {
        Ticket {
            breaker: self,
            probe,
            settled: false,
        }
    }

    /// The node's current state label (`closed`, `open`, `half_open`).
    #[cfg(test)]
    pub(super) fn state(&self) -> &'static str {
        BREAKER_STATES[self.state.load(Ordering::Acquire) as usize]
    }

    fn answered(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
        if self.state.load(Ordering::Acquire) == CLOSED {
            return;
        }
        // A probe, or a call let through before the breaker opened: Redis answers again.
        let mut open = self.open.lock();
        let from = self.state.load(Ordering::Acquire);
        if from == CLOSED {
            return;
        }
        self.set(from, CLOSED);
        tracing::info!(
            redis = %self.node,
            open_for = ?open.since.elapsed(),
            failed_fast = open.failed_fast,
            "redis circuit closed: the node answers again"
        );
        open.probing = false;
        open.failed_fast = 0;
    }

    fn failed(&self, probe: bool) {
        if probe {
            let mut open = self.open.lock();
            if self.state.load(Ordering::Acquire) == HALF_OPEN {
                self.set(HALF_OPEN, OPEN);
                tracing::debug!(redis = %self.node, "redis circuit stays open: the probe failed");
            }
            open.probing = false;
            open.probed_at = Some(Instant::now());
            return;
        }
        if self.config.after_failures == 0 {
            return;
        }
        let n = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n < self.config.after_failures || self.state.load(Ordering::Acquire) != CLOSED {
            return;
        }
        let mut open = self.open.lock();
        if self.state.load(Ordering::Acquire) != CLOSED {
            return;
        }
        let now = Instant::now();
        *open = Open {
            since: now,
            probed_at: Some(now),
            probing: false,
            failed_fast: 0,
        };
        self.set(CLOSED, OPEN);
        self.metrics.trips.increment(1);
        tracing::warn!(
            redis = %self.node,
            consecutive_failures = n,
            probe_interval = ?self.config.probe_interval,
            "redis circuit open: calls fail fast (the failure mode answers) until a probe is answered"
        );
    }

    /// A probe given back without an outcome: the next call may probe at once.
    fn give_back(&self) {
        let mut open = self.open.lock();
        if self.state.load(Ordering::Acquire) == HALF_OPEN {
            self.set(HALF_OPEN, OPEN);
        }
        open.probing = false;
        open.probed_at = None;
    }

    fn set(&self, from: u8, to: u8) {
        self.state.store(to, Ordering::Release);
        self.metrics.states[from as usize].decrement(1.0);
        self.metrics.states[to as usize].increment(1.0);
    }
}

impl Drop for Breaker {
    fn drop(&mut self) {
        self.metrics.states[self.state.load(Ordering::Acquire) as usize].decrement(1.0);
    }
}

impl Ticket<'_> {
    /// Records how the call went.
    pub(super) fn settle(mut self, outcome: Outcome) {
        self.settled = true;
        match outcome {
            Outcome::Answered => self.breaker.answered(),
            Outcome::Failed => self.breaker.failed(self.probe),
            Outcome::Neither if self.probe => self.breaker.give_back(),
            Outcome::Neither => {}
        }
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if !self.settled && self.probe {
            self.breaker.give_back();
        }
    }
}

#[derive(Debug)]
struct BreakerMetrics {
    states: [Gauge; 3],
    trips: Counter,
}

impl BreakerMetrics {
    fn new() -> Self {
        Self {
            states: BREAKER_STATES.map(|s| metrics::gauge!(BREAKERS, "state" => s)),
            trips: metrics::counter!(BREAKER_TRIPS),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker(after: u32, probe_ms: u64) -> Breaker {
        Breaker::new(
            "127.0.0.1:1",
            BreakerConfig {
                after_failures: after,
                probe_interval: Duration::from_millis(probe_ms),
            },
        )
    }

    #[test]
    fn opens_after_consecutive_failures_only() {
        let b = breaker(3, 60_000);
        for _ in 0..2 {
            b.admit().unwrap().settle(Outcome::Failed);
        }
        b.admit().unwrap().settle(Outcome::Answered);
        for _ in 0..2 {
            b.admit().unwrap().settle(Outcome::Failed);
        }
        assert_eq!(b.state(), "closed", "an answer in between resets the count");
        b.admit().unwrap().settle(Outcome::Failed);
        assert_eq!(b.state(), "open");
        for _ in 0..100 {
            assert!(matches!(b.admit(), Err(StoreError::CircuitOpen)));
        }
        assert_eq!(b.open.lock().failed_fast, 100);
    }

    #[test]
    fn one_probe_per_interval_and_an_answer_closes_it() {
        let b = breaker(1, 30);
        b.admit().unwrap().settle(Outcome::Failed);
        assert!(b.admit().is_err(), "open for a whole interval");
        std::thread::sleep(Duration::from_millis(40));
        let probe = b.admit().expect("a probe after the interval");
        assert!(probe.probe);
        assert_eq!(b.state(), "half_open");
        assert!(b.admit().is_err(), "one probe at a time");
        probe.settle(Outcome::Failed);
        assert_eq!(b.state(), "open");
        assert!(b.admit().is_err(), "a failed probe waits another interval");
        std::thread::sleep(Duration::from_millis(40));
        b.admit().unwrap().settle(Outcome::Answered);
        assert_eq!(b.state(), "closed");
        b.admit().unwrap().settle(Outcome::Answered);
    }

    #[test]
    fn a_probe_given_back_lets_the_next_call_probe() {
        let b = breaker(1, 30);
        b.admit().unwrap().settle(Outcome::Failed);
        std::thread::sleep(Duration::from_millis(40));
        drop(b.admit().unwrap());
        assert_eq!(b.state(), "open");
        let again = b.admit().expect("given back: probe again at once");
        again.settle(Outcome::Neither);
        assert!(b.admit().is_ok());
    }

    #[test]
    fn the_state_gauge_follows_every_change() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let b = metrics::with_local_recorder(&recorder, || breaker(1, 30));
        let gauge = |state: &str| -> String {
            let text = handle.render();
            let prefix = format!("{BREAKERS}{{state=\"{state}\"}} ");
            text.lines()
                .find_map(|l| l.strip_prefix(&prefix).map(str::to_owned))
                .unwrap_or_default()
        };
        assert_eq!((gauge("closed"), gauge("open")), ("1".into(), "0".into()));
        b.admit().unwrap().settle(Outcome::Failed);
        assert_eq!((gauge("closed"), gauge("open")), ("0".into(), "1".into()));
        std::thread::sleep(Duration::from_millis(40));
        let probe = b.admit().unwrap();
        assert_eq!(
            (gauge("open"), gauge("half_open")),
            ("0".into(), "1".into())
        );
        probe.settle(Outcome::Answered);
        assert_eq!(
            (gauge("closed"), gauge("open"), gauge("half_open")),
            ("1".into(), "0".into(), "0".into())
        );
        assert!(handle.render().contains(&format!("{BREAKER_TRIPS} 1")));
        drop(b);
        assert_eq!(
            gauge("closed"),
            "0",
            "a dropped store leaves no node behind"
        );
    }

    #[test]
    fn zero_failures_turns_it_off() {
        let b = breaker(0, 10);
        for _ in 0..10 {
            b.admit().unwrap().settle(Outcome::Failed);
        }
        assert_eq!(b.state(), "closed");
    }
}
