//! The dashboard in a real browser: headless Chromium, driven over the DevTools protocol,
//! opens the admin address, enters the token, sees blue live, switches to green through
//! the page's confirmation dialog, rolls back, and saves a screenshot of each step under
//! `target/browser-artifacts/`.
//!
//! Needs Chromium (`chromium`, `chromium-browser` or `google-chrome` on PATH, or the path
//! in env `TURNOUT_CHROMIUM`); `scripts/test-all.sh` installs Debian's `chromium`. Without
//! it the test fails and says so: it is not skipped.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use turnout_testkit::{eventually, Backend, Load, Router, RouterOptions, TOKEN};

/// A generous deadline for anything the page should show (the issue asks for a switch to
/// show within a second; the measured time is printed, not asserted).
const DEADLINE: Duration = Duration::from_secs(10);

fn find_chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("TURNOUT_CHROMIUM") {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for name in [
        "chromium",
        "chromium-browser",
        "google-chrome",
        "google-chrome-stable",
    ] {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!(
        "the browser test needs Chromium and found none: install Debian's `chromium` \
         (scripts/test-all.sh does: apt-get install -y chromium), or set TURNOUT_CHROMIUM \
         to a Chromium or Chrome binary"
    );
}

/// Where screenshots go: `target/browser-artifacts/` (the test binary lives in
/// `target/<profile>/deps/`).
fn artifacts_dir() -> PathBuf {
    let dir = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(t) => PathBuf::from(t),
        None => std::env::current_exe()
            .expect("test binary path")
            .ancestors()
            .nth(3)
            .expect("target directory")
            .to_owned(),
    }
    .join("browser-artifacts");
    std::fs::create_dir_all(&dir).expect("create browser-artifacts");
    dir
}

/// A headless Chromium, killed when dropped (a failed assertion included).
struct Chromium {
    child: Child,
    ws_url: String,
    _profile: tempfile::TempDir,
}

impl Chromium {
    fn start() -> Chromium {
        let bin = find_chromium();
        let profile = tempfile::tempdir().expect("profile dir");
        let mut child = Command::new(&bin)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-sync",
                "--no-first-run",
                "--no-default-browser-check",
                "--remote-debugging-address=127.0.0.1",
                "--remote-debugging-port=0",
                "--window-size=1280,1000",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let stderr = child.stderr.take().expect("chromium stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads the DevTools address, then keeps draining stderr so Chromium never blocks.
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            let mut seen = Vec::new();
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(url) = line.strip_prefix("DevTools listening on ") {
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(Ok(url.trim().to_owned()));
                    }
                } else if tx.is_some() {
                    seen.push(line);
                }
            }
            if let Some(tx) = tx {
                let _ = tx.send(Err(seen.join("\n")));
            }
        });
        let mut chromium = Chromium {
            child,
            ws_url: String::new(),
            _profile: profile,
        };
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Ok(url)) => chromium.ws_url = url,
            Ok(Err(stderr)) => panic!(
                "{} exited before it listened for DevTools; stderr:\n{stderr}",
                bin.display()
            ),
            Err(_) => panic!(
                "{} did not print its DevTools address in 60 s",
                bin.display()
            ),
        }
        chromium
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A DevTools protocol connection to the browser, attached to one page.
struct Cdp {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    session: Option<String>,
    /// Page exceptions and console errors, for failure messages.
    problems: Vec<String>,
}

impl Cdp {
    async fn connect(url: &str) -> Cdp {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("connect to Chromium's DevTools websocket");
        Cdp {
            ws,
            next_id: 0,
            session: None,
            problems: Vec::new(),
        }
    }

    /// Sends one command and waits for its answer; events read meanwhile are noted.
    async fn call(&mut self, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if let Some(s) = &self.session {
            msg["sessionId"] = json!(s);
        }
        self.ws
            .send(Message::text(msg.to_string()))
            .await
            .expect("send to Chromium");
        let read = async {
            loop {
                let m = self
                    .ws
                    .next()
                    .await
                    .expect("Chromium closed the DevTools connection")
                    .expect("DevTools websocket");
                let Message::Text(text) = m else { continue };
                let v: Value = serde_json::from_str(text.as_str()).expect("DevTools JSON");
                if v["id"] == id {
                    if let Some(e) = v.get("error") {
                        panic!("{method} failed: {e}");
                    }
                    return v["result"].clone();
                }
                self.note(&v);
            }
        };
        tokio::time::timeout(Duration::from_secs(30), read)
            .await
            .unwrap_or_else(|_| panic!("{method}: no answer from Chromium in 30 s"))
    }

    fn note(&mut self, event: &Value) {
        match event["method"].as_str() {
            Some("Runtime.exceptionThrown") => self.problems.push(format!(
                "exception: {}",
                event["params"]["exceptionDetails"]
            )),
            Some("Runtime.consoleAPICalled") if event["params"]["type"] == "error" => self
                .problems
                .push(format!("console.error: {}", event["params"]["args"])),
            _ => {}
        }
    }

    /// Evaluates `expr` in the page (awaiting a promise) and returns its value.
    async fn eval(&mut self, expr: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expr, "returnByValue": true, "awaitPromise": true}),
            )
            .await;
        if let Some(e) = r.get("exceptionDetails") {
            panic!("evaluating {expr}: {e}; page problems: {:?}", self.problems);
        }
        r["result"]["value"].clone()
    }

    /// Polls `expr` until it is `true`; returns how long that took.
    async fn wait_for(&mut self, what: &str, expr: &str) -> Duration {
        let start = Instant::now();
        loop {
            if self.eval(expr).await == json!(true) {
                return start.elapsed();
            }
            if start.elapsed() > DEADLINE {
                let text = self
                    .eval("document.body ? document.body.innerText : ''")
                    .await;
                panic!(
                    "timed out after {DEADLINE:?} waiting for {what}; page problems: {:?}; page text:\n{}",
                    self.problems,
                    text.as_str().unwrap_or_default()
                );
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    async fn click(&mut self, id: &str) {
        let clicked = self
            .eval(&format!(
                "(() => {{ const b = document.getElementById({id:?}); \
                 if (!b || b.disabled || b.offsetParent === null) return false; \
                 b.click(); return true; }})()"
            ))
            .await;
        assert_eq!(
            clicked,
            json!(true),
            "#{id} is missing, hidden or disabled; page problems: {:?}",
            self.problems
        );
    }

    async fn screenshot(&mut self, dir: &Path, name: &str) -> PathBuf {
        let r = self
            .call(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true}),
            )
            .await;
        let png = base64_decode(r["data"].as_str().expect("screenshot data"));
        assert!(png.starts_with(b"\x89PNG"), "screenshot is not a PNG");
        let path = dir.join(name);
        std::fs::write(&path, png).expect("write screenshot");
        println!("screenshot: {}", path.display());
        path
    }
}

fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a') as u32 + 26,
            b'0'..=b'9' => (c - b'0') as u32 + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let bytes: Vec<u8> = s.bytes().filter(|&c| c != b'=' && c != b'\n').collect();
    let mut out = Vec::with_capacity(bytes.len() * 3 / 4);
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= val(c) << (18 - 6 * i);
        }
        let b = n.to_be_bytes();
        out.extend_from_slice(&b[1..chunk.len()]);
    }
    out
}

const LIVE_IS: &str = "document.getElementById('live-slot').textContent === ";

/// A new tab of `chromium`, attached, 1280×1000.
async fn new_page(chromium: &Chromium) -> Cdp {
    let mut cdp = Cdp::connect(&chromium.ws_url).await;
    let target = cdp
        .call("Target.createTarget", json!({"url": "about:blank"}))
        .await;
    let attached = cdp
        .call(
            "Target.attachToTarget",
            json!({"targetId": target["targetId"], "flatten": true}),
        )
        .await;
    cdp.session = Some(
        attached["sessionId"]
            .as_str()
            .expect("session id")
            .to_owned(),
    );
    cdp.call("Page.enable", json!({})).await;
    cdp.call("Runtime.enable", json!({})).await;
    cdp.call(
        "Emulation.setDeviceMetricsOverride",
        json!({"width": 1280, "height": 1000, "deviceScaleFactor": 1, "mobile": false}),
    )
    .await;
    cdp
}

/// Opens the dashboard at `admin` (HOST:PORT) and waits for its token form.
async fn open_login(cdp: &mut Cdp, admin: &str) {
    let url = format!("http://{admin}/");
    let nav = cdp.call("Page.navigate", json!({"url": url})).await;
    assert!(nav.get("errorText").is_none(), "navigating to {url}: {nav}");
    cdp.wait_for(
        "the token form",
        "document.readyState === 'complete' && !!document.getElementById('token-form') \
         && !document.getElementById('login').hidden",
    )
    .await;
}

/// Enters the admin token in the form.
async fn log_in(cdp: &mut Cdp) {
    cdp.eval(&format!(
        "document.getElementById('token-input').value = {TOKEN:?}; \
         document.getElementById('token-form').requestSubmit(); true"
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_switches_and_rolls_back_in_a_real_browser() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let router = Router::start(
        Path::new(env!("CARGO_BIN_EXE_turnout")),
        &RouterOptions {
            blue: vec![blue.upstream()],
            green: vec![green.upstream()],
            blue_version: Some("v1.4.2".into()),
            green_version: Some("v1.5.0".into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    eventually("both slots healthy", DEADLINE, || async {
        let s = router.status().await;
        (s["slots"]["blue"]["upstreams"][0]["healthy"] == true
            && s["slots"]["green"]["upstreams"][0]["healthy"] == true)
            .then_some(())
    })
    .await;
    // A little traffic, so that the charts have lines.
    let load = Load::start(&router.data, "/", 2, Duration::from_millis(20));

    let dir = artifacts_dir();
    let chromium = Chromium::start();
    let mut cdp = new_page(&chromium).await;
    open_login(&mut cdp, &router.admin.to_string()).await;
    cdp.screenshot(&dir, "01-token-form.png").await;
    log_in(&mut cdp).await;
    cdp.wait_for("blue live", &format!("{LIVE_IS}'blue'")).await;
    // Let a few chart points arrive before the picture.
    cdp.wait_for(
        "the charts",
        "(document.querySelector('#chart-rps path.line-blue')?.getAttribute('d') || '').split('L').length > 3",
    )
    .await;
    let token_kept = cdp
        .eval("sessionStorage.getItem('turnout.admin-token')")
        .await;
    assert_eq!(token_kept, json!(TOKEN), "token kept in session storage");
    cdp.screenshot(&dir, "02-blue-live.png").await;

    cdp.click("btn-switch").await;
    cdp.wait_for(
        "the switch confirmation",
        "document.getElementById('confirm').open && \
         document.getElementById('confirm-ok').textContent === 'Switch to green'",
    )
    .await;
    cdp.screenshot(&dir, "03-confirm-switch.png").await;
    cdp.click("confirm-ok").await;
    let took = cdp
        .wait_for("green live", &format!("{LIVE_IS}'green'"))
        .await;
    println!("green shown live {took:?} after the confirmation click");
    assert_eq!(router.status().await["live"], "green");
    cdp.screenshot(&dir, "04-green-live.png").await;

    cdp.click("btn-rollback").await;
    cdp.wait_for(
        "the rollback confirmation",
        "document.getElementById('confirm').open",
    )
    .await;
    cdp.click("confirm-ok").await;
    let took = cdp
        .wait_for("blue live again", &format!("{LIVE_IS}'blue'"))
        .await;
    println!("blue shown live {took:?} after the rollback confirmation");
    assert_eq!(router.status().await["live"], "blue");
    cdp.wait_for(
        "the rollback message",
        "document.getElementById('message').textContent === 'Rollback: done.'",
    )
    .await;
    cdp.screenshot(&dir, "05-rolled-back.png").await;

    // A refused action shows the API's own message: green's only upstream goes down,
    // and a switch to it is refused.
    green.set_healthy(false);
    cdp.wait_for(
        "green shown down",
        "document.querySelector('#slot-green .ups li.health-bad') !== null",
    )
    .await;
    cdp.click("btn-switch").await;
    cdp.wait_for(
        "the confirmation",
        "document.getElementById('confirm').open",
    )
    .await;
    cdp.click("confirm-ok").await;
    cdp.wait_for(
        "the refusal",
        "document.getElementById('message').textContent.startsWith('Switch to green failed: ')",
    )
    .await;
    assert_eq!(router.status().await["live"], "blue");
    cdp.screenshot(&dir, "06-refused.png").await;

    // A deployment stopped at its manual gate: the timeline shows its stages, and abort
    // (through the page) ends it.
    green.set_healthy(true);
    let next = Backend::start("green-next").await;
    let (code, body) = router
        .api(
            http::Method::POST,
            "/api/v1/deployments",
            Some(json!({"version": "v1.6.0", "upstreams": [next.upstream()], "manual": true})),
        )
        .await;
    assert_eq!(code, http::StatusCode::ACCEPTED, "{body}");
    cdp.wait_for(
        "the deployment at its gate",
        "[...document.querySelectorAll('#deployment .timeline li.st-running .name')]\
         .some((e) => e.textContent === 'manual gate') && !document.getElementById('btn-abort').disabled",
    )
    .await;
    cdp.screenshot(&dir, "07-deployment-at-gate.png").await;
    cdp.click("btn-abort").await;
    cdp.wait_for(
        "the abort confirmation",
        "document.getElementById('confirm').open",
    )
    .await;
    cdp.click("confirm-ok").await;
    cdp.wait_for(
        "the deployment aborted",
        "document.querySelector('#deployment .verdict')?.textContent === 'aborted'",
    )
    .await;
    cdp.screenshot(&dir, "08-aborted.png").await;
    // The same page for an operator whose system asks for a dark scheme.
    cdp.call(
        "Emulation.setEmulatedMedia",
        json!({"features": [{"name": "prefers-color-scheme", "value": "dark"}]}),
    )
    .await;
    cdp.screenshot(&dir, "09-dark.png").await;

    assert!(
        cdp.problems.is_empty(),
        "the page had errors: {:?}",
        cdp.problems
    );
    let samples = load.stop().await;
    assert!(!samples.is_empty());
    drop(cdp);
    drop(chromium);
}

/// A fleet's follower: its dashboard shows the running deployment, but promote and abort
/// (which run on the leader) are disabled and say where the leader's dashboard is, and the
/// fleet line links to it; switches work on any replica.
#[cfg(feature = "etcd")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_followers_dashboard_sends_the_operator_to_the_leader_for_deployments() {
    let etcd = turnout_testkit::Etcd::start().await.unwrap();
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let mut routers = Vec::new();
    for _ in 0..2 {
        let r = Router::start(
            Path::new(env!("CARGO_BIN_EXE_turnout")),
            &RouterOptions {
                blue: vec![blue.upstream()],
                green: vec![green.upstream()],
                state_extra: etcd.state_config("/turnout/dash"),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        routers.push(r);
    }
    let leader = eventually("a leader", DEADLINE, || async {
        for (i, r) in routers.iter().enumerate() {
            if r.status().await["fleet"]["leader"] == true {
                return Some(i);
            }
        }
        None
    })
    .await;
    let (leader, follower) = (&routers[leader], &routers[1 - leader]);
    let next = Backend::start("green-next").await;
    let (code, body) = leader
        .api(
            http::Method::POST,
            "/api/v1/deployments",
            Some(json!({"version": "v2", "upstreams": [next.upstream()], "manual": true})),
        )
        .await;
    assert_eq!(code, http::StatusCode::ACCEPTED, "{body}");

    let dir = artifacts_dir();
    let chromium = Chromium::start();
    let mut cdp = new_page(&chromium).await;
    open_login(&mut cdp, &follower.admin.to_string()).await;
    log_in(&mut cdp).await;
    cdp.wait_for(
        "the leader's deployment at its gate, on the follower",
        "[...document.querySelectorAll('#deployment .timeline li.st-running .name')]\
         .some((e) => e.textContent === 'manual gate')",
    )
    .await;
    let leader_url = format!("http://{}", leader.admin);
    for id in ["btn-promote", "btn-abort", "btn-rollback"] {
        let button = cdp
            .eval(&format!(
                "(() => {{ const b = document.getElementById('{id}'); return [b.disabled, b.title]; }})()"
            ))
            .await;
        assert_eq!(
            button[0],
            json!(true),
            "{id} is enabled on a follower: {button}"
        );
        let title = button[1].as_str().unwrap_or_default();
        assert!(
            title.contains("leader") && title.contains(&leader_url),
            "{id}: {title:?}"
        );
    }
    let link = cdp
        .eval("document.querySelector('#fleet a')?.getAttribute('href') || ''")
        .await;
    assert_eq!(link, json!(format!("{leader_url}/")));
    // Switching is not the leader's alone (when no deployment owns the routing, any
    // replica switches): the follower keeps its switch button.
    let switch_enabled = cdp
        .eval("!document.getElementById('btn-switch').disabled")
        .await;
    assert_eq!(switch_enabled, json!(true));
    cdp.screenshot(&dir, "10-follower-during-deployment.png")
        .await;
    assert!(
        cdp.problems.is_empty(),
        "the page had errors: {:?}",
        cdp.problems
    );
    drop(cdp);
    drop(chromium);
}
