//! `select`: pick values out of JSON with JSONPath (RFC 9535).
//!
//! ```yaml
//! - id: big
//!   select:
//!     from: "${{ steps.approved.output.records }}"
//!     where: "$[?@.total > 10000]"
//! ```
//! The output is the list of matched values, in document order; without
//! `where` it is `from` itself. A `where` holding `${{ }}` is rendered first,
//! then parsed.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{StepError, StepErrorKind, StepRuntime};
use crate::expr::Template;
use crate::expr::jsonpath::Query;
use crate::expr::types::Type;
use crate::flow::check::Checker;

/// Config of a `select` step.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SelectStep {
    /// The document to select from (usually an expression).
    pub from: Value,
    /// JSONPath query applied to `from`.
    #[serde(rename = "where", default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
}

/// The query of a `select` step: parsed once, or rendered per run when it
/// holds `${{ }}` expressions.
#[derive(Debug)]
enum WhereClause {
    None,
    Fixed(Query),
    Templated(Template),
}

/// A compiled `select` step.
#[derive(Debug)]
pub struct CompiledSelect {
    from: Template,
    query: WhereClause,
    /// The static type of the output.
    pub output_type: Type,
}

/// Compiles `from` and parses the query.
/// Reads only the run's own values.
pub const PURE: bool = true;

pub fn compile(
    step: &SelectStep,
    _: &super::CompileCtx<'_>,
    c: &mut Checker<'_>,
) -> Option<CompiledSelect> {
    let (from, from_type) = c.template_typed(&crate::path!["select", "from"], &step.from);
    let query = match &step.query {
        Some(q) if q.contains(crate::expr::OPEN) => {
            check_members(c, q, &from_type);
            c.template(&crate::path!["select", "where"], &Value::String(q.clone()))
                .map(WhereClause::Templated)
        }
        Some(q) => match Query::parse(q) {
            Ok(parsed) => {
                check_members(c, q, &from_type);
                Some(WhereClause::Fixed(parsed))
            }
            Err(e) => {
                c.error(
                    &crate::path!["select", "where"],
                    "invalid-jsonpath",
                    e.to_string(),
                )
                .hint = Some("JSONPath per RFC 9535, e.g. `$[?@.total > 1000]`".into());
                None
            }
        },
        None => Some(WhereClause::None),
    };
    let output_type = match (&step.query, &from_type) {
        (None, t) => t.clone(),
        // A filter over a list keeps elements of the list's type.
        (Some(q), Type::List(_)) if q.trim_start().starts_with("$[?") => from_type.clone(),
        _ => Type::list(Type::Any),
    };
    Some(CompiledSelect {
        from: from?,
        query: query?,
        output_type,
    })
}

/// Checks the member names a filter query reads from each element (`@.total`)
/// against the element type of `from`, when it is known.
fn check_members(c: &mut Checker<'_>, query: &str, from: &Type) {
    let Type::List(elem) = from else { return };
    let Type::Object(obj) = &**elem else { return };
    if obj.open || !query.trim_start().starts_with("$[?") {
        return;
    }
    let bytes = query.as_bytes();
    let mut i = 0;
    while let Some(p) = query[i..].find("@.") {
        let start = i + p + 2;
        let end = query[start..]
            .find(|ch: char| !(ch.is_alphanumeric() || ch == '_'))
            .map_or(query.len(), |e| start + e);
        let name = &query[start..end];
        i = end.max(start + 1).min(bytes.len());
        if name.is_empty() || obj.fields.contains_key(name) {
            continue;
        }
        let known: Vec<&str> = obj.fields.keys().map(String::as_str).collect();
        let hint = match crate::flow::diagnostic::did_you_mean(name, known.iter().copied()) {
            Some(s) => format!("did you mean `@.{s}`? fields: {}", known.join(", ")),
            None => format!("fields: {}", known.join(", ")),
        };
        let shape = obj
            .name
            .clone()
            .unwrap_or_else(|| "the elements of `from`".into());
        c.error_in_string(
            &crate::path!["select", "where"],
            query,
            start,
            name.len(),
            "unknown-field",
            format!("`@.{name}`: {shape} has no field `{name}`, so this filter can never match"),
        )
        .hint = Some(hint);
        if i >= query.len() {
            break;
        }
    }
}

impl CompiledSelect {
    /// Evaluates `from` and applies the query.
    /// The type of the selected value(s).
    pub fn output_type(&self) -> crate::expr::types::Type {
        self.output_type.clone()
    }

    pub async fn execute(&self, rt: &StepRuntime<'_>) -> Result<Value, StepError> {
        let doc = self.from.eval(rt.ctx)?;
        Ok(match &self.query {
            WhereClause::Fixed(q) => Value::Array(q.select(&doc)),
            WhereClause::Templated(t) => {
                let text = match t.eval(rt.ctx)? {
                    Value::String(s) => s,
                    other => other.to_string(),
                };
                let q = Query::parse(&text)
                    .map_err(|e| StepError::new(StepErrorKind::Validation, e.to_string()))?;
                Value::Array(q.select(&doc))
            }
            WhereClause::None => doc,
        })
    }
}
