//! Tests of the hand-written upstream client against scripted upstreams.

use super::*;
use tokio::net::TcpStream;

/// Runs one exchange against a scripted upstream that answers `reply`, and reads
/// the body to the end; returns status, headers, body and whether the connection
/// went back to the pool.
async fn run(
    reply: &'static [u8],
    method: Method,
) -> Result<(StatusCode, HeaderMap, Vec<u8>, bool), String> {
    use http_body_util::BodyExt;
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 4096];
        let _ = s.read(&mut buf).await;
        let _ = s.write_all(reply).await;
        // Keep the connection open until the client is done.
        let _ = s.read(&mut buf).await;
    });
    let up = std::sync::Arc::new(crate::upstream::Upstream::new(
        turnout_core::SlotName::Blue,
        addr.to_string(),
        4,
    ));
    let mut conn = RawConn::new(UpstreamStream::Plain(
        TcpStream::connect(addr).await.unwrap(),
    ));
    let (parts, ()) = http::Request::builder()
        .method(method)
        .uri("/")
        .body(())
        .unwrap()
        .into_parts();
    let head = conn
        .exchange(&up.addr, &parts, Duration::from_secs(5))
        .await
        .map_err(|e| e.error.to_string())?;
    let resp = head.into_response(conn, up.clone());
    let status = resp.status();
    let (parts, body) = resp.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes()
        .to_vec();
    let pooled = up.checkout_raw().is_some();
    Ok((status, parts.headers, body, pooled))
}

#[tokio::test]
async fn exchanges_with_a_scripted_upstream() {
    // Content-Length, reused.
    let (s, h, b, pooled) = run(
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-a: 1\r\n\r\nhello",
        Method::GET,
    )
    .await
    .unwrap();
    assert_eq!(
        (s, b.as_slice(), pooled),
        (StatusCode::OK, &b"hello"[..], true)
    );
    assert_eq!(h["x-a"], "1");
    // Interim 100 and 103 responses are skipped; chunked with a trailer; the length
    // header is dropped when Transfer-Encoding is present.
    let (s, h, b, pooled) = run(
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n\
          HTTP/1.1 201 Created\r\ntransfer-encoding: chunked\r\ncontent-length: 99\r\n\r\n\
          3\r\nabc\r\n2\r\nde\r\n0\r\nx-t: 1\r\n\r\n",
        Method::GET,
    )
    .await
    .unwrap();
    assert_eq!(
        (s, b.as_slice(), pooled),
        (StatusCode::CREATED, &b"abcde"[..], true)
    );
    assert!(!h.contains_key("content-length"));
    // HEAD: no body even with a length; reused.
    let (_, _, b, pooled) = run(
        b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n",
        Method::HEAD,
    )
    .await
    .unwrap();
    assert_eq!((b.len(), pooled), (0, true));
    // Connection: close and HTTP/1.0 are not reused.
    let (_, _, _, pooled) = run(
        b"HTTP/1.1 200 OK\r\nconnection: close\r\ncontent-length: 1\r\n\r\nx",
        Method::GET,
    )
    .await
    .unwrap();
    assert!(!pooled);
    let (_, _, _, pooled) = run(
        b"HTTP/1.0 200 OK\r\ncontent-length: 1\r\n\r\nx",
        Method::GET,
    )
    .await
    .unwrap();
    assert!(!pooled);
    // Garbage and conflicting lengths are protocol errors.
    let err = run(b"SMTP ready\r\n\r\n", Method::GET).await.unwrap_err();
    assert!(err.contains("invalid response"), "{err}");
    let err = run(
        b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\ncontent-length: 2\r\n\r\nx",
        Method::GET,
    )
    .await
    .unwrap_err();
    assert!(err.contains("conflicting content-length"), "{err}");
}

#[tokio::test]
async fn a_body_cut_short_is_an_error_not_a_short_success() {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let (mut s, _) = listener.accept().await.unwrap();
        let mut buf = vec![0u8; 4096];
        let _ = s.read(&mut buf).await;
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc")
            .await;
        // Closes here: 7 bytes short.
    });
    let up = std::sync::Arc::new(crate::upstream::Upstream::new(
        turnout_core::SlotName::Blue,
        addr.to_string(),
        4,
    ));
    let mut conn = RawConn::new(UpstreamStream::Plain(
        TcpStream::connect(addr).await.unwrap(),
    ));
    let (parts, ()) = http::Request::new(()).into_parts();
    let head = conn
        .exchange(&up.addr, &parts, Duration::from_secs(5))
        .await
        .map_err(|e| e.error.to_string())
        .unwrap();
    let body = head.into_response(conn, up.clone()).into_body();
    assert!(body.collect().await.is_err());
    assert!(up.checkout_raw().is_none());
}
