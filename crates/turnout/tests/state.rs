//! Switch rules as users meet them through the CLI, and a live slot that survives restarts
//! and `kill -9`.

use std::path::Path;
use std::time::Duration;

use http::Method;
use serde_json::json;
use turnout_testkit::{eventually, Backend, HttpClient, Router, RouterOptions};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_turnout"))
}

async fn router(blue: &Backend, green: &Backend) -> Router {
    Router::start(
        bin(),
        &RouterOptions {
            blue: vec![blue.upstream()],
            green: vec![green.upstream()],
            ..Default::default()
        },
    )
    .await
    .unwrap()
}

async fn wait_health(router: &Router, slot: &str, healthy: bool) {
    eventually(
        &format!("{slot} healthy={healthy}"),
        Duration::from_secs(10),
        || async {
            (router.status().await["slots"][slot]["upstreams"][0]["healthy"] == healthy)
                .then_some(())
        },
    )
    .await;
}

async fn answer(router: &Router) -> String {
    HttpClient::http1(&router.data)
        .await
        .unwrap()
        .get("/")
        .await
        .unwrap()
        .text()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switch_to_unhealthy_slot_is_refused_unless_forced() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    green.set_healthy(false);
    let router = router(&blue, &green).await;
    wait_health(&router, "green", false).await;

    let (code, _, err) = router.cli(&["switch", "--to", "green"]).await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("slot green has no healthy upstream") && err.contains("--force"),
        "{err}"
    );
    assert_eq!(router.status().await["live"], "blue");
    assert_eq!(answer(&router).await, "blue");

    let (code, out, err) = router.cli(&["switch", "--to", "green", "--force"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("green is live"), "{out}");
    assert_eq!(router.status().await["live"], "green");
    // Forced onto a slot whose health check fails, requests get a clear 503 until it passes.
    let r = HttpClient::http1(&router.data)
        .await
        .unwrap()
        .get("/")
        .await
        .unwrap();
    assert_eq!(r.status, 503);
    assert!(r.text().contains("no healthy upstream"), "{}", r.text());
    green.set_healthy(true);
    wait_health(&router, "green", true).await;
    assert_eq!(answer(&router).await, "green");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_returns_to_the_standby_slot_and_status_shows_roles() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let router = router(&blue, &green).await;
    wait_health(&router, "green", true).await;

    let s = router.status().await;
    assert_eq!(s["live"], "blue");
    assert_eq!(s["weights"], json!({"blue": 100, "green": 0}));
    assert_eq!(s["slots"]["blue"]["role"], "live");
    assert_eq!(s["slots"]["green"]["role"], "standby");
    assert_eq!(
        s["slots"]["green"]["upstreams"][0]["addr"],
        green.upstream()
    );
    assert_eq!(s["deployment"], serde_json::Value::Null);

    let (code, _, err) = router.cli(&["switch", "--to", "green"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(answer(&router).await, "green");
    let s = router.status().await;
    assert_eq!(s["weights"], json!({"blue": 0, "green": 100}));
    assert_eq!(s["slots"]["blue"]["role"], "standby");

    let (code, out, err) = router.cli(&["rollback"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("blue is live"), "{out}");
    assert_eq!(answer(&router).await, "blue");

    // The human status names both slots and their health.
    let (code, out, _) = router.cli(&["status"]).await;
    assert_eq!(code, 0);
    assert!(
        out.contains("live: blue") && out.contains(&green.upstream()) && out.contains("healthy"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_slot_survives_sigterm_and_kill_9() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let mut router = router(&blue, &green).await;
    wait_health(&router, "green", true).await;
    let (code, _, err) = router.cli(&["switch", "--to", "green"]).await;
    assert_eq!(code, 0, "{err}");

    assert_eq!(
        router.terminate().await.unwrap(),
        Some(0),
        "SIGTERM exits 0"
    );
    router.restart().await.unwrap();
    assert_eq!(router.status().await["live"], "green");
    assert_eq!(answer(&router).await, "green");

    router.kill9().await;
    router.restart().await.unwrap();
    assert_eq!(router.status().await["live"], "green");
    assert_eq!(answer(&router).await, "green");
}

/// Kill the router while switches are being made, at different moments, and check after
/// each restart that the live slot is one that was committed: the last acknowledged switch,
/// or the one in flight when the process died — never anything else, and the state
/// always loads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_switches_keeps_a_committed_live_slot() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let mut router = router(&blue, &green).await;
    wait_health(&router, "green", true).await;
    let mut acked = "blue".to_owned();
    for round in 0..12u32 {
        wait_health(&router, "blue", true).await;
        wait_health(&router, "green", true).await;
        // A few acknowledged switches, then one in flight when the kill lands; the kill
        // comes after a delay that differs per round to hit different moments.
        for _ in 0..(round % 3 + 1) {
            let to = if acked == "blue" { "green" } else { "blue" };
            let (status, body) = router
                .api(Method::POST, "/api/v1/switch", Some(json!({ "to": to })))
                .await;
            assert_eq!(status, 200, "{body}");
            acked = to.to_owned();
        }
        let in_flight = if acked == "blue" { "green" } else { "blue" };
        let admin = router.admin.clone();
        let pending = tokio::spawn(async move {
            // The answer may never come: the process is being killed.
            let _ =
                tokio::time::timeout(Duration::from_secs(5), raw_switch(&admin, in_flight)).await;
        });
        // Vary the kill instant from round to round (not a synchronisation).
        for _ in 0..round * 40 {
            tokio::task::yield_now().await;
        }
        router.kill9().await;
        let _ = pending.await;
        router.restart().await.unwrap();
        let live = router.status().await["live"]
            .as_str()
            .unwrap_or("none")
            .to_owned();
        assert!(
            live == acked || live == in_flight,
            "round {round}: live {live}, acked {acked}, in flight {in_flight}"
        );
        acked = live;
        assert_eq!(
            answer(&router).await,
            acked,
            "round {round}: traffic follows the loaded state"
        );
    }
}

async fn raw_switch(admin: &str, to: &str) -> anyhow::Result<()> {
    use http_body_util::Full;
    let stream = tokio::net::TcpStream::connect(admin).await?;
    let (mut s, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = http::Request::post("/api/v1/switch")
        .header("host", admin)
        .header(
            "authorization",
            format!("Bearer {}", turnout_testkit::router_token()),
        )
        .header("content-type", "application/json")
        .body(Full::new(bytes::Bytes::from(
            json!({ "to": to }).to_string(),
        )))?;
    s.send_request(req).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_request_in_flight_finish() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let mut router = router(&blue, &green).await;
    wait_health(&router, "blue", true).await;
    let data = router.data.clone();
    let slow = tokio::spawn(async move {
        let mut c = HttpClient::http1(&data).await.unwrap();
        c.get("/slow?ms=1500").await
    });
    // The request has reached the backend: it is in flight.
    eventually(
        "the slow request to arrive",
        Duration::from_secs(10),
        || async { (blue.requests() >= 1).then_some(()) },
    )
    .await;
    assert_eq!(router.terminate().await.unwrap(), Some(0));
    let reply = slow
        .await
        .unwrap()
        .expect("the request in flight completes");
    assert_eq!(reply.status, 200);
    assert_eq!(reply.text(), "blue");
}

/// `turnout serve --config CONFIG` started in `cwd`, stderr to `stderr`; returns the child
/// and its admin address once it listens.
async fn serve_in(cwd: &Path, config: &Path, stderr: &Path) -> (tokio::process::Child, String) {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(bin())
        .arg("serve")
        .arg("--config")
        .arg(config)
        .current_dir(cwd)
        .env("TURNOUT_ADMIN_TOKEN", turnout_testkit::router_token())
        .env("TURNOUT_LOG", "info")
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(stderr).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let admin = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(a) = line.strip_prefix("turnout: admin API listening on http://") {
                return a.to_owned();
            }
        }
        panic!(
            "turnout exited before listening: {}",
            std::fs::read_to_string(stderr).unwrap_or_default()
        )
    })
    .await
    .expect("turnout listening within 30s");
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    (child, admin)
}

/// The CLI against `admin`: exit code, stdout, stderr.
async fn cli_at(admin: &str, args: &[&str]) -> (i32, String, String) {
    let out = tokio::process::Command::new(bin())
        .args(args)
        .arg("--admin")
        .arg(format!("http://{admin}"))
        .env("TURNOUT_ADMIN_TOKEN", turnout_testkit::router_token())
        .output()
        .await
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn status_at(admin: &str) -> serde_json::Value {
    let (code, out, err) = cli_at(admin, &["status", "--json"]).await;
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

/// Fixed bug: a relative `[state] dir` (and `file:` token) was resolved against the working
/// directory, so a router restarted from another directory silently started from scratch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relative_state_dir_is_relative_to_the_config_file() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let home = tempfile::tempdir().unwrap();
    let config = home.path().join("turnout.toml");
    std::fs::write(
        &config,
        format!(
            "[listen]\naddr = \"127.0.0.1:0\"\n\n\
             [admin]\naddr = \"127.0.0.1:0\"\ntoken = \"file:secret\"\n\n\
             [state]\ndir = \"state\"\n\n\
             [health]\npath = \"/healthz\"\ninterval = \"100ms\"\ntimeout = \"500ms\"\nhealthy = 1\nunhealthy = 1\n\n\
             [slots.blue]\nupstreams = [{:?}]\n\n[slots.green]\nupstreams = [{:?}]\n",
            blue.upstream(),
            green.upstream()
        ),
    )
    .unwrap();
    std::fs::write(home.path().join("secret"), turnout_testkit::router_token()).unwrap();
    let db = std::fs::canonicalize(home.path())
        .unwrap()
        .join("state")
        .join("state.db");
    let (elsewhere, again) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());

    let log = home.path().join("first.log");
    let (mut first, admin) = serve_in(elsewhere.path(), &config, &log).await;
    let (code, _, err) = cli_at(&admin, &["switch", "--to", "green"]).await;
    assert_eq!(code, 0, "{err}");
    first.kill().await.unwrap();
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        log.contains(&format!(
            "no saved state in embedded SQLite at {}; starting from the configuration",
            db.display()
        )),
        "{log}"
    );
    assert!(db.exists(), "no state under the config's directory");
    assert!(
        !elsewhere.path().join("state").exists(),
        "state written under the working directory"
    );

    let log = home.path().join("second.log");
    let (_second, admin) = serve_in(again.path(), &config, &log).await;
    assert_eq!(status_at(&admin).await["live"], "green");
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        log.contains(&format!(
            "loaded the saved routing state from embedded SQLite at {}",
            db.display()
        )),
        "{log}"
    );
}

/// A slot that loses its upstreams in the config keeps the saved ones (a deployment may
/// have put them there), and the log says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saved_upstreams_are_kept_with_a_warning_when_the_config_has_none() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let mut router = router(&blue, &green).await;
    let text = std::fs::read_to_string(&router.config).unwrap();
    let listed = format!("upstreams = [{:?}]", green.upstream());
    assert!(text.contains(&listed), "{text}");
    std::fs::write(&router.config, text.replace(&listed, "upstreams = []")).unwrap();
    router.restart().await.unwrap();

    let s = router.status().await;
    assert_eq!(
        s["slots"]["green"]["upstreams"][0]["addr"],
        green.upstream()
    );
    assert_eq!(s["slots"]["green"]["role"], "standby");
    let log = router.stderr();
    assert!(
        log.contains(&format!(
            "slots.green has no upstreams in the config; keeping the saved ones: [{:?}]",
            green.upstream()
        )),
        "{log}"
    );
    assert!(!log.contains("slots.blue has no upstreams"), "{log}");
}

/// Fixed bug: upstreams count as healthy until their first check, so a switch right after
/// start went to a slot that was down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switch_right_after_start_waits_for_the_first_health_check() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    green.set_healthy(false);
    let router = router(&blue, &green).await;
    let (status, body) = router
        .api(
            Method::POST,
            "/api/v1/switch",
            Some(json!({ "to": "green" })),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "unhealthy_slot", "{body}");
    assert_eq!(router.status().await["live"], "blue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_during_the_shutdown_grace_stops_at_once() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let mut router = router(&blue, &green).await;
    wait_health(&router, "blue", true).await;
    let data = router.data.clone();
    // Longer than the test may take: only a forced stop ends it early.
    let slow = tokio::spawn(async move {
        let mut c = HttpClient::http1(&data).await.unwrap();
        c.get("/slow?ms=60000").await
    });
    eventually(
        "the slow request to arrive",
        Duration::from_secs(10),
        || async { (blue.requests() >= 1).then_some(()) },
    )
    .await;
    let pid = router.pid().unwrap().to_string();
    let sent = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(sent.success());
    eventually(
        "the router to start its graceful stop",
        Duration::from_secs(10),
        || async { router.stderr().contains("shutting down").then_some(()) },
    )
    .await;
    let started = std::time::Instant::now();
    // terminate() sends the second SIGTERM and waits for the exit.
    let code = router.terminate().await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the second SIGTERM took {:?}",
        started.elapsed()
    );
    assert_eq!(code, Some(1), "a forced stop is not a clean exit");
    let log = router.stderr();
    assert!(log.contains("stopped at once by a second SIGTERM"), "{log}");
    let cut = tokio::time::timeout(Duration::from_secs(10), slow)
        .await
        .expect("the cut request to end")
        .unwrap();
    assert!(cut.is_err(), "the request in flight completed: {cut:?}");
}

/// The state database moved away under a running router: every change fails loudly
/// (nothing is acknowledged that would be lost), `status` says why, the data plane goes
/// on; the next start warns that the directory lost its database.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_state_database_moved_away_makes_every_change_fail_loudly() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let mut router = router(&blue, &green).await;
    let db = router.dir().join("state").join("state.db");
    std::fs::rename(&db, router.dir().join("state.db.moved")).unwrap();

    let (status, body) = router.switch_to("green").await;
    assert_eq!(status, 503, "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("state.db") && message.contains("moved or deleted"),
        "{body}"
    );
    let (status, body) = router.api(Method::POST, "/api/v1/rollback", None).await;
    assert_ne!(status, 200, "{body}");
    let (status, body) = router
        .api(
            Method::POST,
            "/api/v1/deployments",
            Some(json!({"version": "v2", "upstreams": [green.upstream()]})),
        )
        .await;
    assert_ne!(status, 202, "{body}");
    assert_ne!(status, 200, "{body}");
    // Nothing changed where users are, and status says what is wrong.
    assert_eq!(answer(&router).await, "blue");
    let (code, out, err) = router.cli(&["status"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("STATE:") && out.contains("moved or deleted"),
        "{out}"
    );

    // A start on the directory without its database says what it found.
    router.restart().await.unwrap();
    let log = router.stderr();
    assert!(
        log.contains("has no state.db but holds") && log.contains("lock"),
        "{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switch_to_the_live_slot_says_so_and_changes_nothing() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let router = router(&blue, &green).await;
    let before = router.status().await["revision"].clone();
    let (code, out, err) = router.cli(&["switch", "--to", "blue"]).await;
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("already live: blue"), "{out}");
    assert_eq!(router.status().await["revision"], before, "no new revision");
    let (status, body) = router.switch_to("blue").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["changed"], false, "{body}");
    // A real switch still is one.
    let (status, body) = router.switch_to("green").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["changed"], true, "{body}");
}
