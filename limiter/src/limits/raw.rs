//! The limits file as written: envoyproxy/ratelimit's YAML schema, field for field, plus this
//! service's extensions (`algorithm`, `burst`, `unit_multiplier`, `window`, `rate_limits`,
//! `calendar`, `time_zone`).
//!
//! Unknown fields are rejected, as envoyproxy/ratelimit does, so a typo never silently disables a
//! limit.

use std::time::Duration;

use serde::Deserialize;

use crate::algorithm::Algorithm;

/// One domain file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDomain {
    #[serde(default, deserialize_with = "scalar_string")]
    pub(crate) domain: String,
    #[serde(default)]
    pub(crate) descriptors: Vec<RawDescriptor>,
}

/// One entry of a descriptor list, possibly with nested lists.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDescriptor {
    #[serde(default, deserialize_with = "scalar_string")]
    pub(crate) key: String,
    #[serde(default, deserialize_with = "scalar_string")]
    pub(crate) value: String,
    pub(crate) rate_limit: Option<RawRateLimit>,
    /// Extension: several limits on one descriptor (e.g. a burst and a sustained rate).
    #[serde(default)]
    pub(crate) rate_limits: Vec<RawRateLimit>,
    #[serde(default)]
    pub(crate) shadow_mode: bool,
    /// envoyproxy/ratelimit's soft limit: over its limit, the request still passes unless every
    /// quota-mode descriptor of the request is over too.
    #[serde(default)]
    pub(crate) quota_mode: bool,
    #[serde(default)]
    pub(crate) detailed_metric: bool,
    /// Treated as `detailed_metric` for the limits on this descriptor.
    #[serde(default)]
    pub(crate) value_to_metric: bool,
    /// Every value matching this wildcard shares one counter instead of one per value.
    #[serde(default)]
    pub(crate) share_threshold: bool,
    #[serde(default)]
    pub(crate) descriptors: Vec<RawDescriptor>,
}

/// A `rate_limit` block.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRateLimit {
    #[serde(default, deserialize_with = "scalar_string")]
    pub(crate) name: String,
    #[serde(default)]
    pub(crate) replaces: Vec<RawReplaces>,
    #[serde(default)]
    pub(crate) unit: String,
    pub(crate) requests_per_unit: Option<u64>,
    #[serde(default)]
    pub(crate) unlimited: bool,
    /// Extension: the window is `unit_multiplier` units long.
    pub(crate) unit_multiplier: Option<u64>,
    /// Extension: the window as a duration (`30s`, `1h30m`), instead of `unit`.
    #[serde(default, with = "humantime_serde")]
    pub(crate) window: Option<Duration>,
    /// Extension: the counting algorithm; the service's default when absent.
    pub(crate) algorithm: Option<Algorithm>,
    /// Extension: token_bucket capacity / gcra burst tolerance.
    pub(crate) burst: Option<u64>,
    /// Extension: count per calendar period of `unit` (day, week, month, year), resetting at
    /// local midnight / Monday / the 1st / the 1st of January, instead of per window.
    #[serde(default)]
    pub(crate) calendar: bool,
    /// Extension: the IANA time zone a calendar period follows; UTC when absent.
    pub(crate) time_zone: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawReplaces {
    #[serde(default, deserialize_with = "scalar_string")]
    pub(crate) name: String,
}

/// envoyproxy/ratelimit reads scalars such as `value: 50` or `key: true` as the strings "50"
/// and "true"; strict YAML typing would otherwise reject them.
fn scalar_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    use serde::de::Error;
    match serde_yaml::Value::deserialize(d)? {
        serde_yaml::Value::Null => Ok(String::new()),
        serde_yaml::Value::String(s) => Ok(s),
        serde_yaml::Value::Bool(b) => Ok(b.to_string()),
        serde_yaml::Value::Number(n) => Ok(n.to_string()),
        other => Err(D::Error::custom(format!(
            "expected a string, found {other:?}"
        ))),
    }
}
