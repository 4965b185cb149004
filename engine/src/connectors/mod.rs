//! Connectors: how the engine reads and writes records of connected systems.
//!
//! A [`Connector`] lists, gets, creates, updates and deletes records of the
//! unified model and reports its health. The [`ConnectorRegistry`] maps
//! connection names to connectors; the `sandbox` connection is always there.

pub mod connection;
pub mod definition;
pub mod http;
pub mod mapping;
pub mod resilience;
pub mod sandbox;
pub mod vault;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;

use crate::unified::Entity;

/// What to list.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ListQuery {
    /// Field equality filters (`status: approved`). A list value matches any of its elements.
    pub filters: BTreeMap<String, Value>,
    /// Only records changed after this instant.
    pub modified_after: Option<DateTime<Utc>>,
    /// Page size.
    pub limit: Option<usize>,
    /// Where the previous page ended (`next_cursor` of that page).
    pub cursor: Option<String>,
    /// Include the system's own record as `raw`.
    pub raw: bool,
}

/// Whether a record matches equality filters: keys are field paths
/// (`status`, `custom_fields.plant`), a list matches any of its values, a
/// string matches a non-string value by its text, numbers compare as numbers.
pub fn record_matches(record: &Value, filters: &BTreeMap<String, Value>) -> bool {
    filters.iter().all(|(path, wanted)| {
        let actual = path.split('.').try_fold(record, |v, seg| v.get(seg));
        value_matches(actual, wanted)
    })
}

fn value_matches(actual: Option<&Value>, wanted: &Value) -> bool {
    let Some(actual) = actual else {
        return wanted.is_null();
    };
    match wanted {
        Value::Array(options) => options.iter().any(|o| value_matches(Some(actual), o)),
        Value::String(s) if !actual.is_string() => *actual.to_string() == **s,
        w => w == actual || (w.is_number() && actual.is_number() && w.as_f64() == actual.as_f64()),
    }
}

/// One page of records.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Page {
    /// Unified records.
    pub records: Vec<Value>,
    /// Pass as `cursor` to get the next page; `None` on the last page.
    pub next_cursor: Option<String>,
}

/// Kinds of connector failure, which decide whether a retry may help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectorErrorKind {
    /// The record does not exist.
    NotFound,
    /// The request or record is invalid; retrying cannot help.
    Validation,
    /// The system asked us to slow down.
    RateLimited,
    /// A temporary failure of the system (5xx); a retry may help.
    Transient,
    /// The system cannot be reached (network, timeout, circuit open); a retry may help.
    Unavailable,
    /// Credentials were refused.
    AuthRequired,
    /// The credentials lack a permission.
    PermissionDenied,
    /// Any other permanent failure.
    Permanent,
}

/// The error codes flows see, whatever system failed.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// Credentials missing, refused or expired.
    AuthenticationFailed,
    /// Authenticated, but not allowed.
    PermissionDenied,
    /// The record does not exist.
    NotFound,
    /// The request or the record is invalid.
    ValidationFailed,
    /// The system (or our own limit) refused more requests for now.
    RateLimitExceeded,
    /// The system cannot be reached.
    ConnectionUnavailable,
    /// The system failed or answered something we cannot use.
    UpstreamError,
}

impl ErrorCode {
    /// The code as flows see it, e.g. `NOT_FOUND`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::AuthenticationFailed => "AUTHENTICATION_FAILED",
            ErrorCode::PermissionDenied => "PERMISSION_DENIED",
            ErrorCode::NotFound => "NOT_FOUND",
            ErrorCode::ValidationFailed => "VALIDATION_FAILED",
            ErrorCode::RateLimitExceeded => "RATE_LIMIT_EXCEEDED",
            ErrorCode::ConnectionUnavailable => "CONNECTION_UNAVAILABLE",
            ErrorCode::UpstreamError => "UPSTREAM_ERROR",
        }
    }

    /// The kind of failure behind a code.
    pub fn kind(self) -> ConnectorErrorKind {
        match self {
            ErrorCode::AuthenticationFailed => ConnectorErrorKind::AuthRequired,
            ErrorCode::PermissionDenied => ConnectorErrorKind::PermissionDenied,
            ErrorCode::NotFound => ConnectorErrorKind::NotFound,
            ErrorCode::ValidationFailed => ConnectorErrorKind::Validation,
            ErrorCode::RateLimitExceeded => ConnectorErrorKind::RateLimited,
            ErrorCode::ConnectionUnavailable => ConnectorErrorKind::Unavailable,
            ErrorCode::UpstreamError => ConnectorErrorKind::Permanent,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A connector failure.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{connection}: {message}")]
pub struct ConnectorError {
    /// The connection that failed.
    pub connection: String,
    /// The kind of failure.
    pub kind: ConnectorErrorKind,
    /// What happened.
    pub message: String,
    /// How long the system asked us to wait.
    pub retry_after: Option<Duration>,
    /// The entity being read or written, when known.
    pub entity: Option<Entity>,
    /// `list`, `get`, `create`, `update`, `delete`, `test` or `auth`.
    pub operation: Option<&'static str>,
    /// The HTTP status the system answered, when it answered.
    pub upstream_status: Option<u16>,
}

impl ConnectorError {
    /// A new error.
    pub fn new(connection: &str, kind: ConnectorErrorKind, message: impl Into<String>) -> Self {
        ConnectorError {
            connection: connection.to_string(),
            kind,
            message: message.into(),
            retry_after: None,
            entity: None,
            operation: None,
            upstream_status: None,
        }
    }

    /// Whether retrying may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.kind,
            ConnectorErrorKind::RateLimited
                | ConnectorErrorKind::Transient
                | ConnectorErrorKind::Unavailable
        )
    }

    /// The unified code flows see.
    pub fn code(&self) -> ErrorCode {
        match self.kind {
            ConnectorErrorKind::NotFound => ErrorCode::NotFound,
            ConnectorErrorKind::Validation => ErrorCode::ValidationFailed,
            ConnectorErrorKind::RateLimited => ErrorCode::RateLimitExceeded,
            ConnectorErrorKind::Transient | ConnectorErrorKind::Permanent => {
                ErrorCode::UpstreamError
            }
            ConnectorErrorKind::Unavailable => ErrorCode::ConnectionUnavailable,
            ConnectorErrorKind::AuthRequired => ErrorCode::AuthenticationFailed,
            ConnectorErrorKind::PermissionDenied => ErrorCode::PermissionDenied,
        }
    }

    /// The error's details as flows see them.
    pub fn details(&self) -> Value {
        serde_json::json!({
            "code": self.code().as_str(),
            "connection_id": self.connection,
            "entity": self.entity.map(Entity::name),
            "operation": self.operation,
            "upstream_status": self.upstream_status,
        })
    }
}

/// The health of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectionStatus {
    /// Working.
    Online,
    /// Working with errors.
    Degraded,
    /// Not reachable.
    Offline,
    /// Credentials refused.
    AuthRequired,
}

/// A write operation, with the key that makes repeating it harmless.
#[derive(Debug, Clone)]
pub struct WriteRequest<'a> {
    /// Entity written.
    pub entity: Entity,
    /// Record id for update and delete.
    pub remote_id: Option<&'a str>,
    /// Fields to write (create: the record; update: the changed fields).
    pub data: &'a Value,
    /// Same key, same effect: a retried or resumed write is deduplicated by it.
    pub idempotency_key: &'a str,
}

/// A request sent as it is to a connected system (the `http` step's
/// `connection:` passthrough), for what the unified model does not cover.
#[derive(Debug, Clone)]
pub struct RawRequest {
    /// The method.
    pub method: reqwest::Method,
    /// The path (and query) under the connection's base URL.
    pub path: String,
    /// Query parameters to append.
    pub query: Vec<(String, String)>,
    /// Headers besides the connection's own (auth, defaults).
    pub headers: Vec<(reqwest::header::HeaderName, reqwest::header::HeaderValue)>,
    /// The body, if any.
    pub body: Option<Vec<u8>>,
}

/// A connected system's answer to a [`RawRequest`], whatever its status.
#[derive(Debug, Clone)]
pub struct RawResponse {
    /// The status.
    pub status: u16,
    /// The headers.
    pub headers: reqwest::header::HeaderMap,
    /// The body.
    pub body: bytes::Bytes,
}

/// A connected system.
#[async_trait]
pub trait Connector: Send + Sync {
    /// Lists records.
    async fn list(&self, entity: Entity, query: &ListQuery) -> Result<Page, ConnectorError>;
    /// Gets one record by remote id.
    async fn get(&self, entity: Entity, remote_id: &str) -> Result<Value, ConnectorError>;
    /// Creates a record and returns it.
    async fn create(&self, req: WriteRequest<'_>) -> Result<Value, ConnectorError>;
    /// Updates a record and returns it.
    async fn update(&self, req: WriteRequest<'_>) -> Result<Value, ConnectorError>;
    /// Deletes a record and returns it as it was, marked deleted.
    async fn delete(&self, req: WriteRequest<'_>) -> Result<Value, ConnectorError>;
    /// Current health.
    async fn health(&self) -> ConnectionStatus;
    /// Entities this connector serves.
    fn entities(&self) -> Vec<Entity>;
    /// Sends a raw request to the system: the path under its base URL,
    /// with its auth injected, under its rate limit and circuit breaker.
    /// The answer comes back whatever its status; only a request that got
    /// no answer (or the breaker) is an error.
    async fn passthrough(&self, req: RawRequest) -> Result<RawResponse, ConnectorError> {
        let _ = req;
        Err(ConnectorError::new(
            "",
            ConnectorErrorKind::Validation,
            "this connection has no HTTP API to pass requests through to",
        ))
    }
    /// Operations (`list`, `get`, `create`, `update`, `delete`) it supports
    /// for an entity, so validation can refuse what it cannot do.
    fn operations(&self, entity: Entity) -> Vec<&'static str> {
        if self.entities().contains(&entity) {
            vec!["list", "get", "create", "update", "delete"]
        } else {
            Vec::new()
        }
    }
}

/// Connection name → connector.
#[derive(Clone)]
pub struct ConnectorRegistry {
    connections: BTreeMap<String, Arc<dyn Connector>>,
}

impl Default for ConnectorRegistry {
    fn default() -> Self {
        Self::new()
    }
}

impl ConnectorRegistry {
    /// A registry with the built-in `sandbox` connection.
    pub fn new() -> Self {
        let mut connections: BTreeMap<String, Arc<dyn Connector>> = BTreeMap::new();
        connections.insert(
            sandbox::CONNECTION.to_string(),
            Arc::new(sandbox::SandboxConnector::new()),
        );
        ConnectorRegistry { connections }
    }

    /// Adds or replaces a connection.
    pub fn insert(&mut self, name: &str, connector: Arc<dyn Connector>) {
        self.connections.insert(name.to_string(), connector);
    }

    /// The connector of a connection.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn Connector>> {
        self.connections.get(name)
    }

    /// Names of all connections.
    pub fn names(&self) -> Vec<String> {
        self.connections.keys().cloned().collect()
    }
}
