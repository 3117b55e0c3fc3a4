//! The demo service as the release-pipeline tests provision it: one temporary directory
//! with the shared database, the `[provision]` command that starts each version on it,
//! and cleanup of whatever a failed test's router left running there.

use std::path::{Path, PathBuf};

use crate::{demo_app_path, processes_with_args, DemoApp};

/// `s` quoted for `sh -c`.
pub fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// `s` as a TOML string (JSON string syntax is valid TOML).
pub fn toml_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string encodes")
}

/// The demo service's directory and database. Dropping it kills every demo-service
/// process still running on it (a router killed by a failed test cannot stop them).
pub struct Shop {
    /// The `turnout-demo-app` binary.
    pub app: PathBuf,
    dir: tempfile::TempDir,
}

impl Shop {
    /// A new shop for the demo service built beside `turnout_bin`.
    pub fn new(turnout_bin: &Path) -> Shop {
        Shop {
            app: demo_app_path(turnout_bin),
            dir: tempfile::tempdir().expect("a temporary directory"),
        }
    }

    /// A path in the shop's directory.
    pub fn path(&self, name: &str) -> String {
        self.dir
            .path()
            .join(name)
            .to_str()
            .expect("a UTF-8 temp path")
            .to_owned()
    }

    /// The database every version shares (unless a version's flags name another).
    pub fn db(&self) -> String {
        self.path("shop.db")
    }

    /// The `[provision]` command: `(pattern, flags)` arms of a shell `case` on the version
    /// (`v3`, `*-bad`, ...) give extra flags; every version gets `--db` the shared
    /// database unless its flags name one.
    pub fn provision_command(&self, arms: &[(&str, &str)]) -> String {
        let app = sh_quote(self.app.to_str().expect("a UTF-8 path"));
        let run = |flags: &str| {
            let db = if flags.contains("--db ") {
                String::new()
            } else {
                format!(" --db {}", sh_quote(&self.db()))
            };
            format!("exec {app} --port {{port}} --version {{version}}{db} {flags}")
        };
        let arms: String = arms
            .iter()
            .map(|(v, flags)| format!("{v}) {} ;; ", run(flags)))
            .collect();
        format!("case {{version}} in {arms}*) {} ;; esac", run(""))
    }

    /// `turnout-demo-app migrate STEP` on the shared database, as a hook command.
    pub fn migrate_command(&self, step: &str) -> String {
        format!(
            "{} migrate {step} --db {}",
            sh_quote(self.app.to_str().expect("a UTF-8 path")),
            sh_quote(&self.db())
        )
    }

    /// v1 on the shared database, started by the test with `flags`.
    pub async fn v1(&self, flags: &[&str]) -> DemoApp {
        let db = self.db();
        let mut args = vec!["--version", "v1", "--db", db.as_str()];
        args.extend_from_slice(flags);
        DemoApp::start(&self.app, &args)
            .await
            .expect("start the demo service")
    }

    /// Every demo-service process running on this shop: `(pid, argv)`.
    pub fn processes(&self) -> Vec<(u32, Vec<String>)> {
        let here = self.path("");
        processes_with_args(&["--version"])
            .into_iter()
            .filter(|(_, argv)| argv.iter().any(|a| a.starts_with(&here)))
            .collect()
    }

    /// The running processes of `version` in this shop.
    pub fn instances(&self, version: &str) -> Vec<u32> {
        self.processes()
            .into_iter()
            .filter(|(_, argv)| {
                argv.windows(2)
                    .any(|w| w[0] == "--version" && w[1] == version)
            })
            .map(|(pid, _)| pid)
            .collect()
    }
}

impl Drop for Shop {
    fn drop(&mut self) {
        for (pid, _) in self.processes() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stderr(std::process::Stdio::null())
                .status();
        }
    }
}
