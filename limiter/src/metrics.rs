//! Prometheus metrics of the rate-limit service. Labels take bounded values only: the domain and
//! limit name come from the configuration, never from a request (a descriptor's values appear only
//! in the separate `..._detailed_...` series, for limits marked `detailed_metric: true`).
//!
//! Handles are created once — per limit when the limits are compiled, per engine and per
//! reloader for the rest — from whatever recorder is installed then, so that a call records
//! without a registry lookup. Only the `detailed_metric` series, whose labels come from the
//! request, are looked up per call.

use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};

use crate::key::CounterKey;
use crate::store::StoreError;

/// Per-request decisions per limit; `decision` is one of the [`Decision`] labels.
pub const DECISIONS: &str = "tollgate_ratelimit_decisions_total";
/// Hits asked for per limit (the sum of hits_addend, whether or not admitted).
pub const HITS: &str = "tollgate_ratelimit_hits_total";
/// As [`DECISIONS`], with the descriptor's values, for `detailed_metric` limits only.
pub const DETAILED_DECISIONS: &str = "tollgate_ratelimit_detailed_decisions_total";
/// Hits answered by the local over-limit cache, without a store round trip.
pub const LOCAL_CACHE_HITS: &str = "tollgate_ratelimit_local_cache_hits_total";
pub const UNKNOWN_DOMAIN: &str = "tollgate_ratelimit_unknown_domain_total";
pub const STORE_DURATION: &str = "tollgate_ratelimit_store_duration_seconds";
pub const STORE_ERRORS: &str = "tollgate_ratelimit_store_errors_total";
/// Hits refused because their counter key is longer than `store.max_key_bytes`.
pub const OVERSIZED_KEYS: &str = "tollgate_ratelimit_oversized_keys_total";
/// Redis nodes whose circuit breaker is in each `state` (one of [`BREAKER_STATES`]).
pub const BREAKERS: &str = "tollgate_ratelimit_store_breakers";
/// Times a Redis node's circuit breaker opened.
pub const BREAKER_TRIPS: &str = "tollgate_ratelimit_store_breaker_trips_total";
/// The `state` label values of [`BREAKERS`], indexed by the breaker's state.
pub const BREAKER_STATES: [&str; 3] = ["closed", "open", "half_open"];
/// Config loads by `result` (`ok` | `error`).
pub const CONFIG_LOADS: &str = "tollgate_ratelimit_config_loads_total";
/// Errors found across all loads (each bad file/field once per load).
pub const CONFIG_ERRORS: &str = "tollgate_ratelimit_config_errors_total";
/// Errors in the configuration now on disk (0 when every file is good).
pub const CONFIG_ERRORS_ACTIVE: &str = "tollgate_ratelimit_config_errors_active";
pub const CONFIG_DOMAINS: &str = "tollgate_ratelimit_config_domains";

/// The outcome of one hit on one limit; exclusive (a near-limit hit is not also within-limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    WithinLimit,
    NearLimit,
    OverLimit,
    /// Over a shadow-mode limit: counted, not denied.
    ShadowOverLimit,
}

impl Decision {
    pub fn label(self) -> &'static str {
        match self {
            Self::WithinLimit => "within_limit",
            Self::NearLimit => "near_limit",
            Self::OverLimit => "over_limit",
            Self::ShadowOverLimit => "shadow_over_limit",
        }
    }
}

/// The counters of one configured limit.
#[derive(Debug, Clone)]
pub(crate) struct LimitMetrics {
    domain: std::sync::Arc<str>,
    name: std::sync::Arc<str>,
    within: Counter,
    near: Counter,
    over: Counter,
    shadow: Counter,
    hits: Counter,
    cached: Counter,
}

impl LimitMetrics {
    pub(crate) fn new(domain: &std::sync::Arc<str>, name: &str) -> Self {
        let c = |d: Decision| counter!(DECISIONS, "domain" => domain.to_string(), "limit" => name.to_string(), "decision" => d.label());
        Self {
            domain: domain.clone(),
            name: name.into(),
            within: c(Decision::WithinLimit),
            near: c(Decision::NearLimit),
            over: c(Decision::OverLimit),
            shadow: c(Decision::ShadowOverLimit),
            hits: counter!(HITS, "domain" => domain.to_string(), "limit" => name.to_string()),
            cached: counter!(LOCAL_CACHE_HITS, "domain" => domain.to_string(), "limit" => name.to_string()),
        }
    }

    /// Records one hit. `detailed` is the counter key, for `detailed_metric` limits.
    pub(crate) fn record(
        &self,
        d: Decision,
        cost: u64,
        cached: bool,
        detailed: Option<&CounterKey>,
    ) {
        match d {
            Decision::WithinLimit => &self.within,
            Decision::NearLimit => &self.near,
            Decision::OverLimit => &self.over,
            Decision::ShadowOverLimit => &self.shadow,
        }
        .increment(1);
        self.hits.increment(cost);
        if cached {
            self.cached.increment(1);
        }
        if let Some(key) = detailed {
            counter!(DETAILED_DECISIONS,
                "domain" => self.domain.to_string(), "limit" => self.name.to_string(),
                "descriptor" => key.descriptor().to_string(), "decision" => d.label())
            .increment(1);
        }
    }
}

/// The engine's own handles.
#[derive(Debug, Clone)]
pub(crate) struct EngineMetrics {
    pub(crate) unknown_domain: Counter,
    pub(crate) oversized_keys: Counter,
    store_duration: Histogram,
    /// By kind, in [`STORE_ERROR_KINDS`] order.
    store_errors: [Counter; 5],
}

/// The `kind` label values of [`STORE_ERRORS`].
pub const STORE_ERROR_KINDS: [&str; 5] = [
    "timeout",
    "overloaded",
    "unavailable",
    "config",
    "circuit_open",
];

impl EngineMetrics {
    pub(crate) fn new() -> Self {
        let store_errors = STORE_ERROR_KINDS.map(|kind| counter!(STORE_ERRORS, "kind" => kind));
        // Error series exist (at 0) from the start, so dashboards and alerts see a rate of
        // zero rather than no data.
        for c in &store_errors {
            c.increment(0);
        }
        Self {
            unknown_domain: counter!(UNKNOWN_DOMAIN),
            oversized_keys: counter!(OVERSIZED_KEYS),
            store_duration: histogram!(STORE_DURATION),
            store_errors,
        }
    }

    pub(crate) fn store_latency(&self, d: Duration) {
        self.store_duration.record(d.as_secs_f64());
    }

    /// Counts a store failure by kind.
    pub(crate) fn store_error(&self, e: &StoreError) {
        let i = match e {
            StoreError::Timeout => 0,
            StoreError::Overloaded => 1,
            StoreError::Unavailable(_) => 2,
            StoreError::Config(_) => 3,
            StoreError::CircuitOpen => 4,
        };
        self.store_errors[i].increment(1);
    }
}

/// The handles of limits loads.
#[derive(Debug, Clone)]
pub(crate) struct LoadMetrics {
    ok: Counter,
    failed: Counter,
    errors: Counter,
    errors_active: Gauge,
    domains: Gauge,
}

impl LoadMetrics {
    pub(crate) fn new() -> Self {
        Self {
            ok: counter!(CONFIG_LOADS, "result" => "ok"),
            failed: counter!(CONFIG_LOADS, "result" => "error"),
            errors: counter!(CONFIG_ERRORS),
            errors_active: gauge!(CONFIG_ERRORS_ACTIVE),
            domains: gauge!(CONFIG_DOMAINS),
        }
    }

    /// Records a limits load.
    pub(crate) fn loaded(&self, errors: usize, domains: usize) {
        if errors == 0 { &self.ok } else { &self.failed }.increment(1);
        self.errors.increment(errors as u64);
        self.errors_active.set(errors as f64);
        self.domains.set(domains as f64);
    }
}
