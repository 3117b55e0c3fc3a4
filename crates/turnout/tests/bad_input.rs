//! What a user gets for bad input: broken config files, a router that is not there, a
//! wrong token, an unknown or empty slot. The real binary is run each time and judged by
//! its exit code and by what it prints.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use turnout_testkit::{Backend, HttpClient, Router, RouterOptions};

const DEADLINE: Duration = Duration::from_secs(30);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_turnout"))
}

/// Runs `turnout ARGS` in `dir` with only the given turnout variables set; returns exit
/// code, stdout, stderr. Fails the test if it runs longer than [`DEADLINE`].
async fn turnout(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (i32, String, String) {
    let mut cmd = tokio::process::Command::new(bin());
    cmd.args(args)
        .current_dir(dir)
        .env_remove("TURNOUT_ADMIN_TOKEN")
        .env_remove("TURNOUT_WORKER_THREADS")
        .env_remove("TURNOUT_LOG")
        .stdin(Stdio::null())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(DEADLINE, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("turnout {args:?} still running after {DEADLINE:?}"))
        .expect("run turnout");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Writes `text` as `turnout.toml` in `dir`; returns its path.
fn write_config(dir: &Path, text: &str) -> PathBuf {
    let path = dir.join("turnout.toml");
    std::fs::write(&path, text).expect("write config");
    path
}

/// A config `serve` accepts, on free loopback ports.
fn good_config(dir: &Path) -> String {
    format!(
        "[listen]\naddr = \"127.0.0.1:0\"\n\n\
         [admin]\naddr = \"127.0.0.1:0\"\ntoken = \"env:TURNOUT_ADMIN_TOKEN\"\n\n\
         [state]\ndir = {:?}\n\n\
         [slots.blue]\nupstreams = [\"127.0.0.1:7001\"]\n",
        dir.join("state").display().to_string()
    )
}

/// A loopback port where nothing listens.
fn dead_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// One request to the admin API with the given `Authorization` header (or none).
async fn admin_raw(
    admin: &str,
    method: Method,
    path: &str,
    authorization: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    let stream = TcpStream::connect(admin).await.expect("connect admin");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let mut req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", admin)
        .header("content-type", "application/json");
    if let Some(a) = authorization {
        req = req.header("authorization", a);
    }
    let body = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
    let resp = sender
        .send_request(req.body(Full::new(body)).expect("request"))
        .await
        .expect("admin request");
    let status = resp.status();
    let bytes = resp.into_body().collect().await.expect("body").to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
        panic!(
            "admin API answered non-JSON: {:?}",
            String::from_utf8_lossy(&bytes)
        )
    });
    (status, json)
}

async fn live_slot(router: &Router) -> Value {
    let (status, json) = router.api(Method::GET, "/api/v1/status", None).await;
    assert_eq!(status, StatusCode::OK, "{json}");
    json["live"].clone()
}

/// A router with blue live on a real backend and green empty.
async fn blue_only() -> (Backend, Router) {
    let blue = Backend::start("blue").await;
    let opts = RouterOptions {
        blue: vec![blue.upstream()],
        ..Default::default()
    };
    let router = Router::start(bin(), &opts).await.expect("start turnout");
    (blue, router)
}

/// Asserts that `check-config` and `serve` both reject `text` with exit code 2 and print
/// each of `expected` (with `{file}` standing for the config's path).
async fn assert_rejected(text: &str, expected: &[&str]) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(dir.path(), text);
    let file = path.display().to_string();
    let mut stderr = String::new();
    for command in ["check-config", "serve"] {
        let (code, _, err) = turnout(
            dir.path(),
            &[command, "--config", &file],
            &[("TURNOUT_ADMIN_TOKEN", "t")],
        )
        .await;
        assert_eq!(code, 2, "turnout {command} exit code; stderr:\n{err}");
        for want in expected {
            let want = want.replace("{file}", &file);
            assert!(
                err.contains(&want),
                "turnout {command}: stderr lacks {want:?}:\n{err}"
            );
        }
        stderr = err;
    }
    stderr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_toml_is_reported_with_file_and_line() {
    assert_rejected(
        "[listen]\naddr = \"127.0.0.1:0\n",
        &["{file}:2:", "invalid TOML"],
    )
    .await;
}

// Regression: suggestions were plain edit distance <= 2, and "adress" is 4 edits from
// "addr", so the common misspelling of "address" got no "did you mean \"addr\"?".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_key_is_reported_with_its_line_and_a_suggestion() {
    let err = assert_rejected(
        "[listen]\nadress = \"127.0.0.1:8080\"\n",
        &["{file}:2: listen.adress:"],
    )
    .await;
    assert!(
        err.contains("did you mean \"addr\""),
        "no suggestion of `addr` for `adress`:\n{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_duration_is_reported_with_its_key_and_line() {
    assert_rejected(
        "[listen]\naddr = \"127.0.0.1:0\"\nheader_timeout = \"5 x\"\n",
        &["{file}:3: listen.header_timeout: invalid duration \"5 x\""],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_problem_in_a_file_is_reported_at_once() {
    let err = assert_rejected(
        "[listen]\nadress = \"127.0.0.1:8080\"\nheader_timeout = \"5 x\"\n\n[health]\nhealthy = 0\n",
        &[
            "{file}:2: listen.adress:",
            "{file}:3: listen.header_timeout:",
            "{file}:6: health.healthy:",
        ],
    )
    .await;
    assert!(err.contains("3 problem"), "problem count missing:\n{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_config_file_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nowhere").join("turnout.toml");
    let file = missing.display().to_string();
    for command in ["check-config", "serve"] {
        let (code, _, err) = turnout(
            dir.path(),
            &[command, "--config", &file],
            &[("TURNOUT_ADMIN_TOKEN", "t")],
        )
        .await;
        assert_eq!(code, 2, "turnout {command}; stderr:\n{err}");
        assert!(
            err.contains(&file),
            "turnout {command} does not name {file}:\n{err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_config_passes_check_config() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(dir.path(), &good_config(dir.path()));
    let (code, out, err) = turnout(
        dir.path(),
        &["check-config", "--config", &path.display().to_string()],
        &[],
    )
    .await;
    assert_eq!(code, 0, "stdout:\n{out}\nstderr:\n{err}");
    assert!(out.contains("ok"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_router_exits_1_and_says_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("http://127.0.0.1:{}", dead_port());
    let (code, _, err) = turnout(
        dir.path(),
        &["status", "--admin", &url],
        &[("TURNOUT_ADMIN_TOKEN", "t")],
    )
    .await;
    assert_eq!(code, 1, "stderr:\n{err}");
    assert!(
        err.contains("cannot reach") && err.contains("admin API"),
        "{err}"
    );
    assert!(err.contains(&url), "the address tried is not named:\n{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_token_exits_1_and_says_the_token_is_wrong() {
    let (_blue, r) = blue_only().await;
    let url = format!("http://{}", r.admin);
    let (code, _, err) = turnout(
        r.dir(),
        &["status", "--admin", &url],
        &[("TURNOUT_ADMIN_TOKEN", "not-the-token")],
    )
    .await;
    assert_eq!(code, 1, "stderr:\n{err}");
    assert!(err.contains("token is wrong"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_without_token_is_401_and_changes_nothing() {
    let (_blue, r) = blue_only().await;
    let (status, json) = admin_raw(&r.admin, Method::GET, "/api/v1/status", None, None).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{json}");
    assert_eq!(json["error"]["code"], "unauthorized", "{json}");
    assert!(
        json["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{json}"
    );

    let (status, json) = admin_raw(
        &r.admin,
        Method::GET,
        "/api/v1/status",
        Some("Bearer wrong"),
        None,
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{json}");
    assert_eq!(json["error"]["code"], "unauthorized", "{json}");

    // An unauthenticated switch is refused before it does anything.
    let (status, json) = admin_raw(
        &r.admin,
        Method::POST,
        "/api/v1/switch",
        None,
        Some(json!({"to": "green", "force": true})),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{json}");
    assert_eq!(json["error"]["code"], "unauthorized", "{json}");
    assert_eq!(live_slot(&r).await, "blue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_slot_is_a_usage_error() {
    let (_blue, r) = blue_only().await;
    let (code, _, err) = r.cli(&["switch", "--to", "purple"]).await;
    assert_eq!(code, 2, "stderr:\n{err}");
    assert!(err.contains("purple"), "{err}");

    let (status, json) = r
        .api(
            Method::POST,
            "/api/v1/switch",
            Some(json!({"to": "purple"})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{json}");
    assert_eq!(json["error"]["code"], "unknown_slot", "{json}");
    assert_eq!(live_slot(&r).await, "blue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switch_to_an_empty_slot_is_refused_even_with_force() {
    let (_blue, r) = blue_only().await;
    let (status, json) = r
        .api(
            Method::POST,
            "/api/v1/switch",
            Some(json!({"to": "green", "force": true})),
        )
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{json}");
    assert_eq!(json["error"]["code"], "empty_slot", "{json}");

    let (code, out, err) = r.cli(&["switch", "--to", "green", "--force"]).await;
    assert_ne!(code, 0, "the CLI reported success:\n{out}");
    assert!(
        err.contains("no upstreams"),
        "the CLI does not say why:\n{err}"
    );
    assert_eq!(live_slot(&r).await, "blue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_worker_threads_env_is_a_usage_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_config(dir.path(), &good_config(dir.path()));
    let (code, out, err) = turnout(
        dir.path(),
        &["serve", "--config", &path.display().to_string()],
        &[
            ("TURNOUT_WORKER_THREADS", "abc"),
            ("TURNOUT_ADMIN_TOKEN", "t"),
        ],
    )
    .await;
    assert_eq!(code, 2, "stdout:\n{out}\nstderr:\n{err}");
    assert!(err.contains("TURNOUT_WORKER_THREADS"), "{err}");
    assert!(
        !out.contains("listening"),
        "turnout started serving anyway:\n{out}"
    );
}

/// Fixed bug: two routers on one state directory routed independently of each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_router_on_the_same_state_dir_is_refused() {
    let (_blue, r) = blue_only().await;
    let config = r.config.display().to_string();
    let (code, out, err) = turnout(
        r.dir(),
        &["serve", "--config", &config],
        &[("TURNOUT_ADMIN_TOKEN", "t")],
    )
    .await;
    assert_eq!(code, 1, "stdout:\n{out}\nstderr:\n{err}");
    let state = r.dir().join("state");
    let want = format!(
        "state directory {} is in use by another turnout process (lock file {}); stop it or use another [state] dir",
        state.display(),
        state.join("lock").display()
    );
    assert!(err.contains(&want), "stderr lacks {want:?}:\n{err}");
    assert!(
        !out.contains("listening"),
        "the second router served:\n{out}"
    );
    // The first one is unaffected.
    assert_eq!(live_slot(&r).await, "blue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_method_is_405_with_the_json_error_shape() {
    let (_blue, r) = blue_only().await;
    let token = format!("Bearer {}", turnout_testkit::router_token());
    for (method, path) in [
        (Method::GET, "/api/v1/switch"),
        (Method::PUT, "/api/v1/rollback"),
        (Method::POST, "/api/v1/status"),
    ] {
        let (status, json) = admin_raw(&r.admin, method.clone(), path, Some(&token), None).await;
        assert_eq!(
            status,
            StatusCode::METHOD_NOT_ALLOWED,
            "{method} {path}: {json}"
        );
        assert_eq!(json["error"]["code"], "method_not_allowed", "{json}");
        let message = json["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(method.as_str()) && message.contains(path),
            "{json}"
        );
    }
    assert_eq!(live_slot(&r).await, "blue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_that_looks_like_an_option_is_refused() {
    let (_blue, router) = blue_only().await;
    let admin = format!("http://{}", router.admin);
    let dir = tempfile::tempdir().unwrap();
    for version in ["--help", "-v"] {
        let args = [
            "deploy",
            "--admin",
            &admin,
            "--upstream",
            "127.0.0.1:1",
            "--",
            version,
        ];
        let (code, out, err) = turnout(
            dir.path(),
            &args,
            &[("TURNOUT_ADMIN_TOKEN", turnout_testkit::TOKEN)],
        )
        .await;
        assert_eq!(code, 2, "{args:?}: {out}{err}");
        assert!(
            err.contains("starting with a letter or a digit"),
            "{args:?}: {err}"
        );
    }
    // The API says the same.
    let (status, body) = router
        .api(
            Method::POST,
            "/api/v1/deployments",
            Some(serde_json::json!({"version": "--version", "upstreams": ["127.0.0.1:1"]})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(live_slot(&router).await, "blue", "nothing was deployed");
    let (code, out, err) = router.cli(&["history", "--json"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "[]", "no deployment was recorded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_that_would_proxy_to_itself_is_refused() {
    // In the config: its own data plane or admin address as an upstream.
    let dir = tempfile::tempdir().unwrap();
    for (listen, upstream, key) in [
        ("127.0.0.1:18080", "127.0.0.1:18080", "[listen] addr"),
        ("0.0.0.0:18080", "localhost:18080", "[listen] addr"),
        ("127.0.0.1:18080", "127.0.0.1:9901", "[admin] addr"),
    ] {
        let path = write_config(
            dir.path(),
            &format!("[listen]\naddr = \"{listen}\"\n[slots.blue]\nupstreams = [\"{upstream}\"]\n"),
        );
        let (code, out, err) = turnout(
            dir.path(),
            &["check-config", "--config", path.to_str().unwrap()],
            &[],
        )
        .await;
        assert_eq!(code, 2, "{upstream} on {listen}: {out}{err}");
        assert!(
            err.contains("slots.blue.upstreams") && err.contains(key) && err.contains("loop"),
            "{err}"
        );
    }
    // At deploy: the router's own address as --upstream.
    let (_blue, router) = blue_only().await;
    let (code, out, err) = router
        .cli(&["deploy", "v2", "--upstream", &router.data])
        .await;
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("this router's own address"), "{err}");
    assert_eq!(live_slot(&router).await, "blue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loop_through_another_router_is_answered_508_at_once() {
    // a -> b -> a: b's upstream is a, and a's green is b. a's health checks of b go
    // round the loop too (and fail with 508): a takes b out only after many of them, so
    // that the loop stays in place while the test looks at it.
    let blue = Backend::start("blue").await;
    let a = Router::start(
        bin(),
        &RouterOptions {
            blue: vec![blue.upstream()],
            unhealthy: Some(1000),
            ..Default::default()
        },
    )
    .await
    .expect("start a");
    let b = Router::start(
        bin(),
        &RouterOptions {
            blue: vec![a.data.clone()],
            ..Default::default()
        },
    )
    .await
    .expect("start b");
    let (code, out, err) = a.cli(&["switch", "--to", "blue"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let (status, body) = a
        .api(
            Method::POST,
            "/api/v1/deployments",
            Some(serde_json::json!({"version": "loop", "upstreams": [b.data.clone()]})),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    // Once a routes to b, each request comes back to a and ends there with 508 — no
    // request multiplies, and a keeps answering.
    turnout_testkit::eventually("a loop answered 508", DEADLINE, || async {
        let mut c = HttpClient::http1(&a.data).await.ok()?;
        let r = c.get("/").await.ok()?;
        (r.status == StatusCode::LOOP_DETECTED).then_some(())
    })
    .await;
    let mut c = HttpClient::http1(&a.data).await.unwrap();
    let r = c.get("/").await.unwrap();
    assert!(
        r.status == StatusCode::LOOP_DETECTED || r.status.is_server_error(),
        "{:?}",
        r.status
    );
    // The same over HTTP/2.
    let mut c = HttpClient::http2(&a.data).await.unwrap();
    let r = c.get("/").await.unwrap();
    assert_eq!(r.status, StatusCode::LOOP_DETECTED, "{}", r.text());
    let (code, _, err) = a.cli(&["status"]).await;
    assert_eq!(code, 0, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_deployment_leaves_the_static_standby_as_it_was() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let v2 = Backend::start("v2").await;
    let router = Router::start(
        bin(),
        &RouterOptions {
            blue: vec![blue.upstream()],
            green: vec![green.upstream()],
            ..Default::default()
        },
    )
    .await
    .expect("start turnout");
    router.await_healthy().await;
    let (code, out, err) = router
        .cli(&[
            "deploy",
            "v2",
            "--upstream",
            &v2.upstream(),
            "--manual",
            "--detach",
        ])
        .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        !out.contains("first deployment"),
        "blue is live: say so: {out}"
    );
    assert!(out.contains("live now: blue"), "{out}");
    turnout_testkit::eventually("the manual gate", DEADLINE, || async {
        (router.status().await["deployment"]["stage"] == "gate").then_some(())
    })
    .await;
    let (code, out, err) = router.cli(&["abort"]).await;
    assert_eq!(code, 0, "{out}{err}");
    // Routing and standby as before the deployment; a rollback still works.
    let s = router.status().await;
    assert_eq!(s["live"], "blue", "{s:#}");
    assert_eq!(s["slots"]["green"]["role"], "standby", "{s:#}");
    assert_eq!(
        s["slots"]["green"]["upstreams"][0]["addr"],
        green.upstream(),
        "{s:#}"
    );
    let (code, out, err) = router.cli(&["rollback"]).await;
    assert_eq!(code, 0, "rollback after the abort: {out}{err}");
    assert_eq!(live_slot(&router).await, "green");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unusable_state_directory_is_a_config_error_said_once() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("not-a-dir"), "").unwrap();
    let path = write_config(
        dir.path(),
        "[listen]\naddr = \"127.0.0.1:0\"\n[admin]\naddr = \"127.0.0.1:0\"\n[state]\ndir = \"not-a-dir\"\n",
    );
    let (code, out, err) = turnout(
        dir.path(),
        &["serve", "--config", path.to_str().unwrap()],
        &[],
    )
    .await;
    assert_eq!(code, 2, "{out}{err}");
    assert!(err.contains("[state] dir"), "{err}");
    assert_eq!(
        err.matches("File exists").count(),
        1,
        "the cause once: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_huge_url_in_a_replay_file_is_quoted_short() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("huge.gor");
    let target = format!("/{}", "a".repeat(5 * 1024 * 1024));
    let mut file = format!("1 {:024x} 1700000000000000000 0\n", 1);
    file.push_str(&format!("GET {target} HTTP/1.1\r\nhost: x\r\n\r\n"));
    file.push_str("\n🐵🙈🙉\n");
    std::fs::write(&path, file).unwrap();
    let url = format!("http://127.0.0.1:{}", dead_port());
    let (_code, _out, err) = turnout(
        dir.path(),
        &["replay", path.to_str().unwrap(), "--target", &url],
        &[],
    )
    .await;
    assert!(
        err.len() < 4096,
        "stderr is {} bytes:\n{}",
        err.len(),
        &err[..err.len().min(500)]
    );
    assert!(
        err.contains("bytes)"),
        "the URL is cut, with its length: {err}"
    );
}
