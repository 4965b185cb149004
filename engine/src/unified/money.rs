//! Exact amounts, prices and quantities.
//!
//! The unified model holds them as [`Decimal`]s: parsed from a system's
//! decimal strings (`"3286.00"`) digit for digit, summed, multiplied and
//! divided without binary rounding (`0.1 + 0.2` is `0.3`). In JSON they are
//! numbers. A JSON number is carried as an IEEE double, which holds every
//! decimal of up to 15 significant digits exactly (the shortest text that
//! reads back as the same double is the decimal itself), so:
//!
//! - a decimal of at most 15 significant digits is written as a JSON number
//!   and reads back as the same decimal; one with more is refused with an
//!   error naming the value, instead of being rounded silently;
//! - a JSON number read into the model is taken at 15 significant digits, the
//!   precision a double carries; the binary noise of an expression like
//!   `0.1 + 0.2` (`0.30000000000000004`) is dropped, giving `0.3`.
//!
//! Results of a division are rounded to a scale (6 decimals unless the
//! mapping says otherwise) and, when still longer, to 15 significant digits.

use std::str::FromStr;

use rust_decimal::prelude::ToPrimitive;
use rust_decimal::{Decimal, RoundingStrategy};
use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serializer};
use serde_json::Value;

/// Significant digits a JSON number carries exactly.
pub const JSON_DIGITS: u32 = 15;

/// Decimals kept by a division unless a mapping gives `round:`.
pub const DIVISION_SCALE: u32 = 6;

/// Significant digits of `d` (trailing zeros of the fraction not counted).
pub fn significant_digits(d: Decimal) -> u32 {
    let n = d.normalize();
    let mut m = n.mantissa().unsigned_abs();
    if m == 0 {
        return 1;
    }
    // Neither the leading zeros of a fraction nor the trailing zeros of an
    // integer are significant: 0.0012 and 1200 both have 2.
    while m.is_multiple_of(10) {
        m /= 10;
    }
    m.ilog10() + 1
}

/// A decimal from a JSON number taken at the 15 significant digits a double
/// carries.
pub fn from_f64(f: f64) -> Result<Decimal, String> {
    if !f.is_finite() {
        return Err(format!("{f} is not a finite number"));
    }
    // `{:e}` with 14 decimals: exactly 15 significant digits, rounded half
    // to even by the formatter from the double's exact binary value.
    let text = format!("{f:.14e}");
    Decimal::from_scientific(&text)
        .map(|d| d.normalize())
        .map_err(|_| format!("{f} is out of the range of an amount"))
}

/// Parses a decimal from a system's value: a JSON number, or a decimal
/// string (blanks around it allowed; `1e3` too). `Ok(None)` for null or an
/// empty string.
pub fn parse(v: &Value) -> Result<Option<Decimal>, String> {
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                return Ok(Some(Decimal::from(i)));
            }
            if let Some(u) = n.as_u64() {
                return Ok(Some(Decimal::from(u)));
            }
            let f = n.as_f64().unwrap_or(f64::NAN);
            if let Some(d) = short_decimal(f) {
                return Ok(Some(d));
            }
            // The shortest text of the double is the decimal when it has at
            // most 15 significant digits.
            if f.is_finite() {
                let mut buf = ryu::Buffer::new();
                let text = buf.format_finite(f);
                if !text.contains(['e', 'E'])
                    && text
                        .bytes()
                        .filter(u8::is_ascii_digit)
                        .skip_while(|b| *b == b'0')
                        .count()
                        <= JSON_DIGITS as usize
                    && let Some(d) = parse_plain(text)
                        .or_else(|| Decimal::from_str_exact(text).ok().map(|d| d.normalize()))
                {
                    return Ok(Some(d));
                }
            }
            from_f64(f).map(Some)
        }
        Value::String(s) => {
            let t = s.trim();
            if t.is_empty() {
                return Ok(None);
            }
            if let Some(d) = parse_plain(t) {
                return Ok(Some(d));
            }
            let d = Decimal::from_str_exact(t)
                .or_else(|_| Decimal::from_scientific(t))
                .or_else(|_| Decimal::from_str(t))
                .map_err(|_| format!("`{s}` is not a number"))?;
            Ok(Some(d.normalize()))
        }
        other => Err(format!("{other} is not a number")),
    }
}

/// The decimal of at most 15 significant digits and at most 9 decimals that
/// reads as `f`, found without formatting the double: the numbers the
/// mapping writes and reads back (`1314.4`). Correct because a double holds
/// every decimal of at most 15 significant digits exactly (two such decimals
/// never read as the same double), and `m / 10^s` with `m < 2^53` is the
/// correctly rounded double of the decimal `m·10^-s` (both operands are
/// exact doubles and IEEE division rounds correctly). `None` when there is
/// no such decimal; the general path then decides.
fn short_decimal(f: f64) -> Option<Decimal> {
    const LIMIT: f64 = 1e15;
    let mut scale_pow = 1.0_f64;
    for scale in 0..=9u32 {
        let m = (f * scale_pow).round();
        if m.abs() >= LIMIT {
            return None;
        }
        if m / scale_pow == f {
            return Some(Decimal::new(m as i64, scale));
        }
        scale_pow *= 10.0;
    }
    None
}

/// A plain decimal (`-12`, `3286.00`, `.5`: an optional sign, at most 18
/// digits, an optional point) without trailing zeros, read without the
/// general parser: the form nearly every system's amounts take. `None` for
/// anything else (the general parser then decides).
fn parse_plain(t: &str) -> Option<Decimal> {
    let (negative, digits) = match t.as_bytes() {
        [b'-', rest @ ..] => (true, rest),
        [b'+', rest @ ..] => (false, rest),
        rest => (false, rest),
    };
    let mut mantissa: i64 = 0;
    let mut count = 0;
    let mut scale: Option<u32> = None;
    for &b in digits {
        match b {
            b'0'..=b'9' => {
                count += 1;
                if count > 18 {
                    return None;
                }
                mantissa = mantissa * 10 + i64::from(b - b'0');
                if let Some(s) = scale.as_mut() {
                    *s += 1;
                }
            }
            b'.' if scale.is_none() => scale = Some(0),
            _ => return None,
        }
    }
    if count == 0 {
        return None;
    }
    let mut scale = scale.unwrap_or(0);
    while scale > 0 && mantissa % 10 == 0 {
        mantissa /= 10;
        scale -= 1;
    }
    Some(Decimal::new(
        if negative { -mantissa } else { mantissa },
        scale,
    ))
}

/// The JSON number of `d`; an error when it has more significant digits than
/// a JSON number carries exactly.
pub fn to_json(d: Decimal) -> Result<Value, String> {
    let d = d.normalize();
    // Integers are exact in JSON whatever their length (serde_json keeps them as i64).
    if d.scale() == 0
        && let Some(i) = d.to_i64()
    {
        return Ok(Value::from(i));
    }
    if significant_digits(d) > JSON_DIGITS {
        return Err(format!(
            "{d} has more than {JSON_DIGITS} significant digits, which a JSON number cannot carry exactly"
        ));
    }
    // Clinger's fast path: a mantissa below 2^53 and a power of ten up to
    // 10^22 are exact doubles, and IEEE division rounds correctly, so this is
    // the double nearest the decimal, as parsing its text would give.
    let m = d.mantissa();
    let f: f64 = if m.unsigned_abs() < (1u128 << 53) && d.scale() <= 22 {
        m as f64 / 10f64.powi(d.scale() as i32)
    } else {
        d.to_string()
            .parse()
            .map_err(|_| format!("{d} is not a number"))?
    };
    serde_json::Number::from_f64(f)
        .map(Value::Number)
        .ok_or_else(|| format!("{d} is not a finite number"))
}

/// A JSON number as the model writes it: what [`parse`] then [`to_json`]
/// give, without building a decimal when the number is already in that form
/// (an integer, or a double whose shortest text has at most 15 significant
/// digits): the fast check of records on the connectors' hot path.
pub fn normalize_number(n: &serde_json::Number) -> Result<Value, String> {
    if n.is_i64() {
        return Ok(Value::Number(n.clone()));
    }
    if let Some(f) = n.as_f64().filter(|_| n.is_f64()) {
        if f.fract() == 0.0 && f.abs() < 9.0e15 {
            return Ok(Value::from(f as i64));
        }
        if short_decimal(f).is_some() {
            return Ok(Value::Number(n.clone()));
        }
        let mut buf = ryu::Buffer::new();
        let text = buf.format(f);
        let mantissa = text.split(['e', 'E']).next().unwrap_or(text);
        let digits = mantissa
            .bytes()
            .filter(u8::is_ascii_digit)
            .skip_while(|b| *b == b'0')
            .count();
        if f.is_finite() && digits <= JSON_DIGITS as usize {
            return Ok(Value::Number(n.clone()));
        }
    }
    let d = parse(&Value::Number(n.clone()))?.unwrap_or_default();
    to_json(d)
}

/// `d` rounded to `scale` decimals (half away from zero), then to 15
/// significant digits if it is still longer: the result of a division.
pub fn round_quotient(d: Decimal, scale: u32) -> Decimal {
    let d = d
        .round_dp_with_strategy(scale, RoundingStrategy::MidpointAwayFromZero)
        .normalize();
    let digits = significant_digits(d);
    if digits <= JSON_DIGITS {
        return d;
    }
    let drop = digits - JSON_DIGITS;
    d.round_dp_with_strategy(
        d.scale().saturating_sub(drop),
        RoundingStrategy::MidpointAwayFromZero,
    )
    .normalize()
}

/// A model field's decimal as a JSON number (serde `with`).
pub mod number {
    use super::*;

    /// Writes the decimal as a JSON number.
    pub fn serialize<S: Serializer>(d: &Decimal, s: S) -> Result<S::Ok, S::Error> {
        match to_json(*d).map_err(serde::ser::Error::custom)? {
            Value::Number(n) => serde::Serialize::serialize(&n, s),
            _ => unreachable!("to_json gives numbers"),
        }
    }

    /// Reads a JSON number (not a string: the model's JSON holds numbers).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Decimal, D::Error> {
        let n = serde_json::Number::deserialize(d)?;
        parse(&Value::Number(n))
            .map_err(D::Error::custom)?
            .ok_or_else(|| D::Error::custom("expected a number"))
    }
}

/// An optional model decimal as a JSON number or null (serde `with`).
pub mod option {
    use super::*;

    /// Writes the decimal as a JSON number, or null.
    pub fn serialize<S: Serializer>(d: &Option<Decimal>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => number::serialize(d, s),
            None => s.serialize_none(),
        }
    }

    /// Reads a JSON number or null.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Decimal>, D::Error> {
        match Option::<serde_json::Number>::deserialize(d)? {
            Some(n) => parse(&Value::Number(n)).map_err(D::Error::custom),
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dec(s: &str) -> Decimal {
        Decimal::from_str_exact(s).unwrap()
    }

    #[test]
    fn strings_are_parsed_digit_for_digit_and_written_back_the_same() {
        for s in [
            "3286.00",
            "0.1",
            "13144",
            "-12.345",
            "9999999999999.99",
            "0.000001",
        ] {
            let d = parse(&json!(s)).unwrap().unwrap();
            assert_eq!(d, dec(s).normalize());
            let back = to_json(d).unwrap();
            assert_eq!(parse(&back).unwrap().unwrap(), d, "{s} round-trips");
        }
        assert_eq!(
            to_json(dec("9999999999999.99")).unwrap().to_string(),
            "9999999999999.99"
        );
    }

    #[test]
    fn doubles_read_as_the_decimal_their_shortest_text_shows() {
        let mut f = 0.5_f64;
        let mut samples = vec![
            0.1,
            0.2,
            0.3,
            1314.4,
            13144.0,
            -32.86,
            0.1 + 0.2,
            1e-9,
            1.5e-10,
            123456789.123456,
            9.99e14,
            1e15,
            2.5e15,
            1e22,
            1.0 / 3.0,
            -0.0,
            5e-324,
            f64::MAX,
        ];
        for _ in 0..2000 {
            // A spread of magnitudes and digit counts.
            f = (f * 7.31 + 0.137).fract() * 10f64.powi((samples.len() % 24) as i32 - 8);
            samples.push(f);
            samples.push((f * 100.0).round() / 100.0);
        }
        for f in samples {
            let mut buf = ryu::Buffer::new();
            let text = buf.format_finite(f);
            let by_text = Decimal::from_scientific(text)
                .or_else(|_| Decimal::from_str_exact(text))
                .map(|d| d.normalize());
            if let Some(d) = short_decimal(f) {
                assert_eq!(Ok(d), by_text, "{f}: {text}");
                assert_eq!(
                    d.to_string(),
                    by_text.clone().unwrap().to_string(),
                    "{f}: scale"
                );
            }
            // Through `parse`, a double reads as the decimal of its shortest
            // text whenever that has at most 15 significant digits.
            if let Ok(d) = by_text
                && significant_digits(d) <= JSON_DIGITS
                && f.is_finite()
            {
                let n = serde_json::Number::from_f64(f).unwrap();
                assert_eq!(parse(&Value::Number(n)).unwrap(), Some(d), "{f}: {text}");
            }
        }
    }

    #[test]
    fn the_plain_reader_agrees_with_the_general_parser() {
        for s in [
            "0",
            "-0.00",
            "+5",
            "007.50",
            "3286.00",
            "-12.345",
            "0.000001",
            "123456789012345678",
            "12345678901234567.8",
            "1234567890123456789",
            "999999999999999999.5",
        ] {
            let general = Decimal::from_str_exact(s).unwrap().normalize();
            assert_eq!(parse(&json!(s)).unwrap(), Some(general), "{s}");
            assert_eq!(
                parse(&json!(s)).unwrap().unwrap().to_string(),
                general.to_string(),
                "{s}: same scale"
            );
        }
        for bad in ["1.2.3", "12a", "-", ".", "1,5", "- 1"] {
            assert!(parse(&json!(bad)).is_err(), "{bad} is not a number");
        }
    }

    #[test]
    fn sums_have_no_binary_drift() {
        let a = parse(&json!(0.1)).unwrap().unwrap();
        let b = parse(&json!(0.2)).unwrap().unwrap();
        assert_eq!(to_json(a + b).unwrap(), json!(0.3));
        // The noise of an f64 sum made by an expression is dropped on the way in.
        assert_eq!(parse(&json!(0.1 + 0.2)).unwrap().unwrap(), dec("0.3"));
    }

    #[test]
    fn more_digits_than_json_carries_is_an_error_not_a_rounding() {
        let e = to_json(dec("12345678901234.567")).unwrap_err();
        assert!(e.contains("more than 15 significant digits"), "{e}");
        assert!(e.contains("12345678901234.567"), "{e}");
    }

    #[test]
    fn the_fast_normalization_agrees_with_parse_then_to_json() {
        for n in [
            json!(13144.0),
            json!(13144),
            json!(0.3),
            json!(0.1 + 0.2),
            json!(-1.5e-7),
            json!(12345678901234567_i64),
            json!(1.0e20),
            json!(123456.789012345),
            json!(1_234_567.890_123_456_7),
        ] {
            let Value::Number(num) = &n else {
                unreachable!()
            };
            let slow = parse(&n).unwrap().map(to_json).unwrap();
            assert_eq!(normalize_number(num), slow, "{n}");
        }
        assert_eq!(
            normalize_number(&serde_json::Number::from_f64(13144.0).unwrap())
                .unwrap()
                .to_string(),
            "13144"
        );
    }

    #[test]
    fn the_fast_double_is_the_parsed_double() {
        for text in [
            "0.1",
            "13144.9",
            "32.86",
            "9999999999999.99",
            "0.000001",
            "-12.345",
            "123456.789012345",
        ] {
            let d = dec(text);
            let Value::Number(n) = to_json(d).unwrap() else {
                unreachable!()
            };
            assert_eq!(n.as_f64().unwrap(), text.parse::<f64>().unwrap(), "{text}");
        }
    }

    #[test]
    fn quotients_are_rounded_to_their_scale() {
        assert_eq!(round_quotient(dec("3286") / dec("100"), 6), dec("32.86"));
        assert_eq!(round_quotient(dec("10") / dec("3"), 6), dec("3.333333"));
        assert_eq!(round_quotient(dec("2") / dec("3"), 2), dec("0.67"));
        let big = round_quotient(dec("12345678901234") / dec("7"), 6);
        assert!(significant_digits(big) <= JSON_DIGITS, "{big}");
    }

    #[test]
    fn bad_values_are_named() {
        assert_eq!(parse(&json!("12,5")).unwrap_err(), "`12,5` is not a number");
        assert_eq!(parse(&json!(" ")).unwrap(), None);
        assert!(parse(&json!(true)).unwrap_err().contains("not a number"));
    }
}
