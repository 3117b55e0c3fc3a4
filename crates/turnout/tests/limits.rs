//! Limits and failover against a real router: `[listen] max_connections` (a new
//! connection past it is refused while the open ones are served), `[listen] max_body`
//! (413 before anything reaches an upstream), and `[health] failover` (the standby takes
//! the requests while the live slot has no healthy upstream; off by default).
//!
//! No timed assertions: every wait is bounded by a generous deadline.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use turnout_testkit::{eventually, router_token, Backend, Router, RouterOptions};

/// Bounds every wait on the router so a bug fails the test instead of hanging it.
const WAIT: Duration = Duration::from_secs(10);

async fn router(blue: &Backend, green: Option<&Backend>, listen: &str, health: &str) -> Router {
    let router = Router::start(
        Path::new(env!("CARGO_BIN_EXE_turnout")),
        &RouterOptions {
            blue: vec![blue.upstream()],
            green: green.map(|g| vec![g.upstream()]).unwrap_or_default(),
            listen_extra: listen.to_owned(),
            health_extra: health.to_owned(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let want_green = green.is_some();
    eventually("upstreams healthy", WAIT, || async {
        let s = router.status().await;
        (s["slots"]["blue"]["upstreams"][0]["healthy"] == true
            && (!want_green || s["slots"]["green"]["upstreams"][0]["healthy"] == true))
            .then_some(())
    })
    .await;
    router
}

/// Sends `request` and reads one response with a Content-Length body: `None` when the
/// connection closed (or reset) before a complete response.
async fn exchange(s: &mut TcpStream, request: &[u8]) -> Option<(u16, String, String)> {
    // A refused connection may already be closed: a failed write is a closed connection.
    if s.write_all(request).await.is_err() {
        return None;
    }
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end + 4]).into_owned();
            let len: usize = head
                .to_ascii_lowercase()
                .lines()
                .find_map(|l| l.strip_prefix("content-length: ").map(|v| v.trim().parse()))
                .expect("a content-length")
                .unwrap();
            if buf.len() >= end + 4 + len {
                let status = head[9..12].parse().unwrap();
                let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
                return Some((status, head, body));
            }
        }
        match tokio::time::timeout(WAIT, s.read(&mut chunk))
            .await
            .expect("an answer or a close within the deadline")
        {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Whether the peer closed `s` (reads to the end; a reset counts as closed).
async fn closed(s: &mut TcpStream) -> bool {
    let mut chunk = [0u8; 1024];
    loop {
        match tokio::time::timeout(WAIT, s.read(&mut chunk)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

const GET: &[u8] = b"GET / HTTP/1.1\r\nhost: app\r\n\r\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_max_connections_are_refused_while_open_ones_are_served() {
    let blue = Backend::start("blue").await;
    let router = router(&blue, None, "max_connections = 3\n", "").await;

    let mut open = Vec::new();
    for i in 0..3 {
        let mut s = TcpStream::connect(&router.data).await.unwrap();
        let (status, _, body) = exchange(&mut s, GET).await.expect("served");
        assert_eq!((status, body.as_str()), (200, "blue"), "connection {i}");
        open.push(s);
    }
    // The fourth: a 503 saying why, then closed (or closed at once).
    let mut fourth = TcpStream::connect(&router.data).await.unwrap();
    match exchange(&mut fourth, GET).await {
        None => {}
        Some((status, head, body)) => {
            assert_eq!(status, 503, "{head}{body}");
            assert!(
                head.to_ascii_lowercase().contains("connection: close"),
                "{head}"
            );
            assert!(body.starts_with("turnout: too many connections"), "{body}");
            assert!(
                closed(&mut fourth).await,
                "the refused connection is closed"
            );
        }
    }
    // The open ones are served on.
    for s in open.iter_mut() {
        let (status, _, _) = exchange(s, GET).await.expect("still served");
        assert_eq!(status, 200);
    }
    // One closes: a new connection is served (once the router has seen the close).
    drop(open.pop());
    eventually("a new connection served after one closed", WAIT, || async {
        let mut s = TcpStream::connect(&router.data).await.ok()?;
        let (status, _, _) = exchange(&mut s, GET).await?;
        (status == 200).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_max_body_get_413_and_reach_no_upstream() {
    let blue = Backend::start("blue").await;
    let router = router(&blue, None, "max_body = \"1KiB\"\n", "").await;
    let before = blue.requests();

    // Content-Length over the limit: refused from the head, the connection closes.
    let body = vec![b'x'; 2048];
    let mut req = b"POST /upload HTTP/1.1\r\nhost: app\r\ncontent-length: 2048\r\n\r\n".to_vec();
    req.extend_from_slice(&body);
    let mut s = TcpStream::connect(&router.data).await.unwrap();
    let (status, head, text) = exchange(&mut s, &req).await.expect("an answer");
    assert_eq!(status, 413, "{head}{text}");
    assert_eq!(text, "turnout: request body too large\n");
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    assert!(closed(&mut s).await);
    assert_eq!(blue.requests(), before, "the backend saw nothing");

    // A chunked body that grows past it: 413 and closed.
    let mut req =
        b"POST /upload HTTP/1.1\r\nhost: app\r\ntransfer-encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..4 {
        req.extend_from_slice(b"200\r\n");
        req.extend_from_slice(&[b'y'; 512]);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let mut s = TcpStream::connect(&router.data).await.unwrap();
    let (status, head, text) = exchange(&mut s, &req).await.expect("an answer");
    assert_eq!(status, 413, "{head}{text}");
    assert!(closed(&mut s).await);

    // Under the limit, in both framings: passed on whole.
    let mut s = TcpStream::connect(&router.data).await.unwrap();
    let mut req = b"POST /upload HTTP/1.1\r\nhost: app\r\ncontent-length: 512\r\n\r\n".to_vec();
    req.extend_from_slice(&[b'z'; 512]);
    let (status, _, text) = exchange(&mut s, &req).await.expect("an answer");
    assert_eq!((status, text.as_str()), (200, "512"));
    let req = b"POST /upload HTTP/1.1\r\nhost: app\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
    let (status, _, text) = exchange(&mut s, req).await.expect("an answer");
    assert_eq!(
        (status, text.as_str()),
        (200, "3"),
        "same connection, kept alive"
    );
}

/// The kinds of the events kept so far, with their data, from the SSE stream.
async fn events(router: &Router) -> String {
    let mut s = TcpStream::connect(&router.admin).await.unwrap();
    let path = format!(
        "/api/v1/events?last_event_id=0&access_token={}",
        router_token()
    );
    // The admin API answers to its own address only (DNS-rebinding defence).
    let host = &router.admin;
    s.write_all(format!("GET {path} HTTP/1.1\r\nhost: {host}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    // Everything kept is sent at once; read until a short quiet spell.
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(300), s.read(&mut chunk)).await
    {
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&buf).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_failover_the_standby_answers_while_the_live_slot_is_down() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let router = router(&blue, Some(&green), "", "failover = true\n").await;
    assert_eq!(router.status().await["live"], "blue");

    blue.set_healthy(false);
    eventually("requests fail over to green", WAIT, || async {
        let mut s = TcpStream::connect(&router.data).await.ok()?;
        let (status, _, body) = exchange(&mut s, GET).await?;
        (status == 200 && body == "green").then_some(())
    })
    .await;
    // The live slot stays live; an event says what happened.
    assert_eq!(router.status().await["live"], "blue");
    eventually("a failover event", WAIT, || async {
        events(&router)
            .await
            .contains("event: failover")
            .then_some(())
    })
    .await;

    // Blue comes back: requests go to it again, and the failover ends.
    blue.set_healthy(true);
    eventually("requests back on blue", WAIT, || async {
        let mut s = TcpStream::connect(&router.data).await.ok()?;
        let (status, _, body) = exchange(&mut s, GET).await?;
        (status == 200 && body == "blue").then_some(())
    })
    .await;
    eventually("the failover ended", WAIT, || async {
        let ev = events(&router).await;
        (ev.matches("event: failover").count() >= 2).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_failover_a_live_slot_with_no_healthy_upstream_answers_503() {
    let blue = Backend::start("blue").await;
    let green = Backend::start("green").await;
    let router = router(&blue, Some(&green), "", "").await;
    blue.set_healthy(false);
    eventually("503 from the unhealthy live slot", WAIT, || async {
        let mut s = TcpStream::connect(&router.data).await.ok()?;
        let (status, _, _) = exchange(&mut s, GET).await?;
        (status == 503).then_some(())
    })
    .await;
    assert_eq!(green.requests(), 0, "nothing went to the standby");
    assert!(!events(&router).await.contains("event: failover"));
}

/// An HTTP/2 request body streamed without a length: cut off with 413 once it grows past
/// `max_body`; one within the limit is passed on whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_body_without_a_length_is_cut_off_at_max_body() {
    use bytes::Bytes;
    use http_body_util::{BodyExt, StreamBody};
    use hyper::body::Frame;

    let blue = Backend::start("blue").await;
    let router = router(&blue, None, "max_body = \"1KiB\"\n", "").await;
    let tcp = TcpStream::connect(&router.data).await.unwrap();
    let (mut h2, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    // `chunks` pieces of 512 bytes, as a stream: no content-length is sent.
    let post = |chunks: usize| {
        let frames = (0..chunks)
            .map(|_| Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(vec![b'y'; 512]))));
        http::Request::post(format!("http://{}/upload", router.data))
            .body(StreamBody::new(futures_util::stream::iter(frames)))
            .unwrap()
    };
    let resp = tokio::time::timeout(WAIT, h2.send_request(post(4)))
        .await
        .expect("an answer in time")
        .unwrap();
    assert_eq!(resp.status(), 413);
    let text = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(text, "turnout: request body too large\n");

    h2.ready().await.unwrap();
    let resp = tokio::time::timeout(WAIT, h2.send_request(post(2)))
        .await
        .expect("an answer in time")
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(text, "1024", "the whole body reached the backend");
}
