//! `turnout demo` end to end: the real binary with the real demo service, unattended
//! (stdin closed). It must finish with exit 0, the three expected verdicts in order, and
//! no process it started still running.

use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The demo takes well under a minute; past this it is stopped and the test fails.
const LIMIT: Duration = Duration::from_secs(300);

/// The demo service binary, which `cargo test --workspace` builds next to `turnout`.
fn demo_app() -> PathBuf {
    let turnout = Path::new(env!("CARGO_BIN_EXE_turnout"));
    let app = turnout.with_file_name("turnout-demo-app");
    assert!(
        app.is_file(),
        "{} is missing: run the tests with `cargo test --workspace` (which builds it), or build it first with `cargo build -p turnout-demo-app`",
        app.display()
    );
    app
}

/// Processes whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(raw) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&raw).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push(format!("{pid}: {cmdline}"));
        }
    }
    found
}

#[test]
fn the_demo_releases_three_versions_with_the_expected_verdicts_and_leaves_nothing_running() {
    let app = demo_app();
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("demo");
    let mut child = Command::new(env!("CARGO_BIN_EXE_turnout"))
        .arg("demo")
        .arg("--dir")
        .arg(&dir)
        .arg("--app")
        .arg(&app)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start turnout demo");
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });

    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for the demo") {
            break Some(status);
        }
        if started.elapsed() > LIMIT {
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let Some(status) = status else {
        // Interrupt it the way a user would, so that it stops its router; then kill it.
        let _ = Command::new("kill")
            .arg("-INT")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(40);
        while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "the demo ran over {}s\nstdout:\n{}\nstderr:\n{}",
            LIMIT.as_secs(),
            out.join().unwrap_or_default(),
            err.join().unwrap_or_default()
        );
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    let context = format!("stdout:\n{stdout}\nstderr:\n{stderr}");

    // Checked before the exit code: a failed demo must not leave processes either.
    let left = processes_mentioning(&dir.display().to_string());
    assert!(
        left.is_empty(),
        "processes of the demo still run after it ended:\n{}\n{context}",
        left.join("\n")
    );
    assert_eq!(status.code(), Some(0), "{context}");

    // The four verdicts, in order: each release's line and the summary's rows.
    let lines: Vec<&str> = stdout.lines().collect();
    let position = |pred: &dyn Fn(&str) -> bool, after: usize, what: &str| -> usize {
        lines[after..]
            .iter()
            .position(|l| pred(l))
            .map(|i| after + i)
            .unwrap_or_else(|| panic!("no {what} after line {after}\n{context}"))
    };
    let mut at = 0;
    for (version, verdict) in [
        ("v1", "promoted"),
        ("v2", "promoted"),
        ("v3-price", "failed"),
        ("v4-bad", "rolled_back"),
    ] {
        at = position(
            &|l: &str| l.starts_with("== ") && l.contains(&format!(" deploy {version} ")),
            at,
            &format!("header of {version}"),
        );
        at = position(
            &|l: &str| l == format!("as expected: {verdict}"),
            at,
            &format!("verdict {verdict} of {version}"),
        );
    }
    for (version, verdict) in [
        ("v1", "promoted"),
        ("v2", "promoted"),
        ("v3-price", "failed"),
        ("v4-bad", "rolled_back"),
    ] {
        at = position(
            &|l: &str| {
                l.split_whitespace().collect::<Vec<_>>() == [version, verdict, verdict, "ok"]
            },
            at,
            &format!("summary row of {version}"),
        );
    }
    assert!(
        stdout.contains("demo passed: every verdict was the expected one"),
        "{context}"
    );
    // The rolled-back release was seen by the load: some users got errors, then none.
    assert!(stdout.contains("users saw errors:"), "{context}");

    // What it says it kept is there.
    for kept in ["turnout.toml", "turnout.log", "state/logs"] {
        assert!(
            dir.join(kept).exists(),
            "{} is missing\n{context}",
            dir.join(kept).display()
        );
        assert!(
            stdout.contains(&dir.join(kept).display().to_string()),
            "{kept} is not named\n{context}"
        );
    }
}
