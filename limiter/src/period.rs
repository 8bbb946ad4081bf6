//! Billing periods: calendar days, weeks, months and years in UTC or an IANA time zone.
//!
//! A limit with `calendar: true` counts per period (`1,000,000 per month` resets at local
//! midnight on the 1st) instead of per fixed-length window. Only this module does calendar
//! math: every store receives the period's start and end as instants (the Redis script is
//! handed them as arguments), so replicas and stores agree on the period by construction.

use chrono::{DateTime, Datelike, Days, LocalResult, Months, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;

use crate::unit::Unit;

/// The calendar unit of a period.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CalendarUnit {
    /// From local midnight to the next.
    Day,
    /// From Monday's local midnight (ISO 8601 weeks).
    Week,
    /// From local midnight on the 1st.
    Month,
    /// From local midnight on the 1st of January.
    Year,
}

impl CalendarUnit {
    /// The calendar unit a limit's `unit` names, when it has one (`second` .. `hour` do not).
    pub fn of(unit: Unit) -> Option<Self> {
        match unit {
            Unit::Day => Some(Self::Day),
            Unit::Week => Some(Self::Week),
            Unit::Month => Some(Self::Month),
            Unit::Year => Some(Self::Year),
            Unit::Second | Unit::Minute | Unit::Hour => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Day => "day",
            Self::Week => "week",
            Self::Month => "month",
            Self::Year => "year",
        }
    }

    /// The first day of the period holding `date`.
    fn first_day(self, date: NaiveDate) -> NaiveDate {
        match self {
            Self::Day => date,
            Self::Week => date - Days::new(date.weekday().num_days_from_monday().into()),
            Self::Month => date.with_day(1).expect("the 1st exists"),
            Self::Year => date.with_ordinal(1).expect("the 1st of January exists"),
        }
    }

    /// The first day of the period after the one starting on `first`.
    fn next_first_day(self, first: NaiveDate) -> NaiveDate {
        match self {
            Self::Day => first + Days::new(1),
            Self::Week => first + Days::new(7),
            Self::Month => first + Months::new(1),
            Self::Year => first + Months::new(12),
        }
    }
}

/// A calendar period in a time zone.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Period {
    pub unit: CalendarUnit,
    pub zone: Tz,
}

impl Period {
    /// The period holding `now_us` (µs since the epoch), as `[start, end)` in µs since the epoch.
    pub fn bounds(&self, now_us: u64) -> (u64, u64) {
        let now = DateTime::<Utc>::from_timestamp_micros(now_us as i64).unwrap_or_default();
        let today = now.with_timezone(&self.zone).date_naive();
        let first = self.unit.first_day(today);
        let start = self.midnight(first);
        let end = self.midnight(self.unit.next_first_day(first));
        (start, end.max(start + 1))
    }

    /// The first instant of `date` in the zone, in µs: local midnight, the earlier one when a
    /// clock change repeats it, and the moment the clock jumps past it when a change skips it.
    fn midnight(&self, date: NaiveDate) -> u64 {
        let local = date.and_hms_opt(0, 0, 0).expect("midnight exists");
        let at = match self.zone.from_local_datetime(&local) {
            LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => t.with_timezone(&Utc),
            LocalResult::None => {
                // Skipped: the change happens at the instant midnight would be in the offset
                // in force before it (a day earlier, well before any change).
                let before = self
                    .zone
                    .offset_from_local_datetime(&(local - Days::new(1)))
                    .earliest()
                    .map(|o| chrono::Offset::fix(&o))
                    .unwrap_or(chrono::FixedOffset::east_opt(0).expect("zero offset"));
                Utc.from_utc_datetime(&(local - before))
            }
        };
        at.timestamp_micros().max(0) as u64
    }

    /// A stable text form for counter keys (`month@Europe/Berlin`).
    pub fn key_part(&self) -> String {
        format!("{}@{}", self.unit.name(), self.zone.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn us(rfc3339: &str) -> u64 {
        DateTime::parse_from_rfc3339(rfc3339)
            .unwrap()
            .timestamp_micros() as u64
    }

    fn period(unit: CalendarUnit, zone: &str) -> Period {
        Period {
            unit,
            zone: zone.parse().unwrap(),
        }
    }

    #[test]
    fn months_start_on_the_first_at_local_midnight() {
        let utc = period(CalendarUnit::Month, "UTC");
        assert_eq!(
            utc.bounds(us("2027-02-28T23:59:59.999999Z")),
            (us("2027-02-01T00:00:00Z"), us("2027-03-01T00:00:00Z"))
        );
        assert_eq!(
            utc.bounds(us("2027-03-01T00:00:00Z")).0,
            us("2027-03-01T00:00:00Z")
        );
        assert_eq!(
            utc.bounds(us("2028-12-31T12:00:00Z")),
            (us("2028-12-01T00:00:00Z"), us("2029-01-01T00:00:00Z"))
        );
        // Berlin: March 2027 starts at 23:00 UTC the day before (CET) and ends at 22:00 UTC
        // (CEST, after the last Sunday of March).
        let berlin = period(CalendarUnit::Month, "Europe/Berlin");
        assert_eq!(
            berlin.bounds(us("2027-03-15T12:00:00Z")),
            (us("2027-02-28T23:00:00Z"), us("2027-03-31T22:00:00Z"))
        );
        assert_eq!(
            berlin.bounds(us("2027-02-28T23:30:00Z")).0,
            us("2027-02-28T23:00:00Z"),
            "already March in Berlin"
        );
    }

    #[test]
    fn days_across_clock_changes_are_23_or_25_hours() {
        let ny = period(CalendarUnit::Day, "America/New_York");
        let (s, e) = ny.bounds(us("2027-03-14T12:00:00-04:00"));
        assert_eq!((e - s) / 3_600_000_000, 23);
        let (s, e) = ny.bounds(us("2027-11-07T12:00:00-05:00"));
        assert_eq!((e - s) / 3_600_000_000, 25);
        assert_eq!(s, us("2027-11-07T00:00:00-04:00"));
    }

    #[test]
    fn a_skipped_midnight_starts_the_day_when_the_clock_jumps() {
        // Santiago moves its clocks forward at midnight (00:00 -> 01:00) in early September.
        let scl = period(CalendarUnit::Day, "America/Santiago");
        let (s, _) = scl.bounds(us("2027-09-05T12:00:00-03:00"));
        assert_eq!(s, us("2027-09-05T01:00:00-03:00"));
    }

    #[test]
    fn weeks_start_on_monday_and_years_on_january_first() {
        let week = period(CalendarUnit::Week, "UTC");
        assert_eq!(
            week.bounds(us("2027-01-03T10:00:00Z")),
            (us("2026-12-28T00:00:00Z"), us("2027-01-04T00:00:00Z"))
        );
        let year = period(CalendarUnit::Year, "Asia/Tokyo");
        assert_eq!(
            year.bounds(us("2027-06-01T00:00:00Z")),
            (us("2026-12-31T15:00:00Z"), us("2027-12-31T15:00:00Z"))
        );
    }
}
