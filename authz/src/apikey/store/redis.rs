//! The Redis key store, shared by every replica: standalone, Sentinel or Cluster (connections
//! in [`super::redis_conn`], the invalidation feed in [`super::feed`]).
//!
//! Layout under a prefix `p`: `p key:<id>` (JSON record), `p ids` (sorted set of ids for paging),
//! `p last_used` (hash id → unix ms). Every change to a record goes through a Lua script that
//! writes it and PUBLISHes the id on `p changes` in one atomic step, so no replica can observe
//! the change without the message having been sent. Each script touches one key only, so the
//! same commands work on a Cluster, where the three live in different slots: a new id is added
//! to `p ids` before its record is written, and paging skips ids without a record (left by an
//! insert that failed half way), so a listing never misses a key.

use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime};

use futures::FutureExt;
use futures::future::{BoxFuture, join_all};
use redis::{RedisResult, Script};

use super::redis_conn::{Conn, Redis};
use super::{Replaced, from_unix_ms, unix_ms};
use crate::apikey::KeyStoreError;
use crate::apikey::config::RedisStoreConfig;
use crate::apikey::record::KeyRecord;

static INSERT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('PUBLISH', ARGV[3], ARGV[2])
return 1
",
    )
});

static REPLACE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local cur = redis.call('GET', KEYS[1])
if not cur then return -1 end
if tonumber(cjson.decode(cur).version) ~= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[2])
redis.call('PUBLISH', ARGV[3], ARGV[4])
return 1
",
    )
});

/// Replicas flush on their own schedules: only ever move a last-used time forward.
static TOUCH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
for i = 1, #ARGV, 2 do
  local cur = tonumber(redis.call('HGET', KEYS[1], ARGV[i]))
  if not cur or cur < tonumber(ARGV[i + 1]) then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
",
    )
});

#[derive(Clone)]
pub(crate) struct RedisStore {
    redis: Redis,
    prefix: Arc<str>,
    timeout: Duration,
}

impl RedisStore {
    pub(crate) fn open(cfg: &RedisStoreConfig) -> Result<Self, KeyStoreError> {
        Ok(Self {
            redis: Redis::new(cfg)?,
            prefix: cfg.prefix.as_str().into(),
            timeout: cfg.timeout,
        })
    }

    pub(crate) fn redis(&self) -> &Redis {
        &self.redis
    }

    fn key(&self, id: &str) -> String {
        format!("{}key:{id}", self.prefix)
    }

    fn ids(&self) -> String {
        format!("{}ids", self.prefix)
    }

    fn last_used(&self) -> String {
        format!("{}last_used", self.prefix)
    }

    pub(crate) fn channel(&self) -> String {
        format!("{}changes", self.prefix)
    }

    /// Runs one store call within `timeout`, connection included, and tells the connection
    /// how it went.
    async fn call<T: Send>(
        &self,
        op: impl for<'c> FnOnce(&'c mut Conn) -> BoxFuture<'c, RedisResult<T>>,
    ) -> Result<T, KeyStoreError> {
        let run = async {
            let mut conn = self.redis.conn().await?;
            let out = op(&mut conn).await;
            self.redis.settle(&conn, &out);
            out.map_err(KeyStoreError::Redis)
        };
        match tokio::time::timeout(self.timeout, run).await {
            Ok(out) => out,
            Err(_) => {
                self.redis.timed_out();
                Err(KeyStoreError::Timeout)
            }
        }
    }

    /// A record without its last-used time: what a Check needs, in one command.
    pub(crate) async fn get_record(&self, id: &str) -> Result<Option<KeyRecord>, KeyStoreError> {
        let get = redis::Cmd::get(self.key(id));
        let bytes: Option<Vec<u8>> = self
            .call(move |c| async move { c.query(&get).await }.boxed())
            .await?;
        bytes.map(|b| KeyRecord::from_json(id, &b)).transpose()
    }

    pub(crate) async fn get(&self, id: &str) -> Result<Option<KeyRecord>, KeyStoreError> {
        let get = redis::Cmd::get(self.key(id));
        let used = redis::Cmd::hget(self.last_used(), id);
        let (bytes, used): (Option<Vec<u8>>, Option<u64>) = self
            .call(move |c| {
                async move {
                    // Sent together (one round trip on a node; two slots on a cluster).
                    let mut other = c.fork();
                    let (bytes, used) = futures::join!(c.query(&get), other.query(&used));
                    Ok((bytes?, used?))
                }
                .boxed()
            })
            .await?;
        let Some(bytes) = bytes else { return Ok(None) };
        let mut rec = KeyRecord::from_json(id, &bytes)?;
        rec.last_used_at = used.map(from_unix_ms);
        Ok(Some(rec))
    }

    pub(crate) async fn insert(&self, rec: &KeyRecord) -> Result<bool, KeyStoreError> {
        let (key, ids, channel) = (self.key(&rec.id), self.ids(), self.channel());
        let (id, json) = (rec.id.clone(), rec.to_json());
        let done: i64 = self
            .call(move |c| {
                async move {
                    // Listed first: a record is never written without its id in `ids`.
                    let zadd = redis::Cmd::zadd(&ids, &id, 0);
                    c.query::<()>(&zadd).await?;
                    let mut call = INSERT.key(&key);
                    call.arg(&json).arg(&id).arg(&channel);
                    c.invoke(&call).await
                }
                .boxed()
            })
            .await?;
        Ok(done == 1)
    }

    pub(crate) async fn replace(
        &self,
        rec: &KeyRecord,
        expected: u64,
    ) -> Result<Replaced, KeyStoreError> {
        let (key, channel) = (self.key(&rec.id), self.channel());
        let (id, json) = (rec.id.clone(), rec.to_json());
        let done: i64 = self
            .call(move |c| {
                async move {
                    let mut call = REPLACE.key(&key);
                    call.arg(expected).arg(&json).arg(&channel).arg(&id);
                    c.invoke(&call).await
                }
                .boxed()
            })
            .await?;
        Ok(match done {
            1 => Replaced::Done,
            0 => Replaced::Conflict,
            _ => Replaced::Missing,
        })
    }

    /// Keys in id order after `after`: pages of ids, then their records, until `limit` records
    /// or the end (ids without a record are skipped).
    pub(crate) async fn list(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<KeyRecord>, KeyStoreError> {
        let mut out = Vec::with_capacity(limit.min(1024));
        let mut after = after.map(str::to_string);
        while out.len() < limit {
            let want = limit - out.len();
            let ids = self.ids_after(after.as_deref(), want).await?;
            out.extend(self.records(&ids).await?);
            if ids.len() < want {
                break;
            }
            after = ids.last().cloned();
        }
        Ok(out)
    }

    async fn ids_after(&self, after: Option<&str>, n: usize) -> Result<Vec<String>, KeyStoreError> {
        let min = after.map_or_else(|| "-".to_string(), |a| format!("({a}"));
        let mut range = redis::cmd("ZRANGEBYLEX");
        range
            .arg(self.ids())
            .arg(min)
            .arg("+")
            .arg("LIMIT")
            .arg(0)
            .arg(n);
        self.call(move |c| async move { c.query(&range).await }.boxed())
            .await
    }

    /// The records of `ids` that exist, with their last-used times.
    async fn records(&self, ids: &[String]) -> Result<Vec<KeyRecord>, KeyStoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let gets: Vec<redis::Cmd> = ids.iter().map(|id| redis::Cmd::get(self.key(id))).collect();
        let mut hmget = redis::cmd("HMGET");
        hmget.arg(self.last_used()).arg(ids);
        let (records, used): (Vec<Option<Vec<u8>>>, Vec<Option<u64>>) = self
            .call(move |c| {
                async move {
                    // One GET per key (each key its own slot on a cluster), all in flight at once.
                    let gets = join_all(gets.iter().map(|get| {
                        let mut c = c.fork();
                        async move { c.query::<Option<Vec<u8>>>(get).await }
                    }));
                    let mut other = c.fork();
                    let (records, used) = futures::join!(gets, other.query(&hmget));
                    let records = records.into_iter().collect::<RedisResult<Vec<_>>>()?;
                    Ok((records, used?))
                }
                .boxed()
            })
            .await?;
        let mut out = Vec::with_capacity(ids.len());
        for ((id, bytes), used) in ids.iter().zip(records).zip(used) {
            let Some(bytes) = bytes else { continue };
            let mut rec = KeyRecord::from_json(id, &bytes)?;
            rec.last_used_at = used.map(from_unix_ms);
            out.push(rec);
        }
        Ok(out)
    }

    pub(crate) async fn touch(&self, used: &[(String, SystemTime)]) -> Result<(), KeyStoreError> {
        let last_used = self.last_used();
        let args: Vec<(String, u64)> = used
            .iter()
            .map(|(id, t)| (id.clone(), unix_ms(*t)))
            .collect();
        self.call(move |c| {
            async move {
                let mut call = TOUCH.key(&last_used);
                for (id, ms) in &args {
                    call.arg(id).arg(*ms);
                }
                c.invoke::<()>(&call).await
            }
            .boxed()
        })
        .await
    }
}
