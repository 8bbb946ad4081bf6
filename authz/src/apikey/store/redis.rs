//! The Redis key store, shared by every replica, and the invalidation feed that keeps each
//! replica's cache honest.
//!
//! Layout under a prefix `p`: `p key:<id>` (JSON record), `p ids` (sorted set of ids for paging),
//! `p last_used` (hash id → unix ms). Every write goes through a Lua script that changes the
//! record and PUBLISHes the id on `p changes` in one atomic step, so no replica can observe the
//! change without the message having been sent. Each replica subscribes to that channel; while
//! the subscription is down it serves nothing from its cache, and on (re)subscribing it drops the
//! cache, so a message lost during a disconnect cannot leave a revoked key usable.

use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime};

use futures::StreamExt;
use redis::Script;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::{oneshot, watch};

use super::{Replaced, from_unix_ms, unix_ms};
use crate::apikey::KeyStoreError;
use crate::apikey::cache::Caches;
use crate::apikey::record::KeyRecord;

static INSERT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r"
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('SET', KEYS[1], ARGV[1])
redis.call('ZADD', KEYS[2], 0, ARGV[2])
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
    client: redis::Client,
    conn: ConnectionManager,
    prefix: Arc<str>,
    timeout: Duration,
}

fn timed_out(_: tokio::time::error::Elapsed) -> KeyStoreError {
    KeyStoreError::Timeout
}

impl RedisStore {
    pub(crate) async fn open(
        url: &str,
        prefix: &str,
        timeout: Duration,
    ) -> Result<Self, KeyStoreError> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let conn = tokio::time::timeout(
            timeout * 4,
            client.get_connection_manager_with_config(config),
        )
        .await
        .map_err(timed_out)??;
        Ok(Self {
            client,
            conn,
            prefix: prefix.into(),
            timeout,
        })
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

    pub(crate) async fn get(&self, id: &str) -> Result<Option<KeyRecord>, KeyStoreError> {
        let mut conn = self.conn.clone();
        let (bytes, used): (Option<Vec<u8>>, Option<u64>) = redis::pipe()
            .get(self.key(id))
            .hget(self.last_used(), id)
            .query_async(&mut conn)
            .await?;
        let Some(bytes) = bytes else { return Ok(None) };
        let mut rec = KeyRecord::from_json(id, &bytes)?;
        rec.last_used_at = used.map(from_unix_ms);
        Ok(Some(rec))
    }

    pub(crate) async fn insert(&self, rec: &KeyRecord) -> Result<bool, KeyStoreError> {
        let mut conn = self.conn.clone();
        let done: i64 = INSERT
            .key(self.key(&rec.id))
            .key(self.ids())
            .arg(rec.to_json())
            .arg(&rec.id)
            .arg(self.channel())
            .invoke_async(&mut conn)
            .await?;
        Ok(done == 1)
    }

    pub(crate) async fn replace(
        &self,
        rec: &KeyRecord,
        expected: u64,
    ) -> Result<Replaced, KeyStoreError> {
        let mut conn = self.conn.clone();
        let done: i64 = REPLACE
            .key(self.key(&rec.id))
            .arg(expected)
            .arg(rec.to_json())
            .arg(self.channel())
            .arg(&rec.id)
            .invoke_async(&mut conn)
            .await?;
        Ok(match done {
            1 => Replaced::Done,
            0 => Replaced::Conflict,
            _ => Replaced::Missing,
        })
    }

    pub(crate) async fn list(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<KeyRecord>, KeyStoreError> {
        let mut conn = self.conn.clone();
        let min = after.map_or_else(|| "-".to_string(), |a| format!("({a}"));
        let ids: Vec<String> = redis::cmd("ZRANGEBYLEX")
            .arg(self.ids())
            .arg(min)
            .arg("+")
            .arg("LIMIT")
            .arg(0)
            .arg(limit)
            .query_async(&mut conn)
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| self.key(id)).collect();
        let (records, used): (Vec<Option<Vec<u8>>>, Vec<Option<u64>>) = redis::pipe()
            .cmd("MGET")
            .arg(&keys)
            .cmd("HMGET")
            .arg(self.last_used())
            .arg(&ids)
            .query_async(&mut conn)
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
        let mut conn = self.conn.clone();
        let mut call = TOUCH.key(self.last_used());
        for (id, t) in used {
            call.arg(id).arg(unix_ms(*t));
        }
        let _: () = call.invoke_async(&mut conn).await?;
        Ok(())
    }

    /// Starts the task that applies the invalidation feed to `caches` until `stop` closes.
    /// Resolves the returned channel once the first subscription is up (or failed).
    pub(crate) fn spawn_subscriber(
        &self,
        caches: Arc<Caches>,
        mut stop: watch::Receiver<()>,
    ) -> oneshot::Receiver<Result<(), KeyStoreError>> {
        let (ready_tx, ready_rx) = oneshot::channel();
        let client = self.client.clone();
        let channel = self.channel();
        let timeout = self.timeout;
        tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            let mut backoff = Duration::from_millis(50);
            loop {
                let subscribed = async {
                    let mut pubsub = tokio::time::timeout(timeout * 4, client.get_async_pubsub())
                        .await
                        .map_err(timed_out)??;
                    tokio::time::timeout(timeout * 4, pubsub.subscribe(&channel))
                        .await
                        .map_err(timed_out)??;
                    Ok::<_, KeyStoreError>(pubsub)
                };
                let pubsub = tokio::select! {
                    r = subscribed => r,
                    _ = stop.changed() => return,
                };
                match pubsub {
                    Ok(pubsub) => {
                        // Anything cached before this point may predate a change we never heard of.
                        caches.set_live(true);
                        backoff = Duration::from_millis(50);
                        if let Some(tx) = ready.take() {
                            let _ = tx.send(Ok(()));
                        }
                        tracing::debug!(channel, "key invalidation feed subscribed");
                        let stopped = follow(pubsub, &caches, &mut stop, timeout).await;
                        caches.set_live(false);
                        if stopped {
                            return;
                        }
                        metrics::counter!(super::STORE_OP_ERRORS, "store" => "redis", "op" => "subscribe")
                            .increment(1);
                        tracing::warn!(
                            channel,
                            "key invalidation feed lost; serving keys from the store until it is back"
                        );
                    }
                    Err(e) => {
                        if let Some(tx) = ready.take() {
                            let _ = tx.send(Err(e));
                            return;
                        }
                        tracing::warn!(channel, error = %e, "cannot subscribe to the key invalidation feed");
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stop.changed() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        });
        ready_rx
    }
}

/// Applies invalidation messages until the connection fails (returns false) or `stop` closes
/// (returns true). Pings regularly, because a silently dead TCP connection would otherwise look
/// like a quiet channel.
async fn follow(
    pubsub: redis::aio::PubSub,
    caches: &Caches,
    stop: &mut watch::Receiver<()>,
    timeout: Duration,
) -> bool {
    let (mut sink, mut stream) = pubsub.split();
    let mut ping = tokio::time::interval(Duration::from_millis(500));
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            msg = stream.next() => {
                let Some(msg) = msg else { return false };
                match msg.get_payload::<String>() {
                    Ok(id) => caches.invalidate(&id),
                    // Unreadable message: be safe and forget everything.
                    Err(_) => caches.clear(),
                }
            }
            _ = ping.tick() => {
                match tokio::time::timeout(timeout.max(Duration::from_millis(500)), sink.ping::<redis::Value>()).await {
                    Ok(Ok(_)) => {}
                    _ => return false,
                }
            }
            _ = stop.changed() => return true,
        }
    }
}
