//! Counter stores: where hits are counted, atomically, for every replica that shares them.
//!
//! A [`Store`] takes all hits of one request at once and applies them all-or-nothing: if any
//! enforced (non-shadow) hit is over its limit, nothing is counted, so a rejected request eats
//! no quota of any other limit. The arithmetic is [`crate::algorithm`]'s in every store.
//!
//! # Layout
//! - [`memory`]: the embedded default; sharded, bounded in bytes, expiring.
//! - [`redis`]: Redis standalone and Sentinel (one `EVALSHA` per call on one pipelined
//!   connection) and Redis Cluster; the script (`redis/script.lua`, a mirror of
//!   `algorithm.rs`), deadlines and circuit breakers.
//! - [`cache`]: the local cache of counters already over their limit, in front of Redis.
//! - `conformance`: the one suite every store passes.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::future::BoxFuture;
use serde::Deserialize;
use tollgate_common::config::{Errors, Validate, join};

use crate::algorithm::Rule;

pub mod cache;
pub mod memory;
pub mod redis;

#[cfg(test)]
mod conformance;
#[cfg(test)]
mod outage_tests;

pub use self::memory::{MemoryOptions, MemoryStore};
pub use self::redis::{RedisConfig, RedisStore};

/// One hit of one request against one counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Hit<'a> {
    /// Identifies the counter together with `rule` (the store appends the rule's algorithm,
    /// window, limit and burst, so two rules on one key never share a counter). For Redis
    /// Cluster, a `{tag}` inside the key chooses the slot: see [`redis`] for the policy.
    pub key: &'a str,
    pub rule: Rule,
    /// How much to count; 0 checks without counting.
    pub cost: u64,
    /// Evaluated and reported but never blocks the request; an over-limit shadow hit is not
    /// counted, so its counter is exactly what enforcement would have produced.
    pub shadow: bool,
}

/// The answer for one hit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outcome {
    /// This hit is within its limit. The request is admitted when every non-shadow hit is.
    pub admitted: bool,
    /// What is left of the limit (after this request, when the request was admitted; as
    /// stored, when it was rejected and so counted nothing).
    pub remaining: u64,
    /// Until the counter is back to its full limit with no further hits (0 when unused).
    pub reset_after: Duration,
    /// When not admitted: until the same hit could be admitted, absent other traffic.
    pub retry_after: Option<Duration>,
    /// Answered by the local over-limit cache without asking the store (count these as
    /// local-cache hits). In a request rejected by the cache, the other hits were not
    /// evaluated: they read `admitted: true`, `remaining: rule.limit`, `reset_after: 0`.
    pub cached: bool,
}

/// Why a store could not answer. Callers apply the configured failure mode.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store timed out")]
    Timeout,
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("too many store calls in flight")]
    Overloaded,
    /// The store stopped answering; calls fail fast until a probe is answered.
    #[error("store circuit open: failing fast until Redis answers a probe")]
    CircuitOpen,
    #[error("store configuration: {0}")]
    Config(String),
}

/// A shared counter store. Implementations are cheap to call concurrently.
pub trait Store: Send + Sync + 'static {
    /// All hits of one request, atomically: if any non-shadow hit is rejected, no counter
    /// changes; otherwise every admitted hit is counted. One outcome per hit, in order.
    /// `now` comes from the caller's clock; stores never read the system clock.
    fn hit<'a>(
        &'a self,
        hits: &'a [Hit<'a>],
        now: SystemTime,
    ) -> BoxFuture<'a, Result<Vec<Outcome>, StoreError>>;
}

/// The `store:` config section.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
// Built once per load and never moved in a hot path: boxing would only change the public API.
#[allow(clippy::large_enum_variant)]
pub enum StoreConfig {
    Memory(MemoryOptions),
    Redis(RedisConfig),
}

/// The default of `store.max_key_bytes`: longer counter keys are refused.
pub const DEFAULT_MAX_KEY_BYTES: usize = 1024;

pub(crate) fn default_max_key_bytes() -> usize {
    DEFAULT_MAX_KEY_BYTES
}

impl StoreConfig {
    /// `memory` or `redis` (standalone, Sentinel and Cluster alike), as `/config` shows it.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreConfig::Memory(_) => "memory",
            StoreConfig::Redis(_) => "redis",
        }
    }

    /// The longest counter key this store accepts (`max_key_bytes`).
    pub fn max_key_bytes(&self) -> usize {
        match self {
            StoreConfig::Memory(m) => m.max_key_bytes,
            StoreConfig::Redis(r) => r.max_key_bytes,
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig::Memory(MemoryOptions::default())
    }
}

impl Validate for StoreConfig {
    fn validate(&self, at: &str, errors: &mut Errors) {
        match self {
            StoreConfig::Memory(m) => m.validate(at, errors),
            StoreConfig::Redis(r) => r.validate(at, errors),
        }
    }
}

/// Builds the configured store. Redis connects lazily: an unreachable Redis at start-up is
/// not an error (calls fail with [`StoreError::Unavailable`] until it is back).
pub async fn build(cfg: &StoreConfig) -> Result<Arc<dyn Store>, StoreError> {
    match cfg {
        StoreConfig::Memory(m) => Ok(Arc::new(MemoryStore::new(m))),
        StoreConfig::Redis(r) => {
            let store = RedisStore::connect(r).await?;
            if r.over_limit_cache_keys == 0 {
                Ok(Arc::new(store))
            } else {
                Ok(Arc::new(cache::OverLimitCache::new(
                    store,
                    r.over_limit_cache_keys,
                )))
            }
        }
    }
}

/// Microseconds since the Unix epoch (0 before it).
pub fn micros(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

pub(crate) fn outcome(d: &crate::algorithm::Decision) -> Outcome {
    Outcome {
        admitted: d.admitted,
        remaining: d.remaining,
        reset_after: Duration::from_micros(d.reset_after_us),
        retry_after: d.retry_after_us.map(Duration::from_micros),
        cached: false,
    }
}

pub(crate) fn validate_positive(at: &str, field: &str, v: usize, errors: &mut Errors) {
    if v == 0 {
        errors.push(join(at, field), "must be at least 1");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors_of(yaml: &str) -> Vec<String> {
        let cfg: StoreConfig = serde_yaml::from_str(yaml).expect("parses");
        let mut e = Errors::for_file(None, None);
        cfg.validate("store", &mut e);
        e.finish(())
            .err()
            .map_or_else(Vec::new, |e| e.0.iter().map(ToString::to_string).collect())
    }

    /// The `store:` examples of docs/ratelimit.md load and validate.
    #[test]
    fn the_documented_store_examples_are_valid() {
        let doc = include_str!("../../../docs/ratelimit.md");
        let mut seen = 0;
        for block in doc.split("```yaml\n").skip(1) {
            let block = &block[..block.find("```").expect("closed block")];
            if !block.starts_with("store:") {
                continue;
            }
            seen += 1;
            let v: serde_yaml::Value = serde_yaml::from_str(block).expect("a YAML example");
            let cfg: StoreConfig = serde_yaml::from_value(v["store"].clone())
                .unwrap_or_else(|e| panic!("{e}:\n{block}"));
            let mut e = Errors::for_file(None, None);
            cfg.validate("store", &mut e);
            assert!(e.finish(()).is_ok(), "{block}");
        }
        assert!(seen > 0, "no store example found");
    }

    #[test]
    fn config_is_strict_and_fully_validated() {
        assert!(errors_of("type: memory").is_empty());
        assert!(errors_of("type: redis\nurl: rediss://:pw@redis:6380/2\ntimeout: 20ms").is_empty());
        assert!(
            errors_of("type: redis\ncluster_nodes: [redis://a:7000, redis://b:7000]").is_empty()
        );
        assert_eq!(
            errors_of("type: memory\nmax_keys: 0"),
            ["store.max_keys: must be at least 1"]
        );
        let e = errors_of(
            "type: redis\nurl: redis://a\ncluster_nodes: [redis://b]\nkey_prefix: 'x{'\ntimeout: 0s",
        );
        assert_eq!(e.len(), 3, "{e:?}");
        let e = errors_of("type: redis\nurl: 'http://:hunter2@x'");
        assert_eq!(e.len(), 1);
        assert!(
            !e[0].contains("hunter2"),
            "a URL's password never appears in errors: {e:?}"
        );
        assert!(
            serde_yaml::from_str::<StoreConfig>("type: memory\nmax_key: 1").is_err(),
            "unknown fields are errors"
        );
        assert!(serde_yaml::from_str::<StoreConfig>("type: memcached").is_err());
        assert_eq!(
            errors_of("type: memory\nmax_bytes: 1000\nmax_key_bytes: 0\nsweep_interval: 0s"),
            [
                "store.max_key_bytes: must be at least 1",
                "store.max_bytes: must be at least 1048576 (1 MiB)",
                "store.sweep_interval: must be positive"
            ]
        );
        assert!(
            errors_of("type: redis\nsentinel_master: m\nsentinel_nodes: [redis://s:26379]")
                .is_empty()
        );
        assert_eq!(
            errors_of("type: redis\nsentinel_nodes: [redis://s:26379]"),
            ["store.sentinel_master: required with sentinel_nodes: the name the sentinels monitor"]
        );
        assert_eq!(
            errors_of("type: redis\nurl: redis://a\nsentinel_master: m"),
            ["store.sentinel_nodes: required with sentinel_master: at least one sentinel"]
        );
        assert_eq!(
            errors_of(
                "type: redis\nurl: redis://a\nbreaker: {after_failures: 3, probe_interval: 0s}"
            ),
            ["store.breaker.probe_interval: must be positive"]
        );
    }
}
