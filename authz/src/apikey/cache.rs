//! The in-memory cache of looked-up keys, so that the common Check costs no store round trip,
//! and the last known state of each key for serving known keys while the store is down.
//!
//! Bounded (FIFO eviction) and aged, but correctness does not rest on the age: every change to a
//! key invalidates it here, locally and (for Redis) on every replica through pub/sub. A global
//! epoch, bumped under the same lock as every invalidation, stops a lookup that raced with a
//! change from caching what it read before the change.
//!
//! # While the invalidation feed is down
//! Nothing is served as a cache hit: every Check asks the store. What the replica knew stays,
//! though, as the fallback for a store that cannot answer ([`Caches::last_known`]): a known
//! key's record counts as current up to the moment the feed went down (every change until then
//! would have invalidated it), or up to its own read if that came later. On resubscribing the
//! whole cache is dropped, since changes made meanwhile were not heard.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::record::KnownKey;

/// `Some(key)` for a known key, `None` for an id the store does not have.
pub(crate) type Lookup = Option<Arc<KnownKey>>;

struct Entry {
    value: Lookup,
    at: Instant,
    seq: u64,
}

/// One shard: the entries of the ids it owns, their insertion order and its epoch.
struct Map {
    entries: HashMap<String, Entry>,
    order: VecDeque<(String, u64)>,
    seq: u64,
    epoch: u64,
}

/// Shards of a cache big enough to be busy: a Check locks only the shard of its key's id, so
/// concurrent Checks on different keys rarely meet. Small caches keep one shard, which keeps
/// their eviction exactly first-in first-out.
const SHARDS: usize = 16;
const SHARDED_FROM: usize = 16 * SHARDS;

/// One bounded map with a maximum age, in shards by key id.
struct Bounded {
    shards: Box<[Mutex<Map>]>,
    /// Per shard.
    capacity: usize,
    ttl: Duration,
}

impl Bounded {
    fn new(capacity: usize, ttl: Duration) -> Self {
        let capacity = capacity.max(1);
        let shards = if capacity >= SHARDED_FROM { SHARDS } else { 1 };
        Self {
            shards: (0..shards)
                .map(|_| {
                    Mutex::new(Map {
                        entries: HashMap::new(),
                        order: VecDeque::new(),
                        seq: 0,
                        epoch: 0,
                    })
                })
                .collect(),
            capacity: capacity.div_ceil(shards),
            ttl,
        }
    }

    /// Key ids are random base62: their first byte spreads them well enough.
    fn shard(&self, id: &str) -> &Mutex<Map> {
        let b = id.as_bytes().first().copied().unwrap_or(0) as usize;
        &self.shards[b % self.shards.len()]
    }

    fn get(&self, id: &str, now: Instant) -> Option<Lookup> {
        let map = self.shard(id).lock();
        let e = map.entries.get(id)?;
        (now.saturating_duration_since(e.at) < self.ttl).then(|| e.value.clone())
    }

    /// The entry whatever its age, with when it was read.
    fn get_any(&self, id: &str) -> Option<(Lookup, Instant)> {
        let map = self.shard(id).lock();
        map.entries.get(id).map(|e| (e.value.clone(), e.at))
    }

    fn insert(&self, id: &str, value: Lookup, epoch: u64, at: Instant) {
        let mut map = self.shard(id).lock();
        if map.epoch != epoch {
            return;
        }
        map.seq += 1;
        let seq = map.seq;
        while map.entries.len() >= self.capacity && !map.entries.contains_key(id) {
            let Some((old, old_seq)) = map.order.pop_front() else {
                break;
            };
            if map.entries.get(&old).is_some_and(|e| e.seq == old_seq) {
                map.entries.remove(&old);
            }
        }
        map.entries.insert(id.to_string(), Entry { value, at, seq });
        map.order.push_back((id.to_string(), seq));
        // Re-inserted and invalidated ids leave stale order entries; compact now and then.
        if map.order.len() > 2 * self.capacity {
            let Map { entries, order, .. } = &mut *map;
            order.retain(|(k, s)| entries.get(k).is_some_and(|e| e.seq == *s));
        }
    }

    /// The epoch of `id`'s shard, to pass back to [`Self::insert`].
    fn epoch(&self, id: &str) -> u64 {
        self.shard(id).lock().epoch
    }

    fn invalidate(&self, id: &str) {
        let mut map = self.shard(id).lock();
        map.epoch += 1;
        map.entries.remove(id);
    }

    fn clear(&self) {
        for shard in self.shards.iter() {
            let mut map = shard.lock();
            map.epoch += 1;
            map.entries.clear();
            map.order.clear();
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().entries.len()).sum()
    }
}

/// Known keys and unknown ids, kept apart so that a flood of well-formed but unknown keys
/// cannot evict the keys real clients use.
pub(crate) struct Caches {
    known: Bounded,
    unknown: Bounded,
    /// Whether the invalidation feed is up: read on every Check, so an atomic.
    live: AtomicBool,
    /// When the feed went down (or the cache was made without one yet); meaningful while not
    /// `live`. Its lock also orders the feed's transitions.
    down_since: Mutex<Instant>,
}

/// Epochs of both maps (for one id), taken before a store read.
#[derive(Clone, Copy)]
pub(crate) struct Epoch(u64, u64);

impl Caches {
    pub(crate) fn new(
        capacity: usize,
        ttl: Duration,
        negative_ttl: Duration,
        live: bool,
    ) -> Arc<Self> {
        Arc::new(Self {
            known: Bounded::new(capacity, ttl),
            unknown: Bounded::new((capacity / 4).max(1), negative_ttl.min(ttl)),
            live: AtomicBool::new(live),
            down_since: Mutex::new(Instant::now()),
        })
    }

    pub(crate) fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    /// The feed is (again) subscribed: everything cached before may predate a change that was
    /// never heard of, so it is all dropped, and hits are served again from here on.
    pub(crate) fn feed_up(&self) {
        let _transition = self.down_since.lock();
        self.clear();
        self.live.store(true, Ordering::Release);
    }

    /// The feed is lost: no more cache hits. Known keys stay as the outage fallback, current as
    /// of `now`; unknown ids are forgotten (they are never served stale).
    pub(crate) fn feed_down(&self, now: Instant) {
        let mut since = self.down_since.lock();
        if self.live.swap(false, Ordering::AcqRel) {
            *since = now;
        }
        self.unknown.clear();
    }

    pub(crate) fn get(&self, id: &str, now: Instant) -> Option<Lookup> {
        if !self.is_live() {
            return None;
        }
        self.known
            .get(id, now)
            .or_else(|| self.unknown.get(id, now))
    }

    /// The last record read for a known key, if it was current at most `window` before `now`:
    /// what a Check may fall back on when the store cannot answer.
    pub(crate) fn last_known(
        &self,
        id: &str,
        now: Instant,
        window: Duration,
    ) -> Option<Arc<KnownKey>> {
        let (value, read_at) = self.known.get_any(id)?;
        let current_at = if self.is_live() {
            // Nothing changed it since it was read, or the feed would have removed it.
            now
        } else {
            read_at.max(*self.down_since.lock())
        };
        let record = value?;
        (now.saturating_duration_since(current_at) <= window).then_some(record)
    }

    pub(crate) fn epoch(&self, id: &str) -> Epoch {
        Epoch(self.known.epoch(id), self.unknown.epoch(id))
    }

    /// Records what a store read started at `at` returned. Known keys are kept even while the
    /// feed is down (as the outage fallback, not as hits); unknown ids only while it is up.
    pub(crate) fn insert(&self, id: &str, value: Lookup, epoch: Epoch, at: Instant) {
        match value {
            Some(_) => self.known.insert(id, value, epoch.0, at),
            None if self.is_live() => self.unknown.insert(id, value, epoch.1, at),
            None => {}
        }
    }

    pub(crate) fn invalidate(&self, id: &str) {
        self.known.invalidate(id);
        self.unknown.invalidate(id);
    }

    pub(crate) fn clear(&self) {
        self.known.clear();
        self.unknown.clear();
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.known.len() + self.unknown.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apikey::record::KeyRecord;

    fn rec(id: &str) -> Lookup {
        let now = std::time::SystemTime::now();
        Some(Arc::new(KnownKey::new(KeyRecord {
            id: id.into(),
            name: "n".into(),
            owner: "o".into(),
            tenant: None,
            scopes: vec![],
            plan: None,
            rate_limit: None,
            expires_at: None,
            created_at: now,
            updated_at: now,
            revoked_at: None,
            secrets: vec![],
            version: 1,
            last_used_at: None,
        })))
    }

    fn now() -> Instant {
        Instant::now()
    }

    #[test]
    fn bounded_and_evicts_oldest_first() {
        let c = Caches::new(3, Duration::from_secs(60), Duration::from_secs(5), true);
        for id in ["a", "b", "c", "d"] {
            c.insert(id, rec(id), c.epoch(id), now());
        }
        assert_eq!(c.len(), 3);
        assert!(c.get("a", now()).is_none());
        assert!(c.get("d", now()).is_some());
    }

    #[test]
    fn a_read_that_raced_with_an_invalidation_is_not_cached() {
        let c = Caches::new(10, Duration::from_secs(60), Duration::from_secs(5), true);
        let before = c.epoch("a");
        c.invalidate("a");
        c.insert("a", rec("a"), before, now());
        assert!(c.get("a", now()).is_none());
        c.insert("a", rec("a"), c.epoch("a"), now());
        assert!(c.get("a", now()).is_some());
    }

    #[test]
    fn no_hits_while_the_feed_is_down_and_nothing_survives_its_return() {
        let c = Caches::new(10, Duration::from_secs(60), Duration::from_secs(5), true);
        c.insert("a", rec("a"), c.epoch("a"), now());
        c.feed_down(now());
        assert!(c.get("a", now()).is_none());
        c.insert("b", rec("b"), c.epoch("b"), now());
        assert!(c.get("b", now()).is_none());
        c.feed_up();
        assert!(c.get("a", now()).is_none());
        assert!(c.get("b", now()).is_none());
        let t = now();
        assert!(c.last_known("a", t, Duration::from_secs(3600)).is_none());
    }

    #[test]
    fn a_known_key_is_current_until_the_feed_went_down_or_its_last_read() {
        let window = Duration::from_secs(300);
        let c = Caches::new(10, Duration::from_secs(60), Duration::from_secs(5), true);
        let t0 = now();
        c.insert("a", rec("a"), c.epoch("a"), t0);
        // Feed up: current now, whatever its age (past the hit TTL too).
        let later = t0 + Duration::from_secs(1000);
        assert!(c.last_known("a", later, window).is_some());
        // Feed down at t1: current as of t1, for the window after it.
        let t1 = t0 + Duration::from_secs(10);
        c.feed_down(t1);
        assert!(c.last_known("a", t1 + window, window).is_some());
        assert!(
            c.last_known("a", t1 + window + Duration::from_millis(1), window)
                .is_none()
        );
        // Read again at t2 while the feed is down: current as of t2.
        let t2 = t1 + Duration::from_secs(100);
        c.insert("a", rec("a"), c.epoch("a"), t2);
        assert!(c.last_known("a", t2 + window, window).is_some());
        // A second loss does not move the moment the feed went down.
        c.feed_down(t2);
        assert!(c.last_known("b", t2, window).is_none());
        assert!(c.last_known("a", t2, Duration::ZERO).is_some());
        assert!(
            c.last_known("a", t2 + Duration::from_millis(1), Duration::ZERO)
                .is_none()
        );
    }

    #[test]
    fn unknown_ids_are_never_a_fallback() {
        let c = Caches::new(10, Duration::from_secs(60), Duration::from_secs(5), true);
        c.insert("u", None, c.epoch("u"), now());
        assert!(matches!(c.get("u", now()), Some(None)));
        assert!(c.last_known("u", now(), Duration::from_secs(60)).is_none());
        c.feed_down(now());
        c.insert("v", None, c.epoch("v"), now());
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn unknown_ids_do_not_evict_known_keys() {
        let c = Caches::new(4, Duration::from_secs(60), Duration::from_secs(5), true);
        c.insert("k", rec("k"), c.epoch("k"), now());
        for i in 0..100 {
            c.insert(&format!("u{i}"), None, c.epoch("u"), now());
        }
        assert!(c.get("k", now()).is_some());
        assert!(matches!(c.get("u99", now()), Some(None)));
    }

    #[test]
    fn a_big_cache_is_sharded_and_still_bounded_and_race_free() {
        let c = Caches::new(1000, Duration::from_secs(60), Duration::from_secs(5), true);
        assert_eq!(c.known.shards.len(), SHARDS);
        for i in 0..5000 {
            let id = format!("{}{i}", (b'0' + (i % 62) as u8) as char);
            c.insert(&id, rec(&id), c.epoch(&id), now());
        }
        assert!(c.known.len() <= 1000 + SHARDS, "{}", c.known.len());
        // An invalidation between the epoch read and the insert still wins, shard by shard.
        for id in ["a1", "b2", "Z9"] {
            let before = c.epoch(id);
            c.invalidate(id);
            c.insert(id, rec(id), before, now());
            assert!(c.get(id, now()).is_none(), "{id}");
        }
    }
}
