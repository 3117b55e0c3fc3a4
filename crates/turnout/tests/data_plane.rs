//! The data plane as a user meets it: a real `turnout serve` process in front of real
//! backends on loopback, driven by real HTTP/1.1, h2c and WebSocket clients.

use std::convert::Infallible;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::{Method, Request, Response, StatusCode, Version};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use turnout_testkit::{eventually, Backend, HttpClient, Router, RouterOptions};

const DEADLINE: Duration = Duration::from_secs(10);

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_turnout"))
}

async fn router(opts: RouterOptions) -> Router {
    Router::start(bin(), &opts).await.expect("start turnout")
}

/// A loopback port where nothing listens.
fn dead_port() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    drop(l);
    addr
}

/// The health of `addr` in `slot` as `GET /api/v1/status` reports it.
async fn upstream_healthy(router: &Router, slot: &str, addr: &str) -> Option<bool> {
    let (status, json) = router.api(Method::GET, "/api/v1/status", None).await;
    assert_eq!(status, StatusCode::OK, "status: {json}");
    json["slots"][slot]["upstreams"]
        .as_array()?
        .iter()
        .find(|u| u["addr"] == addr)?["healthy"]
        .as_bool()
}

/// Sends one request on a new HTTP/1.1 connection and returns the response head with its
/// body still streaming.
async fn send_h1<B>(addr: &str, req: Request<B>) -> Response<Incoming>
where
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stream = TcpStream::connect(addr).await.expect("connect to turnout");
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender.send_request(req).await.expect("send request")
}

async fn text(resp: Response<Incoming>) -> (StatusCode, String) {
    let status = resp.status();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// Sends `req` through `router` to `GET /headers` and returns what the backend saw.
async fn headers_seen(router: &Router, req: Request<Full<Bytes>>) -> Value {
    let (status, body) = text(send_h1(&router.data, req).await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    serde_json::from_str(&body).expect("headers JSON")
}

/// Peak resident set size of a process, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|v| v.trim().parse().ok())
        .expect("VmHWM in /proc status");
    kb * 1024
}

/// What a [`RawUpstream`] does with a request other than `GET /healthz`.
#[derive(Clone, Copy)]
enum Misbehave {
    /// Keeps the connection open and never answers.
    Hang,
    /// Closes the connection as soon as the request head is read.
    Close,
    /// Sends these bytes (a response cut short), then closes.
    Truncate(&'static [u8]),
}

/// A minimal upstream speaking just enough HTTP/1.1: `GET /healthz` gets `200 ok` (so that
/// the health check finds it healthy), anything else is mishandled as `mode` says.
struct RawUpstream {
    addr: String,
    health_checks: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl RawUpstream {
    async fn start(mode: Misbehave) -> RawUpstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let health_checks = Arc::new(AtomicUsize::new(0));
        let checks = health_checks.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                let checks = checks.clone();
                conns.spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    if head.starts_with(b"GET /healthz ") {
                        checks.fetch_add(1, Ordering::SeqCst);
                        let _ = stream
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
                            .await;
                        let _ = stream.shutdown().await;
                        return;
                    }
                    match mode {
                        Misbehave::Close => {
                            let _ = stream.shutdown().await;
                        }
                        Misbehave::Truncate(bytes) => {
                            let _ = stream.write_all(bytes).await;
                            let _ = stream.shutdown().await;
                        }
                        Misbehave::Hang => {
                            // Hold the connection until the peer goes away.
                            while let Ok(n) = stream.read(&mut buf).await {
                                if n == 0 {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        RawUpstream {
            addr,
            health_checks,
            task,
        }
    }

    /// Waits until turnout's health check has seen this upstream pass.
    async fn wait_checked(&self, router: &Router) {
        eventually(
            "a health check passes on the raw upstream",
            DEADLINE,
            || async {
                (self.health_checks.load(Ordering::SeqCst) > 0
                    && upstream_healthy(router, "blue", &self.addr).await == Some(true))
                .then_some(())
            },
        )
        .await;
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_and_h2c_reach_the_live_slot() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let r = router(RouterOptions {
        blue: vec![blue.upstream()],
        green: vec![green.upstream()],
        ..Default::default()
    })
    .await;

    let mut h1 = HttpClient::http1(&r.data).await.expect("h1 connect");
    let reply = h1.get("/").await.expect("h1 GET");
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.version, Version::HTTP_11);
    assert_eq!(reply.text(), "blue");

    let mut h2 = HttpClient::http2(&r.data).await.expect("h2c connect");
    let reply = h2.get("/").await.expect("h2c GET");
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.version, Version::HTTP_2);
    assert_eq!(reply.text(), "blue");
    assert_eq!(green.requests(), 0, "the standby slot got traffic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_set_and_hop_by_hop_headers_dropped() {
    let blue = Backend::start("blue").await;
    let r = router(RouterOptions {
        blue: vec![blue.upstream()],
        ..Default::default()
    })
    .await;

    // A client that sends hop-by-hop headers, and no X-Forwarded-For.
    let h = headers_seen(
        &r,
        Request::get("/headers")
            .header("host", "shop.example:8080")
            .header("connection", "keep-alive, x-secret-hop")
            .header("x-secret-hop", "1")
            .header("keep-alive", "timeout=5")
            .header("te", "trailers")
            .header("proxy-connection", "x")
            .header("x-end-to-end", "kept")
            .body(Full::default())
            .expect("request"),
    )
    .await;
    assert_eq!(h["x-forwarded-for"], "127.0.0.1", "{h:#}");
    assert_eq!(h["x-forwarded-proto"], "http", "{h:#}");
    assert_eq!(h["x-forwarded-host"], "shop.example:8080", "{h:#}");
    assert_eq!(h["host"], "shop.example:8080", "{h:#}");
    assert_eq!(h["x-end-to-end"], "kept", "{h:#}");
    for hop in ["x-secret-hop", "keep-alive", "te", "proxy-connection"] {
        assert!(
            h.get(hop).is_none(),
            "hop-by-hop header {hop} reached the backend: {h:#}"
        );
    }
    let connection = h["connection"].as_str().unwrap_or("");
    assert!(
        !connection.contains("x-secret-hop"),
        "the client's Connection header reached the backend: {h:#}"
    );

    // A client behind another proxy: its address is appended.
    let h = headers_seen(
        &r,
        Request::get("/headers")
            .header("host", "shop.example")
            .header("x-forwarded-for", "1.2.3.4")
            .body(Full::default())
            .expect("request"),
    )
    .await;
    assert_eq!(h["x-forwarded-for"], "1.2.3.4, 127.0.0.1", "{h:#}");

    // h2c has no Host header, only the authority: the HTTP/1.1 upstream needs one.
    let mut h2 = HttpClient::http2(&r.data).await.expect("h2c connect");
    let reply = h2.get("/headers").await.expect("h2c GET");
    assert_eq!(reply.status, StatusCode::OK);
    let h: Value = serde_json::from_slice(&reply.body).expect("headers JSON");
    assert_eq!(h["host"], r.data.as_str(), "{h:#}");
    assert_eq!(h["x-forwarded-host"], r.data.as_str(), "{h:#}");
    assert_eq!(h["x-forwarded-proto"], "http", "{h:#}");
    assert_eq!(h["x-forwarded-for"], "127.0.0.1", "{h:#}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_with_bounded_memory() {
    const SIZE: u64 = 50 * 1024 * 1024;
    const CHUNK: usize = 64 * 1024;
    let blue = Backend::start("blue").await;
    let r = router(RouterOptions {
        blue: vec![blue.upstream()],
        ..Default::default()
    })
    .await;
    let pid = r.pid().expect("turnout pid");

    // Upload: the body is produced chunk by chunk (chunked transfer encoding).
    let chunk = Bytes::from(vec![b'u'; CHUNK]);
    let chunks =
        (0..SIZE as usize / CHUNK).map(move |_| Ok::<_, Infallible>(Frame::data(chunk.clone())));
    let req = Request::post("/upload")
        .header("host", r.data.as_str())
        .body(StreamBody::new(futures_util::stream::iter(chunks)))
        .expect("request");
    let (status, body) = text(send_h1(&r.data, req).await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, SIZE.to_string(), "bytes the backend received");

    // Download: counted frame by frame, never collected.
    let req = Request::get(format!("/download?bytes={SIZE}"))
        .header("host", r.data.as_str())
        .body(Full::<Bytes>::default())
        .expect("request");
    let resp = send_h1(&r.data, req).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut received: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.expect("download frame");
        received += frame.data_ref().map_or(0, |d| d.len() as u64);
    }
    assert_eq!(received, SIZE, "bytes the client received");

    let peak = peak_rss(pid);
    assert!(
        peak < 40 * 1024 * 1024,
        "turnout's peak RSS is {} MiB after moving 50 MB each way: it buffers bodies",
        peak / (1024 * 1024)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_stays_on_its_slot_through_a_switch_then_is_closed_going_away() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let r = router(RouterOptions {
        blue: vec![blue.upstream()],
        green: vec![green.upstream()],
        listen_extra: "upgrade_drain = \"2s\"".into(),
        ..Default::default()
    })
    .await;
    let open = || async {
        let tcp = TcpStream::connect(&r.data).await.expect("connect");
        let (ws, resp) = tokio_tungstenite::client_async(format!("ws://{}/ws", r.data), tcp)
            .await
            .expect("WebSocket handshake through turnout");
        assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
        ws
    };
    async fn ask<S>(ws: &mut tokio_tungstenite::WebSocketStream<S>, msg: &str) -> String
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        ws.send(Message::text(msg)).await.expect("send");
        match tokio::time::timeout(DEADLINE, ws.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => t.to_string(),
            other => panic!("expected a text reply to {msg:?}, got {other:?}"),
        }
    }

    let mut old = open().await;
    assert_eq!(ask(&mut old, "hi").await, "blue:hi");

    let (status, body) = r
        .api(Method::POST, "/api/v1/switch", Some(json!({"to": "green"})))
        .await;
    assert_eq!(status, StatusCode::OK, "switch: {body}");

    // The open WebSocket stays where it started; a new one goes to the new live slot.
    assert_eq!(ask(&mut old, "still there").await, "blue:still there");
    let mut new = open().await;
    assert_eq!(ask(&mut new, "hi").await, "green:hi");

    // Once the drain time is over, the old one is told to go away, then closed cleanly.
    let close = tokio::time::timeout(DEADLINE, old.next())
        .await
        .expect("no Close frame within the deadline");
    match close {
        Some(Ok(Message::Close(Some(frame)))) => {
            assert_eq!(frame.code, CloseCode::Away, "close frame {frame:?}")
        }
        other => panic!("expected a Close frame with code 1001, got {other:?}"),
    }
    let end = tokio::time::timeout(DEADLINE, old.next())
        .await
        .expect("the old WebSocket did not end after its Close frame");
    assert!(
        end.is_none(),
        "the old WebSocket did not end cleanly: {end:?}"
    );

    // The new one is unaffected.
    assert_eq!(ask(&mut new, "after").await, "green:after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_upstream_gets_503_no_healthy_upstream() {
    let dead = dead_port();
    let r = router(RouterOptions {
        blue: vec![dead.clone()],
        ..Default::default()
    })
    .await;
    let mut client = HttpClient::http1(&r.data).await.expect("connect");

    // Whether or not the health check has run yet, the client learns who failed.
    let reply = client.get("/").await.expect("GET");
    assert!(
        reply.status == StatusCode::BAD_GATEWAY || reply.status == StatusCode::SERVICE_UNAVAILABLE,
        "{reply:?}"
    );
    assert!(reply.text().starts_with("turnout:"), "{:?}", reply.text());

    eventually(
        "the dead upstream is marked unhealthy",
        DEADLINE,
        || async { (upstream_healthy(&r, "blue", &dead).await == Some(false)).then_some(()) },
    )
    .await;
    let reply = client.get("/").await.expect("GET");
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{:?}",
        reply.text()
    );
    assert!(reply.text().starts_with("turnout:"), "{:?}", reply.text());
    assert!(
        reply.text().contains("no healthy upstream"),
        "{:?}",
        reply.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_upstream_gets_504_after_response_timeout() {
    let hang = RawUpstream::start(Misbehave::Hang).await;
    let r = router(RouterOptions {
        blue: vec![hang.addr.clone()],
        extra: "[upstream]\nresponse_timeout = \"300ms\"\n".into(),
        ..Default::default()
    })
    .await;
    hang.wait_checked(&r).await;

    let mut client = HttpClient::http1(&r.data).await.expect("connect");
    let reply = tokio::time::timeout(DEADLINE, client.get("/"))
        .await
        .expect("turnout did not answer: the response timeout is not applied")
        .expect("GET");
    assert_eq!(
        reply.status,
        StatusCode::GATEWAY_TIMEOUT,
        "{:?}",
        reply.text()
    );
    assert!(reply.text().starts_with("turnout:"), "{:?}", reply.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_closing_without_answer_gets_502() {
    let closer = RawUpstream::start(Misbehave::Close).await;
    let r = router(RouterOptions {
        blue: vec![closer.addr.clone()],
        ..Default::default()
    })
    .await;
    closer.wait_checked(&r).await;

    let mut client = HttpClient::http1(&r.data).await.expect("connect");
    let reply = client.get("/").await.expect("GET");
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{:?}", reply.text());
    assert!(reply.text().starts_with("turnout:"), "{:?}", reply.text());
}

/// An upstream that breaks off its response: the client must see a broken response,
/// never one that looks complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_cut_short_never_looks_complete() {
    let cases: &[(&str, &'static [u8])] = &[
        (
            "content-length",
            b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\nonly a part",
        ),
        (
            "chunked",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
        ),
    ];
    for (what, bytes) in cases {
        let cutter = RawUpstream::start(Misbehave::Truncate(bytes)).await;
        let r = router(RouterOptions {
            blue: vec![cutter.addr.clone()],
            ..Default::default()
        })
        .await;
        cutter.wait_checked(&r).await;
        // HTTP/1.1 and HTTP/2 clients alike get an error, not a short body.
        let mut h1 = HttpClient::http1(&r.data).await.expect("connect");
        let got = h1.get("/").await;
        assert!(
            got.is_err(),
            "{what} over HTTP/1.1: looked complete: {got:?}"
        );
        let mut h2 = HttpClient::http2(&r.data).await.expect("connect h2");
        let got = h2.get("/").await;
        assert!(got.is_err(), "{what} over HTTP/2: looked complete: {got:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_to_a_dead_upstream_are_retried_and_it_is_ejected() {
    let live = Backend::start("blue").await;
    let dying = Backend::start("blue-2").await;
    let dying_addr = dying.upstream();
    let r = router(RouterOptions {
        blue: vec![live.upstream(), dying_addr.clone()],
        ..Default::default()
    })
    .await;
    eventually("both blue upstreams healthy", DEADLINE, || async {
        (upstream_healthy(&r, "blue", &dying_addr).await == Some(true)
            && upstream_healthy(&r, "blue", &live.upstream()).await == Some(true))
        .then_some(())
    })
    .await;

    // The second upstream dies; requests follow at once, before the next health check
    // can be relied on to have noticed.
    drop(dying);
    eventually(
        "the stopped backend refuses connections",
        DEADLINE,
        || async { TcpStream::connect(&dying_addr).await.is_err().then_some(()) },
    )
    .await;
    let mut client = HttpClient::http1(&r.data).await.expect("connect");
    for i in 0..50 {
        let reply = client.get("/").await.expect("GET");
        assert_eq!(
            reply.status,
            StatusCode::OK,
            "request {i}: {:?}",
            reply.text()
        );
        assert_eq!(reply.text(), "blue", "request {i}");
    }
    assert_eq!(upstream_healthy(&r, "blue", &dying_addr).await, Some(false));
    assert_eq!(
        upstream_healthy(&r, "blue", &live.upstream()).await,
        Some(true)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_connection_follows_a_switch_at_its_next_request() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let r = router(RouterOptions {
        blue: vec![blue.upstream()],
        green: vec![green.upstream()],
        ..Default::default()
    })
    .await;
    let mut client = HttpClient::http1(&r.data).await.expect("connect");
    assert_eq!(client.get("/").await.expect("GET").text(), "blue");

    let (status, body) = r
        .api(Method::POST, "/api/v1/switch", Some(json!({"to": "green"})))
        .await;
    assert_eq!(status, StatusCode::OK, "switch: {body}");

    // Same connection (the client has only one): the next request goes to green.
    let reply = client.get("/").await.expect("GET on the same connection");
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.text(), "green");
}

// Regression: only the first `Connection` field line used to be read for the header names
// it lists; the headers named on the others reached the backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_named_in_a_second_connection_line_are_dropped() {
    let blue = Backend::start("blue").await;
    let r = router(RouterOptions {
        blue: vec![blue.upstream()],
        ..Default::default()
    })
    .await;
    let h = headers_seen(
        &r,
        Request::get("/headers")
            .header("host", "shop.example")
            .header("connection", "keep-alive")
            .header("connection", "x-secret-hop")
            .header("x-secret-hop", "1")
            .body(Full::default())
            .expect("request"),
    )
    .await;
    assert!(
        h.get("x-secret-hop").is_none(),
        "x-secret-hop, named in the second Connection line, reached the backend: {h:#}"
    );
}

// Regression: `X-Forwarded-For` sent on several field lines used to keep only the first
// line; the addresses on the others were lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn x_forwarded_for_on_several_lines_keeps_every_address() {
    let blue = Backend::start("blue").await;
    let r = router(RouterOptions {
        blue: vec![blue.upstream()],
        ..Default::default()
    })
    .await;
    let h = headers_seen(
        &r,
        Request::get("/headers")
            .header("host", "shop.example")
            .header("x-forwarded-for", "1.2.3.4")
            .header("x-forwarded-for", "5.6.7.8")
            .body(Full::default())
            .expect("request"),
    )
    .await;
    assert_eq!(h["x-forwarded-for"], "1.2.3.4, 5.6.7.8, 127.0.0.1", "{h:#}");
}

/// A graceful stop closes open WebSockets with 1001 (going away) and still exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_closes_websockets_going_away() {
    let blue = Backend::start("blue").await;
    let mut r = router(RouterOptions {
        blue: vec![blue.upstream()],
        ..Default::default()
    })
    .await;
    let tcp = TcpStream::connect(&r.data).await.expect("connect");
    let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{}/ws", r.data), tcp)
        .await
        .expect("WebSocket handshake through turnout");
    ws.send(Message::text("hi")).await.expect("send");
    match tokio::time::timeout(DEADLINE, ws.next()).await {
        Ok(Some(Ok(Message::Text(t)))) => assert_eq!(t.as_str(), "blue:hi"),
        other => panic!("expected a reply, got {other:?}"),
    }
    let stopping = tokio::spawn(async move { r.terminate().await });
    let close = tokio::time::timeout(DEADLINE, ws.next())
        .await
        .expect("no Close frame within the deadline");
    match close {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.code, CloseCode::Away),
        other => panic!("expected a Close frame with code 1001, got {other:?}"),
    }
    // Answer the close and hang up, as a client does; the router then finishes its stop.
    let _ = ws.close(None).await;
    drop(ws);
    let code = stopping.await.expect("join").expect("terminate");
    assert_eq!(code, Some(0));
}

/// Header fields over the limit get 431 over HTTP/2 as over HTTP/1.1, not a reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_get_431_over_both_protocols() {
    let blue = Backend::start("blue").await;
    let r = router(RouterOptions {
        blue: vec![blue.upstream()],
        ..Default::default()
    })
    .await;
    let big = "a".repeat(70 * 1024);
    let fine = "a".repeat(8 * 1024);
    for h2 in [false, true] {
        let mut c = if h2 {
            HttpClient::http2(&r.data).await.unwrap()
        } else {
            HttpClient::http1(&r.data).await.unwrap()
        };
        let reply = c
            .request(Method::GET, "/", &[("x-big", big.as_str())], Bytes::new())
            .await
            .unwrap_or_else(|e| panic!("h2={h2}: no answer: {e:#}"));
        assert_eq!(
            reply.status,
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "h2={h2}"
        );
        assert!(
            reply.text().contains("too large"),
            "h2={h2}: {}",
            reply.text()
        );
        if h2 {
            // The connection is still good for the next request.
            let reply = c
                .request(Method::GET, "/", &[("x-fine", fine.as_str())], Bytes::new())
                .await
                .unwrap();
            assert_eq!(reply.status, StatusCode::OK);
        }
    }
}
