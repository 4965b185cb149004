//! Step kinds. Each module holds one kind's config (as written in YAML), its
//! compile-time checks and its execution, side by side. Adding a kind means a
//! new module here plus one field on [`crate::flow::Step`].

pub mod flow;
pub mod http;
pub mod plugin;
pub mod read;
pub mod select;
pub mod set;
pub mod sync;
pub mod wait;
pub mod webhook;
pub mod write;

use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

pub use flow::{ChildCall, ChildRuns, FlowStep};
pub use http::HttpStep;
pub use plugin::PluginStep;
pub use read::ReadStep;
pub use select::SelectStep;
pub use sync::SyncStep;
pub use wait::WaitStep;
pub use webhook::WebhookStep;
pub use write::WriteStep;

use crate::connectors::{ConnectorError, ConnectorErrorKind, ConnectorRegistry};
use crate::expr::ExprError;

/// What went wrong in a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepErrorKind {
    /// An expression failed at run time.
    Expression,
    /// Input or a record was invalid.
    Validation,
    /// The connected system failed.
    Connector,
    /// The attempt ran past its `timeout`.
    Timeout,
    /// The run was cancelled.
    Cancelled,
    /// A plugin failed (its own error, or a limit it broke).
    Plugin,
    /// A child run (`flow` step) failed or could not start.
    Flow,
}

/// A failed step attempt.
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize)]
#[error("{message}")]
pub struct StepError {
    /// Kind of failure.
    pub kind: StepErrorKind,
    /// Message naming what failed.
    pub message: String,
    /// Whether another attempt may succeed.
    pub retryable: bool,
    /// Wait at least this long before retrying (from a 429 `Retry-After`).
    #[serde(skip)]
    pub retry_after: Option<Duration>,
    /// For connector failures: `{code, connection_id, entity, operation, upstream_status}`,
    /// with `code` one of the unified codes (`NOT_FOUND`, `RATE_LIMIT_EXCEEDED`...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
}

impl StepError {
    /// A non-retryable error.
    pub fn new(kind: StepErrorKind, message: impl Into<String>) -> Self {
        StepError {
            kind,
            message: message.into(),
            retryable: false,
            retry_after: None,
            details: None,
        }
    }
}

impl From<ExprError> for StepError {
    fn from(e: ExprError) -> Self {
        StepError::new(
            StepErrorKind::Expression,
            format!("expression `{}` failed: {}", e.source_text, e.message),
        )
    }
}

impl From<ConnectorError> for StepError {
    fn from(e: ConnectorError) -> Self {
        let kind = if e.kind == ConnectorErrorKind::Validation {
            StepErrorKind::Validation
        } else {
            StepErrorKind::Connector
        };
        StepError {
            kind,
            retryable: e.is_retryable(),
            retry_after: e.retry_after,
            message: format!("{}: {e}", e.code()),
            details: Some(e.details()),
        }
    }
}

/// What a step can reach while it runs.
pub struct StepRuntime<'a> {
    /// Connections.
    pub connectors: &'a ConnectorRegistry,
    /// Expression context (`inputs`, `steps`, `item`...).
    pub ctx: &'a minijinja::Value,
    /// Key identifying this step (and item) in this run; stable across retries and resumes.
    pub idempotency_key: &'a str,
    /// The store, when the step runs as part of a durable run.
    pub store: Option<&'a crate::store::Store>,
    /// The plugin registry, when the engine has one.
    pub plugins: Option<&'a crate::plugins::PluginRegistry>,
    /// Pinned plugin results by name (`sluice test`), used instead of calling.
    pub plugin_outputs: Option<&'a std::collections::BTreeMap<String, Result<Value, String>>>,
    /// Starts child runs (`flow` steps), when the step runs in a stored run.
    pub children: Option<&'a dyn ChildRuns>,
}

impl StepRuntime<'_> {
    fn connector(
        &self,
        name: &str,
    ) -> Result<&std::sync::Arc<dyn crate::connectors::Connector>, StepError> {
        self.connectors.get(name).ok_or_else(|| {
            StepError::new(
                StepErrorKind::Validation,
                format!("unknown connection `{name}`"),
            )
        })
    }
}

/// A step kind compiled for execution.
#[derive(Debug)]
pub enum CompiledKind {
    /// `read`
    Read(read::CompiledRead),
    /// `write`
    Write(write::CompiledWrite),
    /// `select`
    Select(select::CompiledSelect),
    /// `set`
    Set(set::CompiledSet),
    /// `wait`
    Wait(wait::CompiledWait),
    /// `webhook`
    Webhook(webhook::CompiledWebhook),
    /// `plugin`
    Plugin(plugin::CompiledPlugin),
    /// `sync`
    Sync(sync::CompiledSync),
    /// `http`
    Http(http::CompiledHttp),
    /// `flow`
    Flow(flow::CompiledFlowStep),
}

impl CompiledKind {
    /// Runs one attempt.
    pub async fn execute(&self, rt: &StepRuntime<'_>) -> Result<Value, StepError> {
        match self {
            CompiledKind::Read(s) => s.execute(rt).await,
            CompiledKind::Write(s) => s.execute(rt).await,
            CompiledKind::Select(s) => s.execute(rt),
            CompiledKind::Set(s) => s.execute(rt),
            CompiledKind::Wait(s) => s.execute().await,
            CompiledKind::Webhook(s) => s.execute(rt).await,
            CompiledKind::Plugin(s) => s.execute(rt).await,
            CompiledKind::Sync(s) => s.execute(rt).await,
            CompiledKind::Http(s) => s.execute(rt).await,
            CompiledKind::Flow(s) => s.execute(rt).await,
        }
    }

    /// The static type of the step's output (`steps.<id>.output`), which
    /// validation checks downstream expressions against.
    pub fn output_type(&self) -> crate::expr::types::Type {
        use crate::expr::types::Type;
        match self {
            CompiledKind::Read(s) => s.output_type(),
            CompiledKind::Write(s) => s.output_type(),
            CompiledKind::Select(s) => s.output_type.clone(),
            CompiledKind::Set(s) => s.output_type.clone(),
            CompiledKind::Wait(_) => Type::Integer,
            CompiledKind::Plugin(s) => s.output_type.clone(),
            CompiledKind::Webhook(s) => s.output_type.clone(),
            CompiledKind::Sync(s) => s.output_type(),
            CompiledKind::Http(_) => http::output_type(),
            CompiledKind::Flow(_) => Type::Any,
        }
    }

    /// Whether the kind has no effect outside the run (safe to repeat unrecorded).
    pub fn is_pure(&self) -> bool {
        matches!(
            self,
            CompiledKind::Select(_) | CompiledKind::Set(_) | CompiledKind::Plugin(_)
        )
    }
}
