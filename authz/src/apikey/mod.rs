//! API keys: the key format, verification on the Check path, key management for the admin API,
//! and the stores behind them.
//!
//! # Layout
//! - [`format`]: `tgk_<id>_<secret><checksum>`, generation, parsing, hashing;
//! - [`record`]: what a store keeps per key (hashes, never secrets);
//! - [`limit`]: a key's own rate limit and the dynamic metadata that carries it to Envoy;
//! - [`usage`]: calls per key and UTC day, gathered in memory and written in batches;
//! - `store`: the embedded redb store and the Redis store with its invalidation feed;
//! - `cache`: the bounded cache that lets a Check skip the store.
//!
//! - `config`: the `api_keys:` section (stores and their topologies, cache, `serve_stale`,
//!   `usage`);
//! - `outage`: the store's health as Checks see it, and the serve-stale window.
//!
//! A Check parses the key (no store touched for malformed input), looks the id up in the cache
//! (or the store on a miss), compares the SHA-256 of the presented key with the stored hashes in
//! constant time, then checks revocation and expiry. Last-used times and usage counts are
//! collected in memory and written in batches, so a Check never writes to the store.
//!
//! When the store cannot answer, a key this replica verified before is still accepted from
//! the record it last read, for `serve_stale` after it last knew that record current; anything
//! else is refused as unavailable (503). See [`outage`] for when the store counts as down.

pub mod format;
pub mod limit;
pub mod record;
pub mod usage;

mod cache;
mod config;
mod outage;
mod store;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tollgate_common::clock::{Clock, SystemClock};
use tollgate_common::secret::Secret;

use crate::identity::Identity;
use crate::metrics::CacheCounters;
use cache::Caches;
pub use config::{
    ApiKeysConfig, EmbeddedStoreConfig, KeyCacheConfig, KeyStoreConfig, RedisStoreConfig,
    UsageConfig,
};
pub use limit::{KeyLimit, LimitUnit};
use outage::{Ask, Outage};
use record::{KeyRecord, KnownKey, StoredSecret};
use store::{Replaced, Store};
use usage::{Call, Usage};
pub use usage::{Day, KeyUsage, UsageGroup, UsageOutcome, UsageTotals};

/// A key store failure.
#[derive(Debug, thiserror::Error)]
pub enum KeyStoreError {
    #[error("cannot open the key database {}: {reason}", path.display())]
    Open { path: PathBuf, reason: String },
    #[error("embedded key store: {0}")]
    Embedded(String),
    #[error("redis key store: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("key store timed out")]
    Timeout,
    /// Not reachable now (reconnecting, or counted down and not probed on this call).
    #[error("key store unavailable: {0}")]
    Unavailable(String),
    #[error("key store configuration: {0}")]
    Config(String),
    #[error("stored key {id} is unreadable: {reason}")]
    Corrupt { id: String, reason: String },
    #[error("key store task failed: {0}")]
    Task(String),
}

/// Why a presented key was refused.
#[derive(Debug, thiserror::Error)]
pub enum ApiKeyError {
    /// Not a well-formed key (wrong prefix, length, alphabet or checksum); no store was asked.
    #[error("malformed API key")]
    Malformed,
    /// No such key, or the secret does not match.
    #[error("unknown API key")]
    Unknown,
    #[error("revoked API key")]
    Revoked,
    /// The key expired, or this secret was rotated out and its grace period is over.
    #[error("expired API key")]
    Expired,
    /// The store could not answer: deny (fail closed).
    #[error(transparent)]
    Store(KeyStoreError),
}

impl ApiKeyError {
    /// A bounded label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            ApiKeyError::Malformed => "malformed",
            ApiKeyError::Unknown => "unknown",
            ApiKeyError::Revoked => "revoked",
            ApiKeyError::Expired => "expired",
            ApiKeyError::Store(_) => "store_error",
        }
    }
}

/// Why a management operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ManageError {
    #[error("no such key")]
    NotFound,
    #[error("{0}")]
    Invalid(String),
    #[error("the key is revoked")]
    Revoked,
    #[error("the key is being changed concurrently; retry")]
    Busy,
    /// Usage is not counted (`api_keys.usage.enabled: false`).
    #[error("usage is not counted: api_keys.usage.enabled is false")]
    UsageOff,
    #[error(transparent)]
    Store(#[from] KeyStoreError),
}

/// A key as shown to operators: metadata, never a secret or hash.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyInfo {
    pub id: String,
    pub name: String,
    pub owner: String,
    pub tenant: Option<String>,
    pub scopes: Vec<String>,
    pub plan: Option<String>,
    /// The key's own rate limit, used instead of its plan's.
    pub rate_limit: Option<KeyLimit>,
    #[serde(with = "humantime_serde")]
    pub expires_at: Option<SystemTime>,
    #[serde(with = "humantime_serde")]
    pub created_at: SystemTime,
    #[serde(with = "humantime_serde")]
    pub updated_at: SystemTime,
    #[serde(with = "humantime_serde")]
    pub last_used_at: Option<SystemTime>,
    pub revoked: bool,
    #[serde(with = "humantime_serde")]
    pub revoked_at: Option<SystemTime>,
    /// While a rotation's grace period runs: when the previous secret stops working.
    #[serde(with = "humantime_serde")]
    pub previous_secret_valid_until: Option<SystemTime>,
}

impl KeyInfo {
    fn of(rec: &KeyRecord, now: SystemTime) -> Self {
        Self {
            id: rec.id.clone(),
            name: rec.name.clone(),
            owner: rec.owner.clone(),
            tenant: rec.tenant.clone(),
            scopes: rec.scopes.clone(),
            plan: rec.plan.clone(),
            rate_limit: rec.rate_limit,
            expires_at: rec.expires_at,
            created_at: rec.created_at,
            updated_at: rec.updated_at,
            last_used_at: rec.last_used_at,
            revoked: rec.is_revoked(),
            revoked_at: rec.revoked_at,
            previous_secret_valid_until: rec
                .secrets
                .iter()
                .filter_map(|s| s.valid_until)
                .filter(|t| *t > now)
                .max(),
        }
    }
}

/// What a new key says about itself.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct NewKey {
    pub name: String,
    pub owner: String,
    pub tenant: Option<String>,
    pub scopes: Vec<String>,
    pub plan: Option<String>,
    pub rate_limit: Option<KeyLimit>,
    pub expires_at: Option<SystemTime>,
}

/// A metadata change; `None` leaves a field as it is, `Some(None)` clears an optional one.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeyPatch {
    pub name: Option<String>,
    pub owner: Option<String>,
    pub tenant: Option<Option<String>>,
    pub scopes: Option<Vec<String>>,
    pub plan: Option<Option<String>>,
    pub rate_limit: Option<Option<KeyLimit>>,
    pub expires_at: Option<Option<SystemTime>>,
}

/// One page of keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyPage {
    pub keys: Vec<KeyInfo>,
    /// Pass as `cursor` to get the next page; absent on the last one.
    pub next_cursor: Option<String>,
}

/// The API key service: verification for Checks and management for the admin API.
/// Cheap to clone; background tasks stop when the last clone is dropped.
#[derive(Clone)]
pub struct ApiKeys {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeys")
            .field("store", &self.store_kind())
            .finish_non_exhaustive()
    }
}

struct Inner {
    store: Store,
    caches: Arc<Caches>,
    outage: Arc<Outage>,
    clock: Arc<dyn Clock>,
    /// Last-used times not yet written.
    pending: Pending,
    lookups: CacheCounters,
    /// Calls per key and day not yet written; `None` when usage is not counted.
    usage: Option<Usage>,
    /// Dropped with the last clone, which ends the background tasks.
    _stop: watch::Sender<()>,
}

const MAX_TEXT: usize = 256;
const MAX_SCOPES: usize = 100;

impl ApiKeys {
    /// Opens the configured store (Redis: waits until the invalidation feed is subscribed).
    pub async fn open(cfg: &ApiKeysConfig) -> Result<ApiKeys, KeyStoreError> {
        Self::open_with_clock(cfg, Arc::new(SystemClock)).await
    }

    /// [`ApiKeys::open`] with a given clock.
    pub async fn open_with_clock(
        cfg: &ApiKeysConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<ApiKeys, KeyStoreError> {
        let (stop_tx, stop_rx) = watch::channel(());
        let c = &cfg.cache;
        let outage = Arc::new(Outage::new(cfg.serve_stale, Instant::now()));
        let (store, caches) = match &cfg.store {
            KeyStoreConfig::Embedded(e) => {
                let store = store::embedded::EmbeddedStore::open(&e.path).await?;
                // One process owns the file and makes every change itself: always live.
                (
                    Store::Embedded(store),
                    Caches::new(c.capacity, c.ttl, c.negative_ttl, true),
                )
            }
            KeyStoreConfig::Redis(r) => {
                let store = store::redis::RedisStore::open(r)?;
                let caches = Caches::new(c.capacity, c.ttl, c.negative_ttl, false);
                store.redis().spawn_watcher(stop_rx.clone());
                let feed = store::feed::Feed {
                    redis: store.redis().clone(),
                    channel: store.channel(),
                    caches: caches.clone(),
                    outage: outage.clone(),
                    connect_timeout: r.connect_timeout,
                };
                feed.spawn(stop_rx.clone())
                    .await
                    .map_err(|_| KeyStoreError::Task("invalidation feed ended".into()))??;
                (Store::Redis(store), caches)
            }
        };
        let inner = Arc::new(Inner {
            store,
            caches,
            outage,
            clock,
            pending: Pending::new(),
            lookups: CacheCounters::new("api_key"),
            usage: cfg
                .usage
                .enabled
                .then(|| Usage::new(cfg.usage.retention_days)),
            _stop: stop_tx,
        });
        spawn_flusher(Arc::downgrade(&inner), cfg.last_used_flush);
        if inner.usage.is_some() {
            spawn_usage_flusher(Arc::downgrade(&inner), cfg.usage.flush_interval);
        }
        Ok(ApiKeys { inner })
    }

    /// Now, on the clock expiry and grace periods are judged by.
    pub fn now(&self) -> SystemTime {
        self.inner.clock.now()
    }

    /// The configured store kind (`embedded` or `redis`), for logs.
    pub fn store_kind(&self) -> &'static str {
        self.inner.store.kind()
    }

    /// Verifies a presented key and returns the identity it stands for.
    pub async fn verify(&self, presented: &str) -> Result<Arc<Identity>, ApiKeyError> {
        let key = format::parse(presented).map_err(|_| ApiKeyError::Malformed)?;
        match self.lookup(key.id()).await {
            Ok(Some(known)) => {
                let decided = self.decide(&key, &known);
                // Only holders of a matching secret are told revoked or expired: those calls
                // were made with this key. A wrong secret is not this key's use.
                if matches!(decided, Err(ApiKeyError::Revoked | ApiKeyError::Expired)) {
                    let rec = &known.record;
                    self.count(
                        &rec.id,
                        rec.plan.as_deref(),
                        rec.tenant.as_deref(),
                        UsageOutcome::Denied,
                    );
                }
                decided
            }
            Ok(None) => Err(ApiKeyError::Unknown),
            Err(e) => self.decide_from_last_known(&key, e),
        }
    }

    /// The decision on a presented key given its record.
    fn decide(
        &self,
        key: &format::ParsedKey<'_>,
        known: &KnownKey,
    ) -> Result<Arc<Identity>, ApiKeyError> {
        let Some(identity) = known.identity(&key.hash()) else {
            return Err(ApiKeyError::Unknown);
        };
        // Revocation and expiry are only told to holders of a matching secret.
        if known.record.is_revoked() {
            return Err(ApiKeyError::Revoked);
        }
        let now = self.inner.clock.now();
        if identity.expires_at.is_some_and(|t| t <= now) {
            return Err(ApiKeyError::Expired);
        }
        self.inner.pending.note(key.id(), now);
        Ok(identity.clone())
    }

    /// The store could not answer: a key is still accepted on the record last read for it, if
    /// that was current within `serve_stale`. Anything else, a refusal from that record
    /// included (the key may have been rotated meanwhile), is the store's error.
    fn decide_from_last_known(
        &self,
        key: &format::ParsedKey<'_>,
        error: KeyStoreError,
    ) -> Result<Arc<Identity>, ApiKeyError> {
        let outage = &self.inner.outage;
        let window = outage.serve_stale();
        let last = if window.is_zero() {
            None
        } else {
            self.inner
                .caches
                .last_known(key.id(), Instant::now(), window)
        };
        if let Some(known) = last
            && let Ok(identity) = self.decide(key, &known)
        {
            outage.served_stale();
            return Ok(identity);
        }
        outage.refused();
        Err(ApiKeyError::Store(error))
    }

    async fn lookup(&self, id: &str) -> Result<Option<Arc<KnownKey>>, KeyStoreError> {
        let caches = &self.inner.caches;
        let now = Instant::now();
        if let Some(hit) = caches.get(id, now) {
            self.inner.lookups.hit();
            return Ok(hit);
        }
        self.inner.lookups.miss();
        let outage = &self.inner.outage;
        if outage.ask(now) == Ask::Skip {
            return Err(KeyStoreError::Unavailable(
                "down; asked again shortly".into(),
            ));
        }
        let epoch = caches.epoch(id);
        // Boxed: a store read is a cache miss; inline its state would grow every Check's future.
        match Box::pin(self.inner.store.get_record(id)).await {
            Ok(rec) => {
                outage.read_ok();
                let known = rec.map(|r| Arc::new(KnownKey::new(r)));
                caches.insert(id, known.clone(), epoch, now);
                Ok(known)
            }
            Err(e) => {
                outage.read_failed(&e, Instant::now());
                Err(e)
            }
        }
    }

    /// Writes pending last-used times now (also done every `last_used_flush`; call it at
    /// shutdown so the last batch is not lost).
    pub async fn flush_last_used(&self) -> Result<(), KeyStoreError> {
        flush(&self.inner.store, &self.inner.pending).await
    }

    /// Counts one call made with an API key, with its final outcome, in the key's usage: a
    /// no-op for other identities and when usage is not counted. Call it once per Check that
    /// authenticated an API key (a refusal for a revoked or expired key is counted by
    /// [`ApiKeys::verify`] itself). Costs a lock on a small in-memory map, never a store write.
    pub fn record_usage(&self, identity: &Identity, outcome: UsageOutcome) {
        if let Some(id) = &identity.key_id {
            self.count(
                id,
                identity.plan.as_deref(),
                identity.tenant.as_deref(),
                outcome,
            );
        }
    }

    fn count(&self, key_id: &str, plan: Option<&str>, tenant: Option<&str>, outcome: UsageOutcome) {
        if let Some(usage) = &self.inner.usage {
            let day = Day::of(self.inner.clock.now());
            let call = Call {
                key_id,
                plan,
                tenant,
                day,
            };
            usage.record(&call, outcome);
        }
    }

    /// Writes pending usage counts now (also done every `usage.flush_interval`).
    pub async fn flush_usage(&self) -> Result<(), KeyStoreError> {
        flush_usage(&self.inner).await
    }

    /// Writes everything gathered in memory (last-used times, usage counts): call it at
    /// shutdown, once no more Checks arrive. Logs what could not be written.
    pub async fn flush(&self) {
        if let Err(e) = self.flush_last_used().await {
            tracing::warn!(error = %e, "could not write last-used times at shutdown");
        }
        if let Err(e) = self.flush_usage().await {
            let lost = match &self.inner.usage {
                Some(u) => u.unwritten().await,
                None => 0,
            };
            tracing::warn!(error = %e, calls = lost, "could not write usage counts at shutdown; these calls are not counted");
        }
    }

    /// A key's calls per day on `from..=to` (UTC days), with this process's calls not yet
    /// written. Days before the retention window are never listed.
    pub async fn usage(&self, id: &str, from: Day, to: Day) -> Result<KeyUsage, ManageError> {
        let usage = self.inner.usage.as_ref().ok_or(ManageError::UsageOff)?;
        let key = self.get(id).await?;
        let oldest = usage.oldest_kept(Day::of(self.inner.clock.now()));
        let stored = if to < oldest {
            Vec::new()
        } else {
            self.inner
                .store
                .key_usage(&key.id, from.max(oldest), to)
                .await?
        };
        let days = usage.with_pending(&key.id, from.max(oldest), to, stored);
        let mut totals = usage::Counts::default();
        for d in &days {
            totals.merge(d.counts);
        }
        Ok(KeyUsage {
            key_id: key.id,
            from,
            to,
            retention_days: usage.retention_days(),
            days,
            totals,
        })
    }

    /// Calls per plan or tenant on `from..=to`, with this process's calls not yet written.
    pub async fn usage_totals(
        &self,
        group: UsageGroup,
        from: Day,
        to: Day,
    ) -> Result<UsageTotals, ManageError> {
        let usage = self.inner.usage.as_ref().ok_or(ManageError::UsageOff)?;
        let oldest = usage.oldest_kept(Day::of(self.inner.clock.now()));
        let stored = if to < oldest {
            Vec::new()
        } else {
            self.inner
                .store
                .group_usage(group, from.max(oldest), to)
                .await?
        };
        Ok(UsageTotals {
            group_by: group,
            from,
            to,
            retention_days: usage.retention_days(),
            groups: usage.groups_with_pending(group, from.max(oldest), to, stored),
        })
    }

    /// The UTC day now (by the service's clock).
    pub fn today(&self) -> Day {
        Day::of(self.inner.clock.now())
    }

    /// Creates a key. Returns its metadata and the key itself, which is shown this once.
    pub async fn create(&self, new: NewKey) -> Result<(KeyInfo, Secret), ManageError> {
        check_text("name", &new.name, true)?;
        check_text("owner", &new.owner, true)?;
        check_opt("tenant", new.tenant.as_deref())?;
        check_opt("plan", new.plan.as_deref())?;
        check_scopes(&new.scopes)?;
        check_limit(new.rate_limit.as_ref())?;
        let now = self.inner.clock.now();
        if new.expires_at.is_some_and(|t| t <= now) {
            return Err(ManageError::Invalid(
                "expires_at must be in the future".into(),
            ));
        }
        for _ in 0..4 {
            let id = format::generate_id();
            let key = format::generate_key(&id);
            let rec = KeyRecord {
                id: id.clone(),
                name: new.name.clone(),
                owner: new.owner.clone(),
                tenant: new.tenant.clone(),
                scopes: new.scopes.clone(),
                plan: new.plan.clone(),
                rate_limit: new.rate_limit,
                expires_at: new.expires_at,
                created_at: now,
                updated_at: now,
                revoked_at: None,
                secrets: vec![StoredSecret {
                    hash: format::KeyHash::of(&key),
                    created_at: now,
                    valid_until: None,
                }],
                version: 1,
                last_used_at: None,
            };
            if self.inner.store.insert(&rec).await? {
                self.inner.caches.invalidate(&id);
                return Ok((self.info(&rec), Secret::new(key)));
            }
        }
        // 71-bit random ids colliding four times in a row means the RNG is broken.
        Err(ManageError::Busy)
    }

    /// One key's metadata.
    pub async fn get(&self, id: &str) -> Result<KeyInfo, ManageError> {
        if !format::is_valid_id(id) {
            return Err(ManageError::NotFound);
        }
        let rec = self
            .inner
            .store
            .get(id)
            .await?
            .ok_or(ManageError::NotFound)?;
        Ok(self.info(&rec))
    }

    /// A page of keys in id order, after `cursor`.
    pub async fn list(&self, cursor: Option<&str>, limit: usize) -> Result<KeyPage, ManageError> {
        if cursor.is_some_and(|c| !format::is_valid_id(c)) {
            return Err(ManageError::Invalid("cursor is not a key id".into()));
        }
        let limit = limit.clamp(1, 1000);
        let mut recs = self.inner.store.list(cursor, limit + 1).await?;
        let next_cursor = if recs.len() > limit {
            recs.truncate(limit);
            recs.last().map(|r| r.id.clone())
        } else {
            None
        };
        let keys = recs.iter().map(|r| self.info(r)).collect();
        Ok(KeyPage { keys, next_cursor })
    }

    /// Changes metadata.
    pub async fn update(&self, id: &str, patch: KeyPatch) -> Result<KeyInfo, ManageError> {
        if let Some(n) = &patch.name {
            check_text("name", n, true)?;
        }
        if let Some(o) = &patch.owner {
            check_text("owner", o, true)?;
        }
        if let Some(t) = &patch.tenant {
            check_opt("tenant", t.as_deref())?;
        }
        if let Some(p) = &patch.plan {
            check_opt("plan", p.as_deref())?;
        }
        if let Some(s) = &patch.scopes {
            check_scopes(s)?;
        }
        if let Some(l) = &patch.rate_limit {
            check_limit(l.as_ref())?;
        }
        let (rec, ()) = self
            .modify(id, |rec, _| {
                let p = patch.clone();
                if let Some(v) = p.name {
                    rec.name = v;
                }
                if let Some(v) = p.owner {
                    rec.owner = v;
                }
                if let Some(v) = p.tenant {
                    rec.tenant = v;
                }
                if let Some(v) = p.scopes {
                    rec.scopes = v;
                }
                if let Some(v) = p.plan {
                    rec.plan = v;
                }
                if let Some(v) = p.rate_limit {
                    rec.rate_limit = v;
                }
                if let Some(v) = p.expires_at {
                    rec.expires_at = v;
                }
                Ok(())
            })
            .await?;
        Ok(self.info(&rec))
    }

    /// Revokes a key at once, on every replica. Revoking twice is not an error.
    pub async fn revoke(&self, id: &str) -> Result<KeyInfo, ManageError> {
        let (rec, ()) = self
            .modify(id, |rec, now| {
                rec.revoked_at.get_or_insert(now);
                Ok(())
            })
            .await?;
        Ok(self.info(&rec))
    }

    /// Gives a key a new secret (same id); the previous one keeps working for `grace`.
    pub async fn rotate(
        &self,
        id: &str,
        grace: Duration,
    ) -> Result<(KeyInfo, Secret), ManageError> {
        let (rec, key) = self
            .modify(id, |rec, now| {
                if rec.is_revoked() {
                    return Err(ManageError::Revoked);
                }
                let key = format::generate_key(&rec.id);
                rec.rotate(&format::KeyHash::of(&key), grace, now);
                Ok(key)
            })
            .await?;
        Ok((self.info(&rec), Secret::new(key)))
    }

    /// Read, change, write back if nobody else wrote meanwhile; retried a few times.
    async fn modify<T>(
        &self,
        id: &str,
        mut change: impl FnMut(&mut KeyRecord, SystemTime) -> Result<T, ManageError>,
    ) -> Result<(KeyRecord, T), ManageError> {
        if !format::is_valid_id(id) {
            return Err(ManageError::NotFound);
        }
        for _ in 0..8 {
            let current = self
                .inner
                .store
                .get(id)
                .await?
                .ok_or(ManageError::NotFound)?;
            let mut next = current.clone();
            let now = self.inner.clock.now();
            let out = change(&mut next, now)?;
            next.version = current.version + 1;
            next.updated_at = now;
            match self.inner.store.replace(&next, current.version).await? {
                Replaced::Done => {
                    // Local replicas learn at once; others through the store's feed.
                    self.inner.caches.invalidate(id);
                    return Ok((next, out));
                }
                Replaced::Conflict => continue,
                Replaced::Missing => return Err(ManageError::NotFound),
            }
        }
        Err(ManageError::Busy)
    }

    /// The operator's view of a record, with last uses not yet written.
    fn info(&self, rec: &KeyRecord) -> KeyInfo {
        let mut info = KeyInfo::of(rec, self.inner.clock.now());
        if let Some(t) = self.inner.pending.get(&info.id) {
            info.last_used_at = Some(info.last_used_at.map_or(t, |s| s.max(t)));
        }
        info
    }

    #[cfg(test)]
    pub(crate) fn cached_entries(&self) -> usize {
        self.inner.caches.len()
    }

    /// Checks accepted from a key's last known state, so far.
    #[cfg(test)]
    pub(crate) fn stale_decisions(&self) -> u64 {
        self.inner.outage.stale_total()
    }
}

/// Last-used times not yet written, in shards by key id: a Check locks one shard, and
/// allocates only for the first use of a key since the last write.
struct Pending {
    shards: Box<[Mutex<HashMap<String, SystemTime>>]>,
}

impl Pending {
    const SHARDS: usize = 16;

    fn new() -> Self {
        Self {
            shards: (0..Self::SHARDS)
                .map(|_| Mutex::new(HashMap::new()))
                .collect(),
        }
    }

    fn shard(&self, id: &str) -> &Mutex<HashMap<String, SystemTime>> {
        let b = id.as_bytes().first().copied().unwrap_or(0) as usize;
        &self.shards[b % Self::SHARDS]
    }

    fn note(&self, id: &str, now: SystemTime) {
        let mut shard = self.shard(id).lock();
        match shard.get_mut(id) {
            Some(t) => *t = now,
            None => {
                shard.insert(id.to_string(), now);
            }
        }
    }

    fn get(&self, id: &str) -> Option<SystemTime> {
        self.shard(id).lock().get(id).copied()
    }

    fn take(&self) -> Vec<(String, SystemTime)> {
        let mut batch = Vec::new();
        for shard in self.shards.iter() {
            batch.extend(std::mem::take(&mut *shard.lock()));
        }
        batch
    }

    /// Puts back a batch that could not be written, unless newer uses arrived meanwhile.
    fn restore(&self, batch: Vec<(String, SystemTime)>) {
        for (id, t) in batch {
            self.shard(&id).lock().entry(id).or_insert(t);
        }
    }
}

async fn flush(store: &Store, pending: &Pending) -> Result<(), KeyStoreError> {
    let batch = pending.take();
    let r = store.touch(&batch).await;
    if r.is_err() {
        // Last-used is best effort: kept for the next attempt.
        pending.restore(batch);
    }
    r
}

async fn flush_usage(inner: &Inner) -> Result<(), KeyStoreError> {
    match &inner.usage {
        Some(u) => u.flush(&inner.store, Day::of(inner.clock.now())).await,
        None => Ok(()),
    }
}

/// Writes usage counts every `every` (weakly held, as [`spawn_flusher`]). A failed write is
/// retried at the next tick; the store's outage is logged by its own throttled lines.
fn spawn_usage_flusher(inner: std::sync::Weak<Inner>, every: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(inner) = inner.upgrade() else { return };
            if let Err(e) = flush_usage(&inner).await {
                tracing::warn!(error = %e, "cannot write API key usage counts; retrying at the next flush");
            }
        }
    });
}

/// Writes last-used times every `every`. Holds only a weak reference, so that dropping the
/// last [`ApiKeys`] closes the store at once (the embedded file can then be reopened).
fn spawn_flusher(inner: std::sync::Weak<Inner>, every: Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(inner) = inner.upgrade() else { return };
            if let Err(e) = flush(&inner.store, &inner.pending).await {
                tracing::warn!(error = %e, "cannot record API key last-used times");
            }
        }
    });
}

fn check_text(field: &str, v: &str, required: bool) -> Result<(), ManageError> {
    if required && v.trim().is_empty() {
        return Err(ManageError::Invalid(format!("{field} must not be empty")));
    }
    if v.len() > MAX_TEXT {
        return Err(ManageError::Invalid(format!(
            "{field} is longer than {MAX_TEXT} bytes"
        )));
    }
    // These values become upstream headers and metadata: no control characters at all.
    if v.chars().any(char::is_control) {
        return Err(ManageError::Invalid(format!(
            "{field} must not contain control characters"
        )));
    }
    Ok(())
}

fn check_opt(field: &str, v: Option<&str>) -> Result<(), ManageError> {
    v.map_or(Ok(()), |v| check_text(field, v, true))
}

fn check_limit(limit: Option<&KeyLimit>) -> Result<(), ManageError> {
    limit.map_or(Ok(()), |l| l.check().map_err(ManageError::Invalid))
}

fn check_scopes(scopes: &[String]) -> Result<(), ManageError> {
    if scopes.len() > MAX_SCOPES {
        return Err(ManageError::Invalid(format!("at most {MAX_SCOPES} scopes")));
    }
    for s in scopes {
        // RFC 6749 scope-token: printable ASCII except space, `"` and `\`.
        if s.is_empty()
            || s.len() > MAX_TEXT
            || !s
                .bytes()
                .all(|c| (0x21..=0x7e).contains(&c) && c != b'"' && c != b'\\')
        {
            return Err(ManageError::Invalid(format!("invalid scope {s:?}")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod outage_tests;
#[cfg(test)]
pub(crate) mod tests;
#[cfg(test)]
mod topology_tests;
#[cfg(test)]
mod usage_tests;
