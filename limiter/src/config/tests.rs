//! The section read nested under a host's key, through the real config loader: defaults,
//! strict unknown keys, and every error with its path and line.

use serde::Deserialize;
use tollgate_common::config::{ConfigErrors, Defaults, Sources, load};

use super::*;

/// A host that embeds the section as `rate_limit:` next to its own settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Host {
    #[serde(default)]
    name: String,
    #[serde(default)]
    rate_limit: Option<LimiterConfig>,
}

impl Defaults for Host {}

impl Validate for Host {
    fn validate(&self, at: &str, errors: &mut Errors) {
        if let Some(r) = &self.rate_limit {
            r.validate(&join(at, "rate_limit"), errors);
        }
    }
}

fn host(text: &str) -> Result<Host, ConfigErrors> {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), text).unwrap();
    load::<Host>(&Sources {
        file: Some(f.path().into()),
        ..Default::default()
    })
}

fn error(text: &str) -> (String, Option<usize>, String) {
    let e = host(text).unwrap_err();
    assert_eq!(e.0.len(), 1, "{e}");
    let e = e.0.into_iter().next().unwrap();
    (e.field, e.line, e.reason)
}

#[test]
fn nested_section_reads_every_key_and_defaults_the_rest() {
    let h = host(
        "name: gw
rate_limit:
  store: {type: memory, max_keys: 10}
  limits: {path: /etc/limits}
  failure_mode: deny
  default_algorithm: gcra
  shadow_mode: true
  near_limit_ratio: 0.5
  headers: {x_ratelimit: true}
",
    )
    .unwrap();
    assert_eq!(h.name, "gw");
    let r = h.rate_limit.unwrap();
    assert_eq!(r.failure_mode, FailureMode::Deny);
    assert_eq!(r.default_algorithm, Algorithm::Gcra);
    assert!(r.shadow_mode);
    assert_eq!(r.near_limit_ratio, 0.5);
    assert!(r.headers.x_ratelimit && r.headers.ietf);
    assert_eq!(r.limits.unwrap().path, std::path::Path::new("/etc/limits"));
    assert!(matches!(r.store, StoreConfig::Memory(m) if m.max_keys == 10));

    let empty = host("rate_limit: {}\n").unwrap().rate_limit.unwrap();
    assert_eq!(empty.near_limit_ratio, 0.8);
    assert_eq!(empty.failure_mode, FailureMode::Error);
    assert!(empty.limits.is_none());
}

#[test]
fn nested_errors_name_their_path_and_line() {
    assert_eq!(
        error("name: gw\nrate_limit:\n  stor: {type: memory}\n"),
        (
            "rate_limit.stor".into(),
            Some(3),
            "unknown field `stor`, expected one of `store`, `limits`, `failure_mode`, \
             `default_algorithm`, `shadow_mode`, `near_limit_ratio`, `headers`"
                .into()
        )
    );
    let (field, line, reason) =
        error("rate_limit:\n  headers:\n    ietf: true\n    xratelimit: true\n");
    assert_eq!(
        (field.as_str(), line),
        ("rate_limit.headers.xratelimit", Some(4))
    );
    assert!(reason.starts_with("unknown field `xratelimit`"), "{reason}");
    let (field, line, _) = error("rate_limit:\n  failure_mode: maybe\n");
    assert_eq!((field.as_str(), line), ("rate_limit.failure_mode", Some(2)));
    // Semantic errors, through the section's own validation.
    assert_eq!(
        error("rate_limit:\n  near_limit_ratio: 0\n"),
        (
            "rate_limit.near_limit_ratio".into(),
            Some(2),
            "must be in (0, 1]".into()
        )
    );
    let (field, line, reason) = error("rate_limit:\n  store:\n    type: memory\n    max_keys: 0\n");
    assert_eq!(
        (field.as_str(), line, reason.as_str()),
        ("rate_limit.store.max_keys", Some(4), "must be at least 1")
    );
}

#[test]
fn the_section_is_strict_on_its_own() {
    let e = serde_yaml::from_str::<LimiterConfig>("failure_mode: allow\nshadow: true\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown field `shadow`"), "{e}");
    let c: LimiterConfig = serde_yaml::from_str("failure_mode: allow\n").unwrap();
    assert_eq!(c.failure_mode, FailureMode::Allow);
}
