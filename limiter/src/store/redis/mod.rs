//! The Redis store: standalone, Redis Sentinel (both one pipelined connection, at most one
//! `EVALSHA` per call) and Redis Cluster (one per slot a call touches).
//!
//! # One round trip, atomic, never read-then-write
//! Every hit of a call goes into one invocation of `script.lua`, which reads, decides and
//! writes inside Redis: one `GET` per counter, then one `SET … PX` per counted counter of a
//! packed value (the layout is in the script's header). The call's arguments travel as one
//! packed binary string and the reply comes back as one, since Redis spends more on each
//! argument and each array element than on the bytes. The script is sent by SHA (`EVALSHA`);
//! on `NOSCRIPT` (a restarted or flushed Redis) the same call is resent once as `EVAL`, which
//! also caches it again.
//!
//! On a standalone or Sentinel connection, the calls queued while the connection's driver was
//! busy go as one `EVALSHA` carrying them all, in order ([`pipeline`]): Redis then parses one
//! command, starts Lua once and reads `TIME` once for several calls, which is most of what a
//! one-hit call costs it. Each call is still evaluated exactly as alone (its own hits,
//! all-or-nothing, its own deadline), seeing what the calls before it counted.
//!
//! # Time
//! The caller's `now` (its injected clock) goes to the script in microseconds and is the only
//! time the arithmetic uses. Replicas sharing Redis therefore agree up to their clock skew: a
//! replica `d` ahead sees windows roll `d` early, which for sliding windows and meters can
//! only make it stricter for hits older than `d`. Keep replica clocks NTP-synchronised. Key
//! lifetimes are relative (`PX`), so skew never keeps or drops a key early. Redis' own clock
//! is read only to refuse a call that runs after its caller gave up ([`deadline`]).
//!
//! # Keys and the Redis Cluster hash-tag policy
//! A counter's key is
//! `<key_prefix><tagged key>:v2:<algorithm code>:<window µs>:<limit>[:<burst>]`. `v2` is the
//! value layout: a new layout gets a new tag, so counters of an older one are never misread
//! and simply expire. The tagged key is the caller's key unchanged when it already contains a
//! non-empty `{tag}`, otherwise `{key}`: so every rule on one descriptor key (burst +
//! sustained) shares a slot, and a caller that wants several descriptors co-located (e.g. all
//! limits of one tenant) puts the same `{tag}` in their keys. `key_prefix` may not contain
//! braces.
//!
//! # Failure
//! Each call has a timeout (`timeout`, default 50 ms) and takes a permit from a semaphore of
//! `max_in_flight`; with none free it fails fast with [`StoreError::Overloaded`] instead of
//! queueing. Standalone and Sentinel hold the permit until Redis answers the command (see
//! [`pipeline`]); Cluster until the call ends. A circuit breaker per node ([`breaker`]) makes
//! calls fail fast while a node does not answer. The connections reconnect by themselves, so a
//! Redis outage means errors, never a crash.
//!
//! # Layout
//! - [`pipeline`]: the standalone / Sentinel connection, with [`node`] (finding and logging in
//!   to the node), [`sentinel`] and [`resp`] (the wire format).
//! - [`cluster`]: Redis Cluster, per-master breakers and clocks.
//! - [`script`] and `script.lua`: the script call and the script.
//! - [`deadline`]: deadlines on Redis' clock. [`breaker`]: the circuit breaker.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::future::BoxFuture;
use redis::{IntoConnectionInfo, RedisError};
use serde::Deserialize;
use tokio::sync::Semaphore;
use tollgate_common::config::{Errors, Validate, join};
use tollgate_common::secret::Secret;

use super::{Hit, Outcome, Store, StoreError, micros, validate_positive};

mod breaker;
mod cluster;
mod deadline;
mod node;
mod per_thread;
mod pipeline;
mod resp;
mod script;
mod sentinel;

pub use self::breaker::BreakerConfig;
use self::per_thread::Pipelines;
use self::pipeline::{Pipeline, ScriptPart};
pub use self::pipeline::{hold_wakes, holds_wakes, release_wakes};
pub use self::script::SCRIPT;
use self::script::{Call, Mode};

/// Options of the Redis store (`store: {type: redis, ...}`): exactly one of `url`
/// (standalone), `sentinel_nodes` with `sentinel_master` (Sentinel) or `cluster_nodes`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// Standalone Redis: `redis://[user[:password]@]host:port[/db]`, or `rediss://` for TLS.
    #[serde(default)]
    pub url: Option<Secret>,
    /// Redis Sentinel: the sentinels (`redis://[:password@]host:26379`; the password, if any,
    /// is the sentinels' own). The master they name is used, over TLS when these are
    /// `rediss://`, with `username` / `password` below.
    #[serde(default)]
    pub sentinel_nodes: Vec<Secret>,
    /// The name the sentinels monitor the master under (`sentinel monitor <name> ...`).
    #[serde(default)]
    pub sentinel_master: Option<String>,
    /// Redis Cluster seed nodes (same URL forms).
    #[serde(default)]
    pub cluster_nodes: Vec<Secret>,
    /// Overrides the URL's user name (with Sentinel: the data nodes').
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
    /// When to stop waiting for a node that does not answer.
    #[serde(default)]
    pub breaker: BreakerConfig,
    /// Longest counter key accepted (see [`super::DEFAULT_MAX_KEY_BYTES`]).
    #[serde(default = "super::default_max_key_bytes")]
    pub max_key_bytes: usize,
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

/// The topology a [`RedisConfig`] names.
#[derive(Debug, Clone, Copy)]
pub enum Topology<'a> {
    Standalone(&'a Secret),
    Sentinel {
        master: &'a str,
        nodes: &'a [Secret],
    },
    Cluster(&'a [Secret]),
}

impl RedisConfig {
    /// A standalone config with defaults.
    pub fn standalone(url: impl Into<String>) -> Self {
        Self::with(Some(Secret::new(url)), Vec::new(), None, Vec::new())
    }

    /// A cluster config with defaults.
    pub fn cluster(nodes: impl IntoIterator<Item = String>) -> Self {
        Self::with(
            None,
            Vec::new(),
            None,
            nodes.into_iter().map(Secret::new).collect(),
        )
    }

    /// A Sentinel config with defaults.
    pub fn sentinel(master: impl Into<String>, nodes: impl IntoIterator<Item = String>) -> Self {
        Self::with(
            None,
            nodes.into_iter().map(Secret::new).collect(),
            Some(master.into()),
            Vec::new(),
        )
    }

    fn with(
        url: Option<Secret>,
        sentinel_nodes: Vec<Secret>,
        sentinel_master: Option<String>,
        cluster_nodes: Vec<Secret>,
    ) -> Self {
        Self {
            url,
            sentinel_nodes,
            sentinel_master,
            cluster_nodes,
            username: None,
            password: None,
            ca_file: None,
            timeout: default_timeout(),
            connect_timeout: default_connect_timeout(),
            max_in_flight: default_max_in_flight(),
            key_prefix: default_prefix(),
            over_limit_cache_keys: default_cache_keys(),
            breaker: BreakerConfig::default(),
            max_key_bytes: super::default_max_key_bytes(),
        }
    }

    /// The configured topology (a validated config names exactly one).
    pub fn topology(&self) -> Topology<'_> {
        if let Some(url) = &self.url {
            Topology::Standalone(url)
        } else if !self.sentinel_nodes.is_empty() {
            Topology::Sentinel {
                master: self.sentinel_master.as_deref().unwrap_or_default(),
                nodes: &self.sentinel_nodes,
            }
        } else {
            Topology::Cluster(&self.cluster_nodes)
        }
    }
}

impl Validate for RedisConfig {
    fn validate(&self, at: &str, errors: &mut Errors) {
        let named = [
            self.url.is_some(),
            !self.sentinel_nodes.is_empty(),
            !self.cluster_nodes.is_empty(),
        ];
        match named.iter().filter(|n| **n).count() {
            0 => errors.push(
                join(at, "url"),
                "required (or sentinel_nodes with sentinel_master, or cluster_nodes)",
            ),
            1 => {}
            _ => errors.push(
                join(at, "cluster_nodes"),
                "set only one of url, sentinel_nodes and cluster_nodes",
            ),
        }
        match (&self.sentinel_master, self.sentinel_nodes.is_empty()) {
            (None, false) => errors.push(
                join(at, "sentinel_master"),
                "required with sentinel_nodes: the name the sentinels monitor",
            ),
            (Some(_), true) => errors.push(
                join(at, "sentinel_nodes"),
                "required with sentinel_master: at least one sentinel",
            ),
            (Some(m), false) if m.trim().is_empty() => {
                errors.push(join(at, "sentinel_master"), "must not be empty")
            }
            _ => {}
        }
        let urls = self.url.iter().map(|u| (join(at, "url"), u));
        for (field, u) in urls
            .chain(indexed(at, "sentinel_nodes", &self.sentinel_nodes))
            .chain(indexed(at, "cluster_nodes", &self.cluster_nodes))
        {
            // The message never repeats the URL: it may hold a password.
            if let Err(e) = u.expose().into_connection_info() {
                errors.push(
                    field,
                    format!("not a redis:// or rediss:// URL ({:?})", e.kind()),
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
        validate_positive(at, "max_key_bytes", self.max_key_bytes, errors);
        if self.key_prefix.contains(['{', '}']) {
            errors.push(
                join(at, "key_prefix"),
                "must not contain braces (they choose Redis Cluster slots)",
            );
        }
        self.breaker.validate(&join(at, "breaker"), errors);
        errors.require_file(at, "ca_file", self.ca_file.as_deref());
    }
}

/// `at.field[i]` for each URL of a list.
fn indexed<'u>(
    at: &str,
    field: &str,
    urls: &'u [Secret],
) -> impl Iterator<Item = (String, &'u Secret)> + 'u {
    let base = join(at, field);
    urls.iter()
        .enumerate()
        .map(move |(i, u)| (format!("{base}[{i}]"), u))
}

fn config_error(e: RedisError) -> StoreError {
    // Never the URL itself: it may hold a password.
    StoreError::Config(format!(
        "redis: {:?}: {}",
        e.kind(),
        e.detail().unwrap_or("")
    ))
}

enum Conn {
    /// Standalone or Sentinel, with the node's breaker.
    Pipeline(Pipelines, breaker::Breaker),
    Cluster(Arc<cluster::Cluster>),
}

/// Counters in Redis, Redis Sentinel or Redis Cluster, shared by every replica pointed at it.
pub struct RedisStore {
    conn: Conn,
    prefix: String,
    timeout: Duration,
    permits: Arc<Semaphore>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kind = match self.conn {
            Conn::Pipeline(..) => "pipeline",
            Conn::Cluster(_) => "cluster",
        };
        f.debug_struct("RedisStore")
            .field("kind", &kind)
            .field("prefix", &self.prefix)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// The name the store's connections carry in `CLIENT LIST`.
const CLIENT_NAME: &str = "tollgate-ratelimit";

impl RedisStore {
    /// Prepares the connection; nothing is sent until the first call, so a Redis that is
    /// down at start-up only makes calls fail until it is back. Must be called within a Tokio
    /// runtime (the connection has its own task).
    pub async fn connect(cfg: &RedisConfig) -> Result<Self, StoreError> {
        let data_node = |url: &Secret| -> Result<node::Endpoint, StoreError> {
            let mut info = url.expose().into_connection_info().map_err(config_error)?;
            let mut settings = info.redis_settings().clone();
            if let Some(u) = &cfg.username {
                settings = settings.set_username(u);
            }
            if let Some(p) = &cfg.password {
                settings = settings.set_password(p.expose());
            }
            info = info.set_redis_settings(settings);
            node::Endpoint::new(&info, cfg.ca_file.as_deref())
        };
        // A connection with no reply for this long is given up (see the pipeline).
        let stall = (cfg.timeout * 2).max(Duration::from_secs(1));
        let pipeline = |target: node::Target, name: String| {
            // A Sentinel-managed master keeps one pipeline (one watcher following it).
            let per_thread = matches!(target, node::Target::Node(_));
            Conn::Pipeline(
                Pipelines::start(target, CLIENT_NAME, cfg.connect_timeout, stall, per_thread),
                breaker::Breaker::new(name, cfg.breaker),
            )
        };
        let conn = match cfg.topology() {
            Topology::Standalone(url) => {
                let endpoint = data_node(url)?;
                let name = endpoint.describe();
                pipeline(node::Target::Node(endpoint), name)
            }
            Topology::Sentinel { master, nodes } => {
                let sentinels = nodes
                    .iter()
                    .map(|u| {
                        let info = u.expose().into_connection_info().map_err(config_error)?;
                        node::Endpoint::new(&info, cfg.ca_file.as_deref())
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let tls = nodes
                    .first()
                    .is_some_and(|u| u.expose().starts_with("rediss://"));
                let tls = if tls {
                    Some(node::tls_connector(cfg.ca_file.as_deref(), true)?)
                } else {
                    None
                };
                let set = sentinel::Sentinels::new(
                    master.to_owned(),
                    sentinels,
                    tls,
                    cfg.username.clone(),
                    cfg.password.clone(),
                    cfg.connect_timeout,
                );
                pipeline(
                    node::Target::Sentinel(set),
                    format!("sentinel master {master}"),
                )
            }
            Topology::Cluster(_) => Conn::Cluster(cluster::Cluster::connect(cfg)?),
        };
        Ok(Self {
            conn,
            prefix: cfg.key_prefix.clone(),
            timeout: cfg.timeout,
            permits: Arc::new(Semaphore::new(cfg.max_in_flight.max(1))),
        })
    }

    /// The breaker states of the nodes known (`closed`, `open`, `half_open`).
    #[cfg(test)]
    pub(crate) fn breaker_states(&self) -> Vec<&'static str> {
        match &self.conn {
            Conn::Pipeline(_, b) => vec![b.state()],
            Conn::Cluster(c) => c.breaker_states(),
        }
    }

    async fn run(&self, hits: &[Hit<'_>], now_us: u64) -> Result<Vec<Outcome>, StoreError> {
        let give_up = Instant::now() + self.timeout;
        let keys: Vec<String> = hits.iter().map(|h| key_of(&self.prefix, h)).collect();
        match &self.conn {
            Conn::Pipeline(p, breaker) => {
                let ticket = breaker.admit()?;
                let permit = self.permit()?;
                let call = Call {
                    hits,
                    keys: &keys,
                    sel: 0..hits.len(),
                    mode: Mode::Hit,
                    now_us,
                    deadline_us: 0,
                };
                let p = p.pick();
                // On a dedicated thread, its coarse deadlines (no timer armed per call).
                let r = tollgate_common::local_runtime::timeout_at(
                    give_up,
                    self.call_pipeline(&p, call, give_up, permit),
                )
                .await
                .unwrap_or(Err(StoreError::Timeout));
                ticket.settle(breaker::Outcome::of(&r));
                r
            }
            Conn::Cluster(c) => {
                let _permit = self.permit()?;
                c.run(hits, &keys, now_us, give_up).await
            }
        }
    }

    fn permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, StoreError> {
        self.permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| StoreError::Overloaded)
    }

    /// The script call on the pipeline: `EVALSHA`, and `EVAL` once on `NOSCRIPT`, encoded
    /// straight into the connection's buffer, with the deadline of `give_up` on Redis' clock.
    async fn call_pipeline(
        &self,
        pipeline: &Pipeline,
        mut call: Call<'_, std::ops::Range<usize>>,
        give_up: Instant,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) -> Result<Vec<Outcome>, StoreError> {
        if !pipeline.clock().has_sample() {
            pipeline.ready().await?;
        }
        call.deadline_us = pipeline
            .clock()
            .deadline(give_up, self.timeout)
            .ok_or_else(|| StoreError::Unavailable("redis: no connection yet".into()))?;
        let n = call.len();
        let part = || -> Result<ScriptPart, StoreError> {
            let mut keys = Vec::with_capacity(n * 64);
            for k in call.keys() {
                resp::bulk(&mut keys, k.as_bytes());
            }
            Ok(ScriptPart {
                keys,
                args: call.request_args()?,
                shape: call.shape(),
            })
        };
        let mut reply = pipeline.script(part()?, Some(permit)).await?;
        if matches!(&reply, resp::Value::Error(e) if e.starts_with("NOSCRIPT")) {
            // The script is loaded by sending it: this call alone, as EVAL.
            let part = part()?;
            let encode = |buf: &mut Vec<u8>| {
                script::encode_merged(buf, b"EVAL", SCRIPT.as_bytes(), std::iter::once(&part));
            };
            reply = pipeline.request(encode, Some(self.permit()?)).await?;
            if let resp::Value::Bulk(bytes) = &reply {
                let mut one = script::split(bytes, std::iter::once(call.shape()))?;
                reply = resp::Value::Bulk(one.remove(0));
            }
        }
        let received = Instant::now();
        let values = match reply {
            resp::Value::Bulk(bytes) => script::values(&bytes)?,
            resp::Value::Error(e) => return Err(StoreError::Unavailable(format!("redis: {e}"))),
            other => return Err(unexpected(&other)),
        };
        let reply = script::reply(&values, n, Mode::Hit)?;
        pipeline.clock().observe(reply.redis_us, received);
        // No outcomes: Redis ran it after the deadline, and it changed nothing.
        reply.outcomes.ok_or(StoreError::Timeout)
    }
}

fn unexpected(v: &resp::Value) -> StoreError {
    StoreError::Unavailable(format!("unexpected script reply: {}", v.kind()))
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
            let span = tollgate_common::trace::span("redis", "client");
            let out =
                tracing::Instrument::instrument(self.run(hits, micros(now)), span.clone()).await;
            if out.is_err() {
                tollgate_common::trace::fail(&span);
            }
            out
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
    let mut digits = itoa::Buffer::new();
    s.push_str(":v2:");
    s.push_str(digits.format(r.store_code()));
    s.push(':');
    s.push_str(digits.format(r.window_us()));
    s.push(':');
    s.push_str(digits.format(r.limit));
    if let Some(b) = r.burst {
        s.push(':');
        s.push_str(digits.format(b));
    }
    if let Some(p) = r.period {
        s.push(':');
        s.push_str(&p.key_part());
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
        assert_eq!(ka, "p:{d|user=42}:v2:0:1000000:10");
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
