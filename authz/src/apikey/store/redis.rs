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
//!
//! Usage lives in hashes, one per key and day, `p usage:<id>:<YYYY-MM-DD>` (fields `allowed`,
//! `denied`, `rate_limited`), and one per group and day, `p usage_by_plan:<day>` and
//! `p usage_by_tenant:<day>` (fields `allowed:<name>`, ...). Each also holds `seq:<replica>`, the
//! last batch of that replica it took: [`ADD_USAGE`] adds a batch only once. Each expires
//! `retention_days` after its day began.

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
use crate::apikey::usage::{Batch, Counts, Day, UsageGroup, Write};

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

/// Adds to counters in one hash unless this replica's batch `seq` (or a later one) was added.
/// KEYS[1] the hash; ARGV: the sequence field, seq, expiry (unix s), then field/increment pairs.
static ADD_USAGE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
local seen = tonumber(redis.call('HGET', KEYS[1], ARGV[1]))
if seen and seen >= tonumber(ARGV[2]) then return 0 end
for i = 4, #ARGV, 2 do
  redis.call('HINCRBY', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('EXPIREAT', KEYS[1], ARGV[3])
return 1
",
    )
});

/// Commands of one usage write or read sent in one store call (all in flight at once).
const USAGE_CHUNK: usize = 256;

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

/// Usage counters.
impl RedisStore {
    fn key_day(&self, id: &str, day: Day) -> String {
        format!("{}usage:{id}:{day}", self.prefix)
    }

    fn group_day(&self, group: UsageGroup, day: Day) -> String {
        format!("{}usage_by_{}:{day}", self.prefix, group.name())
    }

    /// One script call per hash, a chunk of them per store call; a chunk that fails leaves
    /// the batch to be retried whole (the hashes already added skip it then).
    pub(crate) async fn add_usage(
        &self,
        batch: &Batch,
        write: &Write<'_>,
    ) -> Result<(), KeyStoreError> {
        let adds = self.usage_adds(batch, write);
        for chunk in adds.chunks(USAGE_CHUNK) {
            let chunk = chunk.to_vec();
            self.call(move |c| {
                async move {
                    let sent = join_all(chunk.iter().map(|add| {
                        let mut c = c.fork();
                        let mut call = ADD_USAGE.key(&add.hash);
                        for a in &add.args {
                            call.arg(a);
                        }
                        async move { c.invoke::<i64>(&call).await }
                    }));
                    sent.await.into_iter().collect::<RedisResult<Vec<i64>>>()?;
                    Ok(())
                }
                .boxed()
            })
            .await?;
        }
        Ok(())
    }

    /// The script calls of a batch: one per key and day, one per group and day.
    fn usage_adds(&self, batch: &Batch, write: &Write<'_>) -> Vec<UsageAdd> {
        let add = |hash: String, day: Day, fields: Vec<(String, u64)>| {
            let expires = unix_ms(write.expires_at(day)) / 1000;
            let mut args = vec![
                format!("seq:{}", write.replica),
                batch.seq.to_string(),
                expires.to_string(),
            ];
            for (f, n) in fields.into_iter().filter(|(_, n)| *n > 0) {
                args.push(f);
                args.push(n.to_string());
            }
            UsageAdd { hash, args }
        };
        let mut out = Vec::new();
        for (id, day, c) in &batch.keys {
            let fields = c.by_outcome().map(|(f, n)| (f.to_string(), n)).into();
            out.push(add(self.key_day(id, *day), *day, fields));
        }
        let mut groups: std::collections::BTreeMap<(UsageGroup, Day), Vec<(String, u64)>> =
            std::collections::BTreeMap::new();
        for (group, day, name, c) in &batch.groups {
            let fields = groups.entry((*group, *day)).or_default();
            fields.extend(c.by_outcome().map(|(f, n)| (format!("{f}:{name}"), n)));
        }
        for ((group, day), fields) in groups {
            out.push(add(self.group_day(group, day), day, fields));
        }
        out
    }

    pub(crate) async fn key_usage(
        &self,
        id: &str,
        from: Day,
        to: Day,
    ) -> Result<Vec<(Day, Counts)>, KeyStoreError> {
        let days: Vec<Day> = (from.0..=to.0).map(Day).collect();
        let mut out = Vec::new();
        for chunk in days.chunks(USAGE_CHUNK) {
            let cmds: Vec<(Day, redis::Cmd)> = chunk
                .iter()
                .map(|day| {
                    let mut hmget = redis::cmd("HMGET");
                    hmget
                        .arg(self.key_day(id, *day))
                        .arg("allowed")
                        .arg("denied")
                        .arg("rate_limited");
                    (*day, hmget)
                })
                .collect();
            let got: Vec<(Day, [Option<u64>; 3])> = self
                .call(move |c| {
                    async move {
                        let replies = join_all(cmds.iter().map(|(day, cmd)| {
                            let mut c = c.fork();
                            async move {
                                let v: Vec<Option<u64>> = c.query(cmd).await?;
                                Ok::<_, redis::RedisError>((*day, [v[0], v[1], v[2]]))
                            }
                        }));
                        replies.await.into_iter().collect()
                    }
                    .boxed()
                })
                .await?;
            out.extend(got.into_iter().filter_map(|(day, [a, d, r])| {
                let c = Counts {
                    allowed: a.unwrap_or(0),
                    denied: d.unwrap_or(0),
                    rate_limited: r.unwrap_or(0),
                };
                (!c.is_zero()).then_some((day, c))
            }));
        }
        Ok(out)
    }

    pub(crate) async fn group_usage(
        &self,
        group: UsageGroup,
        from: Day,
        to: Day,
    ) -> Result<Vec<(String, Counts)>, KeyStoreError> {
        let days: Vec<Day> = (from.0..=to.0).map(Day).collect();
        let mut out = Vec::new();
        for chunk in days.chunks(USAGE_CHUNK) {
            let cmds: Vec<redis::Cmd> = chunk
                .iter()
                .map(|day| redis::Cmd::hgetall(self.group_day(group, *day)))
                .collect();
            let hashes: Vec<Vec<(String, u64)>> = self
                .call(move |c| {
                    async move {
                        let replies = join_all(cmds.iter().map(|cmd| {
                            let mut c = c.fork();
                            async move { c.query::<Vec<(String, u64)>>(cmd).await }
                        }));
                        replies.await.into_iter().collect()
                    }
                    .boxed()
                })
                .await?;
            for fields in hashes {
                out.extend(group_counts(fields));
            }
        }
        Ok(out)
    }
}

/// One [`ADD_USAGE`] call: the hash and the script's arguments.
#[derive(Clone)]
struct UsageAdd {
    hash: String,
    args: Vec<String>,
}

/// `allowed:<name>` / `denied:<name>` / `rate_limited:<name>` fields as counts per name
/// (sequence fields skipped).
fn group_counts(fields: Vec<(String, u64)>) -> Vec<(String, Counts)> {
    let mut by_name: std::collections::BTreeMap<String, Counts> = Default::default();
    for (field, n) in fields {
        let Some((outcome, name)) = field.split_once(':') else {
            continue;
        };
        let add = match outcome {
            "allowed" => Counts {
                allowed: n,
                ..Counts::default()
            },
            "denied" => Counts {
                denied: n,
                ..Counts::default()
            },
            "rate_limited" => Counts {
                rate_limited: n,
                ..Counts::default()
            },
            _ => continue,
        };
        by_name.entry(name.to_string()).or_default().merge(add);
    }
    by_name.into_iter().filter(|(_, c)| !c.is_zero()).collect()
}
