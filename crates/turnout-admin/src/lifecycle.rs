//! The router's own lifecycle through the API: `POST /api/v1/reload`, `POST
//! /api/v1/upgrade` and `POST /api/v1/stop`. The work is the binary's (it owns the
//! process, its sockets and its config file); this module only exposes it, through
//! [`Lifecycle`].

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use turnout_pipeline::BoxFuture;

use crate::{AdminState, ApiError, ErrorResponse};

/// What the process that serves the API can do to itself.
pub trait Lifecycle: Send + Sync + 'static {
    /// Re-reads the config file and applies it by handing over to a new process.
    fn reload(&self) -> BoxFuture<'_, Result<ReloadReport, LifecycleError>>;
    /// Hands over to a new process from `binary` (the one the router was started from
    /// when `None`).
    fn upgrade(
        &self,
        binary: Option<String>,
    ) -> BoxFuture<'_, Result<UpgradeReport, LifecycleError>>;
    /// Stops the router; with `instances`, the service's instances too.
    fn stop(&self, instances: bool) -> Result<(), LifecycleError>;
}

/// Why a reload or an upgrade did not happen; the running router is unchanged.
#[derive(Debug, Clone)]
pub enum LifecycleError {
    /// The config file has errors (each with its file, line and key).
    InvalidConfig(Vec<String>),
    /// A key changed that a running router cannot change.
    Immutable(Vec<String>),
    /// Not now (a deployment before its switch, another handover under way).
    Conflict(String),
    /// The new process failed to start; the old one keeps serving.
    Failed(String),
}

impl From<LifecycleError> for ApiError {
    fn from(e: LifecycleError) -> ApiError {
        match e {
            LifecycleError::InvalidConfig(errors) => ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_config",
                format!(
                    "the config file has {} problem{}; nothing was changed:\n{}",
                    errors.len(),
                    if errors.len() == 1 { "" } else { "s" },
                    errors.join("\n")
                ),
            ),
            LifecycleError::Immutable(keys) => ApiError::new(
                StatusCode::BAD_REQUEST,
                "restart_required",
                format!(
                    "these keys cannot change in a running router; nothing was changed: {} (restart turnout with the new config to apply them: `turnout upgrade` keeps them as they are)",
                    keys.join(", ")
                ),
            ),
            LifecycleError::Conflict(m) => ApiError::new(StatusCode::CONFLICT, "conflict", m),
            LifecycleError::Failed(m) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "handover_failed", m)
            }
        }
    }
}

/// One router process.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema, PartialEq)]
pub struct ProcessInfo {
    /// Its pid.
    pub pid: u32,
    /// turnout's version.
    pub version: String,
}

/// The answer to `POST /api/v1/reload`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct ReloadReport {
    /// What changed, one line per key: `bake.max_error_rate: 0.01 -> 0.05`.
    pub changed: Vec<String>,
    /// The process that served before.
    pub old: ProcessInfo,
    /// The process that serves now (the same when nothing changed).
    pub new: ProcessInfo,
    /// Anything else worth saying (a deployment that keeps its settings).
    #[serde(default)]
    pub notes: Vec<String>,
}

/// The answer to `POST /api/v1/upgrade`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct UpgradeReport {
    /// The process that served before; it drains and exits.
    pub old: ProcessInfo,
    /// The process that serves now.
    pub new: ProcessInfo,
    /// The binary it runs.
    pub binary: String,
}

/// `POST /api/v1/upgrade`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct UpgradeRequest {
    /// The binary to run; by default the path the router was started from.
    #[serde(default)]
    pub binary: Option<String>,
}

/// `POST /api/v1/stop`.
#[derive(Debug, Clone, Default, Deserialize, ToSchema)]
pub struct StopRequest {
    /// Also stop the service's instances turnout started (default true: `turnout stop`
    /// takes the service down on purpose).
    #[serde(default = "yes")]
    pub instances: bool,
}

fn yes() -> bool {
    true
}

/// The answer to `POST /api/v1/stop`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct StopReport {
    /// The process that stops.
    pub pid: u32,
    /// Whether the instances are stopped too.
    pub instances: bool,
}

fn lifecycle(state: &AdminState) -> Result<&Arc<dyn Lifecycle>, ApiError> {
    state.lifecycle.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "not_supported",
            "this router cannot reload, upgrade or stop itself through the API",
        )
    })
}

/// Re-reads the config file the router was started with and applies it without dropping
/// a connection: a new router process takes over the listening sockets, the state and
/// the service's instances, and this one drains. A config with errors changes nothing.
#[utoipa::path(post, path = "/api/v1/reload", tag = "lifecycle", security(("bearer" = [])),
    responses((status = 200, body = ReloadReport),
        (status = 400, description = "The config has errors, or changes a key that needs a restart", body = ErrorResponse),
        (status = 401, body = ErrorResponse), (status = 409, body = ErrorResponse),
        (status = 500, description = "The new process failed; the old one still serves", body = ErrorResponse)))]
pub(crate) async fn reload(
    State(state): State<AdminState>,
) -> Result<Json<ReloadReport>, ApiError> {
    Ok(Json(lifecycle(&state)?.reload().await?))
}

/// Replaces the router process with a new one (by default the binary at the path the
/// router was started from) without failing a request; returns once the new one serves.
#[utoipa::path(post, path = "/api/v1/upgrade", tag = "lifecycle", security(("bearer" = [])),
    request_body = UpgradeRequest,
    responses((status = 200, body = UpgradeReport),
        (status = 401, body = ErrorResponse), (status = 409, body = ErrorResponse),
        (status = 500, description = "The new process failed; the old one still serves", body = ErrorResponse)))]
pub(crate) async fn upgrade(
    State(state): State<AdminState>,
    body: Result<Json<UpgradeRequest>, JsonRejection>,
) -> Result<Json<UpgradeReport>, ApiError> {
    let req = match body {
        Ok(Json(req)) => req,
        // No body at all: the defaults.
        Err(JsonRejection::MissingJsonContentType(_)) => UpgradeRequest::default(),
        Err(e) => return Err(e.into()),
    };
    Ok(Json(lifecycle(&state)?.upgrade(req.binary).await?))
}

/// Stops the router after its requests in flight; by default the service's instances
/// that turnout started are stopped too (`{"instances": false}` leaves them running for
/// the next `turnout serve`).
#[utoipa::path(post, path = "/api/v1/stop", tag = "lifecycle", security(("bearer" = [])),
    request_body = StopRequest,
    responses((status = 200, body = StopReport), (status = 401, body = ErrorResponse),
        (status = 409, description = "A reload or upgrade is under way", body = ErrorResponse)))]
pub(crate) async fn stop(
    State(state): State<AdminState>,
    body: Result<Json<StopRequest>, JsonRejection>,
) -> Result<Json<StopReport>, ApiError> {
    let req = match body {
        Ok(Json(req)) => req,
        Err(JsonRejection::MissingJsonContentType(_)) => StopRequest { instances: true },
        Err(e) => return Err(e.into()),
    };
    lifecycle(&state)?.stop(req.instances)?;
    Ok(Json(StopReport {
        pid: std::process::id(),
        instances: req.instances,
    }))
}
