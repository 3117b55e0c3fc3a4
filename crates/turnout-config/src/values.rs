//! Parsers for the string forms the config uses: durations, addresses, URLs.
//!
//! Each returns a message that says what was wrong and shows the expected form; callers
//! attach the key and line.

use std::net::{Ipv6Addr, SocketAddr};
use std::time::Duration;

const DURATION_FORM: &str = "expected a number and a unit, e.g. \"500ms\", \"30s\", \"10m\"";

/// Parses `"500ms"`, `"30s"`, `"10m"`, `"1h"` and sums such as `"1m30s"`.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid = |hint: &str| format!("invalid duration {:?}: {DURATION_FORM}{hint}", short(text));
    // One rule for spaces in every value with a unit, as in sizes ("10 MB"): around the
    // value and between a number and its unit ("30 s", "1m 30s"), never inside a number.
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
                return Err(invalid(&format!("; did you mean \"{compact}s\"?")))
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

/// The longest duration any key takes: far beyond any timeout or delay that makes sense,
/// and far below what would overflow when added to a clock.
pub(crate) const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// At most 40 characters of an input, for a message.
fn short(text: &str) -> String {
    if text.chars().count() <= 40 {
        return text.to_owned();
    }
    let head: String = text.chars().take(40).collect();
    format!("{head}… ({} bytes)", text.len())
}

/// Parses a size: a whole number and a unit, `B`, `KB`, `MB`, `GB` (powers of 1000) or
/// `KiB`, `MiB`, `GiB` (powers of 1024), e.g. `"10MB"`, `"512KiB"`; greater than zero.
pub(crate) fn parse_size(text: &str) -> Result<u64, String> {
    let invalid = |hint: &str| {
        format!(
            "invalid size {text:?}: expected a number and a unit, e.g. \"10MB\", \"512KiB\"{hint}"
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
    let per = match unit {
        "B" | "b" => 1u64,
        "KB" | "kB" | "kb" => 1000,
        "MB" | "mb" => 1000 * 1000,
        "GB" | "gb" => 1000 * 1000 * 1000,
        "KiB" => 1024,
        "MiB" => 1024 * 1024,
        "GiB" => 1024 * 1024 * 1024,
        "" => return Err(invalid(&format!("; did you mean \"{t}B\"?"))),
        _ => return Err(invalid("; the units are B, KB, MB, GB, KiB, MiB and GiB")),
    };
    match n.checked_mul(per) {
        Some(0) => Err(format!("{text:?} is zero: give a size greater than zero")),
        Some(size) => Ok(size),
        None => Err(invalid("; the number is too large")),
    }
}

/// Parses a listen address `IP:PORT`; host names are not resolved.
pub(crate) fn parse_socket_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse().map_err(|_| {
        format!(
            "invalid address {text:?}: expected IP:PORT, e.g. \"0.0.0.0:8080\", \
             \"127.0.0.1:9901\" or \"[::1]:8080\""
        )
    })
}

/// Checks an upstream `host:port`: a host name or IP (IPv6 in brackets) and a port 1-65535.
pub(crate) fn check_upstream(text: &str) -> Result<(), String> {
    const FORM: &str = "expected host:port, e.g. \"127.0.0.1:7001\" or \"app-1.internal:8080\"";
    if text.contains("://") {
        return Err(format!(
            "upstream {text:?} has a scheme: write only host:port, e.g. \"127.0.0.1:7001\""
        ));
    }
    let Some((host, port)) = text.rsplit_once(':') else {
        return Err(format!("upstream {text:?} has no port: {FORM}"));
    };
    let host_ok = match host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        Some(ipv6) => ipv6.parse::<Ipv6Addr>().is_ok(),
        None if host.contains(':') => {
            return Err(format!(
                "upstream {text:?}: put an IPv6 address in brackets, e.g. \"[::1]:7001\""
            ))
        }
        None => {
            !host.is_empty()
                && host
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
        }
    };
    if !host_ok {
        return Err(format!("upstream {text:?} has an invalid host: {FORM}"));
    }
    match port.parse::<u16>() {
        Ok(1..) => Ok(()),
        _ => Err(format!(
            "upstream {text:?} has an invalid port: use a number from 1 to 65535, {FORM}"
        )),
    }
}

/// Checks an `http://` or `https://` URL with a host.
pub(crate) fn check_http_url(text: &str) -> Result<(), String> {
    let rest = text
        .strip_prefix("http://")
        .or_else(|| text.strip_prefix("https://"));
    let host = rest.map(|r| r.split(['/', '?', '#']).next().unwrap_or(""));
    match host {
        Some(host) if !host.is_empty() && !text.contains(char::is_whitespace) => Ok(()),
        _ => Err(format!(
            "invalid URL {text:?}: expected an http:// or https:// URL, e.g. \
             \"https://hooks.example.com/turnout\""
        )),
    }
}

/// The candidate closest to `word`, if it is close enough to be a typo: by edit distance
/// first, then by Jaro-Winkler similarity (as clap suggests), which also catches
/// misspellings that drop or add several letters ("adress" -> "addr").
pub(crate) fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let word = word.to_ascii_lowercase().replace('-', "_");
    let by_edits = candidates
        .iter()
        .map(|c| (edit_distance(&word, c), *c))
        .filter(|(d, c)| *d <= 2 && *d < c.len().max(word.len()) / 2 + 1)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c);
    by_edits.or_else(|| {
        candidates
            .iter()
            .map(|c| (strsim::jaro_winkler(&word, c), *c))
            .filter(|(score, _)| *score >= 0.8)
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, c)| c)
    })
}

/// Levenshtein distance over chars.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let substitution = diagonal + usize::from(ca != *cb);
            diagonal = row[j + 1];
            row[j + 1] = substitution.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
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
    fn upstreams() {
        for ok in [
            "127.0.0.1:7001",
            "app-1.internal:8080",
            "[::1]:7001",
            "localhost:1",
        ] {
            assert_eq!(check_upstream(ok), Ok(()), "{ok}");
        }
        let bad: &[(&str, &str)] = &[
            ("http://127.0.0.1:7001", "has a scheme"),
            ("127.0.0.1", "has no port"),
            (":7001", "invalid host"),
            ("127.0.0.1:0", "invalid port"),
            ("127.0.0.1:65536", "invalid port"),
            ("127.0.0.1:70/api", "invalid port"),
            ("::1:7001", "brackets"),
            ("[zz]:7001", "invalid host"),
            ("my host:80", "invalid host"),
        ];
        for (input, want) in bad {
            let err = check_upstream(input).unwrap_err();
            assert!(err.contains(want), "{input}: {err}");
        }
    }

    #[test]
    fn urls() {
        assert_eq!(check_http_url("http://127.0.0.1:9000/x"), Ok(()));
        assert_eq!(check_http_url("https://h.example"), Ok(()));
        for bad in ["ftp://x", "http://", "127.0.0.1:9000", "http:// x"] {
            assert!(check_http_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn suggestions() {
        let keys = ["path", "interval", "timeout", "healthy", "unhealthy"];
        assert_eq!(closest("intervall", &keys), Some("interval"));
        assert_eq!(closest("timout", &keys), Some("timeout"));
        assert_eq!(closest("Healthy", &keys), Some("healthy"));
        assert_eq!(closest("color", &keys), None);
        assert_eq!(
            closest(
                "adress",
                &["addr", "header_timeout", "upgrade_drain", "tls"]
            ),
            Some("addr")
        );
        assert_eq!(closest("x", &keys), None);
        assert_eq!(
            closest("header-timeout", &["header_timeout"]),
            Some("header_timeout")
        );
    }
}
