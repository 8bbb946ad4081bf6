//! The service's own config file (`tollgate-ratelimit.yaml`): listeners and logs (shared with
//! authz), the counter store, where the limits live, the failure mode and response headers.
//!
//! ```yaml
//! server: {grpc_addr: 0.0.0.0:8081, http_addr: 0.0.0.0:8080}
//! log: {format: json, level: info}
//! store: {type: memory}            # or {type: redis, url: redis://..., ...}
//! limits: {path: /etc/tollgate/limits}   # a directory (one domain per file) or one file
//! failure_mode: error              # error (UNAVAILABLE to Envoy) | allow | deny
//! default_algorithm: sliding_window
//! shadow_mode: false               # count everything, deny nothing
//! near_limit_ratio: 0.8
//! headers: {ietf: true, x_ratelimit: false, retry_after: true}
//! ```

use serde::Deserialize;
use tollgate_common::config::{Errors, Validate, join};
use tollgate_server::ServerConfig;
use tollgate_server::telemetry::LogConfig;

use tollgate_limiter::algorithm::Algorithm;
use tollgate_limiter::engine::{EngineOptions, FailureMode};
use tollgate_limiter::limits::LimitsSource;
use tollgate_limiter::response::HeaderOptions;
use tollgate_limiter::store::StoreConfig;

fn default_near_limit_ratio() -> f64 {
    0.8
}

/// The whole config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub store: StoreConfig,
    /// The limits; none configured means every request is allowed.
    #[serde(default)]
    pub limits: Option<LimitsSource>,
    #[serde(default)]
    pub failure_mode: FailureMode,
    /// The algorithm of limits that do not name one, and of limits sent by Envoy.
    #[serde(default)]
    pub default_algorithm: Algorithm,
    /// Global shadow mode: every limit counts, none denies.
    #[serde(default)]
    pub shadow_mode: bool,
    /// A within-limit hit that uses more than this share of its limit counts as near the limit.
    #[serde(default = "default_near_limit_ratio")]
    pub near_limit_ratio: f64,
    #[serde(default)]
    pub headers: HeaderOptions,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: ServerConfig::default(),
            log: LogConfig::default(),
            store: StoreConfig::default(),
            limits: None,
            failure_mode: FailureMode::default(),
            default_algorithm: Algorithm::default(),
            shadow_mode: false,
            near_limit_ratio: default_near_limit_ratio(),
            headers: HeaderOptions::default(),
        }
    }
}

impl Config {
    /// A config for in-process tests: loopback port 0, memory store, limits from `path`.
    pub fn for_tests(limits: impl Into<std::path::PathBuf>) -> Self {
        Self {
            server: ServerConfig::ephemeral(),
            limits: Some(LimitsSource {
                path: limits.into(),
            }),
            ..Self::default()
        }
    }

    pub fn engine_options(&self) -> EngineOptions {
        EngineOptions {
            failure_mode: self.failure_mode,
            override_algorithm: self.default_algorithm,
            shadow_mode: self.shadow_mode,
            near_limit_ratio: self.near_limit_ratio,
        }
    }
}

impl Validate for Config {
    fn validate(&self, at: &str, errors: &mut Errors) {
        self.server.validate(&join(at, "server"), errors);
        self.log.validate(&join(at, "log"), errors);
        self.store.validate(&join(at, "store"), errors);
        if !(self.near_limit_ratio > 0.0 && self.near_limit_ratio <= 1.0) {
            errors.push(join(at, "near_limit_ratio"), "must be in (0, 1]");
        }
        if let Some(l) = &self.limits
            && l.path.as_os_str().is_empty()
        {
            errors.push(join(&join(at, "limits"), "path"), "must not be empty");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_common::config::{Sources, load};

    fn load_text(text: &str) -> Result<Config, tollgate_common::config::ConfigErrors> {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        load::<Config>(&Sources {
            file: Some(f.path().into()),
            ..Default::default()
        })
    }

    #[test]
    fn full_config_parses() {
        let c = load_text(
            "server: {grpc_addr: 127.0.0.1:9081, http_addr: 127.0.0.1:9080}
log: {format: text, level: debug}
store: {type: memory}
limits: {path: /etc/limits}
failure_mode: deny
default_algorithm: gcra
shadow_mode: true
near_limit_ratio: 0.9
headers: {ietf: false, x_ratelimit: true}
",
        )
        .unwrap();
        assert_eq!(c.failure_mode, FailureMode::Deny);
        assert_eq!(c.default_algorithm, Algorithm::Gcra);
        assert_eq!(
            c.headers,
            HeaderOptions {
                ietf: false,
                x_ratelimit: true,
                retry_after: true
            }
        );
        assert_eq!(c.limits.unwrap().path, std::path::Path::new("/etc/limits"));
    }

    #[test]
    fn empty_config_is_all_defaults() {
        let c = load_text("").unwrap();
        assert_eq!(c.failure_mode, FailureMode::Error);
        assert!(c.limits.is_none());
        assert_eq!(c.headers, HeaderOptions::default());
    }

    #[test]
    fn bad_values_are_reported_with_their_lines() {
        let e = load_text("near_limit_ratio: 0\n").unwrap_err();
        assert_eq!(e.0[0].field, "near_limit_ratio");
        assert_eq!(e.0[0].line, Some(1));
        let e = load_text("failure_mode: maybe\n").unwrap_err();
        assert_eq!(e.0[0].field, "failure_mode");
        let e = load_text("headers: {ietf: true, xratelimit: true}\n").unwrap_err();
        assert!(e.0[0].reason.contains("unknown field"), "{}", e.0[0].reason);
    }
}
