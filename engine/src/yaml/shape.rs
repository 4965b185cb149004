//! Shape checks: the YAML tree against the flow format's JSON Schema.
//!
//! The schema is the one `schemars` derives from the typed model, so unknown
//! keys, wrong types, missing keys and bad enum values are all reported at
//! once, each at its line and column, before serde ever sees the document.
//! Only the schema features `schemars` emits for our types are interpreted:
//! `$ref`, `type`, `properties`, `additionalProperties`, `required`, `enum`,
//! `const`, `items`, `anyOf`/`oneOf`, `minimum`.

use serde_json::Value;

use super::diagnostic::{Diagnostic, did_you_mean};
use super::source::{Node, NodeValue};

/// Checks `node` against `schema` (whose `$defs` live in `root`).
pub fn check(node: &Node, schema: &Value, root: &Value, out: &mut Vec<Diagnostic>) {
    let schema = resolve(schema, root);
    let Some(obj) = schema.as_object() else {
        return; // `true`: anything goes
    };

    for key in ["anyOf", "oneOf"] {
        if let Some(Value::Array(branches)) = obj.get(key) {
            check_branches(node, branches, root, out);
            return;
        }
    }

    if let Some(types) = obj.get("type") {
        let actual = node.type_name();
        let allowed: Vec<&str> = match types {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        let ok = allowed
            .iter()
            .any(|t| *t == actual || (*t == "number" && actual == "integer"));
        if !ok && !allowed.is_empty() {
            let found = match &node.value {
                NodeValue::Str(s) => format!("string `{s}`"),
                NodeValue::Number(n) => format!("{actual} `{n}`"),
                NodeValue::Bool(b) => format!("boolean `{b}`"),
                _ => actual.to_string(),
            };
            let expected: Vec<&str> = allowed.iter().copied().filter(|t| *t != "null").collect();
            out.push(
                Diagnostic::at(
                    "wrong-type",
                    node.loc,
                    format!("expected {}, found {found}", expected.join(" or ")),
                )
                .with_hint(type_hint(schema)),
            );
            return;
        }
    }

    if let Some(Value::Array(options)) = obj.get("enum") {
        check_enum(node, options, out);
    }
    if let Some(c) = obj.get("const") {
        check_enum(node, std::slice::from_ref(c), out);
    }
    if let (Some(min), NodeValue::Number(n)) =
        (obj.get("minimum").and_then(Value::as_f64), &node.value)
        && n.as_f64().is_some_and(|v| v < min)
    {
        out.push(Diagnostic::at(
            "out-of-range",
            node.loc,
            format!("{n} is too small; the minimum is {min}"),
        ));
    }

    match &node.value {
        NodeValue::Map(entries) => check_object(node, entries, obj, root, out),
        NodeValue::Seq(items) => {
            if let Some(item_schema) = obj.get("items") {
                for item in items {
                    check(item, item_schema, root, out);
                }
            }
        }
        _ => {}
    }
}

fn check_object(
    node: &Node,
    entries: &[(super::source::Key, Node)],
    obj: &serde_json::Map<String, Value>,
    root: &Value,
    out: &mut Vec<Diagnostic>,
) {
    let props = obj.get("properties").and_then(Value::as_object);
    let additional = obj.get("additionalProperties");
    let mut seen = Vec::with_capacity(entries.len());
    for (key, value) in entries {
        if seen.contains(&key.name.as_str()) {
            out.push(Diagnostic::at(
                "duplicate-key",
                key.loc,
                format!("duplicate key `{}`", key.name),
            ));
            continue;
        }
        seen.push(key.name.as_str());
        if let Some(prop) = props.and_then(|p| p.get(&key.name)) {
            check(value, prop, root, out);
            continue;
        }
        match additional {
            Some(Value::Bool(false)) => {
                let known: Vec<&str> = props
                    .map(|p| p.keys().map(String::as_str).collect())
                    .unwrap_or_default();
                let mut d = Diagnostic::at(
                    "unknown-key",
                    key.loc,
                    format!("unknown key `{}`", key.name),
                );
                d = match did_you_mean(&key.name, known.iter().copied()) {
                    Some(s) => d.with_hint(format!("did you mean `{s}`?")),
                    None => d.with_hint(format!("expected one of: {}", known.join(", "))),
                };
                out.push(d);
            }
            Some(schema) => check(value, schema, root, out),
            None => {}
        }
    }
    if let Some(Value::Array(required)) = obj.get("required") {
        for r in required.iter().filter_map(Value::as_str) {
            if !seen.contains(&r) {
                out.push(
                    Diagnostic::at(
                        "missing-key",
                        node.loc,
                        format!("missing required key `{r}`"),
                    )
                    .with_hint(format!("add `{r}:` to this mapping")),
                );
            }
        }
    }
}

fn check_enum(node: &Node, options: &[Value], out: &mut Vec<Diagnostic>) {
    let value = node.to_json();
    if options.contains(&value) {
        return;
    }
    let names: Vec<&str> = options.iter().filter_map(Value::as_str).collect();
    let shown = match &value {
        Value::String(s) => s.clone(),
        v => v.to_string(),
    };
    let mut d = Diagnostic::at(
        "unknown-value",
        node.loc,
        format!("unknown value `{shown}`"),
    );
    d = match did_you_mean(&shown, names.iter().copied()) {
        Some(s) => d.with_hint(format!("did you mean `{s}`?")),
        None => d.with_hint(format!("expected one of: {}", names.join(", "))),
    };
    out.push(d);
}

fn check_branches(node: &Node, branches: &[Value], root: &Value, out: &mut Vec<Diagnostic>) {
    // An enum whose variants carry docs comes out as `oneOf` of `const`s:
    // check it as one enum so the hint lists (or guesses) every value.
    let mut values = Vec::new();
    let all_constants = branches.iter().all(|b| {
        let b = resolve(b, root);
        if let Some(c) = b.get("const") {
            values.push(c.clone());
            true
        } else if let Some(Value::Array(e)) = b.get("enum") {
            values.extend(e.iter().cloned());
            true
        } else {
            false
        }
    });
    if all_constants && !values.is_empty() {
        check_enum(node, &values, out);
        return;
    }
    if check_tagged(node, branches, root, out) {
        return;
    }
    let mut best: Option<Vec<Diagnostic>> = None;
    for b in branches {
        let b = resolve(b, root);
        let is_null_branch = b.get("type").and_then(Value::as_str) == Some("null");
        if is_null_branch && !matches!(node.value, NodeValue::Null) {
            continue;
        }
        let mut errs = Vec::new();
        check(node, b, root, &mut errs);
        if errs.is_empty() {
            return;
        }
        if best.as_ref().is_none_or(|e| errs.len() < e.len()) {
            best = Some(errs);
        }
    }
    out.extend(best.unwrap_or_default());
}

/// An internally tagged enum (`{type: a, ...} | {type: b, ...}`): the branch
/// is chosen by its tag, and an unknown tag lists every known one. Returns
/// false when the branches are not tagged that way.
fn check_tagged(node: &Node, branches: &[Value], root: &Value, out: &mut Vec<Diagnostic>) -> bool {
    let tag_of = |b: &Value| -> Option<(String, Value)> {
        let props = resolve(b, root).get("properties")?.as_object()?;
        props.iter().find_map(|(k, v)| {
            let v = resolve(v, root);
            v.get("const")
                .or_else(|| {
                    v.get("enum")
                        .and_then(|e| e.as_array())
                        .filter(|a| a.len() == 1)
                        .and_then(|a| a.first())
                })
                .map(|c| (k.clone(), c.clone()))
        })
    };
    let tags: Vec<(String, Value)> = branches.iter().filter_map(tag_of).collect();
    if tags.len() != branches.len() || tags.is_empty() {
        return false;
    }
    let key = tags[0].0.clone();
    if tags.iter().any(|(k, _)| *k != key) {
        return false;
    }
    let NodeValue::Map(_) = &node.value else {
        return false;
    };
    let Some(tag_node) = node.get(&key) else {
        return false;
    };
    let tag = tag_node.to_json();
    match tags.iter().position(|(_, v)| *v == tag) {
        Some(i) => check(node, resolve(&branches[i], root), root, out),
        None => {
            let values: Vec<Value> = tags.into_iter().map(|(_, v)| v).collect();
            check_enum(tag_node, &values, out);
        }
    }
    true
}

fn resolve<'a>(schema: &'a Value, root: &'a Value) -> &'a Value {
    let mut s = schema;
    for _ in 0..16 {
        match s.get("$ref").and_then(Value::as_str) {
            Some(r) => {
                let target = r
                    .strip_prefix("#/$defs/")
                    .and_then(|name| root.get("$defs").and_then(|d| d.get(name)));
                match target {
                    Some(t) => s = t,
                    None => return s,
                }
            }
            None => return s,
        }
    }
    s
}

fn type_hint(schema: &Value) -> String {
    let desc = schema.get("description").and_then(Value::as_str);
    match desc {
        Some(d) => d.lines().next().unwrap_or(d).to_string(),
        None => "see `sluice schema` for the format".to_string(),
    }
}
