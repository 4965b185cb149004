//! The one error type of the HTTP API: an HTTP status, a stable code and a
//! message, rendered as `{"error": {"code", "type", "message", "request_id"}}`.
//!
//! Handlers return [`ApiError`]; the request-id middleware
//! ([`super::request_id`]) fills in `request_id`, and turns the bodies of
//! errors axum produces itself (unknown method, body too large) into the
//! same shape.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use crate::run::RunError;
use crate::store::StoreError;

/// An API error.
#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable code, e.g. `NOT_FOUND`.
    pub code: &'static str,
    /// What went wrong, for a person.
    pub message: String,
    /// Seconds to wait (429, 503).
    pub retry_after: Option<u64>,
    /// Extra structured detail (flow diagnostics).
    pub details: Option<Value>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after: None,
            details: None,
        }
    }

    /// 400 `INVALID_REQUEST`.
    pub fn invalid(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::BAD_REQUEST, "INVALID_REQUEST", message)
    }
    /// 401 `AUTHENTICATION_FAILED`.
    pub fn unauthenticated(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::UNAUTHORIZED, "AUTHENTICATION_FAILED", message)
    }
    /// 403 `PERMISSION_DENIED`.
    pub fn forbidden(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::FORBIDDEN, "PERMISSION_DENIED", message)
    }
    /// 404 `NOT_FOUND`.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::NOT_FOUND, "NOT_FOUND", message)
    }
    /// 405 `METHOD_NOT_ALLOWED`.
    pub fn method_not_allowed(message: impl Into<String>) -> ApiError {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "METHOD_NOT_ALLOWED",
            message,
        )
    }
    /// 409 `CONFLICT`.
    pub fn conflict(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::CONFLICT, "CONFLICT", message)
    }
    /// 413 `PAYLOAD_TOO_LARGE`.
    pub fn too_large(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE", message)
    }
    /// 415 `UNSUPPORTED_MEDIA_TYPE`.
    pub fn media_type(message: impl Into<String>) -> ApiError {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UNSUPPORTED_MEDIA_TYPE",
            message,
        )
    }
    /// 422 `VALIDATION_FAILED`.
    pub fn validation(message: impl Into<String>) -> ApiError {
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "VALIDATION_FAILED",
            message,
        )
    }
    /// 429 `RATE_LIMIT_EXCEEDED` with `Retry-After`.
    pub fn rate_limited(message: impl Into<String>, retry_after: u64) -> ApiError {
        ApiError {
            retry_after: Some(retry_after),
            ..Self::new(
                StatusCode::TOO_MANY_REQUESTS,
                "RATE_LIMIT_EXCEEDED",
                message,
            )
        }
    }
    /// 500 `INTERNAL_ERROR`; the cause is logged, not sent.
    pub fn internal(cause: impl std::fmt::Display) -> ApiError {
        tracing::error!(error = %cause, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL_ERROR",
            "internal error; the server log has the details under this request id",
        )
    }
    /// 503 `SERVICE_UNAVAILABLE` with `Retry-After`.
    pub fn unavailable(message: impl Into<String>, retry_after: u64) -> ApiError {
        ApiError {
            retry_after: Some(retry_after),
            ..Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "SERVICE_UNAVAILABLE",
                message,
            )
        }
    }

    /// The answer of a `respond: output` hook whose run did not give one
    /// (failed, cancelled, or an output that is not a response), at the
    /// trigger's `failure_status`.
    pub fn hook_failed(
        status: u16,
        code: &'static str,
        message: impl Into<String>,
        details: Value,
    ) -> ApiError {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Self::new(status, code, message).with_details(details)
    }

    /// Adds structured details (`error.details`).
    pub fn with_details(self, details: Value) -> ApiError {
        ApiError {
            details: Some(details),
            ..self
        }
    }

    /// The error for a status axum or a layer produced without a body of ours.
    pub fn for_status(status: StatusCode) -> ApiError {
        match status {
            StatusCode::NOT_FOUND => Self::not_found("no such route"),
            StatusCode::METHOD_NOT_ALLOWED => {
                Self::method_not_allowed("this method is not allowed on this route")
            }
            StatusCode::PAYLOAD_TOO_LARGE => {
                Self::too_large("the request body is larger than this route accepts")
            }
            StatusCode::UNSUPPORTED_MEDIA_TYPE => Self::media_type("unsupported content type"),
            StatusCode::UNAUTHORIZED => Self::unauthenticated("authentication failed"),
            StatusCode::FORBIDDEN => Self::forbidden("permission denied"),
            StatusCode::UNPROCESSABLE_ENTITY => Self::validation("the request is not valid"),
            s if s.is_server_error() => Self::internal(format!("HTTP {s} without a body")),
            _ => Self::invalid("the request is not valid"),
        }
    }

    /// The `type` field: the class of the error.
    fn kind(&self) -> &'static str {
        match self.status.as_u16() {
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            409 => "conflict_error",
            429 => "rate_limit_error",
            500..=599 => "server_error",
            _ => "invalid_request_error",
        }
    }

    /// The JSON body with `request_id`.
    pub fn body(&self, request_id: &str) -> Value {
        let mut error = json!({
            "code": self.code,
            "type": self.kind(),
            "message": self.message,
            "request_id": request_id,
        });
        if let Some(d) = &self.details {
            error["details"] = d.clone();
        }
        json!({ "error": error })
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}: {}",
            self.status.as_u16(),
            self.code,
            self.message
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut res = (self.status, axum::Json(self.body(""))).into_response();
        if let Some(secs) = self.retry_after {
            res.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        // The request-id middleware re-renders the body with the id.
        res.extensions_mut().insert(self);
        res
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::internal(e)
    }
}

impl From<RunError> for ApiError {
    fn from(e: RunError) -> Self {
        match e {
            RunError::Inputs(m) => ApiError::validation(format!("invalid inputs: {m}")),
            RunError::NotFound(_) => ApiError::not_found(e.to_string()),
            RunError::AlreadyFinished(..) | RunError::Held { .. } | RunError::AtLimit { .. } => {
                ApiError::conflict(e.to_string())
            }
            RunError::Flow { .. } | RunError::StepsChanged { .. } => {
                ApiError::conflict(e.to_string())
            }
            RunError::NotWaiting(m) => ApiError::conflict(m),
            RunError::Signal(_) => ApiError::validation(e.to_string()),
            RunError::Store(s) => ApiError::internal(s),
        }
    }
}

/// The result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;
