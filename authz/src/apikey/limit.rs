//! A key's own rate limit (`100/minute`): kept on the key record, carried by the identity, and
//! handed to the rate limiter in the ext_authz dynamic metadata in the shape Envoy's RateLimit
//! `limit: {dynamic_metadata: ...}` override reads, so it replaces the limit of the key's plan.
//!
//! The metadata entry `key_limit` is a struct `{requests_per_unit: <number>, unit: "MINUTE",
//! key_id: "<id>"}`. Envoy reads the first two as the descriptor's override (and ignores the
//! third); the shipped config also adds `key_id` as a descriptor entry, so a key with its own limit
//! counts apart from the other keys of its owner and plan.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The most requests per unit a key's own limit may allow.
pub const MAX_REQUESTS_PER_UNIT: u32 = 1_000_000_000;

/// A key's own limit: at most `requests_per_unit` calls per `unit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyLimit {
    pub requests_per_unit: u32,
    pub unit: LimitUnit,
}

/// The units a key's own limit is written in: those of Envoy's `RateLimitUnit` that are one
/// fixed window. Envoy's `MONTH` and `YEAR` are 30- and 365-day windows in the rate limiter,
/// which would read as billing periods and are not: they are not offered here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitUnit {
    Second,
    Minute,
    Hour,
    Day,
}

impl LimitUnit {
    const ALL: [LimitUnit; 4] = [
        LimitUnit::Second,
        LimitUnit::Minute,
        LimitUnit::Hour,
        LimitUnit::Day,
    ];

    /// The name in the admin API and the CLI.
    pub fn name(self) -> &'static str {
        match self {
            LimitUnit::Second => "second",
            LimitUnit::Minute => "minute",
            LimitUnit::Hour => "hour",
            LimitUnit::Day => "day",
        }
    }

    /// The name of Envoy's `RateLimitUnit` value, as its metadata override parses it.
    pub fn envoy_name(self) -> &'static str {
        match self {
            LimitUnit::Second => "SECOND",
            LimitUnit::Minute => "MINUTE",
            LimitUnit::Hour => "HOUR",
            LimitUnit::Day => "DAY",
        }
    }

    /// The window of one unit.
    pub fn window(self) -> Duration {
        Duration::from_secs(match self {
            LimitUnit::Second => 1,
            LimitUnit::Minute => 60,
            LimitUnit::Hour => 3600,
            LimitUnit::Day => 86_400,
        })
    }
}

impl KeyLimit {
    /// Parses `100/minute` (also `100/min`, `100/m`, `100/s`, `100/h`, `100/d`).
    pub fn parse(text: &str) -> Result<KeyLimit, String> {
        let (n, unit) = text
            .split_once('/')
            .ok_or_else(|| format!("{text:?} is not a limit like 100/minute"))?;
        let requests_per_unit = n
            .trim()
            .parse::<u32>()
            .map_err(|_| format!("{:?} is not a whole number of requests", n.trim()))?;
        let unit = match unit.trim().to_ascii_lowercase().as_str() {
            "s" | "sec" | "second" => LimitUnit::Second,
            "m" | "min" | "minute" => LimitUnit::Minute,
            "h" | "hour" => LimitUnit::Hour,
            "d" | "day" => LimitUnit::Day,
            other => {
                let names: Vec<&str> = LimitUnit::ALL.iter().map(|u| u.name()).collect();
                return Err(format!(
                    "unknown unit {other:?}: one of {}",
                    names.join(", ")
                ));
            }
        };
        let limit = KeyLimit {
            requests_per_unit,
            unit,
        };
        limit.check()?;
        Ok(limit)
    }

    /// Why this limit cannot be set, if it cannot.
    pub fn check(&self) -> Result<(), String> {
        if self.requests_per_unit == 0 {
            return Err(
                "rate_limit.requests_per_unit must be at least 1 (revoke a key to stop it)".into(),
            );
        }
        if self.requests_per_unit > MAX_REQUESTS_PER_UNIT {
            return Err(format!(
                "rate_limit.requests_per_unit must be at most {MAX_REQUESTS_PER_UNIT}"
            ));
        }
        Ok(())
    }
}

impl fmt::Display for KeyLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.requests_per_unit, self.unit.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_parse_in_short_and_long_forms_and_print_back() {
        for (text, n, unit) in [
            ("100/minute", 100, LimitUnit::Minute),
            ("2/m", 2, LimitUnit::Minute),
            (" 5 / Second ", 5, LimitUnit::Second),
            ("10/h", 10, LimitUnit::Hour),
            ("1000000/day", 1_000_000, LimitUnit::Day),
        ] {
            let l = KeyLimit::parse(text).unwrap();
            assert_eq!((l.requests_per_unit, l.unit), (n, unit), "{text}");
            assert_eq!(KeyLimit::parse(&l.to_string()).unwrap(), l);
        }
    }

    #[test]
    fn bad_limits_say_why() {
        for (text, why) in [
            ("100", "not a limit like 100/minute"),
            ("x/minute", "not a whole number"),
            ("-1/minute", "not a whole number"),
            ("0/minute", "at least 1"),
            ("2000000000/minute", "at most 1000000000"),
            (
                "5/month",
                "unknown unit \"month\": one of second, minute, hour, day",
            ),
            ("5/fortnight", "unknown unit"),
        ] {
            let e = KeyLimit::parse(text).unwrap_err();
            assert!(e.contains(why), "{text}: {e}");
        }
    }

    #[test]
    fn the_api_form_is_lower_case_and_strict() {
        let l: KeyLimit =
            serde_json::from_str(r#"{"requests_per_unit": 7, "unit": "hour"}"#).unwrap();
        assert_eq!(l.to_string(), "7/hour");
        assert!(
            serde_json::from_str::<KeyLimit>(r#"{"requests_per_unit": 7, "unit": "HOUR"}"#)
                .is_err()
        );
        assert!(
            serde_json::from_str::<KeyLimit>(
                r#"{"requests_per_unit": 7, "unit": "hour", "burst": 1}"#
            )
            .is_err()
        );
        assert_eq!(LimitUnit::Day.window(), Duration::from_secs(86_400));
    }
}
