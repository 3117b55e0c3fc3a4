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
