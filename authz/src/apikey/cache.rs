//! The in-memory cache of looked-up keys, so that the common Check costs no store round trip.
//!
//! Bounded (FIFO eviction) and aged, but correctness does not rest on the age: every change to a
//! key invalidates it here, locally and (for Redis) on every replica through pub/sub. A global
//! epoch, bumped under the same lock as every invalidation, stops a lookup that raced with a
//! change from caching what it read before the change.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::record::KeyRecord;

/// `Some(record)` for a known key, `None` for an id the store does not have.
pub(crate) type Lookup = Option<Arc<KeyRecord>>;

struct Entry {
    value: Lookup,
    at: Instant,
    seq: u64,
}

struct Map {
    entries: HashMap<String, Entry>,
    order: VecDeque<(String, u64)>,
    seq: u64,
    epoch: u64,
}

/// One bounded map with a maximum age.
struct Bounded {
    map: Mutex<Map>,
    capacity: usize,
    ttl: Duration,
}

impl Bounded {
    fn new(capacity: usize, ttl: Duration) -> Self {
        Self {
            map: Mutex::new(Map {
                entries: HashMap::new(),
                order: VecDeque::new(),
                seq: 0,
                epoch: 0,
            }),
            capacity: capacity.max(1),
            ttl,
        }
    }

    fn get(&self, id: &str) -> Option<Lookup> {
        let map = self.map.lock();
        let e = map.entries.get(id)?;
        (e.at.elapsed() < self.ttl).then(|| e.value.clone())
    }

    fn insert(&self, id: &str, value: Lookup, epoch: u64) {
        let mut map = self.map.lock();
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
        map.entries.insert(
            id.to_string(),
            Entry {
                value,
                at: Instant::now(),
                seq,
            },
        );
        map.order.push_back((id.to_string(), seq));
        // Re-inserted and invalidated ids leave stale order entries; compact now and then.
        if map.order.len() > 2 * self.capacity {
            let Map { entries, order, .. } = &mut *map;
            order.retain(|(k, s)| entries.get(k).is_some_and(|e| e.seq == *s));
        }
    }

    fn epoch(&self) -> u64 {
        self.map.lock().epoch
    }

    fn invalidate(&self, id: &str) {
        let mut map = self.map.lock();
        map.epoch += 1;
        map.entries.remove(id);
    }

    fn clear(&self) {
        let mut map = self.map.lock();
        map.epoch += 1;
        map.entries.clear();
        map.order.clear();
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.lock().entries.len()
    }
}

/// Known keys and unknown ids, kept apart so that a flood of well-formed but unknown keys
/// cannot evict the keys real clients use.
pub(crate) struct Caches {
    known: Bounded,
    unknown: Bounded,
    /// False while the invalidation feed is down: then nothing is served from or put into the
    /// cache, so a revocation made meanwhile cannot be missed.
    live: AtomicBool,
}

/// Epochs of both maps, taken before a store read.
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
        })
    }

    pub(crate) fn is_live(&self) -> bool {
        self.live.load(Ordering::Acquire)
    }

    /// Marks the invalidation feed up or down; either way everything cached so far is dropped,
    /// since changes may have been missed while it was down.
    pub(crate) fn set_live(&self, live: bool) {
        if !live {
            self.live.store(false, Ordering::Release);
        }
        self.clear();
        if live {
            self.live.store(true, Ordering::Release);
        }
    }

    pub(crate) fn get(&self, id: &str) -> Option<Lookup> {
        if !self.is_live() {
            return None;
        }
        self.known.get(id).or_else(|| self.unknown.get(id))
    }

    pub(crate) fn epoch(&self) -> Epoch {
        Epoch(self.known.epoch(), self.unknown.epoch())
    }

    pub(crate) fn insert(&self, id: &str, value: Lookup, epoch: Epoch) {
        if !self.is_live() {
            return;
        }
        match value {
            Some(_) => self.known.insert(id, value, epoch.0),
            None => self.unknown.insert(id, value, epoch.1),
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

    fn rec(id: &str) -> Lookup {
        let now = std::time::SystemTime::now();
        Some(Arc::new(KeyRecord {
            id: id.into(),
            name: "n".into(),
            owner: "o".into(),
            tenant: None,
            scopes: vec![],
            plan: None,
            expires_at: None,
            created_at: now,
            updated_at: now,
            revoked_at: None,
            secrets: vec![],
            version: 1,
            last_used_at: None,
        }))
    }

    #[test]
    fn bounded_and_evicts_oldest_first() {
        let c = Caches::new(3, Duration::from_secs(60), Duration::from_secs(5), true);
        for id in ["a", "b", "c", "d"] {
            c.insert(id, rec(id), c.epoch());
        }
        assert_eq!(c.len(), 3);
        assert!(c.get("a").is_none());
        assert!(c.get("d").is_some());
    }

    #[test]
    fn a_read_that_raced_with_an_invalidation_is_not_cached() {
        let c = Caches::new(10, Duration::from_secs(60), Duration::from_secs(5), true);
        let before = c.epoch();
        c.invalidate("a");
        c.insert("a", rec("a"), before);
        assert!(c.get("a").is_none());
        c.insert("a", rec("a"), c.epoch());
        assert!(c.get("a").is_some());
    }

    #[test]
    fn not_live_means_not_cached() {
        let c = Caches::new(10, Duration::from_secs(60), Duration::from_secs(5), true);
        c.insert("a", rec("a"), c.epoch());
        c.set_live(false);
        assert!(c.get("a").is_none());
        c.insert("a", rec("a"), c.epoch());
        c.set_live(true);
        assert!(c.get("a").is_none());
    }

    #[test]
    fn unknown_ids_do_not_evict_known_keys() {
        let c = Caches::new(4, Duration::from_secs(60), Duration::from_secs(5), true);
        c.insert("k", rec("k"), c.epoch());
        for i in 0..100 {
            c.insert(&format!("u{i}"), None, c.epoch());
        }
        assert!(c.get("k").is_some());
        assert!(matches!(c.get("u99"), Some(None)));
    }
}
