//! HTTP/1.1 as clients really send it, in raw bytes over TCP: bodies in both framings,
//! `Expect: 100-continue`, HTTP/1.0, pipelining, HEAD, and heads that must be refused
//! before anything reaches an upstream.

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use turnout_testkit::{eventually, Backend, Router, RouterOptions};

/// Bounds every wait on the router so a bug fails the test instead of hanging it.
const WAIT: Duration = Duration::from_secs(10);

async fn setup(listen_extra: &str) -> (Backend, Router) {
    let blue = Backend::start("blue").await;
    let router = Router::start(
        Path::new(env!("CARGO_BIN_EXE_turnout")),
        &RouterOptions {
            blue: vec![blue.upstream()],
            listen_extra: listen_extra.to_owned(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    eventually("blue healthy", WAIT, || async {
        (router.status().await["slots"]["blue"]["upstreams"][0]["healthy"] == true).then_some(())
    })
    .await;
    (blue, router)
}

/// Reads one response (head, and a Content-Length or chunked body) from `s`; `buf`
/// keeps what was read beyond it.
async fn read_response(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    head_request: bool,
) -> (u16, String, String) {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        read_more(s, buf).await;
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    buf.drain(..head_end);
    let status: u16 = head[9..12].parse().unwrap();
    let lower = head.to_ascii_lowercase();
    let body = if head_request || status == 100 {
        Vec::new()
    } else if let Some(cl) = lower
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
    {
        let n: usize = cl.trim().parse().unwrap();
        while buf.len() < n {
            read_more(s, buf).await;
        }
        buf.drain(..n).collect::<Vec<u8>>()
    } else if lower.contains("transfer-encoding: chunked") {
        let mut body = Vec::new();
        loop {
            let line_end = loop {
                if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                    break i;
                }
                read_more(s, buf).await;
            };
            let size =
                usize::from_str_radix(std::str::from_utf8(&buf[..line_end]).unwrap(), 16).unwrap();
            buf.drain(..line_end + 2);
            while buf.len() < size + 2 {
                read_more(s, buf).await;
            }
            body.extend(buf.drain(..size));
            buf.drain(..2);
            if size == 0 {
                break body;
            }
        }
    } else {
        Vec::new()
    };
    (status, head, String::from_utf8_lossy(&body).into_owned())
}

async fn read_more(s: &mut TcpStream, buf: &mut Vec<u8>) {
    let mut chunk = [0u8; 8192];
    let n = tokio::time::timeout(WAIT, s.read(&mut chunk))
        .await
        .expect("response in time")
        .expect("read");
    assert!(
        n > 0,
        "connection closed mid-response; got {:?}",
        String::from_utf8_lossy(buf)
    );
    buf.extend_from_slice(&chunk[..n]);
}

async fn connect(router: &Router) -> TcpStream {
    TcpStream::connect(&router.data).await.unwrap()
}

/// Reads until the router closes the connection (bounded by `WAIT`).
async fn read_to_close(s: &mut TcpStream) -> Vec<u8> {
    let mut all = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut all))
        .await
        .expect("the router closes the connection")
        .expect("read");
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_and_expect_continue_uploads_arrive_whole() {
    let (_blue, router) = setup("").await;
    let mut s = connect(&router).await;
    let mut buf = Vec::new();
    s.write_all(b"POST /upload HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-trailer: 1\r\n\r\n")
        .await
        .unwrap();
    let (status, _, body) = read_response(&mut s, &mut buf, false).await;
    assert_eq!((status, body.as_str()), (200, "11"));

    // The client waits for 100 Continue before it sends the body.
    s.write_all(
        b"POST /upload HTTP/1.1\r\nhost: a\r\ncontent-length: 4\r\nexpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    let (status, _, _) = read_response(&mut s, &mut buf, false).await;
    assert_eq!(status, 100);
    s.write_all(b"abcd").await.unwrap();
    let (status, _, body) = read_response(&mut s, &mut buf, false).await;
    assert_eq!((status, body.as_str()), (200, "4"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order_and_head_has_no_body() {
    let (_blue, router) = setup("").await;
    let mut s = connect(&router).await;
    let mut buf = Vec::new();
    s.write_all(b"GET /x HTTP/1.1\r\nhost: a\r\n\r\nHEAD /x HTTP/1.1\r\nhost: a\r\n\r\nGET /chunked?n=3 HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    let (status, _, body) = read_response(&mut s, &mut buf, false).await;
    assert_eq!((status, body.as_str()), (200, "blue"));
    // HEAD: the length of the GET, and no body bytes (the next response follows at once).
    let (status, head, _) = read_response(&mut s, &mut buf, true).await;
    assert_eq!(status, 200);
    assert!(
        head.to_ascii_lowercase().contains("content-length: 4"),
        "{head}"
    );
    let (status, head, body) = read_response(&mut s, &mut buf, false).await;
    assert_eq!(status, 200);
    assert!(
        head.to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    assert_eq!(body, "piece-0\npiece-1\npiece-2\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_1_0_clients_get_a_body_that_ends_with_the_connection() {
    let (_blue, router) = setup("").await;
    let mut s = connect(&router).await;
    s.write_all(b"GET /chunked?n=2 HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let all = String::from_utf8(read_to_close(&mut s).await).unwrap();
    let (head, body) = all.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("transfer-encoding"),
        "{head}"
    );
    assert_eq!(body, "piece-0\npiece-1\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_shapes_are_refused_and_reach_no_upstream() {
    let (blue, router) = setup("").await;
    let cases: &[(&str, &[u8], &str)] = &[
        ("CL+TE", b"POST /upload HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n", "400"),
        ("two CL", b"POST /upload HTTP/1.1\r\nhost: a\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\nhello", "400"),
        ("bad CL", b"POST /upload HTTP/1.1\r\nhost: a\r\ncontent-length: 5x\r\n\r\nhello", "400"),
        ("chunked not last", b"POST /upload HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked, identity\r\n\r\n", "400"),
        ("unknown coding", b"POST /upload HTTP/1.1\r\nhost: a\r\ntransfer-encoding: gzip\r\n\r\n", "501"),
        ("space before colon", b"GET / HTTP/1.1\r\nhost : a\r\n\r\n", "400"),
        ("obs-fold", b"GET / HTTP/1.1\r\nhost: a\r\nx-a: 1\r\n 2\r\n\r\n", "400"),
        ("NUL", b"GET / HTTP/1.1\r\nhost: a\r\nx-a: 1\x002\r\n\r\n", "400"),
        ("bad chunk size", b"POST /upload HTTP/1.1\r\nhost: a\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n", "400"),
    ];
    let before = blue.requests();
    for (what, bytes, status) in cases {
        let mut s = connect(&router).await;
        s.write_all(bytes).await.unwrap();
        let all = String::from_utf8_lossy(&read_to_close(&mut s).await).into_owned();
        assert!(
            all.starts_with(&format!("HTTP/1.1 {status} ")),
            "{what}: {all:?}"
        );
        assert!(all.contains("turnout:"), "{what}: {all:?}");
    }
    let big = format!(
        "GET / HTTP/1.1\r\nhost: a\r\nx-big: {}\r\n\r\n",
        "a".repeat(70 * 1024)
    );
    let mut s = connect(&router).await;
    // The router may close before reading everything; what matters is the answer.
    let _ = s.write_all(big.as_bytes()).await;
    let all = String::from_utf8_lossy(&read_to_close(&mut s).await).into_owned();
    assert!(all.starts_with("HTTP/1.1 431 "), "{all:?}");
    // Nothing reached the upstream: not even the bad-chunk request, whose body arrived
    // with its head and was checked before anything was sent.
    assert_eq!(
        blue.requests(),
        before,
        "a refused request reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unfinished_head_is_cut_off_after_header_timeout() {
    let (_blue, router) = setup("header_timeout = \"300ms\"").await;
    let mut s = connect(&router).await;
    s.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n").await.unwrap();
    assert!(
        read_to_close(&mut s).await.is_empty(),
        "closed without an answer"
    );
    // A connection that sends nothing at all is cut off too.
    let mut idle = connect(&router).await;
    assert!(read_to_close(&mut idle).await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn turnouts_own_answer_to_head_has_no_body() {
    // Blue's only upstream is a port where nothing listens: turnout answers itself.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let router = Router::start(
        Path::new(env!("CARGO_BIN_EXE_turnout")),
        &RouterOptions {
            blue: vec![dead.to_string()],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let mut s = connect(&router).await;
    let mut buf = Vec::new();
    s.write_all(b"HEAD / HTTP/1.1\r\nhost: a\r\n\r\nGET / HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    let (status, head, _) = read_response(&mut s, &mut buf, true).await;
    assert!(status == 502 || status == 503, "{head}");
    assert!(
        head.to_ascii_lowercase().contains("content-length: "),
        "{head}"
    );
    // The next response starts right after the HEAD's head: no body bytes between.
    let (status, _, body) = read_response(&mut s, &mut buf, false).await;
    assert!(status == 502 || status == 503);
    assert!(body.starts_with("turnout:"), "{body:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_connection_quiet_for_a_while_still_serves() {
    let (_blue, router) = setup("").await;
    let mut s = connect(&router).await;
    let mut buf = Vec::new();
    s.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    let (status, _, body) = read_response(&mut s, &mut buf, false).await;
    assert_eq!((status, body.as_str()), (200, "blue"));
    // Being quiet is the behaviour under test (after 1 s turnout frees the connection's
    // buffers while it waits), not a wait for something else to happen.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.write_all(b"GET / HTTP/1.1\r\nhost: a\r\n\r\n")
        .await
        .unwrap();
    let (status, _, body) = read_response(&mut s, &mut buf, false).await;
    assert_eq!((status, body.as_str()), (200, "blue"));
}

/// An upstream that answers at once without reading a body the client is still sending
/// (or never finishes): its answer reaches the client at once, and the connection then
/// closes; a body that stalls ends with 408 and a log line instead of a silent close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_answer_reaches_the_client_and_a_stalled_body_gets_408() {
    // An upstream that answers 501 as soon as it has a request head, reading no body.
    let early = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let early_addr = early.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        // At most a few connections (health checks, the test's request).
        for _ in 0..50 {
            let Ok((mut s, _)) = early.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                if got.starts_with(b"GET /healthz") {
                    let _ = s
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nok\n")
                        .await;
                    return;
                }
                let _ = s
                    .write_all(b"HTTP/1.1 501 Not Implemented\r\ncontent-length: 3\r\n\r\nno\n")
                    .await;
                // Keep the connection open without reading the body.
                tokio::time::sleep(Duration::from_secs(20)).await;
            });
        }
    });
    let router = Router::start(
        Path::new(env!("CARGO_BIN_EXE_turnout")),
        &RouterOptions {
            blue: vec![early_addr],
            extra: "[upstream]\nresponse_timeout = \"1s\"\n".into(),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let mut s = TcpStream::connect(&router.data).await.unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\nabc")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let (status, head, body) = tokio::time::timeout(WAIT, read_response(&mut s, &mut buf, false))
        .await
        .expect("the early answer within the deadline, not after response_timeout");
    assert_eq!((status, body.as_str()), (501, "no\n"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );

    // A body that stalls, to an upstream that waits for it: 408 after response_timeout.
    let (_blue, router) = {
        let blue = Backend::start("blue").await;
        let router = Router::start(
            Path::new(env!("CARGO_BIN_EXE_turnout")),
            &RouterOptions {
                blue: vec![blue.upstream()],
                extra: "[upstream]\nresponse_timeout = \"1s\"\n".into(),
                ..Default::default()
            },
        )
        .await
        .unwrap();
        (blue, router)
    };
    let mut s = TcpStream::connect(&router.data).await.unwrap();
    s.write_all(b"POST /upload HTTP/1.1\r\nhost: x\r\ncontent-length: 1000\r\n\r\nabc")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let (status, _, body) = tokio::time::timeout(WAIT, read_response(&mut s, &mut buf, false))
        .await
        .expect("an answer to a stalled body");
    assert_eq!(status, 408, "{body}");
    assert!(body.contains("stopped arriving"), "{body}");
    eventually("a log line", WAIT, || async {
        router.stderr().contains("stopped arriving").then_some(())
    })
    .await;
}
