//! `GET /api/v1/events`: the router's events as server-sent events.
//!
//! Each event is one SSE message — `id: <n>`, `event: <kind>`, `data: <the event as
//! JSON on one line>` — and a comment (`: keep-alive`) goes out every 15 s of silence, so
//! that proxies and clients see the stream alive. A client that reconnects with
//! `Last-Event-ID` (or `?last_event_id=N`) first gets the events after that id still kept
//! in memory (the last 1000), then the new ones. A client that reads too slowly to keep up
//! gets a `: missed N events` comment where events were lost.
//!
//! The token: `Authorization: Bearer TOKEN` like every `/api/v1` route, or, for this
//! route only, `?access_token=TOKEN` — a browser's `EventSource` cannot set headers.
//! Both are compared in constant time. The stream ends when the router stops.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body::Frame;
use serde::Deserialize;
use tokio::sync::{broadcast, mpsc};
use turnout_pipeline::Event;

use crate::{AdminState, ApiError};

/// Silence longer than this gets a keep-alive comment.
pub const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// The query string `GET /api/v1/events` takes.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct EventsQuery {
    /// The token, for clients that cannot set a header.
    access_token: Option<String>,
    /// Resume after this id (like the `Last-Event-ID` header).
    last_event_id: Option<u64>,
}

fn authorized(
    state: &AdminState,
    headers: &HeaderMap,
    query: &EventsQuery,
) -> Result<(), ApiError> {
    let Some(token) = &state.token else {
        return Ok(());
    };
    let header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let given = header.or(query.access_token.as_deref());
    let ok = given.is_some_and(|g| {
        use subtle::ConstantTimeEq;
        bool::from(g.as_bytes().ct_eq(token.as_bytes()))
    });
    if ok {
        return Ok(());
    }
    let message = if given.is_some() {
        "the bearer token is wrong; use the token from [admin] token (env TURNOUT_ADMIN_TOKEN for the CLI)"
    } else {
        "this route needs `Authorization: Bearer TOKEN` (or ?access_token=TOKEN); the token is set by [admin] token"
    };
    Err(ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        message,
    ))
}

/// One SSE message for `event`.
pub fn frame(event: &Event) -> String {
    let data = serde_json::to_string(event).unwrap_or_default();
    format!("id: {}\nevent: {}\ndata: {data}\n\n", event.id, event.kind)
}

/// Server-sent events: every deployment stage change, switch, rollback, health change and
/// gate verdict, with ids to resume from (`Last-Event-ID` or `?last_event_id=`).
#[utoipa::path(get, path = "/api/v1/events", tag = "events", security(("bearer" = [])),
    params(("access_token" = Option<String>, Query, description = "the token, for clients that cannot send a header (EventSource)"),
        ("last_event_id" = Option<u64>, Query, description = "resume after this event id")),
    responses((status = 200, description = "an event stream", content_type = "text/event-stream"),
        (status = 401, body = crate::ErrorResponse)))]
pub(crate) async fn events(
    State(state): State<AdminState>,
    headers: HeaderMap,
    query: Result<Query<EventsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let query = query
        .map(|q| q.0)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text()))?;
    authorized(&state, &headers, &query)?;
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .or(query.last_event_id);
    let (missed, rx) = match resume {
        Some(id) => state.controller.events_since(id),
        None => (Vec::new(), state.controller.events()),
    };
    let (tx, body_rx) = mpsc::channel(64);
    tokio::spawn(pump(missed, rx, tx, state.shutdown.clone()));
    let mut resp = Body::new(SseBody { rx: body_rx }).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(resp)
}

/// Moves events into the response until the client leaves or the router stops.
async fn pump(
    missed: Vec<Event>,
    mut rx: broadcast::Receiver<Event>,
    tx: mpsc::Sender<Bytes>,
    mut shutdown: Option<tokio::sync::watch::Receiver<bool>>,
) {
    // Tells an EventSource how long to wait before it reconnects, and gets the response
    // head and a first byte out at once.
    if tx
        .send(Bytes::from_static(b"retry: 2000\n\n"))
        .await
        .is_err()
    {
        return;
    }
    for e in &missed {
        if tx.send(Bytes::from(frame(e))).await.is_err() {
            return;
        }
    }
    let stopping = async move {
        match shutdown.as_mut() {
            Some(rx) => {
                let _ = rx.wait_for(|s| *s).await;
            }
            None => std::future::pending().await,
        }
    };
    tokio::pin!(stopping);
    let mut keep_alive =
        tokio::time::interval_at(tokio::time::Instant::now() + KEEP_ALIVE, KEEP_ALIVE);
    loop {
        let chunk = tokio::select! {
            r = rx.recv() => match r {
                Ok(e) => {
                    keep_alive.reset();
                    frame(&e)
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "an event stream client read too slowly and missed {n} events");
                    format!(": missed {n} events\n\n")
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
            _ = keep_alive.tick() => ": keep-alive\n\n".to_owned(),
            _ = tx.closed() => return,
            _ = &mut stopping => return,
        };
        if tx.send(Bytes::from(chunk)).await.is_err() {
            return;
        }
    }
}

/// The response body: what the pump sends, as it comes.
struct SseBody {
    rx: mpsc::Receiver<Bytes>,
}

impl http_body::Body for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.rx.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}
