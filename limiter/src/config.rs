//! The limiter's config section — counter store, limits source, failure mode, default algorithm,
//! shadow mode, near-limit ratio, response headers — for any host to read: as its own
//! top-level keys (tollgate-ratelimit's file) or nested under one key (`rate_limit:`).
//!
//! ```yaml
//! store: {type: memory}            # or {type: redis, url: redis://..., ...}
//! limits: {path: /etc/tollgate/limits}   # a directory (one domain per file) or one file
//! failure_mode: error              # error (the caller's failure policy) | allow | deny
//! default_algorithm: sliding_window
//! shadow_mode: false               # count everything, deny nothing
//! near_limit_ratio: 0.8
//! headers: {ietf: true, x_ratelimit: false, retry_after: true}
//! ```
//!
//! Unknown keys are errors, named with their path, in both forms. serde's `flatten` cannot give
//! that (it disables `deny_unknown_fields`), so the section reads its keys through
//! [`LimiterFields`], which a host's own `Deserialize` calls for the keys it does not know
//! itself, and [`Key`] rejects a key that neither knows while it is read, so the error's path
//! and line point at it. Validation takes the section's path (`""` or `rate_limit`), so every
//! error names the field as the file spells it.

use std::fmt;

use serde::de::{self, DeserializeSeed, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use tollgate_common::config::{Errors, Validate, join};

use crate::algorithm::Algorithm;
use crate::engine::{EngineOptions, FailureMode};
use crate::limits::LimitsSource;
use crate::response::HeaderOptions;
use crate::store::StoreConfig;

/// The keys of the section.
pub const FIELDS: &[&str] = &[
    "store",
    "limits",
    "failure_mode",
    "default_algorithm",
    "shadow_mode",
    "near_limit_ratio",
    "headers",
];

fn default_near_limit_ratio() -> f64 {
    0.8
}

/// The limiter's settings.
#[derive(Debug, Clone)]
pub struct LimiterConfig {
    pub store: StoreConfig,
    /// The limits; none configured means every request is allowed.
    pub limits: Option<LimitsSource>,
    pub failure_mode: FailureMode,
    /// The algorithm of limits that do not name one, and of limits sent by the caller.
    pub default_algorithm: Algorithm,
    /// Global shadow mode: every limit counts, none denies.
    pub shadow_mode: bool,
    /// A within-limit hit that uses more than this share of its limit counts as near the limit.
    pub near_limit_ratio: f64,
    pub headers: HeaderOptions,
}

impl Default for LimiterConfig {
    fn default() -> Self {
        LimiterFields::default().finish()
    }
}

impl LimiterConfig {
    pub fn engine_options(&self) -> EngineOptions {
        EngineOptions {
            failure_mode: self.failure_mode,
            override_algorithm: self.default_algorithm,
            shadow_mode: self.shadow_mode,
            near_limit_ratio: self.near_limit_ratio,
            max_key_bytes: self.store.max_key_bytes(),
        }
    }
}

impl Validate for LimiterConfig {
    fn validate(&self, at: &str, errors: &mut Errors) {
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

/// The section's keys as they are read, one at a time, from a map that may hold a host's keys
/// too; [`Self::finish`] fills in the defaults.
#[derive(Debug, Default)]
pub struct LimiterFields {
    store: Option<StoreConfig>,
    limits: Option<Option<LimitsSource>>,
    failure_mode: Option<FailureMode>,
    default_algorithm: Option<Algorithm>,
    shadow_mode: Option<bool>,
    near_limit_ratio: Option<f64>,
    headers: Option<HeaderOptions>,
}

impl LimiterFields {
    /// Reads the value of `key`, one of [`FIELDS`], from `map`.
    pub fn read<'de, A: MapAccess<'de>>(
        &mut self,
        key: &'static str,
        map: &mut A,
    ) -> Result<(), A::Error> {
        match key {
            "store" => put(&mut self.store, key, map),
            "limits" => put(&mut self.limits, key, map),
            "failure_mode" => put(&mut self.failure_mode, key, map),
            "default_algorithm" => put(&mut self.default_algorithm, key, map),
            "shadow_mode" => put(&mut self.shadow_mode, key, map),
            "near_limit_ratio" => put(&mut self.near_limit_ratio, key, map),
            "headers" => put(&mut self.headers, key, map),
            other => Err(de::Error::unknown_field(other, FIELDS)),
        }
    }

    pub fn finish(self) -> LimiterConfig {
        LimiterConfig {
            store: self.store.unwrap_or_default(),
            limits: self.limits.flatten(),
            failure_mode: self.failure_mode.unwrap_or_default(),
            default_algorithm: self.default_algorithm.unwrap_or_default(),
            shadow_mode: self.shadow_mode.unwrap_or(false),
            near_limit_ratio: self
                .near_limit_ratio
                .unwrap_or_else(default_near_limit_ratio),
            headers: self.headers.unwrap_or_default(),
        }
    }
}

fn put<'de, T: Deserialize<'de>, A: MapAccess<'de>>(
    slot: &mut Option<T>,
    key: &'static str,
    map: &mut A,
) -> Result<(), A::Error> {
    if slot.is_some() {
        return Err(de::Error::duplicate_field(key));
    }
    *slot = Some(map.next_value()?);
    Ok(())
}

impl<'de> Deserialize<'de> for LimiterConfig {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Section;
        impl<'de> Visitor<'de> for Section {
            type Value = LimiterConfig;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("the rate limiter's settings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<LimiterConfig, A::Error> {
                let mut fields = LimiterFields::default();
                while let Some(key) = map.next_key_seed(Key(&[FIELDS]))? {
                    fields.read(key, &mut map)?;
                }
                Ok(fields.finish())
            }
        }
        d.deserialize_map(Section)
    }
}

/// A map key that must be one of the listed names (a host's own and [`FIELDS`]). An unknown
/// key fails as it is read, as `deny_unknown_fields` does, so the error names its path.
#[derive(Debug, Clone, Copy)]
pub struct Key<'a>(pub &'a [&'a [&'static str]]);

impl<'de> DeserializeSeed<'de> for Key<'_> {
    type Value = &'static str;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<&'static str, D::Error> {
        d.deserialize_identifier(self)
    }
}

impl Visitor<'_> for Key<'_> {
    type Value = &'static str;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a field name")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<&'static str, E> {
        let mut known = self.0.iter().flat_map(|list| list.iter());
        if let Some(k) = known.clone().find(|k| **k == v) {
            return Ok(k);
        }
        // The wording of serde's own unknown-field error.
        let expected: Vec<String> = known.by_ref().map(|k| format!("`{k}`")).collect();
        Err(E::custom(format_args!(
            "unknown field `{v}`, expected one of {}",
            expected.join(", ")
        )))
    }
}

#[cfg(test)]
mod tests;
