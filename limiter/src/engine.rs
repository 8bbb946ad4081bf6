//! The rate-limit engine: a request (domain + descriptors) in, store hits out, a decision back.
//! No gRPC in here, so that other front ends (ext_authz, quota streaming) can embed it.
//!
//! One call: load the current limits (one `ArcSwap` load), match every descriptor, drop limits
//! that another matched limit `replaces`, send every remaining hit to the store in one atomic
//! call, and turn the outcomes into one status per descriptor, in request order.

use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use tollgate_common::clock::Clock;

use crate::algorithm::Algorithm;
use crate::limits::{Limit, Limits, key_prefix};
use crate::metrics;
use crate::store::{Hit, Outcome, Store, StoreError};

/// A request descriptor as the engine reads it, borrowed from whatever the caller holds (a
/// protobuf message, a plain struct), so that no entry is copied.
pub trait DescriptorSource {
    fn entry_count(&self) -> usize;
    /// `(key, value)` of entry `i < entry_count()`.
    fn entry(&self, i: usize) -> (&str, &str);
    /// A limit sent with the request, used instead of the configured ones.
    fn limit_override(&self) -> Option<LimitOverride> {
        None
    }
    /// This descriptor's own hits_addend; `Some(0)` checks without counting.
    fn hits_addend(&self) -> Option<u64> {
        None
    }
}

/// A limit sent by the caller (Envoy's `limit` descriptor field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitOverride {
    pub requests_per_unit: u32,
    /// `envoy.type.v3.RateLimitUnit` value.
    pub unit: i32,
}

/// A plain owned descriptor.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Descriptor {
    pub entries: Vec<(String, String)>,
    pub limit: Option<LimitOverride>,
    pub hits_addend: Option<u64>,
}

impl Descriptor {
    pub fn new<K: Into<String>, V: Into<String>>(
        entries: impl IntoIterator<Item = (K, V)>,
    ) -> Self {
        Self {
            entries: entries
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
            ..Default::default()
        }
    }
}

impl DescriptorSource for Descriptor {
    fn entry_count(&self) -> usize {
        self.entries.len()
    }
    fn entry(&self, i: usize) -> (&str, &str) {
        let (k, v) = &self.entries[i];
        (k, v)
    }
    fn limit_override(&self) -> Option<LimitOverride> {
        self.limit
    }
    fn hits_addend(&self) -> Option<u64> {
        self.hits_addend
    }
}

/// What to answer when the store cannot be reached in time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// Fail the call, so that the caller's own failure policy decides (Envoy: UNAVAILABLE and
    /// its `failure_mode_deny`).
    #[default]
    Error,
    /// Allow every descriptor.
    Allow,
    /// Deny every descriptor that has an enforced limit.
    Deny,
}

/// Engine-wide settings.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub failure_mode: FailureMode,
    /// The algorithm of limits sent by the caller (`limit` overrides).
    pub override_algorithm: Algorithm,
    /// Global shadow mode: count everything, never deny.
    pub shadow_mode: bool,
    /// A within-limit hit that leaves at most this share of the limit counts as near the limit.
    pub near_limit_ratio: f64,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            failure_mode: FailureMode::Error,
            override_algorithm: Algorithm::SlidingWindow,
            shadow_mode: false,
            near_limit_ratio: 0.8,
        }
    }
}

/// The outcome of one descriptor or of the whole request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    Ok,
    OverLimit,
}

/// The decision for one request descriptor.
#[derive(Debug, Clone)]
pub struct Status {
    pub code: Code,
    /// The limit that denied, or (when allowed) the applied limit with the least remaining.
    /// `None` when no limit applies (no match, unlimited, replaced).
    pub limit: Option<Arc<Limit>>,
    /// The descriptor matched an `unlimited` limit.
    pub unlimited: bool,
    pub remaining: u64,
    pub reset_after: Duration,
    /// When the denied request could succeed (over limit only).
    pub retry_after: Option<Duration>,
    /// A shadow-mode limit that would have denied this descriptor.
    pub shadow_fired: Option<Arc<Limit>>,
}

impl Status {
    fn none() -> Self {
        Self {
            code: Code::Ok,
            limit: None,
            unlimited: false,
            remaining: 0,
            reset_after: Duration::ZERO,
            retry_after: None,
            shadow_fired: None,
        }
    }
}

/// The decision for a request.
#[derive(Debug, Clone)]
pub struct Decision {
    pub code: Code,
    /// One per request descriptor, in order.
    pub statuses: Vec<Status>,
    /// The store failed and the failure mode answered.
    pub degraded: bool,
}

impl Decision {
    /// The first descriptor that was denied, with the limit that denied it.
    pub fn fired(&self) -> Option<(usize, &Arc<Limit>)> {
        self.statuses.iter().enumerate().find_map(|(i, s)| {
            (s.code == Code::OverLimit)
                .then_some(())
                .and(s.limit.as_ref().map(|l| (i, l)))
        })
    }

    /// The longest wait among denied descriptors.
    pub fn retry_after(&self) -> Option<Duration> {
        self.statuses
            .iter()
            .filter(|s| s.code == Code::OverLimit)
            .filter_map(|s| s.retry_after.or(Some(s.reset_after)))
            .max()
    }
}

/// Why a request could not be decided.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("counter store: {0}")]
    Store(#[from] StoreError),
}

/// The engine. Cheap to share behind an `Arc`; limits are swapped in place on reload.
pub struct Engine {
    limits: ArcSwap<Limits>,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    options: EngineOptions,
    metrics: metrics::EngineMetrics,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// One limit to check for one descriptor.
struct Pending {
    descriptor: usize,
    limit: Arc<Limit>,
    key: String,
    cost: u64,
    shadow: bool,
}

impl Engine {
    pub fn new(
        limits: Limits,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        options: EngineOptions,
    ) -> Self {
        Self {
            limits: ArcSwap::from_pointee(limits),
            store,
            clock,
            options,
            metrics: metrics::EngineMetrics::new(),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> Arc<Limits> {
        self.limits.load_full()
    }

    /// Replaces the limits; calls in flight finish with the old ones.
    pub fn set_limits(&self, limits: Limits) {
        self.limits.store(Arc::new(limits));
    }

    pub fn options(&self) -> &EngineOptions {
        &self.options
    }

    /// Decides one request. `hits_addend` is the request-level addend (0 means 1); a
    /// descriptor's own addend wins over it.
    pub async fn should_rate_limit<D: DescriptorSource>(
        &self,
        domain: &str,
        descriptors: &[D],
        hits_addend: u64,
    ) -> Result<Decision, EngineError> {
        let snapshot = self.limits.load_full();
        let mut statuses: Vec<Status> = (0..descriptors.len()).map(|_| Status::none()).collect();
        let Some(dom) = snapshot.domain(domain) else {
            self.metrics.unknown_domain.increment(1);
            return Ok(Decision {
                code: Code::Ok,
                statuses,
                degraded: false,
            });
        };
        let request_cost = if hits_addend == 0 { 1 } else { hits_addend };
        let mut pending: Vec<Pending> = Vec::new();
        let mut replaced = false;
        for (i, d) in descriptors.iter().enumerate() {
            let cost = d.hits_addend().unwrap_or(request_cost);
            let mut key = String::with_capacity(64);
            key_prefix(&mut key, &dom.name);
            if let Some(o) = d.limit_override() {
                // As envoyproxy/ratelimit: an override applies whenever the domain is known,
                // whatever the configured descriptors, never in shadow mode.
                if let Some(limit) = Limit::from_override(
                    dom,
                    o.requests_per_unit,
                    o.unit,
                    self.options.override_algorithm,
                ) {
                    for j in 0..d.entry_count() {
                        let (k, v) = d.entry(j);
                        key.push('|');
                        crate::limits::escape_into(&mut key, k);
                        key.push('=');
                        crate::limits::escape_into(&mut key, v);
                    }
                    let limit = Arc::new(limit);
                    let key = limit.finish_key(key);
                    pending.push(Pending {
                        descriptor: i,
                        limit,
                        key,
                        cost,
                        shadow: self.options.shadow_mode,
                    });
                }
                continue;
            }
            let found = dom.find(d, &mut key);
            if found.is_empty() {
                continue;
            }
            let mut any_enforced = false;
            let last = found.len() - 1;
            let mut key = Some(key);
            for (j, limit) in found.iter().enumerate() {
                if limit.unlimited {
                    continue;
                }
                any_enforced = true;
                replaced |= !limit.replaces.is_empty();
                let part = if j == last { key.take() } else { None };
                let key = match part {
                    Some(part) => limit.finish_key(part),
                    None => limit.counter_key(key.as_deref().unwrap_or_default()),
                };
                pending.push(Pending {
                    descriptor: i,
                    key,
                    limit: limit.clone(),
                    cost,
                    shadow: limit.shadow || self.options.shadow_mode,
                });
            }
            if !any_enforced {
                statuses[i].unlimited = true;
                statuses[i].remaining = u64::from(u32::MAX);
            }
        }
        if replaced {
            drop_replaced(&mut pending);
        }
        if pending.is_empty() {
            return Ok(Decision {
                code: Code::Ok,
                statuses,
                degraded: false,
            });
        }
        // A zero limit is a block list: denied here, without the store. The request is then
        // rejected, so the other limits are only checked, never counted.
        let blocked = pending.iter().any(|p| p.limit.rule.limit == 0 && !p.shadow);
        let hits: Vec<Hit<'_>> = pending
            .iter()
            .filter(|p| p.limit.rule.limit > 0)
            .map(|p| Hit {
                key: &p.key,
                rule: p.limit.rule,
                cost: if blocked { 0 } else { p.cost },
                shadow: p.shadow,
            })
            .collect();
        let from_store = if hits.is_empty() {
            Vec::new()
        } else {
            let started = Instant::now();
            let result = self.store.hit(&hits, self.clock.now()).await;
            self.metrics.store_latency(started.elapsed());
            match result {
                Ok(o) if o.len() == hits.len() => o,
                Ok(o) => {
                    let e = StoreError::Unavailable(format!(
                        "store answered {} outcomes for {} hits",
                        o.len(),
                        hits.len()
                    ));
                    return self.fail(statuses, &pending, e);
                }
                Err(e) => return self.fail(statuses, &pending, e),
            }
        };
        drop(hits);
        let mut from_store = from_store.into_iter();
        let outcomes: Vec<Outcome> = pending
            .iter()
            .map(|p| {
                if p.limit.rule.limit == 0 {
                    let w = p.limit.rule.window;
                    Outcome {
                        admitted: false,
                        remaining: 0,
                        reset_after: w,
                        retry_after: Some(w),
                        cached: false,
                    }
                } else {
                    from_store.next().expect("one outcome per hit")
                }
            })
            .collect();
        Ok(self.decide(statuses, &pending, &outcomes))
    }

    fn decide(
        &self,
        mut statuses: Vec<Status>,
        pending: &[Pending],
        outcomes: &[Outcome],
    ) -> Decision {
        let mut overall = Code::Ok;
        for (p, o) in pending.iter().zip(outcomes) {
            let s = &mut statuses[p.descriptor];
            let decision = if o.admitted {
                if near_limit(
                    p.limit.rule.limit,
                    o.remaining,
                    self.options.near_limit_ratio,
                ) {
                    metrics::Decision::NearLimit
                } else {
                    metrics::Decision::WithinLimit
                }
            } else if p.shadow {
                metrics::Decision::ShadowOverLimit
            } else {
                metrics::Decision::OverLimit
            };
            p.limit.metrics.record(
                decision,
                p.cost,
                o.cached,
                p.limit.detailed_metric.then_some(p.key.as_str()),
            );
            if s.code == Code::OverLimit {
                continue;
            }
            if !o.admitted && !p.shadow {
                overall = Code::OverLimit;
                s.code = Code::OverLimit;
                s.limit = Some(p.limit.clone());
                s.remaining = 0;
                s.reset_after = o.reset_after;
                s.retry_after = o.retry_after.or(Some(o.reset_after));
                continue;
            }
            if !o.admitted && s.shadow_fired.is_none() {
                s.shadow_fired = Some(p.limit.clone());
            }
            if s.limit.is_none() || o.remaining < s.remaining {
                s.limit = Some(p.limit.clone());
                s.remaining = o.remaining;
                s.reset_after = o.reset_after;
            }
        }
        Decision {
            code: overall,
            statuses,
            degraded: false,
        }
    }

    fn fail(
        &self,
        mut statuses: Vec<Status>,
        pending: &[Pending],
        e: StoreError,
    ) -> Result<Decision, EngineError> {
        metrics::store_error(store_error_kind(&e));
        tracing::warn!(error = %e, failure_mode = ?self.options.failure_mode, "counter store failed");
        let mut overall = Code::Ok;
        match self.options.failure_mode {
            FailureMode::Error => return Err(EngineError::Store(e)),
            FailureMode::Allow => {
                for p in pending {
                    let s = &mut statuses[p.descriptor];
                    if s.limit.is_none() {
                        s.limit = Some(p.limit.clone());
                        s.remaining = p.limit.rule.limit;
                    }
                }
            }
            FailureMode::Deny => {
                for p in pending.iter().filter(|p| !p.shadow) {
                    let s = &mut statuses[p.descriptor];
                    if s.code == Code::Ok {
                        s.code = Code::OverLimit;
                        s.limit = Some(p.limit.clone());
                        s.remaining = 0;
                        s.reset_after = p.limit.rule.window;
                        s.retry_after = Some(p.limit.rule.window);
                        overall = Code::OverLimit;
                    }
                }
            }
        }
        Ok(Decision {
            code: overall,
            statuses,
            degraded: true,
        })
    }
}

/// envoyproxy/ratelimit's rule: a limit named in another matched limit's `replaces` is not
/// checked at all (its counter is left untouched).
fn drop_replaced(pending: &mut Vec<Pending>) {
    let names: Vec<Box<str>> = pending
        .iter()
        .flat_map(|p| p.limit.replaces.iter().cloned())
        .collect();
    pending.retain(|p| !(p.limit.named && names.iter().any(|n| **n == *p.limit.name)));
}

fn near_limit(limit: u64, remaining: u64, ratio: f64) -> bool {
    let used = limit.saturating_sub(remaining);
    limit > 0 && used as f64 > ratio * limit as f64
}

fn store_error_kind(e: &StoreError) -> &'static str {
    match e {
        StoreError::Timeout => "timeout",
        StoreError::Overloaded => "overloaded",
        StoreError::Unavailable(_) => "unavailable",
        StoreError::Config(_) => "config",
    }
}

impl DescriptorSource for tollgate_proto::ratelimit::RateLimitDescriptor {
    fn entry_count(&self) -> usize {
        self.entries.len()
    }
    fn entry(&self, i: usize) -> (&str, &str) {
        let e = &self.entries[i];
        (&e.key, &e.value)
    }
    fn limit_override(&self) -> Option<LimitOverride> {
        self.limit.as_ref().map(|l| LimitOverride {
            requests_per_unit: l.requests_per_unit,
            unit: l.unit,
        })
    }
    fn hits_addend(&self) -> Option<u64> {
        // Negative hits (refunds) are not supported: such a descriptor is checked, not counted.
        if self.is_negative_hits {
            return Some(0);
        }
        self.hits_addend.as_ref().map(|v| v.value)
    }
}

#[cfg(test)]
mod tests;
