//! The API's error type: an HTTP status, a stable snake_case `code` and a message, rendered as
//! `{"error":{"code":"...","message":"..."}}`. Messages never carry secrets.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

/// An API error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code}: {message}")]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable code, e.g. `session_not_found`.
    pub code: &'static str,
    /// Human-readable detail.
    pub message: String,
}

impl ApiError {
    /// An error with this status, code and message.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    /// 400 with a code.
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    /// 404 `session_not_found`.
    pub fn session_not_found(id: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "session_not_found",
            format!("no session `{id}`"),
        )
    }

    /// 500 `internal` (an I/O error on the state dir, for instance).
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
    }

    /// 401 with a code; carries `WWW-Authenticate: Bearer` when rendered.
    pub fn unauthorized(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, code, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        let mut resp = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            // RFC 6750 §3.1: no error attribute when the request carried no token.
            let value = if self.code == "missing_token" {
                HeaderValue::from_static("Bearer")
            } else {
                let v = format!(
                    "Bearer error=\"invalid_token\", error_description=\"{}\"",
                    self.code
                );
                HeaderValue::from_str(&v).unwrap_or(HeaderValue::from_static("Bearer"))
            };
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, value);
        }
        resp
    }
}
