//! Field mapping: a system's record → a unified record.
//!
//! Each unified field names where its value comes from: a JSONPath (a plain
//! string), or a spec with `path`/`const`/`join`/`product`/`sum`/`from_lines`/
//! `each`+`fields`/`pattern`, then optionally `convert`, `map` and `default`.
//! Simple paths (`$.a.b[0]['c']`) are evaluated by direct lookups; anything
//! else by the RFC 9535 engine. When `status` is mapped through a value map
//! and `remote_status` is not mapped, the raw value is kept as `remote_status`.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::expr::jsonpath::Query;
use crate::flow::source::Seg;
use crate::unified::Entity;

/// Where a unified field's value comes from.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum FieldSource {
    /// A JSONPath into the system's record, e.g. `$.PurchaseOrder`.
    Path(String),
    /// A value with conversions.
    Spec(Box<FieldSpec>),
}

/// A unified field's source with conversions. Exactly one of `path`, `const`,
/// `join`, `product`, `sum`, `from_lines`, `each` or `pattern` is given.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FieldSpec {
    /// JSONPath of the value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// A fixed value.
    #[serde(default, rename = "const", skip_serializing_if = "Option::is_none")]
    pub constant: Option<Value>,
    /// A composite key: the values of these JSONPaths joined by `separator` (default `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join: Option<Vec<String>>,
    /// Separator of `join`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub separator: Option<String>,
    /// The product of these JSONPaths' numeric values (numbers or decimal strings).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product: Option<Vec<String>>,
    /// The sum of every number this JSONPath selects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sum: Option<String>,
    /// The sum of this field over the mapped `lines`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_lines: Option<String>,
    /// A list: JSONPath selecting the elements, each mapped with `fields`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub each: Option<String>,
    /// Mapping of each element of `each`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fields: Option<BTreeMap<String, FieldSource>>,
    /// For `custom_fields`: the system's top-level fields whose names match
    /// (`custbody_*`, `YY1_*`, `*_custom`, exact names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<Vec<String>>,
    /// Conversion applied to the value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub convert: Option<Converter>,
    /// Value map (the system's value as text → unified value), e.g. statuses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map: Option<BTreeMap<String, Value>>,
    /// Used when the value is missing or null, or not in `map`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
}

/// Value conversions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Converter {
    /// SAP OData v2 `/Date(1700000000000)/` or `/Date(1700000000000+0000)/` → RFC 3339 UTC.
    SapDate,
    /// Any timestamp or date (`/Date(ms)/`, RFC 3339, `YYYY-MM-DDTHH:MM:SS`) → `YYYY-MM-DD`.
    Date,
    /// A timestamp (RFC 3339, or without offset = UTC, or `/Date(ms)/`) → RFC 3339 UTC.
    Datetime,
    /// A number or decimal string → number.
    Number,
    /// A number or numeric string → integer.
    Integer,
    /// Any scalar → text.
    String,
    /// `true`/`false`, `1`/`0`, `Y`/`N`, `X`/`` (SAP flags) → boolean.
    Boolean,
    /// Text → upper case.
    Uppercase,
    /// Text → lower case.
    Lowercase,
    /// Text without surrounding blanks.
    Trim,
}

/// A JSONPath, evaluated by direct lookups when it is a plain chain of names and indexes.
#[derive(Debug, Clone)]
pub enum FastPath {
    /// `$.a.b[0]`, optionally ending in `[*]`.
    Simple {
        /// Names and indexes.
        segs: Vec<PathSeg>,
        /// Ends in `[*]`.
        wildcard: bool,
    },
    /// Anything else.
    Full(Query),
}

/// One step of a simple path.
#[derive(Debug, Clone)]
pub enum PathSeg {
    /// A member name.
    Name(String),
    /// An array index.
    Index(usize),
}

impl FastPath {
    /// Compiles a JSONPath (always checked by the full parser first).
    pub fn parse(text: &str) -> Result<FastPath, String> {
        let q = Query::parse(text).map_err(|e| e.to_string())?;
        Ok(simple(text).unwrap_or(FastPath::Full(q)))
    }

    /// The first value selected.
    pub fn first<'a>(&self, doc: &'a Value) -> Option<&'a Value> {
        match self {
            FastPath::Simple { segs, wildcard } => {
                let v = walk(doc, segs)?;
                if *wildcard {
                    v.as_array()?.first()
                } else {
                    Some(v)
                }
            }
            FastPath::Full(q) => q.first(doc),
        }
    }

    /// Every value selected.
    pub fn all<'a>(&self, doc: &'a Value) -> Vec<&'a Value> {
        match self {
            FastPath::Simple { segs, wildcard } => match walk(doc, segs) {
                Some(Value::Array(items)) if *wildcard => items.iter().collect(),
                Some(_) if *wildcard => Vec::new(),
                Some(v) => vec![v],
                None => Vec::new(),
            },
            FastPath::Full(q) => q.all(doc),
        }
    }
}

fn walk<'a>(doc: &'a Value, segs: &[PathSeg]) -> Option<&'a Value> {
    let mut v = doc;
    for s in segs {
        v = match s {
            PathSeg::Name(n) => v.as_object()?.get(n)?,
            PathSeg::Index(i) => v.as_array()?.get(*i)?,
        };
    }
    Some(v)
}

/// Parses `$`, `.name`, `['name']`, `[n]`, and a final `[*]`; `None` for anything else.
fn simple(text: &str) -> Option<FastPath> {
    let mut rest = text.strip_prefix('$')?;
    let mut segs = Vec::new();
    let mut wildcard = false;
    while !rest.is_empty() {
        if wildcard {
            return None;
        }
        if let Some(r) = rest.strip_prefix('.') {
            let end = r
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(r.len());
            let name = &r[..end];
            if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
                return None;
            }
            segs.push(PathSeg::Name(name.to_string()));
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix("['") {
            let end = r.find("']")?;
            let name = &r[..end];
            if name.contains(['\\', '\'']) {
                return None;
            }
            segs.push(PathSeg::Name(name.to_string()));
            rest = &r[end + 2..];
        } else if let Some(r) = rest.strip_prefix("[*]") {
            wildcard = true;
            rest = r;
        } else if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']')?;
            let idx: usize = r[..end].parse().ok()?;
            if r[..end].starts_with('0') && end > 1 {
                return None;
            }
            segs.push(PathSeg::Index(idx));
            rest = &r[end + 1..];
        } else {
            return None;
        }
    }
    Some(FastPath::Simple { segs, wildcard })
}

#[derive(Debug)]
enum Src {
    Path(FastPath),
    Const(Value),
    Join(Vec<FastPath>, String),
    Product(Vec<FastPath>),
    Sum(FastPath),
    FromLines(String),
    Each(FastPath, Vec<Field>),
    Pattern(Vec<String>),
}

#[derive(Debug)]
struct Field {
    name: String,
    src: Src,
    convert: Option<Converter>,
    map: Option<BTreeMap<String, Value>>,
    default: Option<Value>,
}

/// A compiled mapping for one entity.
#[derive(Debug)]
pub struct Mapping {
    fields: Vec<Field>,
    /// `remote_status` is filled from the raw value of a mapped `status`.
    keep_remote_status: bool,
    /// JSONPath of `remote_id`, for error messages and detail ids.
    remote_id: Option<FastPath>,
}

/// A problem found compiling a mapping: (path below `mapping`, code, message).
pub type Problem = (Vec<Seg>, &'static str, String);

fn required_fields(schema: &Value) -> Vec<String> {
    schema
        .get("required")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

fn properties(schema: &Value) -> Vec<String> {
    schema
        .get("properties")
        .and_then(Value::as_object)
        .map(|p| p.keys().cloned().collect())
        .unwrap_or_default()
}

/// Fields the engine fills itself.
const ENGINE_FIELDS: &[&str] = &["id", "connection_id", "raw"];

impl Mapping {
    /// Compiles and checks a mapping against the unified model.
    pub fn compile(
        entity: Entity,
        spec: &BTreeMap<String, FieldSource>,
        problems: &mut Vec<Problem>,
    ) -> Option<Mapping> {
        let schema = entity.json_schema();
        let line_schema = schema
            .pointer("/$defs/PurchaseOrderLine")
            .cloned()
            .unwrap_or(Value::Null);
        let before = problems.len();
        let fields = compile_fields(
            entity.name(),
            &properties(&schema),
            &required_fields(&schema),
            spec,
            &[],
            problems,
            Some(&line_schema),
        );
        if problems.len() > before {
            return None;
        }
        let keep_remote_status = !spec.contains_key("remote_status")
            && fields.iter().any(|f| f.name == "status" && f.map.is_some())
            && properties(&schema).iter().any(|p| p == "remote_status");
        let remote_id = fields.iter().find_map(|f| match (&f.name[..], &f.src) {
            ("remote_id", Src::Path(p)) => Some(p.clone()),
            _ => None,
        });
        Some(Mapping {
            fields,
            keep_remote_status,
            remote_id,
        })
    }

    /// The JSONPath of `remote_id`, when it is a plain path.
    pub fn remote_id_path(&self) -> Option<&FastPath> {
        self.remote_id.as_ref()
    }

    /// Maps one of the system's records. Errors name the field.
    pub fn apply(&self, src: &Value) -> Result<Map<String, Value>, String> {
        let mut out = Map::with_capacity(self.fields.len() + 4);
        let mut raw_status = None;
        map_fields(&self.fields, src, &mut out, &mut raw_status)?;
        if self.keep_remote_status
            && let Some(raw) = raw_status
        {
            out.insert("remote_status".into(), raw);
        }
        Ok(out)
    }
}

fn compile_fields(
    owner: &str,
    known: &[String],
    required: &[String],
    spec: &BTreeMap<String, FieldSource>,
    at: &[Seg],
    problems: &mut Vec<Problem>,
    line_schema: Option<&Value>,
) -> Vec<Field> {
    let here = |name: &str| {
        let mut p = at.to_vec();
        p.push(Seg::Key(name.to_string()));
        p
    };
    let mut fields = Vec::new();
    for (name, source) in spec {
        if !known.iter().any(|k| k == name) {
            let hint =
                crate::flow::diagnostic::did_you_mean(name, known.iter().map(String::as_str))
                    .map(|s| format!("; did you mean `{s}`?"))
                    .unwrap_or_default();
            problems.push((
                here(name),
                "unknown-field",
                format!("{owner} has no field `{name}`{hint}"),
            ));
            continue;
        }
        if ENGINE_FIELDS.contains(&name.as_str()) {
            problems.push((
                here(name),
                "engine-field",
                format!("`{name}` is set by the engine and cannot be mapped"),
            ));
            continue;
        }
        let spec = match source {
            FieldSource::Path(p) => FieldSpec {
                path: Some(p.clone()),
                ..FieldSpec::default()
            },
            FieldSource::Spec(s) => (**s).clone(),
        };
        let given = [
            spec.path.is_some(),
            spec.constant.is_some(),
            spec.join.is_some(),
            spec.product.is_some(),
            spec.sum.is_some(),
            spec.from_lines.is_some(),
            spec.each.is_some(),
            spec.pattern.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if given != 1 && !(given == 0 && spec.default.is_some()) {
            problems.push((
                here(name),
                "invalid-mapping",
                format!(
                    "field `{name}` needs exactly one of path, const, join, product, sum, from_lines, each or pattern (found {given})"
                ),
            ));
            continue;
        }
        let mut path = |p: &str, key: &str| -> Option<FastPath> {
            match FastPath::parse(p) {
                Ok(fp) => Some(fp),
                Err(m) => {
                    let mut at = here(name);
                    at.push(Seg::Key(key.into()));
                    problems.push((at, "invalid-jsonpath", m));
                    None
                }
            }
        };
        let src = if let Some(p) = &spec.path {
            path(p, "path").map(Src::Path)
        } else if let Some(c) = &spec.constant {
            Some(Src::Const(c.clone()))
        } else if let Some(parts) = &spec.join {
            let ps: Vec<_> = parts.iter().filter_map(|p| path(p, "join")).collect();
            (ps.len() == parts.len())
                .then(|| Src::Join(ps, spec.separator.clone().unwrap_or_else(|| "/".into())))
        } else if let Some(parts) = &spec.product {
            let ps: Vec<_> = parts.iter().filter_map(|p| path(p, "product")).collect();
            (ps.len() == parts.len()).then_some(Src::Product(ps))
        } else if let Some(p) = &spec.sum {
            path(p, "sum").map(Src::Sum)
        } else if let Some(f) = &spec.from_lines {
            Some(Src::FromLines(f.clone()))
        } else if let Some(p) = &spec.each {
            let items = path(p, "each");
            let Some(line_schema) = line_schema.filter(|_| name == "lines") else {
                problems.push((
                    here(name),
                    "invalid-mapping",
                    format!(
                        "`each` maps lists; only purchase_order `lines` is a list, not `{name}`"
                    ),
                ));
                continue;
            };
            let sub = spec.fields.clone().unwrap_or_default();
            let inner = compile_fields(
                "a purchase_order line",
                &properties(line_schema),
                &required_fields(line_schema),
                &sub,
                &{
                    let mut a = here(name);
                    a.push(Seg::Key("fields".into()));
                    a
                },
                problems,
                None,
            );
            items.map(|i| Src::Each(i, inner))
        } else if let Some(p) = &spec.pattern {
            if name != "custom_fields" {
                problems.push((
                    here(name),
                    "invalid-mapping",
                    format!("`pattern` fills `custom_fields`, not `{name}`"),
                ));
                continue;
            }
            Some(Src::Pattern(p.clone()))
        } else {
            Some(Src::Const(Value::Null))
        };
        if let Some(src) = src {
            fields.push(Field {
                name: name.clone(),
                src,
                convert: spec.convert,
                map: spec.map.clone(),
                default: spec.default.clone(),
            });
        }
    }
    for r in required {
        if !ENGINE_FIELDS.contains(&r.as_str()) && !spec.contains_key(r) {
            problems.push((
                at.to_vec(),
                "missing-field",
                format!("the mapping of {owner} lacks `{r}`, which the unified model requires"),
            ));
        }
    }
    // `from_lines` after `lines`.
    fields.sort_by_key(|f| matches!(f.src, Src::FromLines(_)));
    fields
}

fn map_fields(
    fields: &[Field],
    src: &Value,
    out: &mut Map<String, Value>,
    raw_status: &mut Option<Value>,
) -> Result<(), String> {
    for f in fields {
        let v = match &f.src {
            Src::Path(p) => p.first(src).cloned().unwrap_or(Value::Null),
            Src::Const(c) => c.clone(),
            Src::Join(parts, sep) => {
                let mut s = String::new();
                for (i, p) in parts.iter().enumerate() {
                    if i > 0 {
                        s.push_str(sep);
                    }
                    match p.first(src) {
                        Some(Value::String(t)) => s.push_str(t),
                        Some(Value::Number(n)) => s.push_str(&n.to_string()),
                        _ => {
                            return Err(format!(
                                "field `{}`: a part of the key is missing",
                                f.name
                            ));
                        }
                    }
                }
                Value::String(s)
            }
            Src::Product(parts) => {
                let mut acc = 1.0;
                for p in parts {
                    acc *= number(p.first(src).unwrap_or(&Value::Null))
                        .map_err(|m| format!("field `{}`: {m}", f.name))?
                        .unwrap_or(0.0);
                }
                json_number(acc)
            }
            Src::Sum(p) => {
                let mut acc = 0.0;
                for v in p.all(src) {
                    acc += number(v)
                        .map_err(|m| format!("field `{}`: {m}", f.name))?
                        .unwrap_or(0.0);
                }
                json_number(acc)
            }
            Src::FromLines(field) => {
                let mut acc = 0.0;
                for l in out
                    .get("lines")
                    .and_then(Value::as_array)
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                {
                    acc += l.get(field).and_then(Value::as_f64).unwrap_or(0.0);
                }
                json_number(acc)
            }
            Src::Each(items, sub) => {
                let elems = items.all(src);
                let mut list = Vec::with_capacity(elems.len());
                for (i, e) in elems.into_iter().enumerate() {
                    let mut m = Map::with_capacity(sub.len());
                    let mut ignored = None;
                    map_fields(sub, e, &mut m, &mut ignored)
                        .map_err(|msg| format!("{}[{i}]: {msg}", f.name))?;
                    list.push(Value::Object(m));
                }
                Value::Array(list)
            }
            Src::Pattern(patterns) => {
                let mut m = Map::new();
                if let Some(obj) = src.as_object() {
                    for (k, v) in obj {
                        if patterns.iter().any(|p| glob(p, k)) {
                            m.insert(k.clone(), v.clone());
                        }
                    }
                }
                Value::Object(m)
            }
        };
        let v = match f.convert {
            Some(c) if !v.is_null() => {
                convert(c, &v).map_err(|m| format!("field `{}`: {m}", f.name))?
            }
            _ => v,
        };
        let v = match &f.map {
            Some(map) if !v.is_null() => {
                let key = scalar_text(&v);
                if f.name == "status" {
                    *raw_status = Some(Value::String(key.clone()));
                }
                match map.get(&key) {
                    Some(m) => m.clone(),
                    None => match &f.default {
                        Some(d) => d.clone(),
                        None => {
                            return Err(format!(
                                "field `{}`: value `{key}` is not in the value map (known: {})",
                                f.name,
                                map.keys().cloned().collect::<Vec<_>>().join(", ")
                            ));
                        }
                    },
                }
            }
            _ => v,
        };
        let v = match (&v, &f.default) {
            (Value::Null, Some(d)) => d.clone(),
            _ => v,
        };
        if !v.is_null() {
            out.insert(f.name.clone(), v);
        }
    }
    Ok(())
}

fn json_number(f: f64) -> Value {
    // Round away binary noise from products and sums of decimals.
    let r = (f * 1e6).round() / 1e6;
    serde_json::Number::from_f64(r)
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn glob(pattern: &str, name: &str) -> bool {
    match (pattern.strip_suffix('*'), pattern.strip_prefix('*')) {
        (Some(prefix), _) if !prefix.contains('*') => name.starts_with(prefix),
        (_, Some(suffix)) if !suffix.contains('*') => name.ends_with(suffix),
        _ => pattern == name,
    }
}

fn number(v: &Value) -> Result<Option<f64>, String> {
    match v {
        Value::Null => Ok(None),
        Value::Number(n) => Ok(n.as_f64()),
        Value::String(s) if s.trim().is_empty() => Ok(None),
        Value::String(s) => s
            .trim()
            .parse::<f64>()
            .map(Some)
            .map_err(|_| format!("`{s}` is not a number")),
        other => Err(format!("{other} is not a number")),
    }
}

/// Milliseconds in an SAP `/Date(ms)/` or `/Date(ms+0000)/`.
fn sap_millis(s: &str) -> Option<i64> {
    let inner = s.strip_prefix("/Date(")?.strip_suffix(")/")?;
    let end = inner[1..]
        .find(['+', '-'])
        .map(|i| i + 1)
        .unwrap_or(inner.len());
    inner[..end].parse().ok()
}

fn parse_datetime(s: &str) -> Option<DateTime<Utc>> {
    if let Some(ms) = sap_millis(s) {
        return DateTime::from_timestamp_millis(ms);
    }
    if let Ok(d) = DateTime::parse_from_rfc3339(s) {
        return Some(d.with_timezone(&Utc));
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(d) = NaiveDateTime::parse_from_str(s, fmt) {
            return Some(d.and_utc());
        }
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|d| d.and_utc())
}

fn rfc3339(d: DateTime<Utc>) -> Value {
    Value::String(d.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
}

/// Applies a converter to a non-null value.
pub fn convert(c: Converter, v: &Value) -> Result<Value, String> {
    let text = || match v {
        Value::String(s) => Ok(s.as_str()),
        other => Err(format!("expected text, found {other}")),
    };
    Ok(match c {
        Converter::SapDate => {
            let s = text()?;
            let ms =
                sap_millis(s).ok_or_else(|| format!("`{s}` is not an SAP /Date(ms)/ value"))?;
            rfc3339(
                DateTime::from_timestamp_millis(ms)
                    .ok_or_else(|| format!("`{s}` is out of range"))?,
            )
        }
        Converter::Datetime => {
            let s = text()?;
            rfc3339(parse_datetime(s).ok_or_else(|| format!("`{s}` is not a timestamp"))?)
        }
        Converter::Date => {
            let s = text()?;
            if NaiveDate::parse_from_str(s, "%Y-%m-%d").is_ok() {
                Value::String(s.to_string())
            } else {
                let d = parse_datetime(s).ok_or_else(|| format!("`{s}` is not a date"))?;
                Value::String(d.format("%Y-%m-%d").to_string())
            }
        }
        Converter::Number => json_number(number(v)?.unwrap_or(0.0)),
        Converter::Integer => {
            let f = number(v)?.unwrap_or(0.0);
            if f.fract() != 0.0 {
                return Err(format!("{f} is not an integer"));
            }
            Value::from(f as i64)
        }
        Converter::String => Value::String(scalar_text(v)),
        Converter::Boolean => match v {
            Value::Bool(b) => Value::Bool(*b),
            other => match scalar_text(other).trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "y" | "yes" | "x" => Value::Bool(true),
                "false" | "0" | "n" | "no" | "" => Value::Bool(false),
                t => return Err(format!("`{t}` is not a boolean")),
            },
        },
        Converter::Uppercase => Value::String(text()?.to_uppercase()),
        Converter::Lowercase => Value::String(text()?.to_lowercase()),
        Converter::Trim => Value::String(text()?.trim().to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn simple_paths_take_the_fast_route_and_agree_with_the_full_engine() {
        let doc =
            json!({"d": {"results": [{"a": 1}, {"a": 2}]}, "@odata.nextLink": "x", "n": [5, 6]});
        for (text, fast) in [
            ("$.d.results[*]", true),
            ("$['@odata.nextLink']", true),
            ("$.n[1]", true),
            ("$.d.results[*].a", false),
            ("$..a", false),
        ] {
            let p = FastPath::parse(text).unwrap();
            assert_eq!(matches!(p, FastPath::Simple { .. }), fast, "{text}");
            let full = Query::parse(text).unwrap();
            let expected: Vec<Value> = full.select(&doc);
            let got: Vec<Value> = p.all(&doc).into_iter().cloned().collect();
            assert_eq!(got, expected, "{text}");
        }
    }

    #[test]
    fn converters_handle_sap_dates_decimals_and_flags() {
        assert_eq!(
            convert(Converter::SapDate, &json!("/Date(1700000000000)/")).unwrap(),
            json!("2023-11-14T22:13:20Z")
        );
        assert_eq!(
            convert(Converter::Datetime, &json!("/Date(1700000000000+0000)/")).unwrap(),
            json!("2023-11-14T22:13:20Z")
        );
        assert_eq!(
            convert(Converter::Date, &json!("/Date(1700000000000)/")).unwrap(),
            json!("2023-11-14")
        );
        assert_eq!(
            convert(Converter::Datetime, &json!("2024-03-01T10:00:00")).unwrap(),
            json!("2024-03-01T10:00:00Z")
        );
        assert_eq!(
            convert(Converter::Number, &json!("12.50")).unwrap(),
            json!(12.5)
        );
        assert_eq!(
            convert(Converter::Boolean, &json!("X")).unwrap(),
            json!(true)
        );
        assert!(convert(Converter::SapDate, &json!("yesterday")).is_err());
        assert!(convert(Converter::Number, &json!("12,5")).is_err());
    }

    #[test]
    fn unknown_and_missing_fields_are_reported() {
        let spec: BTreeMap<String, FieldSource> = serde_json::from_value(json!({
            "remote_id": "$.id",
            "colour": "$.c",
        }))
        .unwrap();
        let mut problems = Vec::new();
        assert!(Mapping::compile(Entity::Vendor, &spec, &mut problems).is_none());
        let text: Vec<&str> = problems.iter().map(|p| p.2.as_str()).collect();
        assert!(
            text.iter().any(|t| t.contains("no field `colour`")),
            "{text:?}"
        );
        assert!(text.iter().any(|t| t.contains("lacks `name`")), "{text:?}");
    }
}
