//! turnout's admin API: an axum router on its own address.
//!
//! Every route needs the bearer token (when one is configured) except `/metrics`,
//! `/openapi.json` and the dashboard. Errors have one JSON shape,
//! `{"error": {"code": "...", "message": "..."}}`, produced by [`ApiError`]'s
//! `IntoResponse` impl and nowhere else.
//!
//! `POST /api/v1/capture` streams live exchanges as a GoReplay file (see `capture.rs`).

mod capture;
mod dashboard;
mod events;
pub mod metrics;

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use turnout_core::Deployment;
use turnout_core::{RoutingState, SlotName, SwitchError};
use turnout_pipeline::{ControlError, Controller, DeployRequest, Status, StoreError};

pub use capture::{
    CaptureRequest, CONTENT_TYPE as CAPTURE_CONTENT_TYPE, MAX_CAPTURE_BODY, TRAILER_DROPPED,
    TRAILER_END, TRAILER_EXCHANGES, TRAILER_SKIPPED,
};

/// What the admin routes share.
#[derive(Clone)]
pub struct AdminState {
    /// The control plane.
    pub controller: Arc<Controller>,
    /// The bearer token; `None` only on a loopback address (the binary enforces that).
    pub token: Option<Arc<str>>,
    /// Turns true when the router is stopping: streaming answers (a capture) then end, so
    /// that they do not hold up the graceful stop. `None`: they end only on their own.
    pub shutdown: Option<tokio::sync::watch::Receiver<bool>>,
}

/// An error as the API returns it.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub(crate) fn new(
        status: StatusCode,
        code: &'static str,
        message: impl Into<String>,
    ) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: &'a str,
    message: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: &self.message,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<ControlError> for ApiError {
    fn from(e: ControlError) -> Self {
        let message = e.to_string();
        match e {
            ControlError::Refused(SwitchError::EmptySlot { .. }) => {
                ApiError::new(StatusCode::CONFLICT, "empty_slot", message)
            }
            ControlError::Refused(SwitchError::Unhealthy { .. }) => {
                ApiError::new(StatusCode::CONFLICT, "unhealthy_slot", message)
            }
            ControlError::Refused(SwitchError::NoStandby { .. }) => {
                ApiError::new(StatusCode::CONFLICT, "no_standby", message)
            }
            ControlError::Refused(SwitchError::LiveSlot { .. }) => {
                ApiError::new(StatusCode::CONFLICT, "live_slot", message)
            }
            ControlError::Conflict(_) => ApiError::new(StatusCode::CONFLICT, "conflict", message),
            ControlError::Invalid(_) => {
                ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
            }
            ControlError::NotFound(_) => ApiError::new(StatusCode::NOT_FOUND, "not_found", message),
            ControlError::Store(StoreError::Conflict { .. })
            | ControlError::NotSaved {
                source: StoreError::Conflict { .. },
                ..
            } => ApiError::new(StatusCode::CONFLICT, "conflict", message),
            ControlError::Store(_) | ControlError::NotSaved { .. } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                message,
            ),
            ControlError::Interrupted(_) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "interrupted", message)
            }
        }
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> Self {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("invalid JSON body: {}", e.body_text()),
        )
    }
}

/// The body of `POST /api/v1/switch`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchRequest {
    /// `blue` or `green`.
    pub to: String,
    /// Switch even when the target has no healthy upstream.
    #[serde(default)]
    pub force: bool,
}

/// The answer to a switch or rollback.
#[derive(Debug, Deserialize, Serialize)]
pub struct SwitchResponse {
    /// The live slot now.
    pub live: Option<SlotName>,
    /// The new routing revision.
    pub revision: u64,
}

impl From<RoutingState> for SwitchResponse {
    fn from(s: RoutingState) -> Self {
        SwitchResponse {
            live: s.live,
            revision: s.revision,
        }
    }
}

/// The admin router.
pub fn router(state: AdminState) -> Router {
    let api = Router::new()
        .route("/api/v1/status", get(status))
        .route("/api/v1/switch", post(switch))
        .route("/api/v1/rollback", post(rollback))
        .route("/api/v1/deployments", post(deploy).get(deployments))
        .route("/api/v1/deployments/{id}", get(deployment))
        .route("/api/v1/promote", post(promote))
        .route("/api/v1/abort", post(abort))
        .route("/api/v1/shadow/report", get(shadow_report))
        .route("/api/v1/capture", post(capture::capture))
        .route("/api/v1/stats", dashboard::stats_route())
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    Router::new()
        // Its own token check: header, or ?access_token= for EventSource (events.rs).
        .route("/api/v1/events", get(events::events))
        // No token: Prometheus scrapes it (metrics.rs).
        .route("/metrics", get(metrics::metrics))
        .merge(api)
        .merge(dashboard::routes())
        .fallback(not_found)
        // After the routes: it is set on the routes registered so far. Runs without the
        // token check (it only says which methods a path takes; axum adds `Allow`).
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{} is not allowed on {}; the Allow header lists the methods it takes",
            req.method(),
            req.uri().path()
        ),
    )
}

async fn not_found(req: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!(
            "no route {} {}; the API lives under /api/v1/",
            req.method(),
            req.uri().path()
        ),
    )
}

async fn require_token(
    State(state): State<AdminState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    if let Some(token) = &state.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let ok = given.is_some_and(|g| {
            use subtle::ConstantTimeEq;
            bool::from(g.as_bytes().ct_eq(token.as_bytes()))
        });
        if !ok {
            let message = if given.is_some() {
                "the bearer token is wrong; use the token from [admin] token (env TURNOUT_ADMIN_TOKEN for the CLI)"
            } else {
                "this route needs `Authorization: Bearer TOKEN`; the token is set by [admin] token"
            };
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                message,
            ));
        }
    }
    Ok(next.run(req).await)
}

async fn status(State(state): State<AdminState>) -> Json<Status> {
    Json(state.controller.status().await)
}

async fn switch(
    State(state): State<AdminState>,
    body: Result<Json<SwitchRequest>, JsonRejection>,
) -> Result<Json<SwitchResponse>, ApiError> {
    let Json(req) = body?;
    let to: SlotName = req.to.parse().map_err(|e: turnout_core::ParseSlotError| {
        ApiError::new(StatusCode::BAD_REQUEST, "unknown_slot", e.to_string())
    })?;
    let next = state.controller.switch(to, req.force).await?;
    Ok(Json(next.into()))
}

async fn rollback(State(state): State<AdminState>) -> Result<Json<SwitchResponse>, ApiError> {
    Ok(Json(state.controller.rollback().await?.into()))
}

/// The body of `POST /api/v1/deployments`.
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeployBody {
    /// The version to deploy.
    pub version: String,
    /// Already-running upstreams for it.
    #[serde(default)]
    pub upstreams: Vec<String>,
    /// Stop at a manual gate before the switch.
    #[serde(default)]
    pub manual: bool,
}

async fn deploy(
    State(state): State<AdminState>,
    body: Result<Json<DeployBody>, JsonRejection>,
) -> Result<(StatusCode, Json<Deployment>), ApiError> {
    let Json(req) = body?;
    let d = state
        .controller
        .deploy(DeployRequest {
            version: req.version,
            upstreams: req.upstreams,
            manual: req.manual,
        })
        .await?;
    Ok((StatusCode::ACCEPTED, Json(d)))
}

/// `GET /api/v1/deployments?limit=N`.
#[derive(Debug, Deserialize)]
struct ListQuery {
    limit: Option<usize>,
}

async fn deployments(
    State(state): State<AdminState>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<Deployment>>, ApiError> {
    let Query(q) = query.map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!("{}; limit is a number of deployments", e.body_text()),
        )
    })?;
    let limit = q.limit.unwrap_or(50).clamp(1, 1000);
    Ok(Json(state.controller.deployments(limit).await?))
}

async fn deployment(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<Deployment>, ApiError> {
    Ok(Json(state.controller.deployment(&id).await?))
}

async fn promote(State(state): State<AdminState>) -> Result<Json<Deployment>, ApiError> {
    Ok(Json(state.controller.promote().await?))
}

async fn shadow_report(
    State(state): State<AdminState>,
) -> Result<Json<turnout_pipeline::ShadowReport>, ApiError> {
    Ok(Json(state.controller.shadow_report().await?))
}

async fn abort(State(state): State<AdminState>) -> Result<Json<Deployment>, ApiError> {
    Ok(Json(state.controller.abort().await?))
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use http_body_util::BodyExt;
    use tower::ServiceExt;
    use turnout_core::{Role, SlotState};
    use turnout_proxy::ProxyOptions;
    use turnout_store::EmbeddedStore;

    use super::*;

    async fn app(dir: &std::path::Path) -> Router {
        app_with_shutdown(dir).await.0
    }

    /// The app, and the sender that tells it the router is stopping.
    pub(crate) async fn app_with_shutdown(
        dir: &std::path::Path,
    ) -> (Router, tokio::sync::watch::Sender<bool>) {
        let store = Arc::new(EmbeddedStore::open(dir).unwrap());
        let slot = |a: &str| SlotState {
            version: None,
            upstreams: vec![a.into()],
            role: Role::Idle,
        };
        // Port 9 (discard) on loopback: nothing listens, so green never becomes healthy.
        let controller = Controller::start(
            ProxyOptions::default(),
            store,
            [slot("127.0.0.1:9"), slot("127.0.0.1:9")],
            turnout_pipeline::PipelineOptions::default(),
        )
        .await
        .unwrap();
        let (stop, shutdown) = tokio::sync::watch::channel(false);
        let app = router(AdminState {
            controller: Arc::new(controller),
            token: Some("s3cret".into()),
            shutdown: Some(shutdown),
        });
        (app, stop)
    }

    async fn call(
        app: &Router,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: &str,
    ) -> (StatusCode, serde_json::Value) {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("content-type", "application/json");
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let resp = app
            .clone()
            .oneshot(req.body(Body::from(body.to_owned())).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
        )
    }

    #[tokio::test]
    async fn token_is_required_and_errors_have_one_shape() {
        let dir = tempfile::tempdir().unwrap();
        let app = app(dir.path()).await;
        // Wait (with a deadline) for the first health check to find green down.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let (_, json) = call(&app, "GET", "/api/v1/status", Some("s3cret"), "").await;
            if json["slots"]["green"]["upstreams"][0]["healthy"] == false {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "green never checked: {json}"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        // (method, path, token, body, expected status, expected error code)
        type Case<'a> = (
            &'a str,
            &'a str,
            Option<&'a str>,
            &'a str,
            StatusCode,
            &'a str,
        );
        let cases: &[Case] = &[
            (
                "GET",
                "/api/v1/status",
                None,
                "",
                StatusCode::UNAUTHORIZED,
                "unauthorized",
            ),
            (
                "GET",
                "/api/v1/status",
                Some("wrong"),
                "",
                StatusCode::UNAUTHORIZED,
                "unauthorized",
            ),
            (
                "POST",
                "/api/v1/switch",
                Some("s3cret"),
                r#"{"to":"purple"}"#,
                StatusCode::BAD_REQUEST,
                "unknown_slot",
            ),
            (
                "POST",
                "/api/v1/switch",
                Some("s3cret"),
                r#"{"to":"#,
                StatusCode::BAD_REQUEST,
                "bad_request",
            ),
            (
                "POST",
                "/api/v1/switch",
                Some("s3cret"),
                r#"{"to":"green","force":false}"#,
                StatusCode::CONFLICT,
                "unhealthy_slot",
            ),
            (
                "GET",
                "/api/v1/switch",
                Some("s3cret"),
                "",
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
            ),
            (
                "DELETE",
                "/api/v1/status",
                None,
                "",
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
            ),
            (
                "GET",
                "/api/v1/nope",
                Some("s3cret"),
                "",
                StatusCode::NOT_FOUND,
                "not_found",
            ),
            (
                "POST",
                "/api/v1/deployments",
                None,
                r#"{"version":"v2","upstreams":["127.0.0.1:9"]}"#,
                StatusCode::UNAUTHORIZED,
                "unauthorized",
            ),
            (
                "POST",
                "/api/v1/deployments",
                Some("s3cret"),
                r#"{"version":"v 2","upstreams":["127.0.0.1:9"]}"#,
                StatusCode::BAD_REQUEST,
                "bad_request",
            ),
            (
                "POST",
                "/api/v1/deployments",
                Some("s3cret"),
                r#"{"version":"v2","upstreams":["http://127.0.0.1:9"]}"#,
                StatusCode::BAD_REQUEST,
                "bad_request",
            ),
            (
                "POST",
                "/api/v1/deployments",
                Some("s3cret"),
                r#"{"version":"v2","upstreams":["127.0.0.1:0"]}"#,
                StatusCode::BAD_REQUEST,
                "bad_request",
            ),
            (
                "POST",
                "/api/v1/deployments",
                Some("s3cret"),
                r#"{"version":"v2","upstream":["127.0.0.1:9"]}"#,
                StatusCode::BAD_REQUEST,
                "bad_request",
            ),
            (
                // No [provision] and no upstreams: nothing to deploy.
                "POST",
                "/api/v1/deployments",
                Some("s3cret"),
                r#"{"version":"v2"}"#,
                StatusCode::BAD_REQUEST,
                "bad_request",
            ),
            (
                "POST",
                "/api/v1/promote",
                Some("s3cret"),
                "",
                StatusCode::CONFLICT,
                "conflict",
            ),
            (
                "POST",
                "/api/v1/abort",
                Some("s3cret"),
                "",
                StatusCode::CONFLICT,
                "conflict",
            ),
            (
                "GET",
                "/api/v1/deployments/20261126-000000-0000",
                Some("s3cret"),
                "",
                StatusCode::NOT_FOUND,
                "not_found",
            ),
            (
                "GET",
                "/api/v1/deployments?limit=many",
                Some("s3cret"),
                "",
                StatusCode::BAD_REQUEST,
                "bad_request",
            ),
        ];
        for (method, path, token, body, want_status, want_code) in cases {
            let (status, json) = call(&app, method, path, *token, body).await;
            assert_eq!(status, *want_status, "{method} {path} {body}: {json}");
            assert_eq!(json["error"]["code"], *want_code, "{json}");
            assert!(
                json["error"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty()),
                "{json}"
            );
        }
        // A wrong method still says which one is right.
        let resp = app
            .clone()
            .oneshot(
                Request::builder()
                    .uri("/api/v1/switch")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(resp.headers()["allow"], "POST");
        let (status, json) = call(&app, "GET", "/api/v1/status", Some("s3cret"), "").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(json["live"], "blue");
        assert_eq!(json["slots"]["green"]["role"], "standby");
        assert_eq!(json["weights"]["blue"], 100);
        let (status, json) = call(&app, "GET", "/api/v1/deployments", Some("s3cret"), "").await;
        assert_eq!((status, json), (StatusCode::OK, serde_json::json!([])));
    }
}
