//! Step kinds. Each module holds one kind's config (as written in YAML), its
//! compile-time checks and its execution, side by side.
//!
//! Adding a kind takes two places: its module, and one line in the
//! [`step_kinds!`] list below. The module gives
//! - `pub fn compile(config, &CompileCtx, &mut Checker) -> Option<Compiled>`;
//! - on its compiled type, `async fn execute(&self, &StepRuntime) ->
//!   Result<_, StepError>` (a [`Value`], or a [`StepOutput`] carrying
//!   [`Effect`]s such as events to publish) and `fn output_type(&self) -> Type`;
//! - `pub const PURE: bool`: whether running it twice is harmless (no
//!   external effect), so its attempts need not be logged.
//!
//! The list generates the step's YAML key (a field of [`Step`], with its doc
//! as the JSON Schema description), [`StepKind`], [`STEP_KINDS`],
//! [`CompiledKind`] and the dispatch of compile and execute.

pub mod flow;
pub mod http;
pub mod plugin;
pub mod read;
pub mod select;
pub mod set;
pub mod sync;
pub mod wait;
pub mod wait_for;
pub mod webhook;
pub mod write;

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use flow::{ChildCall, ChildRuns, FlowStep};
pub use http::HttpStep;
pub use plugin::PluginStep;
pub use read::ReadStep;
pub use select::SelectStep;
pub use sync::SyncStep;
pub use wait::WaitStep;
pub use wait_for::WaitForStep;
pub use webhook::WebhookStep;
pub use write::WriteStep;

use crate::connectors::{ConnectorError, ConnectorErrorKind, ConnectorRegistry};
use crate::expr::ExprError;
use crate::expr::types::Type;
use crate::flow::check::Checker;
use crate::flow::model::{OnError, RetryPolicy};

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
    /// Where the step leaves its input ([`StepRuntime::record_input`]),
    /// when the run keeps it.
    pub input: Option<&'a std::sync::Mutex<Option<Value>>>,
}

impl StepRuntime<'_> {
    /// Records the step's input: its config with the expressions evaluated,
    /// as it goes to the system (what `runs show` and the console show next
    /// to the output). Called before the effect, so a failed call keeps it.
    pub fn record_input(&self, input: Value) {
        if let Some(slot) = self.input {
            *slot.lock().expect("input slot") = Some(input);
        }
    }

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

/// What a step kind's `compile` may read besides its own config.
pub struct CompileCtx<'a> {
    /// The whole step (its `with`, `for_each`...).
    pub step: &'a Step,
    /// The step's `timeout`, when it parsed.
    pub timeout: Option<Duration>,
}

/// What an attempt gives: the step's output and the effects the executor
/// commits with the step's result (or, for a failed step, drops).
#[derive(Debug, Default)]
pub struct StepOutput {
    /// The output (`steps.<id>.output`).
    pub value: Value,
    /// What the step asks of the run beyond its output.
    pub effects: Vec<Effect>,
}

impl From<Value> for StepOutput {
    fn from(value: Value) -> Self {
        StepOutput {
            value,
            effects: Vec::new(),
        }
    }
}

/// An effect a step returns instead of performing it, so it commits
/// atomically with the step's stored result.
#[derive(Debug, Clone)]
pub enum Effect {
    /// Events to publish: an outbox message per endpoint that accepts one
    /// (or only the endpoint named), and an event-log row when a trigger
    /// listens (see [`crate::events`]).
    Publish(Vec<(crate::events::Envelope, Option<String>)>),
    /// Park the run until a signal, an event or a deadline (`wait_for`).
    Park(wait_for::Park),
}

/// The one list of step kinds (see the module docs). Each entry: the doc
/// of its YAML key, the key, the [`StepKind`]/[`CompiledKind`] variant, the
/// config type, and `module::CompiledType`.
macro_rules! step_kinds {
    ($( $(#[doc = $doc:literal])* $key:ident ($variant:ident): $config:ty => $module:ident :: $compiled:ident, )+) => {
        /// One step: common settings plus exactly one kind (`read`, `write`,
        /// `select`, `set`, `wait`, `wait_for`, `webhook`, `plugin`, `sync`,
        /// `http`, `flow`).
        #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
        #[serde(deny_unknown_fields)]
        pub struct Step {
            /// Unique step id (letters, digits, `_`), used as `steps.<id>` in expressions.
            pub id: String,
            /// What the step does.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub description: Option<String>,
            /// Steps that must finish first.
            #[serde(default, skip_serializing_if = "Vec::is_empty")]
            pub needs: Vec<String>,
            /// Condition; when false the step (and its dependents) are skipped. With
            /// `for_each`, evaluated per item and false items are left out.
            #[serde(rename = "if", default, skip_serializing_if = "Option::is_none")]
            pub condition: Option<String>,
            /// Run the step once per element of this array (an expression or a literal list).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub for_each: Option<Value>,
            /// How many `for_each` items run at once (default 1).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            #[schemars(range(min = 1))]
            pub concurrency: Option<u32>,
            /// Retry policy for failed attempts.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub retry: Option<RetryPolicy>,
            /// Time limit per attempt, e.g. `30s`, `2m`, `500ms`.
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub timeout: Option<String>,
            /// `fail` (default) or `continue`.
            #[serde(default)]
            pub on_error: OnError,
            $(
                $(#[doc = $doc])*
                #[serde(default, skip_serializing_if = "Option::is_none")]
                pub $key: Option<$config>,
            )+
            /// The plugin's input (for `plugin` steps).
            #[serde(rename = "with", default, skip_serializing_if = "Option::is_none")]
            pub with: Option<Value>,
        }

        /// Which kind a step is, borrowed from its [`Step`].
        #[derive(Debug, Clone, Copy)]
        pub enum StepKind<'a> {
            $(
                $(#[doc = $doc])*
                $variant(&'a $config),
            )+
        }

        impl StepKind<'_> {
            /// The key naming this kind in YAML.
            pub fn name(&self) -> &'static str {
                match self {
                    $( StepKind::$variant(_) => stringify!($key), )+
                }
            }

            /// Whether running the step twice is harmless (no external
            /// effect), so its start need not be recorded for at-least-once
            /// accounting.
            pub fn is_pure(&self) -> bool {
                match self {
                    $( StepKind::$variant(_) => $module::PURE, )+
                }
            }

            /// Compiles the kind's config, reporting problems through `c`.
            pub fn compile(self, ctx: &CompileCtx<'_>, c: &mut Checker<'_>) -> Option<CompiledKind> {
                match self {
                    $( StepKind::$variant(config) => $module::compile(config, ctx, c).map(CompiledKind::$variant), )+
                }
            }
        }

        impl Step {
            /// All kinds present on this step (valid steps have exactly one).
            pub fn kinds(&self) -> Vec<StepKind<'_>> {
                let mut kinds = Vec::with_capacity(1);
                $(
                    if let Some(k) = &self.$key {
                        kinds.push(StepKind::$variant(k));
                    }
                )+
                kinds
            }

            /// The step's kind. Validation guarantees exactly one.
            pub fn kind(&self) -> Option<StepKind<'_>> {
                self.kinds().into_iter().next()
            }
        }

        /// Names of the step kinds, for hints.
        pub const STEP_KINDS: &[&str] = &[ $( stringify!($key), )+ ];

        /// A step kind compiled for execution.
        #[derive(Debug)]
        pub enum CompiledKind {
            $(
                $(#[doc = $doc])*
                $variant($module::$compiled),
            )+
        }

        impl CompiledKind {
            /// Runs one attempt.
            pub async fn execute(&self, rt: &StepRuntime<'_>) -> Result<StepOutput, StepError> {
                match self {
                    $( CompiledKind::$variant(s) => s.execute(rt).await.map(Into::into), )+
                }
            }

            /// The static type of the step's output (`steps.<id>.output`),
            /// which validation checks downstream expressions against.
            pub fn output_type(&self) -> Type {
                match self {
                    $( CompiledKind::$variant(s) => s.output_type(), )+
                }
            }

            /// Whether the kind has no effect outside the run (safe to repeat unrecorded).
            pub fn is_pure(&self) -> bool {
                match self {
                    $( CompiledKind::$variant(_) => $module::PURE, )+
                }
            }
        }
    };
}

step_kinds! {
    /// Read records of an entity from a connection.
    read(Read): ReadStep => read::CompiledRead,
    /// Create, update or delete a record through a connection.
    write(Write): WriteStep => write::CompiledWrite,
    /// Select values with JSONPath (RFC 9535).
    select(Select): SelectStep => select::CompiledSelect,
    /// Build a value from templates; the value is the step's output.
    set(Set): Value => set::CompiledSet,
    /// Pause for a duration.
    wait(Wait): WaitStep => wait::CompiledWait,
    /// Park the run, holding no run slot, until a signal (`POST /v1/runs/{id}/signal`,
    /// `sluice runs signal`) or a matching event arrives, or a timeout passes.
    wait_for(WaitFor): WaitForStep => wait_for::CompiledWaitFor,
    /// Fire a custom event to webhook endpoints.
    webhook(Webhook): WebhookStep => webhook::CompiledWebhook,
    /// Run a WASM plugin.
    plugin(Plugin): PluginStep => plugin::CompiledPlugin,
    /// Sync an entity of a connection into the record cache.
    sync(Sync): SyncStep => sync::CompiledSync,
    /// Call an HTTP API (Slack, Teams, a partner's REST API), or a connected
    /// system's own API through its connection.
    http(Http): HttpStep => http::CompiledHttp,
    /// Run another flow as a child run and wait for it.
    flow(Flow): FlowStep => flow::CompiledFlowStep,
}
