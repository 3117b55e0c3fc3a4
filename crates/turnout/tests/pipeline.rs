//! The release pipeline as users meet it: a real router starts the demo service through
//! `[provision]`, a few keep-alive clients send steady load through the data plane during
//! the whole deployment, and the assertions are about what those users saw and what the
//! CLI told the operator (exit codes, `history --json`, `status`).
//!
//! The demo service's knobs make the bad versions: the `[provision]` command gives versions
//! ending in `-bad` `--fail-rate 0.3` and versions ending in `-slow` `--extra-latency 200ms`.
//! Unless a test says otherwise, v1 runs as the live slot's static upstream, started by the
//! test, and the deployments go to green.

use std::path::Path;
use std::time::{Duration, Instant};

use http::Method;
use serde_json::{json, Value};
use turnout_testkit::{
    describe_failures, eventually, toml_str, DemoApp, HttpClient, Load, Router, RouterOptions,
    Sample, Shop,
};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_turnout"))
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Between two requests of one load client.
const PACE: Duration = Duration::from_millis(5);

/// `[bake]`: short, evaluated every 500 ms over a 2 s window, with `extra` rules.
fn bake(duration: &str, extra: &str) -> String {
    format!(
        "[bake]\nduration = \"{duration}\"\ninterval = \"500ms\"\nwindow = \"2s\"\n\
         max_error_rate = 0.05\nmin_requests = 10\n{extra}\n"
    )
}

/// `[verify]` checks on the candidate (and, after `pre_deploy`, on the live version).
const VERIFY_API: &str = "[verify]\nchecks = [{ path = \"/\", status = 200, body_contains = \"turnout-demo-app\" }, { path = \"/api/items\", status = 200, body_contains = \"items\" }]\n";

/// The `[provision]` arms of these tests: `*-bad` fails 30% of API requests, `*-slow`
/// answers each 200 ms later.
const VERSIONS: &[(&str, &str)] = &[
    ("*-bad", "--fail-rate 0.3"),
    ("*-slow", "--extra-latency 200ms"),
];

/// `[provision]` with two instances from `shop`, a short `[decommission]`, and `extra`.
fn shop_config(shop: &Shop, extra: &str) -> String {
    format!(
        "[provision]\ncommand = {}\ninstances = 2\nhealth_timeout = \"20s\"\nstop_timeout = \"5s\"\n\n\
         [decommission]\ndelay = \"1s\"\n\n{extra}\n",
        toml_str(&shop.provision_command(VERSIONS))
    )
}

/// A router provisioning from `shop`, with `v1` (if any) as blue's static upstream.
async fn router(shop: &Shop, v1: Option<&DemoApp>, extra: &str) -> Router {
    Router::start(
        bin(),
        &RouterOptions {
            blue: v1.map(|a| vec![a.addr.clone()]).unwrap_or_default(),
            blue_version: v1.map(|_| "v1".to_owned()),
            extra: shop_config(shop, extra),
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

async fn wait_stage(router: &Router, name: &str) {
    eventually(
        &format!("the deployment to reach stage {name}"),
        Duration::from_secs(30),
        || async { (status(router).await["deployment"]["stage"] == name).then_some(()) },
    )
    .await;
}

/// Waits until the load has `more` answers beyond what it has now.
async fn more_answers(load: &Load, more: usize) {
    let target = load.count() + more;
    eventually(
        &format!("{more} more answers"),
        Duration::from_secs(20),
        || async { (load.count() >= target).then_some(()) },
    )
    .await;
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

/// Stops the router and the service the way an operator does (`turnout stop`), so that
/// no instance is left.
async fn stop(mut router: Router) {
    router.stop_service().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_good_version_is_promoted_under_load_without_one_failed_request() {
    let shop = Shop::new(bin());
    let router = router(&shop, None, &format!("{}{VERIFY_API}", bake("2s", ""))).await;

    // The first release: nothing is live yet, v1 becomes live without a standby.
    let (code, out, err) = router.cli(&["deploy", "v1"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let s = status(&router).await;
    assert_eq!(s["live"], "blue", "{s:#}");
    assert_eq!(s["slots"]["blue"]["version"], "v1", "{s:#}");
    assert_eq!(s["slots"]["blue"]["upstreams"].as_array().unwrap().len(), 2);
    assert_eq!(shop.instances("v1").len(), 2, "two instances of v1 run");

    let load = Load::start(&router.data, "/api/items", 4, PACE);
    answers_from(&load, "v1", 50).await;

    let (code, out, err) = router.cli(&["deploy", "v2"]).await;
    let verdict_at = Instant::now();
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("verdict: PROMOTED v2 in green"), "{out}");

    // After [decommission] delay, v1 is retired while the load goes on.
    eventually("v1 to be retired", Duration::from_secs(20), || async {
        let s = status(&router).await;
        let empty = s["slots"]["blue"]["upstreams"]
            .as_array()
            .is_some_and(Vec::is_empty);
        (empty && shop.instances("v1").is_empty()).then_some(())
    })
    .await;
    more_answers(&load, 100).await;
    let samples = load.stop().await;

    assert_no_failure(&samples);
    assert!(samples.len() >= 300, "too little load: {}", tally(&samples));
    assert!(
        samples.iter().all(|s| s.from("v1") || s.from("v2")),
        "{}",
        tally(&samples)
    );
    let after: Vec<&Sample> = samples.iter().filter(|s| s.sent > verdict_at).collect();
    assert!(
        after.len() >= 100 && after.iter().all(|s| s.from("v2")),
        "after the verdict: {}",
        tally(&after.into_iter().cloned().collect::<Vec<_>>())
    );

    let d = last_deployment(&router).await;
    assert_eq!(
        (&d["version"], &d["slot"], &d["verdict"]),
        (&json!("v2"), &json!("green"), &json!("promoted")),
        "{d:#}"
    );
    for name in [
        "provision",
        "health",
        "verify",
        "switch",
        "bake",
        "decommission",
    ] {
        assert_eq!(stage(&d, name)["outcome"], "passed", "{name}: {d:#}");
    }
    assert_eq!(shop.instances("v2").len(), 2);
    stop(router).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_failing_30_percent_is_rolled_back_within_2s_of_its_first_error() {
    let shop = Shop::new(bin());
    let v1 = shop.v1(&[]).await;
    // [verify] only asks for `/`, which the bad version answers well: the bake finds it.
    let verify = "[verify]\nchecks = [{ path = \"/\", status = 200 }]\n";
    let router = router(&shop, Some(&v1), &format!("{}{verify}", bake("4s", ""))).await;
    let load = Load::start(&router.data, "/api/items", 4, PACE);
    answers_from(&load, "v1", 50).await;

    let (code, out, err) = router.cli(&["deploy", "v2-bad"]).await;
    let verdict_at = Instant::now();
    assert_eq!(code, 3, "{out}{err}");
    assert!(out.contains("verdict: ROLLED BACK v2-bad"), "{out}");
    more_answers(&load, 100).await;
    let samples = load.stop().await;

    let d = last_deployment(&router).await;
    assert_eq!(d["verdict"], "rolled_back", "{d:#}");
    let reason = d["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("error rate") && reason.contains("max_error_rate"),
        "{reason}"
    );
    assert_eq!(stage(&d, "bake")["outcome"], "failed", "{d:#}");

    // Users met the bad version, and for at most 2 s after its first error.
    let first_error = samples
        .iter()
        .filter(|s| s.status >= 500)
        .map(|s| s.received)
        .min()
        .unwrap_or_else(|| panic!("no user saw an error: {}", tally(&samples)));
    let last_bad = samples
        .iter()
        .filter(|s| s.status >= 500 || s.from("v2-bad"))
        .map(|s| s.received)
        .max()
        .unwrap();
    let exposed = last_bad.duration_since(first_error);
    assert!(
        exposed <= Duration::from_secs(2),
        "users saw v2-bad for {exposed:?} after its first error"
    );
    // Every failure was the bad version's own answer, none a lost request.
    assert!(
        samples
            .iter()
            .filter(|s| s.failed())
            .all(|s| s.status == 500),
        "{}",
        describe_failures(&samples)
    );
    // Traffic is back on v1.
    let after: Vec<Sample> = samples
        .iter()
        .filter(|s| s.sent > verdict_at)
        .cloned()
        .collect();
    assert!(
        after.len() >= 100 && after.iter().all(|s| s.from("v1") && s.status == 200),
        "after the verdict: {}",
        tally(&after)
    );
    let s = status(&router).await;
    assert_eq!(
        (&s["live"], &s["deployment"]),
        (&json!("blue"), &Value::Null)
    );
    eventually(
        "the instances of v2-bad to be stopped",
        Duration::from_secs(10),
        || async { shop.instances("v2-bad").is_empty().then_some(()) },
    )
    .await;
    stop(router).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_version_200ms_slower_is_rolled_back_by_the_p99_rule() {
    let shop = Shop::new(bin());
    let v1 = shop.v1(&[]).await;
    let router = router(&shop, Some(&v1), &bake("4s", "max_p99 = \"150ms\"")).await;
    let load = Load::start(&router.data, "/api/items", 8, PACE);
    answers_from(&load, "v1", 50).await;

    let (code, out, err) = router.cli(&["deploy", "v2-slow"]).await;
    let verdict_at = Instant::now();
    assert_eq!(code, 3, "{out}{err}");
    more_answers(&load, 50).await;
    let samples = load.stop().await;

    let d = last_deployment(&router).await;
    assert_eq!(d["verdict"], "rolled_back", "{d:#}");
    let reason = d["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("p99") && reason.contains("max_p99 150 ms"),
        "{reason}"
    );

    // Slow, not failing: no user lost a request.
    assert_no_failure(&samples);
    assert!(
        samples.iter().any(|s| s.from("v2-slow")),
        "{}",
        tally(&samples)
    );
    assert!(
        samples
            .iter()
            .filter(|s| s.sent > verdict_at)
            .all(|s| s.from("v1")),
        "{}",
        tally(&samples)
    );
    stop(router).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_gate_keeps_users_on_the_old_version_until_promote() {
    let shop = Shop::new(bin());
    let v1 = shop.v1(&[]).await;
    let extra = format!("{}[promote]\nmode = \"manual\"\n", bake("2s", ""));
    let router = router(&shop, Some(&v1), &extra).await;
    let load = Load::start(&router.data, "/api/items", 4, PACE);
    answers_from(&load, "v1", 50).await;

    let (deployed, promoted_at) = tokio::join!(router.cli(&["deploy", "v2"]), async {
        wait_stage(&router, "gate").await;
        let s = status(&router).await;
        assert_eq!(s["deployment"]["version"], "v2", "{s:#}");
        assert_eq!(s["weights"], json!({"blue": 100, "green": 0}), "{s:#}");
        assert_eq!(s["slots"]["green"]["role"], "candidate", "{s:#}");
        assert_eq!(shop.instances("v2").len(), 2, "the candidate runs");
        // The gate holds while users keep coming.
        more_answers(&load, 200).await;
        assert_eq!(load.count_from("v2"), 0, "a user reached the candidate");
        let promoted_at = Instant::now();
        let (code, out, err) = router.cli(&["promote"]).await;
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("promote sent"), "{out}");
        promoted_at
    });
    let (code, out, err) = deployed;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("gate"), "{out}");
    answers_from(&load, "v2", 50).await;
    let samples = load.stop().await;
    assert_no_failure(&samples);
    assert!(
        samples
            .iter()
            .filter(|s| s.received < promoted_at)
            .all(|s| s.from("v1")),
        "{}",
        tally(&samples)
    );
    let d = last_deployment(&router).await;
    assert_eq!(d["verdict"], "promoted", "{d:#}");
    assert_eq!(stage(&d, "gate")["outcome"], "passed", "{d:#}");
    stop(router).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn abort_at_the_gate_ends_the_deployment_before_any_user_saw_it() {
    let shop = Shop::new(bin());
    let v1 = shop.v1(&[]).await;
    let router = router(&shop, Some(&v1), &bake("2s", "")).await;
    let load = Load::start(&router.data, "/api/items", 4, PACE);
    answers_from(&load, "v1", 50).await;

    let (deployed, ()) = tokio::join!(router.cli(&["deploy", "v2", "--manual"]), async {
        wait_stage(&router, "gate").await;
        assert_eq!(shop.instances("v2").len(), 2, "the candidate runs");
        more_answers(&load, 100).await;
        let (code, out, err) = router.cli(&["abort"]).await;
        assert_eq!(code, 0, "{out}{err}");
        assert!(out.contains("verdict: ABORTED v2"), "{out}");
    });
    let (code, out, err) = deployed;
    assert_eq!(code, 4, "{out}{err}");

    let d = last_deployment(&router).await;
    assert_eq!(d["verdict"], "aborted", "{d:#}");
    let reason = d["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("aborted by the operator"), "{reason}");
    assert!(!stage_names(&d).contains(&"switch".to_owned()), "{d:#}");
    // Its instances are gone and its slot is empty again.
    eventually(
        "the instances of v2 to be stopped",
        Duration::from_secs(10),
        || async { shop.instances("v2").is_empty().then_some(()) },
    )
    .await;
    let s = status(&router).await;
    assert_eq!(s["slots"]["green"]["role"], "idle", "{s:#}");
    assert_eq!(s["deployment"], Value::Null, "{s:#}");

    more_answers(&load, 50).await;
    let samples = load.stop().await;
    assert_no_failure(&samples);
    assert!(samples.iter().all(|s| s.from("v1")), "{}", tally(&samples));
    stop(router).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_pre_switch_hook_fails_the_deployment_with_users_untouched() {
    let shop = Shop::new(bin());
    let v1 = shop.v1(&[]).await;
    let hooks = "[hooks]\npre_switch = \"echo 'load balancer not ready'; exit 1\"\n";
    let router = router(&shop, Some(&v1), &format!("{}{hooks}", bake("2s", ""))).await;
    let load = Load::start(&router.data, "/api/items", 4, PACE);
    answers_from(&load, "v1", 50).await;

    let (code, out, err) = router.cli(&["deploy", "v2"]).await;
    assert_eq!(code, 4, "{out}{err}");
    let d = last_deployment(&router).await;
    assert_eq!(d["verdict"], "failed", "{d:#}");
    let reason = d["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("hook pre_switch failed") && reason.contains("load balancer not ready"),
        "{reason}"
    );
    eventually(
        "the instances of v2 to be stopped",
        Duration::from_secs(10),
        || async { shop.instances("v2").is_empty().then_some(()) },
    )
    .await;
    more_answers(&load, 50).await;
    let samples = load.stop().await;
    assert_no_failure(&samples);
    assert!(samples.iter().all(|s| s.from("v1")), "{}", tally(&samples));
    assert_eq!(
        status(&router).await["weights"],
        json!({"blue": 100, "green": 0})
    );
    stop(router).await;
}

/// One look at the status: when the request was sent and answered, green's weight, the
/// deployment's stage.
struct Look {
    sent: Instant,
    received: Instant,
    green: u64,
}

/// Polls the status (every 20 ms) until the deployment has left its switch stage.
async fn watch_weights(router: &Router) -> Vec<Look> {
    let mut looks = Vec::new();
    // The deploy command may not have started the deployment yet when watching begins.
    let mut started = false;
    let end = Instant::now() + Duration::from_secs(60);
    while Instant::now() < end {
        let sent = Instant::now();
        let s = status(router).await;
        let received = Instant::now();
        looks.push(Look {
            sent,
            received,
            green: s["weights"]["green"].as_u64().unwrap_or(0),
        });
        let stage = s["deployment"]["stage"].as_str().unwrap_or("none");
        started |= stage != "none";
        if started && matches!(stage, "bake" | "rollback" | "decommission" | "none") {
            return looks;
        }
        tokio::time::sleep(ms(20)).await;
    }
    panic!("the canary did not leave its switch stage within 60s");
}

/// Green's weights in the order they were seen, each once.
fn steps_seen(looks: &[Look]) -> Vec<u64> {
    let mut seen: Vec<u64> = Vec::new();
    for l in looks {
        if seen.last() != Some(&l.green) {
            seen.push(l.green);
        }
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_moves_through_its_steps_with_the_split_it_announces() {
    let shop = Shop::new(bin());
    let v1 = shop.v1(&[]).await;
    let extra = format!(
        "{}[promote]\nmode = \"canary\"\nsteps = [5, 25, 50, 100]\nstep_duration = \"2s\"\n",
        bake("2s", "")
    );
    let router = router(&shop, Some(&v1), &extra).await;
    let load = Load::start(&router.data, "/api/items", 4, ms(4));
    answers_from(&load, "v1", 50).await;

    let (deployed, looks) = tokio::join!(router.cli(&["deploy", "v2"]), watch_weights(&router));
    let (code, out, err) = deployed;
    assert_eq!(code, 0, "{out}{err}");
    let samples = load.stop().await;
    assert_no_failure(&samples);
    assert_eq!(steps_seen(&looks), [0, 5, 25, 50, 100]);

    // While the status said W%, W% of the answers came from v2. The requests counted are
    // those sent after a look that saw W and answered before a later look that still saw
    // it: the weights only go up, so the router dealt all of them at W%.
    for step in [5u64, 25, 50] {
        let from = looks.iter().find(|l| l.green == step).unwrap().received;
        let to = looks.iter().rev().find(|l| l.green == step).unwrap().sent;
        let during: Vec<&Sample> = samples
            .iter()
            .filter(|s| s.sent >= from && s.received <= to)
            .collect();
        let v2 = during.iter().filter(|s| s.from("v2")).count();
        let share = 100.0 * v2 as f64 / during.len().max(1) as f64;
        assert!(
            during.len() >= 400,
            "step {step}%: only {} requests to judge the split",
            during.len()
        );
        assert!(
            (share - step as f64).abs() <= 3.0,
            "step {step}%: {v2} of {} answers ({share:.1}%) came from v2",
            during.len()
        );
    }
    let d = last_deployment(&router).await;
    assert_eq!(d["verdict"], "promoted", "{d:#}");
    stop(router).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_canary_is_rolled_back_at_its_first_step() {
    let shop = Shop::new(bin());
    let v1 = shop.v1(&[]).await;
    let extra = format!(
        "{}[promote]\nmode = \"canary\"\nsteps = [5, 25, 50, 100]\nstep_duration = \"3s\"\n",
        bake("2s", "")
    );
    let router = router(&shop, Some(&v1), &extra).await;
    let load = Load::start(&router.data, "/api/items", 4, ms(4));
    answers_from(&load, "v1", 50).await;

    let (deployed, looks) = tokio::join!(router.cli(&["deploy", "v2-bad"]), watch_weights(&router));
    let verdict_at = Instant::now();
    let (code, out, err) = deployed;
    assert_eq!(code, 3, "{out}{err}");
    more_answers(&load, 100).await;
    let samples = load.stop().await;

    let d = last_deployment(&router).await;
    assert_eq!(d["verdict"], "rolled_back", "{d:#}");
    let reason = d["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("canary step 5%") && reason.contains("error rate"),
        "{reason}"
    );
    let max = looks.iter().map(|l| l.green).max().unwrap_or(0);
    assert_eq!(max, 5, "green's weight went up to {max}%");
    assert!(looks.iter().any(|l| l.green == 5));
    // A few users met it, and only before the verdict.
    assert!(
        samples.iter().any(|s| s.status == 500),
        "{}",
        tally(&samples)
    );
    assert!(
        samples
            .iter()
            .filter(|s| s.sent > verdict_at)
            .all(|s| s.from("v1") && s.status == 200),
        "{}",
        tally(&samples)
    );
    assert_eq!(
        status(&router).await["weights"],
        json!({"blue": 100, "green": 0})
    );
    stop(router).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_restarted_during_the_bake_resumes_it_with_the_same_instances() {
    let shop = Shop::new(bin());
    let v1 = shop.v1(&[]).await;
    let mut router = router(&shop, Some(&v1), &bake("8s", "")).await;

    let (code, out, err) = router.cli(&["deploy", "v2", "--detach"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let id = out
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("no deployment id in {out}"))
        .to_owned();
    let load = Load::start(&router.data, "/api/items", 2, PACE);
    wait_stage(&router, "bake").await;
    answers_from(&load, "v2", 20).await;
    let samples = load.stop().await;
    assert_no_failure(&samples);
    let before = status(&router).await["slots"]["green"]["upstreams"].clone();
    assert_eq!(shop.instances("v2").len(), 2, "the candidate runs");

    let mut v2_pids = shop.instances("v2");
    v2_pids.sort_unstable();
    assert_eq!(
        router.terminate().await.unwrap(),
        Some(0),
        "{}",
        router.stderr()
    );
    // SIGTERM stops the router, not the service: v2 keeps running, untouched.
    let mut after = shop.instances("v2");
    after.sort_unstable();
    assert_eq!(after, v2_pids, "v2's instances after SIGTERM");
    router.restart().await.unwrap();
    let s = status(&router).await;
    assert_eq!(s["live"], "green", "{s:#}");
    assert_eq!(
        (&s["deployment"]["id"], &s["deployment"]["stage"]),
        (&json!(id), &json!("bake")),
        "{s:#}"
    );
    let addrs = |v: &Value| -> Vec<String> {
        v.as_array()
            .map(|a| a.iter().map(|u| u["addr"].to_string()).collect())
            .unwrap_or_default()
    };
    assert_eq!(addrs(&s["slots"]["green"]["upstreams"]), addrs(&before));
    let mut after = shop.instances("v2");
    after.sort_unstable();
    assert_eq!(
        after, v2_pids,
        "the restarted router took v2's instances over"
    );

    let load = Load::start(&router.data, "/api/items", 2, PACE);
    let path = format!("/api/v1/deployments/{id}");
    let d = eventually("the bake to end", Duration::from_secs(30), || async {
        let (code, d) = router.api(Method::GET, &path, None).await;
        assert_eq!(code, 200, "{d}");
        (d["verdict"] != "in_progress").then_some(d)
    })
    .await;
    assert_eq!(d["verdict"], "promoted", "{d:#}");
    answers_from(&load, "v2", 50).await;
    let samples = load.stop().await;
    assert!(samples.iter().all(|s| s.from("v2")), "{}", tally(&samples));
    assert_no_failure(&samples);
    stop(router).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expand_migration_the_live_version_survives_lets_the_release_proceed() {
    let shop = Shop::new(bin());
    let v1 = shop.v1(&[]).await;
    let hooks = format!(
        "[hooks]\npre_deploy = {}\n",
        toml_str(&shop.migrate_command("expand"))
    );
    let router = router(
        &shop,
        Some(&v1),
        &format!("{}{VERIFY_API}{hooks}", bake("2s", "")),
    )
    .await;
    let load = Load::start(&router.data, "/api/items", 4, PACE);
    answers_from(&load, "v1", 50).await;

    let (code, out, err) = router.cli(&["deploy", "v2"]).await;
    assert_eq!(code, 0, "{out}{err}");
    answers_from(&load, "v2", 50).await;
    let samples = load.stop().await;
    assert_no_failure(&samples);

    let d = last_deployment(&router).await;
    assert_eq!(d["verdict"], "promoted", "{d:#}");
    let pre = stage(&d, "pre_deploy");
    assert_eq!(pre["outcome"], "passed", "{d:#}");
    assert!(
        pre["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("the live version v1 on blue passes its verify checks after pre_deploy"),
        "{d:#}"
    );
    // The hook really changed the schema.
    let log = router
        .dir()
        .join("state/logs")
        .join(format!("{}-hook-pre_deploy.log", d["id"].as_str().unwrap()));
    let log = std::fs::read_to_string(&log).unwrap_or_else(|e| panic!("{}: {e}", log.display()));
    assert!(
        log.contains("added the nullable column items.description"),
        "{log}"
    );
    stop(router).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_migration_that_breaks_the_live_version_fails_the_release_before_any_candidate_runs() {
    let shop = Shop::new(bin());
    let v1 = shop.v1(&[]).await;
    let hooks = format!(
        "[hooks]\npre_deploy = {}\n",
        toml_str(&shop.migrate_command("break"))
    );
    let router = router(
        &shop,
        Some(&v1),
        &format!("{}{VERIFY_API}{hooks}", bake("2s", "")),
    )
    .await;
    // `/` does not read the database: it tells who answers, whatever the schema.
    let load = Load::start(&router.data, "/", 4, PACE);
    answers_from(&load, "v1", 50).await;

    let (code, out, err) = router.cli(&["deploy", "v2"]).await;
    assert_eq!(code, 4, "{out}{err}");
    let d = last_deployment(&router).await;
    assert_eq!(d["verdict"], "failed", "{d:#}");
    let reason = d["reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains(
            "after the pre_deploy hook the live version v1 on blue fails its verify checks"
        ),
        "{reason}"
    );
    // Nothing of v2 ever ran: the pipeline stopped before provisioning.
    assert_eq!(stage_names(&d), ["pre_deploy"], "{d:#}");
    assert!(shop.instances("v2").is_empty());
    more_answers(&load, 50).await;
    let samples = load.stop().await;
    assert_no_failure(&samples);
    assert!(samples.iter().all(|s| s.from("v1")), "{}", tally(&samples));
    // The migration did break v1, as the reason says.
    let r = HttpClient::http1(&router.data)
        .await
        .unwrap()
        .get("/api/items")
        .await
        .unwrap();
    assert_eq!(r.status, 500, "{}", r.text());
    stop(router).await;
}
