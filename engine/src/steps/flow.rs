//! `flow`: run another flow as a child run, wait for it, and output its output.
//!
//! ```yaml
//! - id: price
//!   flow:
//!     id: price-check                        # the child flow's id
//!     inputs: { po: "${{ inputs.po }}" }     # checked against its `inputs:`
//! ```
//!
//! The child is a run of its own (stored, resumable, listed by `runs list`)
//! linked to its parent: the child records `parent_run_id` and `parent_step`,
//! and `runs show` and `GET /v1/runs/{id}` list a run's children. The step's
//! output is the child's output (its `output:`, or what its last steps
//! gave); a child that fails fails the step with an error naming the child
//! run and the step that failed in it.
//!
//! Where the child flow is known at validation (the server, `sluice validate`
//! and `sluice run` with the flow files beside each other), its id and the
//! inputs are checked against its `inputs:` declaration; at run time they are
//! checked again, as for any run. A step (and each `for_each` item) starts
//! its child once: a resumed parent waits for the child it already started
//! (request key `flow:<run>:<step>[:<index>]`). Calls nest at most
//! [`max_depth`] deep, so a flow that calls itself stops with an error that
//! names the chain.

use std::collections::BTreeMap;

use futures::future::BoxFuture;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::{StepError, StepErrorKind, StepRuntime};
use crate::expr::Template;
use crate::expr::types::Type;
use crate::flow::InputType;
use crate::flow::check::Checker;
use crate::flow::diagnostic::did_you_mean;
use crate::path;

/// How deep `flow` steps may nest (`SLUICE_MAX_FLOW_DEPTH`, default 8): a
/// run at this depth cannot start a child.
pub fn max_depth() -> usize {
    static MAX: std::sync::LazyLock<usize> = std::sync::LazyLock::new(|| {
        std::env::var("SLUICE_MAX_FLOW_DEPTH")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(8)
    });
    *MAX
}

/// Config of a `flow` step.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FlowStep {
    /// The id of the flow to run.
    pub id: String,
    /// Its inputs (templates), checked against its `inputs:` declaration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<BTreeMap<String, Value>>,
}

/// A compiled `flow` step.
#[derive(Debug)]
pub struct CompiledFlowStep {
    flow_id: String,
    inputs: Option<Template>,
}

/// One child run to start (once per `key`) and wait for.
pub struct ChildCall<'a> {
    /// The child flow's id.
    pub flow_id: &'a str,
    /// Its inputs, before defaults.
    pub inputs: Map<String, Value>,
    /// The step's idempotency key (`run:step[:item]`).
    pub key: &'a str,
}

/// Starts child runs and waits for them; the executor implements it, so
/// steps need not know how runs are stored and executed.
pub trait ChildRuns: Send + Sync {
    /// Runs the child (or waits for the one `call.key` already started) and
    /// gives its output; a failed or cancelled child is an error naming it.
    fn run_child<'a>(&'a self, call: ChildCall<'a>) -> BoxFuture<'a, Result<Value, StepError>>;
}

/// Checks the flow id and, where the flow is known, the inputs against its
/// declaration.
/// Starts child runs: has an effect outside the run.
pub const PURE: bool = false;

/// Checks the called flow and its inputs.
pub fn compile(
    step: &FlowStep,
    _: &super::CompileCtx<'_>,
    c: &mut Checker<'_>,
) -> Option<CompiledFlowStep> {
    let mut ok = true;
    let mut types: BTreeMap<String, Type> = BTreeMap::new();
    let inputs = match &step.inputs {
        Some(given) => {
            let (t, ty) = c.template_typed(
                &path!["flow", "inputs"],
                &Value::Object(given.clone().into_iter().collect()),
            );
            ok &= t.is_some();
            for name in given.keys() {
                let field = match &ty {
                    Type::Object(o) => o.fields.get(name).cloned().unwrap_or(Type::Any),
                    _ => Type::Any,
                };
                types.insert(name.clone(), field);
            }
            t
        }
        None => None,
    };
    let slug = !step.id.is_empty()
        && step
            .id
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_');
    if !slug {
        c.error(
            &path!["flow", "id"],
            "invalid-id",
            format!("invalid flow id `{}`", step.id),
        )
        .hint = Some(
            "write the flow's id (letters, digits, `-` and `_`); it cannot be an expression".into(),
        );
        ok = false;
    } else if let Some(flows) = c.scope.flows.clone() {
        ok &= check_against(step, &types, &flows, c);
    }
    ok.then(|| CompiledFlowStep {
        flow_id: step.id.clone(),
        inputs,
    })
}

/// Checks the called flow is known and the inputs against its declaration:
/// no undeclared input, every required one given, no value of a type the
/// input cannot take. Returns false on any problem.
fn check_against(
    step: &FlowStep,
    types: &BTreeMap<String, Type>,
    flows: &crate::flow::KnownFlows,
    c: &mut Checker<'_>,
) -> bool {
    let Some(declared) = flows.get(&step.id) else {
        let hint = match did_you_mean(&step.id, flows.keys().map(String::as_str)) {
            Some(s) => format!("did you mean `{s}`?"),
            None => format!(
                "known flows: {}",
                flows.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        };
        c.error(
            &path!["flow", "id"],
            "unknown-flow",
            format!("unknown flow `{}`", step.id),
        )
        .hint = Some(hint);
        return false;
    };
    let mut ok = true;
    for (name, ty) in types {
        let Some(spec) = declared.get(name) else {
            let names: Vec<&str> = declared.keys().map(String::as_str).collect();
            c.error_at_key(
                &path!["flow", "inputs", name.as_str()],
                "unknown-input",
                format!("flow `{}` has no input `{name}`", step.id),
            )
            .hint = Some(match did_you_mean(name, names.iter().copied()) {
                Some(s) => format!("did you mean `{s}`?"),
                None if names.is_empty() => "it declares no inputs".to_string(),
                None => format!("its inputs: {}", names.join(", ")),
            });
            ok = false;
            continue;
        };
        if !fits(ty, spec.kind) {
            let article = match spec.kind {
                InputType::Integer | InputType::Array | InputType::Object => "an",
                _ => "a",
            };
            let message = format!(
                "step `{}`: input `{name}` of flow `{}` is {article} {}, but this gives {}",
                c.scope.current.as_deref().unwrap_or("?"),
                step.id,
                spec.kind.name(),
                ty.a()
            );
            c.error(
                &path!["flow", "inputs", name.as_str()],
                "wrong-type",
                message,
            );
            ok = false;
        }
    }
    for (name, spec) in declared {
        if spec.required && spec.default.is_none() && !types.contains_key(name) {
            c.error_at_key(
                &path!["flow", "id"],
                "missing-input",
                format!(
                    "flow `{}` requires input `{name}` ({}), which is not given",
                    step.id,
                    spec.kind.name()
                ),
            )
            .hint = Some(format!("add it under `inputs:`, e.g. `{name}: ...`"));
            ok = false;
        }
    }
    ok
}

/// Whether a value of static type `ty` may be an input of kind `kind` (only
/// a type that can never be one is refused: `Any` and `null` pass).
fn fits(ty: &Type, kind: InputType) -> bool {
    matches!(
        (ty, kind),
        (Type::Any | Type::Null, _)
            | (Type::String, InputType::String)
            | (Type::Bool, InputType::Boolean)
            | (
                Type::Integer | Type::Number,
                InputType::Number | InputType::Integer
            )
            | (Type::List(_), InputType::Array)
            | (Type::Object(_), InputType::Object)
    )
}

impl CompiledFlowStep {
    /// Runs the child and gives its output.
    /// The child's output is whatever its flow gives.
    pub fn output_type(&self) -> crate::expr::types::Type {
        crate::expr::types::Type::Any
    }

    pub async fn execute(&self, rt: &StepRuntime<'_>) -> Result<Value, StepError> {
        let inputs = match &self.inputs {
            Some(t) => match t.eval(rt.ctx)? {
                Value::Object(m) => m,
                other => {
                    return Err(StepError::new(
                        StepErrorKind::Validation,
                        format!("`inputs` must give an object, got {other}"),
                    ));
                }
            },
            None => Map::new(),
        };
        rt.record_input(serde_json::json!({"flow": self.flow_id, "inputs": inputs}));
        let Some(children) = rt.children else {
            return Err(StepError::new(
                StepErrorKind::Validation,
                "a `flow` step runs only inside a stored run (not in a preview or a flow test)",
            ));
        };
        children
            .run_child(ChildCall {
                flow_id: &self.flow_id,
                inputs,
                key: rt.idempotency_key,
            })
            .await
    }

    /// The child flow's id.
    pub fn flow_id(&self) -> &str {
        &self.flow_id
    }
}
