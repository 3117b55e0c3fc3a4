//! In-process tests of the whole request path: a real `Proxy` on a local port in front of
//! scripted upstreams, for the per-slot statistics and the retry on standby.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use turnout_core::{Role, RoutingState, SlotName, SlotState, Weights};

use crate::{Proxy, ProxyOptions};

/// An upstream that answers every request with `response`, on keep-alive connections,
/// and counts the requests it saw.
async fn upstream(response: &'static str) -> (String, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let seen = Arc::new(AtomicU64::new(0));
    let count = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                loop {
                    while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        let body = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length: "))
                            .and_then(|n| n.trim().parse::<usize>().ok())
                            .unwrap_or(0);
                        if buf.len() < end + 4 + body {
                            break;
                        }
                        buf.drain(..end + 4 + body);
                        count.fetch_add(1, Ordering::Relaxed);
                        if s.write_all(response.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
            });
        }
    });
    (addr, seen)
}

/// An address where nothing listens (connections are refused).
pub(crate) async fn refusing() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().to_string()
}

pub(crate) fn state(live: SlotName, blue: &str, green: &str) -> RoutingState {
    let slot = |addr: &str, name: SlotName| SlotState {
        version: Some(name.to_string()),
        upstreams: vec![addr.to_owned()],
        role: if name == live {
            Role::Live
        } else {
            Role::Standby
        },
    };
    RoutingState {
        revision: 1,
        live: Some(live),
        weights: Weights::all_to(Some(live)),
        slots: [slot(blue, SlotName::Blue), slot(green, SlotName::Green)],
        drain: None,
    }
}

pub(crate) async fn start(state: &RoutingState) -> (Proxy, String) {
    let proxy = Proxy::new(ProxyOptions::default(), state);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let p = proxy.clone();
    tokio::spawn(async move { p.serve(listener, std::future::pending()).await });
    (proxy, addr)
}

/// One HTTP/1.1 request on its own connection: the status and the body.
async fn h1(addr: &str, request: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8(out).unwrap();
    let status = text[9..12].parse().unwrap();
    let body = text.split_once("\r\n\r\n").unwrap().1.to_owned();
    (status, body)
}

/// One body-less HTTP/2 request: the status and the body.
async fn h2(addr: &str, method: &str) -> (u16, String) {
    let s = TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(format!("http://{addr}/"))
        .body(Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

fn counts(proxy: &Proxy, slot: SlotName) -> (u64, u64) {
    let s = proxy.stats(slot).snapshot();
    (s.requests, s.errors)
}

const GET: &str = "GET / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n";
const HEAD: &str = "HEAD / HTTP/1.1\r\nhost: a\r\nconnection: close\r\n\r\n";
const POST: &str = "POST / HTTP/1.1\r\nhost: a\r\ncontent-length: 2\r\nconnection: close\r\n\r\nhi";
const OK: &str = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
const BAD: &str = "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 3\r\n\r\nbad";

#[tokio::test]
async fn requests_are_counted_per_slot_on_both_paths() {
    let (blue, _) = upstream(OK).await;
    let (green, _) = upstream(BAD).await;
    let (proxy, addr) = start(&state(SlotName::Blue, &blue, &green)).await;
    assert_eq!(h1(&addr, GET).await, (200, "ok".into()));
    assert_eq!(h2(&addr, "GET").await, (200, "ok".into()));
    assert_eq!(counts(&proxy, SlotName::Blue), (2, 0));
    let snap = proxy.stats(SlotName::Blue).snapshot();
    assert!(snap.p50().is_some() && snap.p99() < Some(std::time::Duration::from_secs(5)));
    // Refused before routing: not counted.
    let (status, _) = h1(&addr, "GET / HTTP/1.1\r\n\r\n").await;
    assert_eq!(status, 400);
    assert_eq!(counts(&proxy, SlotName::Blue), (2, 0));

    proxy.apply(&state(SlotName::Green, &blue, &green));
    assert_eq!(h1(&addr, GET).await.0, 503);
    assert_eq!(h2(&addr, "GET").await.0, 503);
    assert_eq!(counts(&proxy, SlotName::Green), (2, 2));
    // The statistics survive a switch.
    assert_eq!(counts(&proxy, SlotName::Blue), (2, 0));

    // turnout's own errors count too: a slot whose upstream refuses connections.
    proxy.apply(&state(SlotName::Green, &blue, &refusing().await));
    // 502, or 503 once its first health check has ejected it.
    let (status, _) = h1(&addr, GET).await;
    assert!(status == 502 || status == 503, "{status}");
    assert_eq!(counts(&proxy, SlotName::Green), (3, 3));
}

#[tokio::test]
async fn failed_idempotent_requests_go_to_the_standby_once() {
    let (blue, blue_seen) = upstream(OK).await;
    let (green, green_seen) = upstream(BAD).await;
    let (proxy, addr) = start(&state(SlotName::Green, &blue, &green)).await;
    proxy.set_retry_on(Some((SlotName::Green, SlotName::Blue)));

    // A 5xx head on the live slot: the client sees the standby's answer.
    assert_eq!(h1(&addr, GET).await, (200, "ok".into()));
    assert_eq!(h1(&addr, HEAD).await.0, 200);
    assert_eq!(h2(&addr, "GET").await, (200, "ok".into()));
    assert_eq!(counts(&proxy, SlotName::Green), (3, 3));
    assert_eq!(counts(&proxy, SlotName::Blue), (3, 0));
    assert_eq!(green_seen.load(Ordering::Relaxed), 3);
    assert_eq!(blue_seen.load(Ordering::Relaxed), 3);

    // A request with a body is not retried.
    assert_eq!(h1(&addr, POST).await, (503, "bad".into()));
    assert_eq!(counts(&proxy, SlotName::Green), (4, 4));
    assert_eq!(blue_seen.load(Ordering::Relaxed), 3);

    // The setting survives apply; a retry from the other slot does not apply here.
    proxy.apply(&state(SlotName::Green, &blue, &green));
    assert_eq!(h1(&addr, GET).await.0, 200);
    proxy.set_retry_on(Some((SlotName::Blue, SlotName::Green)));
    assert_eq!(h1(&addr, GET).await.0, 503);
    proxy.set_retry_on(None);
    assert_eq!(h1(&addr, GET).await.0, 503);
    assert_eq!(h2(&addr, "GET").await.0, 503);
    assert_eq!(counts(&proxy, SlotName::Green), (8, 8));
    assert_eq!(counts(&proxy, SlotName::Blue), (4, 0));

    // No connection at all on the live slot: retried too.
    proxy.set_retry_on(Some((SlotName::Green, SlotName::Blue)));
    proxy.apply(&state(SlotName::Green, &blue, &refusing().await));
    assert_eq!(h1(&addr, GET).await, (200, "ok".into()));
    assert_eq!(h2(&addr, "GET").await, (200, "ok".into()));
    assert_eq!(counts(&proxy, SlotName::Green), (10, 10));
    assert_eq!(counts(&proxy, SlotName::Blue), (6, 0));
}

#[tokio::test]
async fn a_discarded_response_does_not_poison_the_pool() {
    // The live slot's 5xx carries a body that is not all there: its connection must
    // close, not go back to the pool with the rest of the body unread.
    let (blue, _) = upstream(OK).await;
    let (green, green_seen) =
        upstream("HTTP/1.1 500 Internal Server Error\r\ncontent-length: 10\r\n\r\nabc").await;
    let (proxy, addr) = start(&state(SlotName::Green, &blue, &green)).await;
    proxy.set_retry_on(Some((SlotName::Green, SlotName::Blue)));
    for _ in 0..3 {
        assert_eq!(h1(&addr, GET).await, (200, "ok".into()));
    }
    assert_eq!(green_seen.load(Ordering::Relaxed), 3);
    assert_eq!(counts(&proxy, SlotName::Green), (3, 3));
    let table = proxy.table();
    let up = &table.slot(SlotName::Green).upstreams[0];
    assert!(
        up.checkout_raw().is_none(),
        "a half-read connection was pooled"
    );
}

#[tokio::test]
async fn counts_stay_with_the_version_they_were_made_under() {
    let slot = |version: &str| SlotState {
        version: Some(version.to_owned()),
        upstreams: vec!["127.0.0.1:9".to_owned()],
        role: Role::Idle,
    };
    let state = |blue: &str| RoutingState::initial(slot(blue), slot("g1"));
    let proxy = Proxy::new(ProxyOptions::default(), &state("v1"));
    let ms = std::time::Duration::from_millis(1);
    let blue = proxy.stats(SlotName::Blue);
    for _ in 0..3 {
        blue.record(200, ms);
    }
    proxy.apply(&state("v2"));
    blue.record(503, ms);
    // The same version again (a new table) changes nothing.
    proxy.apply(&state("v2"));
    blue.record(404, ms);
    let by_version: Vec<(String, [u64; 5])> = proxy
        .version_counts(SlotName::Blue)
        .into_iter()
        .map(|(v, c)| (v.as_deref().unwrap_or("").to_owned(), c.classes))
        .collect();
    assert_eq!(
        by_version,
        [
            ("v1".to_owned(), [0, 3, 0, 0, 0]),
            ("v2".to_owned(), [0, 0, 0, 1, 1])
        ]
    );
    // Back to v1: its counts go on from where they were, in one entry.
    proxy.apply(&state("v1"));
    blue.record(200, ms);
    let v1 = proxy.version_counts(SlotName::Blue);
    assert_eq!(v1.len(), 2);
    let v1 = v1.iter().find(|(v, _)| v.as_deref() == Some("v1")).unwrap();
    assert_eq!(v1.1.classes, [0, 4, 0, 0, 0]);
    assert_eq!(v1.1.buckets.iter().sum::<u64>(), 4);
}

/// A writer into shared memory, for the access log.
#[derive(Clone, Default)]
struct Captured(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn access_log_lines_have_the_same_fields_on_both_protocols() {
    // A chunked response: its length is known only once it has been relayed.
    const CHUNKED: &str =
        "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n";
    let (blue, _) = upstream(CHUNKED).await;
    let (green, _) = upstream(OK).await;
    let (proxy, addr) = start(&state(SlotName::Blue, &blue, &green)).await;
    let log = Captured::default();
    proxy.set_access_log(Box::new(log.clone()));
    assert_eq!(
        h1(&addr, GET).await,
        (200, "3\r\nabc\r\n4\r\ndefg\r\n0\r\n\r\n".into())
    );
    assert_eq!(h2(&addr, "GET").await, (200, "abcdefg".into()));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let lines = loop {
        let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if lines.len() >= 2 || std::time::Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(lines.len(), 2, "{lines:?}");
    for line in &lines {
        // Real values on both: the upstream that answered, the body bytes relayed.
        assert_eq!(line["method"], "GET", "{line}");
        assert_eq!(line["path"], "/", "{line}");
        assert_eq!(line["status"], 200, "{line}");
        assert_eq!(line["slot"], "blue", "{line}");
        assert_eq!(line["version"], "blue", "{line}");
        assert_eq!(line["upstream"], blue.as_str(), "{line}");
        assert_eq!(line["bytes"], 7, "{line}");
        assert_eq!(
            line["request_id"].as_str().map(str::len),
            Some(24),
            "{line}"
        );
        assert!(line["duration_ms"].as_f64().is_some(), "{line}");
    }
    let keys = |v: &serde_json::Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&lines[0]), keys(&lines[1]));
}
