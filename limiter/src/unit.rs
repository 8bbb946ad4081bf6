//! The time units a limit is written in (`unit: minute`), the engine's own: the seven of
//! envoyproxy/ratelimit (and Envoy's `RateLimitUnit`), each a fixed window length.

use std::time::Duration;

/// A limit's unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unit {
    Second,
    Minute,
    Hour,
    Day,
    Week,
    /// 30 days, as envoyproxy/ratelimit counts it.
    Month,
    /// 365 days, as envoyproxy/ratelimit counts it.
    Year,
}

impl Unit {
    pub const ALL: [Unit; 7] = [
        Unit::Second,
        Unit::Minute,
        Unit::Hour,
        Unit::Day,
        Unit::Week,
        Unit::Month,
        Unit::Year,
    ];

    /// The window length of one unit.
    pub fn window(self) -> Duration {
        const DAY: u64 = 86_400;
        Duration::from_secs(match self {
            Unit::Second => 1,
            Unit::Minute => 60,
            Unit::Hour => 3600,
            Unit::Day => DAY,
            Unit::Week => 7 * DAY,
            Unit::Month => 30 * DAY,
            Unit::Year => 365 * DAY,
        })
    }

    /// The name in a limits file, lower case.
    pub fn name(self) -> &'static str {
        match self {
            Unit::Second => "second",
            Unit::Minute => "minute",
            Unit::Hour => "hour",
            Unit::Day => "day",
            Unit::Week => "week",
            Unit::Month => "month",
            Unit::Year => "year",
        }
    }

    /// A unit from its name in any case (`SECOND`, `Minute`), as envoyproxy/ratelimit reads it.
    pub fn parse(name: &str) -> Option<Unit> {
        Unit::ALL
            .into_iter()
            .find(|u| u.name().eq_ignore_ascii_case(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_in_any_case_and_nothing_else_does() {
        for u in Unit::ALL {
            assert_eq!(Unit::parse(u.name()), Some(u));
            assert_eq!(Unit::parse(&u.name().to_ascii_uppercase()), Some(u));
        }
        for bad in ["", "unknown", "weekly", "seconds", "fortnight"] {
            assert_eq!(Unit::parse(bad), None, "{bad}");
        }
    }
}
