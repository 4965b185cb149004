//! Checks an HTTP answer against the server's OpenAPI 3.1 document: the
//! operation is documented, the status is one of its responses, the content
//! type is the response's, and the body validates against its schema.
//!
//! The validator covers the JSON Schema keywords the document uses (`$ref`
//! into `#/components/schemas`, `type`, `properties`, `required`,
//! `additionalProperties`, `items`, `enum`, `const`, `anyOf`, `oneOf`,
//! `allOf`, `minimum`, `maximum`, `minLength`, `maxLength`); any other
//! keyword in the document fails the check, so it cannot silently pass
//! what it does not understand.

use serde_json::Value;

/// Keywords that only annotate (or that the checks above do not need).
const ANNOTATIONS: &[&str] = &[
    "description",
    "title",
    "format",
    "default",
    "examples",
    "contentMediaType",
    "pattern",
    "$schema",
    "deprecated",
    "readOnly",
    "writeOnly",
];

/// The document's operation for a concrete request path: the template with
/// the most literal segments that matches (`{path}` of hooks takes the rest).
pub fn operation<'a>(doc: &'a Value, method: &str, path: &str) -> Option<(String, &'a Value)> {
    let segs: Vec<&str> = path.split('?').next()?.split('/').collect();
    let mut best: Option<(usize, String, &Value)> = None;
    for (template, ops) in doc["paths"].as_object()? {
        let Some(op) = ops.get(method.to_ascii_lowercase()) else {
            continue;
        };
        let t: Vec<&str> = template.split('/').collect();
        let rest = t.last() == Some(&"{path}");
        let fits = if rest {
            segs.len() >= t.len()
        } else {
            segs.len() == t.len()
        };
        if !fits {
            continue;
        }
        let mut literal = 0;
        let ok = t.iter().zip(&segs).all(|(a, b)| {
            if a.starts_with('{') {
                !b.is_empty()
            } else {
                literal += 1;
                a == b
            }
        });
        if ok && best.as_ref().is_none_or(|(n, _, _)| literal > *n) {
            best = Some((literal, template.clone(), op));
        }
    }
    best.map(|(_, t, op)| (t, op))
}

/// Checks one answer. `Err` says what does not conform.
pub fn check_answer(
    doc: &Value,
    method: &str,
    path: &str,
    status: u16,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<(), String> {
    let (template, op) = operation(doc, method, path)
        .ok_or_else(|| format!("{method} {path} is not in the document"))?;
    let res = op["responses"]
        .get(status.to_string())
        .ok_or_else(|| format!("{method} {template}: status {status} is not documented"))?;
    let Some(content) = res.get("content").and_then(Value::as_object) else {
        return if body.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{method} {template} {status}: documented without a body, got one"
            ))
        };
    };
    let ctype = content_type
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim();
    let media = content.get(ctype).ok_or_else(|| {
        format!("{method} {template} {status}: content type `{ctype}` is not documented")
    })?;
    if ctype != "application/json" {
        return Ok(());
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| format!("{method} {template} {status}: body is not JSON: {e}"))?;
    let mut errors = Vec::new();
    validate(doc, &media["schema"], &value, "$", &mut errors);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{method} {template} {status}: {}\nbody: {value}",
            errors.join("; ")
        ))
    }
}

fn type_matches(t: &str, v: &Value) -> bool {
    match t {
        "null" => v.is_null(),
        "boolean" => v.is_boolean(),
        "object" => v.is_object(),
        "array" => v.is_array(),
        "string" => v.is_string(),
        "number" => v.is_number(),
        "integer" => v.is_i64() || v.is_u64() || v.as_f64().is_some_and(|f| f.fract() == 0.0),
        _ => false,
    }
}

/// Validates `v` against `schema`, pushing one line per violation.
pub fn validate(doc: &Value, schema: &Value, v: &Value, at: &str, errors: &mut Vec<String>) {
    let obj = match schema {
        Value::Bool(true) => return,
        Value::Bool(false) => return errors.push(format!("{at}: nothing is allowed here")),
        Value::Object(o) => o,
        other => return errors.push(format!("{at}: schema {other} is not a schema")),
    };
    for (key, kw) in obj {
        match key.as_str() {
            "$ref" => {
                let name = kw.as_str().unwrap_or("");
                match name
                    .strip_prefix("#/components/schemas/")
                    .and_then(|n| doc["components"]["schemas"].get(n))
                {
                    Some(target) => validate(doc, target, v, at, errors),
                    None => errors.push(format!("{at}: unresolved $ref `{name}`")),
                }
            }
            "type" => {
                let ok = match kw {
                    Value::String(t) => type_matches(t, v),
                    Value::Array(ts) => ts
                        .iter()
                        .filter_map(Value::as_str)
                        .any(|t| type_matches(t, v)),
                    _ => false,
                };
                if !ok {
                    errors.push(format!("{at}: {v} is not of type {kw}"));
                }
            }
            "properties" => {
                if let (Some(props), Some(o)) = (kw.as_object(), v.as_object()) {
                    for (name, sub) in props {
                        if let Some(x) = o.get(name) {
                            validate(doc, sub, x, &format!("{at}.{name}"), errors);
                        }
                    }
                }
            }
            "required" => {
                if let Some(o) = v.as_object() {
                    for name in kw
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                    {
                        if !o.contains_key(name) {
                            errors.push(format!("{at}: required `{name}` is missing"));
                        }
                    }
                }
            }
            "additionalProperties" => {
                if let Some(o) = v.as_object() {
                    let known = obj.get("properties").and_then(Value::as_object);
                    for (name, x) in o {
                        if known.is_none_or(|k| !k.contains_key(name)) {
                            validate(doc, kw, x, &format!("{at}.{name}"), errors);
                        }
                    }
                }
            }
            "items" => {
                for (i, x) in v.as_array().into_iter().flatten().enumerate() {
                    validate(doc, kw, x, &format!("{at}[{i}]"), errors);
                }
            }
            "enum" => {
                if !kw.as_array().is_some_and(|a| a.contains(v)) {
                    errors.push(format!("{at}: {v} is not one of {kw}"));
                }
            }
            "const" => {
                if kw != v {
                    errors.push(format!("{at}: {v} is not {kw}"));
                }
            }
            "anyOf" | "oneOf" => {
                let alts = kw.as_array().cloned().unwrap_or_default();
                let passing = alts
                    .iter()
                    .filter(|s| {
                        let mut e = Vec::new();
                        validate(doc, s, v, at, &mut e);
                        e.is_empty()
                    })
                    .count();
                let ok = if key == "oneOf" {
                    passing == 1
                } else {
                    passing >= 1
                };
                if !ok {
                    errors.push(format!(
                        "{at}: {v} matches {passing} of the {key} alternatives"
                    ));
                }
            }
            "allOf" => {
                for s in kw.as_array().into_iter().flatten() {
                    validate(doc, s, v, at, errors);
                }
            }
            "minimum" | "maximum" => {
                if let (Some(n), Some(limit)) = (v.as_f64(), kw.as_f64()) {
                    let ok = if key == "minimum" {
                        n >= limit
                    } else {
                        n <= limit
                    };
                    if !ok {
                        errors.push(format!("{at}: {n} is out of its {key} {limit}"));
                    }
                }
            }
            "minLength" | "maxLength" => {
                if let (Some(s), Some(limit)) = (v.as_str(), kw.as_u64()) {
                    let n = s.chars().count() as u64;
                    let ok = if key == "minLength" {
                        n >= limit
                    } else {
                        n <= limit
                    };
                    if !ok {
                        errors.push(format!("{at}: length {n} is out of its {key} {limit}"));
                    }
                }
            }
            k if ANNOTATIONS.contains(&k) => {}
            other => errors.push(format!("{at}: the checker does not know keyword `{other}`")),
        }
    }
}
