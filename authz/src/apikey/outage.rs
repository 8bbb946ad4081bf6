//! The key store's health as the Check path sees it, and what a Check does about it.
//!
//! After [`TRIP_AFTER`] consecutive failed store reads the store counts as down: Checks stop
//! waiting for it (only one read per [`PROBE_EVERY`] still tries, as a probe), known keys are
//! verified from their last known state for `serve_stale`, and anything else is refused with
//! 503 at once instead of after a timeout. The first successful read, or the invalidation feed
//! subscribing again, ends the outage.
//!
//! Each change of state is one log line (WARN when it starts, INFO with a summary when it ends);
//! errors in between are logged at most once per [`ERROR_LOG_EVERY`] with their count. The
//! metrics `tollgate_authz_key_store_up` and `tollgate_authz_api_key_stale_decisions_total`
//! say the same to a dashboard.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tollgate_common::log_throttle::LogThrottle;

use super::KeyStoreError;
use crate::metrics::{API_KEY_STALE_DECISIONS as STALE_DECISIONS, KEY_STORE_UP as STORE_UP};

/// Consecutive failed reads after which the store counts as down.
pub(crate) const TRIP_AFTER: u32 = 3;
/// While down, one Check every this long still asks the store.
pub(crate) const PROBE_EVERY: Duration = Duration::from_millis(200);
/// Repeated store errors are logged at most this often.
pub(crate) const ERROR_LOG_EVERY: Duration = Duration::from_secs(10);

/// What a Check should do about the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ask {
    /// Read the store.
    Store,
    /// The store is down and no probe is due: do not wait for it.
    Skip,
}

#[derive(Debug)]
struct State {
    failures: u32,
    /// When the current outage began; `None` while up.
    down_since: Option<Instant>,
    next_probe: Instant,
    /// Over the current outage.
    stale: u64,
    refused: u64,
}

/// The Check path's view of the key store. One per [`super::ApiKeys`].
#[derive(Debug)]
pub(crate) struct Outage {
    serve_stale: Duration,
    /// Mirrors `state.down_since.is_some()`, so that the common case takes no lock.
    down: AtomicBool,
    state: Mutex<State>,
    errors: LogThrottle,
    /// Decisions served from the last known state, ever (for tests and the summary).
    stale_total: AtomicU64,
}

impl Outage {
    pub(crate) fn new(serve_stale: Duration, now: Instant) -> Self {
        metrics::gauge!(STORE_UP).set(1.0);
        metrics::counter!(STALE_DECISIONS).increment(0);
        Self {
            serve_stale,
            down: AtomicBool::new(false),
            state: Mutex::new(State {
                failures: 0,
                down_since: None,
                next_probe: now,
                stale: 0,
                refused: 0,
            }),
            errors: LogThrottle::new(ERROR_LOG_EVERY),
            stale_total: AtomicU64::new(0),
        }
    }

    /// How long a known key may be served from its last known state (0: never).
    pub(crate) fn serve_stale(&self) -> Duration {
        self.serve_stale
    }

    pub(crate) fn is_down(&self) -> bool {
        self.down.load(Ordering::Acquire)
    }

    /// Whether this Check should read the store.
    pub(crate) fn ask(&self, now: Instant) -> Ask {
        if !self.is_down() {
            return Ask::Store;
        }
        let mut s = self.state.lock();
        if now >= s.next_probe {
            s.next_probe = now + PROBE_EVERY;
            Ask::Store
        } else {
            Ask::Skip
        }
    }

    /// A store read answered.
    pub(crate) fn read_ok(&self) {
        if self.is_down() {
            self.end("the key store answered");
        } else {
            let mut s = self.state.lock();
            s.failures = 0;
        }
    }

    /// The invalidation feed subscribed: the store is reachable again.
    pub(crate) fn feed_up(&self) {
        if self.is_down() {
            self.end("the key invalidation feed is back");
        }
    }

    /// A store read failed (`error`), at `now`.
    pub(crate) fn read_failed(&self, error: &KeyStoreError, now: Instant) {
        let started = {
            let mut s = self.state.lock();
            s.failures = s.failures.saturating_add(1);
            if s.down_since.is_none() && s.failures >= TRIP_AFTER {
                s.down_since = Some(now);
                s.next_probe = now + PROBE_EVERY;
                s.stale = 0;
                s.refused = 0;
                self.down.store(true, Ordering::Release);
                true
            } else {
                false
            }
        };
        if started {
            metrics::gauge!(STORE_UP).set(0.0);
            // The episode's first error is on this line; the throttle starts afresh.
            self.errors.take_pending();
            self.errors.allow();
            if self.serve_stale.is_zero() {
                tracing::warn!(%error, "API key store unreachable: refusing API keys (503) until it answers (serve_stale is 0)");
            } else {
                tracing::warn!(%error, serve_stale = ?self.serve_stale, "API key store unreachable: keys verified before are accepted from memory for up to serve_stale; other keys get 503");
            }
        } else if let Some(occurrences) = self.errors.allow() {
            tracing::warn!(%error, occurrences, "API key store errors");
        }
    }

    /// A Check was accepted from the key's last known state.
    pub(crate) fn served_stale(&self) {
        metrics::counter!(STALE_DECISIONS).increment(1);
        self.stale_total.fetch_add(1, Ordering::Relaxed);
        let mut s = self.state.lock();
        s.stale += 1;
    }

    /// A Check was refused because the store could not answer and no fallback applied.
    pub(crate) fn refused(&self) {
        let mut s = self.state.lock();
        s.refused += 1;
    }

    #[cfg(test)]
    pub(crate) fn stale_total(&self) -> u64 {
        self.stale_total.load(Ordering::Relaxed)
    }

    fn end(&self, why: &'static str) {
        let summary = {
            let mut s = self.state.lock();
            s.failures = 0;
            let Some(since) = s.down_since.take() else {
                return;
            };
            self.down.store(false, Ordering::Release);
            (since.elapsed(), s.stale, s.refused)
        };
        metrics::gauge!(STORE_UP).set(1.0);
        let unreported = self.errors.take_pending();
        let (outage, stale, refused) = summary;
        tracing::info!(
            outage = ?outage,
            accepted_from_memory = stale,
            refused_unavailable = refused,
            unreported_errors = unreported,
            "API key store reachable again: {why}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err() -> KeyStoreError {
        KeyStoreError::Timeout
    }

    #[test]
    fn trips_after_consecutive_failures_and_a_success_in_between_resets() {
        let t = Instant::now();
        let o = Outage::new(Duration::from_secs(300), t);
        o.read_failed(&err(), t);
        o.read_failed(&err(), t);
        o.read_ok();
        o.read_failed(&err(), t);
        o.read_failed(&err(), t);
        assert!(!o.is_down());
        o.read_failed(&err(), t);
        assert!(o.is_down());
    }

    #[test]
    fn while_down_one_check_per_probe_interval_asks_the_store() {
        let t = Instant::now();
        let o = Outage::new(Duration::from_secs(300), t);
        assert_eq!(o.ask(t), Ask::Store);
        for _ in 0..TRIP_AFTER {
            o.read_failed(&err(), t);
        }
        assert_eq!(o.ask(t), Ask::Skip);
        assert_eq!(o.ask(t + PROBE_EVERY - Duration::from_millis(1)), Ask::Skip);
        let probe = t + PROBE_EVERY;
        assert_eq!(o.ask(probe), Ask::Store);
        assert_eq!(o.ask(probe), Ask::Skip, "one probe at a time");
        o.read_ok();
        assert!(!o.is_down());
        assert_eq!(o.ask(probe), Ask::Store);
    }

    /// Every event logged while `f` runs: (level, message).
    fn logged(f: impl FnOnce()) -> Vec<(tracing::Level, String)> {
        use std::sync::Arc;
        use tracing_subscriber::layer::SubscriberExt;

        struct Collect(Arc<Mutex<Vec<(tracing::Level, String)>>>);
        struct Message<'a>(&'a mut String);
        impl tracing::field::Visit for Message<'_> {
            fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
                if f.name() == "message" {
                    *self.0 = format!("{v:?}");
                }
            }
        }
        impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Collect {
            fn on_event(
                &self,
                e: &tracing::Event<'_>,
                _: tracing_subscriber::layer::Context<'_, S>,
            ) {
                let mut m = String::new();
                e.record(&mut Message(&mut m));
                self.0.lock().push((*e.metadata().level(), m));
            }
        }
        let lines = Arc::new(Mutex::new(Vec::new()));
        let subscriber = tracing_subscriber::registry().with(Collect(lines.clone()));
        tracing::subscriber::with_default(subscriber, || {
            // Other tests may have met these callsites with no subscriber and cached that.
            tracing::callsite::rebuild_interest_cache();
            f()
        });
        lines.lock().clone()
    }

    #[test]
    fn an_outage_logs_its_start_and_its_end_not_every_failure() {
        let t = Instant::now();
        let o = Outage::new(Duration::from_secs(300), t);
        let lines = logged(|| {
            for _ in 0..5000 {
                o.read_failed(&err(), t);
                o.served_stale();
                o.refused();
            }
            o.read_ok();
            o.read_ok();
        });
        let warn: Vec<_> = lines
            .iter()
            .filter(|(l, _)| *l == tracing::Level::WARN)
            .collect();
        let info: Vec<_> = lines
            .iter()
            .filter(|(l, _)| *l == tracing::Level::INFO)
            .collect();
        // The first error, then the outage's start; nothing more within the log interval.
        assert!(warn.len() <= 2, "{warn:?}");
        assert!(
            warn.iter().any(|(_, m)| m.contains("unreachable")),
            "{warn:?}"
        );
        assert_eq!(info.len(), 1, "{lines:?}");
        assert!(info[0].1.contains("reachable again"));
        assert_eq!(lines.len(), warn.len() + info.len());
    }

    #[test]
    fn the_feed_coming_back_ends_an_outage() {
        let t = Instant::now();
        let o = Outage::new(Duration::ZERO, t);
        for _ in 0..TRIP_AFTER {
            o.read_failed(&err(), t);
        }
        o.served_stale();
        o.refused();
        assert!(o.is_down());
        o.feed_up();
        assert!(!o.is_down());
        assert_eq!(o.stale_total(), 1);
        // Feed events while up change nothing.
        o.feed_up();
        assert!(!o.is_down());
    }
}
