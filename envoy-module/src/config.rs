//! The module's configuration as Envoy hands it over: the filter config (`filter_name` picks the
//! filter, `filter_config` is YAML) and the per-route config. Parsing is strict (unknown fields
//! are errors) and every error names its line and field, so Envoy's log says what to fix.

use std::fmt;
use std::sync::Arc;

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::filter::{FailureMode, Filter};
use crate::gate::Gate;
use crate::probe::ProbeFilter;

/// A rejected filter or per-route config. Envoy refuses the config; the message goes to its log.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConfigError {
    #[error("unknown filter_name `{0}` (this module provides: tollgate, probe)")]
    UnknownFilter(String),
    #[error("filter_config of `{filter}` is not UTF-8")]
    NotUtf8 { filter: String },
    #[error("filter_config of `{filter}`: {}", join(.errors))]
    Invalid {
        filter: String,
        errors: Vec<FieldError>,
    },
}

/// One problem in a config document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FieldError {
    /// 1-based line in the `filter_config` text, when known.
    pub(crate) line: Option<usize>,
    /// Dotted field path (`deny.status`), empty for the document itself.
    pub(crate) field: String,
    pub(crate) reason: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(line) = self.line {
            write!(f, "line {line}: ")?;
        }
        if !self.field.is_empty() {
            write!(f, "{}: ", self.field)?;
        }
        f.write_str(&self.reason)
    }
}

fn join(errors: &[FieldError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Parses a YAML (or JSON) document strictly into `T`, reporting the failing field and line.
pub(crate) fn parse<T: DeserializeOwned>(filter: &str, text: &[u8]) -> Result<T, ConfigError> {
    let text = std::str::from_utf8(text).map_err(|_| ConfigError::NotUtf8 {
        filter: filter.to_string(),
    })?;
    // An empty filter_config means "all defaults", which YAML would read as null.
    let text = if text.trim().is_empty() { "{}" } else { text };
    let de = serde_yaml::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = e.path().to_string();
        let inner = e.into_inner();
        let line = inner.location().map(|l| l.line());
        let reason = strip_location(&inner.to_string());
        ConfigError::Invalid {
            filter: filter.to_string(),
            errors: vec![FieldError {
                line,
                field: if field == "." { String::new() } else { field },
                reason,
            }],
        }
    })
}

/// serde_yaml appends " at line L column C" to its messages; the line is reported separately.
fn strip_location(message: &str) -> String {
    match message.find(" at line ") {
        Some(at) => message[..at].to_string(),
        None => message.to_string(),
    }
}

/// A filter config accepted by `config_new`: the filter and what a module failure answers.
pub(crate) struct FilterConfig {
    pub(crate) filter: Arc<dyn Filter>,
    pub(crate) failure_mode: FailureMode,
}

impl FilterConfig {
    /// Builds the filter `filter_name` names from its `filter_config`.
    pub(crate) fn build(name: &str, config: &[u8]) -> Result<FilterConfig, ConfigError> {
        let (filter, failure_mode): (Arc<dyn Filter>, FailureMode) = match name {
            "probe" => {
                let probe = ProbeFilter::from_config(name, config)?;
                let mode = probe.failure_mode();
                (Arc::new(probe), mode)
            }
            "tollgate" => {
                let gate = Gate::from_config(name, config)?;
                let mode = gate.failure_mode();
                (Arc::new(gate), mode)
            }
            other => return Err(ConfigError::UnknownFilter(other.to_string())),
        };
        Ok(FilterConfig {
            filter,
            failure_mode,
        })
    }
}

/// Per-route settings (`DynamicModuleFilterPerRoute.filter_config`), the same for every filter
/// of this module.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RouteSettings {
    /// Skip the filter on this route entirely.
    #[serde(default)]
    pub(crate) disabled: bool,
    /// The rule this route's requests are decided by (filter-specific meaning).
    #[serde(default)]
    pub(crate) rule: Option<String>,
    /// The tollgate filter: the identity methods, comma-separated in order, in place of the
    /// rule's (the pair's `tollgate.identity` context extension).
    #[serde(default)]
    pub(crate) identity: Option<String>,
    /// The tollgate filter: scopes required on top of the rule's, space-separated (the pair's
    /// `tollgate.scopes`).
    #[serde(default)]
    pub(crate) scopes: Option<String>,
}

impl RouteSettings {
    pub(crate) fn build(name: &str, config: &[u8]) -> Result<RouteSettings, ConfigError> {
        match name {
            "probe" | "tollgate" => parse(name, config),
            other => Err(ConfigError::UnknownFilter(other.to_string())),
        }
    }
}

/// `true`, for serde's `default` of a setting that is on unless switched off.
pub(crate) fn yes() -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_filter_names_are_rejected_with_the_known_ones() {
        let err = FilterConfig::build("nope", b"").err().unwrap();
        assert_eq!(
            err.to_string(),
            "unknown filter_name `nope` (this module provides: tollgate, probe)"
        );
    }

    #[test]
    fn route_settings_are_strict_and_located() {
        let ok = RouteSettings::build("probe", b"disabled: true\nrule: admin\n").unwrap();
        assert!(ok.disabled);
        assert_eq!(ok.rule.as_deref(), Some("admin"));
        assert_eq!(
            RouteSettings::build("probe", b"").unwrap(),
            RouteSettings::default()
        );
        let err = RouteSettings::build("probe", b"rule: a\ndisabeld: true\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("filter_config of `probe`: line 2: "),
            "{err}"
        );
        assert!(err.contains("unknown field `disabeld`"), "{err}");
    }

    #[test]
    fn a_wrong_type_names_the_field_path() {
        let err = RouteSettings::build("probe", b"disabled: maybe\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 1: disabled: "), "{err}");
    }

    #[test]
    fn non_utf8_config_is_rejected() {
        let err = RouteSettings::build("probe", &[0xff, 0xfe]).unwrap_err();
        assert!(matches!(err, ConfigError::NotUtf8 { .. }));
    }
}
