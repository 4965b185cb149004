//! In-memory evaluation: a flow's steps in topological order, one at a time,
//! with no store, no leases and no retries.
//!
//! This measures the engine's own per-step cost (expressions, JSONPath,
//! connectors) apart from the database, for the benchmarks, and lets a
//! caller preview a flow's outputs without recording a run.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::connectors::ConnectorRegistry;
use crate::expr::{Scope, from_json};
use crate::flow::CompiledFlow;
use crate::steps::{StepError, StepErrorKind, StepRuntime};

/// Evaluates every step and returns the outputs by step id (`null` for
/// skipped steps). The first failing step ends the evaluation.
pub async fn evaluate(
    flow: &CompiledFlow,
    inputs: &Value,
    connectors: &ConnectorRegistry,
) -> Result<BTreeMap<String, Value>, StepError> {
    let mut scope = Scope {
        inputs: from_json(inputs),
        ..Scope::default()
    };
    let mut outputs = BTreeMap::new();
    let mut skipped = vec![false; flow.steps.len()];
    for &i in &flow.topo_order {
        let step = &flow.steps[i];
        let key = format!("memory:{}", step.id);
        let ctx = scope.context(None);
        let skip = step.needs.iter().any(|&d| skipped[d])
            || match (&step.condition, &step.for_each) {
                (Some(c), None) => !c.eval_truthy(&ctx)?,
                _ => false,
            };
        let output = if skip {
            skipped[i] = true;
            Value::Null
        } else if let Some(list) = &step.for_each {
            let Value::Array(items) = list.eval(&ctx)? else {
                return Err(StepError::new(
                    StepErrorKind::Expression,
                    format!("step `{}`: `for_each` must give a list", step.id),
                ));
            };
            let mut out = Vec::with_capacity(items.len());
            for (index, item) in items.iter().enumerate() {
                let item = from_json(item);
                let ctx = scope.context(Some((&item, index)));
                if let Some(c) = &step.condition
                    && !c.eval_truthy(&ctx)?
                {
                    continue;
                }
                out.push(
                    step.kind
                        .execute(&StepRuntime {
                            connectors,
                            ctx: &ctx,
                            idempotency_key: &key,
                            store: None,
                            plugins: None,
                            plugin_outputs: None,
                            children: None,
                            input: None,
                        })
                        .await?
                        .value,
                );
            }
            Value::Array(out)
        } else {
            step.kind
                .execute(&StepRuntime {
                    connectors,
                    ctx: &ctx,
                    idempotency_key: &key,
                    store: None,
                    plugins: None,
                    plugin_outputs: None,
                    children: None,
                    input: None,
                })
                .await?
                .value
        };
        let status = if skip { "skipped" } else { "succeeded" };
        scope.steps.insert(
            step.id.clone(),
            from_json(&json!({"output": output, "status": status, "error": null})),
        );
        outputs.insert(step.id.clone(), output);
    }
    Ok(outputs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::{Catalog, compile};

    #[tokio::test]
    async fn evaluates_steps_in_dependency_order_and_skips() {
        let f = compile(
            "m.yaml",
            "apiVersion: sluice/v1\nid: m\nsteps:\n  - { id: b, needs: [a], set: \"${{ steps.a.output * 2 }}\" }\n  - { id: a, set: 21 }\n  - { id: c, if: \"${{ false }}\", set: 1 }\n",
            &Catalog::default(),
        )
        .unwrap();
        let out = evaluate(&f, &json!({}), &ConnectorRegistry::new())
            .await
            .unwrap();
        assert_eq!(out["b"], json!(42));
        assert_eq!(out["c"], Value::Null);
    }
}
