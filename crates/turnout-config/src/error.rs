//! The error values: every problem found in one config file.

use std::fmt;

/// One problem in a config file: which key, on which line, what is wrong and what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// Dotted path of the key, e.g. `health.interval` or `slots.blue.upstreams[1]`;
    /// empty for problems with the file as a whole (unreadable, TOML syntax).
    pub key: String,
    /// 1-based line in the file, when the problem has a place in it.
    pub line: Option<usize>,
    /// What is wrong and what to do about it. Never contains a secret value.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.key.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.key, self.message)
        }
    }
}

/// Every problem found in one config file, in the order they appear in it.
///
/// Displays one problem per line as `ORIGIN:LINE: KEY: MESSAGE`, e.g.
/// `turnout.toml:12: health.interval: invalid duration "5 s": expected a number and a unit, ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors {
    /// The file the problems were found in, as given to [`crate::Config::from_toml`].
    pub origin: String,
    /// The problems; never empty when returned by this crate.
    pub errors: Vec<ConfigError>,
}

impl ConfigErrors {
    /// Wraps problems found in `origin`, sorted by line (problems without a line last).
    pub(crate) fn new(origin: &str, mut errors: Vec<ConfigError>) -> ConfigErrors {
        errors.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
        ConfigErrors {
            origin: origin.to_string(),
            errors,
        }
    }
}

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.errors.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            match error.line {
                Some(line) => write!(f, "{}:{line}: {error}", self.origin)?,
                None => write!(f, "{}: {error}", self.origin)?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_has_one_line_per_problem() {
        let errors = ConfigErrors::new(
            "turnout.toml",
            vec![
                ConfigError {
                    key: String::new(),
                    line: None,
                    message: "no line".into(),
                },
                ConfigError {
                    key: "health.interval".into(),
                    line: Some(12),
                    message: "bad".into(),
                },
            ],
        );
        assert_eq!(
            errors.to_string(),
            "turnout.toml:12: health.interval: bad\nturnout.toml: no line"
        );
    }
}
