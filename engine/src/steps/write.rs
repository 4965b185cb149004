//! `write`: create, update or delete a record through a connection.
//!
//! ```yaml
//! - id: tag
//!   write:
//!     connection: sandbox
//!     entity: purchase_order
//!     op: update
//!     id: "${{ item.remote_id }}"
//!     data: { custom_fields: { risk_score: "${{ item.risk }}" } }
//! ```
//! Every write carries the step's idempotency key, so a retried or resumed
//! write is deduplicated by the connection. The output is the record as the
//! system returned it. When the system accepted a create or update but its
//! answer does not map to the unified model, the step still succeeds (the
//! record exists: failing would orphan it) with `remote_id` (from the answer
//! or its `Location`/`OData-EntityId` header), `raw`, `mapped: false` and a
//! `warning` saying why.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{StepError, StepErrorKind, StepRuntime};
use crate::connectors::WriteRequest;
use crate::expr::Template;
use crate::expr::types::Type;
use crate::flow::check::Checker;
use crate::path;
use crate::unified::Entity;

/// The write operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum WriteOp {
    /// Create a record from `data`.
    Create,
    /// Change the fields in `data` of record `id`.
    Update,
    /// Delete record `id`.
    Delete,
}

/// Config of a `write` step.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WriteStep {
    /// Connection name.
    pub connection: String,
    /// Entity written.
    pub entity: String,
    /// `create`, `update` or `delete`.
    pub op: WriteOp,
    /// Remote id of the record (update, delete).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Fields to write (create, update).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Value>,
}

/// A compiled `write` step.
#[derive(Debug)]
pub struct CompiledWrite {
    connection: String,
    entity: Entity,
    op: WriteOp,
    id: Option<Template>,
    data: Option<Template>,
}

/// Checks connection, entity, the fields of `data` and that `id`/`data` fit `op`.
/// Writes to a connected system.
pub const PURE: bool = false;

pub fn compile(
    step: &WriteStep,
    _: &super::CompileCtx<'_>,
    c: &mut Checker<'_>,
) -> Option<CompiledWrite> {
    let connection_ok = c.connection(&path!["write", "connection"], &step.connection);
    let entity = c.entity(&path!["write", "entity"], &step.entity);
    let mut ok = connection_ok && entity.is_some();
    if let (true, Some(e)) = (connection_ok, entity) {
        ok &= c.operation(&path!["write", "op"], &step.connection, e, op_name(step.op));
    }
    match (step.op, &step.id, &step.data) {
        (WriteOp::Create, Some(_), _) => {
            c.error(
                &path!["write", "id"],
                "invalid-write",
                "`create` takes no `id`; the system assigns it",
            )
            .hint = Some("remove `id`, or use `op: update`".into());
            ok = false;
        }
        (WriteOp::Create | WriteOp::Update, _, None) => {
            c.error(
                &path!["write", "op"],
                "invalid-write",
                format!("`{}` needs `data`", op_name(step.op)),
            )
            .hint = Some("add `data:` with the fields to write".into());
            ok = false;
        }
        (WriteOp::Update | WriteOp::Delete, None, _) => {
            c.error(
                &path!["write", "op"],
                "invalid-write",
                format!("`{}` needs `id`", op_name(step.op)),
            )
            .hint = Some("add `id:` with the record's remote id".into());
            ok = false;
        }
        (WriteOp::Delete, _, Some(_)) => {
            c.error(
                &path!["write", "data"],
                "invalid-write",
                "`delete` takes no `data`",
            );
            ok = false;
        }
        _ => {}
    }
    if let (Some(e), Some(Value::Object(fields))) = (entity, &step.data) {
        for k in fields.keys() {
            c.entity_field(&path!["write", "data", k.as_str()], e, k);
        }
    }
    let id = step
        .id
        .as_ref()
        .and_then(|i| c.template(&path!["write", "id"], &Value::String(i.clone())));
    let data = step.data.as_ref().and_then(|d| {
        let (t, ty) = c.template_typed(&path!["write", "data"], d);
        if let (Some(e), Type::Object(fields)) = (entity, &ty) {
            check_field_types(c, e, fields);
        }
        t
    });
    if !ok || (step.id.is_some() && id.is_none()) || (step.data.is_some() && data.is_none()) {
        return None;
    }
    Some(CompiledWrite {
        connection: step.connection.clone(),
        entity: entity?,
        op: step.op,
        id,
        data,
    })
}

impl CompiledWrite {
    /// The record as the system returned it.
    pub fn output_type(&self) -> crate::expr::types::Type {
        // A create or update the system accepted but whose answer does not
        // map carries `mapped: false` and a `warning` (see the connectors).
        match self.entity.value_type() {
            Type::Object(mut o) => {
                o.fields.insert("mapped".into(), Type::Bool);
                o.fields.insert("warning".into(), Type::String);
                Type::Object(o)
            }
            other => other,
        }
    }
}

/// Reports `data` values whose static type cannot be the entity field's.
fn check_field_types(c: &mut Checker<'_>, entity: Entity, data: &crate::expr::types::ObjectType) {
    let Type::Object(model) = entity.value_type() else {
        return;
    };
    for (name, given) in &data.fields {
        let Some(expected) = model.fields.get(name) else {
            continue; // unknown fields are reported by `entity_field`
        };
        if !compatible(expected, given) {
            c.error(
                &path!["write", "data", name.as_str()],
                "wrong-type",
                format!(
                    "`{name}` of {entity} is {}, but this gives {}",
                    expected.a(),
                    given.a()
                ),
            )
            .hint = Some(match expected {
                Type::Number | Type::Integer => "convert it, e.g. `${{ ... | float }}`".to_string(),
                Type::String => "convert it, e.g. `${{ ... | string }}`".to_string(),
                _ => format!("give a {}", expected.describe()),
            });
        }
    }
}

/// Whether a value of static type `given` may be written where `expected` is.
fn compatible(expected: &Type, given: &Type) -> bool {
    match (expected, given) {
        (_, Type::Any) | (Type::Any, _) | (_, Type::Null) => true,
        (Type::Number, Type::Integer) => true,
        (Type::List(_), Type::List(_)) | (Type::Object(_), Type::Object(_)) => true,
        (a, b) => std::mem::discriminant(a) == std::mem::discriminant(b),
    }
}

fn op_name(op: WriteOp) -> &'static str {
    match op {
        WriteOp::Create => "create",
        WriteOp::Update => "update",
        WriteOp::Delete => "delete",
    }
}

impl CompiledWrite {
    /// Performs the write.
    pub async fn execute(&self, rt: &StepRuntime<'_>) -> Result<Value, StepError> {
        let connector = rt.connector(&self.connection)?;
        let id = match &self.id {
            Some(t) => match t.eval(rt.ctx)? {
                Value::String(s) if !s.is_empty() => Some(s),
                Value::Number(n) => Some(n.to_string()),
                other => {
                    return Err(StepError::new(
                        StepErrorKind::Validation,
                        format!("write id must be a non-empty string, got {other}"),
                    ));
                }
            },
            None => None,
        };
        let data = match &self.data {
            Some(t) => t.eval(rt.ctx)?,
            None => Value::Null,
        };
        rt.record_input(serde_json::json!({
            "connection": self.connection,
            "entity": self.entity,
            "op": self.op,
            "id": id,
            "data": data,
        }));
        let req = WriteRequest {
            entity: self.entity,
            remote_id: id.as_deref(),
            data: &data,
            idempotency_key: rt.idempotency_key,
        };
        let record = match self.op {
            WriteOp::Create => connector.create(req).await?,
            WriteOp::Update => connector.update(req).await?,
            WriteOp::Delete => connector.delete(req).await?,
        };
        Ok(record)
    }
}
