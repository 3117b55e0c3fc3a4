//! The real binary: it listens where it says, answers with its version, and its knobs
//! work over HTTP. (Also makes `cargo test --workspace` build the binary itself, which
//! `turnout demo`'s test runs.)

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};

/// Kills the app when the test ends, however it ends.
struct App(Child);

impl Drop for App {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn get(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
    )
    .expect("write");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read");
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {text:?}"));
    (status, text)
}

#[test]
fn the_binary_serves_its_version_and_fails_as_asked() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(env!("CARGO_BIN_EXE_turnout-demo-app"))
        .args([
            "--port",
            "0",
            "--version",
            "v9-bad",
            "--fail-rate",
            "1",
            "--db",
        ])
        .arg(dir.path().join("shop.db"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start turnout-demo-app");
    let stdout = child.stdout.take().expect("stdout");
    let _app = App(child);
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the listening line");
    let addr = line
        .trim()
        .strip_prefix("turnout-demo-app v9-bad listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();

    let (status, body) = get(&addr, "/healthz");
    assert_eq!(status, 200, "{body}");
    let (status, body) = get(&addr, "/");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""version":"v9-bad""#), "{body}");
    // --fail-rate 1: every API answer is a 500, while health and / stay fine.
    let (status, body) = get(&addr, "/api/items");
    assert_eq!(status, 500, "{body}");
}
