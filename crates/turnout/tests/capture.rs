//! `turnout capture` and `turnout replay` end to end: a real router in front of real
//! backends, the CLI as a process, the files read back with `turnout_shadow::goreplay`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use turnout_shadow::goreplay::{self, Record, RecordType, Writer};
use turnout_testkit::{eventually, Backend, HttpClient, Router, RouterOptions, TOKEN};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_turnout"))
}

async fn router_in_front_of(backend: &Backend) -> Router {
    let router = Router::start(
        bin(),
        &RouterOptions {
            blue: vec![backend.upstream()],
            ..Default::default()
        },
    )
    .await
    .expect("start router");
    eventually("blue healthy", Duration::from_secs(10), || async {
        let s = router.status().await;
        (s["slots"]["blue"]["upstreams"][0]["healthy"] == true).then_some(())
    })
    .await;
    router
}

/// A running `turnout capture`, once it has said the router taps traffic.
struct Capture {
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
}

async fn start_capture(router: &Router, args: &[&str]) -> Capture {
    let mut child = Command::new(bin())
        .arg("capture")
        .args(args)
        .arg("--admin")
        .arg(format!("http://{}", router.admin))
        .env("TURNOUT_ADMIN_TOKEN", TOKEN)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run turnout capture");
    let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let first = tokio::time::timeout(Duration::from_secs(20), stdout.next_line())
        .await
        .expect("capture starts within 20s")
        .expect("read stdout")
        .unwrap_or_default();
    assert!(first.starts_with("capturing to "), "{first:?}");
    Capture { child, stdout }
}

impl Capture {
    /// Waits (bounded) for the exit; returns the exit code, the rest of stdout, stderr.
    async fn finish(mut self) -> (i32, String, String) {
        let mut rest = String::new();
        let mut err = String::new();
        let mut stderr = self.child.stderr.take().expect("stderr");
        let run = async {
            while let Ok(Some(l)) = self.stdout.next_line().await {
                rest.push_str(&l);
                rest.push('\n');
            }
            let _ = stderr.read_to_string(&mut err).await;
            self.child.wait().await
        };
        let status = tokio::time::timeout(Duration::from_secs(30), run)
            .await
            .expect("capture ends within 30s")
            .expect("wait for capture");
        (status.code().unwrap_or(-1), rest, err)
    }
}

/// Every record of the files, in order; panics on any format error.
fn read_records(paths: &[PathBuf]) -> Vec<Record> {
    let mut all = Vec::new();
    for p in paths {
        for item in goreplay::open(p).expect("open capture") {
            all.push(item.unwrap_or_else(|e| panic!("{}: {e}", p.display())));
        }
    }
    all
}

fn replay_report(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).expect("report written")).expect("JSON")
}

/// The requests of the round trip: (method, path, body, over HTTP/2).
const REQUESTS: &[(&str, &str, &str, bool)] = &[
    ("GET", "/items?x=1&y=two", "", false),
    ("POST", "/orders", "{\"item\":7,\"qty\":2}", false),
    (
        "POST",
        "/upload",
        "line one\nline two\n\nline four\n",
        false,
    ),
    ("GET", "/h2/items?page=3", "", true),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capture_then_replay_round_trip() {
    let alpha = Backend::start("alpha").await;
    let beta = Backend::start("beta").await;
    let router = router_in_front_of(&alpha).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.gor.gz");
    let file_s = file.display().to_string();

    let capture = start_capture(&router, &["--out", &file_s, "--duration", "3s"]).await;
    let mut h1 = HttpClient::http1(&router.data).await.unwrap();
    let mut h2 = HttpClient::http2(&router.data).await.unwrap();
    for (method, path, body, over_h2) in REQUESTS {
        let client = if *over_h2 { &mut h2 } else { &mut h1 };
        let headers: &[(&str, &str)] = if body.starts_with('{') {
            &[("content-type", "application/json")]
        } else {
            &[]
        };
        let reply = client
            .request(
                Method::from_bytes(method.as_bytes()).unwrap(),
                path,
                headers,
                Bytes::from_static(body.as_bytes()),
            )
            .await
            .expect("request through the router");
        assert_eq!(reply.status, 200, "{method} {path}");
    }
    let (code, stdout, stderr) = capture.finish().await;
    assert_eq!(code, 0, "capture failed: {stdout}\n{stderr}");
    assert!(
        stdout.contains("captured 4 exchanges: 8 records"),
        "{stdout}"
    );
    assert!(stdout.contains("dropped by the router: 0"), "{stdout}");
    assert!(stdout.contains("ended: duration"), "{stdout}");

    // The file: 4 requests and their 4 responses, exactly what was sent.
    let records = read_records(std::slice::from_ref(&file));
    assert!(
        std::fs::read(&file).unwrap().starts_with(&[0x1f, 0x8b]),
        "gzip"
    );
    let requests: Vec<&Record> = records
        .iter()
        .filter(|r| r.kind == RecordType::Request)
        .collect();
    let responses: HashMap<&str, &Record> = records
        .iter()
        .filter(|r| r.kind == RecordType::Response)
        .map(|r| (r.id.as_str(), r))
        .collect();
    assert_eq!((requests.len(), responses.len()), (4, 4), "{records:#?}");
    // Each exchange is written when its response has ended, so two on different
    // connections (HTTP/1.1 and HTTP/2 here) can be written in either order; each request
    // is found by its method and path.
    for (method, path, body, over_h2) in REQUESTS {
        let record = requests
            .iter()
            .find(|r| {
                r.to_request()
                    .is_ok_and(|q| q.method == *method && q.target == *path)
            })
            .unwrap_or_else(|| panic!("no record of {method} {path}: {records:#?}"));
        assert_eq!(record.id.len(), 24, "{}", record.id);
        let req = record.to_request().expect("an HTTP/1.1 request");
        assert_eq!(&req.body[..], body.as_bytes(), "{method} {path}");
        assert!(String::from_utf8_lossy(&record.payload).contains(" HTTP/1.1\r\n"));
        let host = req.headers.iter().find(|(n, _)| n == "host").map(|h| &h.1);
        assert_eq!(
            host.map(|h| &h[..]),
            Some(router.data.as_bytes()),
            "{method} {path} (HTTP/2: {over_h2}) has its Host"
        );
        let resp = responses[record.id.as_str()]
            .to_response(Some(method))
            .expect("an HTTP response");
        assert_eq!(resp.status, 200);
        let want = if *path == "/upload" {
            body.len().to_string()
        } else {
            "alpha".to_string()
        };
        assert_eq!(&resp.body[..], want.as_bytes(), "{path}");
        assert!(responses[record.id.as_str()].timestamp_ns >= record.timestamp_ns);
    }

    // Replayed against the same backend: everything matches.
    let report = dir.path().join("r.json");
    let replayed = dir.path().join("replayed.gor");
    let alpha_url = format!("http://{}", alpha.upstream());
    let (code, out, err) = router
        .cli(&[
            "replay",
            &file_s,
            "--target",
            &alpha_url,
            "--speed",
            "0",
            "--report",
            &report.display().to_string(),
            "--out",
            &replayed.display().to_string(),
        ])
        .await;
    assert_eq!(code, 0, "replay failed: {out}\n{err}");
    let r = replay_report(&report);
    assert_eq!(
        (r["compared"].as_u64(), r["mismatched"].as_u64()),
        (Some(4), Some(0)),
        "{r:#}"
    );
    assert_eq!(
        (
            r["replay"]["sent"].as_u64(),
            r["replay"]["answered"].as_u64()
        ),
        (Some(4), Some(4))
    );
    assert!(out.contains("replayed 4 requests"), "{out}");
    let back = read_records(std::slice::from_ref(&replayed));
    let kinds = |k| back.iter().filter(|r| r.kind == k).count();
    assert_eq!(
        (kinds(RecordType::Request), kinds(RecordType::Replayed)),
        (4, 4)
    );
    for r in back.iter().filter(|r| r.kind == RecordType::Replayed) {
        assert!(responses.contains_key(r.id.as_str()), "type 3 keeps the id");
    }

    // The replayed file reads as input too (type 3 skipped, requests without a recorded
    // response sent but not compared); a slot name as target asks the router.
    let (code, out, err) = router
        .cli(&[
            "replay",
            &replayed.display().to_string(),
            "--target",
            "blue",
            "--speed",
            "0",
            "--report",
            &report.display().to_string(),
        ])
        .await;
    assert_eq!(code, 0, "replay to blue failed: {out}\n{err}");
    let r = replay_report(&report);
    assert_eq!(r["replay"]["sent"], 4, "{r:#}");
    assert_eq!(r["replay"]["not_compared"], 4, "{r:#}");
    assert_eq!(r["replay"]["replayed_records"], 4, "{r:#}");
    assert!(
        r["replay"]["target"]
            .as_str()
            .unwrap()
            .contains(&alpha.upstream()),
        "{r:#}"
    );

    // Against a backend that answers differently: mismatches (the body and x-backend),
    // both against the recording and against --compare-with.
    let beta_url = format!("http://{}", beta.upstream());
    for extra in [&[][..], &["--compare-with", alpha_url.as_str()][..]] {
        let mut args = vec!["replay", &file_s, "--target", &beta_url, "--speed", "0"];
        let report_s = report.display().to_string();
        args.extend(["--report", &report_s]);
        args.extend(extra);
        let (code, out, err) = router.cli(&args).await;
        assert_eq!(code, 0, "mismatches are no failure: {out}\n{err}");
        let r = replay_report(&report);
        assert_eq!(
            (r["compared"].as_u64(), r["mismatched"].as_u64()),
            (Some(4), Some(4)),
            "{extra:?}: {r:#}"
        );
        let fields: Vec<&str> = r["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|e| e["fields"].as_array().unwrap())
            .filter_map(|f| f["path"].as_str())
            .collect();
        assert!(fields.contains(&"header.x-backend"), "{fields:?}");
        assert!(out.contains("4 mismatched"), "{out}");
    }

    // A file with a malformed record and an ambiguous one among the good ones: both
    // reported with their byte offsets and skipped, the others replayed.
    let mut w = Writer::new(Vec::new());
    let mut bad_offsets = Vec::new();
    for (i, r) in records.iter().enumerate() {
        if i == 2 {
            bad_offsets.push(w.get_ref().len());
            let mut raw = std::mem::replace(&mut w, Writer::new(Vec::new())).into_inner();
            raw.extend_from_slice(
                "1 zzzz-not-hex 1 0\nGET /broken HTTP/1.1\r\n\r\n\n🐵🙈🙉\n".as_bytes(),
            );
            w = Writer::new(raw);
        }
        if i == 4 {
            bad_offsets.push(w.get_ref().len());
            let body = "before\n🐵🙈🙉\nafter";
            let text = format!(
                "1 {:024x} {} 0\nPOST /ambiguous HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n{body}\n🐵🙈🙉\n",
                0xbad, r.timestamp_ns, body.len()
            );
            let mut raw = std::mem::replace(&mut w, Writer::new(Vec::new())).into_inner();
            raw.extend_from_slice(text.as_bytes());
            w = Writer::new(raw);
        }
        w.write(r).unwrap();
    }
    let bad = dir.path().join("bad.gor");
    std::fs::write(&bad, w.into_inner()).unwrap();
    let bad_s = bad.display().to_string();
    let (code, out, err) = router
        .cli(&[
            "replay",
            &bad_s,
            "--target",
            &alpha_url,
            "--speed",
            "max",
            "--report",
            &report.display().to_string(),
        ])
        .await;
    assert_eq!(code, 0, "{out}\n{err}");
    for offset in &bad_offsets {
        assert!(
            err.contains(&format!("{bad_s}: at byte {offset}: ")),
            "offset {offset} reported: {err}"
        );
    }
    assert!(err.contains("ambiguous"), "{err}");
    let r = replay_report(&report);
    assert_eq!(
        (r["compared"].as_u64(), r["mismatched"].as_u64()),
        (Some(4), Some(0)),
        "{r:#}"
    );
    assert_eq!(r["replay"]["malformed"], 2, "{r:#}");
    assert!(out.contains("skipped: 2 malformed records"), "{out}");
    // Nothing of the broken records reached the backend: 4 captured, then 4 replayed to
    // alpha, 4 to blue, 4 as --compare-with, 4 from the broken file, and not one more.
    assert_eq!(alpha.requests(), 4 + 4 + 4 + 4 + 4, "backend requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_never_splits_a_record_and_ctrl_c_finishes_the_file() {
    let alpha = Backend::start("alpha").await;
    let router = router_in_front_of(&alpha).await;
    let dir = tempfile::tempdir().unwrap();
    let rotated = dir.path().join("rot").join("c.gor");
    std::fs::create_dir_all(rotated.parent().unwrap()).unwrap();
    let until_ctrl_c = dir.path().join("all.gor.gz");

    // Usage errors exit 2 before anything starts.
    for bad in [
        &["--out", "x.gor", "--sample", "2"][..],
        &["--out", "x.gor", "--max-body", "20MB"][..],
        &["--out", "x.gor", "--rotate-size", "lots"][..],
    ] {
        let mut args = vec!["capture"];
        args.extend(bad);
        let (code, _, err) = router.cli(&args).await;
        assert_eq!(code, 2, "{bad:?}: {err}");
    }

    let forever = start_capture(&router, &["--out", &until_ctrl_c.display().to_string()]).await;
    let capture = start_capture(
        &router,
        &[
            "--out",
            &rotated.display().to_string(),
            "--duration",
            "3s",
            "--rotate-size",
            "700",
        ],
    )
    .await;
    const N: usize = 6;
    let mut h1 = HttpClient::http1(&router.data).await.unwrap();
    for i in 0..N {
        let reply = h1
            .get(&format!("/rotate/{i}?pad={}", "p".repeat(40)))
            .await
            .unwrap();
        assert_eq!(reply.status, 200);
    }
    let (code, stdout, stderr) = capture.finish().await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");

    let mut files: Vec<PathBuf> = std::fs::read_dir(rotated.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort_by_key(|p| {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        name.strip_prefix("c_")
            .and_then(|n| n.strip_suffix(".gor"))
            .and_then(|n| n.parse::<u32>().ok())
            .unwrap_or(0)
    });
    assert!(files.len() >= 3, "several files: {files:?}\n{stdout}");
    assert_eq!(files[0], rotated);
    for (i, f) in files.iter().enumerate().skip(1) {
        assert_eq!(f, &rotated.with_file_name(format!("c_{i}.gor")));
    }
    assert!(
        stdout.contains(&format!("{} files", files.len())),
        "{stdout}"
    );
    let mut ids: HashMap<String, (usize, usize)> = HashMap::new();
    for f in &files {
        // Each file on its own reads without a problem: no record was split.
        let records = read_records(std::slice::from_ref(f));
        assert!(!records.is_empty(), "{}", f.display());
        let size = std::fs::metadata(f).unwrap().len();
        assert!(
            size <= 700 || records.len() == 1,
            "{} is {size} bytes with {} records",
            f.display(),
            records.len()
        );
        for r in records {
            let e = ids.entry(r.id.clone()).or_default();
            match r.kind {
                RecordType::Request => e.0 += 1,
                RecordType::Response => e.1 += 1,
                RecordType::Replayed => panic!("no type 3 in a capture"),
            }
        }
    }
    assert_eq!(ids.len(), N, "{ids:?}");
    assert!(ids.values().all(|&c| c == (1, 1)), "{ids:?}");

    // Ctrl-C: the file is finished (gzip trailer and all) with whole records.
    let pid = forever.child.id().expect("pid");
    let status = std::process::Command::new("kill")
        .args(["-INT", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let (code, stdout, stderr) = forever.finish().await;
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("stopped by Ctrl-C"), "{stdout}");
    let all = read_records(std::slice::from_ref(&until_ctrl_c));
    assert!(
        all.len() <= 2 * N && all.len().is_multiple_of(2),
        "{}",
        all.len()
    );
    assert!(
        stdout.contains(&format!("captured {} exchanges", all.len() / 2)),
        "{stdout}"
    );
}
