//! A bounded cache of verified credentials, keyed by the SHA-256 of the credential (the cache
//! never holds a token itself), never answering past the entry's expiry nor for a signing key
//! its issuer has since withdrawn.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::Mutex;
use sha2::{Digest, Sha256};

use super::Identity;
use super::jwks::KeyId;

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
    /// The key whose signature made this identity (JWTs), so that withdrawing the key drops it.
    verified_by: Option<KeyId>,
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

    /// Caches `identity` until `until`; `verified_by` names the signing key it rests on.
    pub fn insert(
        &self,
        key: TokenHash,
        identity: Arc<Identity>,
        verified_by: Option<KeyId>,
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
        shard.insert(
            key,
            Entry {
                identity,
                until,
                verified_by,
            },
        );
    }

    /// Drops every entry verified with one of `keys` (their issuer no longer publishes them).
    pub fn forget_verified_by(&self, keys: &[KeyId]) {
        for s in self.shards.iter() {
            s.lock()
                .retain(|_, e| !e.verified_by.is_some_and(|k| keys.contains(&k)));
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
                None,
                now + Duration::from_secs(60),
                now,
            );
        }
        assert!(c.len() <= 32, "{}", c.len());
        let k = hash_token("t");
        c.insert(k, id.clone(), None, now + Duration::from_secs(10), now);
        assert!(c.get(&k, now + Duration::from_secs(9)).is_some());
        assert!(c.get(&k, now + Duration::from_secs(10)).is_none());
        c.insert(k, id, None, now, now);
        assert!(c.get(&k, now).is_none(), "already expired is not cached");
    }

    #[test]
    fn withdrawn_keys_take_their_entries_with_them() {
        let c = IdentityCache::new(32);
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let until = now + Duration::from_secs(60);
        let id = Arc::new(Identity::new(Method::Jwt, "s"));
        let (k1, k2) = (
            KeyId::of(&serde_json::json!({"kid": "1"})),
            KeyId::of(&serde_json::json!({"kid": "2"})),
        );
        c.insert(hash_token("a"), id.clone(), Some(k1), until, now);
        c.insert(hash_token("b"), id.clone(), Some(k2), until, now);
        c.insert(hash_token("c"), id, None, until, now);
        c.forget_verified_by(&[k1]);
        assert!(c.get(&hash_token("a"), now).is_none());
        assert!(c.get(&hash_token("b"), now).is_some());
        assert!(c.get(&hash_token("c"), now).is_some());
    }
}
