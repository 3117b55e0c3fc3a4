//! `POST /api/v1/capture`: live exchanges streamed to the caller as a GoReplay file.
//!
//! The request is JSON, every field optional:
//!
//! ```text
//! { "duration_ms": 30000,   how long to capture; absent: until the client goes away
//!   "sample": 1.0,          share of the requests, 0 < sample <= 1 (by request id)
//!   "max_body": 1048576 }   bytes of each body kept, at most 16 MiB
//! ```
//!
//! The answer is `200` with `content-type: application/x-goreplay` and a chunked body of
//! GoReplay records — for each captured exchange its request (type 1) and then its
//! response (type 2), exactly as `turnout_shadow::goreplay::Writer` writes them, so every
//! record ends with the separator and no payload holds a separator line. The body ends
//! when the duration is over, or when the router shuts down (a capture never holds up a
//! graceful stop); a client that goes away ends the capture too (dropping the body drops
//! the data plane's tap).
//!
//! When the request has `TE: trailers`, the body ends with trailer fields:
//! - `x-turnout-exchanges`: exchanges sent;
//! - `x-turnout-dropped`: exchanges the data plane dropped because this stream did not keep
//!   up (its queue was full) — the data plane never waits for a capture;
//! - `x-turnout-skipped`: exchanges not sent because a payload line is exactly the
//!   separator `🐵🙈🙉` (the file would be ambiguous);
//! - `x-turnout-end`: why it ended: `duration` or `shutdown`.
//!
//! The same counts are logged when a capture ends, however it ends.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use http_body::Frame;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use turnout_shadow::goreplay::Writer;
use turnout_shadow::Exchange;

use crate::{AdminState, ApiError};

/// The content type of a capture stream.
pub const CONTENT_TYPE: &str = "application/x-goreplay";
/// Trailer: exchanges sent.
pub const TRAILER_EXCHANGES: &str = "x-turnout-exchanges";
/// Trailer: exchanges the data plane dropped (the stream did not keep up).
pub const TRAILER_DROPPED: &str = "x-turnout-dropped";
/// Trailer: exchanges not sent because they would make the file ambiguous.
pub const TRAILER_SKIPPED: &str = "x-turnout-skipped";
/// Trailer: why the stream ended (`duration`, `shutdown`).
pub const TRAILER_END: &str = "x-turnout-end";

/// The largest `max_body` a capture takes: records stay well under what a reader accepts
/// (`turnout_shadow::goreplay::MAX_RECORD`).
pub const MAX_CAPTURE_BODY: u64 = 16 << 20;
const DEFAULT_MAX_BODY: u64 = 1 << 20;
/// Roughly the most body bytes a capture's queue holds when it is full.
const QUEUE_BYTES: u64 = 256 << 20;
/// A data frame gathers the exchanges already waiting, up to about this many bytes.
const FRAME_BYTES: usize = 256 * 1024;

/// The body of `POST /api/v1/capture`.
#[derive(Debug, Default, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CaptureRequest {
    /// How long to capture, in milliseconds; absent: until the client goes away.
    #[serde(default)]
    pub duration_ms: Option<u64>,
    /// Share of the requests captured, more than 0 and at most 1 (default 1).
    #[serde(default)]
    pub sample: Option<f64>,
    /// Bytes of each body kept (default 1 MiB, at most 16 MiB); longer bodies are recorded
    /// truncated.
    #[serde(default)]
    pub max_body: Option<u64>,
}

fn bad(message: String) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
}

/// Streams live requests and their responses as GoReplay records, until the duration ends
/// or the client goes away; with `TE: trailers`, trailers report what was dropped.
#[utoipa::path(post, path = "/api/v1/capture", tag = "capture", security(("bearer" = [])),
    request_body = CaptureRequest,
    responses((status = 200, description = "GoReplay records", content_type = "application/x-goreplay"),
        (status = 400, body = crate::ErrorResponse), (status = 401, body = crate::ErrorResponse)))]
pub(crate) async fn capture(
    State(state): State<AdminState>,
    body: Result<Json<CaptureRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(req) = body?;
    let sample = req.sample.unwrap_or(1.0);
    if !(sample > 0.0 && sample <= 1.0) {
        return Err(bad(format!(
            "sample {sample} is not a share: it must be more than 0 and at most 1 (1 captures every request)"
        )));
    }
    let max_body = req.max_body.unwrap_or(DEFAULT_MAX_BODY);
    if max_body > MAX_CAPTURE_BODY {
        return Err(bad(format!(
            "max_body {max_body} is over the {MAX_CAPTURE_BODY} bytes (16 MiB) a capture keeps of a body"
        )));
    }
    // As every duration turnout reads: at most 10 years.
    const MAX_DURATION_MS: u64 = 10 * 365 * 24 * 3600 * 1000;
    if req.duration_ms.is_some_and(|d| d > MAX_DURATION_MS) {
        return Err(bad(format!(
            "duration_ms is over {MAX_DURATION_MS} (10 years), the longest a capture may run; leave it out to capture until the client goes away"
        )));
    }
    if req.duration_ms == Some(0) {
        return Err(bad(
            "duration_ms must be at least 1; leave it out to capture until the client goes away"
                .into(),
        ));
    }
    let duration = req.duration_ms.map(Duration::from_millis);
    // About QUEUE_BYTES of bodies at most while the stream is behind.
    let queue = (QUEUE_BYTES / max_body.max(1).saturating_mul(2)).clamp(128, 1024) as usize;
    let handle = state.controller.proxy().start_capture(
        sample,
        usize::try_from(max_body).unwrap_or(usize::MAX),
        queue,
    );
    tracing::info!(
        sample,
        max_body,
        duration_ms = req.duration_ms,
        "capture started"
    );
    let deadline = duration
        .and_then(|d| tokio::time::Instant::now().checked_add(d))
        .map(|at| Box::pin(tokio::time::sleep_until(at)));
    let shutdown: Option<Pin<Box<dyn Future<Output = ()> + Send>>> =
        state.shutdown.clone().map(|mut rx| {
            Box::pin(async move {
                let _ = rx.wait_for(|stop| *stop).await;
            }) as Pin<Box<dyn Future<Output = ()> + Send>>
        });
    let stream = CaptureStream {
        exchanges: handle.exchanges,
        dropped: handle.dropped,
        deadline,
        shutdown,
        end: None,
        sent: 0,
        skipped: 0,
        finished: false,
        started: Instant::now(),
    };
    let mut resp = Body::new(stream).into_response();
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::TRAILER,
        HeaderValue::from_static(
            "x-turnout-exchanges, x-turnout-dropped, x-turnout-skipped, x-turnout-end",
        ),
    );
    *resp.status_mut() = StatusCode::OK;
    Ok(resp)
}

/// The streamed body: owns the capture's receiving end, so dropping it stops the tap.
struct CaptureStream {
    exchanges: mpsc::Receiver<Exchange>,
    dropped: Arc<AtomicU64>,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    shutdown: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    /// Why the stream is ending, once it is.
    end: Option<&'static str>,
    sent: u64,
    skipped: u64,
    finished: bool,
    started: Instant,
}

impl CaptureStream {
    /// Appends an exchange's two records to `buf`, or counts it as skipped.
    fn encode(&mut self, ex: &Exchange, buf: &mut Vec<u8>) {
        let mut w = Writer::new(std::mem::take(buf));
        match w.write_exchange(ex) {
            Ok(()) => self.sent += 1,
            Err(e) => {
                self.skipped += 1;
                tracing::debug!(error = %e, "capture: exchange skipped");
            }
        }
        *buf = w.into_inner();
    }

    fn trailers(&self) -> HeaderMap {
        let mut t = HeaderMap::new();
        let mut put = |name: &'static str, value: String| {
            if let Ok(v) = HeaderValue::from_str(&value) {
                t.insert(HeaderName::from_static(name), v);
            }
        };
        put(TRAILER_EXCHANGES, self.sent.to_string());
        put(
            TRAILER_DROPPED,
            self.dropped.load(Ordering::Relaxed).to_string(),
        );
        put(TRAILER_SKIPPED, self.skipped.to_string());
        put(TRAILER_END, self.end.unwrap_or("stopped").to_string());
        t
    }

    fn log_end(&self, how: &str) {
        tracing::info!(
            exchanges = self.sent,
            dropped = self.dropped.load(Ordering::Relaxed),
            skipped = self.skipped,
            seconds = self.started.elapsed().as_secs_f64(),
            "capture ended ({how})"
        );
    }
}

impl http_body::Body for CaptureStream {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if this.finished {
            return Poll::Ready(None);
        }
        if this.end.is_none() {
            let stop = this
                .shutdown
                .as_mut()
                .is_some_and(|s| s.as_mut().poll(cx).is_ready());
            let over = this
                .deadline
                .as_mut()
                .is_some_and(|d| d.as_mut().poll(cx).is_ready());
            if stop || over {
                this.end = Some(if stop { "shutdown" } else { "duration" });
                // No new exchanges; those already queued still go out.
                this.exchanges.close();
            }
        }
        let mut buf = Vec::new();
        loop {
            let next = if buf.is_empty() {
                match this.exchanges.poll_recv(cx) {
                    Poll::Ready(next) => next,
                    Poll::Pending => return Poll::Pending,
                }
            } else if buf.len() >= FRAME_BYTES {
                break;
            } else {
                match this.exchanges.try_recv() {
                    Ok(ex) => Some(ex),
                    Err(_) => break,
                }
            };
            match next {
                Some(ex) => this.encode(&ex, &mut buf),
                None => {
                    this.finished = true;
                    this.log_end(this.end.unwrap_or("stopped"));
                    return Poll::Ready(Some(Ok(Frame::trailers(this.trailers()))));
                }
            }
        }
        Poll::Ready(Some(Ok(Frame::data(Bytes::from(buf)))))
    }

    fn is_end_stream(&self) -> bool {
        self.finished
    }
}

impl Drop for CaptureStream {
    fn drop(&mut self) {
        if !self.finished {
            self.log_end("the client went away");
        }
    }
}

#[cfg(test)]
mod tests {
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;

    #[tokio::test]
    async fn validates_and_streams_until_the_duration_ends_with_counts_in_trailers() {
        let dir = tempfile::tempdir().unwrap();
        let (app, stop) = crate::tests::app_with_shutdown(dir.path()).await;
        let call = |token: Option<&str>, body: &str| {
            let mut req = Request::builder()
                .method("POST")
                .uri("/api/v1/capture")
                .header("content-type", "application/json")
                .header("te", "trailers");
            if let Some(t) = token {
                req = req.header("authorization", format!("Bearer {t}"));
            }
            app.clone()
                .oneshot(req.body(Body::from(body.to_owned())).unwrap())
        };
        // (token, body, status, error code)
        let refused: &[(Option<&str>, &str, StatusCode, &str)] = &[
            (None, "{}", StatusCode::UNAUTHORIZED, "unauthorized"),
            (
                Some("s3cret"),
                r#"{"sample":0}"#,
                StatusCode::BAD_REQUEST,
                "bad_request",
            ),
            (
                Some("s3cret"),
                r#"{"sample":1.5}"#,
                StatusCode::BAD_REQUEST,
                "bad_request",
            ),
            (
                Some("s3cret"),
                r#"{"sample":-0.1}"#,
                StatusCode::BAD_REQUEST,
                "bad_request",
            ),
            (
                Some("s3cret"),
                r#"{"duration_ms":0}"#,
                StatusCode::BAD_REQUEST,
                "bad_request",
            ),
            (
                Some("s3cret"),
                r#"{"duration_ms":-1}"#,
                StatusCode::BAD_REQUEST,
                "bad_request",
            ),
            (
                Some("s3cret"),
                r#"{"duration_ms":18446744073709551615}"#,
                StatusCode::BAD_REQUEST,
                "bad_request",
            ),
            (
                Some("s3cret"),
                r#"{"max_body":16777217}"#,
                StatusCode::BAD_REQUEST,
                "bad_request",
            ),
            (
                Some("s3cret"),
                r#"{"samples":1}"#,
                StatusCode::BAD_REQUEST,
                "bad_request",
            ),
            (Some("s3cret"), "", StatusCode::BAD_REQUEST, "bad_request"),
        ];
        for (token, body, status, code) in refused {
            let resp = call(*token, body).await.unwrap();
            assert_eq!(resp.status(), *status, "{body}");
            let bytes = resp.into_body().collect().await.unwrap().to_bytes();
            let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(json["error"]["code"], *code, "{body}: {json}");
            assert!(
                json["error"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty()),
                "{json}"
            );
        }

        // A short capture of no traffic: an empty body, then the counts.
        let resp = call(Some("s3cret"), r#"{"duration_ms":50,"sample":0.5}"#)
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["content-type"], CONTENT_TYPE);
        assert!(resp.headers()["trailer"]
            .to_str()
            .unwrap()
            .contains(TRAILER_DROPPED));
        let collected = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
            .await
            .expect("the capture ends with its duration")
            .unwrap();
        let trailers = collected.trailers().cloned().expect("trailers");
        assert!(collected.to_bytes().is_empty());
        assert_eq!(trailers[TRAILER_EXCHANGES], "0");
        assert_eq!(trailers[TRAILER_DROPPED], "0");
        assert_eq!(trailers[TRAILER_SKIPPED], "0");
        assert_eq!(trailers[TRAILER_END], "duration");

        // Without a duration it runs until the router stops.
        let resp = call(Some("s3cret"), "{}").await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let body = tokio::spawn(resp.into_body().collect());
        stop.send(true).unwrap();
        let collected = tokio::time::timeout(Duration::from_secs(10), body)
            .await
            .expect("a shutdown ends the capture")
            .unwrap()
            .unwrap();
        assert_eq!(collected.trailers().unwrap()[TRAILER_END], "shutdown");
    }

    #[test]
    fn encodes_exchanges_exactly_and_skips_ambiguous_ones() {
        use std::time::SystemTime;
        use turnout_shadow::goreplay::{Reader, RecordType};
        use turnout_shadow::{RequestCopy, ResponseCopy};
        let ex = |body: &'static str| Exchange {
            request: Arc::new(RequestCopy {
                id: "0123456789abcdef01234567".into(),
                started: SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000),
                method: "POST".into(),
                target: "/x".into(),
                headers: vec![("host".into(), Bytes::from_static(b"shop"))],
                body: Bytes::from_static(body.as_bytes()),
                body_truncated: false,
            }),
            response: ResponseCopy {
                status: 200,
                headers: vec![],
                body: Bytes::from_static(b"ok"),
                body_truncated: false,
                latency: Duration::from_millis(3),
            },
        };
        let (_tx, rx) = mpsc::channel(1);
        let mut s = CaptureStream {
            exchanges: rx,
            dropped: Arc::new(AtomicU64::new(2)),
            deadline: None,
            shutdown: None,
            end: None,
            sent: 0,
            skipped: 0,
            finished: false,
            started: Instant::now(),
        };
        let mut buf = Vec::new();
        s.encode(&ex("a\nb"), &mut buf);
        s.encode(&ex("a\n🐵🙈🙉\nb"), &mut buf);
        s.encode(&ex("c"), &mut buf);
        assert_eq!((s.sent, s.skipped), (2, 1));
        let kinds: Vec<RecordType> = Reader::new(&buf[..]).map(|r| r.unwrap().kind).collect();
        assert_eq!(
            kinds,
            [
                RecordType::Request,
                RecordType::Response,
                RecordType::Request,
                RecordType::Response
            ]
        );
        let t = s.trailers();
        assert_eq!(
            (
                &t[TRAILER_EXCHANGES],
                &t[TRAILER_DROPPED],
                &t[TRAILER_SKIPPED]
            ),
            (
                &"2".parse::<HeaderValue>().unwrap(),
                &"2".parse().unwrap(),
                &"1".parse().unwrap()
            )
        );
        s.finished = true;
    }
}
