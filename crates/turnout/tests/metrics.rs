//! `/metrics` counts exactly the traffic sent; request ids; the access log.

use std::path::Path;
use std::time::Duration;

use http::Method;
use serde_json::json;
use turnout_testkit::{eventually, Backend, HttpClient, Router, RouterOptions};

async fn start(extra: &str) -> (Backend, Backend, Router) {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let router = Router::start(
        Path::new(env!("CARGO_BIN_EXE_turnout")),
        &RouterOptions {
            blue: vec![blue.upstream()],
            green: vec![green.upstream()],
            blue_version: Some("v1".into()),
            green_version: Some("v2".into()),
            extra: extra.into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    router.await_healthy().await;
    (blue, green, router)
}

/// `/metrics`, fetched without a token.
async fn scrape(router: &Router) -> String {
    let mut admin = HttpClient::http1(&router.admin).await.unwrap();
    let reply = admin.get("/metrics").await.unwrap();
    assert_eq!(reply.status, 200, "{}", reply.text());
    let ct = reply.headers["content-type"].to_str().unwrap();
    assert!(ct.contains("openmetrics-text"), "{ct}");
    reply.text()
}

/// The value of the sample `series` (name and labels exactly as exported); 0 when absent.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().expect("a number"))
}

fn requests(text: &str, slot: &str, version: &str, class: &str) -> f64 {
    value(
        text,
        &format!(
            "turnout_requests_total{{slot=\"{slot}\",version=\"{version}\",code_class=\"{class}\"}}"
        ),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metric_values_equal_the_traffic_sent() {
    let (blue, green, router) = start("").await;
    let before = scrape(&router).await;
    assert_eq!(value(&before, "turnout_live_slot{slot=\"blue\"}"), 1.0);
    assert_eq!(value(&before, "turnout_live_slot{slot=\"green\"}"), 0.0);
    for (slot, b) in [("blue", &blue), ("green", &green)] {
        let series = format!(
            "turnout_upstream_healthy{{slot=\"{slot}\",addr=\"{}\"}}",
            b.upstream()
        );
        assert_eq!(value(&before, &series), 1.0, "{series}\n{before}");
    }
    assert_eq!(
        value(&before, "turnout_deployment_stage{stage=\"none\"}"),
        1.0
    );
    for name in [
        "turnout_switches_total",
        "turnout_shadow_requests_total{outcome=\"mirrored\"}",
    ] {
        assert!(before.contains(name), "{name} missing:\n{before}");
    }
    let switches = value(&before, "turnout_switches_total");

    // 7 × 200, 3 × 404, 2 × 503 over HTTP/1.1; 2 × 200 and 1 × 404 over HTTP/2.
    let mut h1 = HttpClient::http1(&router.data).await.unwrap();
    for path in std::iter::repeat_n("/", 7)
        .chain(std::iter::repeat_n("/status?code=404", 3))
        .chain(std::iter::repeat_n("/status?code=503", 2))
    {
        h1.get(path).await.unwrap();
    }
    let mut h2 = HttpClient::http2(&router.data).await.unwrap();
    for path in ["/", "/", "/status?code=404"] {
        h2.get(path).await.unwrap();
    }
    let m = scrape(&router).await;
    assert_eq!(requests(&m, "blue", "v1", "2xx"), 9.0, "{m}");
    assert_eq!(requests(&m, "blue", "v1", "4xx"), 4.0, "{m}");
    assert_eq!(requests(&m, "blue", "v1", "5xx"), 2.0, "{m}");
    assert_eq!(requests(&m, "blue", "v1", "3xx"), 0.0, "{m}");
    assert_eq!(requests(&m, "green", "v2", "2xx"), 0.0, "{m}");
    let count = "turnout_request_duration_seconds_count{slot=\"blue\",version=\"v1\"}";
    assert_eq!(value(&m, count), 15.0, "{m}");
    let inf = "turnout_request_duration_seconds_bucket{le=\"+Inf\",slot=\"blue\",version=\"v1\"}";
    let inf_alt =
        "turnout_request_duration_seconds_bucket{slot=\"blue\",version=\"v1\",le=\"+Inf\"}";
    assert_eq!(value(&m, inf).max(value(&m, inf_alt)), 15.0, "{m}");
    assert!(
        value(
            &m,
            "turnout_request_duration_seconds_sum{slot=\"blue\",version=\"v1\"}"
        ) > 0.0
    );

    // A switch: later requests count for green, blue's stay as they were.
    let (status, body) = router
        .api(
            Method::POST,
            "/api/v1/switch",
            Some(json!({ "to": "green" })),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let mut h1 = HttpClient::http1(&router.data).await.unwrap();
    for path in ["/", "/", "/", "/status?code=500"] {
        h1.get(path).await.unwrap();
    }
    let m = scrape(&router).await;
    assert_eq!(requests(&m, "green", "v2", "2xx"), 3.0, "{m}");
    assert_eq!(requests(&m, "green", "v2", "5xx"), 1.0, "{m}");
    assert_eq!(requests(&m, "blue", "v1", "2xx"), 9.0, "{m}");
    assert_eq!(requests(&m, "blue", "v1", "5xx"), 2.0, "{m}");
    assert_eq!(value(&m, "turnout_live_slot{slot=\"green\"}"), 1.0);
    assert_eq!(value(&m, "turnout_live_slot{slot=\"blue\"}"), 0.0);
    assert_eq!(value(&m, "turnout_switches_total"), switches + 1.0);
    let count = "turnout_request_duration_seconds_count{slot=\"green\",version=\"v2\"}";
    assert_eq!(value(&m, count), 4.0, "{m}");

    // An upstream that goes down shows as unhealthy.
    blue.set_healthy(false);
    let series = format!(
        "turnout_upstream_healthy{{slot=\"blue\",addr=\"{}\"}}",
        blue.upstream()
    );
    eventually(
        "blue unhealthy in /metrics",
        Duration::from_secs(10),
        || {
            let (router, series) = (&router, &series);
            async move { (value(&scrape(router).await, series) == 0.0).then_some(()) }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_made_when_absent_and_kept_when_present() {
    let (_blue, _green, router) = start("").await;
    for mut client in [
        HttpClient::http1(&router.data).await.unwrap(),
        HttpClient::http2(&router.data).await.unwrap(),
    ] {
        // None sent: turnout makes one, the same for the upstream and the client.
        let r = client.get("/headers").await.unwrap();
        let seen: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        let id = r.headers["x-request-id"].to_str().unwrap().to_owned();
        assert_eq!(id.len(), 24, "{id}");
        assert!(id.bytes().all(|b| b.is_ascii_hexdigit()), "{id}");
        assert_eq!(seen["x-request-id"], id.as_str(), "{seen}");
        // Each request its own.
        let r2 = client.get("/headers").await.unwrap();
        assert_ne!(r2.headers["x-request-id"], id.as_str());
        // The client's id is passed on and returned.
        let r = client
            .request(
                Method::GET,
                "/headers",
                &[("x-request-id", "client-id-1")],
                Default::default(),
            )
            .await
            .unwrap();
        let seen: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(seen["x-request-id"], "client-id-1");
        assert_eq!(r.headers["x-request-id"], "client-id-1");
        assert_eq!(r.headers.get_all("x-request-id").iter().count(), 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_has_a_json_line_per_request() {
    let (_blue, _green, router) = start("[log]\naccess = \"access.log\"\n").await;
    let mut h1 = HttpClient::http1(&router.data).await.unwrap();
    h1.get("/download?bytes=1000").await.unwrap();
    h1.request(
        Method::GET,
        "/status?code=404",
        &[("x-request-id", "r-404")],
        Default::default(),
    )
    .await
    .unwrap();
    let mut h2 = HttpClient::http2(&router.data).await.unwrap();
    h2.get("/download?bytes=300").await.unwrap();
    let path = router.dir().join("access.log");
    let lines: Vec<serde_json::Value> =
        eventually("three access log lines", Duration::from_secs(10), || {
            let path = path.clone();
            async move {
                let text = std::fs::read_to_string(&path).ok()?;
                let lines: Vec<serde_json::Value> = text
                    .lines()
                    .map(|l| serde_json::from_str(l).expect("a JSON line"))
                    .collect();
                (lines.len() >= 3).then_some(lines)
            }
        })
        .await;
    let find = |path: &str| {
        lines
            .iter()
            .find(|l| l["path"] == path)
            .unwrap_or_else(|| panic!("no line for {path}: {lines:?}"))
    };
    let l = find("/download?bytes=1000");
    for key in [
        "time",
        "method",
        "path",
        "status",
        "slot",
        "version",
        "upstream",
        "duration_ms",
        "bytes",
        "request_id",
    ] {
        assert!(l.get(key).is_some(), "{key} missing: {l}");
    }
    assert_eq!(l["method"], "GET");
    assert_eq!(l["status"], 200);
    assert_eq!(l["slot"], "blue");
    assert_eq!(l["version"], "v1");
    assert_eq!(l["bytes"], 1000);
    assert!(l["time"].as_str().unwrap().ends_with('Z'), "{l}");
    assert_eq!(l["request_id"].as_str().unwrap().len(), 24);
    let l = find("/status?code=404");
    assert_eq!(l["status"], 404);
    assert_eq!(l["request_id"], "r-404");
    let l = find("/download?bytes=300");
    assert_eq!(l["status"], 200);
    assert_eq!(l["bytes"], 300);
}
