//! Sluice's own filters and functions, beside minijinja's builtins.
//!
//! Dates and times travel as RFC 3339 strings in UTC (`2026-01-31T08:00:00Z`),
//! so they compare correctly as text and serialize as they are. Durations are
//! written as humantime text (`90s`, `2h`, `7d`). Encoding and hashing use the
//! `base64`, `hex`, `sha2` and `uuid` crates; dates use `chrono`.
//!
//! | name | kind | what it does |
//! |---|---|---|
//! | `now()` | function | the run's start time; the same value for every step, also after a resume |
//! | `uuid()` | function | a new UUID (v7, time-ordered) |
//! | `parse_datetime(fmt?)` | filter | text → RFC 3339 UTC; without `fmt` accepts RFC 3339, `YYYY-MM-DD`, `YYYY-MM-DD HH:MM:SS`, SAP `/Date(ms)/` and epoch seconds; with `fmt` a chrono format (read as UTC) |
//! | `format_datetime(fmt)` | filter | RFC 3339 → text in a chrono format, e.g. `'%d.%m.%Y'` |
//! | `add_duration(d)`, `sub_duration(d)` | filter | date ± a duration such as `'2h'`, `'7d'` |
//! | `timestamp` | filter | RFC 3339 → Unix seconds (a number) |
//! | `seconds_between(other)` | filter | `other - self` in seconds |
//! | `fromjson` | filter | JSON text → value (`tojson` is the reverse) |
//! | `b64encode`, `b64decode` | filter | standard base64 with padding (decode gives UTF-8 text) |
//! | `hexencode`, `hexdecode` | filter | lowercase hex of UTF-8 text, and back |
//! | `sha256` | filter | hex SHA-256 of the text |
//! | `as_uuid` | filter | a UUID derived from the text (RFC 9562 version 8 over its SHA-256): the same text gives the same UUID, for systems whose idempotency keys must be UUIDs (`${{ idempotency_key \| as_uuid }}`) |
//! | `urlencode` | filter | percent-encoding (minijinja builtin) |
//! | `coalesce(a, b, ...)` | function | the first argument that is defined, not none and not an empty string |
//! | `sum` | filter | the exact decimal sum of a list of numbers (`[0.1, 0.2] \| sum` is `0.3`; minijinja's own adds doubles) |

use base64::Engine as _;
use chrono::{DateTime, NaiveDate, NaiveDateTime, SecondsFormat, TimeZone, Utc};
use minijinja::{Environment, Error, ErrorKind, State, Value};
use sha2::{Digest, Sha256};

/// Names of the filters added here (for validation and hints).
pub const FILTERS: &[&str] = &[
    "parse_datetime",
    "format_datetime",
    "add_duration",
    "sub_duration",
    "timestamp",
    "seconds_between",
    "fromjson",
    "b64encode",
    "b64decode",
    "hexencode",
    "hexdecode",
    "sha256",
    "as_uuid",
];

/// Names of the functions added here.
pub const FUNCTIONS: &[&str] = &["now", "uuid", "coalesce"];

/// The context variable that holds the run's start time for `now()`.
pub const NOW_VAR: &str = "__now";

fn invalid(msg: impl Into<String>) -> Error {
    Error::new(ErrorKind::InvalidOperation, msg.into())
}

fn rfc3339(d: DateTime<Utc>) -> String {
    d.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// Parses what `parse_datetime` accepts without a format.
pub fn parse_any(text: &str) -> Option<DateTime<Utc>> {
    let t = text.trim();
    if let Ok(d) = DateTime::parse_from_rfc3339(t) {
        return Some(d.with_timezone(&Utc));
    }
    if let Some(ms) = t
        .strip_prefix("/Date(")
        .and_then(|r| r.strip_suffix(")/"))
        .and_then(|r| r.split(['+', '-']).next().filter(|s| !s.is_empty()))
        .and_then(|r| r.parse::<i64>().ok())
    {
        return Utc.timestamp_millis_opt(ms).single();
    }
    for fmt in [
        "%Y-%m-%d %H:%M:%S",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M:%S%.f",
    ] {
        if let Ok(n) = NaiveDateTime::parse_from_str(t, fmt) {
            return Some(Utc.from_utc_datetime(&n));
        }
    }
    if let Ok(d) = NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        return Some(Utc.from_utc_datetime(&d.and_hms_opt(0, 0, 0)?));
    }
    if let Ok(secs) = t.parse::<i64>() {
        return Utc.timestamp_opt(secs, 0).single();
    }
    None
}

fn date_arg(v: &Value, what: &str) -> Result<DateTime<Utc>, Error> {
    if let Some(n) = v.as_i64() {
        return Utc
            .timestamp_opt(n, 0)
            .single()
            .ok_or_else(|| invalid(format!("{what}: {n} is not a valid timestamp")));
    }
    let s = v
        .as_str()
        .ok_or_else(|| invalid(format!("{what} needs a date string, got {v}")))?;
    parse_any(s).ok_or_else(|| {
        invalid(format!(
            "{what}: `{s}` is not a date (expected RFC 3339 such as 2026-01-31T08:00:00Z)"
        ))
    })
}

fn duration_arg(text: &str) -> Result<chrono::Duration, Error> {
    let (neg, body) = match text.trim().strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.trim()),
    };
    let d = humantime::parse_duration(body).map_err(|e| {
        invalid(format!(
            "invalid duration `{text}`: {e} (e.g. `90s`, `2h`, `7d`)"
        ))
    })?;
    let d = chrono::Duration::from_std(d).map_err(|e| invalid(e.to_string()))?;
    Ok(if neg { -d } else { d })
}

fn parse_datetime(value: &Value, kwargs_or_fmt: Option<String>) -> Result<String, Error> {
    match kwargs_or_fmt {
        None => date_arg(value, "parse_datetime").map(rfc3339),
        Some(fmt) => {
            let s = value
                .as_str()
                .ok_or_else(|| invalid(format!("parse_datetime needs a string, got {value}")))?;
            if let Ok(d) = DateTime::parse_from_str(s, &fmt) {
                return Ok(rfc3339(d.with_timezone(&Utc)));
            }
            if let Ok(n) = NaiveDateTime::parse_from_str(s, &fmt) {
                return Ok(rfc3339(Utc.from_utc_datetime(&n)));
            }
            NaiveDate::parse_from_str(s, &fmt)
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .map(|n| rfc3339(Utc.from_utc_datetime(&n)))
                .ok_or_else(|| invalid(format!("`{s}` does not match the format `{fmt}`")))
        }
    }
}

fn format_datetime(value: &Value, fmt: String) -> Result<String, Error> {
    let d = date_arg(value, "format_datetime")?;
    let mut out = String::new();
    use std::fmt::Write;
    write!(out, "{}", d.format(&fmt))
        .map_err(|_| invalid(format!("invalid date format `{fmt}`")))?;
    Ok(out)
}

fn text_arg<'a>(v: &'a Value, what: &str) -> Result<&'a str, Error> {
    v.as_str()
        .ok_or_else(|| invalid(format!("{what} needs a string, got {v}")))
}

/// Adds the filters and functions to an environment.
pub fn register(env: &mut Environment<'static>) {
    env.add_function("now", |state: &State| -> Result<String, Error> {
        match state.lookup(NOW_VAR) {
            Some(v) if v.as_str().is_some() => Ok(v.as_str().unwrap_or_default().to_string()),
            _ => Ok(rfc3339(Utc::now())),
        }
    });
    env.add_function("uuid", || uuid::Uuid::now_v7().to_string());
    env.add_filter("parse_datetime", |v: &Value, fmt: Option<String>| {
        parse_datetime(v, fmt)
    });
    env.add_filter("format_datetime", format_datetime);
    env.add_filter(
        "add_duration",
        |v: &Value, d: String| -> Result<String, Error> {
            Ok(rfc3339(date_arg(v, "add_duration")? + duration_arg(&d)?))
        },
    );
    env.add_filter(
        "sub_duration",
        |v: &Value, d: String| -> Result<String, Error> {
            Ok(rfc3339(date_arg(v, "sub_duration")? - duration_arg(&d)?))
        },
    );
    env.add_filter("timestamp", |v: &Value| -> Result<i64, Error> {
        Ok(date_arg(v, "timestamp")?.timestamp())
    });
    env.add_filter(
        "seconds_between",
        |v: &Value, other: &Value| -> Result<i64, Error> {
            Ok(
                (date_arg(other, "seconds_between")? - date_arg(v, "seconds_between")?)
                    .num_seconds(),
            )
        },
    );
    env.add_filter("fromjson", |v: &Value| -> Result<Value, Error> {
        let s = text_arg(v, "fromjson")?;
        let json: serde_json::Value =
            serde_json::from_str(s).map_err(|e| invalid(format!("fromjson: invalid JSON: {e}")))?;
        Ok(crate::expr::from_json(&json))
    });
    env.add_filter("b64encode", |v: &Value| -> Result<String, Error> {
        Ok(base64::engine::general_purpose::STANDARD.encode(text_arg(v, "b64encode")?))
    });
    env.add_filter("b64decode", |v: &Value| -> Result<String, Error> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text_arg(v, "b64decode")?.trim())
            .map_err(|e| invalid(format!("b64decode: {e}")))?;
        String::from_utf8(bytes).map_err(|_| invalid("b64decode: the bytes are not UTF-8 text"))
    });
    env.add_filter("as_uuid", |v: &Value| -> Result<String, Error> {
        let digest = Sha256::digest(text_arg(v, "as_uuid")?.as_bytes());
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&digest[..16]);
        Ok(uuid::Builder::from_custom_bytes(bytes)
            .into_uuid()
            .hyphenated()
            .to_string())
    });
    env.add_filter("hexencode", |v: &Value| -> Result<String, Error> {
        Ok(hex::encode(text_arg(v, "hexencode")?))
    });
    env.add_filter("hexdecode", |v: &Value| -> Result<String, Error> {
        let bytes = hex::decode(text_arg(v, "hexdecode")?)
            .map_err(|e| invalid(format!("hexdecode: {e}")))?;
        String::from_utf8(bytes).map_err(|_| invalid("hexdecode: the bytes are not UTF-8 text"))
    });
    env.add_filter("sha256", |v: &Value| -> Result<String, Error> {
        let text = match v.as_str() {
            Some(s) => s.to_string(),
            None => v.to_string(),
        };
        Ok(hex::encode(Sha256::digest(text.as_bytes())))
    });
    env.add_filter("sum", exact_sum);
    env.add_function("coalesce", |args: minijinja::value::Rest<Value>| -> Value {
        args.iter()
            .find(|v| !v.is_undefined() && !v.is_none() && v.as_str() != Some(""))
            .cloned()
            .unwrap_or(Value::from(()))
    });
}

/// The sum of a list of numbers in exact decimals (each number taken at the
/// 15 significant digits a double carries, as the unified model does), so
/// amounts add up without binary drift.
fn exact_sum(v: &Value) -> Result<Value, Error> {
    use crate::unified::money;
    use rust_decimal::Decimal;
    let items = v
        .try_iter()
        .map_err(|_| invalid(format!("sum needs a list of numbers, got {v}")))?;
    let mut acc = Decimal::ZERO;
    for (i, item) in items.enumerate() {
        let n = if let Ok(int) = i64::try_from(item.clone()) {
            Decimal::from(int)
        } else if let Ok(f) = f64::try_from(item.clone()) {
            money::from_f64(f).map_err(invalid)?
        } else {
            return Err(invalid(format!(
                "sum needs a list of numbers: item {i} is {item}"
            )));
        };
        acc = acc
            .checked_add(n)
            .ok_or_else(|| invalid("sum is out of range"))?;
    }
    let json = money::to_json(acc).map_err(invalid)?;
    Ok(crate::expr::from_json(&json))
}

#[cfg(test)]
mod tests {
    fn eval(expr: &str) -> Result<serde_json::Value, String> {
        let t = crate::expr::Template::compile_condition(expr).map_err(|e| e.message)?;
        let ctx = minijinja::context! { __now => "2026-01-31T08:00:00Z" };
        t.eval(&ctx).map_err(|e| e.message)
    }

    #[test]
    fn coalesce_takes_the_first_value_that_is_there() {
        assert_eq!(eval("coalesce(none, '', 'b', 'c')").unwrap(), "b");
        assert_eq!(eval("coalesce(none)").unwrap(), serde_json::Value::Null);
        assert_eq!(eval("coalesce(0, 1)").unwrap(), serde_json::json!(0));
    }

    #[test]
    fn sums_of_amounts_have_no_binary_drift() {
        assert_eq!(eval("[0.1, 0.2] | sum").unwrap(), serde_json::json!(0.3));
        assert_eq!(eval("[1, 2, 3] | sum").unwrap(), serde_json::json!(6));
        assert_eq!(
            eval("[{'a': 19.99}, {'a': 0.01}] | map(attribute='a') | sum").unwrap(),
            serde_json::json!(20)
        );
        let e = eval("[1, 'x'] | sum").unwrap_err();
        assert!(e.contains("item 1 is x"), "{e}");
    }

    #[test]
    fn now_is_the_runs_start_time() {
        assert_eq!(eval("now()").unwrap(), "2026-01-31T08:00:00Z");
        assert_eq!(
            eval("now() | add_duration('36h')").unwrap(),
            "2026-02-01T20:00:00Z"
        );
        assert_eq!(
            eval("now() | sub_duration('1d') | format_datetime('%d.%m.%Y')").unwrap(),
            "30.01.2026"
        );
    }

    #[test]
    fn dates_parse_from_common_forms() {
        assert_eq!(
            eval("'/Date(1700000000000)/' | parse_datetime").unwrap(),
            "2023-11-14T22:13:20Z"
        );
        assert_eq!(
            eval("'31.01.2026' | parse_datetime('%d.%m.%Y')").unwrap(),
            "2026-01-31T00:00:00Z"
        );
        assert_eq!(
            eval("'2026-01-31' | timestamp").unwrap(),
            serde_json::json!(1769817600)
        );
        assert_eq!(
            eval("'2026-01-31T00:00:00Z' | seconds_between('2026-01-31T01:00:00Z')").unwrap(),
            serde_json::json!(3600)
        );
        let e = eval("'yesterday' | parse_datetime").unwrap_err();
        assert!(e.contains("not a date"), "{e}");
    }

    #[test]
    fn encodings_and_hashes_round_trip() {
        assert_eq!(eval("'user:pw' | b64encode").unwrap(), "dXNlcjpwdw==");
        assert_eq!(eval("'dXNlcjpwdw==' | b64decode").unwrap(), "user:pw");
        assert_eq!(eval("'hi' | hexencode").unwrap(), "6869");
        assert_eq!(eval("'6869' | hexdecode").unwrap(), "hi");
        // The same key, the same UUID (a retried write is recognised); a
        // valid RFC 9562 UUID of version 8.
        let a = eval("'run-1:create' | as_uuid").unwrap();
        assert_eq!(a, eval("'run-1:create' | as_uuid").unwrap());
        assert_ne!(a, eval("'run-1:create:1' | as_uuid").unwrap());
        let u = uuid::Uuid::parse_str(a.as_str().unwrap()).unwrap();
        assert_eq!(u.get_version_num(), 8, "{u}");
        assert_eq!(u.get_variant(), uuid::Variant::RFC4122);
        assert_eq!(
            eval("'abc' | sha256").unwrap(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            eval("('{\"a\": [1, 2]}' | fromjson).a[1]").unwrap(),
            serde_json::json!(2)
        );
        assert_eq!(
            uuid::Uuid::parse_str(eval("uuid()").unwrap().as_str().unwrap())
                .unwrap()
                .get_version_num(),
            7
        );
    }
}
