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
    check_fields(expr).map_err(|why| format!("invalid cron expression `{expr}`: {why}"))?;
    croner::parser::CronParser::builder()
        .seconds(croner::parser::Seconds::Optional)
        .build()
        .parse(expr)
        .map_err(|e| {
            // croner's own words name its internals ("Component error"); say
            // what the author can act on.
            let text = e.to_string();
            let why = text
                .split_once(": ")
                .map_or(text.as_str(), |(_, rest)| rest)
                .trim_end_matches('.')
                .to_lowercase();
            format!("invalid cron expression `{expr}`: {why}")
        })
}

/// Checks the field count and the numbers of each field against its range,
/// naming the field.
fn check_fields(expr: &str) -> Result<(), String> {
    let fields: Vec<&str> = expr.split_whitespace().collect();
    const FIVE: [(&str, u32, u32); 5] = [
        ("minute", 0, 59),
        ("hour", 0, 23),
        ("day of month", 1, 31),
        ("month", 1, 12),
        ("day of week", 0, 7),
    ];
    let specs: Vec<(&str, u32, u32)> = match fields.len() {
        5 => FIVE.to_vec(),
        6 => std::iter::once(("second", 0, 59)).chain(FIVE).collect(),
        n => {
            return Err(format!(
                "it has {n} field(s); write 5 (minute hour day month weekday) or 6 (seconds first)"
            ));
        }
    };
    for (field, (name, lo, hi)) in fields.iter().zip(specs) {
        for number in field
            .split([',', '-', '/'])
            .filter(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
        {
            let n: u64 = number.parse().unwrap_or(u64::MAX);
            // A step (`*/90`) may exceed the range only as a step.
            let is_step = field
                .split_once('/')
                .is_some_and(|(_, step)| step == number);
            if !is_step && (n < u64::from(lo) || n > u64::from(hi)) {
                return Err(format!("{name} `{number}` is out of range {lo}-{hi}"));
            }
        }
    }
    Ok(())
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
    #[test]
    fn cron_errors_name_the_field_not_the_library() {
        let e = super::parse_cron("* * *").unwrap_err();
        assert!(
            e.ends_with(
                "it has 3 field(s); write 5 (minute hour day month weekday) or 6 (seconds first)"
            ),
            "{e}"
        );
        let e = super::parse_cron("99 * * * *").unwrap_err();
        assert!(e.ends_with("minute `99` is out of range 0-59"), "{e}");
        let e = super::parse_cron("0 0 9 13 *").unwrap_err();
        assert!(e.ends_with("month `13` is out of range 1-12"), "{e}");
        super::parse_cron("*/15 1-5 * * 1,5").unwrap();
        super::parse_cron("0 */20 * * * *").unwrap();
    }

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
