//! `kill -9` of the router at pseudo-random moments during deployments and switches, with
//! `[provision]` starting the demo service. After every restart: the live slot is one that
//! was committed (it has upstreams, the weights agree), `history --json` has no half
//! records, no instance process is orphaned, and at the end the next deployment works.

use std::path::Path;
use std::time::{Duration, Instant};

use http::Method;
use serde_json::Value;
use turnout_testkit::{toml_str, HttpClient, Router, RouterOptions, Shop};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_turnout"))
}

/// Rounds of (start something, wait a pseudo-random moment, `kill -9`, restart, check).
const ROUNDS: u64 = 12;

/// Rounds to run: `TURNOUT_CRASH_ROUNDS` for the long run (e.g. 50), else [`ROUNDS`].
fn rounds() -> u64 {
    std::env::var("TURNOUT_CRASH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| (1..=500).contains(n))
        .unwrap_or(ROUNDS)
}
/// The longest pseudo-random delay before a kill.
const MAX_DELAY_MS: u64 = 1500;
/// How long a restarted router may take to settle (end or resume what was running).
const SETTLE: Duration = Duration::from_secs(20);

/// A deterministic xorshift64 generator for the delays and the choices.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// `[provision]` from `shop`, a short decommission delay and bake.
fn shop_config(shop: &Shop) -> String {
    format!(
        "[provision]\ncommand = {}\ninstances = 2\nhealth_timeout = \"20s\"\nstop_timeout = \"5s\"\n\n\
         [decommission]\ndelay = \"500ms\"\n\n\
         [bake]\nduration = \"1s\"\ninterval = \"250ms\"\nwindow = \"1s\"\nmax_error_rate = 0.05\nmin_requests = 0\n",
        toml_str(&shop.provision_command(&[]))
    )
}

/// `(pid, port)` of every demo service process in `shop`.
fn instances(shop: &Shop) -> Vec<(u32, String)> {
    shop.processes()
        .into_iter()
        .map(|(pid, argv)| {
            let port = argv
                .iter()
                .position(|a| a == "--port")
                .and_then(|i| argv.get(i + 1))
                .cloned()
                .unwrap_or_default();
            (pid, port)
        })
        .collect()
}

async fn status(router: &Router) -> Value {
    let (code, body) = router.api(Method::GET, "/api/v1/status", None).await;
    assert_eq!(code, 200, "{body}");
    body
}

fn upstream_ports(s: &Value, slot: &str) -> Vec<String> {
    s["slots"][slot]["upstreams"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|u| u["addr"].as_str())
                .filter_map(|a| a.rsplit_once(':').map(|(_, p)| p.to_owned()))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until the restarted router has settled: no deployment, or one that was resumed
/// in its bake or decommission. Returns the status then.
async fn settled(router: &Router, ctx: &str) -> Value {
    let end = Instant::now() + SETTLE;
    loop {
        let s = status(router).await;
        let stage = s["deployment"]["stage"].as_str().unwrap_or("");
        if s["deployment"].is_null() || stage == "bake" || stage == "decommission" {
            return s;
        }
        assert!(
            Instant::now() < end,
            "{ctx}: not settled within {SETTLE:?}: {s:#}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until no deployment runs at all.
async fn idle(router: &Router, ctx: &str) -> Value {
    let end = Instant::now() + SETTLE;
    loop {
        let s = status(router).await;
        if s["deployment"].is_null() {
            return s;
        }
        assert!(
            Instant::now() < end,
            "{ctx}: a deployment still runs after {SETTLE:?}: {s:#}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// (1) The live slot is a committed one.
fn check_live(s: &Value, deployed: bool, ctx: &str) {
    let blue = s["weights"]["blue"].as_u64();
    let green = s["weights"]["green"].as_u64();
    match s["live"].as_str() {
        Some(live @ ("blue" | "green")) => {
            assert!(
                !upstream_ports(s, live).is_empty(),
                "{ctx}: the live slot {live} has no upstream: {s:#}"
            );
            assert_eq!(
                blue.unwrap_or(0) + green.unwrap_or(0),
                100,
                "{ctx}: weights: {s:#}"
            );
        }
        None if !deployed => {
            assert_eq!(
                (blue.unwrap_or(0), green.unwrap_or(0)),
                (0, 0),
                "{ctx}: nothing live but weights: {s:#}"
            );
        }
        other => panic!("{ctx}: live is {other:?}: {s:#}"),
    }
}

/// (2) `history --json` has no half record.
async fn check_history(router: &Router, s: &Value, ctx: &str) -> Vec<Value> {
    let (code, out, err) = router.cli(&["history", "--json"]).await;
    assert_eq!(code, 0, "{ctx}: history: {err}");
    let list: Vec<Value> = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("{ctx}: history is not JSON ({e}): {out}"));
    let mut in_progress = Vec::new();
    for d in &list {
        let verdict = d["verdict"].as_str().unwrap_or("?");
        assert!(
            matches!(
                verdict,
                "promoted" | "rolled_back" | "aborted" | "failed" | "in_progress"
            ),
            "{ctx}: verdict {verdict}: {d:#}"
        );
        let stages = d["stages"]
            .as_array()
            .unwrap_or_else(|| panic!("{ctx}: no stages: {d:#}"));
        let mut running = 0;
        for st in stages {
            assert!(
                st["started_at"].as_str().is_some_and(|t| !t.is_empty()),
                "{ctx}: a stage without started_at: {d:#}"
            );
            if st["outcome"] == "running" {
                running += 1;
                assert!(
                    st["ended_at"].is_null(),
                    "{ctx}: a running stage with ended_at: {d:#}"
                );
            } else {
                assert!(
                    st["ended_at"].as_str().is_some_and(|t| !t.is_empty()),
                    "{ctx}: an ended stage without ended_at: {d:#}"
                );
            }
        }
        // A promoted deployment still decommissions the old version after its verdict;
        // that one must be the deployment the router runs.
        let decommissioning = verdict == "promoted"
            && running == 1
            && stages
                .last()
                .is_some_and(|st| st["stage"] == "decommission" && st["outcome"] == "running");
        if verdict == "in_progress" || decommissioning {
            assert!(running <= 1, "{ctx}: {running} stages running: {d:#}");
            in_progress.push(d["id"].clone());
        } else {
            assert_eq!(
                running, 0,
                "{ctx}: a {verdict} deployment with a running stage: {d:#}"
            );
        }
    }
    assert!(
        in_progress.len() <= 1,
        "{ctx}: {} deployments in progress (or decommissioning): {in_progress:?}",
        in_progress.len()
    );
    // The one in progress is the one the router runs (the status was read before, and
    // the deployment may have ended in between: then it is no longer in progress).
    if let Some(id) = in_progress.first() {
        assert_eq!(
            &s["deployment"]["id"], id,
            "{ctx}: history has {id} in progress (or decommissioning), the router runs {s:#}"
        );
    }
    list
}

/// (3) Every instance process belongs to an upstream the router knows.
async fn check_no_orphan(router: &Router, shop: &Shop, ctx: &str) {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let s = status(router).await;
        let mut known = upstream_ports(&s, "blue");
        known.extend(upstream_ports(&s, "green"));
        let strays: Vec<(u32, String)> = instances(shop)
            .into_iter()
            .filter(|(_, port)| !known.contains(port))
            .collect();
        if strays.is_empty() {
            return;
        }
        assert!(
            Instant::now() < end,
            "{ctx}: orphaned instances (pid, port) {strays:?}; the router knows ports {known:?}: {s:#}\nstderr:\n{}",
            router.stderr()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn answering_version(router: &Router) -> Option<String> {
    let mut c = HttpClient::http1(&router.data).await.ok()?;
    let r = c.get("/api/items").await.ok()?;
    if !r.status.is_success() {
        return None;
    }
    let v: Value = serde_json::from_slice(&r.body).ok()?;
    v["version"].as_str().map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_deployments_and_switches_leaves_a_consistent_router() {
    let started = Instant::now();
    let shop = Shop::new(bin());
    let mut router = Router::start(
        bin(),
        &RouterOptions {
            extra: shop_config(&shop),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut deployed = false;
    let mut log = Vec::new();

    for round in 0..rounds() {
        let s = status(&router).await;
        let live = s["live"].as_str().map(str::to_owned);
        let standby = match live.as_deref() {
            Some("blue") => Some("green"),
            Some("green") => Some("blue"),
            _ => None,
        }
        .filter(|other| !upstream_ports(&s, other).is_empty());
        let switches = standby.is_some() && rng.below(3) == 0;
        // Provision, health and the switch take a few tens of milliseconds: one kill in
        // two lands in the first 40 ms, the others anywhere up to MAX_DELAY_MS.
        let delay = Duration::from_millis(if rng.below(2) == 0 {
            rng.below(40)
        } else {
            rng.below(MAX_DELAY_MS + 1)
        });
        let what;
        if switches {
            // A few switches back and forth (a deployment may refuse them: that is fine),
            // the last one in flight when the kill lands.
            let n = 1 + rng.below(3);
            let mut to = standby.unwrap();
            let mut codes = Vec::new();
            for _ in 0..n {
                let (code, _, _) = router.cli(&["switch", "--to", to, "--force"]).await;
                codes.push(code);
                to = if to == "blue" { "green" } else { "blue" };
            }
            let admin = router.admin.clone();
            let to = to.to_owned();
            tokio::spawn(async move {
                let _ = tokio::time::timeout(
                    Duration::from_secs(5),
                    tokio::process::Command::new(bin())
                        .args(["switch", "--to", &to, "--force", "--admin"])
                        .arg(format!("http://{admin}"))
                        .env("TURNOUT_ADMIN_TOKEN", turnout_testkit::TOKEN)
                        .output(),
                )
                .await;
            });
            what = format!("{n} switches {codes:?} + 1 in flight");
        } else {
            // One deployment at a time: the previous one (resumed bake) ends first.
            idle(&router, &format!("round {round} before deploying")).await;
            let version = format!("v{}", round + 1);
            let (code, out, err) = router.cli(&["deploy", &version, "--detach"]).await;
            assert_eq!(code, 0, "round {round}: deploy {version}: {out}{err}");
            what = format!("deploy {version}");
        }
        tokio::time::sleep(delay).await;
        let stage_at_kill = status(&router).await["deployment"]["stage"].clone();
        router.kill9().await;
        if let Err(e) = router.restart().await {
            let lock = router.dir().join("state/lock");
            let holders = lock_holders(&lock);
            panic!("round {round} ({what}, kill after {delay:?} at stage {stage_at_kill}): restart failed: {e:#}\nholders of {}: {holders:?}", lock.display());
        }

        let ctx = format!("round {round} ({what}, kill after {delay:?} at stage {stage_at_kill})");
        let s = settled(&router, &ctx).await;
        // Nothing is live until a first switch was committed; from then on, always.
        check_live(&s, deployed, &ctx);
        deployed |= !s["live"].is_null();
        check_history(&router, &s, &ctx).await;
        check_no_orphan(&router, &shop, &ctx).await;
        log.push(format!(
            "{ctx}: live {} deployment {}",
            s["live"], s["deployment"]["stage"]
        ));
    }

    // The next deployment works, and users get it.
    let s = idle(&router, "before the final deployment").await;
    check_live(&s, deployed, "before the final deployment");
    let (code, out, err) = router.cli(&["deploy", "vFinal"]).await;
    assert_eq!(
        code,
        0,
        "the final deployment: {out}{err}\nrounds:\n{}",
        log.join("\n")
    );
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        if answering_version(&router).await.as_deref() == Some("vFinal") {
            break;
        }
        assert!(Instant::now() < end, "vFinal never answered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..20 {
        assert_eq!(
            answering_version(&router).await.as_deref(),
            Some("vFinal"),
            "traffic after the final promotion"
        );
    }
    let s = idle(&router, "after the final deployment").await;
    check_history(&router, &s, "after the final deployment").await;
    check_no_orphan(&router, &shop, "after the final deployment").await;
    assert_eq!(
        router.terminate().await.unwrap(),
        Some(0),
        "{}",
        router.stderr()
    );
    eprintln!(
        "crash rounds ({:?}):\n{}",
        started.elapsed(),
        log.join("\n")
    );
}

/// Processes with `path` open, with their argument lists.
fn lock_holders(path: &Path) -> Vec<(u32, Vec<String>)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_dir(format!("/proc/{pid}/fd")).is_ok_and(|fds| {
                fds.flatten()
                    .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t == path))
            })
        })
        .map(|pid| {
            let raw = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let argv = raw
                .split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect();
            (pid, argv)
        })
        .collect()
}
