//! Static types of expression values, and the checker that uses them.
//!
//! Validation knows the shape of everything an expression can read: declared
//! inputs, the trigger, each upstream step's output (from the unified model's
//! JSON Schemas), `item` inside `for_each`. [`check_expression`] walks an
//! expression's syntax tree (minijinja's parser) and infers the type of every
//! sub-expression, reporting what cannot work at the exact place inside the
//! expression: a field that a known shape does not have (with "did you
//! mean"), arithmetic or ordering between a string and a number, attributes
//! of a list, unknown filters, tests and functions.
//!
//! The rule is "no false positives": where nothing is known the type is
//! [`Type::Any`], and `Any` is never an error.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use minijinja::machinery::ast::{self, BinOpKind, CallArg, CompareOpKind, Expr};
use serde_json::Value;

use crate::yaml::diagnostic::did_you_mean;

/// The static type of a value.
#[derive(Debug, Clone, PartialEq)]
pub enum Type {
    /// Nothing is known.
    Any,
    /// `null` (or `none`).
    Null,
    /// `true` / `false`.
    Bool,
    /// A whole number.
    Integer,
    /// Any number.
    Number,
    /// A string (dates and times travel as ISO 8601 strings).
    String,
    /// A list whose elements have the given type.
    List(Box<Type>),
    /// An object.
    Object(Box<ObjectType>),
}

/// The fields of an object type.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ObjectType {
    /// What the shape is called in messages (`purchase_order`), if it has a name.
    pub name: Option<String>,
    /// Known fields.
    pub fields: BTreeMap<String, Type>,
    /// Whether keys beyond `fields` may exist (their type is then `Any`).
    pub open: bool,
    /// Keys a value must have (from a JSON Schema's `required`).
    pub required: Vec<String>,
}

impl Type {
    /// An object type with the given fields.
    pub fn object(fields: impl IntoIterator<Item = (String, Type)>, open: bool) -> Type {
        Type::Object(Box::new(ObjectType {
            name: None,
            fields: fields.into_iter().collect(),
            open,
            required: Vec::new(),
        }))
    }

    /// An open object of which nothing is known.
    pub fn any_object() -> Type {
        Type::object([], true)
    }

    /// A list of `t`.
    pub fn list(t: Type) -> Type {
        Type::List(Box::new(t))
    }

    /// This object type named `name` in messages.
    pub fn named(self, name: &str) -> Type {
        match self {
            Type::Object(mut o) => {
                o.name = Some(name.to_string());
                Type::Object(o)
            }
            other => other,
        }
    }

    /// The type's name with an article: "a string", "an integer".
    pub fn a(&self) -> String {
        let d = self.describe();
        let article = if d.starts_with(['a', 'e', 'i', 'o', 'u']) {
            "an"
        } else {
            "a"
        };
        format!("{article} {d}")
    }

    /// The type's name in messages.
    pub fn describe(&self) -> String {
        match self {
            Type::Any => "any value".into(),
            Type::Null => "null".into(),
            Type::Bool => "boolean".into(),
            Type::Integer => "integer".into(),
            Type::Number => "number".into(),
            Type::String => "string".into(),
            Type::List(t) => match **t {
                Type::Any => "list".into(),
                ref t => format!("list of {}", t.describe()),
            },
            Type::Object(o) => match &o.name {
                Some(n) => n.clone(),
                None => "object".into(),
            },
        }
    }

    fn is_numeric(&self) -> bool {
        matches!(self, Type::Integer | Type::Number)
    }

    /// The type of a JSON value.
    pub fn of_value(v: &Value) -> Type {
        match v {
            Value::Null => Type::Null,
            Value::Bool(_) => Type::Bool,
            Value::Number(n) if n.is_f64() => Type::Number,
            Value::Number(_) => Type::Integer,
            Value::String(_) => Type::String,
            Value::Array(items) => Type::list(join_all(items.iter().map(Type::of_value))),
            Value::Object(map) => Type::object(
                map.iter().map(|(k, v)| (k.clone(), Type::of_value(v))),
                false,
            ),
        }
    }

    /// The type a JSON Schema describes (`root` holds its `$defs`).
    pub fn from_schema(schema: &Value, root: &Value) -> Type {
        from_schema(schema, root, 0)
    }
}

/// Checks that a value has the type: the right kind of value everywhere
/// (`null` is accepted for any field), required keys present, and no keys a
/// closed object does not know. The error names the path (`what` is the
/// root's name) and what was expected.
pub fn conforms(value: &Value, ty: &Type, what: &str) -> Result<(), String> {
    let wrong = |expected: &str| {
        Err(format!(
            "`{what}` should be {expected}, but it is {}",
            Type::of_value(value).a()
        ))
    };
    match (ty, value) {
        (Type::Any, _) | (_, Value::Null) => Ok(()),
        (Type::Bool, Value::Bool(_)) | (Type::String, Value::String(_)) => Ok(()),
        (Type::Number, Value::Number(_)) => Ok(()),
        (Type::Integer, Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(()),
        (Type::List(elem), Value::Array(items)) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, v)| conforms(v, elem, &format!("{what}[{i}]"))),
        (Type::Object(o), Value::Object(map)) => {
            if let Some(missing) = o.required.iter().find(|k| !map.contains_key(*k)) {
                return Err(format!("`{what}` has no `{missing}`, which is required"));
            }
            for (k, v) in map {
                match o.fields.get(k) {
                    Some(t) => conforms(v, t, &format!("{what}.{k}"))?,
                    None if o.open => {}
                    None => {
                        let known: Vec<&str> = o.fields.keys().map(String::as_str).collect();
                        let guess = did_you_mean(k, known.iter().copied())
                            .map(|s| format!(" (did you mean `{s}`?)"))
                            .unwrap_or_default();
                        return Err(format!(
                            "`{what}` has a key `{k}` that is not declared{guess}; declared: {}",
                            known.join(", ")
                        ));
                    }
                }
            }
            Ok(())
        }
        (t, _) => wrong(&t.a()),
    }
}

/// The common type of two types (`Any` when they differ in kind).
pub fn join(a: Type, b: Type) -> Type {
    match (a, b) {
        (a, b) if a == b => a,
        (Type::Null, t) | (t, Type::Null) => t,
        (Type::Integer, Type::Number) | (Type::Number, Type::Integer) => Type::Number,
        (Type::List(a), Type::List(b)) => Type::list(join(*a, *b)),
        (Type::Object(a), Type::Object(b)) => {
            let mut fields = a.fields.clone();
            for (k, t) in &b.fields {
                let merged = match fields.remove(k) {
                    Some(old) => join(old, t.clone()),
                    None => t.clone(),
                };
                fields.insert(k.clone(), merged);
            }
            Type::object(fields, a.open || b.open)
        }
        _ => Type::Any,
    }
}

fn join_all(types: impl Iterator<Item = Type>) -> Type {
    types.reduce(join).unwrap_or(Type::Any)
}

fn from_schema(schema: &Value, root: &Value, depth: usize) -> Type {
    if depth > 32 {
        return Type::Any;
    }
    let Some(obj) = schema.as_object() else {
        return Type::Any;
    };
    if let Some(r) = obj.get("$ref").and_then(Value::as_str) {
        let target = r
            .strip_prefix("#/$defs/")
            .and_then(|n| root.get("$defs").and_then(|d| d.get(n)));
        return match target {
            Some(t) => from_schema(t, root, depth + 1),
            None => Type::Any,
        };
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(Value::Array(branches)) = obj.get(key) {
            return join_all(branches.iter().map(|b| from_schema(b, root, depth + 1)));
        }
    }
    if obj.contains_key("enum") || obj.contains_key("const") {
        let values: Vec<&Value> = match (obj.get("enum"), obj.get("const")) {
            (Some(Value::Array(e)), _) => e.iter().collect(),
            (_, Some(c)) => vec![c],
            _ => vec![],
        };
        return join_all(values.into_iter().map(Type::of_value));
    }
    let types: Vec<&str> = match obj.get("type") {
        Some(Value::String(s)) => vec![s.as_str()],
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).collect(),
        _ => return Type::Any,
    };
    let non_null: Vec<&str> = types.into_iter().filter(|t| *t != "null").collect();
    if non_null.len() != 1 {
        return if non_null.is_empty() {
            Type::Null
        } else {
            Type::Any
        };
    }
    match non_null[0] {
        "boolean" => Type::Bool,
        "integer" => Type::Integer,
        "number" => Type::Number,
        "string" => Type::String,
        "array" => Type::list(
            obj.get("items")
                .map(|i| from_schema(i, root, depth + 1))
                .unwrap_or(Type::Any),
        ),
        "object" => {
            let fields = obj
                .get("properties")
                .and_then(Value::as_object)
                .map(|p| {
                    p.iter()
                        .map(|(k, v)| (k.clone(), from_schema(v, root, depth + 1)))
                        .collect::<BTreeMap<_, _>>()
                })
                .unwrap_or_default();
            let open = !matches!(obj.get("additionalProperties"), Some(Value::Bool(false)));
            let required = obj
                .get("required")
                .and_then(Value::as_array)
                .map(|r| {
                    r.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            Type::Object(Box::new(ObjectType {
                name: None,
                fields,
                open,
                required,
            }))
        }
        _ => Type::Any,
    }
}

/// A problem found in an expression, at a byte range of its text.
#[derive(Debug, Clone, PartialEq)]
pub struct TypeIssue {
    /// Byte offset in the expression text.
    pub offset: usize,
    /// Length in bytes of the offending part.
    pub len: usize,
    /// Diagnostic code, e.g. `unknown-field`.
    pub code: &'static str,
    /// What is wrong.
    pub message: String,
    /// How to fix it.
    pub hint: Option<String>,
}

/// Whether a filter of this name exists (builtin or Sluice's own).
pub fn filter_exists(name: &str) -> bool {
    probe("filter", name)
}

/// Whether a test of this name exists.
pub fn test_exists(name: &str) -> bool {
    probe("test", name)
}

fn probe(kind: &str, name: &str) -> bool {
    static CACHE: LazyLock<std::sync::Mutex<BTreeMap<(String, String), bool>>> =
        LazyLock::new(Default::default);
    let key = (kind.to_string(), name.to_string());
    if let Some(v) = CACHE.lock().expect("probe cache").get(&key) {
        return *v;
    }
    let found = super::env()
        .compile_expression(&format!("name is {kind}"))
        .ok()
        .and_then(|e| e.eval(minijinja::context! { name }).ok())
        .is_some_and(|v| v.is_true());
    CACHE.lock().expect("probe cache").insert(key, found);
    found
}

/// Names of every filter, for "did you mean" hints.
const FILTER_NAMES: &[&str] = &[
    "abs",
    "attr",
    "batch",
    "bool",
    "capitalize",
    "chain",
    "count",
    "d",
    "default",
    "dictsort",
    "escape",
    "first",
    "float",
    "format",
    "groupby",
    "indent",
    "int",
    "items",
    "join",
    "last",
    "length",
    "lines",
    "list",
    "lower",
    "map",
    "max",
    "min",
    "pprint",
    "reject",
    "rejectattr",
    "replace",
    "reverse",
    "round",
    "safe",
    "select",
    "selectattr",
    "slice",
    "sort",
    "split",
    "string",
    "sum",
    "title",
    "tojson",
    "trim",
    "unique",
    "upper",
    "urlencode",
    "zip",
];

const TEST_NAMES: &[&str] = &[
    "defined",
    "undefined",
    "none",
    "boolean",
    "odd",
    "even",
    "divisibleby",
    "number",
    "integer",
    "float",
    "string",
    "sequence",
    "iterable",
    "mapping",
    "startingwith",
    "endingwith",
    "lower",
    "upper",
    "true",
    "false",
    "in",
    "eq",
    "ne",
    "lt",
    "le",
    "gt",
    "ge",
];

/// Checks one expression (the text between `${{` and `}}`) against the types
/// of the variables it may read. Returns the expression's type and every
/// problem found. A syntax error is returned as `Err` with its message.
pub fn check_expression(
    text: &str,
    roots: &BTreeMap<String, Type>,
) -> Result<(Type, Vec<TypeIssue>), String> {
    check_expression_with_steps(text, roots, None)
}

/// Like [`check_expression`], with `steps.<id>.output` typed from
/// `steps` (output types by step id) without building the `steps` object.
pub fn check_expression_with_steps(
    text: &str,
    roots: &BTreeMap<String, Type>,
    steps: Option<&BTreeMap<String, Type>>,
) -> Result<(Type, Vec<TypeIssue>), String> {
    let expr = minijinja::machinery::parse_expr(text).map_err(|e| {
        let mut m = e.kind().to_string();
        if let Some(d) = e.detail() {
            m = format!("{m}: {d}");
        }
        m
    })?;
    let mut cx = Cx {
        roots,
        steps,
        issues: Vec::new(),
        text,
        optional: super::strict::optional_paths(&expr),
    };
    let t = cx.infer(&expr, false);
    Ok((t, cx.issues))
}

struct Cx<'a> {
    roots: &'a BTreeMap<String, Type>,
    /// Output types of steps by id, when known.
    steps: Option<&'a BTreeMap<String, Type>>,
    issues: Vec<TypeIssue>,
    text: &'a str,
    /// Paths read as optional somewhere in the expression.
    optional: Vec<(String, Vec<super::strict::Seg>)>,
}

/// Where `e`'s text starts: a chain's span starts at its last `.`, so this
/// follows the leftmost operand down.
fn leftmost_start(e: &Expr<'_>) -> usize {
    match e {
        Expr::GetAttr(g) => leftmost_start(&g.expr),
        Expr::GetItem(g) => leftmost_start(&g.expr),
        Expr::Slice(s) => leftmost_start(&s.expr),
        Expr::Filter(f) => match &f.expr {
            Some(x) => leftmost_start(x),
            None => e.span().start_offset as usize,
        },
        Expr::Test(t) => leftmost_start(&t.expr),
        Expr::BinOp(b) => leftmost_start(&b.left),
        Expr::Compare(c) => leftmost_start(&c.expr),
        Expr::Call(c) => leftmost_start(&c.expr),
        _ => e.span().start_offset as usize,
    }
    .min(e.span().start_offset as usize)
}

fn span_of(e: &Expr<'_>) -> (usize, usize) {
    let s = e.span();
    (
        s.start_offset as usize,
        (s.end_offset.saturating_sub(s.start_offset)) as usize,
    )
}

impl Cx<'_> {
    fn issue(
        &mut self,
        at: (usize, usize),
        code: &'static str,
        message: String,
        hint: Option<String>,
    ) {
        self.issues.push(TypeIssue {
            offset: at.0,
            len: at.1.max(1),
            code,
            message,
            hint,
        });
    }

    /// The source text of a sub-expression.
    fn src(&self, e: &Expr<'_>) -> String {
        let (o, l) = span_of(e);
        let start = leftmost_start(e).min(o);
        self.text.get(start..o + l).unwrap_or("").trim().to_string()
    }

    /// Infers the type of `e`. `guarded`: the value may be missing on
    /// purpose (under `default` or `is defined`), so unknown fields are fine.
    fn infer(&mut self, e: &Expr<'_>, guarded: bool) -> Type {
        match e {
            Expr::Var(v) => self.roots.get(v.id).cloned().unwrap_or(Type::Any),
            Expr::Const(c) => {
                let json = serde_json::to_value(&c.value).unwrap_or(Value::Null);
                Type::of_value(&json)
            }
            Expr::GetAttr(g) => {
                if let (Expr::Var(v), Some(steps)) = (&g.expr, self.steps)
                    && v.id == "steps"
                {
                    // Unknown step ids are the flow's reference check's.
                    return Type::object(
                        [
                            (
                                "output".to_string(),
                                steps.get(g.name).cloned().unwrap_or(Type::Any),
                            ),
                            ("status".to_string(), Type::String),
                            ("error".to_string(), Type::Any),
                        ],
                        false,
                    )
                    .named(&format!("steps.{}", g.name));
                }
                let base = self.infer(&g.expr, guarded);
                self.field(e, &g.expr, base, g.name, guarded)
            }
            Expr::GetItem(g) => {
                let base = self.infer(&g.expr, guarded);
                let sub = self.infer(&g.subscript_expr, false);
                match (&base, &g.subscript_expr) {
                    (Type::List(t), _) => (**t).clone(),
                    (Type::Object(_), Expr::Const(c)) if c.value.as_str().is_some() => {
                        let name = c.value.as_str().unwrap_or_default().to_string();
                        self.field(e, &g.expr, base.clone(), &name, guarded)
                    }
                    (Type::String, _) => Type::String,
                    (Type::Integer | Type::Number | Type::Bool, _) => {
                        self.issue(
                            span_of(e),
                            "wrong-type",
                            format!(
                                "`{}` is {}; it cannot be indexed",
                                self.src(&g.expr),
                                base.a()
                            ),
                            None,
                        );
                        Type::Any
                    }
                    _ => {
                        let _ = sub;
                        Type::Any
                    }
                }
            }
            Expr::Slice(s) => {
                let base = self.infer(&s.expr, guarded);
                for part in [&s.start, &s.stop, &s.step].into_iter().flatten() {
                    self.infer(part, false);
                }
                match base {
                    Type::List(_) | Type::String => base,
                    _ => Type::Any,
                }
            }
            Expr::UnaryOp(u) => {
                let t = self.infer(&u.expr, false);
                match u.op {
                    ast::UnaryOpKind::Not => Type::Bool,
                    ast::UnaryOpKind::Neg => {
                        if matches!(t, Type::String | Type::List(_) | Type::Object(_)) {
                            self.issue(
                                span_of(e),
                                "wrong-type",
                                format!("cannot negate `{}`, {}", self.src(&u.expr), t.a()),
                                None,
                            );
                        }
                        if t.is_numeric() { t } else { Type::Any }
                    }
                }
            }
            Expr::BinOp(b) => {
                if matches!(b.op, BinOpKind::ScAnd | BinOpKind::ScOr) {
                    let l = self.infer(&b.left, guarded);
                    let r = self.infer(&b.right, guarded);
                    return join(l, r);
                }
                let l = self.infer(&b.left, false);
                let r = self.infer(&b.right, false);
                self.binop(e, b.op, (&b.left, l), (&b.right, r))
            }
            Expr::Compare(c) => {
                let mut left_expr = &c.expr;
                let mut left = self.infer(&c.expr, false);
                for op in &c.ops {
                    let right = self.infer(&op.expr, false);
                    let kind = match op.op {
                        CompareOpKind::Lt => Some(BinOpKind::Lt),
                        CompareOpKind::Lte => Some(BinOpKind::Lte),
                        CompareOpKind::Gt => Some(BinOpKind::Gt),
                        CompareOpKind::Gte => Some(BinOpKind::Gte),
                        _ => None,
                    };
                    if let Some(k) = kind {
                        self.binop(e, k, (left_expr, left.clone()), (&op.expr, right.clone()));
                    }
                    left_expr = &op.expr;
                    left = right;
                }
                Type::Bool
            }
            Expr::IfExpr(i) => {
                self.infer(&i.test_expr, false);
                let t = self.infer(&i.true_expr, guarded);
                match &i.false_expr {
                    Some(f) => {
                        let f = self.infer(f, guarded);
                        join(t, f)
                    }
                    None => t,
                }
            }
            Expr::Filter(f) => self.filter(e, f, guarded),
            Expr::Test(t) => {
                let subject_guarded = matches!(t.name, "defined" | "undefined");
                self.infer(&t.expr, subject_guarded || guarded);
                self.args(&t.args);
                if !test_exists(t.name) {
                    let hint = match did_you_mean(t.name, TEST_NAMES.iter().copied()) {
                        Some(s) => format!("did you mean `is {s}`?"),
                        None => format!("tests: {}", TEST_NAMES.join(", ")),
                    };
                    let at = self.find_name(e, t.name);
                    self.issue(
                        at,
                        "unknown-test",
                        format!("unknown test `{}`", t.name),
                        Some(hint),
                    );
                }
                Type::Bool
            }
            Expr::Call(c) => self.call(e, c),
            Expr::List(l) => {
                let items: Vec<Type> = l.items.iter().map(|i| self.infer(i, guarded)).collect();
                Type::list(join_all(items.into_iter()))
            }
            Expr::Tuple(l) => {
                for i in &l.items {
                    self.infer(i, guarded);
                }
                Type::list(Type::Any)
            }
            Expr::Map(m) => {
                let mut fields = BTreeMap::new();
                let mut open = false;
                for (k, v) in m.keys.iter().zip(&m.values) {
                    let vt = self.infer(v, guarded);
                    match k {
                        Expr::Const(c) if c.value.as_str().is_some() => {
                            fields.insert(c.value.as_str().unwrap_or_default().to_string(), vt);
                        }
                        other => {
                            self.infer(other, false);
                            open = true;
                        }
                    }
                }
                Type::object(fields, open)
            }
        }
    }

    /// The byte range of `name` inside `e` (for filters and tests).
    fn find_name(&self, e: &Expr<'_>, name: &str) -> (usize, usize) {
        let (o, l) = span_of(e);
        let text = self.text.get(o..o + l).unwrap_or("");
        match text.rfind(name) {
            Some(p) => (o + p, name.len()),
            None => (o, l),
        }
    }

    fn field(
        &mut self,
        e: &Expr<'_>,
        base_expr: &Expr<'_>,
        base: Type,
        name: &str,
        guarded: bool,
    ) -> Type {
        let guarded = guarded
            || super::strict::chain(e).is_some_and(|(root, segs)| {
                self.optional
                    .iter()
                    .any(|(r, s)| *r == root && segs.starts_with(s))
            });
        let (o, l) = span_of(e);
        let at = (o + l)
            .checked_sub(name.len())
            .map_or((o, l), |p| (p, name.len()));
        match base {
            Type::Object(obj) => match obj.fields.get(name) {
                Some(t) => t.clone(),
                None if obj.open || guarded => Type::Any,
                None => {
                    let what = self.src(base_expr);
                    let shape = obj
                        .name
                        .clone()
                        .map(|n| format!(" ({n})"))
                        .unwrap_or_default();
                    let known: Vec<&str> = obj.fields.keys().map(String::as_str).collect();
                    let hint = match did_you_mean(name, known.iter().copied()) {
                        Some(s) => format!("did you mean `{s}`? fields: {}", known.join(", ")),
                        None => format!("fields: {}", known.join(", ")),
                    };
                    self.issue(
                        at,
                        "unknown-field",
                        format!("`{what}`{shape} has no field `{name}`"),
                        Some(hint),
                    );
                    Type::Any
                }
            },
            Type::List(elem) => {
                let what = self.src(base_expr);
                let hint = match *elem {
                    Type::Object(ref o) if o.fields.contains_key(name) => format!(
                        "`{what}` is a list: take one element (`{what}[0].{name}`), map it (`{what} | map(attribute='{name}')`), or loop with `for_each`"
                    ),
                    _ => format!("`{what}` is {}", Type::List(elem.clone()).a()),
                };
                self.issue(
                    at,
                    "wrong-type",
                    format!("`{what}` is a list; a list has no field `{name}`"),
                    Some(hint),
                );
                Type::Any
            }
            Type::String | Type::Integer | Type::Number | Type::Bool | Type::Null => {
                if guarded {
                    return Type::Any;
                }
                let what = self.src(base_expr);
                self.issue(
                    at,
                    "wrong-type",
                    format!("`{what}` is {}; it has no field `{name}`", base.a()),
                    None,
                );
                Type::Any
            }
            Type::Any => Type::Any,
        }
    }

    fn binop(
        &mut self,
        e: &Expr<'_>,
        op: BinOpKind,
        left: (&Expr<'_>, Type),
        right: (&Expr<'_>, Type),
    ) -> Type {
        let (le, l) = left;
        let (re, r) = right;
        let sym = match op {
            BinOpKind::Add => "+",
            BinOpKind::Sub => "-",
            BinOpKind::Mul => "*",
            BinOpKind::Div => "/",
            BinOpKind::FloorDiv => "//",
            BinOpKind::Rem => "%",
            BinOpKind::Pow => "**",
            BinOpKind::Lt => "<",
            BinOpKind::Lte => "<=",
            BinOpKind::Gt => ">",
            BinOpKind::Gte => ">=",
            _ => "",
        };
        match op {
            BinOpKind::Concat => Type::String,
            BinOpKind::Eq | BinOpKind::Ne | BinOpKind::In => Type::Bool,
            BinOpKind::Lt | BinOpKind::Lte | BinOpKind::Gt | BinOpKind::Gte => {
                let mixed =
                    (l == Type::String && r.is_numeric()) || (r == Type::String && l.is_numeric());
                if mixed {
                    let (se, ne) = if l == Type::String {
                        (le, re)
                    } else {
                        (re, le)
                    };
                    self.issue(
                        span_of(e),
                        "wrong-type",
                        format!(
                            "`{}` compares a string with a number (`{}` is a string, `{}` a number)",
                            self.src(e),
                            self.src(se),
                            self.src(ne)
                        ),
                        Some(format!("convert explicitly, e.g. `{} | float`", self.src(se))),
                    );
                }
                Type::Bool
            }
            BinOpKind::Add if l == Type::String && r == Type::String => Type::String,
            BinOpKind::Add if matches!((&l, &r), (Type::List(_), Type::List(_))) => join(l, r),
            // `'-' * 20` repeats a literal; a string field times a number is a mistake.
            BinOpKind::Mul
                if l == Type::String && r == Type::Integer && matches!(le, Expr::Const(_)) =>
            {
                Type::String
            }
            BinOpKind::Add
            | BinOpKind::Sub
            | BinOpKind::Mul
            | BinOpKind::Div
            | BinOpKind::FloorDiv
            | BinOpKind::Rem
            | BinOpKind::Pow => {
                for (side, t) in [(le, &l), (re, &r)] {
                    if matches!(
                        t,
                        Type::String | Type::Bool | Type::Null | Type::List(_) | Type::Object(_)
                    ) {
                        let hint = if *t == Type::String {
                            Some(format!(
                                "convert explicitly (`{} | float`), or join text with `~`",
                                self.src(side)
                            ))
                        } else {
                            None
                        };
                        self.issue(
                            span_of(e),
                            "wrong-type",
                            format!(
                                "`{sym}` needs numbers, but `{}` is {}",
                                self.src(side),
                                t.a()
                            ),
                            hint,
                        );
                        return Type::Any;
                    }
                }
                match (op, &l, &r) {
                    (BinOpKind::Div, _, _) => Type::Number,
                    (_, Type::Integer, Type::Integer) => Type::Integer,
                    (_, a, b) if a.is_numeric() && b.is_numeric() => Type::Number,
                    _ => Type::Any,
                }
            }
            _ => Type::Any,
        }
    }

    fn args(&mut self, args: &[CallArg<'_>]) {
        for a in args {
            match a {
                CallArg::Pos(x)
                | CallArg::Kwarg(_, x)
                | CallArg::PosSplat(x)
                | CallArg::KwargSplat(x) => {
                    self.infer(x, false);
                }
            }
        }
    }

    fn filter(&mut self, e: &Expr<'_>, f: &ast::Filter<'_>, guarded: bool) -> Type {
        let is_default = matches!(f.name, "default" | "d");
        let base = match &f.expr {
            Some(x) => self.infer(x, guarded || is_default),
            None => Type::Any,
        };
        self.args(&f.args);
        if !filter_exists(f.name) {
            let hint = match did_you_mean(
                f.name,
                FILTER_NAMES
                    .iter()
                    .copied()
                    .chain(super::FILTERS.iter().copied()),
            ) {
                Some(s) => format!("did you mean `{s}`?"),
                None => "see the README's list of filters".to_string(),
            };
            let at = self.find_name(e, f.name);
            self.issue(
                at,
                "unknown-filter",
                format!("unknown filter `{}`", f.name),
                Some(hint),
            );
            return Type::Any;
        }
        let elem = match &base {
            Type::List(t) => (**t).clone(),
            _ => Type::Any,
        };
        match f.name {
            "default" | "d" => base,
            "length" | "count" | "int" => Type::Integer,
            "float" | "abs" | "round" | "sum" => Type::Number,
            "bool" => Type::Bool,
            "upper" | "lower" | "title" | "capitalize" | "trim" | "replace" | "join" | "string"
            | "tojson" | "urlencode" | "format" | "indent" | "escape" | "e" | "safe" | "pprint" => {
                Type::String
            }
            "first" | "last" | "min" | "max" => elem,
            "sort" | "unique" | "select" | "reject" | "selectattr" | "rejectattr" | "list" => {
                match base {
                    Type::List(_) => base,
                    _ => Type::list(Type::Any),
                }
            }
            "reverse" => base,
            "split" | "lines" => Type::list(Type::String),
            "map" => {
                // `map(attribute='x')` on a list of known objects.
                let attribute = f.args.iter().find_map(|a| match a {
                    CallArg::Kwarg("attribute", Expr::Const(c)) => {
                        c.value.as_str().map(str::to_string)
                    }
                    _ => None,
                });
                match (attribute, &elem) {
                    (Some(name), Type::Object(o)) if !name.contains('.') => {
                        match o.fields.get(&name) {
                            Some(t) => Type::list(t.clone()),
                            None if o.open => Type::list(Type::Any),
                            None => {
                                let known: Vec<&str> =
                                    o.fields.keys().map(String::as_str).collect();
                                let hint = match did_you_mean(&name, known.iter().copied()) {
                                    Some(s) => {
                                        format!("did you mean `{s}`? fields: {}", known.join(", "))
                                    }
                                    None => format!("fields: {}", known.join(", ")),
                                };
                                let at = self.find_name(e, &name);
                                self.issue(
                                    at,
                                    "unknown-field",
                                    format!(
                                        "elements of `{}` have no field `{name}`",
                                        f.expr.as_ref().map(|x| self.src(x)).unwrap_or_default()
                                    ),
                                    Some(hint),
                                );
                                Type::list(Type::Any)
                            }
                        }
                    }
                    _ => Type::list(Type::Any),
                }
            }
            _ => super::filter_type(f.name, &base),
        }
    }

    fn call(&mut self, e: &Expr<'_>, c: &ast::Call<'_>) -> Type {
        self.args(&c.args);
        match &c.expr {
            Expr::Var(v) => {
                if self.roots.contains_key(v.id) {
                    return Type::Any;
                }
                if !super::function_exists(v.id) {
                    // Reported by the flow's reference check, which sees
                    // every unknown name.
                    return Type::Any;
                }
                let _ = e;
                super::function_type(v.id)
            }
            other => {
                // A method call such as `x.items()`.
                self.infer(other, false);
                Type::Any
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn roots() -> BTreeMap<String, Type> {
        let po = Type::object(
            [
                ("number".to_string(), Type::String),
                ("total".to_string(), Type::Number),
                (
                    "lines".to_string(),
                    Type::list(Type::object([("amount".to_string(), Type::Number)], false)),
                ),
            ],
            false,
        )
        .named("purchase_order");
        BTreeMap::from([("item".to_string(), po)])
    }

    fn issues(text: &str) -> Vec<TypeIssue> {
        check_expression(text, &roots()).unwrap().1
    }

    #[test]
    fn unknown_field_on_known_shape_is_reported_at_the_field() {
        let i = issues("item.totl > 10");
        assert_eq!(i.len(), 1, "{i:?}");
        assert_eq!(i[0].code, "unknown-field");
        assert_eq!(
            &"item.totl > 10"[i[0].offset..i[0].offset + i[0].len],
            "totl"
        );
        assert!(
            i[0].hint
                .as_deref()
                .unwrap()
                .contains("did you mean `total`?")
        );
    }

    #[test]
    fn guarded_reads_are_not_errors() {
        assert!(issues("item.discount | default(0)").is_empty());
        assert!(issues("item.discount is defined").is_empty());
        assert!(issues("item.discount.rate if item.discount is defined else 0").is_empty());
        assert_eq!(
            issues("item.discout if item.discount is defined else 0").len(),
            1
        );
    }

    #[test]
    fn arithmetic_on_a_string_field_is_an_error() {
        let i = issues("item.number * 2");
        assert_eq!(i[0].code, "wrong-type", "{i:?}");
        assert!(i[0].message.contains("`item.number` is a string"));
    }

    #[test]
    fn unknown_filter_test_and_function_are_errors() {
        let i = issues("item.lines | lenght");
        assert_eq!(i[0].code, "unknown-filter");
        assert_eq!(i[0].hint.as_deref(), Some("did you mean `length`?"));
        assert_eq!(issues("item is defnied")[0].code, "unknown-test");
    }

    #[test]
    fn attribute_of_a_list_says_how_to_reach_its_elements() {
        let i = issues("item.lines.amount");
        assert_eq!(i[0].code, "wrong-type");
        assert!(
            i[0].hint
                .as_deref()
                .unwrap()
                .contains("map(attribute='amount')")
        );
    }

    #[test]
    fn types_flow_through_filters_and_subscripts() {
        let (t, i) = check_expression("item.lines[0].amount", &roots()).unwrap();
        assert!(i.is_empty());
        assert_eq!(t, Type::Number);
        let (t, _) = check_expression("item.lines | map(attribute='amount')", &roots()).unwrap();
        assert_eq!(t, Type::list(Type::Number));
        assert_eq!(
            issues("item.lines | map(attribute='amout')")[0].code,
            "unknown-field"
        );
    }

    #[test]
    fn schema_types_follow_refs_and_nullable_fields() {
        let schema = json!({
            "type": "object", "additionalProperties": false,
            "properties": {"a": {"type": ["string", "null"]}, "b": {"$ref": "#/$defs/B"}},
            "$defs": {"B": {"type": "array", "items": {"type": "integer"}}}
        });
        let t = Type::from_schema(&schema, &schema);
        let Type::Object(o) = t else { panic!() };
        assert_eq!(o.fields["a"], Type::String);
        assert_eq!(o.fields["b"], Type::list(Type::Integer));
        assert!(!o.open);
    }
}
