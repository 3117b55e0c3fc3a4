//! The admin API against a hostile neighbour: with no `[admin] token` configured the
//! router generates one that only its machine's users with access to the state directory
//! can read (and the CLI there reads it), and every route refuses requests that name the
//! API by a name it does not answer to — the `Host` (and `Origin`) of a web page that
//! made its own domain resolve to 127.0.0.1 (DNS rebinding).

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use turnout_testkit::{Backend, Router, RouterOptions};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_turnout"))
}

/// Sends one raw HTTP/1.1 request to `addr` with the given `Host` and extra header lines;
/// returns the status and the whole answer.
async fn raw(
    addr: &str,
    method: &str,
    path: &str,
    host: &str,
    extra: &str,
    body: &str,
) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: {host}\r\n{extra}content-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("an answer within 10s")
        .expect("read");
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, text)
}

/// The CLI with the config file and no token in the environment, as an operator on the
/// router's machine runs it.
async fn cli_on_the_machine(router: &Router, args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(bin())
        .args(args)
        .arg("--config")
        .arg(&router.config)
        // The config says port 0 (the test's): the address is given, the token is not.
        .arg("--admin")
        .arg(format!("http://{}", router.admin))
        .env_remove("TURNOUT_ADMIN_TOKEN")
        .output()
        .await
        .expect("run the CLI");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_configured_token_the_router_makes_one_only_its_machine_reads() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let mut router = Router::start(
        bin(),
        &RouterOptions {
            blue: vec![blue.upstream()],
            green: vec![green.upstream()],
            no_admin_token: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let file = router.dir().join("state").join("admin-token");
    let token = std::fs::read_to_string(&file).expect("the generated token file");
    let token = token.trim().to_owned();
    assert_eq!(token.len(), 64, "{token:?}");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "only its owner reads it");

    // No token, or another one: refused, and nothing changes.
    let switch = r#"{"to":"green"}"#;
    let (status, answer) = raw(
        &router.admin,
        "POST",
        "/api/v1/switch",
        &router.admin,
        "",
        switch,
    )
    .await;
    assert_eq!(status, 401, "{answer}");
    assert!(
        answer.contains("admin-token"),
        "says where the token is: {answer}"
    );
    let (status, _) = raw(
        &router.admin,
        "POST",
        "/api/v1/switch",
        &router.admin,
        "authorization: Bearer test-token\r\n",
        switch,
    )
    .await;
    assert_eq!(status, 401);
    let (status, answer) = raw(
        &router.admin,
        "GET",
        "/api/v1/status",
        &router.admin,
        &format!("authorization: Bearer {token}\r\n"),
        "",
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains(r#""live":"blue""#), "{answer}");

    // The CLI on the machine finds the token in the state directory.
    let (code, out, err) = cli_on_the_machine(&router, &["switch", "--to", "green"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("green is live"), "{out}");

    // The same token after a restart.
    router.restart().await.unwrap();
    let again = std::fs::read_to_string(&file).unwrap();
    assert_eq!(again.trim(), token);
    let (code, out, err) = cli_on_the_machine(&router, &["status", "--json"]).await;
    assert_eq!(code, 0, "{out}{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_answers_only_to_its_own_names() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let router = Router::start(
        bin(),
        &RouterOptions {
            blue: vec![blue.upstream()],
            green: vec![green.upstream()],
            admin_extra: "hosts = [\"turnout.internal\"]\n".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let port = router.admin.rsplit_once(':').unwrap().1.to_owned();
    let auth = "authorization: Bearer test-token\r\n";
    let switch = r#"{"to":"green"}"#;

    // DNS rebinding: a page on evil.example made its name point at 127.0.0.1. With the
    // token or without, on the API, the dashboard and the metrics: refused.
    for (method, path, extra, body) in [
        ("POST", "/api/v1/switch", auth, switch),
        ("POST", "/api/v1/switch", "", switch),
        ("POST", "/api/v1/rollback", auth, ""),
        ("POST", "/api/v1/deployments", auth, r#"{"version":"v9"}"#),
        ("GET", "/api/v1/status", auth, ""),
        ("GET", "/", "", ""),
        ("GET", "/metrics", "", ""),
        ("GET", "/api/v1/events?access_token=test-token", "", ""),
    ] {
        let host = format!("evil.example:{port}");
        let (status, answer) = raw(&router.admin, method, path, &host, extra, body).await;
        assert_eq!(status, 403, "{method} {path} with Host {host}: {answer}");
        assert!(
            answer.contains("[admin] hosts"),
            "says what to do: {answer}"
        );
    }
    // A browser's cross-site request names its page's origin.
    let (status, answer) = raw(
        &router.admin,
        "POST",
        "/api/v1/switch",
        &router.admin,
        &format!("{auth}origin: http://evil.example:{port}\r\n"),
        switch,
    )
    .await;
    assert_eq!(status, 403, "{answer}");
    assert_eq!(
        router.status().await["live"],
        "blue",
        "nothing was switched"
    );

    // Its own names: IP addresses, localhost, and the configured ones.
    for host in [
        router.admin.clone(),
        format!("localhost:{port}"),
        format!("LOCALHOST:{port}"),
        format!("turnout.internal:{port}"),
        format!("[::1]:{port}"),
    ] {
        let (status, answer) = raw(&router.admin, "GET", "/api/v1/status", &host, auth, "").await;
        assert_eq!(status, 200, "Host {host}: {answer}");
    }
    let (status, answer) = raw(
        &router.admin,
        "POST",
        "/api/v1/switch",
        &format!("localhost:{port}"),
        &format!("{auth}origin: http://localhost:{port}\r\n"),
        switch,
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(router.status().await["live"], "green");
}

#[tokio::test]
async fn a_bad_admin_host_name_is_a_config_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("turnout.toml");
    std::fs::write(
        &path,
        "[admin]\nhosts = [\"http://turnout.internal:9901\"]\n",
    )
    .unwrap();
    let out = std::process::Command::new(bin())
        .args(["check-config", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("admin.hosts") && err.contains("without a scheme"),
        "{err}"
    );
}
