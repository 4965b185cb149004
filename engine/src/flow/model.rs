//! The typed flow format (`apiVersion: sluice/v1`).
//!
//! These types are the single source of truth for the format: the parser
//! deserializes into them, and `sluice schema` prints the JSON Schema that
//! `schemars` derives from them, so the published schema cannot drift from
//! what the parser accepts. Every struct rejects unknown keys.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use super::respond::Respond;
use crate::steps::{
    FlowStep, HttpStep, PluginStep, ReadStep, SelectStep, SyncStep, WaitStep, WebhookStep,
    WriteStep,
};

/// A flow: a DAG of steps started by triggers.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Sluice flow (sluice/v1)")]
pub struct Flow {
    /// Format version; must be `sluice/v1`.
    #[serde(rename = "apiVersion")]
    pub api_version: ApiVersion,
    /// Unique flow id (letters, digits, `-` and `_`).
    pub id: String,
    /// What the flow is for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Typed inputs, available as `inputs.<name>` in expressions.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub inputs: BTreeMap<String, InputSpec>,
    /// How many runs of this flow may be active at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<FlowConcurrency>,
    /// How long this flow's finished runs are kept (else the server's
    /// `--retention`; `sluice runs prune` applies it by hand).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<Retention>,
    /// What starts the flow.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub triggers: Vec<Trigger>,
    /// The steps; order does not matter, `needs` does.
    pub steps: Vec<Step>,
    /// The run's output, built from templates. Defaults to the outputs of the
    /// steps nothing depends on, keyed by step id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// A flow to run when a run of this flow fails, with the `run.failed`
    /// event's data (`flow_id`, `run_id`, `status`, `step`, `error`) as its
    /// inputs (those it declares).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_failure: Option<OnFailure>,
}

/// `on_failure:` a flow id, or `{flow: ID}`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum OnFailure {
    /// `on_failure: notify-ops`
    Flow(String),
    /// `on_failure: {flow: notify-ops}`
    Handler(FailureHandler),
}

/// The long form of `on_failure:`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FailureHandler {
    /// The id of the flow to run.
    pub flow: String,
}

impl OnFailure {
    /// The id of the flow to run.
    pub fn flow_id(&self) -> &str {
        match self {
            OnFailure::Flow(id) => id,
            OnFailure::Handler(h) => &h.flow,
        }
    }
}

/// The only format version so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ApiVersion {
    /// Version 1.
    #[serde(rename = "sluice/v1")]
    V1,
}

/// The declared type of an input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum InputType {
    /// A string.
    String,
    /// Any JSON number.
    Number,
    /// A whole number.
    Integer,
    /// `true` or `false`.
    Boolean,
    /// A JSON object.
    Object,
    /// A JSON array.
    Array,
}

impl InputType {
    /// Whether `value` has this type.
    pub fn accepts(self, value: &Value) -> bool {
        match self {
            InputType::String => value.is_string(),
            InputType::Number => value.is_number(),
            InputType::Integer => value.is_i64() || value.is_u64(),
            InputType::Boolean => value.is_boolean(),
            InputType::Object => value.is_object(),
            InputType::Array => value.is_array(),
        }
    }

    /// The name used in the flow format.
    pub fn name(self) -> &'static str {
        match self {
            InputType::String => "string",
            InputType::Number => "number",
            InputType::Integer => "integer",
            InputType::Boolean => "boolean",
            InputType::Object => "object",
            InputType::Array => "array",
        }
    }
}

/// One declared input.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// The input's type.
    #[serde(rename = "type")]
    pub kind: InputType,
    /// Value used when the caller gives none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    /// A run without this input (and without a default) is refused.
    #[serde(default)]
    pub required: bool,
    /// What the input means.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// Per-flow limit on active runs.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FlowConcurrency {
    /// Maximum number of runs of this flow running at once.
    #[schemars(range(min = 1))]
    pub limit: u32,
    /// What to do with a run that would exceed the limit.
    #[serde(default)]
    pub on_limit: OnLimit,
}

/// How long a flow's finished runs are kept: any limit given deletes the runs
/// past it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Delete finished runs older than this, e.g. `30d`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<String>,
    /// Keep failed runs this long instead, e.g. `90d`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed_max_age: Option<String>,
    /// Keep at most this many finished runs (the newest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_runs: Option<u64>,
}

impl Retention {
    /// The store's prune of this policy for `flow_id`; `None` when it names
    /// no limit or a duration does not parse (validation reports that).
    pub fn prune(&self, flow_id: &str) -> Option<crate::store::Prune> {
        let ms = |d: &Option<String>| -> Option<Option<i64>> {
            match d {
                None => Some(None),
                Some(t) => humantime::parse_duration(t)
                    .ok()
                    .map(|d| Some(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))),
            }
        };
        let p = crate::store::Prune {
            flow_id: Some(flow_id.to_string()),
            older_than_ms: ms(&self.max_age)?,
            failed_older_than_ms: ms(&self.failed_max_age)?,
            keep_last: self.max_runs.map(|n| i64::try_from(n).unwrap_or(i64::MAX)),
            except_flows: Vec::new(),
        };
        (p.older_than_ms.is_some() || p.failed_older_than_ms.is_some() || p.keep_last.is_some())
            .then_some(p)
    }
}

/// What happens to a run that would exceed the flow's concurrency limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnLimit {
    /// Wait for a slot.
    #[default]
    Queue,
    /// Do not run; the run ends `cancelled`.
    Skip,
    /// Cancel the oldest active run to make room.
    CancelOldest,
}

/// A trigger: exactly one of `schedule`, `event`, `webhook`, `manual`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Trigger {
    /// Cron expression (5 or 6 fields).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// IANA time zone for `schedule` (default UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// Engine event type, e.g. `sync.completed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// Event filter: only events of this connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<String>,
    /// Event filter: only events about this entity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity: Option<String>,
    /// Inbound webhook: `POST /v1/hooks/<path>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookTrigger>,
    /// Started by the API or the CLI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manual: Option<ManualTrigger>,
}

/// An inbound webhook trigger.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookTrigger {
    /// Path under `/v1/hooks/`.
    pub path: String,
    /// Secret (`whsec_...`, usually `${{ secrets.NAME }}`) to check Standard Webhooks signatures.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// JSON Schema of the request body: expressions reading `trigger.body`
    /// are checked against it, and a body that does not match is refused
    /// with 422 before any run starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_schema: Option<Value>,
    /// What the caller gets: `accepted` (default: `202` + run id once the
    /// run is stored) or `output` (wait for the run and answer with the
    /// flow's `output:` read as `status`, `body` and `headers`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub respond: Option<Respond>,
    /// With `respond: output`: how long to wait before answering `202` +
    /// run id (the run goes on), e.g. `10s`; default `30s`, at most `5m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub respond_timeout: Option<String>,
    /// With `respond: output`: the status answered when the run fails or is
    /// cancelled (400 to 599, default 500).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 400, max = 599))]
    pub failure_status: Option<u16>,
}

/// A manual trigger (API or CLI).
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ManualTrigger {}

/// What a failed step does to the run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// The run fails.
    #[default]
    Fail,
    /// The error is recorded and dependents run.
    Continue,
}

/// One step: common settings plus exactly one kind (`read`, `write`, `select`, `set`, `wait`, `webhook`, `plugin`, `sync`, `http`, `flow`).
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

    /// Read records of an entity from a connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read: Option<ReadStep>,
    /// Create, update or delete a record through a connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write: Option<WriteStep>,
    /// Select values with JSONPath (RFC 9535).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub select: Option<SelectStep>,
    /// Build a value from templates; the value is the step's output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set: Option<Value>,
    /// Pause for a duration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<WaitStep>,
    /// Fire a custom event to webhook endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub webhook: Option<WebhookStep>,
    /// Run a WASM plugin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin: Option<PluginStep>,
    /// Sync an entity of a connection into the record cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync: Option<SyncStep>,
    /// Call an HTTP API (Slack, Teams, a partner's REST API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpStep>,
    /// Run another flow as a child run and wait for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow: Option<FlowStep>,
    /// The plugin's input (for `plugin` steps).
    #[serde(rename = "with", default, skip_serializing_if = "Option::is_none")]
    pub with: Option<Value>,
}

/// Which kind a step is, borrowed from its [`Step`].
#[derive(Debug, Clone, Copy)]
pub enum StepKind<'a> {
    /// `read`
    Read(&'a ReadStep),
    /// `write`
    Write(&'a WriteStep),
    /// `select`
    Select(&'a SelectStep),
    /// `set`
    Set(&'a Value),
    /// `wait`
    Wait(&'a WaitStep),
    /// `webhook`
    Webhook(&'a WebhookStep),
    /// `plugin`
    Plugin(&'a PluginStep),
    /// `sync`
    Sync(&'a SyncStep),
    /// `http`
    Http(&'a HttpStep),
    /// `flow`
    Flow(&'a FlowStep),
}

impl StepKind<'_> {
    /// The key naming this kind in YAML.
    pub fn name(&self) -> &'static str {
        match self {
            StepKind::Read(_) => "read",
            StepKind::Write(_) => "write",
            StepKind::Select(_) => "select",
            StepKind::Set(_) => "set",
            StepKind::Wait(_) => "wait",
            StepKind::Webhook(_) => "webhook",
            StepKind::Plugin(_) => "plugin",
            StepKind::Sync(_) => "sync",
            StepKind::Http(_) => "http",
            StepKind::Flow(_) => "flow",
        }
    }

    /// Whether running the step twice is harmless (no external effect), so its
    /// start need not be recorded for at-least-once accounting.
    pub fn is_pure(&self) -> bool {
        matches!(
            self,
            StepKind::Select(_) | StepKind::Set(_) | StepKind::Plugin(_)
        )
    }
}

impl Step {
    /// All kinds present on this step (valid steps have exactly one).
    pub fn kinds(&self) -> Vec<StepKind<'_>> {
        let mut kinds = Vec::with_capacity(1);
        if let Some(k) = &self.read {
            kinds.push(StepKind::Read(k));
        }
        if let Some(k) = &self.write {
            kinds.push(StepKind::Write(k));
        }
        if let Some(k) = &self.select {
            kinds.push(StepKind::Select(k));
        }
        if let Some(k) = &self.set {
            kinds.push(StepKind::Set(k));
        }
        if let Some(k) = &self.wait {
            kinds.push(StepKind::Wait(k));
        }
        if let Some(k) = &self.webhook {
            kinds.push(StepKind::Webhook(k));
        }
        if let Some(k) = &self.plugin {
            kinds.push(StepKind::Plugin(k));
        }
        if let Some(k) = &self.sync {
            kinds.push(StepKind::Sync(k));
        }
        if let Some(k) = &self.http {
            kinds.push(StepKind::Http(k));
        }
        if let Some(k) = &self.flow {
            kinds.push(StepKind::Flow(k));
        }
        kinds
    }

    /// The step's kind. Validation guarantees exactly one.
    pub fn kind(&self) -> Option<StepKind<'_>> {
        self.kinds().into_iter().next()
    }
}

/// Names of the step kinds, for hints.
pub const STEP_KINDS: &[&str] = &[
    "read", "write", "select", "set", "wait", "webhook", "plugin", "sync", "http", "flow",
];

/// Retry policy of a step.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Total attempts including the first (default 3).
    #[serde(default = "default_max_attempts")]
    #[schemars(range(min = 1))]
    pub max_attempts: u32,
    /// `constant` or `exponential` (default).
    #[serde(default)]
    pub backoff: Backoff,
    /// First delay, e.g. `1s` (default `1s`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial: Option<String>,
    /// Largest delay, e.g. `1m` (default `1m`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max: Option<String>,
    /// Randomize each delay between 0 and its value ("full jitter"; default true).
    #[serde(default = "default_true")]
    pub jitter: bool,
}

fn default_max_attempts() -> u32 {
    3
}

fn default_true() -> bool {
    true
}

/// How retry delays grow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Backoff {
    /// Every delay is `initial`.
    Constant,
    /// `initial`, doubled each attempt, capped at `max`.
    #[default]
    Exponential,
}

/// The JSON Schema of the flow format, as printed by `sluice schema`.
pub fn json_schema() -> Value {
    let schema = schemars::schema_for!(Flow);
    serde_json::to_value(schema).expect("a schemars schema always serializes")
}
