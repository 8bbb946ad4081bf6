//! The in-memory store: sharded hash tables of counters, bounded in bytes and expiring.
//!
//! Each counter (key + rule) lives in one of a power-of-two number of shards, each behind its
//! own mutex held only for the few hundred nanoseconds of arithmetic (never across an await),
//! so there is no global lock. A request whose hits land in several shards locks them in
//! ascending order (no deadlock) and applies all hits before releasing any, which gives the
//! same all-or-nothing semantics as the Redis script.
//!
//! # Bounded in bytes
//! A shard holds at most `max_bytes / shards` bytes, counted as the allocator sees them: the
//! hash table's whole allocation (every slot of its capacity, used or not; a table that would
//! have to double for a new counter counts as doubled) plus each key's heap allocation. A new counter that does not fit
//! first makes the shard drop its expired counters (a full pass at most once per second of
//! clock time, so a flood of new keys cannot make every insert scan the shard), then evicts
//! the soonest-expiring of a few sampled counters, until it fits without growing the table
//! (rebuilding the table in place once an eighth of it is the tombstones evictions leave, so
//! a full shard evicts at most an eighth of its counters for one new key).
//! A live eviction forgets usage, so it is counted in `tollgate_ratelimit_memory_evictions_total`;
//! `max_bytes` should hold the keys active within the longest window (about 250 bytes per
//! counter plus its key; see docs/ratelimit.md). `max_keys` bounds the count as well.
//!
//! # Swept in the background
//! Expired counters are also dropped every `sweep_interval` by a background task (one shard at
//! a time), so memory follows the traffic down after a burst. Stores never read the system
//! clock: the sweep goes by the latest time any call brought. The task ends with the store.

use std::hash::BuildHasher;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use hashbrown::{DefaultHashBuilder, HashTable};
use parking_lot::{Mutex, MutexGuard};
use serde::Deserialize;
use tollgate_common::config::{Errors, Validate, join};

use super::{Hit, Outcome, Store, StoreError, micros, outcome, validate_positive};
use crate::algorithm::{Evaluation, Rule, State, evaluate};

/// Options of the memory store (`store: {type: memory, ...}`).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct MemoryOptions {
    /// Most memory the counters take, in bytes (see the module docs for what is counted).
    pub max_bytes: usize,
    /// Most counters held; beyond either bound expired counters go first, then the soonest to
    /// expire.
    pub max_keys: usize,
    /// Number of shards (rounded up to a power of two).
    pub shards: usize,
    /// Longest counter key accepted (see [`super::DEFAULT_MAX_KEY_BYTES`]).
    pub max_key_bytes: usize,
    /// How often expired counters are swept in the background.
    #[serde(with = "humantime_serde")]
    pub sweep_interval: Duration,
}

/// The default of `max_bytes`: 128 MiB, half the Helm chart's default memory limit.
pub const DEFAULT_MAX_BYTES: usize = 128 << 20;

impl Default for MemoryOptions {
    fn default() -> Self {
        Self {
            max_bytes: DEFAULT_MAX_BYTES,
            max_keys: 1_000_000,
            shards: 64,
            max_key_bytes: super::DEFAULT_MAX_KEY_BYTES,
            sweep_interval: Duration::from_secs(1),
        }
    }
}

impl Validate for MemoryOptions {
    fn validate(&self, at: &str, errors: &mut Errors) {
        validate_positive(at, "max_keys", self.max_keys, errors);
        validate_positive(at, "shards", self.shards, errors);
        validate_positive(at, "max_key_bytes", self.max_key_bytes, errors);
        if self.max_bytes < MIN_BYTES {
            errors.push(
                join(at, "max_bytes"),
                format!("must be at least {MIN_BYTES} (1 MiB)"),
            );
        }
        if self.sweep_interval.is_zero() {
            errors.push(join(at, "sweep_interval"), "must be positive");
        }
    }
}

/// The least `max_bytes` accepted.
const MIN_BYTES: usize = 1 << 20;

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

/// What one slot of a shard's table costs: the counter and hashbrown's control byte.
const SLOT_BYTES: usize = std::mem::size_of::<Counter>() + 1;

/// The heap a key of `len` bytes takes: what a general-purpose allocator hands out for it
/// (a 16-byte granule with 8 bytes of header, 32 bytes at least).
fn key_alloc(len: usize) -> usize {
    (len + 8).div_ceil(16).max(2) * 16
}

/// The allocation of a table of `buckets` (a slot and a control byte per bucket, plus one
/// group of control bytes).
fn table_alloc(buckets: usize) -> usize {
    if buckets == 0 {
        0
    } else {
        buckets * SLOT_BYTES + 16
    }
}

#[derive(Default)]
struct Shard {
    table: HashTable<Counter>,
    /// The heap of the keys in `table`, by [`key_alloc`].
    key_bytes: usize,
    next_sweep_us: u64,
    /// The latest `now` a call brought: the background sweep's clock.
    latest_us: u64,
}

impl Shard {
    fn bytes(&self) -> usize {
        self.table.allocation_size() + self.key_bytes
    }

    /// The table's buckets, and how many counters they hold at hashbrown's load limit.
    fn buckets_and_full(&self) -> (usize, usize) {
        let buckets = self.table.allocation_size().saturating_sub(16) / SLOT_BYTES;
        let full = if buckets < 8 {
            buckets.saturating_sub(1)
        } else {
            buckets / 8 * 7
        };
        (buckets, full)
    }

    /// Slots that removals left as tombstones: hashbrown counts them as used until it
    /// rehashes.
    fn tombstones(&self) -> usize {
        self.buckets_and_full()
            .1
            .saturating_sub(self.table.capacity())
    }

    /// Rehashes the counters into a fresh table of the same size, whose free slots then
    /// include the tombstones.
    fn rebuild(&mut self, hasher: &DefaultHashBuilder) {
        let full = self.buckets_and_full().1;
        let old = std::mem::take(&mut self.table);
        let mut table = HashTable::with_capacity(full);
        let hash = |c: &Counter| hasher.hash_one((&*c.key, c.rule));
        for c in old {
            table.insert_unique(hash(&c), c, hash);
        }
        self.table = table;
    }

    /// The table's allocation once it has taken one more counter: the same when there is
    /// room or when hashbrown can rehash in place (its tombstones free half the table),
    /// otherwise the doubled table (`None` when `grow` forbids it).
    fn alloc_after_insert(&self, grow: bool) -> Option<usize> {
        let (len, alloc) = (self.table.len(), self.table.allocation_size());
        if len < self.table.capacity() {
            return Some(alloc);
        }
        let (buckets, full) = self.buckets_and_full();
        if buckets > 0 && len < full / 2 {
            Some(alloc)
        } else if grow {
            Some(table_alloc((buckets * 2).max(4)))
        } else {
            None
        }
    }

    /// Drops the counters expired at `now_us`.
    fn sweep(&mut self, now_us: u64) {
        let mut freed = 0;
        self.table.retain(|c| {
            let keep = c.expires_us > now_us;
            if !keep {
                freed += key_alloc(c.key.len());
            }
            keep
        });
        self.key_bytes -= freed;
    }
}

/// Counters in process memory. Clones of the `Arc` share the counters (one "replica").
pub struct MemoryStore {
    shards: Arc<[Mutex<Shard>]>,
    hasher: DefaultHashBuilder,
    per_shard: usize,
    per_shard_bytes: usize,
    shift: u32,
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("shards", &self.shards.len())
            .field("per_shard", &self.per_shard)
            .field("per_shard_bytes", &self.per_shard_bytes)
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
    /// Within a Tokio runtime this also starts the background sweep (see the module docs).
    pub fn new(opts: &MemoryOptions) -> Self {
        let n = opts.shards.max(1).next_power_of_two();
        let shards: Arc<[Mutex<Shard>]> = (0..n).map(|_| Mutex::new(Shard::default())).collect();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(sweep_every(Arc::downgrade(&shards), opts.sweep_interval));
        }
        Self {
            shards,
            hasher: DefaultHashBuilder::default(),
            per_shard: opts.max_keys.div_ceil(n).max(1),
            per_shard_bytes: opts.max_bytes / n,
            // The top bits pick the shard; hashbrown uses the low ones inside it.
            shift: 64 - n.trailing_zeros(),
        }
    }

    /// The memory the counters take, as the bound counts it.
    pub fn bytes(&self) -> usize {
        self.shards.iter().map(|s| s.lock().bytes()).sum()
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
        for (_, g) in &mut guards {
            g.latest_us = g.latest_us.max(now_us);
        }

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
        let need = key_alloc(h.key.len());
        if !self.fits(shard, need, true) {
            self.make_room(shard, need, now_us);
        }
        let counter = Counter {
            key: h.key.into(),
            rule: h.rule,
            state: ev.next,
            expires_us: ev.expires_at_us,
        };
        shard.key_bytes += need;
        shard
            .table
            .insert_unique(hash, counter, |c| self.hasher.hash_one((&*c.key, c.rule)));
    }

    /// Whether a new counter whose key takes `need` bytes fits in the shard; with `grow`, the
    /// table may double for it.
    fn fits(&self, shard: &Shard, need: usize, grow: bool) -> bool {
        shard.table.len() < self.per_shard
            && shard
                .alloc_after_insert(grow)
                .is_some_and(|alloc| alloc + shard.key_bytes + need <= self.per_shard_bytes)
    }

    fn make_room(&self, shard: &mut Shard, need: usize, now_us: u64) {
        if now_us >= shard.next_sweep_us {
            shard.sweep(now_us);
            shard.next_sweep_us = now_us + SWEEP_EVERY_US;
            if self.fits(shard, need, true) {
                return;
            }
        }
        while !self.fits(shard, need, false) {
            // An eviction in a full table mostly leaves a tombstone, which frees no slot until
            // hashbrown rehashes, and it rehashes in place only once they are half the table:
            // a full shard would evict live counters by the hundred for one new key. So
            // once an eighth of the table is tombstones, it is rebuilt instead (the rebuild
            // costs a pass over the shard and, briefly, a second table, once per eighth of its
            // counters inserted).
            if shard.tombstones() >= (shard.buckets_and_full().1 / 8).max(1) {
                shard.rebuild(&self.hasher);
                continue;
            }
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
                shard.key_bytes -= key_alloc(key.len());
            }
            if live {
                metrics::counter!("tollgate_ratelimit_memory_evictions_total").increment(1);
            }
        }
    }
}

/// Sweeps expired counters every `interval`, one shard at a time, until the store is gone;
/// publishes the store's size in `tollgate_ratelimit_memory_bytes`.
async fn sweep_every(shards: Weak<[Mutex<Shard>]>, interval: Duration) {
    let gauge = metrics::gauge!("tollgate_ratelimit_memory_bytes");
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(shards) = shards.upgrade() else {
            return;
        };
        // The latest time any call brought, so a shard gone quiet is swept too.
        let now = shards.iter().map(|s| s.lock().latest_us).max().unwrap_or(0);
        let mut bytes = 0;
        for shard in shards.iter() {
            {
                let mut s = shard.lock();
                s.sweep(now);
                bytes += s.bytes();
            }
            tokio::task::yield_now().await;
        }
        gauge.set(bytes as f64);
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
mod bound_tests {
    use std::time::Duration;

    use super::*;
    use crate::algorithm::Algorithm;

    const T: u64 = 1_800_000_000 * 1_000_000;

    fn hit(store: &MemoryStore, key: &str, rule: Rule, now_us: u64) {
        store.hit_now(
            &[Hit {
                key,
                rule,
                cost: 1,
                shadow: false,
            }],
            now_us,
        );
    }

    #[test]
    fn a_flood_of_distinct_keys_stays_within_max_bytes() {
        let max_bytes = 1 << 20;
        let store = MemoryStore::new(&MemoryOptions {
            max_bytes,
            shards: 4,
            ..MemoryOptions::default()
        });
        let rule = Rule::new(Algorithm::SlidingWindow, 10, Duration::from_secs(3600));
        let mut len = 0;
        for i in 0..100_000 {
            let key = format!(
                "flood|remote_address=10.{}.{}.{}|path=/api",
                i >> 16,
                (i >> 8) & 255,
                i & 255
            );
            hit(&store, &key, rule, T + i);
            if i % 10_000 == 0 {
                assert!(store.bytes() <= max_bytes, "{} at {i}", store.bytes());
            }
            // One new key evicts at most an eighth of a full shard's live counters: a 32nd of
            // the store's at 4 shards (allowed: a 16th). A table left to rehash itself evicts
            // up to half a shard at once.
            let now = store.len();
            assert!(
                now + len / 16 >= len,
                "{len} counters, then {now} after one insert at {i}"
            );
            len = now;
        }
        assert!(store.bytes() <= max_bytes, "{}", store.bytes());
        // The bound is used, not wasted: thousands of counters fit in 1 MiB.
        assert!(store.len() > 2_000, "{} counters", store.len());
        let per_counter = max_bytes / store.len();
        assert!(per_counter > SLOT_BYTES, "{per_counter} bytes per counter");
    }

    #[tokio::test]
    async fn expired_counters_are_swept_in_the_background() {
        let store = MemoryStore::new(&MemoryOptions {
            sweep_interval: Duration::from_millis(10),
            ..MemoryOptions::default()
        });
        let short = Rule::new(Algorithm::FixedWindow, 10, Duration::from_secs(1));
        let long = Rule::new(Algorithm::FixedWindow, 10, Duration::from_secs(3600));
        for i in 0..1000 {
            hit(&store, &format!("k{i}"), short, T);
        }
        hit(&store, "stays", long, T);
        let full = store.bytes();
        // One call two seconds later, on one key: every shard is swept by that time.
        hit(&store, "later", long, T + 2_000_000);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while store.len() != 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "{} counters left",
                store.len()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(store.bytes() < full);
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
