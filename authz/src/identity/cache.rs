//! A bounded cache of verified credentials, keyed by the SHA-256 of the credential (the cache
//! never holds a token itself) and never answering past the entry's expiry.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use super::Identity;

/// The cache key of a credential.
pub type TokenHash = [u8; 32];

/// SHA-256 of a credential.
pub fn hash_token(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

/// Verified identities by token hash. Sharded so concurrent Checks rarely contend.
pub struct IdentityCache {
    shards: Box<[Mutex<HashMap<TokenHash, Entry>>]>,
    per_shard: usize,
}

struct Entry {
    identity: Arc<Identity>,
    until: SystemTime,
}

const SHARDS: usize = 16;

impl IdentityCache {
    /// A cache of at most `capacity` entries (0 disables caching).
    pub fn new(capacity: usize) -> Self {
        let per_shard = capacity.div_ceil(SHARDS);
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard,
        }
    }

    fn shard(&self, key: &TokenHash) -> &Mutex<HashMap<TokenHash, Entry>> {
        &self.shards[key[0] as usize % SHARDS]
    }

    /// The cached identity, if present and still valid at `now`.
    pub fn get(&self, key: &TokenHash, now: SystemTime) -> Option<Arc<Identity>> {
        if self.per_shard == 0 {
            return None;
        }
        let mut shard = self.shard(key).lock();
        match shard.get(key) {
            Some(e) if now < e.until => Some(e.identity.clone()),
            Some(_) => {
                shard.remove(key);
                None
            }
            None => None,
        }
    }

    /// Caches `identity` until `until`.
    pub fn insert(
        &self,
        key: TokenHash,
        identity: Arc<Identity>,
        until: SystemTime,
        now: SystemTime,
    ) {
        if self.per_shard == 0 || until <= now {
            return;
        }
        let mut shard = self.shard(&key).lock();
        if shard.len() >= self.per_shard && !shard.contains_key(&key) {
            shard.retain(|_, e| now < e.until);
            if shard.len() >= self.per_shard {
                // Still full of live entries: drop an arbitrary one (the map's order is random
                // per process, so a client cannot aim at a particular victim).
                if let Some(k) = shard.keys().next().copied() {
                    shard.remove(&k);
                }
            }
        }
        shard.insert(key, Entry { identity, until });
    }

    /// Drops every entry (after a key-set or config change).
    pub fn clear(&self) {
        for s in self.shards.iter() {
            s.lock().clear();
        }
    }

    /// Number of entries (tests and metrics).
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Method;
    use std::time::Duration;

    #[test]
    fn bounded_and_never_past_expiry() {
        let c = IdentityCache::new(32);
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let id = Arc::new(Identity::new(Method::Jwt, "s"));
        for i in 0..1000 {
            c.insert(
                hash_token(&i.to_string()),
                id.clone(),
                now + Duration::from_secs(60),
                now,
            );
        }
        assert!(c.len() <= 32, "{}", c.len());
        let k = hash_token("t");
        c.insert(k, id.clone(), now + Duration::from_secs(10), now);
        assert!(c.get(&k, now + Duration::from_secs(9)).is_some());
        assert!(c.get(&k, now + Duration::from_secs(10)).is_none());
        c.insert(k, id, now, now);
        assert!(c.get(&k, now).is_none(), "already expired is not cached");
    }
}
