//! Cron schedules, shared by flow `schedule` triggers and connection sync
//! schedules: five fields (minute hour day month weekday) or six with
//! seconds first, in an IANA time zone (UTC by default).

use std::str::FromStr;

use chrono::{DateTime, Utc};
use croner::Cron;

/// How to write a cron expression, for error hints.
pub const CRON_HINT: &str =
    "five fields (minute hour day month weekday) or six with seconds first, e.g. `*/15 * * * *`";

/// Parses a cron expression of five or six fields.
pub fn parse_cron(expr: &str) -> Result<Cron, String> {
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .build()
        .parse(expr)
        .map_err(|e| format!("invalid cron expression `{expr}`: {e}"))
}

/// Parses an IANA time zone name; `None` is UTC.
pub fn parse_timezone(name: Option<&str>) -> Result<chrono_tz::Tz, String> {
    match name {
        None => Ok(chrono_tz::UTC),
        Some(z) => chrono_tz::Tz::from_str(z).map_err(|_| {
            format!("unknown time zone `{z}`; use an IANA name such as `Europe/Berlin`")
        }),
    }
}

/// The first tick strictly after `after`.
pub fn next_after(cron: &Cron, tz: chrono_tz::Tz, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    cron.find_next_occurrence(&after.with_timezone(&tz), false)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// The latest tick at or before `now`.
pub fn latest_at(cron: &Cron, tz: chrono_tz::Tz, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    cron.find_previous_occurrence(&now.with_timezone(&tz), true)
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_and_six_field_expressions_parse_and_tick_in_their_time_zone() {
        let every_15 = parse_cron("*/15 * * * *").unwrap();
        let at = DateTime::parse_from_rfc3339("2026-03-01T10:07:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            next_after(&every_15, chrono_tz::UTC, at)
                .unwrap()
                .to_rfc3339(),
            "2026-03-01T10:15:00+00:00"
        );
        let daily_berlin = parse_cron("0 0 3 * * *").unwrap();
        let tz = parse_timezone(Some("Europe/Berlin")).unwrap();
        assert_eq!(
            next_after(&daily_berlin, tz, at).unwrap().to_rfc3339(),
            "2026-03-02T02:00:00+00:00"
        );
        assert_eq!(
            latest_at(&every_15, chrono_tz::UTC, at)
                .unwrap()
                .to_rfc3339(),
            "2026-03-01T10:00:00+00:00"
        );
        assert!(parse_cron("every day").unwrap_err().contains("every day"));
        assert!(
            parse_timezone(Some("Mars/Olympus"))
                .unwrap_err()
                .contains("Mars/Olympus")
        );
    }
}
