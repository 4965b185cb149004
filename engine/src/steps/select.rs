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
}

/// Compiles `from` and parses the query.
pub fn compile(step: &SelectStep, c: &mut Checker<'_>) -> Option<CompiledSelect> {
    let from = c.template(&crate::path!["select", "from"], &step.from);
    let query = match &step.query {
        Some(q) if q.contains(crate::expr::OPEN) => c
            .template(&crate::path!["select", "where"], &Value::String(q.clone()))
            .map(WhereClause::Templated),
        Some(q) => match Query::parse(q) {
            Ok(q) => Some(WhereClause::Fixed(q)),
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
    Some(CompiledSelect {
        from: from?,
        query: query?,
    })
}

impl CompiledSelect {
    /// Evaluates `from` and applies the query.
    pub fn execute(&self, rt: &StepRuntime<'_>) -> Result<Value, StepError> {
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
