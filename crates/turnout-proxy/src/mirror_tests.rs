//! Shadowing and capture through a real `Proxy` in front of scripted upstreams that
//! record every request they get.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use turnout_core::SlotName;
use turnout_shadow::Sample;

use crate::http1::Chunked;
use crate::proxy_tests::{start, state};
use crate::{request_id, DelayHistogram, Proxy, ShadowCounts, ShadowHandle, ShadowOptions};

/// A request as an upstream got it (chunked bodies decoded).
#[derive(Clone, Debug, PartialEq)]
struct Seen {
    method: String,
    target: String,
    /// Names in lower case, in order.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The request without the framing headers and the marker: what a copy must match.
    fn end_to_end(&self) -> Seen {
        let mut s = self.clone();
        s.headers.retain(|(n, _)| {
            !matches!(
                n.as_str(),
                "content-length" | "transfer-encoding" | "x-turnout-shadow"
            )
        });
        s
    }
}

type Reply = Arc<dyn Fn(&Seen) -> Vec<u8> + Send + Sync>;

/// An upstream that records every request and answers with `reply(request)`, on
/// keep-alive connections.
struct Recorder {
    addr: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Recorder {
    async fn start(reply: impl Fn(&Seen) -> Vec<u8> + Send + Sync + 'static) -> Recorder {
        let reply: Reply = Arc::new(reply);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                tokio::spawn(serve(s, reply.clone(), log.clone()));
            }
        });
        Recorder { addr, seen }
    }

    fn fixed(response: &'static str) -> impl Fn(&Seen) -> Vec<u8> + Send + Sync + 'static {
        move |_| response.as_bytes().to_vec()
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    fn marked(&self) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.header("x-turnout-shadow") == Some("1"))
            .collect()
    }

    fn unmarked(&self) -> Vec<Seen> {
        self.seen()
            .into_iter()
            .filter(|s| s.header("x-turnout-shadow").is_none())
            .collect()
    }
}

async fn serve(mut s: TcpStream, reply: Reply, log: Arc<Mutex<Vec<Seen>>>) {
    let mut buf = BytesMut::new();
    loop {
        while let Some((req, used)) = parse(&buf) {
            let _ = buf.split_to(used);
            let answer = reply(&req);
            log.lock().unwrap().push(req);
            if s.write_all(&answer).await.is_err() {
                return;
            }
        }
        match s.read_buf(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// One complete request at the start of `buf`, and its length.
fn parse(buf: &[u8]) -> Option<(Seen, usize)> {
    let mut slots = [httparse::EMPTY_HEADER; 128];
    let mut req = httparse::Request::new(&mut slots);
    let httparse::Status::Complete(head) = req.parse(buf).unwrap() else {
        return None;
    };
    let headers: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let (body, used) = if get("transfer-encoding").is_some() {
        let mut rest = BytesMut::from(&buf[head..]);
        let before = rest.len();
        let mut dec = Chunked::default();
        let mut body = Vec::new();
        while let Some(d) = dec.decode(&mut rest).unwrap() {
            body.extend_from_slice(&d);
        }
        if !dec.is_done() {
            return None;
        }
        (body, head + before - rest.len())
    } else {
        let n: usize = get("content-length").map_or(0, |v| v.parse().unwrap());
        if buf.len() < head + n {
            return None;
        }
        (buf[head..head + n].to_vec(), head + n)
    };
    let seen = Seen {
        method: req.method.unwrap().to_owned(),
        target: req.path.unwrap().to_owned(),
        headers,
        body,
    };
    Some((seen, used))
}

/// An upstream that takes connections and requests and never answers.
async fn silent() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut sink = [0u8; 4096];
                while matches!(s.read(&mut sink).await, Ok(n) if n > 0) {}
            });
        }
    });
    addr
}

/// Raw bytes to the router on a connection of their own; everything that comes back.
async fn h1_raw(addr: &str, request: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    out
}

/// Status line and body of a `connection: close` HTTP/1.1 exchange (the body decoded
/// from chunked when it is).
async fn h1(addr: &str, request: &str) -> (u16, Vec<u8>) {
    let raw = h1_raw(addr, request.as_bytes()).await;
    let (head, body) = split_response(&raw);
    (head[9..12].parse().unwrap(), body)
}

/// The head (as text) and the decoded body of one raw response.
fn split_response(raw: &[u8]) -> (String, Vec<u8>) {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8(raw[..end].to_vec()).unwrap();
    let body = if head.contains("transfer-encoding: chunked") {
        let mut rest = BytesMut::from(&raw[end..]);
        let mut dec = Chunked::default();
        let mut body = Vec::new();
        while let Some(d) = dec.decode(&mut rest).unwrap() {
            body.extend_from_slice(&d);
        }
        assert!(dec.is_done(), "chunked body not ended");
        body
    } else {
        raw[end..].to_vec()
    };
    (head, body)
}

/// One HTTP/2 request: status, headers and body.
async fn h2(
    addr: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, http::HeaderMap, Bytes) {
    let s = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}{path}"));
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let req = req.body(Full::new(Bytes::copy_from_slice(body))).unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    (status, parts.headers, body)
}

struct Env {
    proxy: Proxy,
    addr: String,
    /// Live.
    blue: Recorder,
    /// The candidate.
    green: Recorder,
}

const OK: &str = "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 2\r\n\r\nok";
const NEW: &str = "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 3\r\n\r\nnew";

async fn env() -> Env {
    env_with(Recorder::fixed(OK), Recorder::fixed(NEW)).await
}

async fn env_with(
    blue: impl Fn(&Seen) -> Vec<u8> + Send + Sync + 'static,
    green: impl Fn(&Seen) -> Vec<u8> + Send + Sync + 'static,
) -> Env {
    let blue = Recorder::start(blue).await;
    let green = Recorder::start(green).await;
    let (proxy, addr) = start(&state(SlotName::Blue, &blue.addr, &green.addr)).await;
    Env {
        proxy,
        addr,
        blue,
        green,
    }
}

fn shadow_opts() -> ShadowOptions {
    ShadowOptions::new(SlotName::Green)
}

async fn next_sample(handle: &mut ShadowHandle) -> Sample {
    tokio::time::timeout(Duration::from_secs(10), handle.samples.recv())
        .await
        .expect("no sample within 10 s")
        .expect("samples channel ended")
}

/// Waits (up to 10 s) until the counters satisfy `done`, and returns them.
async fn counts_when(handle: &ShadowHandle, done: impl Fn(&ShadowCounts) -> bool) -> ShadowCounts {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let c = handle.counters.snapshot();
        if done(&c) {
            return c;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "counters never got there: {c:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Every eligible request was settled once.
fn settled(c: &ShadowCounts) -> bool {
    c.eligible == c.mirrored + c.dropped + c.skipped
}

fn header<'a>(headers: &'a [(String, Bytes)], name: &str) -> Option<&'a [u8]> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_ref())
}

#[test]
fn the_delay_histogram_gives_the_lower_bound_of_the_quantiles_bucket() {
    let h = DelayHistogram::default();
    assert_eq!(h.quantile(0.99), None, "no wake-up yet");
    for _ in 0..98 {
        h.record(Duration::from_micros(100));
    }
    assert_eq!(
        h.quantile(0.99),
        Some(Duration::ZERO),
        "the first bucket: 0 to 250 µs"
    );
    h.record(Duration::from_millis(50));
    h.record(Duration::from_millis(50));
    // 2 of 100 wake-ups were 50 ms late: the p99 is theirs, at most 20 % low, never high.
    let p99 = h.quantile(0.99).expect("a quantile");
    assert!(
        p99 <= Duration::from_millis(50) && p99 >= Duration::from_millis(40),
        "{p99:?}"
    );
    assert_eq!(h.quantile(0.5), Some(Duration::ZERO));
    // Beyond the last bound: the last bound, not a made-up number.
    let h = DelayHistogram::default();
    h.record(Duration::from_secs(3600));
    let top = h.quantile(0.99).expect("a quantile");
    assert!(
        top > Duration::from_secs(10) && top < Duration::from_secs(3600),
        "{top:?}"
    );
}

/// While a shadow runs, the mirror's thread measures how late it runs (the shadow
/// gate takes that much off the candidate's p99).
#[tokio::test]
async fn a_running_shadow_measures_the_mirror_threads_delay() {
    let e = env().await;
    let handle = e.proxy.start_shadow(shadow_opts());
    let c = counts_when(&handle, |c| c.delay_p99.is_some()).await;
    assert!(
        c.delay_p99.is_some_and(|d| d < Duration::from_secs(10)),
        "{c:?}"
    );
}

#[tokio::test]
async fn a_get_is_mirrored_with_the_marker_and_the_same_request() {
    let e = env().await;
    let mut handle = e.proxy.start_shadow(shadow_opts());
    let (status, body) = h1(
        &e.addr,
        "GET /items?page=2 HTTP/1.1\r\nHost: shop.example\r\nX-Request-Id: abc-1\r\naccept: */*\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!((status, body.as_slice()), (200, &b"ok"[..]));
    let sample = next_sample(&mut handle).await;

    let live = e.blue.seen();
    let copies = e.green.seen();
    assert_eq!((live.len(), copies.len()), (1, 1));
    assert_eq!(copies[0].header("x-turnout-shadow"), Some("1"));
    assert_eq!(live[0].header("x-turnout-shadow"), None);
    assert_eq!(copies[0].end_to_end(), live[0].end_to_end());
    assert_eq!(copies[0].target, "/items?page=2");
    assert_eq!(copies[0].header("host"), Some("shop.example"));

    let req = &sample.request;
    assert_eq!(req.id, request_id(b"abc-1"));
    assert_eq!(
        (req.method.as_str(), req.target.as_str()),
        ("GET", "/items?page=2")
    );
    assert_eq!(header(&req.headers, "host"), Some(&b"shop.example"[..]));
    assert_eq!(header(&req.headers, "x-request-id"), Some(&b"abc-1"[..]));
    assert!(header(&req.headers, "x-forwarded-for").is_some());
    assert!(req.body.is_empty() && !req.body_truncated);
    assert_eq!(
        (sample.live.status, &sample.live.body[..]),
        (200, &b"ok"[..])
    );
    assert_eq!(
        header(&sample.live.headers, "content-type"),
        Some(&b"text/plain"[..])
    );
    assert_eq!(
        header(&sample.live.headers, "content-length"),
        Some(&b"2"[..])
    );
    let candidate = sample.candidate.as_ref().unwrap();
    assert_eq!((candidate.status, &candidate.body[..]), (200, &b"new"[..]));
    assert_eq!(
        header(&candidate.headers, "content-length"),
        Some(&b"3"[..])
    );
    assert!(sample.noise.is_none());

    // The same over HTTP/2, for a request without X-Request-Id (a random id).
    let (status, _, body) = h2(&e.addr, "GET", "/h2?x=1", &[("accept", "text/plain")], b"").await;
    assert_eq!((status, &body[..]), (200, &b"ok"[..]));
    let sample = next_sample(&mut handle).await;
    assert_eq!(sample.request.target, "/h2?x=1");
    assert_eq!(sample.request.id.len(), 24);
    assert_ne!(sample.request.id, request_id(b"abc-1"));
    let (live, copies) = (e.blue.seen(), e.green.seen());
    assert_eq!(copies[1].end_to_end(), live[1].end_to_end());
    assert_eq!(sample.candidate.unwrap().body, "new");

    let c = counts_when(&handle, settled).await;
    assert_eq!((c.eligible, c.mirrored, c.failed), (2, 2, 0));
}

#[tokio::test]
async fn bodies_are_mirrored_whole_with_their_length() {
    let e = env().await;
    let mut opts = shadow_opts();
    opts.methods = vec!["POST".into(), "PUT".into()];
    let mut handle = e.proxy.start_shadow(opts);
    // Content-Length, then chunked (the copy is framed by length), then HTTP/2.
    let requests = [
        "POST /a HTTP/1.1\r\nhost: a\r\ncontent-length: 11\r\ncontent-type: text/plain\r\nconnection: close\r\n\r\nhello world",
        "PUT /b HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    ];
    for (i, r) in requests.iter().enumerate() {
        assert_eq!(h1(&e.addr, r).await.0, 200);
        let sample = next_sample(&mut handle).await;
        assert_eq!(sample.request.body, "hello world");
        assert!(!sample.request.body_truncated);
        assert_eq!(
            header(&sample.request.headers, "content-length"),
            Some(&b"11"[..])
        );
        assert!(header(&sample.request.headers, "transfer-encoding").is_none());
        let (live, copy) = (&e.blue.seen()[i], &e.green.seen()[i]);
        assert_eq!(copy.end_to_end(), live.end_to_end());
        assert_eq!(copy.body, b"hello world");
        assert_eq!(copy.header("content-length"), Some("11"));
    }
    let (status, _, _) = h2(&e.addr, "POST", "/c", &[("x-a", "1")], b"from h2").await;
    assert_eq!(status, 200);
    let sample = next_sample(&mut handle).await;
    assert_eq!(sample.request.body, "from h2");
    let (live, copy) = (&e.blue.seen()[2], &e.green.seen()[2]);
    assert_eq!(copy.end_to_end(), live.end_to_end());
    assert_eq!(copy.body, b"from h2");
    assert_eq!(copy.header("x-a"), Some("1"));
}

#[tokio::test]
async fn only_the_configured_methods_and_paths_are_mirrored() {
    let e = env().await;
    let post =
        "POST /api/x HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\nconnection: close\r\n\r\nhi";
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n");

    // POST is not mirrored by default.
    let handle = e.proxy.start_shadow(shadow_opts());
    assert_eq!(h1(&e.addr, post).await.0, 200);
    assert_eq!(h2(&e.addr, "POST", "/api/x", &[], b"hi").await.0, 200);
    assert_eq!(handle.counters.snapshot().eligible, 0);

    // Allow and deny prefixes.
    let mut opts = shadow_opts();
    opts.paths = vec!["/api".into()];
    opts.skip_paths = vec!["/api/admin".into()];
    let handle = e.proxy.start_shadow(opts);
    for path in [
        "/other",
        "/api/admin/users",
        "/api/x?q=1",
        "/",
        "/api/admin",
    ] {
        assert_eq!(h1(&e.addr, &get(path)).await.0, 200);
    }
    assert_eq!(h2(&e.addr, "GET", "/api/admin/h2", &[], b"").await.0, 200);
    assert_eq!(h2(&e.addr, "GET", "/api/h2", &[], b"").await.0, 200);
    let c = counts_when(&handle, |c| c.mirrored == 2).await;
    assert_eq!((c.eligible, c.dropped, c.skipped), (2, 0, 0));
    tokio::time::timeout(Duration::from_secs(10), async {
        while e.green.seen().len() < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    let mut targets: Vec<String> = e.green.seen().into_iter().map(|s| s.target).collect();
    targets.sort();
    assert_eq!(targets, ["/api/h2", "/api/x?q=1"]);

    // Listed: POST goes too.
    let mut opts = shadow_opts();
    opts.methods = vec!["post".into()];
    let handle = e.proxy.start_shadow(opts);
    assert_eq!(h1(&e.addr, post).await.0, 200);
    assert_eq!(h1(&e.addr, &get("/")).await.0, 200);
    let c = counts_when(&handle, |c| c.mirrored == 1).await;
    assert_eq!(c.eligible, 1);
}

#[tokio::test]
async fn the_sample_is_drawn_from_the_request_id() {
    let e = env().await;
    let get = |id: usize| {
        format!("GET / HTTP/1.1\r\nhost: a\r\nx-request-id: r-{id}\r\nconnection: close\r\n\r\n")
    };
    let mut opts = shadow_opts();
    opts.sample = 0.0;
    let handle = e.proxy.start_shadow(opts);
    for i in 0..20 {
        assert_eq!(h1(&e.addr, &get(i)).await.0, 200);
    }
    assert_eq!(h2(&e.addr, "GET", "/", &[], b"").await.0, 200);
    // Nothing counted (the mirror thread's delay is measured whatever the sample).
    let counts = ShadowCounts {
        delay_p99: None,
        ..handle.counters.snapshot()
    };
    assert_eq!(counts, ShadowCounts::default());

    let mut opts = shadow_opts();
    opts.sample = 1.0;
    let handle = e.proxy.start_shadow(opts);
    for i in 0..20 {
        assert_eq!(h1(&e.addr, &get(i)).await.0, 200);
    }
    let c = counts_when(&handle, |c| c.mirrored == 20).await;
    assert_eq!(c.eligible, 20);

    // A share: exactly the ids whose hash falls under it, the same each time.
    let mut opts = shadow_opts();
    opts.sample = 0.5;
    let handle = e.proxy.start_shadow(opts);
    let chosen = (0..40)
        .filter(|i| crate::tap::hash_id(format!("r-{i}").as_bytes()).0 >> 11 < 1 << 52)
        .count() as u64;
    assert!((8..32).contains(&chosen), "{chosen}");
    for _ in 0..2 {
        for i in 0..40 {
            assert_eq!(h1(&e.addr, &get(i)).await.0, 200);
        }
    }
    let c = counts_when(&handle, |c| settled(c) && c.eligible == 2 * chosen).await;
    assert_eq!(c.mirrored, 2 * chosen);
}

#[tokio::test]
async fn a_request_over_max_body_is_skipped_and_served_whole() {
    let big_response = format!(
        "HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{}",
        "r".repeat(100)
    );
    let big: &'static str = Box::leak(big_response.into_boxed_str());
    let e = env_with(Recorder::fixed(big), Recorder::fixed(NEW)).await;
    let mut opts = shadow_opts();
    opts.methods = vec!["GET".into(), "POST".into()];
    opts.max_body = 16;
    let mut handle = e.proxy.start_shadow(opts);

    let body = "b".repeat(100);
    let post = format!(
        "POST /up HTTP/1.1\r\nhost: a\r\ncontent-length: 100\r\nconnection: close\r\n\r\n{body}"
    );
    let (status, got) = h1(&e.addr, &post).await;
    assert_eq!((status, got.len()), (200, 100));
    assert_eq!(e.blue.seen()[0].body, body.as_bytes());
    let chunked = format!(
        "POST /up HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n64\r\n{body}\r\n0\r\n\r\n"
    );
    assert_eq!(h1(&e.addr, &chunked).await.0, 200);
    let (status, _, got) = h2(&e.addr, "POST", "/up", &[], body.as_bytes()).await;
    assert_eq!((status, got.len()), (200, 100));
    let c = counts_when(&handle, |c| c.skipped == 3).await;
    assert_eq!((c.eligible, c.mirrored, c.dropped), (3, 0, 0));
    assert_eq!(e.blue.seen().len(), 3);
    assert!(e.blue.seen().iter().all(|s| s.body == body.as_bytes()));

    // A response over max_body: the client gets all of it, the sample the first bytes.
    let (status, got) = h1(
        &e.addr,
        "GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!((status, got.len()), (200, 100));
    let sample = next_sample(&mut handle).await;
    assert_eq!(sample.live.body.len(), 16);
    assert!(sample.live.body_truncated);
    assert!(header(&sample.live.headers, "content-length").is_none());
    assert!(e.green.seen().iter().all(|s| s.method == "GET"));
    let c = counts_when(&handle, |c| c.mirrored == 1).await;
    assert!(settled(&c));
}

#[tokio::test]
async fn noise_copies_go_to_the_live_slot_made_like_the_candidates() {
    let e = env().await;
    let mut opts = shadow_opts();
    opts.noise_sample = 1.0;
    let mut handle = e.proxy.start_shadow(opts);
    assert_eq!(
        h1(
            &e.addr,
            "GET /n HTTP/1.1\r\nhost: a\r\nx-request-id: n1\r\nconnection: close\r\n\r\n"
        )
        .await
        .0,
        200
    );
    let sample = next_sample(&mut handle).await;
    let noise = sample.noise.expect("a noise copy").unwrap();
    assert_eq!((noise.status, &noise.body[..]), (200, &b"ok"[..]));
    assert_eq!(sample.candidate.unwrap().body, "new");
    let (live, noise_copy) = (e.blue.unmarked(), e.blue.marked());
    assert_eq!((live.len(), noise_copy.len()), (1, 1));
    let copy = e.green.seen();
    assert_eq!(
        noise_copy[0], copy[0],
        "the noise copy is the candidate's copy"
    );
    assert_eq!(noise_copy[0].end_to_end(), live[0].end_to_end());

    // noise_sample 0: none.
    let mut handle = e.proxy.start_shadow(shadow_opts());
    assert_eq!(h2(&e.addr, "GET", "/n", &[], b"").await.0, 200);
    assert!(next_sample(&mut handle).await.noise.is_none());
    assert_eq!(e.blue.marked().len(), 1);
}

#[tokio::test]
async fn a_full_queue_drops_and_live_answers_go_on() {
    let blue = Recorder::start(Recorder::fixed(OK)).await;
    let green = silent().await;
    let (proxy, addr) = start(&state(SlotName::Blue, &blue.addr, &green)).await;
    let mut opts = shadow_opts();
    opts.queue = 1;
    opts.concurrency = 1;
    opts.timeout = Duration::from_secs(600);
    let handle = proxy.start_shadow(opts);
    let get = "GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n";
    for _ in 0..10 {
        assert_eq!(h1(&addr, get).await, (200, b"ok".to_vec()));
    }
    // And many at once, on both protocols.
    let mut tasks = Vec::new();
    for i in 0..40 {
        let addr = addr.clone();
        tasks.push(tokio::spawn(async move {
            if i % 2 == 0 {
                h1(&addr, get).await.0
            } else {
                h2(&addr, "GET", "/", &[], b"").await.0
            }
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    let c = counts_when(&handle, |c| c.eligible == 50 && settled(c)).await;
    // One copy waits for the candidate, one for a worker, one in the queue.
    assert!(c.mirrored <= 3 && c.dropped >= 47, "{c:?}");
    assert_eq!((c.skipped, c.failed), (0, 0));
}

#[tokio::test]
async fn live_responses_are_byte_identical_with_shadowing_on() {
    let chunks: String = (0..50)
        .map(|i| {
            let piece = format!("piece {i} ").repeat(i + 1);
            format!("{:x}\r\n{piece}\r\n", piece.len())
        })
        .collect();
    let chunked: &'static str = Box::leak(
        format!("HTTP/1.1 200 OK\r\nx-kind: chunked\r\ntransfer-encoding: chunked\r\n\r\n{chunks}0\r\nx-trailer: 1\r\n\r\n")
            .into_boxed_str(),
    );
    let long = "0123456789abcdef".repeat(20_000);
    let sized: &'static str = Box::leak(
        format!(
            "HTTP/1.1 200 OK\r\nx-kind: sized\r\ncontent-length: {}\r\n\r\n{long}",
            long.len()
        )
        .into_boxed_str(),
    );
    let e = env_with(
        move |req: &Seen| {
            if req.target == "/chunked" {
                chunked.as_bytes().to_vec()
            } else {
                sized.as_bytes().to_vec()
            }
        },
        Recorder::fixed(NEW),
    )
    .await;
    let request = |path: &str, close: bool| {
        format!(
            "GET {path} HTTP/1.1\r\nhost: a\r\n{}\r\n",
            if close { "connection: close\r\n" } else { "" }
        )
    };

    /// Without the `x-request-id` lines: turnout makes a new id per request.
    fn without_id(raw: &[u8]) -> Vec<u8> {
        raw.split_inclusive(|&b| b == b'\n')
            .filter(|l| !l.starts_with(b"x-request-id: "))
            .flatten()
            .copied()
            .collect()
    }

    async fn exchanges(addr: &str, request: &dyn Fn(&str, bool) -> String) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        for path in ["/sized", "/chunked"] {
            // Head exact, body decoded.
            let raw = h1_raw(addr, request(path, true).as_bytes()).await;
            let (head, body) = split_response(&raw);
            out.push(without_id(head.as_bytes()));
            out.push(body);
            let (status, headers, body) = h2(addr, "GET", path, &[], b"").await;
            let headers: Vec<_> = headers
                .iter()
                .filter(|(n, _)| *n != "date" && *n != "x-request-id")
                .collect();
            out.push(format!("{status} {headers:?}").into_bytes());
            out.push(body.to_vec());
        }
        // A content-length response on a keep-alive connection: exact bytes.
        let mut two = request("/sized", false);
        two.push_str(&request("/sized", true));
        out.push(without_id(&h1_raw(addr, two.as_bytes()).await));
        out
    }

    let without = exchanges(&e.addr, &request).await;
    let mut opts = shadow_opts();
    opts.max_body = 1000;
    let handle = e.proxy.start_shadow(opts);
    let _capture = e.proxy.start_capture(1.0, 4096, 1);
    let with = exchanges(&e.addr, &request).await;
    assert_eq!(with.len(), without.len());
    for (a, b) in with.iter().zip(&without) {
        assert!(a == b, "a response differs with shadowing on");
    }
    assert_eq!(without[1].len(), long.len());
    assert!(without[5].len() > 10_000);
    let c = counts_when(&handle, |c| c.eligible == 6 && settled(c)).await;
    assert_eq!(c.mirrored + c.dropped, 6);
}

#[tokio::test]
async fn a_capture_gets_requests_with_their_bodies_and_responses() {
    let e = env().await;
    let mut all = e.proxy.start_capture(1.0, 1024, 16);
    let mut small = e.proxy.start_capture(1.0, 4, 16);
    let none = e.proxy.start_capture(0.0, 1024, 16);
    let post = "POST /orders HTTP/1.1\r\nhost: shop\r\nx-request-id: c-1\r\ncontent-length: 9\r\nconnection: close\r\n\r\n{\"id\":42}";
    assert_eq!(h1(&e.addr, post).await.0, 200);
    assert_eq!(
        h2(
            &e.addr,
            "PUT",
            "/orders/7",
            &[("content-type", "application/json")],
            b"{\"n\":1}"
        )
        .await
        .0,
        200
    );
    let next = |rx: &mut tokio::sync::mpsc::Receiver<turnout_shadow::Exchange>| {
        let got = rx.try_recv();
        got.ok()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while all.exchanges.len() < 2 || small.exchanges.len() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "no exchanges");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let first = next(&mut all.exchanges).unwrap();
    assert_eq!(first.request.id, request_id(b"c-1"));
    assert_eq!(
        (first.request.method.as_str(), first.request.target.as_str()),
        ("POST", "/orders")
    );
    assert_eq!(first.request.body, "{\"id\":42}");
    assert!(!first.request.body_truncated);
    assert_eq!(header(&first.request.headers, "host"), Some(&b"shop"[..]));
    assert_eq!(
        header(&first.request.headers, "content-length"),
        Some(&b"9"[..])
    );
    assert_eq!(
        (first.response.status, &first.response.body[..]),
        (200, &b"ok"[..])
    );
    let second = next(&mut all.exchanges).unwrap();
    assert_eq!(
        (second.request.method.as_str(), &second.request.body[..]),
        ("PUT", &b"{\"n\":1}"[..])
    );
    assert_eq!(
        header(&second.request.headers, "content-type"),
        Some(&b"application/json"[..])
    );
    // The same requests, cut at this capture's max_body.
    let cut = next(&mut small.exchanges).unwrap();
    assert_eq!(
        (&cut.request.body[..], cut.request.body_truncated),
        (&b"{\"id"[..], true)
    );
    assert!(header(&cut.request.headers, "content-length").is_none());
    assert_eq!(cut.request.id, first.request.id);
    assert_eq!(cut.response.body, "ok");
    assert_eq!(none.exchanges.len(), 0);
    assert_eq!(all.dropped.load(Ordering::Relaxed), 0);
    // Nothing was mirrored: capture alone sends no copies.
    assert!(e.green.seen().is_empty());

    // Dropping the captures stops them: the tap is off again.
    drop((all, small, none));
    assert_eq!(h1(&e.addr, post).await.0, 200);
    assert!(!e.proxy.inner.tap.is_on());
}

#[tokio::test]
async fn stopping_stops_mirroring() {
    let e = env().await;
    let get = "GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n";
    let mut handle = e.proxy.start_shadow(shadow_opts());
    assert_eq!(h1(&e.addr, get).await.0, 200);
    next_sample(&mut handle).await;
    assert_eq!(e.green.seen().len(), 1);

    // Dropping the handle.
    drop(handle);
    tokio::time::timeout(Duration::from_secs(10), async {
        while e.proxy.inner.tap.is_on() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the shadow did not stop");
    for _ in 0..5 {
        assert_eq!(h1(&e.addr, get).await.0, 200);
    }
    assert_eq!(e.green.seen().len(), 1);

    // stop_shadow: the samples channel ends.
    let mut handle = e.proxy.start_shadow(shadow_opts());
    assert_eq!(h1(&e.addr, get).await.0, 200);
    next_sample(&mut handle).await;
    e.proxy.stop_shadow();
    assert!(!e.proxy.inner.tap.is_on());
    let end = tokio::time::timeout(Duration::from_secs(10), handle.samples.recv()).await;
    assert!(matches!(end, Ok(None)), "the samples channel did not end");
    assert_eq!(h1(&e.addr, get).await.0, 200);
    assert_eq!(e.green.seen().len(), 2);

    // A new shadow replaces the running one, whose channel ends.
    let mut first = e.proxy.start_shadow(shadow_opts());
    let mut second = e.proxy.start_shadow(shadow_opts());
    let end = tokio::time::timeout(Duration::from_secs(10), first.samples.recv()).await;
    assert!(matches!(end, Ok(None)));
    assert_eq!(h1(&e.addr, get).await.0, 200);
    next_sample(&mut second).await;
}

#[tokio::test]
async fn marked_requests_and_the_candidates_own_traffic_are_not_mirrored() {
    let e = env().await;
    let handle = e.proxy.start_shadow(shadow_opts());
    let marked = "GET / HTTP/1.1\r\nhost: a\r\nx-turnout-shadow: 1\r\nconnection: close\r\n\r\n";
    assert_eq!(h1(&e.addr, marked).await.0, 200);
    assert_eq!(
        h2(&e.addr, "GET", "/", &[("x-turnout-shadow", "1")], b"")
            .await
            .0,
        200
    );
    // Upgrades are not mirrored either.
    let upgrade =
        "GET /ws HTTP/1.1\r\nhost: a\r\nconnection: upgrade, close\r\nupgrade: websocket\r\n\r\n";
    let _ = h1_raw(&e.addr, upgrade.as_bytes()).await;
    assert_eq!(handle.counters.snapshot().eligible, 0);
    // Everything routed to the candidate (here: it is live).
    e.proxy
        .apply(&state(SlotName::Green, &e.blue.addr, &e.green.addr));
    let get = "GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n";
    assert_eq!(h1(&e.addr, get).await, (200, b"new".to_vec()));
    assert_eq!(handle.counters.snapshot().eligible, 0);
    assert!(e.green.marked().is_empty());
}

#[tokio::test]
async fn a_candidate_that_refuses_counts_as_failed() {
    let blue = Recorder::start(Recorder::fixed(OK)).await;
    let green = crate::proxy_tests::refusing().await;
    let (proxy, addr) = start(&state(SlotName::Blue, &blue.addr, &green)).await;
    let mut handle = proxy.start_shadow(shadow_opts());
    let get = "GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n";
    assert_eq!(h1(&addr, get).await.0, 200);
    let sample = next_sample(&mut handle).await;
    assert!(sample.candidate.is_err());
    let c = counts_when(&handle, |c| c.failed == 1).await;
    assert_eq!((c.eligible, c.mirrored), (1, 1));
}
