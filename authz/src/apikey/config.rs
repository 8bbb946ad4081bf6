//! The `api_keys:` config section: where keys come from in a request, which store keeps them
//! (embedded file, or Redis standalone, Sentinel or Cluster), the cache, how long known keys
//! keep working from memory while the store is unreachable, and usage counting.
//!
//! The Redis fields mirror the counter store's (`url`, `cluster_nodes`, `username`,
//! `password`, `ca_file`, `timeout`, `connect_timeout`) and add Sentinel as
//! `sentinel_master` + `sentinel_nodes`, the pair envoyproxy/ratelimit's
//! `REDIS_TYPE=sentinel` + `REDIS_URL=<master>,<host:port>,...` becomes.

use std::path::PathBuf;
use std::time::Duration;

use redis::IntoConnectionInfo;
use serde::Deserialize;
use tollgate_common::config::{Errors, Validate, join};
use tollgate_common::secret::Secret;

/// The `api_keys:` config section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeysConfig {
    /// Request header that carries the key.
    #[serde(default = "default_header")]
    pub header: String,
    /// Query parameter that may carry the key instead (off unless set; query strings end up in
    /// access logs, so prefer the header).
    #[serde(default)]
    pub query_param: Option<String>,
    /// Cookie that may carry the key instead (off unless set).
    #[serde(default)]
    pub cookie: Option<String>,
    #[serde(default)]
    pub store: KeyStoreConfig,
    #[serde(default)]
    pub cache: KeyCacheConfig,
    /// How often last-used times are written to the store.
    #[serde(default = "default_flush", with = "humantime_serde")]
    pub last_used_flush: Duration,
    /// While the store (or its invalidation feed) is unreachable, a key verified before keeps
    /// verifying from memory for this long after the replica last knew it current; `0s` fails
    /// closed at once. Only acceptances are served this way, never a refusal.
    #[serde(default = "default_serve_stale", with = "humantime_serde")]
    pub serve_stale: Duration,
    /// Calls per key and day.
    #[serde(default)]
    pub usage: UsageConfig,
}

/// The `api_keys.usage:` section: calls per key and UTC day, kept in the key store.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageConfig {
    /// Count calls per key (on by default).
    #[serde(default = "default_usage_enabled")]
    pub enabled: bool,
    /// Days kept, today included; older days are deleted.
    #[serde(default = "default_retention_days")]
    pub retention_days: u32,
    /// How often the counts gathered in memory are written to the store (also at shutdown).
    #[serde(default = "default_usage_flush", with = "humantime_serde")]
    pub flush_interval: Duration,
}

impl Default for UsageConfig {
    fn default() -> Self {
        Self {
            enabled: default_usage_enabled(),
            retention_days: default_retention_days(),
            flush_interval: default_usage_flush(),
        }
    }
}

fn default_usage_enabled() -> bool {
    true
}

fn default_retention_days() -> u32 {
    90
}

fn default_usage_flush() -> Duration {
    Duration::from_secs(10)
}

/// The longest `usage.flush_interval`: counts wait in memory at most this long.
const MAX_USAGE_FLUSH: Duration = Duration::from_secs(3600);

impl Default for ApiKeysConfig {
    fn default() -> Self {
        Self {
            header: default_header(),
            query_param: None,
            cookie: None,
            store: KeyStoreConfig::default(),
            cache: KeyCacheConfig::default(),
            last_used_flush: default_flush(),
            serve_stale: default_serve_stale(),
            usage: UsageConfig::default(),
        }
    }
}

fn default_header() -> String {
    "x-api-key".into()
}

fn default_flush() -> Duration {
    Duration::from_secs(10)
}

fn default_serve_stale() -> Duration {
    Duration::from_secs(300)
}

/// The longest `serve_stale` accepted: the window is a bridge over an outage, not a mode.
const MAX_SERVE_STALE: Duration = Duration::from_secs(24 * 3600);

/// Where keys live.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum KeyStoreConfig {
    /// A redb file on local disk (single node).
    Embedded(EmbeddedStoreConfig),
    /// Redis, shared by every replica.
    Redis(RedisStoreConfig),
}

impl Default for KeyStoreConfig {
    fn default() -> Self {
        KeyStoreConfig::Embedded(EmbeddedStoreConfig::default())
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedStoreConfig {
    #[serde(default = "default_path")]
    pub path: PathBuf,
}

impl Default for EmbeddedStoreConfig {
    fn default() -> Self {
        Self {
            path: default_path(),
        }
    }
}

fn default_path() -> PathBuf {
    PathBuf::from("tollgate-keys.redb")
}

/// The Redis key store: exactly one of `url` (standalone), `sentinel_nodes` (with
/// `sentinel_master`) or `cluster_nodes`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisStoreConfig {
    /// Standalone Redis: `redis://[user[:password]@]host:port[/db]`, `rediss://` for TLS (a
    /// Secret, since it may hold a password).
    #[serde(default)]
    pub url: Option<Secret>,
    /// Redis Sentinel: the sentinels (`redis://[:password@]host:26379`; the password, if any,
    /// is the sentinels' own). The master they name is asked for; TLS to it when these are
    /// `rediss://`.
    #[serde(default)]
    pub sentinel_nodes: Vec<Secret>,
    /// The name the sentinels monitor the master under (`sentinel monitor <name> ...`).
    #[serde(default)]
    pub sentinel_master: Option<String>,
    /// Redis Cluster seed nodes (same URL forms as `url`).
    #[serde(default)]
    pub cluster_nodes: Vec<Secret>,
    /// Overrides the user name of the data nodes (not of the sentinels).
    #[serde(default)]
    pub username: Option<String>,
    /// Overrides the password of the data nodes (e.g. from `TOLLGATE_API_KEYS__STORE__PASSWORD`).
    #[serde(default)]
    pub password: Option<Secret>,
    /// PEM file of CAs trusted for `rediss://`, instead of the system's.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Deadline of one store call (connection included). A Check waits at most this for the
    /// store, so keep it well below Envoy's ext_authz timeout.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Deadline of establishing a connection in the background (invalidation feed, sentinel
    /// queries).
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
}

impl RedisStoreConfig {
    /// A standalone config with defaults.
    pub fn standalone(url: impl Into<String>) -> Self {
        Self::with(Some(Secret::new(url)), Vec::new(), None, Vec::new())
    }

    /// A Sentinel config with defaults.
    pub fn sentinel(master: impl Into<String>, nodes: impl IntoIterator<Item = String>) -> Self {
        let nodes = nodes.into_iter().map(Secret::new).collect();
        Self::with(None, nodes, Some(master.into()), Vec::new())
    }

    /// A Cluster config with defaults.
    pub fn cluster(nodes: impl IntoIterator<Item = String>) -> Self {
        let nodes = nodes.into_iter().map(Secret::new).collect();
        Self::with(None, Vec::new(), None, nodes)
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
            prefix: default_prefix(),
            timeout: default_timeout(),
            connect_timeout: default_connect_timeout(),
        }
    }

    /// The topology this config names (after validation: exactly one).
    pub(crate) fn topology(&self) -> Topology<'_> {
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

/// Which Redis deployment the key store talks to.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Topology<'a> {
    Standalone(&'a Secret),
    Sentinel {
        master: &'a str,
        nodes: &'a [Secret],
    },
    Cluster(&'a [Secret]),
}

fn default_prefix() -> String {
    "tollgate:apikeys:".into()
}

fn default_timeout() -> Duration {
    Duration::from_millis(100)
}

fn default_connect_timeout() -> Duration {
    Duration::from_secs(1)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyCacheConfig {
    /// Most keys held; unknown ids get a quarter of that on top.
    #[serde(default = "default_capacity")]
    pub capacity: usize,
    /// Backstop age of a cached key; changes invalidate entries long before.
    #[serde(default = "default_ttl", with = "humantime_serde")]
    pub ttl: Duration,
    /// How long an unknown id is remembered.
    #[serde(default = "default_negative_ttl", with = "humantime_serde")]
    pub negative_ttl: Duration,
}

impl Default for KeyCacheConfig {
    fn default() -> Self {
        Self {
            capacity: default_capacity(),
            ttl: default_ttl(),
            negative_ttl: default_negative_ttl(),
        }
    }
}

fn default_capacity() -> usize {
    100_000
}

fn default_ttl() -> Duration {
    Duration::from_secs(60)
}

fn default_negative_ttl() -> Duration {
    Duration::from_secs(5)
}

impl Validate for ApiKeysConfig {
    fn validate(&self, at: &str, errors: &mut Errors) {
        if !is_header_name(&self.header) {
            errors.push(join(at, "header"), "must be a lower-case HTTP header name");
        }
        if let Some(q) = &self.query_param
            && (q.is_empty()
                || !q
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c)))
        {
            errors.push(
                join(at, "query_param"),
                "must be a non-empty name of [A-Za-z0-9-_.]",
            );
        }
        if let Some(c) = &self.cookie
            && (c.is_empty()
                || !c
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b"-_.".contains(&c)))
        {
            errors.push(
                join(at, "cookie"),
                "must be a non-empty name of [A-Za-z0-9-_.]",
            );
        }
        if self.last_used_flush.is_zero() {
            errors.push(join(at, "last_used_flush"), "must be greater than 0");
        }
        if self.serve_stale > MAX_SERVE_STALE {
            errors.push(join(at, "serve_stale"), "must be at most 24h");
        }
        self.usage.validate(&join(at, "usage"), errors);
        let store = join(at, "store");
        match &self.store {
            KeyStoreConfig::Embedded(e) => {
                if e.path.as_os_str().is_empty() {
                    errors.push(join(&store, "path"), "must not be empty");
                }
            }
            KeyStoreConfig::Redis(r) => r.validate(&store, errors),
        }
        let cache = join(at, "cache");
        if self.cache.capacity == 0 {
            errors.push(join(&cache, "capacity"), "must be at least 1");
        }
        if self.cache.ttl.is_zero() {
            errors.push(join(&cache, "ttl"), "must be greater than 0");
        }
    }
}

impl Validate for UsageConfig {
    fn validate(&self, at: &str, errors: &mut Errors) {
        let max = super::usage::MAX_RETENTION_DAYS;
        if !(1..=max).contains(&self.retention_days) {
            errors.push(
                join(at, "retention_days"),
                format!("must be between 1 and {max}"),
            );
        }
        if self.flush_interval.is_zero() || self.flush_interval > MAX_USAGE_FLUSH {
            errors.push(
                join(at, "flush_interval"),
                "must be greater than 0 and at most 1h",
            );
        }
    }
}

impl Validate for RedisStoreConfig {
    fn validate(&self, at: &str, errors: &mut Errors) {
        let set = [
            self.url.is_some(),
            !self.sentinel_nodes.is_empty(),
            !self.cluster_nodes.is_empty(),
        ];
        match set.iter().filter(|s| **s).count() {
            0 => errors.push(
                join(at, "url"),
                "required (or sentinel_nodes with sentinel_master, or cluster_nodes)",
            ),
            1 => {}
            _ => errors.push(
                at.to_string(),
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
            (Some(m), false) if m.is_empty() || m.chars().any(char::is_whitespace) => errors.push(
                join(at, "sentinel_master"),
                "must be a non-empty name without spaces",
            ),
            _ => {}
        }
        for (field, u) in self.urls(at) {
            check_url(&field, u.expose(), errors);
        }
        if self.timeout.is_zero() {
            errors.push(join(at, "timeout"), "must be greater than 0");
        }
        if self.connect_timeout.is_zero() {
            errors.push(join(at, "connect_timeout"), "must be greater than 0");
        }
        errors.require_file(at, "ca_file", self.ca_file.as_deref());
    }
}

impl RedisStoreConfig {
    /// Every URL with the field it came from.
    fn urls<'a>(&'a self, at: &'a str) -> impl Iterator<Item = (String, &'a Secret)> + 'a {
        let list = |name: &'static str, v: &'a [Secret]| {
            v.iter()
                .enumerate()
                .map(move |(i, u)| (format!("{}[{i}]", join(at, name)), u))
        };
        self.url
            .iter()
            .map(|u| (join(at, "url"), u))
            .chain(list("sentinel_nodes", &self.sentinel_nodes))
            .chain(list("cluster_nodes", &self.cluster_nodes))
    }
}

fn check_url(field: &str, url: &str, errors: &mut Errors) {
    // The message never repeats the URL: it may hold a password.
    if !["redis://", "rediss://", "unix://", "redis+unix://"]
        .iter()
        .any(|s| url.starts_with(s))
    {
        errors.push(
            field.to_string(),
            "must start with redis://, rediss:// or unix://",
        );
    } else if let Err(e) = url.into_connection_info() {
        errors.push(
            field.to_string(),
            format!("not a valid Redis URL ({:?})", e.kind()),
        );
    }
}

fn is_header_name(h: &str) -> bool {
    !h.is_empty()
        && h.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"-_".contains(&c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors_of(yaml: &str) -> String {
        let cfg: ApiKeysConfig = serde_yaml::from_str(yaml).unwrap();
        let mut errors = Errors::for_file(None, None);
        cfg.validate("api_keys", &mut errors);
        errors
            .finish(())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default()
    }

    #[test]
    fn every_topology_parses_and_validates() {
        for yaml in [
            "store: {type: redis, url: 'redis://127.0.0.1:6379/0'}",
            "store: {type: redis, sentinel_master: mymaster, sentinel_nodes: ['redis://a:26379', 'redis://:pw@b:26379']}",
            "store: {type: redis, cluster_nodes: ['redis://a:7000', 'redis://b:7000']}",
        ] {
            assert_eq!(errors_of(yaml), "", "{yaml}");
        }
        let cfg: ApiKeysConfig = serde_yaml::from_str(
            "store: {type: redis, sentinel_master: m, sentinel_nodes: ['redis://a:26379']}",
        )
        .unwrap();
        let KeyStoreConfig::Redis(r) = cfg.store else {
            panic!()
        };
        assert!(matches!(
            r.topology(),
            Topology::Sentinel { master: "m", .. }
        ));
        assert_eq!(r.timeout, Duration::from_millis(100));
        assert_eq!(cfg.serve_stale, Duration::from_secs(300));
    }

    #[test]
    fn a_topology_is_named_exactly_once_and_sentinel_needs_both_halves() {
        let both =
            errors_of("store: {type: redis, url: 'redis://a', cluster_nodes: ['redis://b']}");
        assert!(
            both.contains("set only one of url, sentinel_nodes and cluster_nodes"),
            "{both}"
        );
        let none = errors_of("store: {type: redis}");
        assert!(none.contains("api_keys.store.url: required"), "{none}");
        let no_master = errors_of("store: {type: redis, sentinel_nodes: ['redis://a:26379']}");
        assert!(
            no_master.contains("api_keys.store.sentinel_master: required"),
            "{no_master}"
        );
        let no_nodes = errors_of("store: {type: redis, url: 'redis://a', sentinel_master: m}");
        assert!(
            no_nodes.contains("api_keys.store.sentinel_nodes: required"),
            "{no_nodes}"
        );
    }

    #[test]
    fn bad_urls_are_named_by_field_and_never_echoed() {
        let e = errors_of(
            "store: {type: redis, sentinel_master: m, sentinel_nodes: ['redis://a:26379', 'http://user:hunter2@b']}",
        );
        assert!(e.contains("api_keys.store.sentinel_nodes[1]"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        let e = errors_of("store: {type: redis, cluster_nodes: ['redis://a:notaport']}");
        assert!(e.contains("api_keys.store.cluster_nodes[0]"), "{e}");
    }

    #[test]
    fn the_examples_in_the_docs_load() {
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Doc {
            api_keys: ApiKeysConfig,
        }
        let doc = include_str!("../../../docs/api-keys.md");
        let blocks: Vec<&str> = doc
            .split("```yaml\n")
            .skip(1)
            .filter_map(|b| b.split("```").next())
            .filter(|b| b.starts_with("api_keys:"))
            .collect();
        assert!(blocks.len() >= 4, "{} examples", blocks.len());
        for b in blocks {
            let d: Doc = serde_yaml::from_str(b).unwrap_or_else(|e| panic!("{e}:\n{b}"));
            let mut errors = Errors::for_file(None, None);
            d.api_keys.validate("api_keys", &mut errors);
            // Files the examples name need not exist here.
            let left: Vec<_> = errors
                .finish(())
                .err()
                .map(|e| e.0)
                .unwrap_or_default()
                .into_iter()
                .filter(|e| !e.field.ends_with("ca_file"))
                .collect();
            assert!(left.is_empty(), "{left:?}\n{b}");
        }
    }

    #[test]
    fn serve_stale_is_bounded_and_zero_means_fail_closed() {
        assert_eq!(errors_of("serve_stale: 0s"), "");
        let e = errors_of("serve_stale: 25h");
        assert!(
            e.contains("api_keys.serve_stale: must be at most 24h"),
            "{e}"
        );
        let e = errors_of("store: {type: redis, url: 'redis://a', timeout: 0s}");
        assert!(e.contains("api_keys.store.timeout"), "{e}");
    }

    #[test]
    fn usage_has_defaults_and_bounds() {
        let cfg: ApiKeysConfig = serde_yaml::from_str("{}").unwrap();
        assert!(cfg.usage.enabled);
        assert_eq!(cfg.usage.retention_days, 90);
        assert_eq!(cfg.usage.flush_interval, Duration::from_secs(10));
        assert_eq!(
            errors_of("usage: {retention_days: 1, flush_interval: 1h}"),
            ""
        );
        let e = errors_of("usage: {retention_days: 0, flush_interval: 0s}");
        assert!(
            e.contains("api_keys.usage.retention_days: must be between 1 and 3660"),
            "{e}"
        );
        assert!(e.contains("api_keys.usage.flush_interval"), "{e}");
        let e = errors_of("usage: {retention_days: 3661, flush_interval: 2h}");
        assert!(
            e.contains("retention_days") && e.contains("at most 1h"),
            "{e}"
        );
        assert!(serde_yaml::from_str::<ApiKeysConfig>("usage: {keep: 3}").is_err());
    }
}
