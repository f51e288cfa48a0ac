//! The times an operator types for `--since`/`--until` (and the bulk replay API's `since`/
//! `until`), turned into the exact text the store keeps in `dead_lettered_at` (RFC 3339, UTC,
//! milliseconds, `Z`: see [`crate::time`]) so that comparing text compares times.

use chrono::{DateTime, NaiveDate, NaiveTime, Utc};

use crate::time::rfc3339;

/// What was typed could not be read as a time.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "{0:?} is not a time: use RFC 3339 (2026-11-27T10:00:00Z, or with an offset like +01:00), \
     a date (2026-11-27, midnight UTC), a clock time today in UTC (10:00 or 10:00:30) \
     or an age (30m, 2h, 3days)"
)]
pub struct TimeError(pub String);

/// Reads `raw` relative to `now`: RFC 3339 with any offset, a date (midnight UTC), `HH:MM` or
/// `HH:MM:SS` (today, UTC) or an age (`2h`: two hours before `now`). Returns the stored format.
pub fn parse_instant(raw: &str, now: DateTime<Utc>) -> Result<String, TimeError> {
    let text = raw.trim();
    let bad = || TimeError(raw.to_string());
    if text.is_empty() {
        return Err(bad());
    }
    if let Ok(at) = DateTime::parse_from_rfc3339(text) {
        return Ok(rfc3339(at.with_timezone(&Utc)));
    }
    if let Ok(day) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return Ok(rfc3339(day.and_time(NaiveTime::MIN).and_utc()));
    }
    for format in ["%H:%M", "%H:%M:%S"] {
        if let Ok(clock) = NaiveTime::parse_from_str(text, format) {
            return Ok(rfc3339(now.date_naive().and_time(clock).and_utc()));
        }
    }
    // An age needs a unit: a bare number is more likely a mistake than seconds.
    if text.ends_with(|c: char| c.is_ascii_alphabetic())
        && let Ok(age) = humantime::parse_duration(text)
    {
        let age = chrono::Duration::from_std(age).map_err(|_| bad())?;
        return now.checked_sub_signed(age).map(rfc3339).ok_or_else(bad);
    }
    Err(bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-27T16:20:05.250Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn at(raw: &str) -> Result<String, TimeError> {
        parse_instant(raw, now())
    }

    #[test]
    fn rfc3339_is_normalised_to_utc_with_milliseconds() {
        assert_eq!(
            at("2026-11-27T10:00:00Z").unwrap(),
            "2026-11-27T10:00:00.000Z"
        );
        assert_eq!(
            at("2026-11-27T11:30:00+01:00").unwrap(),
            "2026-11-27T10:30:00.000Z"
        );
        assert_eq!(
            at("2026-11-27T01:00:00-05:00").unwrap(),
            "2026-11-27T06:00:00.000Z"
        );
        assert_eq!(
            at("2026-11-27T10:00:00.123456Z").unwrap(),
            "2026-11-27T10:00:00.123Z"
        );
        // The normalised text sorts like the stored values around it.
        assert!(at("2026-11-27T10:00:00Z").unwrap().as_str() < "2026-11-27T10:00:00.001Z");
    }

    #[test]
    fn a_date_is_midnight_utc_and_a_clock_time_is_today() {
        assert_eq!(at("2026-11-01").unwrap(), "2026-11-01T00:00:00.000Z");
        assert_eq!(at("10:00").unwrap(), "2026-11-27T10:00:00.000Z");
        assert_eq!(at(" 09:15:30 ").unwrap(), "2026-11-27T09:15:30.000Z");
    }

    #[test]
    fn an_age_counts_back_from_now() {
        assert_eq!(at("2h").unwrap(), "2026-11-27T14:20:05.250Z");
        assert_eq!(at("30m").unwrap(), "2026-11-27T15:50:05.250Z");
        assert_eq!(at("1day").unwrap(), "2026-11-26T16:20:05.250Z");
    }

    #[test]
    fn anything_else_is_a_clear_error() {
        for raw in [
            "",
            "yesterday",
            "10",
            "25:00",
            "2026-13-01",
            "2026-11-27T10:00:00",
            "2026-11-27 10:00",
            "10:00pm",
            "1000000000000y",
        ] {
            let err = at(raw).unwrap_err();
            assert_eq!(err, TimeError(raw.to_string()));
            assert!(
                err.to_string().contains("is not a time: use RFC 3339"),
                "{err}"
            );
        }
    }
}
