//! Deployments whose upstreams turnout does not start: named on the command line
//! (`deploy --upstream`) or brought up by external infrastructure (`[provision] up` and
//! `down`), followed through the CLI as users run it.

use std::path::Path;
use std::time::Duration;

use turnout_testkit::{eventually, Backend, HttpClient, Router, RouterOptions};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_turnout"))
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

const FAST: &str =
    "[bake]\nduration = \"1s\"\ninterval = \"200ms\"\n\n[decommission]\ndelay = \"500ms\"\n";

async fn history(router: &Router) -> serde_json::Value {
    let (code, out, err) = router.cli(&["history", "--json"]).await;
    assert_eq!(code, 0, "{err}");
    serde_json::from_str(&out).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_with_named_upstreams_is_promoted_and_retires_the_old_slot() {
    let v1 = Backend::start("v1").await;
    let v2 = Backend::start("v2").await;
    let router = Router::start(
        bin(),
        &RouterOptions {
            blue: vec![v1.upstream()],
            extra: FAST.into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(answer(&router).await, "v1");

    let (code, out, err) = router
        .cli(&["deploy", "v2", "--upstream", &v2.upstream()])
        .await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("v2 into green"), "{out}");
    assert!(out.contains("verdict: PROMOTED v2 in green"), "{out}");
    assert_eq!(answer(&router).await, "v2");

    // After the decommission delay the old slot is emptied (its upstream is not turnout's
    // to stop: it keeps running).
    eventually("blue retired", Duration::from_secs(10), || async {
        let s = router.status().await;
        (s["slots"]["blue"]["role"] == "idle" && s["deployment"].is_null()).then_some(())
    })
    .await;
    assert_eq!(answer(&router).await, "v2");

    let h = history(&router).await;
    let d = &h[0];
    assert_eq!(d["version"], "v2");
    assert_eq!(d["slot"], "green");
    assert_eq!(d["verdict"], "promoted");
    let stages: Vec<(&str, &str)> = d["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["stage"].as_str().unwrap(), s["outcome"].as_str().unwrap()))
        .collect();
    assert_eq!(
        stages,
        [
            ("provision", "passed"),
            ("health", "passed"),
            ("verify", "skipped"),
            ("shadow", "skipped"),
            ("switch", "passed"),
            ("bake", "passed"),
            ("decommission", "passed"),
        ]
    );
    for s in d["stages"].as_array().unwrap() {
        assert!(
            s["started_at"].is_string() && s["ended_at"].is_string(),
            "{s}"
        );
    }

    // Refusals a user meets: no upstream and no [provision]; a bad address.
    let (code, _, err) = router.cli(&["deploy", "v3"]).await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("--upstream"), "{err}");
    let (code, _, err) = router
        .cli(&["deploy", "v3", "--upstream", "http://127.0.0.1:1"])
        .await;
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("without a scheme"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_infrastructure_brings_slots_up_and_takes_them_down() {
    let v1 = Backend::start("v1").await;
    let v2 = Backend::start("v2").await;
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("infra.log");
    let up = dir.path().join("up.sh");
    std::fs::write(
        &up,
        format!(
            "#!/bin/sh\n\
             echo \"up $TURNOUT_SLOT $TURNOUT_VERSION $TURNOUT_DEPLOYMENT\" >> {log}\n\
             echo 'creating the environment...'\n\
             case $TURNOUT_VERSION in\n\
               v1) echo '{{\"upstreams\": [\"{a}\"]}}' ;;\n\
               v2) echo '{{\"upstreams\": [\"{b}\"]}}' ;;\n\
               garbled) echo 'upstreams: somewhere' ;;\n\
               *) echo 'quota exceeded' >&2; exit 7 ;;\n\
             esac\n",
            log = log.display(),
            a = v1.upstream(),
            b = v2.upstream(),
        ),
    )
    .unwrap();
    let router = Router::start(
        bin(),
        &RouterOptions {
            extra: format!(
                "[provision]\nup = \"sh {up}\"\ndown = \"echo down $TURNOUT_SLOT $TURNOUT_VERSION $TURNOUT_DEPLOYMENT >> {log}\"\n\n{FAST}",
                up = up.display(),
                log = log.display()
            ),
            ..Default::default()
        },
    )
    .await
    .unwrap();

    // The first deployment goes to blue and becomes live without a standby.
    let (code, out, err) = router.cli(&["deploy", "v1"]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("v1 into blue"), "{out}");
    assert_eq!(answer(&router).await, "v1");
    let (code, out, err) = router.cli(&["deploy", "v2"]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(answer(&router).await, "v2");

    let h = history(&router).await;
    let (id1, id2) = (
        h[1]["id"].as_str().unwrap().to_owned(),
        h[0]["id"].as_str().unwrap().to_owned(),
    );
    // v1's slot is taken down with the variables of the deployment that brought it up.
    let want = [
        format!("up blue v1 {id1}"),
        format!("up green v2 {id2}"),
        format!("down blue v1 {id1}"),
    ];
    let lines = eventually("down ran for blue", Duration::from_secs(10), || async {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_owned).collect();
        (lines.len() >= 3).then_some(lines)
    })
    .await;
    assert_eq!(lines, want);

    // A failing `up` and one that prints no upstreams fail the deployment before any
    // user sees it, quoting what the command said.
    let (code, out, _) = router.cli(&["deploy", "v3"]).await;
    assert_eq!(code, 4, "{out}");
    assert!(
        out.contains("FAILED v3") && out.contains("quota exceeded"),
        "{out}"
    );
    let (code, out, _) = router.cli(&["deploy", "garbled"]).await;
    assert_eq!(code, 4, "{out}");
    assert!(out.contains("upstreams: somewhere"), "{out}");
    assert_eq!(answer(&router).await, "v2");
    let s = router.status().await;
    assert_eq!(s["live"], "green");
    assert_eq!(s["slots"]["blue"]["role"], "idle");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_before_the_deployment_touches_its_slot_keeps_the_standby() {
    let v0 = Backend::start("v0").await;
    let v1 = Backend::start("v1").await;
    let v2 = Backend::start("v2").await;
    let router = Router::start(
        bin(),
        &RouterOptions {
            blue: vec![v1.upstream()],
            green: vec![v0.upstream()],
            extra: format!("[hooks]\npre_deploy = \"echo expand failed; exit 3\"\n\n{FAST}"),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let (code, out, _) = router
        .cli(&["deploy", "v2", "--upstream", &v2.upstream()])
        .await;
    assert_eq!(code, 4, "{out}");
    assert!(
        out.contains("hook pre_deploy") && out.contains("expand failed"),
        "{out}"
    );
    // green still holds the previous version, ready for a rollback.
    let s = router.status().await;
    assert_eq!(s["slots"]["green"]["role"], "standby", "{s}");
    assert_eq!(s["slots"]["green"]["upstreams"][0]["addr"], v0.upstream());
    let (code, _, err) = router.cli(&["rollback"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(answer(&router).await, "v0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_during_the_bake_ends_the_deployment_and_switch_is_refused_meanwhile() {
    let v1 = Backend::start("v1").await;
    let v2 = Backend::start("v2").await;
    let router = Router::start(
        bin(),
        &RouterOptions {
            blue: vec![v1.upstream()],
            extra: "[bake]\nduration = \"60s\"\ninterval = \"200ms\"\n".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let (code, out, err) = router
        .cli(&["deploy", "v2", "--upstream", &v2.upstream(), "--detach"])
        .await;
    assert_eq!(code, 0, "{out}\n{err}");
    eventually("the bake", Duration::from_secs(10), || async {
        (router.status().await["deployment"]["stage"] == "bake").then_some(())
    })
    .await;
    assert_eq!(answer(&router).await, "v2");
    // A raw switch would pull traffic from under the bake: refused, with what to do.
    let (code, _, err) = router.cli(&["switch", "--to", "blue"]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("turnout rollback"), "{err}");
    let (code, out, err) = router.cli(&["rollback"]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("blue is live"), "{out}");
    assert_eq!(answer(&router).await, "v1");
    let h = history(&router).await;
    assert_eq!(h[0]["verdict"], "rolled_back", "{h}");
    assert!(
        h[0]["reason"]
            .as_str()
            .is_some_and(|r| r.contains("rolled back by the operator during bake")),
        "{h}"
    );
    assert!(router.status().await["deployment"].is_null());
    // With nothing left to roll back to, a second rollback says so.
    let (code, _, err) = router.cli(&["rollback"]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("no standby"), "{err}");
}

/// `[bake] retry_on_standby`: a version whose every answer is a 500 is rolled back by its
/// bake, and no user saw one of its errors — each failed GET went once more to the
/// standby, from the switch to the rollback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_retry_on_standby_users_never_see_the_bad_versions_errors() {
    let v1 = Backend::start("v1").await;
    let v2 = Backend::start("v2").await;
    v2.set_failing(true);
    let router = Router::start(
        bin(),
        &RouterOptions {
            blue: vec![v1.upstream()],
            extra: "[bake]\nduration = \"30s\"\ninterval = \"200ms\"\nwindow = \"1s\"\nmax_error_rate = 0.05\nmin_requests = 5\nretry_on_standby = true\n".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let load = turnout_testkit::Load::start(&router.data, "/", 4, Duration::from_millis(10));
    let (code, out, err) = router
        .cli(&["deploy", "v2", "--upstream", &v2.upstream()])
        .await;
    let samples = load.stop().await;
    assert_eq!(code, 3, "rolled back is exit 3\n{out}\n{err}");
    assert!(out.contains("error rate"), "{out}");
    assert!(v2.requests() > 0, "v2 never got a request");
    let failed: Vec<_> = samples.iter().filter(|s| s.failed()).cloned().collect();
    assert!(
        failed.is_empty(),
        "{} of {} user requests failed: {}",
        failed.len(),
        samples.len(),
        turnout_testkit::describe_failures(&failed)
    );
    assert!(
        samples.iter().all(|s| s.from("v1")),
        "an answer came from v2"
    );
}
