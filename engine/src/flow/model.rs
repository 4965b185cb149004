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
pub use crate::steps::{STEP_KINDS, Step, StepKind};

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

/// Checks values against their declarations (a flow's inputs, a signal's
/// data; `what` names one in messages: `input`, `field`): unknown names,
/// wrong types and missing required values are problems; defaults fill
/// what is missing, and `null` what has no default.
pub fn check_values(
    decl: &BTreeMap<String, InputSpec>,
    given: &serde_json::Map<String, Value>,
    what: &str,
) -> Result<Value, Vec<String>> {
    let mut problems = Vec::new();
    let mut out = serde_json::Map::new();
    for name in given.keys() {
        if !decl.contains_key(name) {
            let declared: Vec<&str> = decl.keys().map(String::as_str).collect();
            problems.push(format!(
                "unknown {what} `{name}` (declared: {})",
                if declared.is_empty() {
                    "none".to_string()
                } else {
                    declared.join(", ")
                }
            ));
        }
    }
    for (name, spec) in decl {
        match given.get(name).or(spec.default.as_ref()) {
            Some(v) if spec.kind.accepts(v) => {
                out.insert(name.clone(), v.clone());
            }
            Some(v) => problems.push(format!(
                "{what} `{name}` must be {}, got {v}",
                spec.kind.name()
            )),
            None if spec.required => problems.push(format!(
                "missing required {what} `{name}` ({})",
                spec.kind.name()
            )),
            None => {
                out.insert(name.clone(), Value::Null);
            }
        }
    }
    if problems.is_empty() {
        Ok(Value::Object(out))
    } else {
        Err(problems)
    }
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
