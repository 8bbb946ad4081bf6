//! The service's Prometheus metrics. Every label takes a bounded value (a decision, a method, a
//! reason from a fixed list, a cache name, one of at most 32 plans); never a subject, key id or
//! token.
//!
//! What a Check records goes through handles bound once ([`CheckMetrics`], [`CacheCounters`]),
//! not looked up by name on every call; each handle binds to the recorder installed when it is
//! first used, so the service installs its recorder before it answers anything.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{
    Counter, Histogram, counter, describe_counter, describe_gauge, describe_histogram, histogram,
};

use crate::reason::Reason;

pub const CHECKS: &str = "tollgate_authz_checks_total";
pub const CHECK_DURATION: &str = "tollgate_authz_check_duration_seconds";
pub const JWKS_FETCHES: &str = "tollgate_authz_jwks_fetches_total";
pub const JWKS_REFETCH_SUPPRESSED: &str = "tollgate_authz_jwks_refetch_suppressed_total";
pub const CACHE_LOOKUPS: &str = "tollgate_authz_cache_lookups_total";
pub const INTROSPECTIONS: &str = "tollgate_authz_introspection_requests_total";
pub const KEY_STORE_ERRORS: &str = "tollgate_authz_key_store_errors_total";
pub const KEY_STORE_UP: &str = "tollgate_authz_key_store_up";
pub const KEY_FEED_UP: &str = "tollgate_authz_key_feed_up";
pub const API_KEY_STALE_DECISIONS: &str = "tollgate_authz_api_key_stale_decisions_total";
/// Calls made with API keys by plan and outcome, added when a usage batch is taken.
pub const API_KEY_USAGE: &str = "tollgate_authz_api_key_usage_total";

/// Registers descriptions (once at startup; harmless to repeat).
pub fn describe() {
    describe_counter!(
        CHECKS,
        "Check calls answered, by decision, identity method and reason"
    );
    describe_histogram!(
        CHECK_DURATION,
        metrics::Unit::Seconds,
        "Time to answer a Check call"
    );
    describe_counter!(JWKS_FETCHES, "JWKS (and discovery) fetches, by result");
    describe_counter!(
        JWKS_REFETCH_SUPPRESSED,
        "Unknown-kid refetches skipped because one ran within the interval"
    );
    describe_counter!(
        CACHE_LOOKUPS,
        "Verified-credential cache lookups, by cache and result"
    );
    describe_counter!(INTROSPECTIONS, "RFC 7662 introspection requests, by result");
    describe_counter!(
        KEY_STORE_ERRORS,
        "API key store errors seen while answering Check"
    );
    describe_gauge!(
        KEY_STORE_UP,
        "0 while the API key store counts as down for Checks (known keys served from memory), else 1"
    );
    describe_gauge!(
        KEY_FEED_UP,
        "1 while the Redis key invalidation feed is subscribed"
    );
    describe_counter!(
        API_KEY_STALE_DECISIONS,
        "Checks accepted from a key's last known record while the key store could not answer"
    );
    describe_counter!(
        API_KEY_USAGE,
        "Calls made with API keys, by plan (the first 32 seen; later ones as `other`, none as `none`) and outcome (allowed, denied, rate_limited); added every usage flush"
    );
    // Health series exist (at 0) from the start, so dashboards and alerts see a rate of zero
    // rather than no data.
    for result in ["ok", "error"] {
        counter!(JWKS_FETCHES, "result" => result).increment(0);
    }
    for result in ["active", "inactive", "error"] {
        counter!(INTROSPECTIONS, "result" => result).increment(0);
    }
    for cache in ["jwt", "introspection"] {
        for result in ["hit", "miss"] {
            counter!(CACHE_LOOKUPS, "cache" => cache, "result" => result).increment(0);
        }
    }
    counter!(KEY_STORE_ERRORS).increment(0);
    counter!(JWKS_REFETCH_SUPPRESSED).increment(0);
}

/// The `decision` label values.
pub const DECISIONS: [&str; 2] = ["allow", "deny"];
/// The `method` label values: the identity methods, and `none` before one was chosen.
pub const METHODS: [&str; 6] = [
    "none",
    "jwt",
    "introspection",
    "api_key",
    "anonymous",
    "mtls",
];

/// The index in [`METHODS`] of a decision's identity method.
pub fn method_index(m: Option<crate::identity::Method>) -> usize {
    use crate::identity::Method;
    match m {
        None => 0,
        Some(Method::Jwt) => 1,
        Some(Method::Introspection) => 2,
        Some(Method::ApiKey) => 3,
        Some(Method::Anonymous) => 4,
        Some(Method::Mtls) => 5,
    }
}

/// The handles a Check records through: one counter per (decision, method, reason), bound on
/// its first use, and the duration histogram.
#[derive(Debug)]
pub struct CheckMetrics {
    counters: Box<[OnceLock<Counter>]>,
    duration: OnceLock<Histogram>,
}

impl Default for CheckMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl CheckMetrics {
    pub fn new() -> Self {
        let slots = DECISIONS.len() * METHODS.len() * Reason::COUNT;
        Self {
            counters: (0..slots).map(|_| OnceLock::new()).collect(),
            duration: OnceLock::new(),
        }
    }

    /// One answered Check; `decision` and `method` index [`DECISIONS`] and [`METHODS`].
    pub fn record(&self, decision: usize, method: usize, reason: Reason, elapsed: Duration) {
        let slot = (decision * METHODS.len() + method) * Reason::COUNT + reason.index();
        self.counters[slot]
            .get_or_init(|| {
                counter!(CHECKS, "decision" => DECISIONS[decision], "method" => METHODS[method], "reason" => reason.as_str())
            })
            .increment(1);
        self.duration
            .get_or_init(|| histogram!(CHECK_DURATION))
            .record(elapsed.as_secs_f64());
    }
}

/// Hit and miss counters of one verified-credential cache (`jwt`, `introspection`, `api_key`).
#[derive(Debug)]
pub struct CacheCounters {
    cache: &'static str,
    hit: OnceLock<Counter>,
    miss: OnceLock<Counter>,
}

impl CacheCounters {
    pub fn new(cache: &'static str) -> Self {
        Self {
            cache,
            hit: OnceLock::new(),
            miss: OnceLock::new(),
        }
    }

    pub fn hit(&self) {
        self.hit
            .get_or_init(|| counter!(CACHE_LOOKUPS, "cache" => self.cache, "result" => "hit"))
            .increment(1);
    }

    pub fn miss(&self) {
        self.miss
            .get_or_init(|| counter!(CACHE_LOOKUPS, "cache" => self.cache, "result" => "miss"))
            .increment(1);
    }
}

pub fn jwks_fetch(ok: bool) {
    counter!(JWKS_FETCHES, "result" => if ok { "ok" } else { "error" }).increment(1);
}

pub fn jwks_refetch_suppressed() {
    counter!(JWKS_REFETCH_SUPPRESSED).increment(1);
}

/// An introspection request's outcome: `active`, `inactive` or `error`.
pub fn introspection(result: &'static str) {
    counter!(INTROSPECTIONS, "result" => result).increment(1);
}

pub fn key_store_error() {
    counter!(KEY_STORE_ERRORS).increment(1);
}
