//! Durations and sizes as people write them, one grammar for every place turnout reads
//! them: the config (`turnout-config`), the command line (`turnout capture --max-body`,
//! `replay --timeout`...) and the demo service's knobs.
//!
//! - A duration is whole numbers with units `ms`, `s`, `m`, `h`, summed: `"500ms"`,
//!   `"30s"`, `"1m30s"`, `"1m 30s"`; at most [`MAX_DURATION`] (87600h, 10 years).
//! - A size is a whole number and a unit: `B`, `KB`, `MB`, `GB` are powers of 1000 and
//!   `KiB`, `MiB`, `GiB` powers of 1024 (`"10MB"` is 10 000 000 bytes, `"512KiB"` 524 288);
//!   greater than zero. [`parse_size`] requires the unit (the config writes a plain number
//!   of bytes as a TOML integer); [`parse_size_or_bytes`], for command lines, reads a bare
//!   number as bytes.
//!
//! Spaces: around the value and between a number and its unit (`"10 MB"`, `"30 s"`,
//! `"1m 30s"`), never inside a number (`"1 0s"` is refused). An error says what was wrong
//! and shows the expected form, quoting at most 40 characters of the input (with its
//! length when cut); callers add where the value came from (a config key and line, a flag).

use std::time::Duration;

const DURATION_FORM: &str = "expected a number and a unit, e.g. \"500ms\", \"30s\", \"10m\"";

/// The longest duration turnout reads: far beyond any timeout or delay that makes sense,
/// and far below what would overflow when added to a clock.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// Parses `"500ms"`, `"30s"`, `"10m"`, `"1h"` and sums such as `"1m30s"` or `"1m 30s"`.
/// Zero (`"0s"`) is a duration; whether a key may be zero is its caller's rule.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid = |hint: &str| format!("invalid duration {:?}: {DURATION_FORM}{hint}", short(text));
    let compact = compact_units(text.trim());
    let compact = compact.as_str();
    if compact.is_empty() {
        return Err(invalid(""));
    }
    let mut total = Duration::ZERO;
    let mut rest = compact;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit_end = rest[digits..]
            .find(|c: char| c.is_ascii_digit())
            .map_or(rest.len(), |i| digits + i);
        let (number, unit) = (&rest[..digits], &rest[digits..unit_end]);
        rest = &rest[unit_end..];
        if number.is_empty() {
            return Err(invalid(""));
        }
        let Ok(n) = number.parse::<u64>() else {
            return Err(invalid("; the number is too large"));
        };
        let seconds_per_unit = match unit {
            "ms" => {
                total = total.saturating_add(Duration::from_millis(n));
                continue;
            }
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "" if compact == number => {
                return Err(invalid(&format!("; did you mean \"{}s\"?", short(compact))))
            }
            _ if unit.chars().all(|c| c.is_ascii_alphabetic()) => {
                return Err(invalid("; the units are ms, s, m and h"))
            }
            _ if unit.starts_with('.') => {
                return Err(invalid("; use whole numbers, e.g. \"1500ms\" for 1.5s"))
            }
            _ => return Err(invalid("")),
        };
        let Some(seconds) = n.checked_mul(seconds_per_unit) else {
            return Err(invalid("; the number is too large"));
        };
        total = total.saturating_add(Duration::from_secs(seconds));
    }
    if total > MAX_DURATION {
        return Err(format!(
            "duration {:?} is longer than {}h (10 years), the longest any duration may be: give at most \"{}h\"",
            short(text),
            MAX_DURATION.as_secs() / 3600,
            MAX_DURATION.as_secs() / 3600
        ));
    }
    Ok(total)
}

/// `text` without the spaces between a number and its unit or between two parts ("1m
/// 30s"); a space between two digits stays, so that "1 0s" is still refused.
fn compact_units(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let chars: Vec<char> = text.chars().collect();
    for (i, c) in chars.iter().enumerate() {
        if c.is_whitespace() {
            let before = out.chars().last();
            let after = chars[i + 1..].iter().find(|c| !c.is_whitespace());
            let both_digits = before.is_some_and(|b| b.is_ascii_digit())
                && after.is_some_and(|a| a.is_ascii_digit());
            if both_digits {
                out.push(*c);
            }
            continue;
        }
        out.push(*c);
    }
    out
}

/// At most 40 characters of an input, for a message, with its length when cut.
fn short(text: &str) -> String {
    if text.chars().count() <= 40 {
        return text.to_owned();
    }
    let head: String = text.chars().take(40).collect();
    format!("{head}… ({} bytes)", text.len())
}

/// The size units and the bytes in each.
const SIZE_UNITS: [(&str, u64); 12] = [
    ("B", 1),
    ("b", 1),
    ("KB", 1000),
    ("kB", 1000),
    ("kb", 1000),
    ("MB", 1000 * 1000),
    ("mb", 1000 * 1000),
    ("GB", 1000 * 1000 * 1000),
    ("gb", 1000 * 1000 * 1000),
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
];

/// Parses a size: a whole number and a unit, `B`, `KB`, `MB`, `GB` (powers of 1000) or
/// `KiB`, `MiB`, `GiB` (powers of 1024), e.g. `"10MB"`, `"512KiB"`; greater than zero.
pub fn parse_size(text: &str) -> Result<u64, String> {
    parse_size_with(text, false)
}

/// [`parse_size`], except that a bare whole number is a number of bytes (`"700"`), as a
/// TOML integer is in the config: for command-line flags, where there are no types.
pub fn parse_size_or_bytes(text: &str) -> Result<u64, String> {
    parse_size_with(text, true)
}

fn parse_size_with(text: &str, bare_is_bytes: bool) -> Result<u64, String> {
    let invalid = |hint: &str| {
        format!(
            "invalid size {:?}: expected a number and a unit, e.g. \"10MB\", \"512KiB\"{hint}",
            short(text)
        )
    };
    let t = text.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = (&t[..digits], t[digits..].trim());
    if number.is_empty() {
        return Err(invalid(""));
    }
    let Ok(n) = number.parse::<u64>() else {
        return Err(invalid("; the number is too large"));
    };
    let per = match SIZE_UNITS.iter().find(|(name, _)| *name == unit) {
        Some(&(_, per)) => per,
        None if unit.is_empty() && bare_is_bytes => 1,
        None if unit.is_empty() => {
            return Err(invalid(&format!("; did you mean \"{}B\"?", short(t))))
        }
        None => return Err(invalid("; the units are B, KB, MB, GB, KiB, MiB and GiB")),
    };
    match n.checked_mul(per) {
        Some(0) => Err(format!(
            "{:?} is zero: give a size greater than zero",
            short(text)
        )),
        Some(size) => Ok(size),
        None => Err(invalid("; the number is too large")),
    }
}

/// A size for people, in the largest unit that divides it: `"1MB"`, `"16MiB"`,
/// `"64KiB"`, `"1500B"`. [`parse_size`] reads it back to the same number.
pub fn format_size(n: u64) -> String {
    const UNITS: [(&str, u64); 6] = [
        ("GB", 1000 * 1000 * 1000),
        ("GiB", 1 << 30),
        ("MB", 1000 * 1000),
        ("MiB", 1 << 20),
        ("KB", 1000),
        ("KiB", 1 << 10),
    ];
    UNITS
        .iter()
        .find(|&&(_, per)| n >= per && n.is_multiple_of(per))
        .map_or_else(
            || format!("{n}B"),
            |&(unit, per)| format!("{}{unit}", n / per),
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("10MB"), Ok(10_000_000));
        assert_eq!(parse_size("1KiB"), Ok(1024));
        assert_eq!(parse_size("512B"), Ok(512));
        assert!(parse_size("10").is_err());
        assert!(parse_size("0KB").is_err());
        assert!(parse_size("1.5MB").is_err());
        assert!(parse_size("10 apples").is_err());
    }

    #[test]
    fn every_size_unit() {
        let ok: &[(&str, u64)] = &[
            ("1B", 1),
            ("1b", 1),
            ("1KB", 1000),
            ("1kB", 1000),
            ("1kb", 1000),
            ("1MB", 1_000_000),
            ("1mb", 1_000_000),
            ("1GB", 1_000_000_000),
            ("1gb", 1_000_000_000),
            ("1KiB", 1024),
            ("1MiB", 1 << 20),
            ("1GiB", 1 << 30),
            // Spaces as in durations: around the value, between number and unit.
            ("10 MB", 10_000_000),
            (" 64KiB ", 65536),
        ];
        for (input, want) in ok {
            assert_eq!(parse_size(input).as_ref(), Ok(want), "{input}");
            assert_eq!(parse_size_or_bytes(input).as_ref(), Ok(want), "{input}");
        }
        let bad: &[(&str, &str)] = &[
            ("10", "did you mean \"10B\"?"),
            ("1 0MB", "the units are"),
            ("64k", "the units are B, KB, MB, GB, KiB, MiB and GiB"),
            ("1Mb", "the units are"),
            ("1mib", "the units are"),
            ("10TB", "the units are"),
            ("MB", ""),
            ("", ""),
            ("-1MB", ""),
            ("99999999999999999999B", "too large"),
            ("99999999999GB", "too large"),
        ];
        for (input, hint) in bad {
            let err = parse_size(input).unwrap_err();
            let head = format!("invalid size {input:?}: expected a number and a unit");
            assert!(
                err.starts_with(&head) && err.contains(hint),
                "{input}: {err}"
            );
        }
        assert_eq!(
            parse_size("0 MiB"),
            Err("\"0 MiB\" is zero: give a size greater than zero".into())
        );
    }

    #[test]
    fn a_bare_number_is_bytes_only_where_asked() {
        assert_eq!(parse_size_or_bytes("700"), Ok(700));
        assert_eq!(parse_size_or_bytes(" 700 "), Ok(700));
        assert!(parse_size("700").is_err());
        assert!(parse_size_or_bytes("0").unwrap_err().contains("is zero"));
        assert!(parse_size_or_bytes("1.5").is_err());
        assert!(parse_size_or_bytes("lots").is_err());
    }

    #[test]
    fn sizes_are_shown_in_the_largest_exact_unit_and_read_back() {
        for (n, shown) in [
            (1, "1B"),
            (1000, "1KB"),
            (1024, "1KiB"),
            (1500, "1500B"),
            (1_000_000, "1MB"),
            (1 << 20, "1MiB"),
            (16 << 20, "16MiB"),
            (64 * 1024, "64KiB"),
            (3_000_000_000, "3GB"),
            (1 << 30, "1GiB"),
        ] {
            assert_eq!(format_size(n), shown, "{n}");
            assert_eq!(parse_size(shown), Ok(n), "{shown}");
        }
    }

    #[test]
    fn durations() {
        let ok: &[(&str, Duration)] = &[
            ("500ms", Duration::from_millis(500)),
            ("30s", Duration::from_secs(30)),
            ("10m", Duration::from_secs(600)),
            ("1h", Duration::from_secs(3600)),
            ("1m30s", Duration::from_secs(90)),
            ("0s", Duration::ZERO),
            // Spaces as in sizes ("10 MB"): around the value, between number and unit.
            ("5 s", Duration::from_secs(5)),
            (" 30s ", Duration::from_secs(30)),
            ("1m 30s", Duration::from_secs(90)),
            ("1 m 30 s", Duration::from_secs(90)),
        ];
        for (input, want) in ok {
            assert_eq!(parse_duration(input).as_ref(), Ok(want), "{input}");
        }
        let bad: &[(&str, &str)] = &[
            ("5", "did you mean \"5s\"?"),
            ("1 0s", ""),
            ("5min", "the units are ms, s, m and h"),
            ("-1s", ""),
            ("", ""),
            ("1.5s", "use whole numbers"),
            ("s", ""),
            ("10sec", "the units are"),
            ("99999999999999999999s", "too large"),
            ("9999999999999999999h", "too large"),
        ];
        for (input, hint) in bad {
            let err = parse_duration(input).unwrap_err();
            let head = format!("invalid duration {input:?}: {DURATION_FORM}");
            assert!(
                err.starts_with(&head) && err.contains(hint),
                "{input}: {err}"
            );
        }
    }

    #[test]
    fn durations_stop_at_ten_years() {
        assert_eq!(
            parse_duration("87600h"),
            Ok(Duration::from_secs(87600 * 3600))
        );
        let err = parse_duration("87601h").unwrap_err();
        assert!(err.contains("longer than 87600h"), "{err}");
        assert!(parse_duration("1000000h").unwrap_err().contains("87600h"));
    }

    #[test]
    fn messages_quote_at_most_40_characters_of_the_input() {
        let long = format!("{}x", "1".repeat(500));
        for err in [
            parse_duration(&long),
            parse_size(&long).map(|_| Duration::ZERO),
        ] {
            let err = err.unwrap_err();
            assert!(err.contains("… (501 bytes)"), "{err}");
            assert!(err.len() < 200, "{err}");
        }
        let long_digits = "9".repeat(100);
        let err = parse_size(&long_digits).unwrap_err();
        assert!(err.contains("(100 bytes)") && err.len() < 200, "{err}");
    }
}
