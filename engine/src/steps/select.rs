//! `select`: pick values out of JSON with JSONPath (RFC 9535).
//!
//! ```yaml
//! - id: big
//!   select:
//!     from: "${{ steps.approved.output.records }}"
//!     where: "$[?@.total > 10000]"
//! ```
//! The output is the list of matched values, in document order; without
//! `where` it is `from` itself.
//!
//! A `where` may hold `${{ }}` expressions. Each one's value goes into the
//! query as a JSONPath literal (RFC 9535 §2.3.5.1 `literal`), never as query
//! text, so an input cannot rewrite the filter:
//! - inside a quoted string (`'${{ inputs.as_of }}'`) the value is escaped for
//!   that quote (§2.3.1.1: `\\`, the quote, control characters);
//! - standing alone (`> ${{ inputs.threshold }}`) a number, boolean or null
//!   goes in as that literal and a string as a double-quoted string literal.
//!
//! A list or an object has no literal form in a filter and fails the step.
//! A value keeps its type: a string standing alone is a string literal, so
//! `@.total > ${{ trigger.body.min }}` with `"100"` compares text, which
//! no number matches; convert it (`${{ trigger.body.min | float }}`). A
//! value inside a `match()`/`search()` pattern is escaped for JSONPath but
//! is still read as a pattern (I-Regexp, RFC 9485) there.

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

/// The query of a `select` step: parsed once, or built per run when it
/// holds `${{ }}` expressions.
#[derive(Debug)]
enum WhereClause {
    None,
    Fixed(Query),
    Templated(QueryTemplate),
}

/// A `where` with expressions: the query text around them, and each
/// expression with the place it stands in.
#[derive(Debug)]
struct QueryTemplate {
    /// Query text; one piece more than `holes`.
    text: Vec<String>,
    holes: Vec<Hole>,
}

/// One `${{ }}` of a `where`.
#[derive(Debug)]
struct Hole {
    /// The expression as written, for messages.
    source: String,
    expr: Template,
    /// The quote of the string literal it stands inside, if any.
    quote: Option<char>,
}

impl QueryTemplate {
    /// Splits `query` at its expressions and finds, for each, whether it
    /// stands inside a quoted string of the query text before it.
    fn compile(query: &str) -> Result<QueryTemplate, crate::expr::ExprError> {
        let mut text = Vec::new();
        let mut holes = Vec::new();
        let mut quote: Option<char> = None;
        let mut from = 0;
        for (inner_start, raw) in crate::expr::embedded_expressions(query) {
            let piece = &query[from..inner_start - crate::expr::OPEN.len()];
            quote = quote_after(quote, piece);
            text.push(piece.to_string());
            from = inner_start + raw.len() + crate::expr::CLOSE.len();
            // `${{- x -}}`: the dashes are whitespace control, not a minus.
            let raw = raw.strip_prefix('-').unwrap_or(raw);
            let raw = raw.strip_suffix('-').unwrap_or(raw);
            let inner = raw.trim();
            holes.push(Hole {
                source: inner.to_string(),
                expr: Template::compile_strict(&Value::String(format!(
                    "{} {inner} {}",
                    crate::expr::OPEN,
                    crate::expr::CLOSE
                )))?,
                quote,
            });
        }
        text.push(query[from..].to_string());
        Ok(QueryTemplate { text, holes })
    }

    /// The query text with `put` writing each expression's place.
    fn fill<E>(
        &self,
        mut put: impl FnMut(&mut String, &Hole) -> Result<(), E>,
    ) -> Result<String, E> {
        let mut out = String::new();
        for (piece, hole) in self.text.iter().zip(&self.holes) {
            out.push_str(piece);
            put(&mut out, hole)?;
        }
        out.push_str(self.text.last().map_or("", String::as_str));
        Ok(out)
    }

    /// The query with each expression's value in place as a literal.
    fn render(&self, ctx: &minijinja::Value) -> Result<String, StepError> {
        self.fill(|out, hole| {
            let value = hole.expr.eval(ctx)?;
            literal(out, &value, hole.quote).map_err(|shape| {
                StepError::new(
                    StepErrorKind::Validation,
                    format!(
                        "`where`: `${{{{ {} }}}}` gives {shape}; a JSONPath filter compares \
                         single values (a string, number, boolean or null)",
                        hole.source
                    ),
                )
            })
        })
    }

    /// The query with a stand-in for each value, to check its syntax before
    /// any run.
    fn sample(&self) -> String {
        let stand_in = |out: &mut String, hole: &Hole| {
            out.push_str(if hole.quote.is_some() { "x" } else { "0" });
            Ok::<(), std::convert::Infallible>(())
        };
        match self.fill(stand_in) {
            Ok(text) => text,
            Err(never) => match never {},
        }
    }
}

/// Whether query text ends inside a quoted string, given the state before it.
fn quote_after(mut quote: Option<char>, text: &str) -> Option<char> {
    let mut escaped = false;
    for c in text.chars() {
        match quote {
            Some(_) if escaped => escaped = false,
            Some(_) if c == '\\' => escaped = true,
            Some(q) if c == q => quote = None,
            Some(_) => {}
            None if c == '\'' || c == '"' => quote = Some(c),
            None => {}
        }
    }
    quote
}

/// Writes `value` as a JSONPath literal: inside a string quoted by `quote`,
/// or standing alone. Lists and objects have no literal form (their shape is
/// the error).
fn literal(out: &mut String, value: &Value, quote: Option<char>) -> Result<(), &'static str> {
    match (value, quote) {
        (Value::Array(_), _) => Err("a list"),
        (Value::Object(_), _) => Err("an object"),
        (Value::Null, Some(_)) => Err("null, which cannot stand inside a quoted string"),
        (Value::String(s), Some(q)) => {
            escape_into(out, s, q);
            Ok(())
        }
        (Value::String(s), None) => {
            out.push('"');
            escape_into(out, s, '"');
            out.push('"');
            Ok(())
        }
        // Numbers, booleans and null: their JSON text is their JSONPath literal.
        (other, _) => {
            out.push_str(&other.to_string());
            Ok(())
        }
    }
}

/// Escapes `s` for a JSONPath string literal quoted by `quote` (RFC 9535
/// §2.3.1.1: the quote and `\\` are escaped, and so are control characters,
/// which may not appear unescaped).
fn escape_into(out: &mut String, s: &str, quote: char) {
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
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
            // Checks the expressions' references and types where they are written.
            c.template(&crate::path!["select", "where"], &Value::String(q.clone()))
                .and_then(|_| match QueryTemplate::compile(q) {
                    Ok(t) => Some(t),
                    Err(e) => {
                        c.error(
                            &crate::path!["select", "where"],
                            "invalid-expression",
                            format!("expression `{}`: {}", e.source_text, e.message),
                        );
                        None
                    }
                })
                .and_then(|t| match Query::parse(&t.sample()) {
                    Ok(_) => Some(WhereClause::Templated(t)),
                    Err(e) => {
                        c.error(
                            &crate::path!["select", "where"],
                            "invalid-jsonpath",
                            format!("{} (with each `${{{{ }}}}` standing for a value)", e.message),
                        )
                        .hint = Some(
                            "an expression's value goes in as a literal: `@.total > ${{ inputs.min }}` or `@.status == '${{ inputs.status }}'`"
                                .into(),
                        );
                        None
                    }
                })
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
                let text = t.render(rt.ctx)?;
                // `from` is another step's output, shown there; the query
                // with its values in place is what this step adds.
                rt.record_input(serde_json::json!({ "where": text }));
                let q = Query::parse(&text)
                    .map_err(|e| StepError::new(StepErrorKind::Validation, e.to_string()))?;
                Value::Array(q.select(&doc))
            }
            WhereClause::None => doc,
        })
    }
}
