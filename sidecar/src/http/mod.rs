//! The HTTP API (axum): routing, authentication of `/v1/*`, and mapping of bad input to
//! `{"error":{"code","message"}}`. Handlers live in [`sessions`] (the session API) and [`ops`]
//! (health, readiness, metrics, status); [`openapi`] serves the API's OpenAPI document.

pub mod openapi;
pub mod ops;
pub mod origin;
pub mod server;
pub mod sessions;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::routing::{get, post};

use crate::auth::reload::KeyRing;
use crate::engine::Engine;
use crate::error::ApiError;
use crate::gpu::GpuProbe;
use crate::metrics::Metrics;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The session engine.
    pub engine: Arc<Engine>,
    /// Verifies bearer tokens (its key reloaded from its file by
    /// [`crate::auth::reload::spawn_watcher`]).
    pub auth: Arc<KeyRing>,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
    /// GPU status.
    pub gpu: Arc<GpuProbe>,
    /// Whether codex's command sandbox works here (checked once at start-up).
    pub sandbox: Arc<crate::codex::sandbox::SandboxCheck>,
    /// Readiness probe cache.
    pub ready: Arc<ops::ReadyCache>,
    /// Process start, for uptime.
    pub started: Instant,
    /// Becomes true when the sidecar starts shutting down: long-polls return and event streams
    /// end, so the server can drain its connections.
    pub shutdown: tokio::sync::watch::Receiver<bool>,
}

/// The authenticated caller: the JWT `sub` (or `anonymous` with `--insecure-no-auth`).
#[derive(Debug, Clone)]
pub struct Owner(pub String);

impl FromRequestParts<AppState> for Owner {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let mut values = parts.headers.get_all(header::AUTHORIZATION).iter();
        let first = values.next();
        let header = match (first, values.next()) {
            (None, _) => None,
            (Some(v), None) => Some(v.to_str().map_err(|_| malformed())?),
            (Some(_), Some(_)) => return Err(malformed()),
        };
        match state.auth.verify(header) {
            Ok(p) => Ok(Owner(p.subject)),
            Err(e) => Err(ApiError::unauthorized(e.code(), e.to_string())),
        }
    }
}

fn malformed() -> ApiError {
    let e = crate::auth::AuthError::MalformedHeader;
    ApiError::unauthorized(e.code(), e.to_string())
}

/// Maps a JSON body rejection to a stable error.
pub fn json_error(r: JsonRejection) -> ApiError {
    match r {
        JsonRejection::MissingJsonContentType(_) => ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send the body as JSON with `Content-Type: application/json`",
        ),
        JsonRejection::JsonSyntaxError(e) => ApiError::bad_request("invalid_json", e.body_text()),
        JsonRejection::JsonDataError(e) => ApiError::bad_request("invalid_request", e.body_text()),
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "the request body is too large",
        ),
        other => ApiError::bad_request("invalid_request", other.body_text()),
    }
}

/// Maps a query-string rejection to 400 `invalid_query`.
pub fn query_error(r: QueryRejection) -> ApiError {
    ApiError::bad_request("invalid_query", r.body_text())
}

/// The whole API.
pub fn router(state: AppState) -> Router {
    let body_limit = state.engine.ctx().config.limits.body_bytes;
    let message_body_limit = state.engine.ctx().config.limits.message_body_bytes;
    Router::new()
        .route("/v1/sessions", post(sessions::create).get(sessions::list))
        .route(
            "/v1/sessions/{id}",
            get(sessions::get_one)
                .patch(sessions::update)
                .delete(sessions::delete),
        )
        .route(
            "/v1/sessions/{id}/messages",
            post(sessions::send).layer(DefaultBodyLimit::max(message_body_limit)),
        )
        .route("/v1/sessions/{id}/events", get(sessions::events))
        .route("/v1/sessions/{id}/events/stream", get(sessions::stream))
        .route("/v1/sessions/{id}/interrupt", post(sessions::interrupt))
        .route("/v1/sessions/{id}/compact", post(sessions::compact))
        .route("/v1/status", get(ops::status))
        .route("/v1/drain", post(ops::drain).delete(ops::undrain))
        .route("/v1/openapi.json", get(openapi::document))
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .fallback(|| async { ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "method not allowed on this route",
            )
        })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            origin::guard,
        ))
        .with_state(state)
}
