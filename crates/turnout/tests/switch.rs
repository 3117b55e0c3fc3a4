//! The atomic switch under load: no request lost, every request that starts after a
//! switch returned is answered by the new live slot.

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use http::Method;
use serde_json::json;
use turnout_testkit::{eventually, Backend, HttpClient, Router, RouterOptions};

const CLIENTS: usize = 32;
const SWITCHES: usize = 200;

struct Sample {
    start: Instant,
    end: Instant,
    slot: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_switches_under_keep_alive_load_lose_nothing() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let router = Router::start(
        Path::new(env!("CARGO_BIN_EXE_turnout")),
        &RouterOptions {
            blue: vec![blue.upstream()],
            green: vec![green.upstream()],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    router.await_healthy().await;

    let stop = Arc::new(AtomicBool::new(false));
    let completed = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut clients = Vec::new();
    for _ in 0..CLIENTS {
        let (stop, completed, failures, data) = (
            stop.clone(),
            completed.clone(),
            failures.clone(),
            router.data.clone(),
        );
        clients.push(tokio::spawn(async move {
            let mut samples = Vec::new();
            let mut client = HttpClient::http1(&data).await.expect("connect to router");
            while !stop.load(Ordering::SeqCst) {
                let start = Instant::now();
                match client.get("/").await {
                    Ok(r) if r.status == 200 => samples.push(Sample {
                        start,
                        end: Instant::now(),
                        slot: r.text(),
                    }),
                    Ok(r) => failures.lock().unwrap().push(format!(
                        "status {} body {:?}",
                        r.status,
                        r.text()
                    )),
                    Err(e) => {
                        failures
                            .lock()
                            .unwrap()
                            .push(format!("request error: {e:#}"));
                        client = HttpClient::http1(&data).await.expect("reconnect");
                    }
                }
                completed.fetch_add(1, Ordering::SeqCst);
            }
            samples
        }));
    }

    // (issued, returned, target) per switch; blue is live before the first.
    let mut switches: Vec<(Instant, Instant, &str)> = Vec::new();
    for i in 0..SWITCHES {
        let to = if i % 2 == 0 { "green" } else { "blue" };
        let issued = Instant::now();
        let (status, body) = router
            .api(Method::POST, "/api/v1/switch", Some(json!({ "to": to })))
            .await;
        let returned = Instant::now();
        assert_eq!(status, 200, "switch {i} to {to}: {body}");
        assert_eq!(body["live"], to);
        switches.push((issued, returned, to));
        // Let every client send at least one request that starts after this switch
        // returned before the next switch: each has at most one in flight now.
        let seen = completed.load(Ordering::SeqCst);
        eventually("requests after the switch", Duration::from_secs(10), || {
            let c = completed.load(Ordering::SeqCst);
            async move { (c >= seen + 2 * CLIENTS as u64).then_some(()) }
        })
        .await;
    }
    stop.store(true, Ordering::SeqCst);
    let mut samples = Vec::new();
    for c in clients {
        samples.extend(c.await.unwrap());
    }

    let failures = failures.lock().unwrap();
    assert!(
        failures.is_empty(),
        "{} failed requests, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );

    // Every request that started after switch k returned, and ended before switch k+1
    // was issued, was answered by switch k's target.
    let mut checked = 0;
    for s in &samples {
        let k = switches.partition_point(|(_, returned, _)| *returned <= s.start);
        let expected = if k == 0 { "blue" } else { switches[k - 1].2 };
        let next_issued = switches.get(k).map(|(issued, _, _)| *issued);
        if next_issued.is_none_or(|n| s.end < n) {
            checked += 1;
            assert_eq!(
                s.slot, expected,
                "a request that started after switch {k} returned went to the old slot"
            );
        } else {
            assert!(
                s.slot == "blue" || s.slot == "green",
                "unexpected answer {:?}",
                s.slot
            );
        }
    }
    assert!(
        checked >= SWITCHES * CLIENTS,
        "only {checked} requests fell cleanly between switches"
    );
    assert!(blue.requests() > 0 && green.requests() > 0);
}
