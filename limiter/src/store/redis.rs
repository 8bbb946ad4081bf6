//! The Redis store: standalone (one `EVALSHA` per call) and Redis Cluster.
//!
//! # One round trip, atomic, never read-then-write
//! Every hit of a call goes into one invocation of `script.lua`, which reads, decides and
//! writes inside Redis. The script is sent by SHA (`EVALSHA`); on `NOSCRIPT` (a restarted or
//! flushed Redis) the same call is resent once as `EVAL`, which also caches it again.
//!
//! # Time
//! The caller's `now` (its injected clock) goes to the script in microseconds; Redis' own
//! clock is never read. Replicas sharing Redis therefore agree up to their clock skew: a
//! replica `d` ahead sees windows roll `d` early, which for sliding windows and meters can
//! only make it stricter for hits older than `d`. Keep replica clocks NTP-synchronised. Key
//! lifetimes are relative (`PEXPIRE`), so skew never keeps or drops a key early.
//!
//! # Keys and the Redis Cluster hash-tag policy
//! A counter's key is `<key_prefix><tagged key>:<algorithm code><window µs>:<limit>[:<burst>]`.
//! The tagged key is the caller's key unchanged when it already contains a non-empty
//! `{tag}`, otherwise `{key}`: so every rule on one descriptor key (burst + sustained) shares
//! a slot, and a caller that wants several descriptors co-located (e.g. all limits of one
//! tenant) puts the same `{tag}` in their keys. `key_prefix` may not contain braces.
//!
//! # Redis Cluster: what "atomic" means across slots
//! Redis runs a script on one slot only, so hits are grouped by slot and the groups are sent
//! in parallel (one round trip each, concurrently). Within a group all-or-nothing holds
//! exactly. Across groups, each group commits on its own; if another group rejects the
//! request, the committed groups are sent a compensating refund (the script's mode 1, same
//! `now`). Between commit and refund the refunded quota is briefly unavailable to other
//! requests: this can only reject, never admit, more than the limit.
//!
//! # Failure
//! Each call has a timeout (`timeout`, default 50 ms) and takes a permit from a semaphore of
//! `max_in_flight`; with none free it fails fast with [`StoreError::Overloaded`] instead of
//! queueing. The connection reconnects by itself (standalone: [`super::redis_conn`], one
//! pipelined connection with its own driver task; cluster: the redis crate's cluster client,
//! which refreshes its slot map), so a Redis outage means errors, never a crash.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::LazyLock;
use std::time::{Duration, SystemTime};

use futures::future::{BoxFuture, join_all};
use redis::aio::ConnectionLike;
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{ErrorKind, IntoConnectionInfo, RedisError, ServerErrorKind, TlsCertificates};
use serde::Deserialize;
use tokio::sync::Semaphore;
use tollgate_common::config::{Errors, Validate, join};
use tollgate_common::secret::Secret;

use super::redis_conn::{self, Pipeline, Target, Value};
use super::{Hit, Outcome, Store, StoreError, micros, validate_positive};

/// The script source, and its SHA-1 as Redis computes it.
pub const SCRIPT: &str = include_str!("script.lua");
static SCRIPT_SHA: LazyLock<String> =
    LazyLock::new(|| redis::Script::new(SCRIPT).get_hash().to_string());

/// Options of the Redis store (`store: {type: redis, ...}`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// Standalone Redis: `redis://[user[:password]@]host:port[/db]`, or `rediss://` for TLS.
    #[serde(default)]
    pub url: Option<Secret>,
    /// Redis Cluster seed nodes (same URL forms). Set either `url` or `cluster_nodes`.
    #[serde(default)]
    pub cluster_nodes: Vec<Secret>,
    /// Overrides the URL's user name.
    #[serde(default)]
    pub username: Option<String>,
    /// Overrides the URL's password (e.g. from `TOLLGATE_STORE__PASSWORD`).
    #[serde(default)]
    pub password: Option<Secret>,
    /// PEM file of CAs trusted for `rediss://`, instead of the system's.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Deadline of one store call (all its round trips).
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Deadline of establishing a connection.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Most store calls in flight; beyond it calls fail fast as overloaded.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Prefix of every key (no braces).
    #[serde(default = "default_prefix")]
    pub key_prefix: String,
    /// Size of the local cache of counters over their limit (0 disables it).
    #[serde(default = "default_cache_keys")]
    pub over_limit_cache_keys: usize,
}

fn default_timeout() -> Duration {
    Duration::from_millis(50)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(1)
}
fn default_max_in_flight() -> usize {
    1024
}
fn default_prefix() -> String {
    "tollgate:".into()
}
fn default_cache_keys() -> usize {
    100_000
}

impl RedisConfig {
    /// A standalone config with defaults.
    pub fn standalone(url: impl Into<String>) -> Self {
        Self::with(Some(Secret::new(url)), Vec::new())
    }

    /// A cluster config with defaults.
    pub fn cluster(nodes: impl IntoIterator<Item = String>) -> Self {
        Self::with(None, nodes.into_iter().map(Secret::new).collect())
    }

    fn with(url: Option<Secret>, cluster_nodes: Vec<Secret>) -> Self {
        Self {
            url,
            cluster_nodes,
            username: None,
            password: None,
            ca_file: None,
            timeout: default_timeout(),
            connect_timeout: default_connect_timeout(),
            max_in_flight: default_max_in_flight(),
            key_prefix: default_prefix(),
            over_limit_cache_keys: default_cache_keys(),
        }
    }
}

impl Validate for RedisConfig {
    fn validate(&self, at: &str, errors: &mut Errors) {
        match (&self.url, self.cluster_nodes.is_empty()) {
            (Some(_), false) => errors.push(
                join(at, "cluster_nodes"),
                "set either url or cluster_nodes, not both",
            ),
            (None, true) => errors.push(
                join(at, "url"),
                "required (or cluster_nodes for Redis Cluster)",
            ),
            _ => {}
        }
        let urls = self.url.iter().map(|u| (join(at, "url"), u));
        let nodes = self
            .cluster_nodes
            .iter()
            .enumerate()
            .map(|(i, u)| (format!("{}[{i}]", join(at, "cluster_nodes")), u));
        for (field, u) in urls.chain(nodes) {
            // The message never repeats the URL: it may hold a password.
            if let Err(e) = u.expose().into_connection_info() {
                errors.push(
                    field,
                    format!("not a redis:// or rediss:// URL ({})", e.kind_name()),
                );
            }
        }
        if self.timeout.is_zero() {
            errors.push(join(at, "timeout"), "must be positive");
        }
        if self.connect_timeout.is_zero() {
            errors.push(join(at, "connect_timeout"), "must be positive");
        }
        validate_positive(at, "max_in_flight", self.max_in_flight, errors);
        if self.key_prefix.contains(['{', '}']) {
            errors.push(
                join(at, "key_prefix"),
                "must not contain braces (they choose Redis Cluster slots)",
            );
        }
        errors.require_file(at, "ca_file", self.ca_file.as_deref());
    }
}

trait KindName {
    fn kind_name(&self) -> String;
}

impl KindName for RedisError {
    fn kind_name(&self) -> String {
        format!("{:?}", self.kind())
    }
}

enum Conn {
    Standalone(Pipeline),
    Cluster(ClusterConnection),
}

/// Counters in Redis or Redis Cluster, shared by every replica pointed at it.
pub struct RedisStore {
    conn: Conn,
    prefix: String,
    timeout: Duration,
    permits: Semaphore,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.conn {
            Conn::Standalone(_) => "standalone",
            Conn::Cluster(_) => "cluster",
        };
        f.debug_struct("RedisStore")
            .field("kind", &kind)
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Prepares the connection; nothing is sent until the first call, so a Redis that is
    /// down at start-up only makes calls fail until it is back.
    pub async fn connect(cfg: &RedisConfig) -> Result<Self, StoreError> {
        let bad = |e: RedisError| {
            StoreError::Config(format!(
                "redis: {:?}: {}",
                e.kind(),
                e.detail().unwrap_or("")
            ))
        };
        let conn = if let Some(url) = &cfg.url {
            let mut info = url.expose().into_connection_info().map_err(bad)?;
            let mut settings = info.redis_settings().clone();
            if let Some(u) = &cfg.username {
                settings = settings.set_username(u);
            }
            if let Some(p) = &cfg.password {
                settings = settings.set_password(p.expose());
            }
            info = info.set_redis_settings(settings);
            let target = Target::new(&info, cfg.ca_file.as_deref(), "tollgate-ratelimit")?;
            // A connection with no reply for this long is given up (see redis_conn).
            let stall = (cfg.timeout * 2).max(Duration::from_secs(1));
            Conn::Standalone(Pipeline::start(target, cfg.connect_timeout, stall))
        } else {
            let nodes: Vec<&str> = cfg.cluster_nodes.iter().map(Secret::expose).collect();
            let mut b = ClusterClientBuilder::new(nodes)
                .connection_timeout(cfg.connect_timeout)
                .response_timeout(cfg.timeout);
            if let Some(u) = &cfg.username {
                b = b.username(u);
            }
            if let Some(p) = &cfg.password {
                b = b.password(p.expose());
            }
            if let Some(p) = &cfg.ca_file {
                let pem = std::fs::read(p)
                    .map_err(|e| StoreError::Config(format!("{}: {e}", p.display())))?;
                b = b.certs(TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                });
            }
            let client = b.build().map_err(bad)?;
            let config = redis::cluster::ClusterConfig::new()
                .set_connection_timeout(cfg.connect_timeout)
                .set_response_timeout(cfg.timeout);
            Conn::Cluster(client.get_pending_async_connection_with_config(config))
        };
        Ok(Self {
            conn,
            prefix: cfg.key_prefix.clone(),
            timeout: cfg.timeout,
            permits: Semaphore::new(cfg.max_in_flight.max(1)),
        })
    }

    async fn run(&self, hits: &[Hit<'_>], now_us: u64) -> Result<Vec<Outcome>, StoreError> {
        let keys: Vec<String> = hits.iter().map(|h| key_of(&self.prefix, h)).collect();
        let span = tollgate_common::trace::span("redis", "client");
        let calls = async {
            match &self.conn {
                Conn::Standalone(p) => call_standalone(p, hits, &keys, now_us).await,
                Conn::Cluster(c) => self.run_cluster(c, hits, &keys, now_us).await,
            }
        };
        let out = tracing::Instrument::instrument(calls, span.clone()).await;
        if out.is_err() {
            tollgate_common::trace::fail(&span);
        }
        out
    }

    async fn run_cluster(
        &self,
        conn: &ClusterConnection,
        hits: &[Hit<'_>],
        keys: &[String],
        now_us: u64,
    ) -> Result<Vec<Outcome>, StoreError> {
        let mut groups: Vec<(u16, Vec<usize>)> = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            let slot = key_slot(k.as_bytes());
            match groups.iter_mut().find(|(s, _)| *s == slot) {
                Some((_, g)) => g.push(i),
                None => groups.push((slot, vec![i])),
            }
        }
        if groups.len() == 1 {
            return call(&mut conn.clone(), hits, keys, &groups[0].1, 0, now_us).await;
        }
        let replies = join_all(groups.iter().map(|(_, idx)| {
            let mut c = conn.clone();
            async move { call(&mut c, hits, keys, idx, 0, now_us).await }
        }))
        .await;
        let mut out = vec![None; hits.len()];
        let mut committed = Vec::new();
        let mut rejected = false;
        let mut first_err = None;
        for ((_, idx), reply) in groups.iter().zip(replies) {
            match reply {
                Ok(outcomes) => {
                    let group_rejected = idx
                        .iter()
                        .zip(&outcomes)
                        .any(|(&i, o)| !o.admitted && !hits[i].shadow);
                    rejected |= group_rejected;
                    if !group_rejected {
                        committed.push(idx);
                    }
                    for (&i, o) in idx.iter().zip(outcomes) {
                        out[i] = Some(o);
                    }
                }
                Err(e) => {
                    // Unknown whether that group counted: the request fails, others are undone.
                    rejected = true;
                    first_err.get_or_insert(e);
                }
            }
        }
        if rejected {
            let undo: Vec<Vec<usize>> = committed
                .iter()
                .map(|idx| {
                    idx.iter()
                        .copied()
                        .filter(|&i| hits[i].cost > 0 && out[i].is_some_and(|o| o.admitted))
                        .collect()
                })
                .filter(|v: &Vec<usize>| !v.is_empty())
                .collect();
            let refunds = join_all(undo.iter().map(|idx| {
                let mut c = conn.clone();
                async move { call(&mut c, hits, keys, idx, 1, now_us).await }
            }))
            .await;
            for r in refunds {
                if let Err(e) = r {
                    tracing::warn!(error = %e, "refund after a cross-slot rejection failed; quota stays counted until it expires");
                }
            }
            for i in undo.iter().flatten() {
                if let Some(o) = out[*i].as_mut() {
                    o.remaining = (o.remaining + hits[*i].cost).min(hits[*i].rule.capacity());
                }
            }
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        Ok(out
            .into_iter()
            .map(|o| o.expect("every group answered"))
            .collect())
    }
}

/// One argument of a script call.
enum Arg<'a> {
    Str(&'a str),
    Num(u64),
}

/// The script's arguments after its body or SHA: the key count, the keys, the mode and
/// `now`, then six per hit. `sel` chooses the hits (all, or one Redis Cluster slot's).
fn script_args<'k>(
    keys: &'k [String],
    hits: &[Hit<'_>],
    sel: impl Iterator<Item = usize> + Clone,
    mode: u8,
    now_us: u64,
    mut arg: impl FnMut(Arg<'k>),
) {
    arg(Arg::Num(sel.clone().count() as u64));
    for i in sel.clone() {
        arg(Arg::Str(&keys[i]));
    }
    arg(Arg::Num(mode.into()));
    arg(Arg::Num(now_us));
    for i in sel {
        let h = &hits[i];
        arg(Arg::Num(h.rule.algorithm.code().into()));
        arg(Arg::Num(h.rule.limit));
        arg(Arg::Num(h.rule.window_us()));
        arg(Arg::Num(h.rule.capacity()));
        arg(Arg::Num(h.cost));
        arg(Arg::Num(u8::from(h.shadow).into()));
    }
}

/// The script call for all hits on the standalone pipeline: `EVALSHA`, and `EVAL` once on
/// `NOSCRIPT`. Encoded straight into the connection's buffer.
async fn call_standalone(
    pipeline: &Pipeline,
    hits: &[Hit<'_>],
    keys: &[String],
    now_us: u64,
) -> Result<Vec<Outcome>, StoreError> {
    let encode = |verb: &'static [u8], body: &'static [u8]| {
        move |buf: &mut Vec<u8>| {
            redis_conn::array(buf, 5 + 7 * hits.len());
            redis_conn::bulk(buf, verb);
            redis_conn::bulk(buf, body);
            script_args(keys, hits, 0..hits.len(), 0, now_us, |a| match a {
                Arg::Str(s) => redis_conn::bulk(buf, s.as_bytes()),
                Arg::Num(n) => redis_conn::int(buf, n),
            });
        }
    };
    let mut reply = pipeline
        .request(encode(b"EVALSHA", SCRIPT_SHA.as_bytes()))
        .await?;
    if matches!(&reply, Value::Error(e) if e.starts_with("NOSCRIPT")) {
        reply = pipeline.request(encode(b"EVAL", SCRIPT.as_bytes())).await?;
    }
    let values = match reply {
        Value::Array(items) => items
            .into_iter()
            .map(|v| match v {
                Value::Int(i) => Ok(i),
                other => Err(unexpected(&other)),
            })
            .collect::<Result<Vec<i64>, _>>()?,
        Value::Error(e) => return Err(StoreError::Unavailable(format!("redis: {e}"))),
        other => return Err(unexpected(&other)),
    };
    outcomes(&values, hits.len(), 0)
}

fn unexpected(v: &Value) -> StoreError {
    let kind = match v {
        Value::Nil => "nil",
        Value::Int(_) => "an integer",
        Value::Simple(_) => "a status",
        Value::Bulk(_) => "a string",
        Value::Array(_) => "an array",
        Value::Error(_) => "an error",
    };
    StoreError::Unavailable(format!("unexpected script reply: {kind}"))
}

/// One script call for the hits `idx` through the cluster client: `EVALSHA`, and `EVAL`
/// once on `NOSCRIPT`.
async fn call<C: ConnectionLike + Send>(
    conn: &mut C,
    hits: &[Hit<'_>],
    keys: &[String],
    idx: &[usize],
    mode: u8,
    now_us: u64,
) -> Result<Vec<Outcome>, StoreError> {
    let build = |verb: &str, body: &str| {
        let mut cmd = redis::cmd(verb);
        cmd.arg(body);
        script_args(keys, hits, idx.iter().copied(), mode, now_us, |a| {
            match a {
                Arg::Str(s) => cmd.arg(s),
                Arg::Num(n) => cmd.arg(n),
            };
        });
        cmd
    };
    let reply: Result<Vec<i64>, RedisError> = build("EVALSHA", &SCRIPT_SHA).query_async(conn).await;
    let reply = match reply {
        Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
            build("EVAL", SCRIPT).query_async(conn).await
        }
        r => r,
    };
    let values = reply.map_err(store_error)?;
    outcomes(&values, idx.len(), mode)
}

/// The script's reply, four values per hit (none for a refund, mode 1).
fn outcomes(values: &[i64], hits: usize, mode: u8) -> Result<Vec<Outcome>, StoreError> {
    if mode == 1 {
        return Ok(Vec::new());
    }
    if values.len() != 4 * hits {
        return Err(StoreError::Unavailable(format!(
            "unexpected script reply of {} values",
            values.len()
        )));
    }
    let us = |v: i64| Duration::from_micros(v.max(0) as u64);
    Ok(values
        .chunks_exact(4)
        .map(|v| Outcome {
            admitted: v[0] == 1,
            remaining: v[1].max(0) as u64,
            reset_after: us(v[2]),
            retry_after: (v[3] >= 0).then(|| us(v[3])),
            cached: false,
        })
        .collect())
}

fn store_error(e: RedisError) -> StoreError {
    if e.is_timeout() {
        StoreError::Timeout
    } else {
        StoreError::Unavailable(e.to_string())
    }
}

impl Store for RedisStore {
    fn hit<'a>(
        &'a self,
        hits: &'a [Hit<'a>],
        now: SystemTime,
    ) -> BoxFuture<'a, Result<Vec<Outcome>, StoreError>> {
        Box::pin(async move {
            if hits.is_empty() {
                return Ok(Vec::new());
            }
            let _permit = self
                .permits
                .try_acquire()
                .map_err(|_| StoreError::Overloaded)?;
            match tokio::time::timeout(self.timeout, self.run(hits, micros(now))).await {
                Ok(r) => r,
                Err(_) => Err(StoreError::Timeout),
            }
        })
    }
}

/// The Redis key of a hit's counter (see the module docs for the hash-tag policy).
pub fn key_of(prefix: &str, h: &Hit<'_>) -> String {
    let mut s = String::with_capacity(prefix.len() + h.key.len() + 40);
    s.push_str(prefix);
    if hash_tag(h.key.as_bytes()).is_some() {
        s.push_str(h.key);
    } else {
        s.push('{');
        s.push_str(h.key);
        s.push('}');
    }
    let r = &h.rule;
    let _ = write!(s, ":{}{}:{}", r.algorithm.code(), r.window_us(), r.limit);
    if let Some(b) = r.burst {
        let _ = write!(s, ":{b}");
    }
    s
}

/// The hash tag Redis Cluster would use: the bytes between the first `{` and the next `}`,
/// when not empty.
fn hash_tag(key: &[u8]) -> Option<&[u8]> {
    let open = key.iter().position(|&b| b == b'{')?;
    let len = key[open + 1..].iter().position(|&b| b == b'}')?;
    (len > 0).then(|| &key[open + 1..open + 1 + len])
}

/// The Redis Cluster slot of a key: CRC16 (XMODEM) of its hash tag or whole key, mod 16384.
pub fn key_slot(key: &[u8]) -> u16 {
    let data = hash_tag(key).unwrap_or(key);
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= (b as u16) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc & 0x3fff
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::algorithm::{Algorithm, Rule};

    #[test]
    fn slots_follow_redis_cluster() {
        // Values from Redis' CLUSTER KEYSLOT.
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"foo{}{bar}"), key_slot(b"foo{}{bar}".as_slice()));
    }

    #[test]
    fn rules_on_one_key_share_a_slot_and_tags_are_respected() {
        let a = Rule::new(Algorithm::SlidingWindow, 10, Duration::from_secs(1));
        let b = Rule::new(Algorithm::FixedWindow, 1000, Duration::from_secs(3600));
        let ka = key_of(
            "p:",
            &Hit {
                key: "d|user=42",
                rule: a,
                cost: 1,
                shadow: false,
            },
        );
        let kb = key_of(
            "p:",
            &Hit {
                key: "d|user=42",
                rule: b,
                cost: 1,
                shadow: false,
            },
        );
        assert_ne!(ka, kb);
        assert_eq!(key_slot(ka.as_bytes()), key_slot(kb.as_bytes()));
        assert_eq!(ka, "p:{d|user=42}:01000000:10");
        let tagged = key_of(
            "p:",
            &Hit {
                key: "{t1}|ip=1",
                rule: a,
                cost: 1,
                shadow: false,
            },
        );
        assert_eq!(key_slot(tagged.as_bytes()), key_slot(b"t1"));
    }
}
