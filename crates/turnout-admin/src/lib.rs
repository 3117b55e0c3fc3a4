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
pub mod lifecycle;
pub mod metrics;

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
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
    /// Reload, upgrade and stop (the binary's); `None`: those routes answer 501.
    pub lifecycle: Option<Arc<dyn lifecycle::Lifecycle>>,
    /// The names the API may be reached by besides IP addresses and `localhost`
    /// (`[admin] hosts`, a fleet's advertised name): every request's `Host` (and a
    /// browser's `Origin`) must be one of them, so that a web page cannot reach the API
    /// through DNS rebinding. `None`: no check (tests of this crate).
    pub hosts: Option<Arc<Vec<String>>>,
}

/// An error as the API returns it.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// A `Location` for a redirect (to the fleet's leader).
    location: Option<String>,
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
            location: None,
        }
    }

    /// `e`, for a call on `path`: on a replica that is not the fleet's leader, a `307`
    /// to the same path on the leader (a client that follows it repeats the call there).
    fn at(path: &str) -> impl FnOnce(ControlError) -> ApiError + '_ {
        move |e| {
            let leader = match &e {
                ControlError::NotLeader { leader: Some(l) } => Some(l.admin.clone()),
                _ => None,
            };
            let mut api = ApiError::from(e);
            if let Some(admin) = leader {
                api.status = StatusCode::TEMPORARY_REDIRECT;
                api.location = Some(format!("{}{path}", admin.trim_end_matches('/')));
            }
            api
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
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(loc) = self.location.and_then(|l| HeaderValue::from_str(&l).ok()) {
            resp.headers_mut().insert(header::LOCATION, loc);
        }
        resp
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
            ControlError::NotLeader { .. } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not_leader", message)
            }
            ControlError::HandingOver(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "handing_over", message)
            }
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
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SwitchRequest {
    /// `blue` or `green`.
    pub to: String,
    /// Switch even when the target has no healthy upstream.
    #[serde(default)]
    pub force: bool,
}

/// The answer to a switch or rollback.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
pub struct SwitchResponse {
    /// The live slot now.
    pub live: Option<SlotName>,
    /// The new routing revision.
    pub revision: u64,
    /// Whether the routing changed (false: the slot was live already).
    pub changed: bool,
}

impl From<RoutingState> for SwitchResponse {
    fn from(s: RoutingState) -> Self {
        SwitchResponse {
            live: s.live,
            revision: s.revision,
            changed: true,
        }
    }
}

/// Every error's shape, for the OpenAPI document (what [`ApiError`] writes).
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorResponse {
    /// The error.
    pub error: ErrorResponseDetail,
}

/// The inside of [`ErrorResponse`].
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorResponseDetail {
    /// A stable code for scripts: `unauthorized`, `conflict`, `unhealthy_slot`, ...
    pub code: String,
    /// What went wrong and what to do, for people.
    pub message: String,
}

/// The admin router and its OpenAPI document, built from the same routes: every route
/// goes through `utoipa_axum`'s `routes!`, so a route the router serves cannot be missing
/// from the document.
pub fn router_and_openapi(state: AdminState) -> (Router, utoipa::openapi::OpenApi) {
    use utoipa_axum::router::OpenApiRouter;
    use utoipa_axum::routes;
    let api = OpenApiRouter::new()
        .routes(routes!(status))
        .routes(routes!(switch))
        .routes(routes!(rollback))
        .routes(routes!(deploy, deployments))
        .routes(routes!(deployment))
        .routes(routes!(promote))
        .routes(routes!(abort))
        .routes(routes!(shadow_report))
        .routes(routes!(capture::capture))
        .routes(routes!(dashboard::stats))
        .routes(routes!(lifecycle::reload))
        .routes(routes!(lifecycle::upgrade))
        .routes(routes!(lifecycle::stop))
        .route_layer(middleware::from_fn_with_state(state.clone(), require_token));
    let (router, mut doc) = OpenApiRouter::new()
        // Its own token check: header, or ?access_token= for EventSource (events.rs).
        .routes(routes!(events::events))
        // No token: Prometheus scrapes it (metrics.rs).
        .routes(routes!(metrics::metrics))
        .routes(routes!(openapi_json))
        .routes(routes!(dashboard::index))
        .routes(routes!(dashboard::asset))
        .merge(api)
        .split_for_parts();
    doc.info.title = "turnout admin API".into();
    doc.info.version = env!("CARGO_PKG_VERSION").into();
    doc.info.description = Some(
        "The admin API of a turnout router: routing, deployments, shadowing, capture, events and metrics. Every /api/v1 route needs `Authorization: Bearer TOKEN` (the events stream also takes `?access_token=`); /metrics, /openapi.json and the dashboard do not. Errors are `{\"error\": {\"code\", \"message\"}}`.".into(),
    );
    doc.info.contact = None;
    doc.info.license = None;
    let components = doc.components.get_or_insert_with(Default::default);
    components.add_security_scheme(
        "bearer",
        utoipa::openapi::security::SecurityScheme::Http(utoipa::openapi::security::Http::new(
            utoipa::openapi::security::HttpAuthScheme::Bearer,
        )),
    );
    let json: Arc<str> = Arc::from(doc.to_json().unwrap_or_else(|_| "{}".into()));
    let router = router
        .fallback(not_found)
        // After the routes: it is set on the routes registered so far. Runs without the
        // token check (it only says which methods a path takes; axum adds `Allow`).
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::Extension(OpenApiJson(json)))
        // Every route, the dashboard and the fallbacks included.
        .layer(middleware::from_fn_with_state(state.clone(), check_host))
        .with_state(state);
    (router, doc)
}

/// The admin router.
pub fn router(state: AdminState) -> Router {
    router_and_openapi(state).0
}

/// The OpenAPI document as served.
#[derive(Clone)]
struct OpenApiJson(Arc<str>);

/// This document: the admin API in OpenAPI 3.1, generated from the routes.
#[utoipa::path(get, path = "/openapi.json", tag = "meta",
    responses((status = 200, description = "the OpenAPI document", content_type = "application/json")))]
async fn openapi_json(axum::Extension(doc): axum::Extension<OpenApiJson>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        doc.0.to_string(),
    )
        .into_response()
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

/// Refuses a request whose `Host` (or `Origin`, which browsers send on cross-site and
/// POST requests) names the admin API by a name it does not answer to: a page on another
/// site that made its own name resolve to 127.0.0.1 (DNS rebinding) reaches the API with
/// its own name in `Host`.
async fn check_host(
    State(state): State<AdminState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let Some(allowed) = &state.hosts else {
        return Ok(next.run(req).await);
    };
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()));
    let Some(host) = host else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "no_host",
            "a Host header is needed",
        ));
    };
    if !host_allowed(host_name(host), allowed) {
        return Err(forbidden_name("Host", host));
    }
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let name = origin.split_once("://").map_or("", |(_, rest)| {
            host_name(rest.split('/').next().unwrap_or(""))
        });
        if !host_allowed(name, allowed) {
            return Err(forbidden_name("Origin", origin));
        }
    }
    Ok(next.run(req).await)
}

/// The name part of `host[:port]` (`[v6]:port` too).
fn host_name(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or("");
    }
    match authority.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => authority,
    }
}

/// IP addresses, `localhost`, and the configured names.
fn host_allowed(name: &str, allowed: &[String]) -> bool {
    name.parse::<std::net::IpAddr>().is_ok()
        || name.eq_ignore_ascii_case("localhost")
        || allowed.iter().any(|a| a.eq_ignore_ascii_case(name))
}

fn forbidden_name(header: &str, value: &str) -> ApiError {
    let shown: String = value.chars().take(80).collect();
    ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden_host",
        format!(
            "the admin API does not answer to {shown:?} (the {header} header): only IP addresses, localhost and the names in [admin] hosts are served, so that a web page cannot reach it through DNS rebinding; use http://127.0.0.1:PORT, or add the name to [admin] hosts"
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
                "this route needs `Authorization: Bearer TOKEN`; the token is set by [admin] token (without one, the router generated one into the file admin-token of its state directory, which the CLI on the same machine reads)"
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

/// The live slot, both slots with their upstreams' health, the deployment in progress and
/// the traffic split.
#[utoipa::path(get, path = "/api/v1/status", tag = "routing", security(("bearer" = [])),
    responses((status = 200, body = Status), (status = 401, body = ErrorResponse)))]
async fn status(State(state): State<AdminState>) -> Json<Status> {
    Json(state.controller.status().await)
}

/// Moves all traffic to a slot at once; refused when it has no healthy upstream unless
/// `force`, and while a deployment owns the routing.
#[utoipa::path(post, path = "/api/v1/switch", tag = "routing", security(("bearer" = [])),
    request_body = SwitchRequest,
    responses((status = 200, body = SwitchResponse), (status = 400, body = ErrorResponse),
        (status = 401, body = ErrorResponse), (status = 409, body = ErrorResponse),
        (status = 503, body = ErrorResponse)))]
async fn switch(
    State(state): State<AdminState>,
    body: Result<Json<SwitchRequest>, JsonRejection>,
) -> Result<Json<SwitchResponse>, ApiError> {
    let Json(req) = body?;
    let to: SlotName = req.to.parse().map_err(|e: turnout_core::ParseSlotError| {
        ApiError::new(StatusCode::BAD_REQUEST, "unknown_slot", e.to_string())
    })?;
    let (next, changed) = state.controller.switch_reporting(to, req.force).await?;
    Ok(Json(SwitchResponse {
        changed,
        ..next.into()
    }))
}

/// Sends traffic back to the standby slot; during a deployment, also ends it as rolled
/// back.
#[utoipa::path(post, path = "/api/v1/rollback", tag = "routing", security(("bearer" = [])),
    responses((status = 200, body = SwitchResponse), (status = 401, body = ErrorResponse),
        (status = 409, body = ErrorResponse),
        (status = 307, description = "On a fleet replica that is not the leader: the same call on the leader (Location)", body = ErrorResponse),
        (status = 503, description = "The state store is unreachable, or no fleet leader is elected", body = ErrorResponse)))]
async fn rollback(State(state): State<AdminState>) -> Result<Json<SwitchResponse>, ApiError> {
    Ok(Json(
        state
            .controller
            .rollback()
            .await
            .map_err(ApiError::at("/api/v1/rollback"))?
            .into(),
    ))
}

/// The body of `POST /api/v1/deployments`.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
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

/// Starts a deployment of a version into the idle slot; the pipeline runs in the router.
#[utoipa::path(post, path = "/api/v1/deployments", tag = "deployments", security(("bearer" = [])),
    request_body = DeployBody,
    responses((status = 202, body = Deployment), (status = 400, body = ErrorResponse),
        (status = 401, body = ErrorResponse), (status = 409, body = ErrorResponse),
        (status = 307, description = "On a fleet replica that is not the leader: the same call on the leader (Location)", body = ErrorResponse),
        (status = 503, description = "The state store is unreachable, or no fleet leader is elected", body = ErrorResponse)))]
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
        .await
        .map_err(ApiError::at("/api/v1/deployments"))?;
    Ok((StatusCode::ACCEPTED, Json(d)))
}

/// `GET /api/v1/deployments?limit=N`.
#[derive(Debug, Deserialize)]
struct ListQuery {
    limit: Option<usize>,
}

/// Recent deployments, newest first.
#[utoipa::path(get, path = "/api/v1/deployments", tag = "deployments", security(("bearer" = [])),
    params(("limit" = Option<usize>, Query, description = "how many (default 50, at most 1000)")),
    responses((status = 200, body = Vec<Deployment>), (status = 400, body = ErrorResponse),
        (status = 401, body = ErrorResponse)))]
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

/// One deployment: its stages, verdict and reason.
#[utoipa::path(get, path = "/api/v1/deployments/{id}", tag = "deployments", security(("bearer" = [])),
    params(("id" = String, Path, description = "the deployment's id")),
    responses((status = 200, body = Deployment), (status = 401, body = ErrorResponse),
        (status = 404, body = ErrorResponse)))]
async fn deployment(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<Deployment>, ApiError> {
    Ok(Json(state.controller.deployment(&id).await?))
}

/// Passes a deployment waiting at its manual gate, or moves a canary to its next step.
#[utoipa::path(post, path = "/api/v1/promote", tag = "deployments", security(("bearer" = [])),
    responses((status = 200, body = Deployment), (status = 401, body = ErrorResponse),
        (status = 409, body = ErrorResponse),
        (status = 307, description = "On a fleet replica that is not the leader: the same call on the leader (Location)", body = ErrorResponse),
        (status = 503, description = "The state store is unreachable, or no fleet leader is elected", body = ErrorResponse)))]
async fn promote(State(state): State<AdminState>) -> Result<Json<Deployment>, ApiError> {
    Ok(Json(
        state
            .controller
            .promote()
            .await
            .map_err(ApiError::at("/api/v1/promote"))?,
    ))
}

/// The shadow comparison of the running deployment (so far) or of the last one.
#[utoipa::path(get, path = "/api/v1/shadow/report", tag = "shadow", security(("bearer" = [])),
    responses((status = 200, body = turnout_pipeline::ShadowReport),
        (status = 401, body = ErrorResponse), (status = 404, body = ErrorResponse)))]
async fn shadow_report(
    State(state): State<AdminState>,
) -> Result<Json<turnout_pipeline::ShadowReport>, ApiError> {
    Ok(Json(state.controller.shadow_report().await?))
}

/// Ends the running deployment before its switch; answers with its final record.
#[utoipa::path(post, path = "/api/v1/abort", tag = "deployments", security(("bearer" = [])),
    responses((status = 200, body = Deployment), (status = 401, body = ErrorResponse),
        (status = 409, body = ErrorResponse),
        (status = 307, description = "On a fleet replica that is not the leader: the same call on the leader (Location)", body = ErrorResponse),
        (status = 503, description = "The state store is unreachable, or no fleet leader is elected", body = ErrorResponse)))]
async fn abort(State(state): State<AdminState>) -> Result<Json<Deployment>, ApiError> {
    Ok(Json(
        state
            .controller
            .abort()
            .await
            .map_err(ApiError::at("/api/v1/abort"))?,
    ))
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
            lifecycle: None,
            hosts: None,
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

    /// Every route the router serves, as a user of the API knows them (SPEC.md plus the
    /// dashboard's): each must be in the OpenAPI document, and each path in the document
    /// must be served (not the not-found or method-not-allowed fallbacks).
    #[tokio::test]
    async fn the_openapi_document_covers_every_route() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
        let controller = Controller::start(
            ProxyOptions::default(),
            store,
            [SlotState::idle(), SlotState::idle()],
            turnout_pipeline::PipelineOptions::default(),
        )
        .await
        .unwrap();
        let (app, doc) = router_and_openapi(AdminState {
            controller: Arc::new(controller),
            token: Some("s3cret".into()),
            shutdown: None,
            lifecycle: None,
            hosts: None,
        });
        let expected: &[(&str, &str)] = &[
            ("get", "/api/v1/status"),
            ("post", "/api/v1/switch"),
            ("post", "/api/v1/rollback"),
            ("post", "/api/v1/deployments"),
            ("get", "/api/v1/deployments"),
            ("get", "/api/v1/deployments/{id}"),
            ("post", "/api/v1/promote"),
            ("post", "/api/v1/abort"),
            ("get", "/api/v1/shadow/report"),
            ("post", "/api/v1/capture"),
            ("get", "/api/v1/events"),
            ("get", "/api/v1/stats"),
            ("get", "/metrics"),
            ("get", "/openapi.json"),
            ("get", "/"),
            ("get", "/assets/{file}"),
        ];
        let json: serde_json::Value = serde_json::from_str(&doc.to_json().unwrap()).unwrap();
        let mut documented: Vec<(String, String)> = Vec::new();
        for (path, item) in json["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                documented.push((method.clone(), path.clone()));
            }
        }
        for (method, path) in expected {
            assert!(
                documented.contains(&(method.to_string(), path.to_string())),
                "{method} {path} is not in the OpenAPI document: {documented:?}"
            );
        }
        // And every documented route is really served.
        for (method, path) in &documented {
            let uri = path
                .replace("{id}", "20261126-000000-0000")
                .replace("{file}", "app.js");
            let req = Request::builder()
                .method(method.to_uppercase().as_str())
                .uri(&uri)
                .header("authorization", "Bearer s3cret")
                .header("content-type", "application/json")
                .body(Body::from("{}"))
                .unwrap();
            let resp = app.clone().oneshot(req).await.unwrap();
            let status = resp.status();
            // Streams (events, capture) answer 200 and would not end: the head is enough.
            if status == StatusCode::OK {
                continue;
            }
            let bytes = resp
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            let json: serde_json::Value =
                serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
            let code = json["error"]["code"].as_str().unwrap_or("");
            let fallback = code == "method_not_allowed"
                || (code == "not_found"
                    && json["error"]["message"]
                        .as_str()
                        .is_some_and(|m| m.starts_with("no route")));
            assert!(
                !fallback,
                "{method} {uri} is documented but not served: {json}"
            );
        }
        // Served without the token, as JSON.
        let resp = app
            .clone()
            .oneshot(
                Request::builder()
                    .uri("/openapi.json")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let bytes = resp.into_body().collect().await.unwrap().to_bytes();
        let served: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert!(served["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.")));
        assert_eq!(served["paths"], json["paths"]);
    }
}
