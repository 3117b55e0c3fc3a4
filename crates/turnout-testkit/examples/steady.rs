//! Steady keep-alive load for the lifecycle benchmark (`bench/lifecycle.sh`): CLIENTS
//! HTTP/1.1 keep-alive clients send `GET /` to ADDR, each at most one request per PACE_MS,
//! for SECONDS; a client honours `Connection: close` and reconnects after a failure, as
//! real clients do. Prints one JSON line: requests, failed (no response, or 5xx), refused
//! (connection refused), the longest time one request took and the longest time in which
//! no request succeeded (ms), and the failures' kinds.
//!
//! `cargo run --release -p turnout-testkit --example steady -- ADDR SECONDS CLIENTS PACE_MS`

use std::collections::BTreeMap;
use std::time::Duration;

#[tokio::main(flavor = "multi_thread", worker_threads = 1)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, seconds, clients, pace] = args.as_slice() else {
        anyhow::bail!(
            "usage: steady ADDR SECONDS CLIENTS PACE_MS   (e.g. steady 127.0.0.1:8080 10 4 1)"
        );
    };
    let number = |name: &str, v: &str, max: u64| -> anyhow::Result<u64> {
        match v.parse::<u64>() {
            Ok(n) if n <= max => Ok(n),
            _ => anyhow::bail!("{name} must be a whole number up to {max}, got {v:?}"),
        }
    };
    let seconds = number("SECONDS", seconds, 170)?;
    let clients = number("CLIENTS", clients, 256)?;
    let pace = number("PACE_MS", pace, 10_000)?;
    let load = turnout_testkit::Load::start(
        addr,
        "/",
        usize::try_from(clients)?,
        Duration::from_millis(pace),
    );
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let samples = load.stop().await;
    let failed = samples.iter().filter(|s| s.failed()).count();
    let refused = samples
        .iter()
        .filter(|s| s.error.as_deref().is_some_and(|e| e.contains("refused")))
        .count();
    let longest = samples
        .iter()
        .map(|s| s.received.duration_since(s.sent))
        .max()
        .unwrap_or_default();
    // The longest time in which no request succeeded (across all clients).
    let mut ok: Vec<std::time::Instant> = samples
        .iter()
        .filter(|s| !s.failed())
        .map(|s| s.received)
        .collect();
    ok.sort_unstable();
    let gap = ok
        .windows(2)
        .map(|w| w[1].duration_since(w[0]))
        .max()
        .unwrap_or_default();
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for s in samples.iter().filter(|s| s.failed()) {
        let kind = s
            .error
            .clone()
            .unwrap_or_else(|| format!("status {}", s.status));
        *kinds.entry(kind).or_default() += 1;
    }
    println!(
        "{}",
        serde_json::json!({
            "requests": samples.len(),
            "failed": failed,
            "refused": refused,
            "longest_ms": (longest.as_secs_f64() * 1000.0 * 10.0).round() / 10.0,
            "gap_ms": (gap.as_secs_f64() * 1000.0 * 10.0).round() / 10.0,
            "failures": kinds,
        })
    );
    Ok(())
}
