//! The one duration grammar of every flag and CRD field: a non-negative decimal and a required unit (`250ms`, `1.5s`,
//! `5m`, `12h`, `7d`), so that no flag reads a bare `5` as milliseconds where another reads seconds.

use std::time::Duration;

/// Parses a duration: a non-negative decimal number and a unit, `ms`, `s`, `m`, `h` or `d` (`250ms`, `1.5s`,
/// `7d`). The unit is required, so that no flag can read `5` as milliseconds where another reads seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a duration like 250ms, 2s, 5m, 12h or 7d"))?;
    let seconds_per_unit = match unit {
        "ms" => 1e-3,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3_600.0,
        "d" => 86_400.0,
        "" => return Err(format!("{text:?} needs a unit: ms, s, m, h or d (e.g. {text}s)")),
        other => {
            return Err(format!(
                "unknown duration unit {other:?} in {text:?} (use ms, s, m, h or d)"
            ));
        }
    };
    Duration::try_from_secs_f64(value * seconds_per_unit).map_err(|_| format!("{text:?} is out of range"))
}

/// [`parse_duration`], then checks `min ≤ value ≤ max`; `what` names the flag's meaning in the error.
pub fn parse_duration_within(text: &str, min: Duration, max: Duration, what: &str) -> Result<Duration, String> {
    let value = parse_duration(text)?;
    if value < min || value > max {
        return Err(format!("{what} must be between {min:?} and {max:?}, not {text:?}"));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_a_unit_and_take_decimals() {
        assert_eq!(parse_duration("50ms"), Ok(Duration::from_millis(50)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1_500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("12h"), Ok(Duration::from_secs(12 * 3_600)));
        assert_eq!(parse_duration(" 7d "), Ok(Duration::from_secs(7 * 86_400)));
        assert!(parse_duration("5").unwrap_err().contains("needs a unit"));
        assert!(parse_duration("5w").unwrap_err().contains("unknown duration unit"));
        assert!(parse_duration("fast").unwrap_err().contains("not a duration"));
        assert!(parse_duration("-1s").is_err());
        assert!(
            parse_duration("99999999999999999999d")
                .unwrap_err()
                .contains("out of range")
        );
    }

    #[test]
    fn bounds_are_inclusive_and_named() {
        let (min, max) = (Duration::from_millis(50), Duration::from_secs(3_600));
        assert_eq!(parse_duration_within("50ms", min, max, "the interval"), Ok(min));
        assert_eq!(parse_duration_within("1h", min, max, "the interval"), Ok(max));
        let err = parse_duration_within("1ms", min, max, "the interval").unwrap_err();
        assert!(err.starts_with("the interval must be between"), "{err}");
    }
}
