//! `[listen.tls]`: HTTPS with HTTP/2 and HTTP/1.1 (ALPN) through curl, `X-Forwarded-Proto:
//! https`, and the certificate reloaded on SIGHUP while a connection opened before stays.
//! Needs the `curl` and `openssl` commands (scripts/test-all.sh installs them).

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use tokio::process::Command;
use turnout_testkit::{eventually, Backend, Router, RouterOptions};

const WAIT: Duration = Duration::from_secs(10);

fn need(tool: &str) {
    let found = std::process::Command::new(tool)
        .arg(if tool == "openssl" {
            "version"
        } else {
            "--version"
        })
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "the TLS tests need the `{tool}` command; install it (Debian: apt-get install {tool})"
    );
}

/// A self-signed P-256 certificate for localhost and 127.0.0.1, with subject `CN=cn`,
/// written to `cert` and `key`.
fn make_cert(cn: &str, cert: &Path, key: &Path) {
    need("openssl");
    let out = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
        .arg("ec_paramgen_curve:prime256v1")
        .args(["-nodes", "-subj"])
        .arg(format!("/CN={cn}"))
        .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
        .args(["-days", "1", "-keyout"])
        .arg(key)
        .arg("-out")
        .arg(cert)
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl req failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Setup {
    _blue: Backend,
    router: Router,
    dir: tempfile::TempDir,
}

impl Setup {
    fn cert(&self) -> PathBuf {
        self.dir.path().join("cert.pem")
    }

    fn key(&self) -> PathBuf {
        self.dir.path().join("key.pem")
    }

    fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.router.tls)
    }
}

async fn setup() -> Setup {
    need("curl");
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    make_cert("turnout-one", &cert, &key);
    let blue = Backend::start("blue").await;
    let router = Router::start(
        Path::new(env!("CARGO_BIN_EXE_turnout")),
        &RouterOptions {
            blue: vec![blue.upstream()],
            extra: format!(
                "[listen.tls]\naddr = \"127.0.0.1:0\"\ncert = {:?}\nkey = {:?}\n",
                cert.display().to_string(),
                key.display().to_string()
            ),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert!(!router.tls.is_empty(), "no TLS listening line");
    eventually("blue healthy", WAIT, || async {
        (router.status().await["slots"]["blue"]["upstreams"][0]["healthy"] == true).then_some(())
    })
    .await;
    Setup {
        _blue: blue,
        router,
        dir,
    }
}

async fn curl(args: &[&str]) -> Output {
    tokio::time::timeout(
        WAIT,
        Command::new("curl")
            .args(["-sS", "-k", "--max-time", "8"])
            .args(args)
            .output(),
    )
    .await
    .expect("curl timed out")
    .expect("run curl")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Body, then `http_version http_code` on the last line.
async fn get(version: &str, url: &str) -> (String, String) {
    let out = curl(&[version, "-w", "\n%{http_version} %{http_code}", url]).await;
    assert!(out.status.success(), "curl failed: {}", text(&out.stderr));
    let s = text(&out.stdout);
    let (body, meta) = s.rsplit_once('\n').unwrap();
    (body.to_owned(), meta.to_owned())
}

/// The subject curl -v reports for a new connection to `url`.
async fn subject(url: &str) -> String {
    let out = curl(&["-v", "--http1.1", "-o", "/dev/null", url]).await;
    assert!(out.status.success(), "curl failed: {}", text(&out.stderr));
    let err = text(&out.stderr);
    err.lines()
        .find_map(|l| l.trim_start_matches(['*', ' ']).strip_prefix("subject: "))
        .unwrap_or_else(|| panic!("no subject in curl -v output:\n{err}"))
        .to_owned()
}

fn sighup(router: &Router) {
    let pid = router.pid().expect("router pid");
    let st = std::process::Command::new("kill")
        .arg("-HUP")
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(st.success(), "kill -HUP failed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_serves_http2_and_http1_with_forwarded_proto() {
    let s = setup().await;
    let (body, meta) = get("--http2", &s.url("/")).await;
    assert_eq!((body.as_str(), meta.as_str()), ("blue", "2 200"));
    let (body, meta) = get("--http1.1", &s.url("/")).await;
    assert_eq!((body.as_str(), meta.as_str()), ("blue", "1.1 200"));

    for version in ["--http2", "--http1.1"] {
        let (body, meta) = get(version, &s.url("/headers")).await;
        assert!(meta.ends_with(" 200"), "{version}: {meta}");
        let headers: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            headers["x-forwarded-proto"], "https",
            "{version}: {headers}"
        );
        assert_eq!(
            headers["x-forwarded-for"], "127.0.0.1",
            "{version}: {headers}"
        );
    }
    // The plain listener still says http.
    let (body, _) = get("--http1.1", &format!("http://{}/headers", s.router.data)).await;
    let headers: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(subject(&s.url("/")).await, "CN=turnout-one");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_the_certificate_and_keeps_open_connections() {
    let s = setup().await;
    assert_eq!(subject(&s.url("/")).await, "CN=turnout-one");

    // A connection opened before the reload, with a slow request in flight on it, and a
    // second request on the same (keep-alive) connection after the reload.
    let before = Command::new("curl")
        .args(["-sS", "-k", "-v", "--http1.1", "--max-time", "15"])
        .args(["-w", "[%{http_code}]"])
        .arg(s.url("/slow?ms=2500"))
        .arg(s.url("/"))
        .output();
    let before = tokio::spawn(before);
    tokio::time::sleep(Duration::from_millis(500)).await;

    make_cert("turnout-two", &s.cert(), &s.key());
    sighup(&s.router);
    eventually("certificate reloaded", WAIT, || async {
        s.router
            .stderr()
            .contains("TLS certificate reloaded")
            .then_some(())
    })
    .await;
    assert_eq!(subject(&s.url("/")).await, "CN=turnout-two");
    let (body, meta) = get("--http2", &s.url("/")).await;
    assert_eq!((body.as_str(), meta.as_str()), ("blue", "2 200"));

    let out = tokio::time::timeout(Duration::from_secs(20), before)
        .await
        .expect("the old connection's requests did not finish")
        .unwrap()
        .unwrap();
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "old connection: {stderr}");
    assert_eq!(stdout, "blue[200]blue[200]", "old connection: {stderr}");
    assert!(
        stderr.contains("CN=turnout-one") && !stderr.contains("CN=turnout-two"),
        "the old connection kept its certificate: {stderr}"
    );
    assert!(
        stderr.contains("Re-using existing connection"),
        "one connection for both requests: {stderr}"
    );

    // A certificate that cannot be loaded: logged, and the one in use stays.
    std::fs::write(s.cert(), "not a certificate\n").unwrap();
    sighup(&s.router);
    eventually("reload refused", WAIT, || async {
        s.router.stderr().contains("not reloaded").then_some(())
    })
    .await;
    let log = s.router.stderr();
    assert!(
        log.contains(&s.cert().display().to_string()),
        "the error names the file: {log}"
    );
    assert_eq!(subject(&s.url("/")).await, "CN=turnout-two");
}

#[tokio::test]
async fn a_bad_certificate_stops_the_start_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
    make_cert("turnout-one", &cert, &key);
    let other_key = dir.path().join("other-key.pem");
    make_cert("turnout-two", &dir.path().join("other.pem"), &other_key);
    let cases: [(&str, &Path, &Path, &str); 3] = [
        (
            "missing key",
            &cert,
            &dir.path().join("nope.pem"),
            "cannot read",
        ),
        ("key as cert", &key, &key, "no certificate found"),
        (
            "mismatched key",
            &cert,
            &other_key,
            "private key of the first certificate",
        ),
    ];
    for (what, cert, key, expect) in cases {
        let config = dir.path().join("turnout.toml");
        std::fs::write(
            &config,
            format!(
                "[listen]\naddr = \"127.0.0.1:0\"\n[listen.tls]\naddr = \"127.0.0.1:0\"\ncert = {:?}\nkey = {:?}\n\
                 [admin]\naddr = \"127.0.0.1:0\"\n[state]\ndir = {:?}\n\
                 [slots.blue]\nupstreams = [\"127.0.0.1:9\"]\n",
                cert.display().to_string(),
                key.display().to_string(),
                dir.path().join("state").display().to_string(),
            ),
        )
        .unwrap();
        let out = tokio::time::timeout(
            WAIT,
            Command::new(env!("CARGO_BIN_EXE_turnout"))
                .arg("serve")
                .arg("--config")
                .arg(&config)
                .output(),
        )
        .await
        .expect("turnout serve did not exit")
        .unwrap();
        let err = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{what}: {err}");
        assert!(err.contains("[listen.tls]"), "{what}: {err}");
        assert!(err.contains(expect), "{what}: {err}");
    }
}
