//! A fleet of routers on one etcd (`[state] backend = "etcd"`): real `turnout serve`
//! processes, a real etcd server (Debian's etcd-server, which `scripts/test-all.sh`
//! installs) and real backends, all on loopback. Built only with `--features etcd`.
#![cfg(feature = "etcd")]

use std::path::Path;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use serde_json::json;
use turnout_testkit::{
    describe_failures, eventually, Backend, Etcd, HttpClient, Load, Router, RouterOptions,
};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_turnout"))
}

/// One replica: blue on `blue` (and green on `green`, if given), `[state]` with `state`.
async fn replica(
    state: &str,
    blue: &Backend,
    green: Option<&Backend>,
    extra: &str,
) -> anyhow::Result<Router> {
    Router::start(
        bin(),
        &RouterOptions {
            blue: vec![blue.upstream()],
            green: green.map(|g| vec![g.upstream()]).unwrap_or_default(),
            state_extra: state.into(),
            extra: extra.into(),
            ..Default::default()
        },
    )
    .await
}

/// `n` routers on `etcd`, blue on `blue` (and green on `green`, if given).
async fn fleet(
    etcd: &Etcd,
    n: usize,
    blue: &Backend,
    green: Option<&Backend>,
    extra: &str,
) -> Vec<Router> {
    let state = etcd.state_config("/turnout/shop");
    let mut routers = Vec::new();
    for _ in 0..n {
        routers.push(replica(&state, blue, green, extra).await.unwrap());
    }
    routers
}

/// Which backend answers `GET /` through `router`, if any does.
async fn served(client: &mut Option<HttpClient>, router: &Router) -> Option<String> {
    if client.is_none() {
        *client = HttpClient::http1(&router.data).await.ok();
    }
    match client.as_mut()?.get("/").await {
        Ok(r) if r.status == StatusCode::OK => Some(r.text()),
        Ok(_) => None,
        Err(_) => {
            *client = None;
            None
        }
    }
}

/// The router's `/metrics` text.
async fn metrics(router: &Router) -> String {
    let mut c = HttpClient::http1(&router.admin).await.unwrap();
    c.get("/metrics").await.unwrap().text()
}

/// The index of the fleet's leader among `routers` (by its advertised admin URL).
async fn leader_of(routers: &[&Router]) -> usize {
    eventually("a leader is elected", Duration::from_secs(20), || async {
        for r in routers {
            let (st, s) = r.api(Method::GET, "/api/v1/status", None).await;
            if st != StatusCode::OK {
                continue;
            }
            if let Some(admin) = s["fleet"]["leader_replica"]["admin"].as_str() {
                return routers
                    .iter()
                    .position(|r| format!("http://{}", r.admin) == admin);
            }
        }
        None
    })
    .await
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_switch_made_on_one_replica_is_served_by_all_three() {
    let etcd = Etcd::start().await.unwrap();
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let routers = fleet(&etcd, 3, &blue, Some(&green), "").await;
    let mut clients: Vec<Option<HttpClient>> = (0..3).map(|_| None).collect();
    for (r, c) in routers.iter().zip(clients.iter_mut()) {
        assert_eq!(served(c, r).await.as_deref(), Some("blue"));
    }
    // 100 for the benchmark (bench/fleet.sh); fewer in the test run.
    let switches: usize = std::env::var("TURNOUT_FLEET_SWITCHES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let mut took = Vec::new();
    for i in 0..switches {
        let to = if i % 2 == 0 { "green" } else { "blue" };
        let origin = &routers[i % 3];
        let start = Instant::now();
        let (st, body) = origin.switch_to(to).await;
        assert_eq!(
            st,
            StatusCode::OK,
            "switch {i} to {to} on replica {}: {body}",
            i % 3
        );
        // Every replica, polled in turn as fast as it answers, until all serve `to`.
        let mut done = [false; 3];
        let deadline = start + Duration::from_secs(10);
        while !done.iter().all(|d| *d) {
            assert!(
                Instant::now() < deadline,
                "switch {i} to {to}: replicas serving it after 10s: {done:?}"
            );
            for (k, (r, c)) in routers.iter().zip(clients.iter_mut()).enumerate() {
                if !done[k] && served(c, r).await.as_deref() == Some(to) {
                    done[k] = true;
                }
            }
        }
        took.push(start.elapsed());
    }
    let slowest = (0..took.len()).max_by_key(|i| took[*i]).unwrap_or(0);
    took.sort();
    let at = |q: f64| took[((took.len() as f64 * q).ceil() as usize).clamp(1, took.len()) - 1];
    // Printed, not asserted (no timed assertions): bench/fleet.sh records these.
    println!(
        "FLEET_SWITCH switches={} p50_ms={:.1} p90_ms={:.1} p99_ms={:.1} max_ms={:.1} (switch #{slowest}; from the switch call on one replica to all 3 serving the new slot)",
        took.len(),
        ms(at(0.5)),
        ms(at(0.9)),
        ms(at(0.99)),
        ms(at(1.0))
    );
    for r in &routers {
        let s = r.status().await;
        assert_eq!(s["revision"], switches as u64, "{s}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_concurrent_switches_one_wins_and_the_other_gets_a_conflict() {
    let etcd = Etcd::start().await.unwrap();
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let routers = fleet(&etcd, 2, &blue, Some(&green), "").await;
    let mut conflicts = 0;
    for round in 0..10 {
        let live = routers[0].status().await["live"]
            .as_str()
            .unwrap()
            .to_owned();
        let to = if live == "blue" { "green" } else { "blue" };
        let body = json!({ "to": to });
        let (a, b) = tokio::join!(
            routers[0].api(Method::POST, "/api/v1/switch", Some(body.clone())),
            routers[1].api(Method::POST, "/api/v1/switch", Some(body.clone())),
        );
        let answers = [a, b];
        let won: Vec<_> = answers
            .iter()
            .filter(|(s, _)| *s == StatusCode::OK)
            .collect();
        assert!(!won.is_empty(), "round {round}: nobody won: {answers:?}");
        for (st, body) in &answers {
            match *st {
                StatusCode::OK => {}
                StatusCode::CONFLICT => {
                    conflicts += 1;
                    assert_eq!(body["error"]["code"], "conflict", "{body}");
                    let msg = body["error"]["message"].as_str().unwrap();
                    assert!(
                        msg.contains("changed while this change was being made"),
                        "{msg}"
                    );
                }
                other => panic!("round {round}: unexpected {other}: {body}"),
            }
        }
        // Both answered OK only when one ran after the other: then they hold different
        // revisions, or the later one found the slot live already and changed nothing
        // (no lost update either way).
        if won.len() == 2 {
            let unchanged = won.iter().any(|(_, b)| b["changed"] == false);
            assert!(
                unchanged || won[0].1["revision"] != won[1].1["revision"],
                "{answers:?}"
            );
        }
        // Whoever won, both replicas end on one state, and serve `to`.
        eventually("both replicas agree", Duration::from_secs(10), || async {
            let (s0, s1) = (routers[0].status().await, routers[1].status().await);
            (s0["revision"] == s1["revision"] && s0["live"] == to && s1["live"] == to).then_some(())
        })
        .await;
    }
    println!("concurrent switches: {conflicts} of 10 rounds ended in a conflict for one side");
}

const BAKE: &str = "[bake]\nduration = \"8s\"\ninterval = \"250ms\"\nwindow = \"2s\"\nmax_error_rate = 0.05\nmin_requests = 5\n\n[decommission]\ndelay = \"500ms\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_leader_dies_mid_bake_another_replica_finishes_the_deployment() {
    let etcd = Etcd::start().await.unwrap();
    let v1 = Backend::start("v1").await;
    let v2 = Backend::start("v2").await;
    // A shorter lease than the default 5s: the survivors take over sooner.
    let state = format!("{}\nlease = \"3s\"", etcd.state_config("/turnout/shop"));
    let mut routers = Vec::new();
    for _ in 0..3 {
        routers.push(replica(&state, &v1, None, BAKE).await.unwrap());
    }
    let leader = leader_of(&routers.iter().collect::<Vec<_>>()).await;
    let followers: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    // Users go through the two followers (the leader is about to die).
    let loads: Vec<Load> = followers
        .iter()
        .map(|i| Load::start(&routers[*i].data, "/", 2, Duration::from_millis(20)))
        .collect();

    // Deployed through a follower: the CLI is sent on to the leader.
    let via = &routers[followers[0]];
    let (code, out, err) = via
        .cli(&["deploy", "v2", "--upstream", &v2.upstream(), "--detach"])
        .await;
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(err.contains("not the fleet's leader"), "{err}");
    let id = out
        .split_whitespace()
        .nth(1)
        .expect("deployment id")
        .to_owned();

    eventually("the deployment bakes", Duration::from_secs(30), || async {
        let s = via.status().await;
        (s["deployment"]["stage"] == "bake").then_some(())
    })
    .await;
    routers[leader].kill9().await;

    let survivor = &routers[followers[1]];
    let d = eventually(
        "another replica finishes the deployment",
        Duration::from_secs(60),
        || async {
            let (st, d) = survivor
                .api(Method::GET, &format!("/api/v1/deployments/{id}"), None)
                .await;
            (st == StatusCode::OK && d["verdict"] != "in_progress").then_some(d)
        },
    )
    .await;
    assert_eq!(d["verdict"], "promoted", "{d}");
    let stages: Vec<(&str, &str)> = d["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| (s["stage"].as_str().unwrap(), s["outcome"].as_str().unwrap()))
        .collect();
    assert!(stages.contains(&("bake", "passed")), "{stages:?}");
    let new_leader = leader_of(&followers.iter().map(|i| &routers[*i]).collect::<Vec<_>>()).await;
    println!(
        "leader {leader} killed; replica {} took over",
        followers[new_leader]
    );
    for i in &followers {
        assert_eq!(routers[*i].status().await["live"], "green");
    }
    for load in loads {
        let samples = load.stop().await;
        let failed: Vec<_> = samples.iter().filter(|s| s.failed()).cloned().collect();
        assert!(
            failed.is_empty(),
            "requests through the followers failed: {}",
            describe_failures(&failed)
        );
        assert!(
            samples.iter().any(|s| s.from("v2")),
            "no request reached v2"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leaders_bake_counts_the_traffic_of_every_replica() {
    let etcd = Etcd::start().await.unwrap();
    let v1 = Backend::start("v1").await;
    let bad = Backend::start("v2").await;
    bad.set_failing(true);
    let routers = fleet(&etcd, 2, &v1, None, &BAKE.replace("8s", "30s")).await;
    let leader = leader_of(&routers.iter().collect::<Vec<_>>()).await;
    let follower = &routers[1 - leader];
    assert!(metrics(&routers[leader])
        .await
        .contains("turnout_fleet_leader 1"));
    assert!(metrics(follower).await.contains("turnout_fleet_leader 0"));
    // All user traffic goes through the follower: the leader sees none of it itself. The
    // deployment is started through the follower too, and followed there to its verdict.
    let load = Load::start(&follower.data, "/", 2, Duration::from_millis(20));
    let (code, out, err) = follower
        .cli(&["deploy", "v2", "--upstream", &bad.upstream()])
        .await;
    let samples = load.stop().await;
    assert_eq!(code, 3, "rolled back is exit 3\n{out}\n{err}");
    assert!(out.contains("ROLLED BACK"), "{out}");
    assert!(out.contains("error rate"), "{out}");
    assert!(
        samples.iter().any(|s| s.from("v2") && s.failed()),
        "the follower never sent a request to v2"
    );
    assert_eq!(follower.status().await["live"], "blue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_etcd_the_fleet_serves_on_and_refuses_changes_then_catches_up() {
    let mut etcd = Etcd::start().await.unwrap();
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let routers = fleet(&etcd, 3, &blue, Some(&green), "").await;
    let mut clients: Vec<Option<HttpClient>> = (0..3).map(|_| None).collect();
    etcd.stop().await;
    for r in &routers {
        eventually(
            "the replica sees etcd gone",
            Duration::from_secs(15),
            || async {
                metrics(r)
                    .await
                    .contains("turnout_fleet_etcd_connected 0")
                    .then_some(())
            },
        )
        .await;
    }

    // Fail static: every replica keeps serving with the routing it had.
    for _ in 0..50 {
        for (r, c) in routers.iter().zip(clients.iter_mut()) {
            assert_eq!(served(c, r).await.as_deref(), Some("blue"));
        }
    }
    let (st, body) = routers[1].switch_to("green").await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "store_unavailable", "{body}");
    let msg = body["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("unreachable") && msg.contains("blue is live"),
        "{msg}"
    );
    let (code, _, err) = routers[0].cli(&["switch", "--to", "green"]).await;
    assert_ne!(code, 0);
    assert!(err.contains("unreachable"), "{err}");
    // A deployment is refused too, on whichever replica (the leader cannot save it, a
    // follower cannot find the leader).
    for r in &routers {
        let (st, body) = r
            .api(
                Method::POST,
                "/api/v1/deployments",
                Some(json!({ "version": "v2", "upstreams": [green.upstream()] })),
            )
            .await;
        assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    }
    for (r, c) in routers.iter().zip(clients.iter_mut()) {
        assert_eq!(served(c, r).await.as_deref(), Some("blue"));
    }

    etcd.start_again().await.unwrap();
    // The replicas reconnect by themselves; the next switch goes through and all follow.
    eventually(
        "a switch goes through again",
        Duration::from_secs(30),
        || async {
            let (st, _) = routers[2].switch_to("green").await;
            (st == StatusCode::OK).then_some(())
        },
    )
    .await;
    for r in &routers {
        eventually("the replica follows", Duration::from_secs(10), || async {
            let mut c = None;
            (served(&mut c, r).await.as_deref() == Some("green")).then_some(())
        })
        .await;
    }
    leader_of(&routers.iter().collect::<Vec<_>>()).await;
}

/// etcd loses its data (a member rebuilt without its data dir): the replicas serve on
/// with what they knew, one of them writes the routing state back, and changes work again
/// from the revision the fleet had (never back to a first start).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_etcd_loses_its_data_the_fleet_writes_its_routing_state_back() {
    let mut etcd = Etcd::start().await.unwrap();
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let routers = fleet(&etcd, 3, &blue, Some(&green), "").await;
    let (st, body) = routers[0].switch_to("green").await;
    assert_eq!(st, StatusCode::OK, "{body}");
    for r in &routers {
        eventually("the replica follows", Duration::from_secs(10), || async {
            let mut c = None;
            (served(&mut c, r).await.as_deref() == Some("green")).then_some(())
        })
        .await;
    }
    let before = routers[0].status().await["revision"]
        .as_u64()
        .expect("a revision");

    // The replicas are paused (SIGSTOP) while etcd is rebuilt empty, and a router started
    // meanwhile saves its config's state (blue, a first start) before they can write
    // theirs back: the fleet's newer state must win, not that first start.
    let signal = |sig: &str, r: &Router| {
        let pid = r.pid().expect("a running router").to_string();
        let ok = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} {pid}");
    };
    for r in &routers {
        signal("-STOP", r);
    }
    etcd.stop().await;
    etcd.wipe().unwrap();
    etcd.start_again().await.unwrap();
    let late = replica(&etcd.state_config("/turnout/shop"), &blue, Some(&green), "")
        .await
        .unwrap();
    assert_eq!(late.status().await["live"], "blue", "a first start");
    for r in &routers {
        signal("-CONT", r);
    }
    let mut routers = routers;
    routers.push(late);
    for r in &routers {
        eventually(
            "every replica on the fleet's state",
            Duration::from_secs(20),
            || async {
                let mut c = None;
                let s = r.status().await;
                (served(&mut c, r).await.as_deref() == Some("green")
                    && s["revision"].as_u64() == Some(before))
                .then_some(())
            },
        )
        .await;
    }
    // Until the state is back a switch is a conflict (nothing stored to compare with);
    // then it goes through, and every replica follows.
    eventually(
        "a switch goes through on the emptied etcd",
        Duration::from_secs(30),
        || async {
            let (st, _) = routers[1].switch_to("blue").await;
            (st == StatusCode::OK).then_some(())
        },
    )
    .await;
    for r in &routers {
        eventually("the replica follows", Duration::from_secs(10), || async {
            let mut c = None;
            (served(&mut c, r).await.as_deref() == Some("blue")).then_some(())
        })
        .await;
    }
    let after = routers[2].status().await;
    assert_eq!(after["live"], "blue", "{after}");
    assert!(
        after["revision"].as_u64().is_some_and(|r| r > before),
        "the revision went back: {before} before, {after}"
    );
}

/// `GET /` through `router` with `cookie`; the backend that answered and the pin set.
async fn get_with(router: &Router, cookie: &str) -> (String, Option<String>) {
    let mut c = HttpClient::http1(&router.data).await.unwrap();
    let headers: Vec<(&str, &str)> = if cookie.is_empty() {
        vec![]
    } else {
        vec![("cookie", cookie)]
    };
    let r = c
        .request(Method::GET, "/", &headers, Default::default())
        .await
        .unwrap();
    let pin = r.headers.get_all("set-cookie").iter().find_map(|v| {
        let v = v.to_str().ok()?.strip_prefix("turnout_pin=")?;
        Some(v.split(';').next()?.to_owned())
    });
    (r.text(), pin)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_pinned_by_one_replica_stays_on_the_old_slot_through_another() {
    let etcd = Etcd::start().await.unwrap();
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let sessions = "[sessions]\ncookie = \"sid\"\ndrain = \"1h\"\n";
    let routers = fleet(&etcd, 2, &blue, Some(&green), sessions).await;
    // The session begins on blue through replica 0, which pins it (its key is the fleet's,
    // kept in etcd).
    let (slot, pin) = get_with(&routers[0], "sid=old").await;
    assert_eq!(slot, "blue");
    let pin = pin.expect("a pin for a request with a session");
    // The switch is made on replica 1; the old session, now sent through replica 1, stays
    // on blue for the drain window, while a new session and a client without one get green.
    let (st, body) = routers[1].switch_to("green").await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let mut green_pin = None;
    for r in &routers {
        eventually(
            "the replica serves green",
            Duration::from_secs(10),
            || async { (get_with(r, "").await.0 == "green").then_some(()) },
        )
        .await;
        let (slot, _) = get_with(r, &format!("sid=old; turnout_pin={pin}")).await;
        assert_eq!(slot, "blue", "the old session left blue through {}", r.data);
        let (slot, new_pin) = get_with(r, "sid=new").await;
        assert_eq!(slot, "green");
        green_pin = Some(new_pin.expect("the new session is pinned to green"));
    }
    let green_pin = green_pin.unwrap();
    // A rollback moves every session back at once, whatever its pin.
    let (st, body) = routers[0].api(Method::POST, "/api/v1/rollback", None).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    for r in &routers {
        eventually(
            "the replica serves blue again",
            Duration::from_secs(10),
            || async { (get_with(r, "").await.0 == "blue").then_some(()) },
        )
        .await;
        let (slot, _) = get_with(r, &format!("sid=new; turnout_pin={green_pin}")).await;
        assert_eq!(slot, "blue", "a session pinned to green after the rollback");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fleet_configs_that_cannot_work_are_refused_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let nobody = format!("http://{}", free.local_addr().unwrap());
    drop(free);
    let serve = |extra: &str| {
        let config = format!(
            "[listen]\naddr = \"127.0.0.1:0\"\n[admin]\naddr = \"127.0.0.1:0\"\n\
             [state]\ndir = {:?}\nbackend = \"etcd\"\nendpoints = [{nobody:?}]\n\
             [slots.blue]\nupstreams = [\"127.0.0.1:7001\"]\n{extra}",
            dir.path().join("state").display().to_string()
        );
        let path = dir.path().join("turnout.toml");
        std::fs::write(&path, config).unwrap();
        let out = std::process::Command::new(bin())
            .args(["serve", "--config"])
            .arg(&path)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // Instances one router starts cannot be a fleet's: a usage error, before anything runs.
    let (code, err) = serve("[provision]\ncommand = \"./shop --port {port}\"\n");
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("[provision] command cannot be used with [state] backend = \"etcd\""),
        "{err}"
    );
    assert!(err.contains("up/down"), "{err}");
    // No etcd there: the start fails and says where it looked.
    let (code, err) = serve("");
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("cannot start") && err.contains(&nobody),
        "{err}"
    );
}

/// A deterministic xorshift64 generator for the chaos schedule.
struct XorShift(u64);

impl XorShift {
    fn below(&mut self, n: u64) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x % n
    }
}

/// `routers[a]` to read and `routers[b]` to change (`a != b`).
fn pair(routers: &mut [Router], a: usize, b: usize) -> (&Router, &mut Router) {
    assert_ne!(a, b);
    if a < b {
        let (left, right) = routers.split_at_mut(b);
        (&left[a], &mut right[0])
    } else {
        let (left, right) = routers.split_at_mut(a);
        (&right[0], &mut left[b])
    }
}

/// Waits until every replica holds one routing state and serves its live slot; returns
/// (revision, live).
async fn converged(routers: &[Router]) -> (u64, String) {
    eventually("the replicas converge", Duration::from_secs(30), || async {
        let mut seen = None;
        for r in routers {
            let (st, s) = r.api(Method::GET, "/api/v1/status", None).await;
            if st != StatusCode::OK {
                return None;
            }
            let now = (s["revision"].as_u64()?, s["live"].as_str()?.to_owned());
            if seen.as_ref().is_some_and(|s| s != &now) {
                return None;
            }
            seen = Some(now);
        }
        let (revision, live) = seen?;
        for r in routers {
            let mut c = None;
            if served(&mut c, r).await.as_deref() != Some(live.as_str()) {
                return None;
            }
        }
        Some((revision, live))
    })
    .await
}

/// Switches through pseudo-random replicas while replicas are killed with `kill -9` and
/// restarted, and etcd is killed and started again, at pseudo-random moments. After every
/// round all replicas hold one routing state and serve its live slot, no acknowledged
/// switch is lost (the state's revision is at least the newest acknowledged one, and is
/// that switch's target when nothing came after it), and revisions never go back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_converges_after_replicas_and_etcd_are_killed_at_random() {
    let rounds: u64 = std::env::var("TURNOUT_FLEET_CHAOS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .filter(|n| (1..=200).contains(n))
        .unwrap_or(8);
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let mut etcd = Etcd::start().await.unwrap();
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let mut routers = fleet(&etcd, 3, &blue, Some(&green), "").await;
    let (mut floor, _) = converged(&routers).await;
    for round in 0..rounds {
        let action = rng.below(3);
        let victim = rng.below(3) as usize;
        let via = (victim + 1 + rng.below(2) as usize) % 3;
        let delay = Duration::from_millis(rng.below(300));
        // The newest switch acknowledged this round: (revision, target).
        let mut acked: Option<(u64, String)> = None;
        let mut ack = |st: StatusCode, body: &serde_json::Value, to: &str| {
            if st == StatusCode::OK {
                let rev = body["revision"].as_u64().expect("a revision");
                if acked.as_ref().is_none_or(|(r, _)| rev > *r) {
                    acked = Some((rev, to.to_owned()));
                }
            } else {
                assert!(
                    [StatusCode::CONFLICT, StatusCode::SERVICE_UNAVAILABLE].contains(&st),
                    "round {round}: switch answered {st}: {body}"
                );
            }
        };
        let live = routers[via].status().await["live"]
            .as_str()
            .unwrap()
            .to_owned();
        let to = if live == "blue" { "green" } else { "blue" };
        match action {
            // A replica dies while another switches; it comes back and must catch up.
            0 => {
                let (switcher, dying) = pair(&mut routers, via, victim);
                let switching = switcher.switch_to(to);
                let killing = async {
                    tokio::time::sleep(delay).await;
                    dying.kill9().await;
                };
                let ((st, body), ()) = tokio::join!(switching, killing);
                ack(st, &body, to);
                routers[victim].restart().await.unwrap();
            }
            // etcd dies at a pseudo-random moment around a switch, and comes back.
            1 => {
                let switching = routers[via].switch_to(to);
                let stopping = async {
                    tokio::time::sleep(delay).await;
                    etcd.stop().await;
                };
                let ((st, body), ()) = tokio::join!(switching, stopping);
                ack(st, &body, to);
                let (st, body) = routers[victim].switch_to(to).await;
                ack(st, &body, to);
                etcd.start_again().await.unwrap();
            }
            // Two replicas switch at once, in opposite directions.
            _ => {
                let other = if to == "blue" { "green" } else { "blue" };
                let (a, b) =
                    tokio::join!(routers[via].switch_to(to), routers[victim].switch_to(other));
                ack(a.0, &a.1, to);
                ack(b.0, &b.1, other);
            }
        }
        let (revision, live) = converged(&routers).await;
        assert!(
            revision >= floor,
            "round {round}: revision went back from {floor} to {revision}"
        );
        if let Some((rev, target)) = &acked {
            assert!(
                revision >= *rev,
                "round {round}: acknowledged revision {rev} lost (now {revision})"
            );
            if revision == *rev {
                assert_eq!(
                    &live, target,
                    "round {round}: the acknowledged switch is not in force"
                );
            }
        }
        floor = revision;
        println!("chaos round {round}: action {action}, victim {victim}, via {via}, {delay:?}: revision {revision}, {live} live");
    }
    // At the end every replica still takes a switch and all follow it.
    for i in 0..3 {
        let live = converged(&routers).await.1;
        let to = if live == "blue" { "green" } else { "blue" };
        let (st, body) = routers[i].switch_to(to).await;
        assert_eq!(st, StatusCode::OK, "{body}");
        assert_eq!(converged(&routers).await.1, to);
    }
}

/// A webhook shared by three replicas hears of each switch once, from the replica that
/// made it (the others only relay it to their own event streams).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_announce_a_switch_once_not_once_per_replica() {
    let etcd = Etcd::start().await.unwrap();
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let (hook, bodies) = turnout_testkit::webhook_receiver().await;
    let notify = format!("[notify]\nwebhooks = [\"http://{hook}/hook\"]\n");
    let routers = fleet(&etcd, 3, &blue, Some(&green), &notify).await;
    // Six switches, through replicas 0, 1, 2, 0, 1, 2. A replica switches only after it
    // has applied every earlier revision, and its webhook queue is in order: once the
    // events of switches 4, 5 and 6 have arrived, any relay of switches 1 to 4 would have
    // arrived before them.
    for i in 0..6u64 {
        let to = if i % 2 == 0 { "green" } else { "blue" };
        let r = &routers[(i % 3) as usize];
        eventually(
            "the replica has applied the last switch",
            Duration::from_secs(10),
            || async { (r.status().await["revision"] == i).then_some(()) },
        )
        .await;
        let (st, body) = r.switch_to(to).await;
        assert_eq!(st, StatusCode::OK, "{body}");
        assert_eq!(body["revision"], i + 1);
    }
    let revisions = |bodies: &[serde_json::Value]| -> Vec<u64> {
        bodies
            .iter()
            .filter(|b| b["kind"] == "switch")
            .filter_map(|b| b["data"]["revision"].as_u64())
            .collect()
    };
    eventually(
        "the last three switches announced",
        Duration::from_secs(10),
        || async {
            let got = revisions(&bodies.lock().unwrap());
            [4, 5, 6].iter().all(|r| got.contains(r)).then_some(())
        },
    )
    .await;
    let got = revisions(&bodies.lock().unwrap());
    for r in 1..=4 {
        let n = got.iter().filter(|x| **x == r).count();
        assert_eq!(n, 1, "switch to revision {r} announced {n} times: {got:?}");
    }
}

/// TLS to etcd with client certificates (`[state] ca`, `cert`, `key`, https:// endpoints):
/// a fleet works through it; a router without a client certificate is refused at start.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_on_an_etcd_that_requires_tls_client_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let pki = turnout_testkit::make_pki(dir.path(), "etcd");
    let etcd = Etcd::start_tls(turnout_testkit::EtcdTlsFiles {
        cert: pki.server_cert.clone(),
        key: pki.server_key.clone(),
        client_ca: pki.ca.clone(),
    })
    .await
    .unwrap();
    assert!(etcd.endpoint.starts_with("https://"));
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let quoted = |p: &std::path::Path| format!("{:?}", p.display().to_string());
    let tls = format!(
        "{}ca = {}\ncert = {}\nkey = {}\n",
        etcd.state_config("/turnout/tls"),
        quoted(&pki.ca),
        quoted(&pki.client_cert),
        quoted(&pki.client_key)
    );
    let (blue, green) = (&blue, &green);
    let start = |state: String| async move { replica(&state, blue, Some(green), "").await };
    let a = start(tls.clone()).await.unwrap();
    let b = start(tls).await.unwrap();
    let (st, body) = a.switch_to("green").await;
    assert_eq!(st, StatusCode::OK, "{body}");
    eventually(
        "the other replica follows over TLS",
        Duration::from_secs(10),
        || async {
            let mut c = None;
            (served(&mut c, &b).await.as_deref() == Some("green")).then_some(())
        },
    )
    .await;

    // The CA but no client certificate: etcd refuses the handshake, and the router says
    // it could not start.
    let no_cert = format!(
        "{}ca = {}\n",
        etcd.state_config("/turnout/tls"),
        quoted(&pki.ca)
    );
    let err = start(no_cert)
        .await
        .err()
        .expect("refused without a client certificate");
    let text = format!("{err:#}");
    assert!(
        text.contains("cannot start") && text.contains(&etcd.endpoint),
        "{text}"
    );
}

/// etcd's authentication (`[state] user`, `password`): a router with the right password
/// works, one with a wrong one is refused at start and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_on_an_etcd_with_authentication() {
    let etcd = Etcd::start().await.unwrap();
    etcd.enable_auth("s3cret").await.unwrap();
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let dir = tempfile::tempdir().unwrap();
    let password = dir.path().join("etcd-password");
    std::fs::write(&password, "s3cret\n").unwrap();
    let state = |file: &std::path::Path| {
        format!(
            "{}user = \"root\"\npassword = \"file:{}\"\n",
            etcd.state_config("/turnout/auth"),
            file.display()
        )
    };
    let (blue, green) = (&blue, &green);
    let start = |state: String| async move { replica(&state, blue, Some(green), "").await };
    let r = start(state(&password)).await.unwrap();
    let (st, body) = r.switch_to("green").await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(r.status().await["live"], "green");

    let wrong = dir.path().join("wrong-password");
    std::fs::write(&wrong, "guess").unwrap();
    let err = start(state(&wrong))
        .await
        .err()
        .expect("refused with a wrong password");
    let text = format!("{err:#}");
    assert!(
        text.contains("cannot start") && text.contains("authentication"),
        "{text}"
    );
}

/// `turnout upgrade` replica by replica, followers first: clients of every replica see
/// no failed request, a leader is elected among the new processes, and the fleet still
/// switches as one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_upgrades_replica_by_replica_without_a_failed_request() {
    let etcd = Etcd::start().await.unwrap();
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let mut routers = fleet(&etcd, 2, &blue, Some(&green), "").await;
    let loads: Vec<Load> = routers
        .iter()
        .map(|r| Load::start(&r.data, "/", 2, Duration::from_millis(5)))
        .collect();
    let leader = leader_of(&routers.iter().collect::<Vec<_>>()).await;
    let order = [1 - leader, leader];
    for i in order {
        let (code, out, err) = routers[i].cli(&["upgrade"]).await;
        assert_eq!(
            code,
            0,
            "upgrade of replica {i}: {out}{err}\n{}",
            routers[i].stderr()
        );
        let pid = out
            .split("upgraded: pid ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no pid in {out}"));
        routers[i].handed_over(pid).await.unwrap();
    }
    // A leader among the new processes, and a switch on either reaches both.
    leader_of(&routers.iter().collect::<Vec<_>>()).await;
    let (code, body) = routers[0].switch_to("green").await;
    assert_eq!(code, StatusCode::OK, "{body}");
    for r in &routers {
        eventually(
            "green served by every replica",
            Duration::from_secs(10),
            || async {
                let mut client = None;
                (served(&mut client, r).await.as_deref() == Some("green")).then_some(())
            },
        )
        .await;
    }
    for load in loads {
        let samples = load.stop().await;
        assert!(samples.len() > 50, "{} answers", samples.len());
        assert!(
            samples.iter().all(|s| !s.failed()),
            "{}",
            describe_failures(&samples)
        );
    }
}
