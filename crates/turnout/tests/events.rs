//! Events: the SSE stream (`GET /api/v1/events`), `[notify]` webhooks and
//! `status --watch`, against a real router.
//!
//! No timed assertions: every wait is bounded by a generous deadline, and the SSE delay is
//! printed (run with `--nocapture` to see it), not asserted.

use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use turnout_testkit::{eventually, router_token, webhook_receiver, Backend, Router, RouterOptions};

const DEADLINE: Duration = Duration::from_secs(5);

async fn router(blue: &Backend, green: &Backend, extra: &str) -> Router {
    let router = Router::start(
        Path::new(env!("CARGO_BIN_EXE_turnout")),
        &RouterOptions {
            blue: vec![blue.upstream()],
            green: vec![green.upstream()],
            extra: extra.to_owned(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    router.await_healthy().await;
    router
}

/// Opens `GET path` on the admin API with a raw HTTP/1.1 request; returns the stream
/// after the response head, and the head.
async fn open(admin: &str, path: &str, auth: Option<&str>) -> (TcpStream, String, Vec<u8>) {
    let mut s = TcpStream::connect(admin).await.unwrap();
    let auth = auth
        .map(|t| format!("authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: {admin}\r\n{auth}\r\n").as_bytes())
        .await
        .unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let rest = buf[end + 4..].to_vec();
            return (s, head, rest);
        }
        let n = tokio::time::timeout(DEADLINE, s.read(&mut chunk))
            .await
            .expect("a response head within the deadline")
            .unwrap();
        assert!(n > 0, "the admin API closed the connection before a head");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads the SSE stream until an event of `kind` arrives; returns its data.
async fn next_event(s: &mut TcpStream, buf: &mut String, kind: &str) -> Value {
    let marker = format!("event: {kind}\ndata: ");
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(i) = buf.find(&marker) {
            let from = i + marker.len();
            if let Some(len) = buf[from..].find('\n') {
                let data: Value = serde_json::from_str(&buf[from..from + len]).unwrap();
                buf.drain(..from + len);
                return data;
            }
        }
        let n = tokio::time::timeout(DEADLINE, s.read(&mut chunk))
            .await
            .unwrap_or_else(|_| panic!("no {kind} event within {DEADLINE:?}; got: {buf}"))
            .unwrap();
        assert!(n > 0, "the event stream ended; got: {buf}");
        buf.push_str(&String::from_utf8_lossy(&chunk[..n]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sse_client_receives_the_switch_event() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let router = router(&blue, &green, "").await;

    // Without a token: refused, in the API's error shape.
    let (_s, head, _) = open(&router.admin, "/api/v1/events", None).await;
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    let (_s, head, _) = open(&router.admin, "/api/v1/events?access_token=wrong", None).await;
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");

    // The token as a query parameter (what a browser's EventSource can do).
    let path = format!("/api/v1/events?access_token={}", router_token());
    let (mut sse, head, rest) = open(&router.admin, &path, None).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/event-stream"),
        "{head}"
    );
    let mut buf = String::from_utf8_lossy(&rest).into_owned();
    // The first bytes (`retry:`) come once the stream is subscribed.
    let mut chunk = [0u8; 1024];
    while !buf.contains("retry:") {
        let n = tokio::time::timeout(DEADLINE, sse.read(&mut chunk))
            .await
            .expect("the stream's first bytes")
            .unwrap();
        assert!(n > 0);
        buf.push_str(&String::from_utf8_lossy(&chunk[..n]));
    }

    // The reader notes when the event arrives, while the CLI runs.
    let reader = tokio::spawn(async move {
        let e = next_event(&mut sse, &mut buf, "switch").await;
        (e, Instant::now(), sse, buf)
    });
    let started = Instant::now();
    let (code, _, err) = router.cli(&["switch", "--to", "green"]).await;
    let returned = Instant::now();
    assert_eq!(code, 0, "switch failed: {err}");
    let (event, arrived, mut sse, mut buf) = tokio::time::timeout(DEADLINE, reader)
        .await
        .expect("the switch event within the deadline")
        .unwrap();
    println!(
        "SSE: the switch event arrived {} ms after the `turnout switch` process started; the CLI returned after {} ms ({} ms {} the event)",
        arrived.duration_since(started).as_millis(),
        returned.duration_since(started).as_millis(),
        if arrived <= returned {
            returned.duration_since(arrived).as_millis()
        } else {
            arrived.duration_since(returned).as_millis()
        },
        if arrived <= returned { "after" } else { "before" },
    );
    assert_eq!(event["kind"], "switch");
    assert_eq!(event["slot"], "green");
    assert_eq!(event["reason"], "operator switch");
    assert_eq!(event["data"]["from"], "blue");
    assert_eq!(event["data"]["to"], "green");
    assert!(event["id"].as_u64().unwrap() > 0, "{event}");
    assert!(
        event["at"].as_str().is_some_and(|t| !t.is_empty()),
        "{event}"
    );

    // A rollback follows on the same stream, with a larger id.
    let (code, _, err) = router.cli(&["rollback"]).await;
    assert_eq!(code, 0, "rollback failed: {err}");
    let back = next_event(&mut sse, &mut buf, "rollback").await;
    assert_eq!(back["reason"], "operator rollback");
    assert_eq!(back["slot"], "blue");
    assert!(back["id"].as_u64() > event["id"].as_u64(), "{back}");

    // Resuming after the switch's id replays the rollback (kept in memory); the token
    // in the header this time.
    let path = format!("/api/v1/events?last_event_id={}", event["id"]);
    let (mut resumed, head, rest) = open(&router.admin, &path, Some(router_token())).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let mut buf = String::from_utf8_lossy(&rest).into_owned();
    let replayed = next_event(&mut resumed, &mut buf, "rollback").await;
    assert_eq!(replayed["id"], back["id"]);
}

/// A webhook receiver that accepts connections and never answers; counts them.
async fn black_hole() -> (String, Arc<Mutex<usize>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let count = Arc::new(Mutex::new(0usize));
    let seen = count.clone();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = listener.accept().await {
            *seen.lock().unwrap() += 1;
            held.push(s);
        }
    });
    (addr, count)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_get_the_rollback_with_its_reason_and_a_dead_one_blocks_nothing() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let (good, bodies) = webhook_receiver().await;
    let (dead, dead_connections) = black_hole().await;
    let extra = format!(
        "[notify]\nwebhooks = [\"http://{dead}/hook\", \"http://{good}/turnout-events\"]\ntimeout = \"30s\"\n"
    );
    let router = router(&blue, &green, &extra).await;

    // The dead webhook holds its first delivery for the whole timeout; switches and
    // rollbacks go on regardless, and the good webhook gets every event.
    for _ in 0..3 {
        let (code, _, err) = router.cli(&["switch", "--to", "green"]).await;
        assert_eq!(code, 0, "switch failed: {err}");
        let (code, _, err) = router.cli(&["rollback"]).await;
        assert_eq!(code, 0, "rollback failed: {err}");
    }
    let rollbacks = eventually(
        "three rollback events at the good webhook",
        DEADLINE,
        || {
            let bodies = bodies.clone();
            async move {
                let got: Vec<Value> = bodies
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|b| b["kind"] == "rollback")
                    .cloned()
                    .collect();
                (got.len() == 3).then_some(got)
            }
        },
    )
    .await;
    let r = &rollbacks[0];
    assert_eq!(r["reason"], "operator rollback", "{r}");
    assert_eq!(r["slot"], "blue", "{r}");
    assert_eq!(r["data"]["from"], "green", "{r}");
    let text = r["text"].as_str().unwrap_or_default();
    assert!(
        text.starts_with("turnout: rolled back from green to blue"),
        "{r}"
    );
    assert!(text.contains("operator rollback"), "{r}");
    let switches = bodies
        .lock()
        .unwrap()
        .iter()
        .filter(|b| b["kind"] == "switch")
        .count();
    assert_eq!(switches, 3);
    // In order, per webhook.
    let ids: Vec<u64> = bodies
        .lock()
        .unwrap()
        .iter()
        .filter_map(|b| b["id"].as_u64())
        .collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    // The dead one was tried (one connection, held: deliveries to it go one at a time).
    eventually(
        "a delivery attempt at the dead webhook",
        DEADLINE,
        || async { (*dead_connections.lock().unwrap() >= 1).then_some(()) },
    )
    .await;
    assert!(
        !router.stderr().contains("not acted on"),
        "[notify] is acted on now: {}",
        router.stderr()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_watch_prints_a_line_after_a_switch() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let router = router(&blue, &green, "").await;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_turnout"))
        .args(["status", "--watch", "--json", "--admin"])
        .arg(format!("http://{}", router.admin))
        .env("TURNOUT_ADMIN_TOKEN", router_token())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = next_json(&mut lines).await;
    assert_eq!(first["live"], "blue", "{first}");
    // Whether or not the watcher is on the event stream yet, it reads the status again
    // once it is, so a switch at any moment shows.
    let (status, _) = router
        .api(
            Method::POST,
            "/api/v1/switch",
            Some(json!({ "to": "green" })),
        )
        .await;
    assert!(status.is_success(), "{status}");
    let second = next_json(&mut lines).await;
    assert_eq!(second["live"], "green", "{second}");
    let (status, _) = router.api(Method::POST, "/api/v1/rollback", None).await;
    assert!(status.is_success(), "{status}");
    let third = next_json(&mut lines).await;
    assert_eq!(third["live"], "blue", "{third}");
    child.start_kill().unwrap();
    let _ = child.wait().await;
}

async fn next_json(lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStdout>>) -> Value {
    let line = tokio::time::timeout(DEADLINE, lines.next_line())
        .await
        .expect("a status line within the deadline")
        .unwrap()
        .expect("status --watch ended");
    serde_json::from_str(&line).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolled_back_deployment_reaches_the_webhook_with_its_reason() {
    let v1 = Backend::start("v1").await;
    let v2 = Backend::start("v2").await;
    let (good, bodies) = webhook_receiver().await;
    let router = Router::start(
        Path::new(env!("CARGO_BIN_EXE_turnout")),
        &RouterOptions {
            blue: vec![v1.upstream()],
            blue_version: Some("v1".into()),
            extra: format!(
                "[bake]\nduration = \"60s\"\ninterval = \"200ms\"\n\n\
                 [notify]\nwebhooks = [\"http://{good}/turnout-events\"]\n"
            ),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let upstream = v2.upstream();
    let args = ["deploy", "v2", "--upstream", &upstream];
    let deploy = router.cli(&args);
    let rollback = async {
        eventually(
            "the deployment to bake",
            Duration::from_secs(30),
            || async { (router.status().await["deployment"]["stage"] == "bake").then_some(()) },
        )
        .await;
        router.cli(&["rollback"]).await
    };
    let ((code, out, err), (rcode, _, rerr)) = tokio::join!(deploy, rollback);
    assert_eq!(code, 3, "{out}{err}");
    assert_eq!(rcode, 0, "{rerr}");
    let r = eventually("the rollback event at the webhook", DEADLINE, || {
        let bodies = bodies.clone();
        async move {
            let b = bodies.lock().unwrap();
            b.iter().find(|b| b["kind"] == "rollback").cloned()
        }
    })
    .await;
    assert_eq!(r["version"], "v2", "{r}");
    assert_eq!(r["slot"], "blue", "{r}");
    assert!(r["deployment"].as_str().is_some(), "{r}");
    let reason = r["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("rolled back by the operator"), "{r}");
    assert!(
        r["text"].as_str().unwrap_or_default().contains(reason),
        "{r}"
    );
    // The deployment's own events came too: the switch to green, and its verdict.
    let b = bodies.lock().unwrap().clone();
    assert!(
        b.iter()
            .any(|e| e["kind"] == "switch" && e["data"]["to"] == "green"),
        "{b:#?}"
    );
    assert!(
        b.iter()
            .any(|e| e["kind"] == "deployment" && e["verdict"] == "rolled_back"),
        "{b:#?}"
    );
}
