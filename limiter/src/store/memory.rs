//! The in-memory store: sharded hash tables of counters, bounded and expiring.
//!
//! Each counter (key + rule) lives in one of a power-of-two number of shards, each behind its
//! own mutex held only for the few hundred nanoseconds of arithmetic (never across an await),
//! so there is no global lock. A request whose hits land in several shards locks them in
//! ascending order (no deadlock) and applies all hits before releasing any, which gives the
//! same all-or-nothing semantics as the Redis script.
//!
//! Bounded: a shard holds at most `max_keys / shards` counters. When full it first drops
//! expired counters (a full sweep at most once per second of clock time, so a flood of new
//! keys cannot make every insert scan the shard), then evicts the soonest-expiring of a few
//! sampled counters; a live eviction forgets usage, so it is counted in
//! `tollgate_ratelimit_memory_evictions_total` and `max_keys` should be sized above the
//! number of keys active within the longest window.

use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::SystemTime;

use futures::future::BoxFuture;
use hashbrown::{DefaultHashBuilder, HashTable};
use parking_lot::{Mutex, MutexGuard};
use serde::Deserialize;
use tollgate_common::config::{Errors, Validate};

use super::{Hit, Outcome, Store, StoreError, micros, outcome, validate_positive};
use crate::algorithm::{Evaluation, Rule, State, evaluate};

/// Options of the memory store (`store: {type: memory, ...}`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct MemoryOptions {
    /// Most counters held; beyond it expired counters go first, then the soonest to expire.
    pub max_keys: usize,
    /// Number of shards (rounded up to a power of two).
    pub shards: usize,
    /// Longest counter key accepted (see [`super::DEFAULT_MAX_KEY_BYTES`]).
    pub max_key_bytes: usize,
}

impl Default for MemoryOptions {
    fn default() -> Self {
        Self {
            max_keys: 1_000_000,
            shards: 64,
            max_key_bytes: super::DEFAULT_MAX_KEY_BYTES,
        }
    }
}

impl Validate for MemoryOptions {
    fn validate(&self, at: &str, errors: &mut Errors) {
        validate_positive(at, "max_keys", self.max_keys, errors);
        validate_positive(at, "shards", self.shards, errors);
        validate_positive(at, "max_key_bytes", self.max_key_bytes, errors);
    }
}

/// How many counters are sampled to pick an eviction victim when a shard is full of live ones.
const EVICTION_SAMPLE: usize = 8;
/// Least clock time between two full sweeps of one shard.
const SWEEP_EVERY_US: u64 = 1_000_000;

struct Counter {
    key: Box<str>,
    rule: Rule,
    state: State,
    expires_us: u64,
}

#[derive(Default)]
struct Shard {
    table: HashTable<Counter>,
    next_sweep_us: u64,
}

/// Counters in process memory. Clones of the `Arc` share the counters (one "replica").
pub struct MemoryStore {
    shards: Box<[Mutex<Shard>]>,
    hasher: DefaultHashBuilder,
    per_shard: usize,
    shift: u32,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("shards", &self.shards.len())
            .field("per_shard", &self.per_shard)
            .finish_non_exhaustive()
    }
}

/// Per-hit working data of one call.
struct Work {
    hash: u64,
    shard: usize,
    original: State,
    eval: Option<Evaluation>,
}

impl MemoryStore {
    pub fn new(opts: &MemoryOptions) -> Self {
        let n = opts.shards.max(1).next_power_of_two();
        Self {
            shards: (0..n).map(|_| Mutex::new(Shard::default())).collect(),
            hasher: DefaultHashBuilder::default(),
            per_shard: opts.max_keys.div_ceil(n).max(1),
            // The top bits pick the shard; hashbrown uses the low ones inside it.
            shift: 64 - n.trailing_zeros(),
        }
    }

    /// Shared handle, convenient for tests that treat clones as replicas of one store.
    pub fn shared(opts: &MemoryOptions) -> Arc<Self> {
        Arc::new(Self::new(opts))
    }

    /// Number of counters held (expired ones included until swept).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().table.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shard_of(&self, hash: u64) -> usize {
        if self.shift == 64 {
            0
        } else {
            (hash >> self.shift) as usize
        }
    }

    /// Evaluates and applies all hits; the core of [`Store::hit`], synchronous.
    pub fn hit_now(&self, hits: &[Hit<'_>], now_us: u64) -> Vec<Outcome> {
        if hits.is_empty() {
            return Vec::new();
        }
        let mut work: Vec<Work> = hits
            .iter()
            .map(|h| {
                let hash = self.hasher.hash_one((h.key, h.rule));
                Work {
                    hash,
                    shard: self.shard_of(hash),
                    original: State::Empty,
                    eval: None,
                }
            })
            .collect();
        // Lock every shard involved, in ascending order.
        let mut order: Vec<usize> = work.iter().map(|w| w.shard).collect();
        order.sort_unstable();
        order.dedup();
        let mut guards: Vec<(usize, MutexGuard<'_, Shard>)> =
            order.iter().map(|&s| (s, self.shards[s].lock())).collect();
        let guard_of = |shard: usize| order.binary_search(&shard).expect("locked above");

        let mut rejected = false;
        for i in 0..hits.len() {
            let h = &hits[i];
            let shard = &guards[guard_of(work[i].shard)].1;
            let original = shard
                .table
                .find(work[i].hash, |c| c.rule == h.rule && *c.key == *h.key)
                .filter(|c| c.expires_us > now_us)
                .map_or(State::Empty, |c| c.state);
            // A counter hit twice in one request sees the first hit's tentative count.
            let current = (0..i)
                .rev()
                .find(|&j| {
                    hits[j].rule == h.rule && hits[j].key == h.key && counted(&hits[j], &work[j])
                })
                .and_then(|j| work[j].eval.map(|e| e.next))
                .unwrap_or(original);
            let ev = evaluate(&h.rule, &current, now_us, h.cost);
            if !ev.decision.admitted && !h.shadow {
                rejected = true;
            }
            work[i].original = original;
            work[i].eval = Some(ev);
        }

        let mut out = Vec::with_capacity(hits.len());
        for (h, w) in hits.iter().zip(&work) {
            let ev = w.eval.expect("evaluated above");
            if rejected && counted(h, w) {
                // Nothing is counted: report the counter as it stands.
                let mut o = outcome(&evaluate(&h.rule, &w.original, now_us, 0).decision);
                o.admitted = true;
                out.push(o);
            } else {
                out.push(outcome(&ev.decision));
            }
        }
        if !rejected {
            for (h, w) in hits.iter().zip(&work) {
                if counted(h, w) {
                    let ev = w.eval.expect("evaluated above");
                    let shard = &mut guards[guard_of(w.shard)].1;
                    self.store(shard, w.hash, h, ev, now_us);
                }
            }
        }
        out
    }

    fn store(&self, shard: &mut Shard, hash: u64, h: &Hit<'_>, ev: Evaluation, now_us: u64) {
        if let Some(c) = shard
            .table
            .find_mut(hash, |c| c.rule == h.rule && *c.key == *h.key)
        {
            c.state = ev.next;
            c.expires_us = ev.expires_at_us;
            return;
        }
        if shard.table.len() >= self.per_shard {
            self.make_room(shard, now_us);
        }
        let counter = Counter {
            key: h.key.into(),
            rule: h.rule,
            state: ev.next,
            expires_us: ev.expires_at_us,
        };
        shard
            .table
            .insert_unique(hash, counter, |c| self.hasher.hash_one((&*c.key, c.rule)));
    }

    fn make_room(&self, shard: &mut Shard, now_us: u64) {
        if now_us >= shard.next_sweep_us {
            shard.table.retain(|c| c.expires_us > now_us);
            shard.next_sweep_us = now_us + SWEEP_EVERY_US;
        }
        while shard.table.len() >= self.per_shard {
            let victim = shard
                .table
                .iter()
                .take(EVICTION_SAMPLE)
                .min_by_key(|c| c.expires_us)
                .map(|c| {
                    let live = c.expires_us > now_us;
                    (
                        self.hasher.hash_one((&*c.key, c.rule)),
                        c.key.clone(),
                        c.rule,
                        live,
                    )
                });
            let Some((hash, key, rule, live)) = victim else {
                return;
            };
            if let Ok(e) = shard
                .table
                .find_entry(hash, |c| c.rule == rule && c.key == key)
            {
                e.remove();
            }
            if live {
                metrics::counter!("tollgate_ratelimit_memory_evictions_total").increment(1);
            }
        }
    }
}

/// Whether a hit changes its counter when the request is admitted.
fn counted(h: &Hit<'_>, w: &Work) -> bool {
    h.cost > 0 && w.eval.is_some_and(|e| e.decision.admitted)
}

impl Store for MemoryStore {
    fn hit<'a>(
        &'a self,
        hits: &'a [Hit<'a>],
        now: SystemTime,
    ) -> BoxFuture<'a, Result<Vec<Outcome>, StoreError>> {
        let out = self.hit_now(hits, micros(now));
        Box::pin(std::future::ready(Ok(out)))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::algorithm::Algorithm;

    #[test]
    fn bounded_evicting_expired_first() {
        let store = MemoryStore::new(&MemoryOptions {
            max_keys: 4,
            shards: 1,
            ..MemoryOptions::default()
        });
        let short = Rule::new(Algorithm::FixedWindow, 5, Duration::from_secs(1));
        let long = Rule::new(Algorithm::FixedWindow, 5, Duration::from_secs(3600));
        let t = 3600 * 1_000_000 * 10;
        for k in ["a", "b"] {
            store.hit_now(
                &[Hit {
                    key: k,
                    rule: short,
                    cost: 1,
                    shadow: false,
                }],
                t,
            );
        }
        for k in ["c", "d"] {
            store.hit_now(
                &[Hit {
                    key: k,
                    rule: long,
                    cost: 1,
                    shadow: false,
                }],
                t,
            );
        }
        // Two seconds later a and b have expired; two new keys replace them, c and d stay.
        let later = t + 2_000_000;
        for k in ["e", "f"] {
            store.hit_now(
                &[Hit {
                    key: k,
                    rule: long,
                    cost: 1,
                    shadow: false,
                }],
                later,
            );
        }
        assert_eq!(store.len(), 4);
        let o = store.hit_now(
            &[Hit {
                key: "c",
                rule: long,
                cost: 0,
                shadow: false,
            }],
            later,
        );
        assert_eq!(o[0].remaining, 4, "a live counter survived");
        // Full of live counters: a new key still gets in, by evicting one.
        store.hit_now(
            &[Hit {
                key: "g",
                rule: long,
                cost: 1,
                shadow: false,
            }],
            later,
        );
        assert_eq!(store.len(), 4);
    }
}

#[cfg(test)]
mod speed {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::algorithm::Algorithm;

    /// `cargo test --release -p tollgate-ratelimit memory_cost_per_call -- --ignored --nocapture`
    #[test]
    #[ignore = "a measurement, not a test"]
    fn memory_cost_per_call() {
        let store = MemoryStore::new(&MemoryOptions::default());
        let keys: Vec<String> = (0..10_000)
            .map(|i| format!("domain|remote_address=10.0.{}.{}", i / 256, i % 256))
            .collect();
        for alg in [
            Algorithm::SlidingWindow,
            Algorithm::FixedWindow,
            Algorithm::Gcra,
        ] {
            let rule = Rule::new(alg, 1_000_000, Duration::from_secs(60));
            let start = Instant::now();
            let n = 2_000_000u64;
            for i in 0..n {
                let key = &keys[(i % 10_000) as usize];
                let hits = [Hit {
                    key,
                    rule,
                    cost: 1,
                    shadow: false,
                }];
                std::hint::black_box(store.hit_now(&hits, 1_800_000_000_000_000 + i));
            }
            println!("{alg:?}: {:?} per call", start.elapsed() / n as u32);
        }
    }
}
