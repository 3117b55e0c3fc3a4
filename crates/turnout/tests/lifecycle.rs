//! turnout's own lifecycle as operators meet it: `reload`, `upgrade` and SIGUSR2 under
//! steady keep-alive load through a router whose service instances it started, with no
//! failed request and the same instance processes before and after; a refused config and
//! a failed new binary that leave the old router serving; `kill -9`, SIGTERM and `turnout
//! stop`; and systemd socket activation (Debian's `systemd-socket-activate`), where a
//! restart refuses no connection.

use std::path::{Path, PathBuf};
use std::time::Duration;

use http::Method;
use serde_json::Value;
use turnout_testkit::{
    describe_failures, eventually, processes_with_args, toml_str, Backend, Load, Router,
    RouterOptions, Sample, Shop,
};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_turnout"))
}

/// Between two requests of one load client.
const PACE: Duration = Duration::from_millis(5);
const DEADLINE: Duration = Duration::from_secs(30);

/// A router starting the demo service (two instances) through `[provision]`, with v1
/// deployed and promoted.
async fn router_with_v1(shop: &Shop, extra: &str) -> Router {
    let router = Router::start(
        bin(),
        &RouterOptions {
            extra: format!(
                "[provision]\ncommand = {}\ninstances = 2\nhealth_timeout = \"20s\"\nstop_timeout = \"5s\"\n\n\
                 [bake]\nduration = \"1s\"\ninterval = \"500ms\"\n\n[decommission]\ndelay = \"1s\"\n\n{extra}\n",
                toml_str(&shop.provision_command(&[]))
            ),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let (code, out, err) = router.cli(&["deploy", "v1"]).await;
    assert_eq!(code, 0, "deploy v1: {out}{err}\n{}", router.stderr());
    router
}

fn sorted(mut v: Vec<u32>) -> Vec<u32> {
    v.sort_unstable();
    v
}

fn assert_no_failure(samples: &[Sample]) {
    assert!(
        samples.iter().all(|s| !s.failed()),
        "{}",
        describe_failures(samples)
    );
}

/// Waits until the load has `more` answers beyond what it has now.
async fn more_answers(load: &Load, more: usize) {
    let target = load.count() + more;
    eventually(&format!("{more} more answers"), DEADLINE, || async {
        (load.count() >= target).then_some(())
    })
    .await;
}

/// The number after `word` in `text` (`pid 1234`).
fn number_after(text: &str, word: &str) -> u32 {
    let at = text
        .find(word)
        .unwrap_or_else(|| panic!("no {word:?} in {text:?}"));
    text[at + word.len()..]
        .trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no number after {word:?} in {text:?}"))
}

/// The `turnout serve` processes running `config`.
fn serving(config: &Path) -> Vec<u32> {
    let config = config.to_str().expect("a UTF-8 path");
    processes_with_args(&["serve", config])
        .into_iter()
        .map(|(pid, _)| pid)
        .filter(|pid| turnout_testkit::router::running(*pid))
        .collect()
}

fn write_config(router: &Router, text: &str) {
    std::fs::write(&router.config, text).expect("write the config");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_upgrade_and_sigusr2_fail_no_request_and_keep_the_instances() {
    let shop = Shop::new(bin());
    let mut router = router_with_v1(&shop, "").await;
    let instances = sorted(shop.instances("v1"));
    assert_eq!(instances.len(), 2, "v1 runs two instances");
    let original = std::fs::read_to_string(&router.config).unwrap();
    let load = Load::start(&router.data, "/api/items", 4, PACE);
    more_answers(&load, 100).await;

    // reload: turn on the access log, which no request wrote to before.
    let access = router.dir().join("access.log");
    let reloaded = format!(
        "{original}\n[log]\naccess = {}\n",
        toml_str(access.to_str().unwrap())
    );
    write_config(&router, &reloaded);
    let before = router.pid().unwrap();
    let (code, out, err) = router.cli(&["reload"]).await;
    assert_eq!(code, 0, "reload: {out}{err}\n{}", router.stderr());
    assert!(
        out.contains("log.access: (not set) ->"),
        "reload says what changed: {out}"
    );
    let new = number_after(&out, "now pid");
    assert_ne!(new, before, "a new router process serves: {out}");
    assert_eq!(
        router.handed_over(new).await.unwrap(),
        Some(0),
        "the old process drains and exits 0"
    );
    more_answers(&load, 100).await;
    eventually("requests in the access log", DEADLINE, || async {
        std::fs::read_to_string(&access)
            .is_ok_and(|t| t.contains("/api/items"))
            .then_some(())
    })
    .await;
    assert_eq!(
        sorted(shop.instances("v1")),
        instances,
        "the same instances after reload"
    );

    // A config with errors changes nothing: exit 2, the error with its key.
    write_config(
        &router,
        &format!("{reloaded}\n[runtime]\nworker_threads = \"many\"\n"),
    );
    let (code, out, err) = router.cli(&["reload"]).await;
    assert_eq!(code, 2, "a broken config: {out}{err}");
    assert!(
        err.contains("runtime.worker_threads"),
        "the error names the key: {err}"
    );
    assert_eq!(router.pid(), Some(new), "the same process serves");
    assert_eq!(serving(&router.config), [new], "and no other");
    write_config(&router, &reloaded);
    more_answers(&load, 50).await;

    // upgrade: the binary at the path the router was started from.
    let (code, out, err) = router.cli(&["upgrade"]).await;
    assert_eq!(code, 0, "upgrade: {out}{err}\n{}", router.stderr());
    let upgraded = number_after(&out, "upgraded: pid");
    assert_eq!(number_after(&out, "; pid"), new, "both pids: {out}");
    assert_ne!(upgraded, new);
    router.handed_over(upgraded).await.unwrap();
    more_answers(&load, 100).await;
    assert_eq!(
        sorted(shop.instances("v1")),
        instances,
        "the same instances after upgrade"
    );

    // SIGUSR2: the same, from a signal.
    let status = std::process::Command::new("kill")
        .args(["-USR2", &upgraded.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let by_signal = eventually("a new router process after SIGUSR2", DEADLINE, || async {
        serving(&router.config).into_iter().find(|p| *p != upgraded)
    })
    .await;
    router.handed_over(by_signal).await.unwrap();
    more_answers(&load, 100).await;
    assert_eq!(
        sorted(shop.instances("v1")),
        instances,
        "the same instances after SIGUSR2"
    );

    // The control plane moved along: the new process answers and still changes routing.
    let (code, body) = router.api(Method::GET, "/api/v1/status", None).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["live"], "blue", "{body:#}");

    let samples = load.stop().await;
    assert!(samples.len() > 400, "{} answers", samples.len());
    assert_no_failure(&samples);
    router.stop_service().await;
    eventually("no instance after turnout stop", DEADLINE, || async {
        shop.instances("v1").is_empty().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_upgrade_or_a_refused_config_leaves_the_old_router_serving() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let router = Router::start(
        bin(),
        &RouterOptions {
            blue: vec![blue.addr.to_string()],
            green: vec![green.addr.to_string()],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let pid = router.pid().unwrap();
    let load = Load::start(&router.data, "/", 4, PACE);
    more_answers(&load, 100).await;

    // A binary that exits at once.
    let (code, out, err) = router.cli(&["upgrade", "--binary", "/bin/false"]).await;
    assert_eq!(code, 1, "{out}{err}");
    assert!(
        err.contains("exited") && err.contains("goes on serving"),
        "says what happened: {err}"
    );
    // A binary that does not exist.
    let (code, _, err) = router
        .cli(&["upgrade", "--binary", "/nonexistent/turnout"])
        .await;
    assert_ne!(code, 0);
    assert!(err.contains("/nonexistent/turnout"), "{err}");
    // A config the new process refuses (it checks what `reload` does not: the TLS files).
    let original = std::fs::read_to_string(&router.config).unwrap();
    let broken = original.replace(
        "[admin]",
        "[listen.tls]\naddr = \"127.0.0.1:0\"\ncert = \"/nonexistent/cert.pem\"\nkey = \"/nonexistent/key.pem\"\n\n[admin]",
    );
    write_config(&router, &broken);
    let (code, _, err) = router.cli(&["upgrade"]).await;
    assert_eq!(code, 1, "{err}");
    assert!(
        err.contains("cert.pem"),
        "the new process's own error: {err}"
    );
    write_config(&router, &original);

    more_answers(&load, 100).await;
    assert_eq!(
        serving(&router.config),
        [pid],
        "the old router still serves, alone"
    );
    // Its control plane works again: a switch goes through.
    let (code, body) = router.switch_to("green").await;
    assert_eq!(code, 200, "{body}");
    eventually("answers from green", DEADLINE, || async {
        (load.count_from("green") > 20).then_some(())
    })
    .await;
    let samples = load.stop().await;
    assert_no_failure(&samples);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_outlives_the_router_until_turnout_stop() {
    let shop = Shop::new(bin());
    let mut router = router_with_v1(&shop, "").await;
    let instances = sorted(shop.instances("v1"));
    assert_eq!(instances.len(), 2);

    // SIGTERM stops the router only; the next start takes the instances over.
    assert_eq!(
        router.terminate().await.unwrap(),
        Some(0),
        "{}",
        router.stderr()
    );
    assert_eq!(
        sorted(shop.instances("v1")),
        instances,
        "v1 runs on after SIGTERM"
    );
    router.restart().await.unwrap();
    assert_eq!(
        sorted(shop.instances("v1")),
        instances,
        "adopted after a restart"
    );
    let reply = turnout_testkit::HttpClient::http1(&router.data)
        .await
        .unwrap()
        .get("/api/items")
        .await
        .unwrap();
    assert_eq!(reply.status, 200);

    // kill -9, and one instance dies while no router runs: the other is adopted, the dead
    // one started again on its port.
    let s = router.status().await;
    let addrs: Vec<Value> = s["slots"]["blue"]["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["addr"].clone())
        .collect();
    router.kill9().await;
    let victim = instances[0];
    let _ = std::process::Command::new("kill")
        .args(["-KILL", &victim.to_string()])
        .status();
    eventually("the killed instance is gone", DEADLINE, || async {
        (!shop.instances("v1").contains(&victim)).then_some(())
    })
    .await;
    router.restart().await.unwrap();
    let now = sorted(shop.instances("v1"));
    assert_eq!(now.len(), 2, "{now:?}");
    assert!(
        now.contains(&instances[1]),
        "the survivor was adopted: {now:?} vs {instances:?}"
    );
    assert!(!now.contains(&victim), "{now:?}");
    let s = router.status().await;
    let after: Vec<Value> = s["slots"]["blue"]["upstreams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["addr"].clone())
        .collect();
    assert_eq!(after, addrs, "on the same ports: {s:#}");
    router.await_healthy().await;
    let load = Load::start(&router.data, "/api/items", 2, PACE);
    more_answers(&load, 50).await;
    assert_no_failure(&load.stop().await);

    // `turnout stop`: the router and the service.
    router.stop_service().await;
    eventually("no instance after turnout stop", DEADLINE, || async {
        shop.instances("v1").is_empty().then_some(())
    })
    .await;
}

/// A free port on 127.0.0.1 (free now).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills a process (and what it started) when dropped.
struct Supervisor {
    child: std::process::Child,
    dir: PathBuf,
    config: PathBuf,
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        let _ = std::fs::write(self.dir.join("stop"), "");
        for pid in serving(&self.config) {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_socket_activation_a_restart_refuses_no_connection() {
    let activate = Path::new("/usr/bin/systemd-socket-activate");
    assert!(
        activate.exists(),
        "this test needs Debian's systemd-socket-activate (package systemd; scripts/test-all.sh installs it)"
    );
    let backend = Backend::start("blue").await;
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = dir.path().join("turnout.toml");
    std::fs::write(
        &config,
        format!(
            "[listen]\naddr = \"127.0.0.1:{port}\"\n\n[admin]\naddr = \"127.0.0.1:0\"\n\n\
             [state]\ndir = {}\n\n[slots.blue]\nupstreams = [\"{}\"]\n",
            toml_str(dir.path().join("state").to_str().unwrap()),
            backend.addr
        ),
    )
    .unwrap();
    // systemd's part: the socket is bound once, by systemd-socket-activate, and kept open
    // by the shell loop below across router restarts (as systemd keeps a socket unit's);
    // each router gets it as fd 3 with LISTEN_PID set to its own pid.
    let script = format!(
        "while [ ! -e {stop} ]; do sh -c \"LISTEN_PID=\\$\\$ exec {bin} serve --config {config}\"; done",
        stop = turnout_testkit::sh_quote(dir.path().join("stop").to_str().unwrap()),
        bin = turnout_testkit::sh_quote(bin().to_str().unwrap()),
        config = turnout_testkit::sh_quote(config.to_str().unwrap()),
    );
    let child = std::process::Command::new(activate)
        .args([
            "-l",
            &format!("127.0.0.1:{port}"),
            "--fdname=data",
            "sh",
            "-c",
            &script,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("stderr.log")).unwrap())
        .spawn()
        .unwrap();
    let _supervisor = Supervisor {
        child,
        dir: dir.path().to_owned(),
        config: config.clone(),
    };
    let addr = format!("127.0.0.1:{port}");
    // The listening socket exists before any router: the first connection starts one.
    eventually("the socket listens", DEADLINE, || async {
        tokio::net::TcpStream::connect(&addr).await.ok().map(|_| ())
    })
    .await;
    let load = Load::start(&addr, "/", 4, PACE);
    more_answers(&load, 100).await;
    let log = || std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default();
    assert!(
        log().contains("socket passed by systemd"),
        "the router took the socket systemd passed: {}",
        log()
    );
    for round in 0..3 {
        let pids = serving(&config);
        assert_eq!(pids.len(), 1, "round {round}: {pids:?}");
        let _ = std::process::Command::new("kill")
            .args(["-TERM", &pids[0].to_string()])
            .status();
        eventually("a new router process", DEADLINE, || async {
            serving(&config)
                .into_iter()
                .find(|p| *p != pids[0])
                .map(|_| ())
        })
        .await;
        more_answers(&load, 100).await;
    }
    let samples = load.stop().await;
    let refused: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.error.as_deref().is_some_and(|e| e.contains("refused")))
        .collect();
    assert!(
        refused.is_empty(),
        "{} connections refused during restarts:\n{}",
        refused.len(),
        describe_failures(&samples)
    );
    assert!(
        backend.requests() > 300,
        "{} requests served",
        backend.requests()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_during_a_bake_keeps_the_deployment_going_with_its_own_settings() {
    let shop = Shop::new(bin());
    let mut router = router_with_v1(&shop, "").await;
    let original = std::fs::read_to_string(&router.config).unwrap();
    // v2 bakes for 4 s under load.
    let config = original.replace("duration = \"1s\"", "duration = \"4s\"");
    write_config(&router, &config);
    let (code, out, err) = router.cli(&["reload"]).await;
    assert_eq!(code, 0, "{out}{err}");
    router
        .handed_over(number_after(&out, "now pid"))
        .await
        .unwrap();
    let load = Load::start(&router.data, "/api/items", 2, PACE);
    let (code, out, err) = router.cli(&["deploy", "v2", "--detach"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let id = out.split_whitespace().nth(1).unwrap().to_owned();
    eventually("the bake", DEADLINE, || async {
        (router.status().await["deployment"]["stage"] == "bake").then_some(())
    })
    .await;
    let v2 = sorted(shop.instances("v2"));
    assert_eq!(v2.len(), 2);

    // A reload that would make the bake last ten minutes: this deployment keeps its 4 s.
    write_config(
        &router,
        &config.replace("duration = \"4s\"", "duration = \"10m\""),
    );
    let (code, out, err) = router.cli(&["reload"]).await;
    assert_eq!(code, 0, "{out}{err}\n{}", router.stderr());
    assert!(out.contains("bake.duration: \"4s\" -> \"10m\""), "{out}");
    assert!(
        out.contains("settings it started with"),
        "the reload says so: {out}"
    );
    router
        .handed_over(number_after(&out, "now pid"))
        .await
        .unwrap();
    let path = format!("/api/v1/deployments/{id}");
    let d = eventually("the bake to end", DEADLINE, || async {
        let (code, d) = router.api(Method::GET, &path, None).await;
        assert_eq!(code, 200, "{d}");
        (d["verdict"] != "in_progress").then_some(d)
    })
    .await;
    assert_eq!(d["verdict"], "promoted", "{d:#}");
    assert_eq!(
        sorted(shop.instances("v2")),
        v2,
        "v2 ran on through the reload"
    );
    more_answers(&load, 50).await;
    let samples = load.stop().await;
    assert_no_failure(&samples);
    assert!(samples.iter().any(|s| s.from("v2")));
    router.stop_service().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_a_reload_adds_takes_traffic_only_once_its_health_check_passes() {
    let blue = Backend::start("blue").await;
    let added = Backend::start("added").await;
    added.set_healthy(false);
    added.set_failing(true);
    let mut router = Router::start(
        bin(),
        &RouterOptions {
            blue: vec![blue.addr.to_string()],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let load = Load::start(&router.data, "/", 4, PACE);
    more_answers(&load, 50).await;
    let original = std::fs::read_to_string(&router.config).unwrap();
    let one = format!("upstreams = [\"{}\"]", blue.addr);
    assert!(original.contains(&one), "{original}");
    // Its first check takes 2 s to fail: two seconds in which an unchecked upstream would
    // get users' requests, if it were not held back until a check passed.
    added.set_health_delay(Duration::from_secs(2));
    let config = original
        .replacen(
            &one,
            &format!("upstreams = [\"{}\", \"{}\"]", blue.addr, added.addr),
            1,
        )
        .replace("timeout = \"500ms\"", "timeout = \"5s\"");
    write_config(&router, &config);
    let (code, out, err) = router.cli(&["reload"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("slots.blue.upstreams"), "{out}");
    router
        .handed_over(number_after(&out, "now pid"))
        .await
        .unwrap();
    // Unchecked, then failing its health check, the new upstream gets no user request.
    let until = tokio::time::Instant::now() + Duration::from_secs(3);
    while tokio::time::Instant::now() < until {
        more_answers(&load, 100).await;
    }
    assert_eq!(
        added.requests(),
        0,
        "requests reached the unchecked upstream"
    );
    assert_no_failure(&load.samples());
    // Healthy, it does.
    added.set_health_delay(Duration::ZERO);
    added.set_failing(false);
    added.set_healthy(true);
    eventually("answers from the added upstream", DEADLINE, || async {
        (load.count_from("added") > 20).then_some(())
    })
    .await;
    assert_no_failure(&load.stop().await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_waits_for_a_deployment_before_its_bake() {
    let shop = Shop::new(bin());
    let mut router = router_with_v1(&shop, "").await;
    let pid = router.pid().unwrap();
    let (code, out, err) = router.cli(&["deploy", "v2", "--manual", "--detach"]).await;
    assert_eq!(code, 0, "{out}{err}");
    eventually("the manual gate", DEADLINE, || async {
        (router.status().await["deployment"]["stage"] == "gate").then_some(())
    })
    .await;
    let config = std::fs::read_to_string(&router.config).unwrap();
    write_config(&router, &config.replace("delay = \"1s\"", "delay = \"2s\""));
    let (code, out, err) = router.cli(&["reload"]).await;
    assert_eq!(code, 1, "refused at the gate: {out}{err}");
    assert!(err.contains("promote or abort"), "says what to do: {err}");
    assert_eq!(router.pid(), Some(pid));
    assert_eq!(serving(&router.config), [pid], "no new process");
    // The deployment is untouched: it still waits, and can be promoted.
    assert_eq!(router.status().await["deployment"]["stage"], "gate");
    let (code, out, err) = router.cli(&["abort"]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("ABORTED"), "{out}");
    let (code, out, err) = router.cli(&["reload"]).await;
    assert_eq!(code, 0, "after the abort: {out}{err}");
    router
        .handed_over(number_after(&out, "now pid"))
        .await
        .unwrap();
    router.stop_service().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upgrade_lets_websockets_run_for_upgrade_drain_then_closes_them_going_away() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    use tokio_tungstenite::tungstenite::Message;

    let blue = Backend::start("blue").await;
    let mut router = Router::start(
        bin(),
        &RouterOptions {
            blue: vec![blue.addr.to_string()],
            listen_extra: "upgrade_drain = \"2s\"\n".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let tcp = tokio::net::TcpStream::connect(&router.data).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{}/ws", router.data), tcp)
        .await
        .expect("WebSocket handshake through turnout");
    let echo = async |ws: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
                      text: &str| {
        ws.send(Message::text(text)).await.expect("send");
        match tokio::time::timeout(DEADLINE, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => assert_eq!(t.as_str(), format!("blue:{text}")),
            other => panic!("expected a reply to {text}, got {other:?}"),
        }
    };
    echo(&mut ws, "before").await;
    let (code, out, err) = router.cli(&["upgrade"]).await;
    assert_eq!(code, 0, "{out}{err}");
    let upgraded = std::time::Instant::now();
    // The old process still relays the WebSocket it holds.
    echo(&mut ws, "after").await;
    let close = tokio::time::timeout(DEADLINE, ws.next())
        .await
        .expect("no Close frame within the deadline");
    match close {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Away),
        other => panic!("expected a Close frame with code 1001, got {other:?}"),
    }
    assert!(
        upgraded.elapsed() >= Duration::from_millis(1500),
        "closed {:?} after the upgrade, before upgrade_drain",
        upgraded.elapsed()
    );
    let _ = ws.close(None).await;
    drop(ws);
    router
        .handed_over(number_after(&out, "upgraded: pid"))
        .await
        .unwrap();
    // A new WebSocket goes to the new process.
    let tcp = tokio::net::TcpStream::connect(&router.data).await.unwrap();
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{}/ws", router.data), tcp)
        .await
        .expect("WebSocket handshake through the new process");
    echo(&mut ws, "new").await;
}
