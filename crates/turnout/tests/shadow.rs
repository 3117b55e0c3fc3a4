//! Traffic shadowing as users meet it: a real router starts the candidate through
//! `[provision]`, keep-alive clients send steady load through the data plane, the
//! `[shadow]` stage mirrors it to the candidate and its gate decides, and the assertions
//! are about what users saw, what the candidate received (the demo service's
//! `GET /debug/requests`), what `turnout shadow report --json` says and how the
//! deployment ended.
//!
//! v1 runs as blue's static upstream, started by the test; the deployments go to green,
//! where the `[provision]` command starts each version with the demo service's knobs the
//! test names for it. Latency is never asserted: the tests that are not about the latency
//! gate set `max_latency_ratio_p99` high, since two cores shared by the router, both
//! versions, the load and the other tests make p99 a matter of scheduling.

use std::path::Path;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Method;
use serde_json::{json, Value};
use turnout_testkit::{
    describe_failures, eventually, toml_str, DemoApp, HttpClient, Load, Router, RouterOptions,
    Sample, Shop,
};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_turnout"))
}

/// Between two requests of one load client.
const PACE: Duration = Duration::from_millis(10);

/// `[bake]`: one second, so that a promoted deployment ends soon.
const BAKE: &str = "[bake]\nduration = \"1s\"\ninterval = \"500ms\"\nwindow = \"1s\"\nmax_error_rate = 0.05\nmin_requests = 10\n";

/// `[verify]`: the candidate answers at all.
const VERIFY: &str =
    "[verify]\nchecks = [{ path = \"/\", status = 200, body_contains = \"turnout-demo-app\" }]\n";

/// The demo service's database and the processes started on it.
/// `[provision]` with two instances from `shop` (`versions`: the version → flags arms),
/// `[shadow]` with `shadow`, and the rest.
fn shop_config(shop: &Shop, versions: &[(&str, &str)], shadow: &str) -> String {
    format!(
        "[provision]\ncommand = {}\ninstances = 2\nhealth_timeout = \"20s\"\nstop_timeout = \"5s\"\n\n\
         [decommission]\ndelay = \"30s\"\n\n[shadow]\n{shadow}\n{BAKE}{VERIFY}",
        toml_str(&shop.provision_command(versions))
    )
}

/// A router provisioning from `shop` with `v1` as blue's static upstream.
async fn router(shop: &Shop, v1: &DemoApp, versions: &[(&str, &str)], shadow: &str) -> Router {
    Router::start(
        bin(),
        &RouterOptions {
            blue: vec![v1.addr.clone()],
            blue_version: Some("v1".to_owned()),
            extra: shop_config(shop, versions, shadow),
            ..Default::default()
        },
    )
    .await
    .unwrap()
}

async fn status(router: &Router) -> Value {
    let (code, body) = router.api(Method::GET, "/api/v1/status", None).await;
    assert_eq!(code, 200, "{body}");
    body
}

/// The newest deployment, as `history --json` prints it.
async fn last_deployment(router: &Router) -> Value {
    let (code, out, err) = router.cli(&["history", "--json"]).await;
    assert_eq!(code, 0, "{err}");
    let list: Value = serde_json::from_str(&out).expect("history JSON");
    list[0].clone()
}

fn stage<'a>(d: &'a Value, name: &str) -> &'a Value {
    d["stages"]
        .as_array()
        .and_then(|s| s.iter().rev().find(|s| s["stage"] == name))
        .unwrap_or_else(|| panic!("no stage {name} in {d:#}"))
}

fn stage_names(d: &Value) -> Vec<String> {
    d["stages"]
        .as_array()
        .map(|s| {
            s.iter()
                .map(|s| s["stage"].as_str().unwrap_or("?").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// `turnout shadow report --json`, as a script reads it.
async fn shadow_report(router: &Router) -> Value {
    let (code, out, err) = router.cli(&["shadow", "report", "--json"]).await;
    assert_eq!(code, 0, "{out}{err}");
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("report JSON: {e}: {out}"))
}

/// Waits until the shadow comparison of the running deployment is on: mirroring has
/// started.
async fn wait_shadow_running(router: &Router) {
    eventually(
        "the shadow stage to start mirroring",
        Duration::from_secs(30),
        || async {
            let (code, r) = router.api(Method::GET, "/api/v1/shadow/report", None).await;
            (code == 200 && r["running"] == true).then_some(())
        },
    )
    .await;
}

/// Whether the shadow comparison is still running.
async fn shadow_running(router: &Router) -> bool {
    let (code, r) = router.api(Method::GET, "/api/v1/shadow/report", None).await;
    code == 200 && r["running"] == true
}

fn endpoint<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["endpoints"]
        .as_array()
        .and_then(|e| e.iter().find(|e| e["endpoint"] == name))
        .unwrap_or_else(|| panic!("no endpoint {name:?} in {report:#}"))
}

fn field<'a>(endpoint: &'a Value, path: &str) -> &'a Value {
    endpoint["fields"]
        .as_array()
        .and_then(|f| f.iter().find(|f| f["path"] == path))
        .unwrap_or_else(|| panic!("no field {path:?} in {endpoint:#}"))
}

fn field_paths(endpoint: &Value) -> Vec<&str> {
    endpoint["fields"]
        .as_array()
        .map(|f| f.iter().filter_map(|f| f["path"].as_str()).collect())
        .unwrap_or_default()
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a count: {v}"))
}

async fn answers_from(load: &Load, version: &str, n: usize) {
    eventually(
        &format!("{n} answers from {version}"),
        Duration::from_secs(20),
        || async { (load.count_from(version) >= n).then_some(()) },
    )
    .await;
}

fn assert_no_failure(samples: &[Sample]) {
    assert!(
        samples.iter().all(|s| !s.failed()),
        "{}",
        describe_failures(samples)
    );
}

/// Versions that answered, with counts, for messages.
fn tally(samples: &[Sample]) -> String {
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for s in samples {
        let key = match (&s.version, s.status) {
            (Some(v), st) => format!("{v} {st}"),
            (None, st) => format!("? {st}"),
        };
        *counts.entry(key).or_default() += 1;
    }
    format!("{counts:?}")
}

/// p50 and p99 of the answers' latencies in milliseconds, for the log (never asserted).
fn latency(samples: &[&Sample]) -> String {
    let mut ms: Vec<f64> = samples
        .iter()
        .map(|s| s.received.duration_since(s.sent).as_secs_f64() * 1000.0)
        .collect();
    if ms.is_empty() {
        return "no answers".into();
    }
    ms.sort_by(f64::total_cmp);
    let q = |p: f64| ms[((ms.len() - 1) as f64 * p).round() as usize];
    format!(
        "{} answers, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        ms.len(),
        q(0.5),
        q(0.99),
        ms[ms.len() - 1]
    )
}

/// What the candidate's instances received (`GET /debug/requests` on each, summed):
/// `(method → mirrored copies, method → other requests)`.
async fn candidate_requests(addrs: &[String]) -> (Value, Value) {
    let mut shadow = serde_json::Map::new();
    let mut direct = serde_json::Map::new();
    for addr in addrs {
        let mut c = HttpClient::http1(addr).await.expect("reach the candidate");
        let reply = c.get("/debug/requests").await.expect("/debug/requests");
        assert_eq!(reply.status, 200, "{}", reply.text());
        let v: Value = serde_json::from_slice(&reply.body).expect("JSON");
        for (into, part) in [(&mut shadow, &v["shadow"]), (&mut direct, &v["direct"])] {
            for (method, n) in part.as_object().into_iter().flatten() {
                let sum = into.get(method).and_then(Value::as_u64).unwrap_or(0) + u(n);
                into.insert(method.clone(), json!(sum));
            }
        }
    }
    (Value::Object(shadow), Value::Object(direct))
}

/// Green's upstream addresses, from `status`.
async fn green_upstreams(router: &Router) -> Vec<String> {
    let s = status(router).await;
    s["slots"]["green"]["upstreams"]
        .as_array()
        .map(|u| {
            u.iter()
                .filter_map(|u| u["addr"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Stops the router and the service the way an operator does (`turnout stop`), so that
/// no instance is left.
async fn stop(mut router: Router) {
    router.stop_service().await;
}

/// A candidate identical to live, both answering with timestamps and random ids: every
/// comparison differs, the live slot differs from itself in the same fields as often, so
/// all of it is cancelled as noise, the gate passes and the version is promoted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn noise_is_cancelled_and_a_good_candidate_is_promoted() {
    let shop = Shop::new(bin());
    let v1 = shop.v1(&["--noisy"]).await;
    let shadow = "duration = \"3s\"\nnoise_sample = 1.0\nignore_json = [\"/version\"]\n\
                  min_requests = 50\nmax_latency_ratio_p99 = 50.0\n";
    let router = router(&shop, &v1, &[("v2", "--noisy")], shadow).await;
    let list = Load::start(&router.data, "/api/items", 2, PACE);
    let one = Load::start(&router.data, "/api/items/2", 1, PACE);
    answers_from(&list, "v1", 20).await;

    let started = Instant::now();
    let (code, out, err) = router.cli(&["deploy", "v2"]).await;
    let verdict_at = Instant::now();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("verdict: PROMOTED v2 in green"), "{out}");
    let mut samples = list.stop().await;
    // (An item's answer names no version.)
    assert!(
        samples.iter().all(|s| s.from("v1") || s.from("v2")),
        "{}",
        tally(&samples)
    );
    samples.extend(one.stop().await);
    assert_no_failure(&samples);
    let during: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.sent > started && s.received < verdict_at)
        .collect();
    eprintln!(
        "live latency during the deployment (shadow with noise copies, queue not full): {}",
        latency(&during)
    );

    let d = last_deployment(&router).await;
    assert_eq!(d["verdict"], "promoted", "{d:#}");
    let names = stage_names(&d);
    let at = |n: &str| names.iter().position(|s| s == n);
    assert!(
        at("verify") < at("shadow") && at("shadow") < at("switch"),
        "stage order: {names:?}"
    );
    let sh = stage(&d, "shadow");
    assert_eq!(sh["outcome"], "passed", "{d:#}");
    let detail = sh["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("0 of") && detail.contains("differed only by noise"),
        "{detail}"
    );

    let r = shadow_report(&router).await;
    assert_eq!(
        (
            &r["deployment"],
            &r["version"],
            &r["live_version"],
            &r["running"]
        ),
        (&d["id"], &json!("v2"), &json!("v1"), &json!(false)),
        "{r:#}"
    );
    let compared = u(&r["compared"]);
    assert!(compared >= 50, "{r:#}");
    assert_eq!(u(&r["requests"]), compared, "{r:#}");
    assert_eq!(u(&r["mismatched"]), 0, "{r:#}");
    // Every answer is stamped, so every comparison differed, and only by noise.
    assert_eq!(u(&r["noise"]), compared, "{r:#}");
    assert!(u(&r["noise_samples"]) > 0, "{r:#}");
    for side in ["live", "candidate"] {
        for q in ["p50", "p99"] {
            assert!(r["latency_ms"][side][q].is_number(), "{side}.{q}: {r:#}");
        }
    }
    for name in ["GET /api/items", "GET /api/items/{id}"] {
        let e = endpoint(&r, name);
        assert!(u(&e["compared"]) > 0, "{e:#}");
        assert_eq!(u(&e["mismatched"]), 0, "{e:#}");
        for path in ["body/generated_at", "body/request_id", "header.x-trace-id"] {
            let f = field(e, path);
            assert_eq!(
                (&f["kind"], &f["noise"], &f["count"]),
                (&json!("value"), &json!(true), &e["compared"]),
                "{f:#}"
            );
        }
        // Ignored (`ignore_json`): the version, which differs in every answer.
        let paths = field_paths(e);
        assert!(!paths.iter().any(|p| p.contains("version")), "{paths:?}");
        assert!(
            e["fields"]
                .as_array()
                .unwrap()
                .iter()
                .all(|f| f["noise"] == true),
            "{e:#}"
        );
    }

    // The same report for people: text and HTML.
    let html = shop.path("report.html");
    let (code, text, err) = router
        .cli(&["shadow", "report", "--html", html.as_str()])
        .await;
    assert_eq!(code, 0, "{err}");
    assert!(
        text.contains("0 mismatched") && text.contains("cancelled as noise"),
        "{text}"
    );
    let page = std::fs::read_to_string(&html).expect("the HTML report");
    assert!(
        page.contains("GET /api/items") && page.contains("generated_at"),
        "HTML report lacks the endpoint or field"
    );
    stop(router).await;
}

/// A candidate that changes one JSON field of one route, one status and one header:
/// the gate fails the deployment before its switch, users only ever saw v1, and the
/// report names each difference where it is; an unchanged route shows none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_field_status_and_header_fail_the_shadow_gate() {
    let shop = Shop::new(bin());
    let v1 = shop.v1(&[]).await;
    let shadow = "duration = \"2s\"\nignore_json = [\"/version\"]\nmin_requests = 20\n\
                  max_latency_ratio_p99 = 50.0\n";
    let candidate = "--price-as-string --not-found-status 410 --feature new-checkout";
    let router = router(&shop, &v1, &[("v2", candidate)], shadow).await;
    // Most load on the list, so that its field leads the reason.
    let list = Load::start(&router.data, "/api/items", 3, PACE);
    let missing = Load::start(&router.data, "/api/items/999", 1, PACE);
    let index = Load::start(&router.data, "/", 1, PACE);
    answers_from(&list, "v1", 20).await;

    let (code, out, err) = router.cli(&["deploy", "v2"]).await;
    assert_eq!(code, 4, "{out}{err}");
    assert!(out.contains("verdict: FAILED v2 in green"), "{out}");
    let list = list.stop().await;
    let missing = missing.stop().await;
    let index = index.stop().await;

    // Users never saw the candidate: every answer is v1's (the missing item's 404 names
    // no version; v2 would have answered 410).
    for samples in [&list, &index] {
        assert_no_failure(samples);
        assert!(samples.iter().all(|s| s.from("v1")), "{}", tally(samples));
    }
    assert!(
        !missing.is_empty() && missing.iter().all(|s| s.status == 404),
        "{}",
        tally(&missing)
    );

    let d = last_deployment(&router).await;
    assert_eq!(d["verdict"], "failed", "{d:#}");
    let reason = d["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("shadow gate:")
            && reason.contains("above max_mismatch_rate")
            && reason.contains("GET /api/items body/items/0/price (type"),
        "{reason}"
    );
    assert!(out.contains(reason), "the CLI shows the reason: {out}");
    assert_eq!(stage(&d, "shadow")["outcome"], "failed", "{d:#}");
    assert!(
        !stage_names(&d).iter().any(|s| s == "switch"),
        "{:?}",
        stage_names(&d)
    );
    let s = status(&router).await;
    assert_eq!(s["live"], "blue", "{s:#}");

    let r = shadow_report(&router).await;
    assert_eq!(r["running"], false, "{r:#}");
    assert!(u(&r["mismatched"]) > 0, "{r:#}");

    let items = endpoint(&r, "GET /api/items");
    assert!(u(&items["compared"]) > 0, "{items:#}");
    assert_eq!(items["mismatched"], items["compared"], "{items:#}");
    let price = field(items, "body/items/0/price");
    assert_eq!(
        (&price["kind"], &price["noise"], &price["count"]),
        (&json!("type"), &json!(false), &items["compared"]),
        "{price:#}"
    );
    assert_eq!(
        (&price["example"]["live"], &price["example"]["candidate"]),
        (&json!("2.5"), &json!("\"2.50\"")),
        "{price:#}"
    );
    for e in [items, endpoint(&r, "GET /api/items/{id}")] {
        let h = field(e, "header.x-shop-feature");
        assert_eq!(
            (&h["kind"], &h["noise"], &h["example"]["candidate"]),
            (&json!("extra"), &json!(false), &json!("new-checkout")),
            "{h:#}"
        );
    }

    let missing = endpoint(&r, "GET /api/items/{id}");
    assert_eq!(missing["mismatched"], missing["compared"], "{missing:#}");
    let st = field(missing, "status");
    assert_eq!(
        (
            &st["kind"],
            &st["example"]["live"],
            &st["example"]["candidate"]
        ),
        (&json!("value"), &json!("404"), &json!("410")),
        "{st:#}"
    );
    // The body is the same error either way: only the status and the header differ.
    assert_eq!(
        field_paths(missing),
        ["header.x-shop-feature", "status"],
        "{missing:#}"
    );

    let unchanged = endpoint(&r, "GET /");
    assert!(u(&unchanged["compared"]) > 0, "{unchanged:#}");
    assert_eq!(u(&unchanged["mismatched"]), 0, "{unchanged:#}");
    assert!(field_paths(unchanged).is_empty(), "{unchanged:#}");

    // The failed candidate's instances are stopped.
    eventually(
        "v2's instances to stop",
        Duration::from_secs(20),
        || async { shop.instances("v2").is_empty().then_some(()) },
    )
    .await;
    stop(router).await;
}

/// POSTs sent during the shadow stage of `mirror_posts`.
const POSTS: usize = 20;

/// Sends `n` `POST /api/items` through the data plane, one after another; all created.
async fn post_items(addr: &str, n: usize) {
    let mut c = HttpClient::http1(addr).await.unwrap();
    for i in 0..n {
        let reply = c
            .request(
                Method::POST,
                "/api/items",
                &[("content-type", "application/json")],
                Bytes::from(format!(r#"{{"name":"scone {i}","price":3.2}}"#)),
            )
            .await
            .unwrap();
        assert_eq!(reply.status, 201, "{}", reply.text());
    }
}

/// Deploys v2 with `shadow`, sends [`POSTS`] POSTs while the shadow stage mirrors GET load,
/// and returns what the candidate's instances received, with the report. The gate is not
/// what these tests are about: the deployment is promoted whatever the comparison says.
async fn mirror_posts(shadow: &str, candidate_flags: &str) -> (Value, Value) {
    let shop = Shop::new(bin());
    let v1 = shop.v1(&[]).await;
    let shadow = format!(
        "duration = \"3s\"\nmin_requests = 1\nmax_mismatch_rate = 1.0\n\
         max_latency_ratio_p99 = 1000.0\n{shadow}"
    );
    let flags = candidate_flags.replace("{dir}", &shop.path(""));
    let router = router(&shop, &v1, &[("v2", flags.as_str())], &shadow).await;
    let load = Load::start(&router.data, "/api/items", 2, PACE);
    answers_from(&load, "v1", 20).await;

    let deploy = {
        let (bin, admin) = (router.bin.clone(), router.admin.clone());
        tokio::spawn(async move {
            tokio::process::Command::new(bin)
                .args(["deploy", "v2", "--admin"])
                .arg(format!("http://{admin}"))
                .env("TURNOUT_ADMIN_TOKEN", turnout_testkit::TOKEN)
                .output()
                .await
                .expect("run turnout deploy")
        })
    };
    wait_shadow_running(&router).await;
    post_items(&router.data, POSTS).await;
    // The POSTs were all answered while mirroring was on.
    assert!(
        shadow_running(&router).await,
        "the shadow stage ended before the POSTs were sent: make it longer"
    );

    let out = deploy.await.unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let samples = load.stop().await;
    assert_no_failure(&samples);
    let report = shadow_report(&router).await;
    // v2 is live in green now; its counts of mirrored copies are final.
    let (seen, _) = candidate_requests(&green_upstreams(&router).await).await;
    stop(router).await;
    (seen, report)
}

/// By default only GET, HEAD and OPTIONS are mirrored: the candidate gets copies of the
/// GET load, marked, and not one POST.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_are_not_mirrored_by_default() {
    let (seen, report) = mirror_posts("", "").await;
    assert!(
        seen["GET"].as_u64().is_some_and(|n| n > 0),
        "no mirrored GET reached the candidate: {seen}"
    );
    assert_eq!(seen.get("POST"), None, "{seen}");
    assert!(
        report["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| !e["endpoint"].as_str().unwrap_or("").starts_with("POST")),
        "{report:#}"
    );
}

/// With `methods = ["GET", "POST"]` and `mirror_unsafe = true` (a candidate with its
/// own database), every POST is mirrored, marked `X-Turnout-Shadow: 1`, and compared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn posts_are_mirrored_with_the_marker_when_enabled() {
    let (seen, report) = mirror_posts(
        "methods = [\"GET\", \"POST\"]\nmirror_unsafe = true\n",
        "--db {dir}/candidate.db",
    )
    .await;
    let posts = json!(POSTS);
    // `/debug/requests` counts as `shadow` only requests with `X-Turnout-Shadow: 1`.
    assert_eq!(seen["POST"], posts, "{seen}");
    assert!(seen["GET"].as_u64().is_some_and(|n| n > 0), "{seen}");
    let post = endpoint(&report, "POST /api/items");
    assert_eq!(post["compared"], posts, "{post:#}");
    assert_eq!(u(&post["failed"]), 0, "{post:#}");
}

/// A candidate slower than the copies can be sent with `queue = 1`: copies are dropped
/// and counted, users' requests are never held up by it nor fail, and the latency gate
/// fails the candidate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_shadow_queue_drops_copies_and_never_users_requests() {
    let shop = Shop::new(bin());
    let v1 = shop.v1(&[]).await;
    let shadow = "duration = \"2s\"\nqueue = 1\ntimeout = \"5s\"\nnoise_sample = 0.0\n\
                  ignore_json = [\"/version\"]\nmin_requests = 5\n";
    let router = router(&shop, &v1, &[("v2", "--extra-latency 600ms")], shadow).await;
    let load = Load::start(&router.data, "/api/items", 4, Duration::from_millis(5));
    answers_from(&load, "v1", 50).await;

    let started = Instant::now();
    let (code, out, err) = router.cli(&["deploy", "v2"]).await;
    let ended = Instant::now();
    assert_eq!(code, 4, "{out}{err}");
    let samples = load.stop().await;

    assert_no_failure(&samples);
    assert!(samples.iter().all(|s| s.from("v1")), "{}", tally(&samples));
    let warm: Vec<&Sample> = samples.iter().filter(|s| s.sent < started).collect();
    let during: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.sent > started && s.received < ended)
        .collect();
    eprintln!("live latency before the deployment: {}", latency(&warm));
    eprintln!(
        "live latency during the deployment (shadow queue full): {}",
        latency(&during)
    );

    let d = last_deployment(&router).await;
    assert_eq!(d["verdict"], "failed", "{d:#}");
    let reason = d["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("shadow gate:") && reason.contains("above max_latency_ratio_p99"),
        "{reason}"
    );

    let r = shadow_report(&router).await;
    eprintln!(
        "full queue: {} mirrored, {} compared, {} dropped; latency_ms {}",
        r["requests"], r["compared"], r["dropped"], r["latency_ms"]
    );
    assert!(u(&r["dropped"]) > 0, "{r:#}");
    assert!(u(&r["compared"]) >= 5, "{r:#}");
    // What was dropped was never sent; every copy that was sent was compared.
    assert_eq!(r["requests"], r["compared"], "{r:#}");
    // Slow, but the same answers: the copies that were sent were compared in full.
    assert_eq!(u(&r["mismatched"]), 0, "{r:#}");
    assert_eq!(u(&r["failed"]), 0, "{r:#}");
    stop(router).await;
}
