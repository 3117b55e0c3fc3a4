//! Secrets referenced from the config: `env:NAME` or `file:PATH`, never the value itself.

use std::path::PathBuf;

/// Where a secret (admin token, session secret) is read from at startup.
///
/// Written in the config as `"env:NAME"` or `"file:PATH"`, so that the config file itself
/// never holds the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenSource {
    /// The value of this environment variable.
    Env(String),
    /// The contents of this file, surrounding whitespace trimmed.
    File(PathBuf),
}

impl TokenSource {
    /// Parses `"env:NAME"` or `"file:PATH"`. The error never repeats the input: a user may
    /// have pasted the secret itself.
    pub(crate) fn parse(text: &str) -> Result<TokenSource, String> {
        const FORMS: &str = "write \"env:NAME\" to read it from an environment variable or \
                             \"file:PATH\" to read it from a file; the secret itself does not \
                             belong in the config file";
        if let Some(name) = text.strip_prefix("env:") {
            if name.is_empty() || name.contains(['=', '\0']) || name.trim() != name {
                return Err(format!(
                    "invalid environment variable name after \"env:\"; {FORMS}"
                ));
            }
            Ok(TokenSource::Env(name.to_string()))
        } else if let Some(path) = text.strip_prefix("file:") {
            if path.trim().is_empty() {
                return Err(format!("missing path after \"file:\"; {FORMS}"));
            }
            Ok(TokenSource::File(PathBuf::from(path)))
        } else {
            Err(format!("unsupported form; {FORMS}"))
        }
    }

    /// Reads the secret: the environment variable or the file, with surrounding whitespace
    /// trimmed. The error says which variable or file failed and what to do; it never
    /// contains the secret.
    pub fn resolve(&self) -> Result<String, String> {
        let (value, origin) = match self {
            TokenSource::Env(name) => {
                let origin = format!("environment variable {name}");
                match std::env::var(name) {
                    Ok(value) => (value, origin),
                    Err(std::env::VarError::NotPresent) => {
                        return Err(format!("{origin} is not set: export it with the secret"))
                    }
                    Err(std::env::VarError::NotUnicode(_)) => {
                        return Err(format!("{origin} is not valid UTF-8: set it to the secret"))
                    }
                }
            }
            TokenSource::File(path) => {
                let origin = format!("file {}", path.display());
                match std::fs::read_to_string(path) {
                    Ok(value) => (value, origin),
                    Err(e) => {
                        return Err(format!(
                            "cannot read {origin}: {e}; create it with the secret, readable by \
                             this user"
                        ))
                    }
                }
            }
        };
        let value = value.trim();
        if value.is_empty() {
            return Err(format!("{origin} is empty: put the secret in it"));
        }
        Ok(value.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms() {
        let cases: &[(&str, Result<TokenSource, &str>)] = &[
            ("env:TOKEN", Ok(TokenSource::Env("TOKEN".into()))),
            ("file:/run/t", Ok(TokenSource::File("/run/t".into()))),
            ("env:", Err("invalid environment variable name")),
            ("env:A=B", Err("invalid environment variable name")),
            ("file:", Err("missing path")),
            ("s3cr3t", Err("unsupported form")),
            ("", Err("unsupported form")),
        ];
        for (input, want) in cases {
            match (TokenSource::parse(input), want) {
                (Ok(got), Ok(want)) => assert_eq!(&got, want, "{input}"),
                (Err(got), Err(want)) => {
                    assert!(got.contains(want), "{input}: {got}");
                    assert!(got.contains("\"env:NAME\"") && got.contains("\"file:PATH\""));
                }
                (got, _) => panic!("{input}: unexpected {got:?}"),
            }
        }
        let secret = TokenSource::parse("hunter2-very-secret").unwrap_err();
        assert!(!secret.contains("hunter2"), "{secret}");
    }

    #[test]
    fn resolve_reads_env_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "  abc123\n").unwrap();
        assert_eq!(TokenSource::File(path.clone()).resolve().unwrap(), "abc123");

        std::fs::write(&path, "\n").unwrap();
        let err = TokenSource::File(path.clone()).resolve().unwrap_err();
        assert!(err.contains("is empty") && err.contains("token"), "{err}");

        let err = TokenSource::File(dir.path().join("missing"))
            .resolve()
            .unwrap_err();
        assert!(
            err.contains("cannot read file") && err.contains("missing"),
            "{err}"
        );

        // A variable name nobody sets; no test sets environment variables (tests run in threads).
        let err = TokenSource::Env("TURNOUT_CONFIG_TEST_UNSET_VAR".into())
            .resolve()
            .unwrap_err();
        assert!(
            err.contains("TURNOUT_CONFIG_TEST_UNSET_VAR is not set"),
            "{err}"
        );
        let path_var = TokenSource::Env("PATH".into()).resolve();
        assert!(path_var.is_ok());
    }
}
