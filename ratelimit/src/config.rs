//! The service's own config file (`tollgate-ratelimit.yaml`): listeners and logs (shared with
//! authz), and at the top level beside them the engine's section (`tollgate_limiter::config`):
//! the counter store, where the limits live, the failure mode and response headers.
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

use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use tollgate_common::config::{Defaults, Errors, Validate, join};
use tollgate_limiter::LimiterConfig;
use tollgate_limiter::config::{FIELDS, Key, LimiterFields};
use tollgate_limiter::limits::LimitsSource;
use tollgate_server::ServerConfig;
use tollgate_server::telemetry::LogConfig;

/// The service's own top-level keys; the rest are the limiter's ([`FIELDS`]).
const OWN: &[&str] = &["server", "log"];

/// Default gRPC port (Envoy's rate-limit cluster points here).
pub const DEFAULT_GRPC_PORT: u16 = 8081;
/// Default side listener port (/healthz, /readyz, /metrics, /config).
pub const DEFAULT_HTTP_PORT: u16 = 8080;

fn default_server() -> ServerConfig {
    ServerConfig::with_ports(DEFAULT_GRPC_PORT, DEFAULT_HTTP_PORT)
}

/// The whole config file.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerConfig,
    pub log: LogConfig,
    /// The engine's settings, written as top-level keys of this file.
    pub limiter: LimiterConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            server: default_server(),
            log: LogConfig::default(),
            limiter: LimiterConfig::default(),
        }
    }
}

impl Config {
    /// A config for in-process tests: loopback port 0, memory store, limits from `path`.
    pub fn for_tests(limits: impl Into<std::path::PathBuf>) -> Self {
        let mut config = Self {
            server: ServerConfig::ephemeral(),
            ..Self::default()
        };
        config.limiter.limits = Some(LimitsSource {
            path: limits.into(),
        });
        config
    }
}

impl<'de> Deserialize<'de> for Config {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct File;
        impl<'de> Visitor<'de> for File {
            type Value = Config;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("the tollgate-ratelimit config")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Config, A::Error> {
                let (mut server, mut log) = (None, None);
                let mut limiter = LimiterFields::default();
                while let Some(key) = map.next_key_seed(Key(&[OWN, FIELDS]))? {
                    match key {
                        "server" => server = Some(map.next_value()?),
                        "log" => log = Some(map.next_value()?),
                        other => limiter.read(other, &mut map)?,
                    }
                }
                Ok(Config {
                    server: server.unwrap_or_else(default_server),
                    log: log.unwrap_or_default(),
                    limiter: limiter.finish(),
                })
            }
        }
        d.deserialize_map(File)
    }
}

/// The `server:` ports are this service's even when the file sets only some fields.
impl Defaults for Config {
    fn defaults() -> serde_yaml::Value {
        ServerConfig::default_ports(DEFAULT_GRPC_PORT, DEFAULT_HTTP_PORT)
    }
}

impl Validate for Config {
    fn validate(&self, at: &str, errors: &mut Errors) {
        self.server.validate(&join(at, "server"), errors);
        self.log.validate(&join(at, "log"), errors);
        self.limiter.validate(at, errors);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_common::config::{Sources, load};
    use tollgate_limiter::FailureMode;
    use tollgate_limiter::HeaderOptions;
    use tollgate_limiter::algorithm::Algorithm;

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
        assert_eq!(c.server.grpc_addr.port(), 9081);
        let c = c.limiter;
        assert_eq!(c.failure_mode, FailureMode::Deny);
        assert_eq!(c.default_algorithm, Algorithm::Gcra);
        assert!(c.shadow_mode);
        assert_eq!(c.near_limit_ratio, 0.9);
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
        let c = load_text("").unwrap().limiter;
        assert_eq!(c.failure_mode, FailureMode::Error);
        assert!(c.limits.is_none());
        assert_eq!(c.headers, HeaderOptions::default());
    }

    #[test]
    fn a_partial_server_section_keeps_this_services_ports() {
        let c = load_text("server:\n  http_addr: 127.0.0.1:7001\n").unwrap();
        assert_eq!(c.server.grpc_addr.port(), DEFAULT_GRPC_PORT);
        assert_eq!(c.server.http_addr.port(), 7001);
        let c = load_text("").unwrap();
        assert_eq!(c.server.grpc_addr.port(), DEFAULT_GRPC_PORT);
        assert_eq!(c.server.http_addr.port(), DEFAULT_HTTP_PORT);
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

    #[test]
    fn an_unknown_top_level_key_is_named_with_its_line() {
        let e = load_text("log: {format: text}\nlimts: {path: /etc/limits}\n").unwrap_err();
        assert_eq!((e.0[0].field.as_str(), e.0[0].line), ("limts", Some(2)));
        assert!(
            e.0[0]
                .reason
                .starts_with("unknown field `limts`, expected one of `server`, `log`, `store`"),
            "{}",
            e.0[0].reason
        );
        let e = load_text("store:\n  type: redis\n  url: redis://r\n  timeout: 0s\n").unwrap_err();
        assert_eq!(
            (e.0[0].field.as_str(), e.0[0].line),
            ("store.timeout", Some(4))
        );
    }
}
