//! `${{ }}` expressions and templates, evaluated by minijinja.
//!
//! A string that is exactly one `${{ expr }}` yields a typed JSON value (a
//! number stays a number, a list stays a list); a string with expressions
//! inside text is rendered as a template and yields a string. Values with no
//! `${{` are literals and cost nothing to evaluate. Expressions are compiled
//! once, when a flow is compiled.
//!
//! Reads are strict: reading a key, attribute or index that is not there is
//! an error naming the whole path, the keys the value has and a "did you
//! mean", never a silent `null`. Each compiled expression carries the paths
//! it reads ([`strict::ReadPath`]); they are resolved against the context
//! before it is evaluated. Optional data is read on purpose with
//! `| default(...)` or `is defined`, whose subjects are exempt.

pub mod functions;
pub mod jsonpath;
pub mod secrets;
pub mod strict;
pub mod types;

pub use functions::FILTERS;

use std::collections::BTreeMap;
use std::sync::LazyLock;

use minijinja::syntax::SyntaxConfig;
use minijinja::{Environment, Expression, UndefinedBehavior, Value as MjValue};
use serde_json::Value;

/// Opening delimiter of an expression.
pub const OPEN: &str = "${{";
/// Closing delimiter of an expression.
pub const CLOSE: &str = "}}";

static ENV: LazyLock<Environment<'static>> = LazyLock::new(|| {
    let mut env = Environment::new();
    let syntax = SyntaxConfig::builder()
        .variable_delimiters(OPEN, CLOSE)
        .block_delimiters("${%", "%}")
        .comment_delimiters("${#", "#}")
        .build()
        .expect("static delimiters are valid");
    env.set_syntax(syntax);
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    // Fuel bounds both the work and the memory of one evaluation (about 64
    // bytes of data per unit), so `range(10000) | join('x' * 100000)` fails
    // instead of allocating gigabytes.
    env.set_fuel(Some(expression_fuel()));
    functions::register(&mut env);
    env
});

/// The fuel of one evaluation: `SLUICE_EXPR_FUEL`, default 2,000,000 (about
/// two million instructions or 128 MB of data).
pub fn expression_fuel() -> u64 {
    std::env::var("SLUICE_EXPR_FUEL")
        .ok()
        .and_then(|v| v.trim().replace('_', "").parse().ok())
        .unwrap_or(2_000_000)
}

/// The expression environment (syntax, strictness, filters, functions).
pub fn env() -> &'static Environment<'static> {
    &ENV
}

/// Names of functions every expression may call (minijinja globals).
pub fn global_names() -> Vec<String> {
    ENV.globals().map(|(n, _)| n.to_string()).collect()
}

/// Names of the functions an expression may call.
pub fn function_names() -> Vec<String> {
    let mut names = global_names();
    names.sort();
    names
}

/// Whether `name` is a function an expression may call.
pub fn function_exists(name: &str) -> bool {
    ENV.globals().any(|(n, _)| n == name)
}

/// The result type of a function.
pub fn function_type(name: &str) -> types::Type {
    use types::Type;
    match name {
        "now" | "uuid" => Type::String,
        "range" => Type::list(Type::Integer),
        "dict" => Type::any_object(),
        _ => Type::Any,
    }
}

/// The result type of one of Sluice's own filters (builtins are typed in
/// [`types`]).
pub fn filter_type(name: &str, input: &types::Type) -> types::Type {
    use types::Type;
    match name {
        "timestamp" | "seconds_between" => Type::Integer,
        "fromjson" | "attr" | "items" | "dictsort" | "groupby" | "batch" | "slice" | "zip"
        | "chain" => Type::Any,
        n if FILTERS.contains(&n) => Type::String,
        _ => {
            let _ = input;
            Type::Any
        }
    }
}

/// An expression or template that failed to compile or evaluate.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{message} in `{source_text}`")]
pub struct ExprError {
    /// The expression or template text as written.
    pub source_text: String,
    /// What went wrong.
    pub message: String,
}

impl ExprError {
    fn new(source_text: &str, err: &minijinja::Error) -> Self {
        if err.kind() == minijinja::ErrorKind::OutOfFuel {
            return ExprError {
                source_text: source_text.chars().take(200).collect(),
                message: format!(
                    "the expression does too much work or builds too much data (its budget is {} fuel, set by SLUICE_EXPR_FUEL)",
                    expression_fuel()
                ),
            };
        }
        let mut message = err.kind().to_string();
        if let Some(detail) = err.detail() {
            message = format!("{message}: {detail}");
        }
        ExprError {
            source_text: source_text.to_string(),
            message,
        }
    }
}

/// A JSON value whose strings may hold `${{ }}` expressions, compiled.
#[derive(Debug)]
pub enum Template {
    /// No expressions anywhere: returned as is.
    Literal(Value),
    /// A whole-string expression: yields a typed value.
    Expr {
        /// The expression text without delimiters.
        source: String,
        /// The compiled expression.
        expr: Expression<'static, 'static>,
        /// The paths it reads, checked before it runs (empty: lenient).
        reads: Vec<strict::ReadPath>,
    },
    /// Text with embedded expressions: yields a string.
    Text {
        /// The template text.
        source: String,
        /// The paths its expressions read (empty: lenient).
        reads: Vec<strict::ReadPath>,
    },
    /// An array with templates inside.
    Array(Vec<Template>),
    /// An object with templates inside.
    Object(Vec<(String, Template)>),
}

/// Whether a JSON value contains any `${{`.
fn has_expr(v: &Value) -> bool {
    match v {
        Value::String(s) => s.contains(OPEN),
        Value::Array(a) => a.iter().any(has_expr),
        Value::Object(o) => o.values().any(has_expr),
        _ => false,
    }
}

/// If `s` is exactly one `${{ ... }}`, its inner expression.
fn whole_expression(s: &str) -> Option<&str> {
    let t = s.trim();
    let inner = t.strip_prefix(OPEN)?.strip_suffix(CLOSE)?;
    if inner.contains(OPEN) || inner.contains(CLOSE) {
        return None;
    }
    Some(inner.trim())
}

/// The `${{ }}` expressions inside a text: `(byte offset of the inner
/// text, inner text)` for each.
pub fn embedded_expressions(s: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(start) = s[from..].find(OPEN).map(|p| p + from) {
        let inner_start = start + OPEN.len();
        let Some(end) = s[inner_start..].find(CLOSE).map(|p| p + inner_start) else {
            break;
        };
        out.push((inner_start, &s[inner_start..end]));
        from = end + CLOSE.len();
    }
    out
}

impl Template {
    /// Compiles a JSON value. Reads are lenient (a missing key is `null`);
    /// flows use [`Template::compile_strict`].
    pub fn compile(v: &Value) -> Result<Template, ExprError> {
        Self::compile_with(v, false)
    }

    /// Compiles a JSON value whose reads are strict: a missing key, attribute
    /// or index is an error at run time.
    pub fn compile_strict(v: &Value) -> Result<Template, ExprError> {
        Self::compile_with(v, true)
    }

    fn compile_with(v: &Value, strict: bool) -> Result<Template, ExprError> {
        if !has_expr(v) {
            return Ok(Template::Literal(v.clone()));
        }
        match v {
            Value::String(s) => Self::compile_str_with(s, strict),
            Value::Array(items) => Ok(Template::Array(
                items
                    .iter()
                    .map(|i| Template::compile_with(i, strict))
                    .collect::<Result<_, _>>()?,
            )),
            Value::Object(map) => Ok(Template::Object(
                map.iter()
                    .map(|(k, v)| Ok((k.clone(), Template::compile_with(v, strict)?)))
                    .collect::<Result<_, ExprError>>()?,
            )),
            other => Ok(Template::Literal(other.clone())),
        }
    }

    /// Compiles a string (lenient reads).
    pub fn compile_str(s: &str) -> Result<Template, ExprError> {
        Self::compile_str_with(s, false)
    }

    fn compile_str_with(s: &str, strict: bool) -> Result<Template, ExprError> {
        if let Some(inner) = whole_expression(s) {
            return Self::expression(s, inner, strict);
        }
        if s.contains(OPEN) {
            ENV.template_from_str(s)
                .map_err(|e| ExprError::new(s, &e))?;
            let reads = if strict {
                embedded_expressions(s)
                    .into_iter()
                    .flat_map(|(_, inner)| strict::read_paths(inner))
                    .collect()
            } else {
                Vec::new()
            };
            return Ok(Template::Text {
                source: s.to_string(),
                reads,
            });
        }
        Ok(Template::Literal(Value::String(s.to_string())))
    }

    fn expression(whole: &str, inner: &str, strict: bool) -> Result<Template, ExprError> {
        let expr = ENV
            .compile_expression_owned(inner.to_string())
            .map_err(|e| ExprError::new(whole, &e))?;
        Ok(Template::Expr {
            source: inner.to_string(),
            expr,
            reads: if strict {
                strict::read_paths(inner)
            } else {
                Vec::new()
            },
        })
    }

    /// Compiles a string that must be one whole expression, or a bare
    /// expression without delimiters (as `if:` allows). Reads are strict.
    pub fn compile_condition(s: &str) -> Result<Template, ExprError> {
        let inner = whole_expression(s).unwrap_or(s.trim());
        Self::expression(s, inner, true)
    }

    /// Evaluates into JSON.
    pub fn eval(&self, ctx: &MjValue) -> Result<Value, ExprError> {
        match self {
            Template::Literal(v) => Ok(v.clone()),
            Template::Expr {
                source,
                expr,
                reads,
            } => {
                strict::check(reads, ctx, source)?;
                let v = expr.eval(ctx).map_err(|e| ExprError::new(source, &e))?;
                if v.is_undefined() && !reads.is_empty() {
                    return Err(ExprError {
                        source_text: source.clone(),
                        message: "the expression gives an undefined value".into(),
                    });
                }
                to_json(&v).map_err(|message| ExprError {
                    source_text: source.clone(),
                    message,
                })
            }
            Template::Text { source: src, reads } => {
                strict::check(reads, ctx, src)?;
                let tmpl = ENV
                    .template_from_str(src)
                    .map_err(|e| ExprError::new(src, &e))?;
                tmpl.render(ctx)
                    .map(Value::String)
                    .map_err(|e| ExprError::new(src, &e))
            }
            Template::Array(items) => items
                .iter()
                .map(|t| t.eval(ctx))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array),
            Template::Object(entries) => {
                let mut map = serde_json::Map::with_capacity(entries.len());
                for (k, t) in entries {
                    map.insert(k.clone(), t.eval(ctx)?);
                }
                Ok(Value::Object(map))
            }
        }
    }

    /// Evaluates as a condition (minijinja truthiness).
    pub fn eval_truthy(&self, ctx: &MjValue) -> Result<bool, ExprError> {
        match self {
            Template::Expr {
                source,
                expr,
                reads,
            } => {
                strict::check(reads, ctx, source)?;
                expr.eval(ctx)
                    .map(|v| v.is_true())
                    .map_err(|e| ExprError::new(source, &e))
            }
            other => other.eval(ctx).map(|v| truthy(&v)),
        }
    }

    /// Dotted variable paths this template reads, e.g. `steps.approved.output`.
    pub fn references(&self) -> Vec<String> {
        let mut out = Vec::new();
        self.collect_references(&mut out);
        out.sort();
        out.dedup();
        out
    }

    fn collect_references(&self, out: &mut Vec<String>) {
        match self {
            Template::Literal(_) => {}
            Template::Expr { expr, .. } => out.extend(expr.undeclared_variables(true)),
            Template::Text { source: src, .. } => {
                if let Ok(t) = ENV.template_from_str(src) {
                    out.extend(t.undeclared_variables(true));
                }
            }
            Template::Array(items) => items.iter().for_each(|t| t.collect_references(out)),
            Template::Object(entries) => {
                entries.iter().for_each(|(_, t)| t.collect_references(out))
            }
        }
    }

    /// Whether evaluating this template can only return a constant.
    pub fn is_literal(&self) -> bool {
        matches!(self, Template::Literal(_))
    }
}

fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

/// Converts a minijinja value to JSON (undefined becomes `null`).
pub fn to_json(v: &MjValue) -> Result<Value, String> {
    if v.is_undefined() {
        return Ok(Value::Null);
    }
    serde_json::to_value(v).map_err(|e| e.to_string())
}

/// Converts JSON to a minijinja value.
pub fn from_json(v: &Value) -> MjValue {
    MjValue::from(minijinja::value::Serde(v))
}

/// Everything an expression can see.
#[derive(Debug, Clone, Default)]
pub struct Scope {
    /// `inputs`
    pub inputs: MjValue,
    /// `trigger`
    pub trigger: MjValue,
    /// `steps.<id>` → `{output, status, error}`
    pub steps: BTreeMap<String, MjValue>,
    /// `secrets.<NAME>`
    pub secrets: MjValue,
    /// What `now()` returns: the run's start time (RFC 3339), fixed for the
    /// whole run; `None` reads the clock.
    pub now: Option<String>,
}

impl Scope {
    /// The context for an expression, with `item` and `index` inside `for_each`.
    pub fn context(&self, item: Option<(&MjValue, usize)>) -> MjValue {
        let mut map: BTreeMap<&str, MjValue> = BTreeMap::new();
        map.insert("inputs", self.inputs.clone());
        map.insert("trigger", self.trigger.clone());
        map.insert("steps", MjValue::from(self.steps.clone()));
        map.insert("secrets", self.secrets.clone());
        if let Some(now) = &self.now {
            map.insert(functions::NOW_VAR, MjValue::from(now.as_str()));
        }
        if let Some((item, index)) = item {
            map.insert("item", item.clone());
            map.insert("index", MjValue::from(index));
        }
        MjValue::from(map)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx() -> MjValue {
        from_json(
            &json!({"inputs": {"threshold": 10000, "name": "ACME"}, "steps": {"a": {"output": [1, 2, 3]}}}),
        )
    }

    #[test]
    fn whole_expression_yields_typed_value() {
        let t = Template::compile(&json!("${{ inputs.threshold * 2 }}")).unwrap();
        assert_eq!(t.eval(&ctx()).unwrap(), json!(20000));
        let t = Template::compile(&json!("${{ steps.a.output }}")).unwrap();
        assert_eq!(t.eval(&ctx()).unwrap(), json!([1, 2, 3]));
    }

    #[test]
    fn embedded_expression_interpolates_text() {
        let t = Template::compile(&json!(
            "Vendor ${{ inputs.name }} over ${{ inputs.threshold }}"
        ))
        .unwrap();
        assert_eq!(t.eval(&ctx()).unwrap(), json!("Vendor ACME over 10000"));
    }

    #[test]
    fn nested_values_are_rendered_and_literals_kept() {
        let t = Template::compile(&json!({"n": "${{ inputs.threshold }}", "fixed": [true, 1.5]}))
            .unwrap();
        assert_eq!(
            t.eval(&ctx()).unwrap(),
            json!({"n": 10000, "fixed": [true, 1.5]})
        );
    }

    #[test]
    fn undefined_variable_is_an_error_naming_the_expression() {
        let t = Template::compile(&json!("${{ inputs.nope + 1 }}")).unwrap();
        let e = t.eval(&ctx()).unwrap_err();
        assert_eq!(e.source_text, "inputs.nope + 1");
        assert!(e.message.contains("undefined"), "{}", e.message);
    }

    #[test]
    fn a_runaway_expression_runs_out_of_fuel_instead_of_memory() {
        let t = std::time::Instant::now();
        let e = Template::compile(&json!("${{ range(10000) | join('x' * 100000) }}"))
            .unwrap()
            .eval(&ctx())
            .unwrap_err();
        assert!(e.message.contains("does too much work"), "{}", e.message);
        let e = Template::compile(&json!("${{ 'x' * 1000000000 }}"))
            .unwrap()
            .eval(&ctx())
            .unwrap_err();
        assert!(e.message.contains("SLUICE_EXPR_FUEL"), "{}", e.message);
        let e = Template::compile(&json!(
            "${% for i in range(10000) %}${{ 'x' * 10000 }}${% endfor %}"
        ))
        .unwrap()
        .eval(&ctx())
        .unwrap_err();
        assert!(e.message.contains("does too much work"), "{}", e.message);
        assert!(t.elapsed().as_secs() < 5);
        // Ordinary work is far below the budget.
        let big = Template::compile(&json!(
            "${{ range(5000) | map('string') | join(',') | length }}"
        ))
        .unwrap()
        .eval(&ctx())
        .unwrap();
        assert!(big.as_u64().unwrap() > 20000);
    }

    #[test]
    fn syntax_error_is_reported_at_compile_time() {
        let e = Template::compile(&json!("${{ inputs.threshold > }}")).unwrap_err();
        assert!(e.message.contains("syntax error"), "{}", e.message);
    }

    #[test]
    fn references_name_dotted_paths() {
        let t = Template::compile(
            &json!({"a": "${{ steps.a.output | length }}", "b": "x ${{ inputs.name }}"}),
        )
        .unwrap();
        assert_eq!(
            t.references(),
            vec!["inputs.name".to_string(), "steps.a.output".to_string()]
        );
    }
}
