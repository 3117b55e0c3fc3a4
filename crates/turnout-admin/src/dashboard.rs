//! The dashboard: one page and its assets, embedded in the binary (nothing from a CDN),
//! served at `/` and `/assets/{file}` without the token — the page asks for the token and
//! sends it with each API call. `GET /api/v1/stats` (behind the token) gives the page's
//! charts their numbers: per slot, requests, errors and latency quantiles over the last
//! few seconds, from the data plane's counters.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use turnout_core::SlotName;
use turnout_proxy::StatsSnapshot;

use crate::{AdminState, ApiError};

/// The embedded files: name under `/assets/`, content type, bytes.
const ASSETS: &[(&str, &str, &str)] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../assets/app.js"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("../assets/app.css"),
    ),
];

const INDEX: &str = include_str!("../assets/index.html");

/// The page forbids everything it does not need: no script, style, image or connection
/// from anywhere but the admin address itself.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; frame-ancestors 'none'";

fn page(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
        ],
        body,
    )
        .into_response()
}

/// The dashboard page (no token: it asks for one).
#[utoipa::path(get, path = "/", tag = "dashboard",
    responses((status = 200, description = "the dashboard", content_type = "text/html")))]
pub(crate) async fn index() -> Response {
    page("text/html; charset=utf-8", INDEX)
}

/// The dashboard's script and style sheet (no token).
#[utoipa::path(get, path = "/assets/{file}", tag = "dashboard",
    params(("file" = String, Path, description = "app.js or app.css")),
    responses((status = 200, description = "the asset"), (status = 404, body = crate::ErrorResponse)))]
pub(crate) async fn asset(Path(file): Path<String>) -> Result<Response, ApiError> {
    ASSETS
        .iter()
        .find(|(name, _, _)| *name == file)
        .map(|(_, ty, body)| page(ty, body))
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no dashboard asset {file:?}"),
            )
        })
}

/// How far back the stats window reaches.
const WINDOW: Duration = Duration::from_secs(5);

/// Snapshots taken at each call, the oldest at most [`WINDOW`] old (plus the one before).
#[derive(Default)]
struct Ring {
    entries: VecDeque<(Instant, [StatsSnapshot; 2])>,
}

/// `GET /api/v1/stats` (behind the token): the handler owns the snapshots it compares
/// with, so that the numbers need no background task.
/// The windows' ring, shared by every call (one router per process in practice).
static RING: std::sync::LazyLock<Mutex<Ring>> = std::sync::LazyLock::new(Default::default);

/// Requests, errors and latency per slot over the last few seconds, for the dashboard's
/// charts.
#[utoipa::path(get, path = "/api/v1/stats", tag = "dashboard", security(("bearer" = [])),
    responses((status = 200, description = "per slot: requests/s, error rate, p50 and p99 over the last window, and totals"),
        (status = 401, body = crate::ErrorResponse)))]
pub(crate) async fn stats(State(state): State<AdminState>) -> Json<Stats> {
    Json(stats_now(&state, &RING))
}

/// The answer of `GET /api/v1/stats`.
#[derive(Debug, Serialize)]
pub(crate) struct Stats {
    /// Milliseconds since the Unix epoch.
    at_ms: u64,
    /// The window the numbers cover, in milliseconds (0 on the first call).
    window_ms: u64,
    /// Blue and green.
    slots: SlotsStats,
}

#[derive(Debug, Serialize)]
struct SlotsStats {
    blue: SlotStats,
    green: SlotStats,
}

/// One slot's numbers over the window.
#[derive(Debug, Serialize)]
struct SlotStats {
    /// Requests in the window.
    requests: u64,
    /// Of those, errors (5xx or no response).
    errors: u64,
    /// Requests per second; `null` on the first call.
    requests_per_s: Option<f64>,
    /// `errors / requests`; `null` without requests.
    error_rate: Option<f64>,
    /// Median latency in milliseconds; `null` without requests.
    p50_ms: Option<f64>,
    /// 99th percentile latency in milliseconds; `null` without requests.
    p99_ms: Option<f64>,
    /// Requests since the router started.
    total_requests: u64,
    /// Errors since the router started.
    total_errors: u64,
}

fn stats_now(state: &AdminState, ring: &Mutex<Ring>) -> Stats {
    let proxy = state.controller.proxy();
    let now = Instant::now();
    let snap = [
        proxy.stats(SlotName::Blue).snapshot(),
        proxy.stats(SlotName::Green).snapshot(),
    ];
    let mut ring = ring.lock().unwrap_or_else(|p| p.into_inner());
    // Keep one entry older than the window, so that a caller polling slower than the
    // window still gets numbers.
    while ring.entries.len() >= 2 && now.duration_since(ring.entries[1].0) > WINDOW {
        ring.entries.pop_front();
    }
    let base = ring
        .entries
        .iter()
        .find(|(t, _)| now.duration_since(*t) <= WINDOW)
        .or(ring.entries.front())
        .cloned();
    ring.entries.push_back((now, snap.clone()));
    // Bounded even if called in a tight loop.
    while ring.entries.len() > 256 {
        ring.entries.pop_front();
    }
    drop(ring);
    let window = base.as_ref().map(|(t, _)| now.duration_since(*t));
    let secs = window.map(|w| w.as_secs_f64()).filter(|s| *s > 0.0);
    let slot = |i: usize| {
        let total = &snap[i];
        let win = match &base {
            Some((_, b)) => total.since(&b[i]),
            None => StatsSnapshot::default(),
        };
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        SlotStats {
            requests: win.requests,
            errors: win.errors,
            requests_per_s: secs.map(|s| win.requests as f64 / s),
            error_rate: win.error_rate(),
            p50_ms: win.p50().map(ms),
            p99_ms: win.p99().map(ms),
            total_requests: total.requests,
            total_errors: total.errors,
        }
    };
    Stats {
        at_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
        window_ms: window.map_or(0, |w| w.as_millis() as u64),
        slots: SlotsStats {
            blue: slot(0),
            green: slot(1),
        },
    }
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use axum::Router;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    use super::*;

    async fn get(app: &Router, path: &str, token: Option<&str>) -> (StatusCode, String, String) {
        let mut req = Request::builder().uri(path);
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let resp = app
            .clone()
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let ty = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, ty, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn page_and_assets_need_no_token_and_stats_do() {
        let dir = tempfile::tempdir().unwrap();
        let (app, _stop) = crate::tests::app_with_shutdown(dir.path()).await;
        let (status, ty, body) = get(&app, "/", None).await;
        assert_eq!(status, StatusCode::OK);
        assert!(ty.starts_with("text/html"), "{ty}");
        assert!(body.contains("/assets/app.js"), "{body}");
        // Nothing from elsewhere: every script and style is the page's own.
        assert!(!body.contains("http://") && !body.contains("https://"));
        for (path, want) in [
            ("/assets/app.js", "text/javascript"),
            ("/assets/app.css", "text/css"),
        ] {
            let (status, ty, _) = get(&app, path, None).await;
            assert_eq!(status, StatusCode::OK, "{path}");
            assert!(ty.starts_with(want), "{path}: {ty}");
        }
        let (status, _, body) = get(&app, "/assets/nope.js", None).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
        assert!(body.contains("\"not_found\""), "{body}");

        let (status, _, body) = get(&app, "/api/v1/stats", None).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
        let (status, _, body) = get(&app, "/api/v1/stats", Some("s3cret")).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(json["slots"]["blue"]["requests"], 0, "{json}");
        assert!(json["slots"]["green"]["p99_ms"].is_null(), "{json}");
        let (_, _, body) = get(&app, "/api/v1/stats", Some("s3cret")).await;
        let json: serde_json::Value = serde_json::from_str(&body).unwrap();
        // The second call has a window: a rate (no requests, so 0), not null.
        assert_eq!(json["slots"]["blue"]["requests"], 0, "{json}");
        assert!(json["window_ms"].is_u64(), "{json}");
    }
}
