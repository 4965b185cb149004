//! `wait_for`: park the run until a person or a system answers: a signal
//! (an approval, a partner's callback) or an engine event, or until a
//! timeout passes. A parked run is `waiting`: it holds no lease and no run
//! slot, and lives only in the store (table `run_waits`), so it survives
//! restarts; a signal, a matching event or the deadline queues it again and
//! the server resumes it after the `wait_for` step.
//!
//! ```yaml
//! - id: approval
//!   wait_for:
//!     signal: approve            # POST /v1/runs/{id}/signal {"signal": "approve", "data": {...}}
//!     data:                      # typed like flow inputs; wrong data is refused (422)
//!       approved: {type: boolean, required: true}
//!       comment: {type: string}
//!     timeout: 2d
//!     on_timeout: fail           # or `continue` (output `timed_out: true`)
//! - id: shipped
//!   wait_for:
//!     event: po.shipped
//!     match: ${{ event.data.po_number == inputs.po_number }}
//! ```
//!
//! The output: `{signal, data, event, timed_out, received_at}`, with `data`
//! the signal's data (defaults applied) and `event` the event's envelope.

use std::collections::BTreeMap;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::{Effect, StepError, StepErrorKind, StepOutput, StepRuntime};
use crate::expr::Template;
use crate::expr::types::Type;
use crate::flow::check::Checker;
use crate::flow::model::InputSpec;
use crate::path;

/// Parks the run; the wait itself has no effect outside the run, but a
/// repeat must not park twice, so attempts are logged.
pub const PURE: bool = false;

/// Config of a `wait_for` step: exactly one of `signal` and `event`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitForStep {
    /// Wait for this signal, sent with `POST /v1/runs/{id}/signal`
    /// (`{"signal": NAME, "data": {...}}`) or `sluice runs signal RUN NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// The signal's data, declared like flow inputs (type, required,
    /// default, description): a signal whose data does not match is refused
    /// and the run keeps waiting.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, InputSpec>,
    /// Wait for an engine event of this type instead, e.g. `po.approved`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// With `event`: a condition the event must meet, reading `event`
    /// (`event.type`, `event.data...`) and the run's `inputs` and `steps`.
    #[serde(rename = "match", default, skip_serializing_if = "Option::is_none")]
    pub matches: Option<String>,
    /// Give up after this long, e.g. `30m`, `2d` (default: wait until
    /// answered or cancelled).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// When the timeout passes: `fail` (default) or `continue` with
    /// `timed_out: true` in the output.
    #[serde(default)]
    pub on_timeout: OnTimeout,
}

/// What a `wait_for` step does when its timeout passes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum OnTimeout {
    /// The step fails (the run fails unless `on_error: continue`).
    #[default]
    Fail,
    /// The step succeeds with `timed_out: true`.
    Continue,
}

/// A compiled `wait_for` step.
#[derive(Debug)]
pub struct CompiledWaitFor {
    spec: WaitSpec,
    timeout: Option<Duration>,
}

/// What a parked wait needs to be resolved: stored with it (`run_waits.spec`),
/// so a signal is checked without compiling the flow.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WaitSpec {
    /// The signal's name, for signal waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// The signal's declared data.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub data: BTreeMap<String, InputSpec>,
    /// The event type, for event waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<String>,
    /// The `match` condition's source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matches: Option<String>,
    /// The timeout as written (for messages).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// What the timeout does.
    #[serde(default)]
    pub on_timeout: OnTimeout,
}

/// The effect of a `wait_for` attempt: park the run on this wait.
#[derive(Debug, Clone)]
pub struct Park {
    /// What resolves it.
    pub spec: WaitSpec,
    /// When it times out (ms since the epoch), if ever.
    pub deadline: Option<i64>,
}

/// Checks that exactly one of `signal`/`event` is given, the data
/// declaration, the `match` condition and the timeout.
pub fn compile(
    step: &WaitForStep,
    ctx: &super::CompileCtx<'_>,
    c: &mut Checker<'_>,
) -> Option<CompiledWaitFor> {
    let mut ok = true;
    match (&step.signal, &step.event) {
        (Some(_), Some(_)) => {
            c.error_at_key(
                &path!["wait_for", "event"],
                "several-waits",
                "`wait_for` takes `signal` or `event`, not both",
            )
            .hint = Some("split it into two steps, or keep one".into());
            ok = false;
        }
        (None, None) => {
            c.error(
                &path!["wait_for"],
                "missing-wait",
                "`wait_for` needs `signal: NAME` or `event: TYPE`",
            )
            .hint = Some("e.g. `signal: approve` (sent with `sluice runs signal`)".into());
            ok = false;
        }
        (Some(name), None) => {
            if name.is_empty()
                || !name
                    .chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-' || ch == '.')
            {
                c.error(
                    &path!["wait_for", "signal"],
                    "invalid-signal",
                    format!("signal name `{name}` may use only letters, digits, `_`, `-` and `.`"),
                );
                ok = false;
            }
            if step.matches.is_some() {
                c.error_at_key(
                    &path!["wait_for", "match"],
                    "misplaced-key",
                    "`match` applies to `event` waits; a signal is addressed to its run",
                );
                ok = false;
            }
        }
        (None, Some(_)) => {
            if !step.data.is_empty() {
                c.error_at_key(
                    &path!["wait_for", "data"],
                    "misplaced-key",
                    "`data` declares a signal's data; an event's data is `event.data`",
                );
                ok = false;
            }
        }
    }
    for (name, spec) in &step.data {
        if let Some(d) = &spec.default
            && !spec.kind.accepts(d)
        {
            c.error(
                &path!["wait_for", "data", name.as_str(), "default"],
                "wrong-type",
                format!("the default of `{name}` is not a {}", spec.kind.name()),
            );
            ok = false;
        }
    }
    if ctx.step.for_each.is_some() {
        c.error_at_key(
            &path!["for_each"],
            "wait-in-for-each",
            "a `wait_for` step cannot run per item",
        )
        .hint = Some("wait once, before or after the `for_each` step".into());
        ok = false;
    }
    let matches = match &step.matches {
        Some(text) => {
            c.scope.event = true;
            c.scope.types.insert("event".into(), Type::Any);
            let t = c.condition(&path!["wait_for", "match"], text);
            c.scope.event = false;
            ok &= t.is_some();
            t.map(|_| text.clone())
        }
        None => None,
    };
    let timeout = match &step.timeout {
        Some(t) => {
            let d = c.duration(&path!["wait_for", "timeout"], t);
            ok &= d.is_some();
            d
        }
        None => None,
    };
    ok.then(|| CompiledWaitFor {
        spec: WaitSpec {
            signal: step.signal.clone(),
            data: step.data.clone(),
            event: step.event.clone(),
            matches,
            timeout: step.timeout.clone(),
            on_timeout: step.on_timeout,
        },
        timeout,
    })
}

impl CompiledWaitFor {
    /// `{signal, data, event, timed_out, received_at}`, `data` typed from
    /// the declaration.
    pub fn output_type(&self) -> Type {
        let data = Type::object(
            self.spec
                .data
                .iter()
                .map(|(k, s)| (k.clone(), input_type(s))),
            false,
        );
        Type::object(
            [
                ("signal".to_string(), Type::String),
                ("data".to_string(), data),
                ("event".to_string(), Type::Any),
                ("timed_out".to_string(), Type::Bool),
                ("received_at".to_string(), Type::String),
            ],
            false,
        )
    }

    /// Asks the executor to park the run (only a stored run can wait).
    pub async fn execute(&self, rt: &StepRuntime<'_>) -> Result<StepOutput, StepError> {
        if rt.store.is_none() {
            return Err(StepError::new(
                StepErrorKind::Validation,
                "`wait_for` needs a stored run (sluice run / sluice serve)",
            ));
        }
        let deadline = self.timeout.map(|t| {
            crate::store::now_ms().saturating_add(i64::try_from(t.as_millis()).unwrap_or(i64::MAX))
        });
        Ok(StepOutput {
            value: Value::Null,
            effects: vec![Effect::Park(Park {
                spec: self.spec.clone(),
                deadline,
            })],
        })
    }
}

fn input_type(s: &InputSpec) -> Type {
    use crate::flow::model::InputType;
    match s.kind {
        InputType::String => Type::String,
        InputType::Number => Type::Number,
        InputType::Integer => Type::Integer,
        InputType::Boolean => Type::Bool,
        InputType::Object | InputType::Array => Type::Any,
    }
}

impl WaitSpec {
    /// Checks a signal's data against the declaration; the data with
    /// defaults applied, or every problem in one message.
    pub fn check_data(&self, given: &Value) -> Result<Value, String> {
        let empty = Map::new();
        let given = match given {
            Value::Null => &empty,
            Value::Object(m) => m,
            other => {
                return Err(format!(
                    "the signal's data must be an object, got {}",
                    json_type(other)
                ));
            }
        };
        crate::flow::model::check_values(&self.data, given, "field")
            .map_err(|problems| problems.join("; "))
    }

    /// What resolves this wait, in words: `signal \`approve\`` or
    /// `event \`po.shipped\``.
    pub fn describe(&self) -> String {
        match (&self.signal, &self.event) {
            (Some(s), _) => format!("signal `{s}`"),
            (_, Some(e)) => format!("event `{e}`"),
            _ => "nothing".into(),
        }
    }

    /// Whether `env` resolves this wait: its type, and the `match`
    /// condition evaluated with `event` added to the run's context `ctx`.
    pub fn event_matches(
        &self,
        env: &crate::events::Envelope,
        ctx: &BTreeMap<String, minijinja::Value>,
    ) -> Result<bool, String> {
        if self.event.as_deref() != Some(env.event_type.as_str()) {
            return Ok(false);
        }
        let Some(text) = &self.matches else {
            return Ok(true);
        };
        let t = Template::compile_condition(text).map_err(|e| e.message)?;
        let mut ctx = ctx.clone();
        ctx.insert(
            "event".into(),
            crate::expr::from_json(&serde_json::to_value(env).unwrap_or(Value::Null)),
        );
        t.eval_truthy(&minijinja::Value::from(ctx))
            .map_err(|e| e.message)
    }
}

/// The step output for a received signal.
pub fn signal_output(name: &str, data: Value) -> Value {
    json!({"signal": name, "data": data, "event": null, "timed_out": false, "received_at": now_text()})
}

/// The step output for a matching event.
pub fn event_output(env: &crate::events::Envelope) -> Value {
    json!({"signal": null, "data": null, "event": env, "timed_out": false, "received_at": now_text()})
}

/// The step output (`on_timeout: continue`) or error (`fail`) of a wait
/// whose deadline passed.
pub fn timeout_result(spec: &WaitSpec) -> Result<Value, StepError> {
    match spec.on_timeout {
        OnTimeout::Continue => Ok(
            json!({"signal": spec.signal, "data": null, "event": null, "timed_out": true, "received_at": now_text()}),
        ),
        OnTimeout::Fail => Err(StepError::new(
            StepErrorKind::Timeout,
            format!(
                "no {} within {}",
                spec.describe(),
                spec.timeout.as_deref().unwrap_or("its timeout")
            ),
        )),
    }
}

fn now_text() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
