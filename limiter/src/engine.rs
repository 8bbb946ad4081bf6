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
use tollgate_common::log_throttle::LogThrottle;

use crate::algorithm::Algorithm;
use crate::descriptor::{DescriptorSource, LimitOverride};
use crate::key::{CounterKey, KeyBuilder};
use crate::limits::{Domain, Limit, Limits};
use crate::metrics;
use crate::store::{Hit, Outcome, Store, StoreError};

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
    /// A counter key longer than this is refused: its descriptor is answered over the limit
    /// and the request counts nothing (the store's `max_key_bytes`).
    pub max_key_bytes: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            failure_mode: FailureMode::Error,
            override_algorithm: Algorithm::SlidingWindow,
            shadow_mode: false,
            near_limit_ratio: 0.8,
            max_key_bytes: crate::store::DEFAULT_MAX_KEY_BYTES,
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
    /// A `quota_mode` limit of this descriptor is over its limit (the descriptor stays OK
    /// unless every quota-mode descriptor of the request is over).
    pub quota_exceeded: bool,
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
            quota_exceeded: false,
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
    /// Every descriptor allowed as `statuses` say, nothing counted.
    fn allowed(statuses: Vec<Status>) -> Self {
        Self {
            code: Code::Ok,
            statuses,
            degraded: false,
        }
    }

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
    /// During an outage every call fails the same way: one log line per interval, with a
    /// count, instead of one per call.
    store_failures: LogThrottle,
}

/// At most one "counter store failed" line per this interval.
const STORE_FAILURE_LOG_EVERY: Duration = Duration::from_secs(10);

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
    key: CounterKey,
    cost: u64,
    /// Never rejects the request in the store (shadow mode, or quota mode: decided after).
    shadow: bool,
}

/// A request after matching.
enum Plan {
    /// Nothing to count: every status is final.
    Done(Vec<Status>),
    Count {
        statuses: Vec<Status>,
        pending: Vec<Pending>,
    },
}

/// What a descriptor's configured limits came to.
#[derive(PartialEq, Eq)]
enum Matched {
    Nothing,
    /// Only `unlimited` limits.
    Unlimited,
    Limited,
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
            store_failures: LogThrottle::new(STORE_FAILURE_LOG_EVERY),
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
    ///
    /// The descriptors are read before this returns (matching is synchronous); the future
    /// holds only the store call, so it borrows nothing from them.
    pub fn should_rate_limit<D, I>(
        &self,
        domain: &str,
        descriptors: I,
        hits_addend: u64,
    ) -> impl Future<Output = Result<Decision, EngineError>> + Send + '_
    where
        D: DescriptorSource,
        I: IntoIterator<Item = D>,
        I::IntoIter: ExactSizeIterator,
    {
        let plan = self.plan(domain, descriptors.into_iter(), hits_addend);
        async move {
            match plan {
                Plan::Done(statuses) => Ok(Decision::allowed(statuses)),
                Plan::Count { statuses, pending } => self.count(statuses, pending).await,
            }
        }
    }

    /// Matches every descriptor: the hits to count, or the answer when there are none.
    fn plan<D: DescriptorSource>(
        &self,
        domain: &str,
        descriptors: impl ExactSizeIterator<Item = D>,
        hits_addend: u64,
    ) -> Plan {
        let snapshot = self.limits.load_full();
        let mut statuses: Vec<Status> = (0..descriptors.len()).map(|_| Status::none()).collect();
        let Some(dom) = snapshot.domain(domain) else {
            self.metrics.unknown_domain.increment(1);
            return Plan::Done(statuses);
        };
        let request_cost = if hits_addend == 0 { 1 } else { hits_addend };
        let mut pending: Vec<Pending> = Vec::with_capacity(descriptors.len());
        for (i, d) in descriptors.enumerate() {
            let cost = d.hits_addend().unwrap_or(request_cost);
            if let Some(o) = d.limit_override() {
                pending.extend(self.overridden(dom, &d, o, i, cost));
            } else if self.configured(dom, &d, i, cost, &mut pending) == Matched::Unlimited {
                statuses[i].unlimited = true;
                statuses[i].remaining = u64::from(u32::MAX);
            }
        }
        drop_replaced(&mut pending);
        if pending.is_empty() {
            Plan::Done(statuses)
        } else {
            Plan::Count { statuses, pending }
        }
    }

    /// The hit of a limit sent with the descriptor. As envoyproxy/ratelimit: an override
    /// applies whenever the domain is known, whatever the configured descriptors, never in
    /// shadow mode; one with an unknown unit applies nothing.
    fn overridden<D: DescriptorSource>(
        &self,
        dom: &Domain,
        d: &D,
        o: LimitOverride,
        descriptor: usize,
        cost: u64,
    ) -> Option<Pending> {
        let limit = Limit::from_override(
            dom,
            o.requests_per_unit,
            o.unit,
            self.options.override_algorithm,
        )?;
        let mut key = KeyBuilder::new(&dom.name);
        for j in 0..d.entry_count() {
            let (k, v) = d.entry(j);
            key.entry(k, v);
        }
        let limit = Arc::new(limit);
        Some(Pending {
            descriptor,
            key: limit.finish_key(key),
            limit,
            cost,
            shadow: self.options.shadow_mode,
        })
    }

    /// The hits of the configured limits a descriptor selects, added to `pending`.
    fn configured<D: DescriptorSource>(
        &self,
        dom: &Domain,
        d: &D,
        descriptor: usize,
        cost: u64,
        pending: &mut Vec<Pending>,
    ) -> Matched {
        let mut key = KeyBuilder::new(&dom.name);
        let found = dom.find(d, &mut key);
        let Some(last) = found.iter().rposition(|l| !l.unlimited) else {
            return if found.is_empty() {
                Matched::Nothing
            } else {
                Matched::Unlimited
            };
        };
        let mut pend = |limit: &Arc<Limit>, key: CounterKey| {
            pending.push(Pending {
                descriptor,
                key,
                limit: limit.clone(),
                cost,
                shadow: limit.shadow || limit.quota_mode || self.options.shadow_mode,
            })
        };
        for limit in found[..last].iter().filter(|l| !l.unlimited) {
            pend(limit, limit.counter_key(&key));
        }
        pend(&found[last], found[last].finish_key(key));
        Matched::Limited
    }

    /// Counts the pending hits in the store, in one call, and decides.
    async fn count(
        &self,
        statuses: Vec<Status>,
        pending: Vec<Pending>,
    ) -> Result<Decision, EngineError> {
        // A zero limit is a block list, and a key beyond `max_key_bytes` is refused (a client
        // must not grow the store's memory, nor dodge its limit through the failure mode):
        // both are denied here, without the store. The request is then rejected, so the other
        // limits are only checked, never counted.
        let refused = |p: &Pending| p.limit.rule.limit == 0 || self.oversized(p);
        let blocked = pending.iter().any(|p| refused(p) && !p.shadow);
        for _ in pending.iter().filter(|p| self.oversized(p)) {
            self.metrics.oversized_keys.increment(1);
        }
        let hits: Vec<Hit<'_>> = pending
            .iter()
            .filter(|p| !refused(p))
            .map(|p| Hit {
                key: p.key.as_str(),
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
                if refused(p) {
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

    /// Whether the hit's counter key is too long to be stored (counted once per hit).
    fn oversized(&self, p: &Pending) -> bool {
        p.key.as_str().len() > self.options.max_key_bytes
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
            } else if p.limit.quota_mode && !self.options.shadow_mode {
                metrics::Decision::OverLimit
            } else if p.shadow {
                metrics::Decision::ShadowOverLimit
            } else {
                metrics::Decision::OverLimit
            };
            p.limit.metrics.record(
                decision,
                p.cost,
                o.cached,
                p.limit.detailed_metric.then_some(&p.key),
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
            if !o.admitted && p.limit.quota_mode && !self.options.shadow_mode {
                s.quota_exceeded = true;
            } else if !o.admitted && s.shadow_fired.is_none() {
                s.shadow_fired = Some(p.limit.clone());
            }
            if s.limit.is_none() || o.remaining < s.remaining {
                s.limit = Some(p.limit.clone());
                s.remaining = o.remaining;
                s.reset_after = o.reset_after;
            }
        }
        if overall == Code::Ok {
            overall = quota_mode_verdict(&mut statuses, pending, outcomes);
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
        self.metrics.store_error(&e);
        if let Some(times) = self.store_failures.allow() {
            tracing::warn!(error = %e, failure_mode = ?self.options.failure_mode, times, "counter store failed");
        }
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

/// envoyproxy/ratelimit's `quota_mode`: a quota-mode descriptor over its limit lets the request
/// through (its status stays OK, flagged `quota_exceeded`), unless every quota-mode descriptor
/// of the request is over, which denies the request with those descriptors OVER_LIMIT. Called
/// when no other limit denied. Hits were all counted (quota-mode hits never reject in the
/// store), as envoyproxy/ratelimit counts every hit.
fn quota_mode_verdict(statuses: &mut [Status], pending: &[Pending], outcomes: &[Outcome]) -> Code {
    let in_quota = |i: usize| {
        pending
            .iter()
            .any(|p| p.descriptor == i && p.limit.quota_mode)
    };
    let mut quota = (0..statuses.len()).filter(|&i| in_quota(i)).peekable();
    if quota.peek().is_none() || !quota.all(|i| statuses[i].quota_exceeded) {
        return Code::Ok;
    }
    for (p, o) in pending.iter().zip(outcomes) {
        let s = &mut statuses[p.descriptor];
        if p.limit.quota_mode && !o.admitted && s.code == Code::Ok {
            s.code = Code::OverLimit;
            s.limit = Some(p.limit.clone());
            s.remaining = 0;
            s.reset_after = o.reset_after;
            s.retry_after = o.retry_after.or(Some(o.reset_after));
        }
    }
    Code::OverLimit
}

/// envoyproxy/ratelimit's rule: a limit named in another matched limit's `replaces` is not
/// checked at all (its counter is left untouched).
fn drop_replaced(pending: &mut Vec<Pending>) {
    if pending.iter().all(|p| p.limit.replaces.is_empty()) {
        return;
    }
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

#[cfg(test)]
mod tests;
