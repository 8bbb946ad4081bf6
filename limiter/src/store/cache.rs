//! The local over-limit cache: counters known to be over their limit until a given time are
//! answered here, so an abusive client costs no Redis traffic.
//!
//! When the store rejects an enforced hit, it also says when the same hit could next be
//! admitted (`retry_after`, computed exactly from the counter). Until then no other replica's
//! traffic can make room (traffic only consumes), so a request with that hit, at that cost or
//! more, is rejected locally with the same answer the store would give. The one exception is
//! a Redis Cluster refund after a cross-slot rejection, which may free quota a little earlier:
//! the cache can only be stricter, never admit more.
//!
//! Bounded: at most `max_keys` entries, sharded; a full shard drops its expired entries and,
//! if still full, simply does not cache (the store still answers correctly).

use std::hash::BuildHasher;
use std::time::{Duration, SystemTime};

use futures::future::BoxFuture;
use hashbrown::{DefaultHashBuilder, HashTable};
use parking_lot::Mutex;

use super::{Hit, Outcome, Store, StoreError, micros};
use crate::algorithm::Rule;

const SHARDS: usize = 16;

struct Blocked {
    key: Box<str>,
    rule: Rule,
    until_us: u64,
    /// The smallest cost known to be rejected until `until_us`.
    min_cost: u64,
}

/// A [`Store`] wrapper answering known-over-limit hits locally.
pub struct OverLimitCache<S> {
    inner: S,
    shards: Box<[Mutex<HashTable<Blocked>>]>,
    hasher: DefaultHashBuilder,
    per_shard: usize,
}

impl<S> std::fmt::Debug for OverLimitCache<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OverLimitCache")
            .field("per_shard", &self.per_shard)
            .finish_non_exhaustive()
    }
}

impl<S: Store> OverLimitCache<S> {
    pub fn new(inner: S, max_keys: usize) -> Self {
        Self {
            inner,
            shards: (0..SHARDS).map(|_| Mutex::new(HashTable::new())).collect(),
            hasher: DefaultHashBuilder::default(),
            per_shard: max_keys.div_ceil(SHARDS).max(1),
        }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }

    /// Number of cached entries (expired ones included until dropped).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shard(&self, hash: u64) -> &Mutex<HashTable<Blocked>> {
        &self.shards[(hash >> 60) as usize % SHARDS]
    }

    /// Until when this hit is known to be rejected.
    fn blocked_until(&self, h: &Hit<'_>, now_us: u64) -> Option<u64> {
        if h.shadow || h.cost == 0 {
            return None;
        }
        let hash = self.hasher.hash_one((h.key, h.rule));
        let shard = self.shard(hash).lock();
        let b = shard.find(hash, |b| b.rule == h.rule && *b.key == *h.key)?;
        (b.until_us > now_us && h.cost >= b.min_cost).then_some(b.until_us)
    }

    fn remember(&self, h: &Hit<'_>, until_us: u64, now_us: u64) {
        let hash = self.hasher.hash_one((h.key, h.rule));
        let mut shard = self.shard(hash).lock();
        if let Some(b) = shard.find_mut(hash, |b| b.rule == h.rule && *b.key == *h.key) {
            if b.until_us <= now_us || h.cost < b.min_cost {
                b.min_cost = h.cost;
            }
            b.until_us = until_us;
            return;
        }
        if shard.len() >= self.per_shard {
            shard.retain(|b| b.until_us > now_us);
            if shard.len() >= self.per_shard {
                return;
            }
        }
        let b = Blocked {
            key: h.key.into(),
            rule: h.rule,
            until_us,
            min_cost: h.cost,
        };
        shard.insert_unique(hash, b, |b| self.hasher.hash_one((&*b.key, b.rule)));
    }

    async fn hit_inner(
        &self,
        hits: &[Hit<'_>],
        now: SystemTime,
    ) -> Result<Vec<Outcome>, StoreError> {
        let now_us = micros(now);
        let blocked: Vec<Option<u64>> =
            hits.iter().map(|h| self.blocked_until(h, now_us)).collect();
        if blocked.iter().any(Option::is_some) {
            return Ok(hits
                .iter()
                .zip(blocked)
                .map(|(h, until)| match until {
                    Some(until) => {
                        let wait = Duration::from_micros(until - now_us);
                        Outcome {
                            admitted: false,
                            remaining: 0,
                            reset_after: wait,
                            retry_after: Some(wait),
                            cached: true,
                        }
                    }
                    None => Outcome {
                        admitted: true,
                        remaining: h.rule.limit,
                        reset_after: Duration::ZERO,
                        retry_after: None,
                        cached: true,
                    },
                })
                .collect());
        }
        let outcomes = self.inner.hit(hits, now).await?;
        for (h, o) in hits.iter().zip(&outcomes) {
            if let (false, false, Some(wait)) = (o.admitted, h.shadow, o.retry_after)
                && h.cost > 0
                && !wait.is_zero()
            {
                self.remember(h, now_us + wait.as_micros() as u64, now_us);
            }
        }
        Ok(outcomes)
    }
}

impl<S: Store> Store for OverLimitCache<S> {
    fn hit<'a>(
        &'a self,
        hits: &'a [Hit<'a>],
        now: SystemTime,
    ) -> BoxFuture<'a, Result<Vec<Outcome>, StoreError>> {
        Box::pin(self.hit_inner(hits, now))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::UNIX_EPOCH;

    use super::*;
    use crate::algorithm::Algorithm;
    use crate::store::{MemoryOptions, MemoryStore};

    /// A memory store that counts the calls reaching it.
    struct Counting(MemoryStore, AtomicUsize);

    impl Store for Counting {
        fn hit<'a>(
            &'a self,
            hits: &'a [Hit<'a>],
            now: SystemTime,
        ) -> BoxFuture<'a, Result<Vec<Outcome>, StoreError>> {
            self.1.fetch_add(1, Ordering::Relaxed);
            self.0.hit(hits, now)
        }
    }

    #[tokio::test]
    async fn over_limit_keys_are_answered_locally_until_retry() {
        let store = OverLimitCache::new(
            Counting(
                MemoryStore::new(&MemoryOptions::default()),
                AtomicUsize::new(0),
            ),
            100,
        );
        let rule = Rule::new(Algorithm::FixedWindow, 2, Duration::from_secs(10));
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let hit = [Hit {
            key: "abuser",
            rule,
            cost: 1,
            shadow: false,
        }];
        for _ in 0..3 {
            store.hit(&hit, t0).await.unwrap();
        }
        assert_eq!(store.inner().1.load(Ordering::Relaxed), 3);
        for _ in 0..100 {
            let o = store.hit(&hit, t0 + Duration::from_secs(5)).await.unwrap();
            assert!(!o[0].admitted && o[0].cached);
            assert_eq!(o[0].retry_after, Some(Duration::from_secs(5)));
        }
        assert_eq!(
            store.inner().1.load(Ordering::Relaxed),
            3,
            "no store traffic while over limit"
        );
        // Cost 0 (a check) and shadow hits still go to the store.
        store.hit(&[Hit { cost: 0, ..hit[0] }], t0).await.unwrap();
        assert_eq!(store.inner().1.load(Ordering::Relaxed), 4);
        // At the window's end the store is asked again and admits.
        let o = store.hit(&hit, t0 + Duration::from_secs(10)).await.unwrap();
        assert!(o[0].admitted && !o[0].cached);
    }
}
