//! The embedded key store: one redb file. redb is a pure-Rust, ACID, crash-safe B-tree store
//! that takes an exclusive lock on its file, so exactly one process owns the keys: right for a
//! single-node deployment, where no invalidation feed is needed beyond the process itself. A
//! second process on the same file fails at once with [`IN_USE`] rather than waiting: waiting
//! would only hide an upgrade strategy that runs two at once (the Helm chart's embedded store
//! uses `Recreate` for this reason).

use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};

use super::{Replaced, from_unix_ms, unix_ms};
use crate::apikey::KeyStoreError;
use crate::apikey::record::KeyRecord;
use crate::apikey::usage::{Batch, Counts, Day, UsageGroup};

/// Why a second process cannot open the file, and what to do about it.
const IN_USE: &str = "another process holds it (its lock is released when that process \
    exits). One tollgate-authz owns an embedded key store: use a Redis store for several \
    replicas, and an upgrade that stops the old process before starting the new one";

const KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("keys");
const LAST_USED: TableDefinition<&str, u64> = TableDefinition::new("last_used");
/// (key id, day) → (allowed, denied, rate limited).
const USAGE: TableDefinition<(&str, u32), (u64, u64, u64)> = TableDefinition::new("usage");
/// (group, day, name) → (allowed, denied, rate limited); name `""` for keys without one.
const USAGE_GROUPS: TableDefinition<(&str, u32, &str), (u64, u64, u64)> =
    TableDefinition::new("usage_groups");

#[derive(Clone)]
pub(crate) struct EmbeddedStore {
    db: Arc<Database>,
}

fn err(e: impl std::fmt::Display) -> KeyStoreError {
    KeyStoreError::Embedded(e.to_string())
}

impl EmbeddedStore {
    pub(crate) async fn open(path: &Path) -> Result<Self, KeyStoreError> {
        let path: PathBuf = path.to_path_buf();
        blocking(move || {
            let open_err = |reason: String| KeyStoreError::Open {
                path: path.clone(),
                reason,
            };
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| open_err(e.to_string()))?;
            }
            let db = Database::create(&path).map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => open_err(IN_USE.into()),
                e => open_err(e.to_string()),
            })?;
            // Create the tables up front so that readers never see them missing.
            let txn = db.begin_write().map_err(err)?;
            txn.open_table(KEYS).map_err(err)?;
            txn.open_table(LAST_USED).map_err(err)?;
            txn.open_table(USAGE).map_err(err)?;
            txn.open_table(USAGE_GROUPS).map_err(err)?;
            txn.commit().map_err(err)?;
            Ok(Self { db: Arc::new(db) })
        })
        .await
    }

    pub(crate) async fn get(&self, id: &str) -> Result<Option<KeyRecord>, KeyStoreError> {
        let db = self.db.clone();
        let id = id.to_string();
        blocking(move || {
            let txn = db.begin_read().map_err(err)?;
            let keys = txn.open_table(KEYS).map_err(err)?;
            let Some(bytes) = keys.get(id.as_str()).map_err(err)? else {
                return Ok(None);
            };
            let mut rec = KeyRecord::from_json(&id, bytes.value())?;
            let used = txn.open_table(LAST_USED).map_err(err)?;
            rec.last_used_at = used
                .get(id.as_str())
                .map_err(err)?
                .map(|v| from_unix_ms(v.value()));
            Ok(Some(rec))
        })
        .await
    }

    pub(crate) async fn insert(&self, rec: &KeyRecord) -> Result<bool, KeyStoreError> {
        let db = self.db.clone();
        let (id, json) = (rec.id.clone(), rec.to_json());
        blocking(move || {
            let txn = db.begin_write().map_err(err)?;
            {
                let mut keys = txn.open_table(KEYS).map_err(err)?;
                if keys.get(id.as_str()).map_err(err)?.is_some() {
                    return Ok(false);
                }
                keys.insert(id.as_str(), json.as_slice()).map_err(err)?;
            }
            txn.commit().map_err(err)?;
            Ok(true)
        })
        .await
    }

    pub(crate) async fn replace(
        &self,
        rec: &KeyRecord,
        expected: u64,
    ) -> Result<Replaced, KeyStoreError> {
        let db = self.db.clone();
        let (id, json) = (rec.id.clone(), rec.to_json());
        blocking(move || {
            let txn = db.begin_write().map_err(err)?;
            {
                let mut keys = txn.open_table(KEYS).map_err(err)?;
                let current = match keys.get(id.as_str()).map_err(err)? {
                    None => return Ok(Replaced::Missing),
                    Some(bytes) => KeyRecord::from_json(&id, bytes.value())?,
                };
                if current.version != expected {
                    return Ok(Replaced::Conflict);
                }
                keys.insert(id.as_str(), json.as_slice()).map_err(err)?;
            }
            txn.commit().map_err(err)?;
            Ok(Replaced::Done)
        })
        .await
    }

    pub(crate) async fn list(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<KeyRecord>, KeyStoreError> {
        let db = self.db.clone();
        let after = after.map(str::to_string);
        blocking(move || {
            let txn = db.begin_read().map_err(err)?;
            let keys = txn.open_table(KEYS).map_err(err)?;
            let used = txn.open_table(LAST_USED).map_err(err)?;
            let start = match after.as_deref() {
                Some(a) => Bound::Excluded(a),
                None => Bound::Unbounded,
            };
            let mut out = Vec::new();
            for item in keys
                .range::<&str>((start, Bound::Unbounded))
                .map_err(err)?
                .take(limit)
            {
                let (k, v) = item.map_err(err)?;
                let mut rec = KeyRecord::from_json(k.value(), v.value())?;
                rec.last_used_at = used
                    .get(k.value())
                    .map_err(err)?
                    .map(|v| from_unix_ms(v.value()));
                out.push(rec);
            }
            Ok(out)
        })
        .await
    }

    pub(crate) async fn touch(&self, used: &[(String, SystemTime)]) -> Result<(), KeyStoreError> {
        let db = self.db.clone();
        let used: Vec<(String, u64)> = used
            .iter()
            .map(|(id, t)| (id.clone(), unix_ms(*t)))
            .collect();
        blocking(move || {
            let txn = db.begin_write().map_err(err)?;
            {
                let mut table = txn.open_table(LAST_USED).map_err(err)?;
                for (id, ms) in &used {
                    table.insert(id.as_str(), *ms).map_err(err)?;
                }
            }
            txn.commit().map_err(err)?;
            Ok(())
        })
        .await
    }
}

impl EmbeddedStore {
    /// One transaction: a batch is applied whole or not at all, so retrying a failed one never
    /// counts twice (no sequence check needed, unlike Redis).
    pub(crate) async fn add_usage(&self, batch: &Batch) -> Result<(), KeyStoreError> {
        let db = self.db.clone();
        let batch = batch.clone();
        blocking(move || {
            let txn = db.begin_write().map_err(err)?;
            {
                let mut usage = txn.open_table(USAGE).map_err(err)?;
                for (id, day, add) in &batch.keys {
                    let key = (id.as_str(), day.0);
                    let now = usage.get(key).map_err(err)?.map(|v| counts(v.value()));
                    usage.insert(key, plus(now, *add)).map_err(err)?;
                }
                let mut groups = txn.open_table(USAGE_GROUPS).map_err(err)?;
                for (group, day, name, add) in &batch.groups {
                    let key = (group.name(), day.0, name.as_str());
                    let now = groups.get(key).map_err(err)?.map(|v| counts(v.value()));
                    groups.insert(key, plus(now, *add)).map_err(err)?;
                }
            }
            txn.commit().map_err(err)?;
            Ok(())
        })
        .await
    }

    pub(crate) async fn key_usage(
        &self,
        id: &str,
        from: Day,
        to: Day,
    ) -> Result<Vec<(Day, Counts)>, KeyStoreError> {
        let db = self.db.clone();
        let id = id.to_string();
        blocking(move || {
            let txn = db.begin_read().map_err(err)?;
            let usage = txn.open_table(USAGE).map_err(err)?;
            let mut out = Vec::new();
            for item in usage
                .range((id.as_str(), from.0)..=(id.as_str(), to.0))
                .map_err(err)?
            {
                let (k, v) = item.map_err(err)?;
                out.push((Day(k.value().1), counts(v.value())));
            }
            Ok(out)
        })
        .await
    }

    pub(crate) async fn group_usage(
        &self,
        group: UsageGroup,
        from: Day,
        to: Day,
    ) -> Result<Vec<(String, Counts)>, KeyStoreError> {
        let db = self.db.clone();
        blocking(move || {
            let txn = db.begin_read().map_err(err)?;
            let groups = txn.open_table(USAGE_GROUPS).map_err(err)?;
            let g = group.name();
            let mut out = Vec::new();
            // Ordered by (group, day, name): the range holds exactly the days asked for.
            for item in groups
                .range((g, from.0, "")..(g, to.0.saturating_add(1), ""))
                .map_err(err)?
            {
                let (k, v) = item.map_err(err)?;
                out.push((k.value().2.to_string(), counts(v.value())));
            }
            Ok(out)
        })
        .await
    }

    pub(crate) async fn purge_usage(&self, oldest: Day) -> Result<(), KeyStoreError> {
        let db = self.db.clone();
        blocking(move || {
            let txn = db.begin_write().map_err(err)?;
            {
                let mut usage = txn.open_table(USAGE).map_err(err)?;
                usage.retain(|(_, day), _| day >= oldest.0).map_err(err)?;
                let mut groups = txn.open_table(USAGE_GROUPS).map_err(err)?;
                groups
                    .retain(|(_, day, _), _| day >= oldest.0)
                    .map_err(err)?;
            }
            txn.commit().map_err(err)?;
            Ok(())
        })
        .await
    }
}

fn counts((allowed, denied, rate_limited): (u64, u64, u64)) -> Counts {
    Counts {
        allowed,
        denied,
        rate_limited,
    }
}

fn plus(now: Option<Counts>, add: Counts) -> (u64, u64, u64) {
    let mut c = now.unwrap_or_default();
    c.merge(add);
    (c.allowed, c.denied, c.rate_limited)
}

/// redb is synchronous (and fsyncs on commit): keep it off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, KeyStoreError> + Send + 'static,
) -> Result<T, KeyStoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| KeyStoreError::Task(e.to_string()))?
}
