//! `webhook`: fire a custom event to the subscribed webhook endpoints.
//!
//! ```yaml
//! - id: alert
//!   needs: [big]
//!   for_each: "${{ steps.big.output }}"
//!   webhook:
//!     event: po.high_value
//!     payload: { po: "${{ item.number }}", total: "${{ item.total }}" }
//!     endpoint: ep_0190...     # optional: only this endpoint, whatever its filters
//! ```
//! The output is the event envelope. The executor writes one outbox message
//! per receiving endpoint in the same transaction as the step's result; the
//! envelope id derives from the step's idempotency key, so a resumed run
//! does not fire twice.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{StepError, StepErrorKind, StepRuntime};
use crate::expr::Template;
use crate::flow::check::Checker;
use crate::path;
use crate::webhooks::{self, Envelope, MAX_BODY_BYTES};

/// Config of a `webhook` step.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookStep {
    /// Event type, e.g. `po.high_value` (the `sync.`, `connection.`, `system.`, `record.`, `run.` namespaces are reserved).
    pub event: String,
    /// The event's data, built from templates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
    /// Deliver only to this endpoint id, whatever its filters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Connection the event is about (for endpoints' connection filters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<String>,
}

/// A compiled `webhook` step.
#[derive(Debug)]
pub struct CompiledWebhook {
    /// The envelope, with `data` typed as the payload.
    pub output_type: crate::expr::types::Type,
    event: String,
    payload: Template,
    endpoint: Option<String>,
    connection: Option<String>,
}

/// Checks the event type and compiles the payload.
/// Publishes events.
pub const PURE: bool = false;

pub fn compile(
    step: &WebhookStep,
    _: &super::CompileCtx<'_>,
    c: &mut Checker<'_>,
) -> Option<CompiledWebhook> {
    let mut ok = true;
    if let Err(e) = webhooks::check_custom_event_type(&step.event) {
        c.error(&path!["webhook", "event"], "invalid-event-type", e);
        ok = false;
    }
    if let Some(conn) = &step.connection {
        ok &= c.connection(&path!["webhook", "connection"], conn);
    }
    let (payload, data_type) = c.template_typed(
        &path!["webhook", "payload"],
        step.payload.as_ref().unwrap_or(&Value::Null),
    );
    use crate::expr::types::Type;
    let output_type = Type::object(
        [
            ("id", Type::String),
            ("type", Type::String),
            ("timestamp", Type::String),
            ("connection_id", Type::String),
            ("data", data_type),
            ("endpoint", Type::String),
        ]
        .map(|(k, t)| (k.to_string(), t)),
        false,
    )
    .named("the event envelope");
    if !ok {
        return None;
    }
    Some(CompiledWebhook {
        output_type,
        event: step.event.clone(),
        payload: payload?,
        endpoint: step.endpoint.clone(),
        connection: step.connection.clone(),
    })
}

impl CompiledWebhook {
    /// Builds the envelope; checks its size and the named endpoint.
    /// The type of the envelope the step fires.
    pub fn output_type(&self) -> crate::expr::types::Type {
        self.output_type.clone()
    }

    pub async fn execute(&self, rt: &StepRuntime<'_>) -> Result<super::StepOutput, StepError> {
        let data = self.payload.eval(rt.ctx)?;
        rt.record_input(serde_json::json!({
            "event": self.event,
            "endpoint": self.endpoint,
            "data": data,
        }));
        let env = Envelope::new(
            rt.idempotency_key,
            &self.event,
            self.connection.clone(),
            data,
        );
        let size = env.body().len();
        if size > MAX_BODY_BYTES {
            return Err(StepError::new(
                StepErrorKind::Validation,
                format!(
                    "webhook `{}` payload is {size} bytes; the limit is {MAX_BODY_BYTES} bytes",
                    self.event
                ),
            ));
        }
        if let (Some(id), Some(store)) = (&self.endpoint, rt.store) {
            match store.endpoint(id).await {
                Ok(Some(_)) => {}
                Ok(None) => {
                    return Err(StepError::new(
                        StepErrorKind::Validation,
                        format!("webhook endpoint `{id}` does not exist"),
                    ));
                }
                Err(e) => {
                    return Err(StepError {
                        retryable: true,
                        ..StepError::new(StepErrorKind::Connector, e.to_string())
                    });
                }
            }
        }
        let mut out = serde_json::to_value(&env).expect("envelopes serialize");
        out["endpoint"] = self
            .endpoint
            .clone()
            .map(Value::String)
            .unwrap_or(Value::Null);
        let effects = vec![super::Effect::Publish(envelopes(&out))];
        Ok(super::StepOutput {
            value: out,
            effects,
        })
    }
}

/// The envelope(s) a `webhook` step's output holds, with the endpoint it names.
pub fn envelopes(output: &Value) -> Vec<(Envelope, Option<String>)> {
    fn one(v: &Value) -> Option<(Envelope, Option<String>)> {
        Some((
            Envelope {
                id: v.get("id")?.as_str()?.to_string(),
                event_type: v.get("type")?.as_str()?.to_string(),
                timestamp: v.get("timestamp")?.as_str()?.to_string(),
                connection_id: v
                    .get("connection_id")
                    .and_then(Value::as_str)
                    .map(str::to_string),
                data: v.get("data").cloned().unwrap_or(Value::Null),
            },
            v.get("endpoint")
                .and_then(Value::as_str)
                .map(str::to_string),
        ))
    }
    match output {
        Value::Array(items) => items.iter().filter_map(one).collect(),
        v => one(v).into_iter().collect(),
    }
}
