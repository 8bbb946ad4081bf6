//! Key stores: the embedded on-disk database (default, one node) and Redis (shared by
//! replicas: standalone, Sentinel or Cluster). Both keep records under a version number, so
//! concurrent admin changes never overwrite each other silently, and keep last-used times and
//! usage counters apart so that those batched writes never conflict with a change.
//!
//! # Layout
//! - `embedded`: the redb file;
//! - `redis`: the Redis layout and its scripts;
//! - `redis_conn`: connections per topology (reconnects, Sentinel failover, Cluster);
//! - `feed`: the invalidation feed that keeps each replica's cache honest.

pub(crate) mod embedded;
pub(crate) mod feed;
pub(crate) mod redis;
mod redis_conn;

use std::time::SystemTime;

use super::KeyStoreError;
use super::record::KeyRecord;
use super::usage::{Batch, Counts, Day, UsageGroup, Write};

/// The outcome of a versioned replace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Replaced {
    Done,
    /// Someone else changed the key since it was read.
    Conflict,
    Missing,
}

#[derive(Clone)]
pub(crate) enum Store {
    Embedded(embedded::EmbeddedStore),
    Redis(redis::RedisStore),
}

impl Store {
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            Store::Embedded(_) => "embedded",
            Store::Redis(_) => "redis",
        }
    }

    pub(crate) async fn get(&self, id: &str) -> Result<Option<KeyRecord>, KeyStoreError> {
        let r = match self {
            Store::Embedded(s) => s.get(id).await,
            Store::Redis(s) => s.get(id).await,
        };
        self.count_error("get", r)
    }

    /// A record without its last-used time (the Check path: one round trip, one slot).
    pub(crate) async fn get_record(&self, id: &str) -> Result<Option<KeyRecord>, KeyStoreError> {
        let r = match self {
            Store::Embedded(s) => s.get(id).await,
            Store::Redis(s) => s.get_record(id).await,
        };
        self.count_error("get", r)
    }

    /// Adds a new key; `false` when the id is taken.
    pub(crate) async fn insert(&self, rec: &KeyRecord) -> Result<bool, KeyStoreError> {
        let r = match self {
            Store::Embedded(s) => s.insert(rec).await,
            Store::Redis(s) => s.insert(rec).await,
        };
        self.count_error("insert", r)
    }

    /// Replaces a key if its stored version is still `expected`.
    pub(crate) async fn replace(
        &self,
        rec: &KeyRecord,
        expected: u64,
    ) -> Result<Replaced, KeyStoreError> {
        let r = match self {
            Store::Embedded(s) => s.replace(rec, expected).await,
            Store::Redis(s) => s.replace(rec, expected).await,
        };
        self.count_error("replace", r)
    }

    /// Keys in id order, strictly after `after`.
    pub(crate) async fn list(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<KeyRecord>, KeyStoreError> {
        let r = match self {
            Store::Embedded(s) => s.list(after, limit).await,
            Store::Redis(s) => s.list(after, limit).await,
        };
        self.count_error("list", r)
    }

    /// Records last-used times (a batch).
    pub(crate) async fn touch(&self, used: &[(String, SystemTime)]) -> Result<(), KeyStoreError> {
        if used.is_empty() {
            return Ok(());
        }
        let r = match self {
            Store::Embedded(s) => s.touch(used).await,
            Store::Redis(s) => s.touch(used).await,
        };
        self.count_error("touch", r)
    }

    /// Adds a usage batch (idempotent per replica and sequence; see `usage`).
    pub(crate) async fn add_usage(
        &self,
        batch: &Batch,
        write: &Write<'_>,
    ) -> Result<(), KeyStoreError> {
        let r = match self {
            Store::Embedded(s) => s.add_usage(batch).await,
            Store::Redis(s) => s.add_usage(batch, write).await,
        };
        self.count_error("add_usage", r)
    }

    /// A key's stored counts per day on `from..=to`, days without calls left out.
    pub(crate) async fn key_usage(
        &self,
        id: &str,
        from: Day,
        to: Day,
    ) -> Result<Vec<(Day, Counts)>, KeyStoreError> {
        let r = match self {
            Store::Embedded(s) => s.key_usage(id, from, to).await,
            Store::Redis(s) => s.key_usage(id, from, to).await,
        };
        self.count_error("key_usage", r)
    }

    /// Stored counts per name of `group` on `from..=to` (one entry per name and day).
    pub(crate) async fn group_usage(
        &self,
        group: UsageGroup,
        from: Day,
        to: Day,
    ) -> Result<Vec<(String, Counts)>, KeyStoreError> {
        let r = match self {
            Store::Embedded(s) => s.group_usage(group, from, to).await,
            Store::Redis(s) => s.group_usage(group, from, to).await,
        };
        self.count_error("group_usage", r)
    }

    /// Deletes the counters of days before `oldest` (Redis expires them by itself).
    pub(crate) async fn purge_usage(&self, oldest: Day) -> Result<(), KeyStoreError> {
        let r = match self {
            Store::Embedded(s) => s.purge_usage(oldest).await,
            Store::Redis(_) => Ok(()),
        };
        self.count_error("purge_usage", r)
    }

    fn count_error<T>(
        &self,
        op: &'static str,
        r: Result<T, KeyStoreError>,
    ) -> Result<T, KeyStoreError> {
        if r.is_err() {
            metrics::counter!(STORE_OP_ERRORS, "store" => self.kind(), "op" => op).increment(1);
        }
        r
    }
}

/// Failed store operations by store and operation (Check, admin and background alike); the
/// Check path's own count is `tollgate_authz_key_store_errors_total`.
pub(crate) const STORE_OP_ERRORS: &str = "tollgate_authz_key_store_operation_errors_total";

pub(crate) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub(crate) fn from_unix_ms(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(ms)
}
