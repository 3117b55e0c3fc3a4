//! Parsers for the string forms the config uses: addresses, URLs, and key suggestions.
//! Durations and sizes are `turnout_core::units`, shared with the command line.
//!
//! Each returns a message that says what was wrong and shows the expected form; callers
//! attach the key and line.

use std::net::{Ipv6Addr, SocketAddr};

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
