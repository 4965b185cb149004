//! Field mapping: a system's record → a unified record.
//!
//! Each unified field names where its value comes from: a JSONPath (a plain
//! string), or a spec with `path`/`const`/`join`/`coalesce`/`product`/`sum`/
//! `from_lines`/`each`+`fields`/`pattern`, then optionally `divide_by` and
//! `round` (exact decimal arithmetic), `convert`, `map`, `default`, and
//! `cases` that override the value when a condition on the record holds.
//! Lines can be left out by a JSONPath filter in `each`
//! (`$.items[?@.DeletionCode != 'L']`).
//! Simple paths (`$.a.b[0]['c']`) are evaluated by direct lookups; anything
//! else by the RFC 9535 engine. When `status` is mapped through a value map
//! and `remote_status` is not mapped, the raw value is kept as `remote_status`.
//!
//! A mapped record goes straight into one slot per unified field (in the
//! model's order) and is checked against the model's [`Shape`] in the same
//! pass: no intermediate map, and values a converter already produced in the
//! model's form (timestamps, dates, checked lines) are not parsed again.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use chrono::{DateTime, NaiveDate, NaiveDateTime, Utc};
use rust_decimal::Decimal;
use rust_decimal::prelude::ToPrimitive;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::expr::jsonpath::Query;
use crate::unified::shape::{Shape, Slot};
use crate::unified::{Entity, money};
use crate::yaml::source::Seg;

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
/// `join`, `coalesce`, `product`, `sum`, `from_lines`, `each` or `pattern` is
/// given. Numbers are exact decimals throughout (see [`crate::unified::money`]):
/// the value is divided (`divide_by`) and rounded (`round`), then converted
/// (`convert`), then looked up (`map`); a matching `cases` entry wins over all
/// of that.
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
    /// The first of these JSONPaths that has a value (not null, not an empty string).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coalesce: Option<Vec<String>>,
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
    /// Divides the numeric value by this: a JSONPath (`$.NetPriceQuantity`,
    /// e.g. SAP's price unit) or a number. A missing or zero divisor fails the
    /// record, naming the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub divide_by: Option<Value>,
    /// Decimals of the numeric value, rounded half away from zero. A division
    /// keeps 6 unless this says otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round: Option<u32>,
    /// Conversion applied to the value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub convert: Option<Converter>,
    /// Value map (the system's value as text → unified value), e.g. statuses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub map: Option<BTreeMap<String, Value>>,
    /// Used when the value is missing or null, or not in `map`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Value>,
    /// Values that replace the mapped one when a condition on the system's
    /// record holds; the first that holds wins (e.g. an order whose deletion
    /// code is `L` is `cancelled` whatever its processing status).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cases: Option<Vec<Case>>,
}

/// A value that wins when its condition holds.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Case {
    /// The condition.
    pub when: Condition,
    /// The unified value the field then takes (as is: no conversion or map).
    pub value: Value,
}

/// A condition on one value of the system's record, compared as text
/// (`1` and `"1"` are equal). Exactly one of `equals` and `in` is given.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Condition {
    /// JSONPath of the value; a missing value is null.
    pub path: String,
    /// Holds when the value is this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub equals: Option<Value>,
    /// Holds when the value is one of these.
    #[serde(default, rename = "in", skip_serializing_if = "Option::is_none")]
    pub one_of: Option<Vec<Value>>,
}

/// Value conversions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Converter {
    /// SAP OData v2 `/Date(1700000000000)/` or `/Date(1700000000000+0000)/` → RFC 3339 UTC.
    SapDate,
    /// Any timestamp or date (`/Date(ms)/`, RFC 3339, `YYYY-MM-DDTHH:MM:SS`) → `YYYY-MM-DD`.
    Date,
    /// A timestamp (RFC 3339, or without offset = UTC, or `/Date(ms)/`, or an
    /// object of parts `{year, month, day, hour, minute, second, microsecond}`
    /// as JSON-RPC systems send it) → RFC 3339 UTC.
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
    /// `$.a.b[?@.name == 'text']` or `!=`: the children of the node at
    /// `segs` (an array's elements, an object's member values) whose member
    /// `name` is (or is not) the string `text`.
    Filter {
        /// Names and indexes up to the filtered node.
        segs: Vec<PathSeg>,
        /// The member compared, with where it was found last.
        name: (String, Hint),
        /// `==` (true) or `!=` (false).
        equal: bool,
        /// The string compared with.
        text: String,
    },
    /// Anything else.
    Full(Query),
}

/// One step of a simple path.
#[derive(Debug, Clone)]
pub enum PathSeg {
    /// A member name, with where it was found last time.
    Name(String, Hint),
    /// An array index.
    Index(usize),
}

/// The position at which a member name was last found. A system's records
/// of one kind share their key order, so looking there first finds the key
/// without hashing it (serde_json's ordered maps hash every lookup).
#[derive(Debug, Default)]
pub struct Hint(AtomicUsize);

impl Clone for Hint {
    fn clone(&self) -> Self {
        Hint(AtomicUsize::new(self.0.load(Ordering::Relaxed)))
    }
}

/// Objects up to this size are searched key by key (and the position kept
/// as the next hint), larger ones by hash.
const SCAN_LIMIT: usize = 256;

/// `obj[name]`, trying the hinted position first.
fn member<'a>(obj: &'a Map<String, Value>, name: &str, hint: &Hint) -> Option<&'a Value> {
    let at = hint.0.load(Ordering::Relaxed);
    if let Some((k, v)) = obj.iter().nth(at)
        && k == name
    {
        return Some(v);
    }
    if obj.len() > SCAN_LIMIT {
        return obj.get(name);
    }
    let (i, (_, v)) = obj.iter().enumerate().find(|(_, (k, _))| *k == name)?;
    hint.0.store(i, Ordering::Relaxed);
    Some(v)
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
            FastPath::Filter { .. } => self.all(doc).into_iter().next(),
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
            FastPath::Filter {
                segs,
                name,
                equal,
                text,
            } => {
                // RFC 9535 §2.3.5.2: a filter selects among an array's elements
                // or an object's member values; §2.3.5.2.2: a missing member
                // (or a child that is not an object) equals nothing, so it is
                // never `==` and always `!=` a string.
                let holds = |child: &Value| {
                    let found = child
                        .as_object()
                        .and_then(|o| member(o, &name.0, &name.1))
                        .and_then(Value::as_str)
                        == Some(text.as_str());
                    found == *equal
                };
                match walk(doc, segs) {
                    Some(Value::Array(items)) => items.iter().filter(|c| holds(c)).collect(),
                    Some(Value::Object(members)) => members.values().filter(|c| holds(c)).collect(),
                    _ => Vec::new(),
                }
            }
            FastPath::Full(q) => q.all(doc),
        }
    }
}

fn walk<'a>(doc: &'a Value, segs: &[PathSeg]) -> Option<&'a Value> {
    let mut v = doc;
    for s in segs {
        v = match s {
            PathSeg::Name(n, hint) => member(v.as_object()?, n, hint)?,
            PathSeg::Index(i) => v.as_array()?.get(*i)?,
        };
    }
    Some(v)
}

/// Parses `$`, `.name`, `['name']`, `[n]`, and a final `[*]`, or a final
/// `[?@.name == 'text']` (or `!=`); `None` for anything else.
fn simple(text: &str) -> Option<FastPath> {
    if let Some(open) = text.find("[?")
        && let Some(FastPath::Simple {
            segs,
            wildcard: false,
        }) = simple(&text[..open])
    {
        let (name, equal, text) = string_test(text[open + 2..].strip_suffix(']')?)?;
        return Some(FastPath::Filter {
            segs,
            name: (name, Hint::default()),
            equal,
            text,
        });
    }
    let mut rest = text.strip_prefix('$')?;
    let mut segs = Vec::new();
    let mut wildcard = false;
    while !rest.is_empty() {
        if wildcard {
            return None;
        }
        if let Some(r) = rest.strip_prefix('.') {
            let (name, r) = plain_name(r)?;
            segs.push(PathSeg::Name(name.to_string(), Hint::default()));
            rest = r;
        } else if let Some(r) = rest.strip_prefix("['") {
            let end = r.find("']")?;
            let name = &r[..end];
            if name.contains(['\\', '\'']) {
                return None;
            }
            segs.push(PathSeg::Name(name.to_string(), Hint::default()));
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

/// A member name in dot notation (`name` of `.name`: letters, digits and
/// `_`, not starting with a digit) at the start of `text`, and what follows it.
fn plain_name(text: &str) -> Option<(&str, &str)> {
    let end = text
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(text.len());
    let name = &text[..end];
    if name.is_empty() || name.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    Some((name, &text[end..]))
}

/// `@.name == 'text'` (or `!=`, or `"text"`) with a plain name and a text
/// without escapes: (name, whether `==`, text).
fn string_test(expr: &str) -> Option<(String, bool, String)> {
    let (name, rest) = plain_name(expr.trim().strip_prefix("@.")?)?;
    let rest = rest.trim_start();
    let (equal, rest) = match (rest.strip_prefix("=="), rest.strip_prefix("!=")) {
        (Some(r), _) => (true, r),
        (_, Some(r)) => (false, r),
        _ => return None,
    };
    let rest = rest.trim();
    let quote = rest.chars().next().filter(|c| *c == '\'' || *c == '"')?;
    let text = rest.strip_prefix(quote)?.strip_suffix(quote)?;
    if text.contains(['\\', '\'', '"']) {
        return None;
    }
    Some((name.to_string(), equal, text.to_string()))
}

#[derive(Debug)]
enum Src {
    Path(FastPath),
    Const(Value),
    Join(Vec<FastPath>, String),
    Coalesce(Vec<FastPath>),
    Product(Vec<FastPath>),
    Sum(FastPath),
    /// The field summed (with where it was found last), and the slot of `lines`.
    FromLines(String, Hint, usize),
    Each(FastPath, Vec<Field>, &'static Shape),
    Pattern(Vec<String>),
}

#[derive(Debug)]
struct Field {
    name: String,
    /// Index of the field in its shape's slots.
    slot: usize,
    src: Src,
    divide_by: Option<Divisor>,
    round: Option<u32>,
    convert: Option<Converter>,
    map: Option<BTreeMap<String, Value>>,
    default: Option<Value>,
    /// What a value missing from `map` (with no `default`) becomes: the
    /// field's catch-all enum value (`other`) when the model has one.
    catch_all: Option<Value>,
    /// (path, values that make it hold, the field's value then).
    cases: Vec<(FastPath, Vec<Value>, Value)>,
    /// The model's field is a number: a value made by the exact decimal
    /// code is already in the model's form.
    number: bool,
}

#[derive(Debug)]
enum Divisor {
    Path(String, FastPath),
    Const(Decimal),
}

/// Values missing from a value map that became the field's catch-all
/// (`other`) instead of failing the record, since the process started.
static UNMAPPED_VALUES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// How many values missing from a value map became `other` (a warning is
/// logged for each).
pub fn unmapped_values() -> u64 {
    UNMAPPED_VALUES.load(Ordering::Relaxed)
}

/// The enum values the unified model allows for a top-level field, if it is an enum.
fn enum_values(entity: Entity, field: &str) -> Option<Vec<String>> {
    let schema = entity.json_schema();
    let resolve = |s: &Value| -> Value {
        match s.get("$ref").and_then(Value::as_str) {
            Some(r) => r
                .strip_prefix("#/$defs/")
                .and_then(|n| schema.get("$defs")?.get(n))
                .cloned()
                .unwrap_or_else(|| s.clone()),
            None => s.clone(),
        }
    };
    let mut s = resolve(schema.get("properties")?.get(field)?);
    // `Option<Enum>`: anyOf [enum, null].
    if let Some(Value::Array(bs)) = s.get("anyOf").cloned()
        && bs.iter().all(|b| b.get("const").is_none())
        && let Some(b) = bs
            .iter()
            .find(|b| b.get("type").and_then(Value::as_str) != Some("null"))
    {
        s = resolve(b);
    }
    if let Some(Value::Array(vs)) = s.get("enum") {
        return Some(
            vs.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect(),
        );
    }
    let branches = s.get("oneOf").or_else(|| s.get("anyOf"))?.as_array()?;
    branches
        .iter()
        .map(|b| {
            resolve(b)
                .get("const")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .collect()
}

/// A compiled mapping for one entity.
#[derive(Debug)]
pub struct Mapping {
    shape: &'static Shape,
    fields: Vec<Field>,
    /// Slot of `remote_status`, filled from the raw value of a mapped `status`.
    keep_remote_status: Option<usize>,
    /// JSONPath of `remote_id`, for error messages and detail ids.
    remote_id: Option<FastPath>,
    /// Slots the engine fills.
    slots: EngineSlots,
}

#[derive(Debug)]
struct EngineSlots {
    id: usize,
    remote_id: usize,
    connection_id: usize,
    custom_fields: usize,
    remote_was_deleted: usize,
}

/// Why a system's record cannot become a unified record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MapError {
    /// A mapping failed (a value missing from a value map, a bad number...).
    Mapping(String),
    /// The mapped record does not fit the unified model.
    Model(String),
    /// The mapped record has no `remote_id`.
    NoRemoteId,
}

/// A problem found compiling a mapping: (path below `mapping`, code, message).
pub type Problem = (Vec<Seg>, &'static str, String);

/// Fields the engine fills itself.
const ENGINE_FIELDS: &[&str] = &["id", "connection_id", "raw"];

impl Mapping {
    /// Compiles and checks a mapping against the unified model.
    pub fn compile(
        entity: Entity,
        spec: &BTreeMap<String, FieldSource>,
        problems: &mut Vec<Problem>,
    ) -> Option<Mapping> {
        let shape = Shape::of(entity);
        let before = problems.len();
        let mut fields = compile_fields(entity.name(), spec, &[], problems, shape);
        if problems.len() > before {
            return None;
        }
        for f in fields.iter_mut().filter(|f| f.map.is_some()) {
            if enum_values(entity, &f.name).is_some_and(|vs| vs.iter().any(|v| v == "other")) {
                f.catch_all = Some(Value::String("other".into()));
            }
        }
        let keep_remote_status = (!spec.contains_key("remote_status")
            && fields.iter().any(|f| f.name == "status" && f.map.is_some()))
        .then(|| shape.index_of("remote_status"))
        .flatten();
        let remote_id = fields.iter().find_map(|f| match (&f.name[..], &f.src) {
            ("remote_id", Src::Path(p)) => Some(p.clone()),
            _ => None,
        });
        let slot = |name: &str| {
            shape
                .index_of(name)
                .expect("every entity has the common fields")
        };
        Some(Mapping {
            shape,
            fields,
            keep_remote_status,
            remote_id,
            slots: EngineSlots {
                id: slot("id"),
                remote_id: slot("remote_id"),
                connection_id: slot("connection_id"),
                custom_fields: slot("custom_fields"),
                remote_was_deleted: slot("remote_was_deleted"),
            },
        })
    }

    /// The JSONPath of `remote_id`, when it is a plain path.
    pub fn remote_id_path(&self) -> Option<&FastPath> {
        self.remote_id.as_ref()
    }

    /// Maps one of the system's records into a unified record of
    /// `connection_id`, checked against the unified model. Errors name the field.
    pub fn to_unified(
        &self,
        src: &Value,
        connection_id: &str,
    ) -> Result<Map<String, Value>, MapError> {
        let mut slots = self.shape.slots();
        let mut raw_status = None;
        map_fields(&self.fields, src, &mut slots, &mut raw_status)?;
        if let (Some(i), Some(raw)) = (self.keep_remote_status, raw_status) {
            slots[i] = Slot::Value(raw);
        }
        let e = &self.slots;
        let remote_id = match &slots[e.remote_id] {
            Slot::Value(Value::String(s)) | Slot::Checked(Value::String(s)) => s.clone(),
            Slot::Value(Value::Number(n)) | Slot::Checked(Value::Number(n)) => n.to_string(),
            _ => return Err(MapError::NoRemoteId),
        };
        slots[e.id] = Slot::Checked(Value::String(format!("{connection_id}:{remote_id}")));
        slots[e.remote_id] = Slot::Checked(Value::String(remote_id));
        slots[e.connection_id] = Slot::Checked(Value::String(connection_id.to_string()));
        if slots[e.custom_fields] == Slot::Missing {
            slots[e.custom_fields] = Slot::Checked(Value::Object(Map::new()));
        }
        if slots[e.remote_was_deleted] == Slot::Missing {
            slots[e.remote_was_deleted] = Slot::Checked(Value::Bool(false));
        }
        self.shape
            .check_slots(slots)
            .map_err(|err| MapError::Model(err.message))
    }
}

/// Compiles the fields of `spec` against `shape` (the model's fields of the
/// entity, or of a purchase-order line).
fn compile_fields(
    owner: &str,
    spec: &BTreeMap<String, FieldSource>,
    at: &[Seg],
    problems: &mut Vec<Problem>,
    shape: &'static Shape,
) -> Vec<Field> {
    let known: Vec<&str> = shape.field_names().collect();
    let here = |name: &str| {
        let mut p = at.to_vec();
        p.push(Seg::Key(name.to_string()));
        p
    };
    let mut fields = Vec::new();
    for (name, source) in spec {
        if !known.contains(&name.as_str()) {
            let hint = crate::yaml::diagnostic::did_you_mean(name, known.iter().copied())
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
            spec.coalesce.is_some(),
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
                    "field `{name}` needs exactly one of path, const, join, coalesce, product, sum, from_lines, each or pattern (found {given})"
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
        } else if let Some(parts) = &spec.coalesce {
            let ps: Vec<_> = parts.iter().filter_map(|p| path(p, "coalesce")).collect();
            (ps.len() == parts.len()).then_some(Src::Coalesce(ps))
        } else if let Some(parts) = &spec.product {
            let ps: Vec<_> = parts.iter().filter_map(|p| path(p, "product")).collect();
            (ps.len() == parts.len()).then_some(Src::Product(ps))
        } else if let Some(p) = &spec.sum {
            path(p, "sum").map(Src::Sum)
        } else if let Some(f) = &spec.from_lines {
            let Some(lines) = shape.index_of("lines") else {
                problems.push((
                    here(name),
                    "invalid-mapping",
                    format!("`from_lines` sums `lines`, which {owner} does not have"),
                ));
                continue;
            };
            Some(Src::FromLines(f.clone(), Hint::default(), lines))
        } else if let Some(p) = &spec.each {
            let items = path(p, "each");
            let Some(line_shape) = shape.list_shape(name) else {
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
            let mut at = here(name);
            at.push(Seg::Key("fields".into()));
            let inner = compile_fields("a purchase_order line", &sub, &at, problems, line_shape);
            items.map(|i| Src::Each(i, inner, line_shape))
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
        let before = problems.len();
        let at_path = |p: &str, key: &str, problems: &mut Vec<Problem>| -> Option<FastPath> {
            FastPath::parse(p)
                .map_err(|m| {
                    let mut at = here(name);
                    at.push(Seg::Key(key.into()));
                    problems.push((at, "invalid-jsonpath", m));
                })
                .ok()
        };
        let divide_by = match &spec.divide_by {
            None => None,
            Some(Value::String(p)) if p.starts_with('$') => {
                at_path(p, "divide_by", problems).map(|fp| Divisor::Path(p.clone(), fp))
            }
            Some(v) => match money::parse(v) {
                Ok(Some(d)) if !d.is_zero() => Some(Divisor::Const(d)),
                _ => {
                    let mut at = here(name);
                    at.push(Seg::Key("divide_by".into()));
                    problems.push((
                        at,
                        "invalid-mapping",
                        format!(
                            "`divide_by` takes a JSONPath (`$.NetPriceQuantity`) or a number other than 0, not {v}"
                        ),
                    ));
                    None
                }
            },
        };
        let mut cases = Vec::new();
        for (i, c) in spec.cases.iter().flatten().enumerate() {
            let values = match (&c.when.equals, &c.when.one_of) {
                (Some(v), None) => vec![v.clone()],
                (None, Some(vs)) => vs.clone(),
                _ => {
                    let mut at = here(name);
                    at.extend([
                        Seg::Key("cases".into()),
                        Seg::Index(i),
                        Seg::Key("when".into()),
                    ]);
                    problems.push((
                        at,
                        "invalid-mapping",
                        "a case's `when` needs exactly one of `equals` and `in`".into(),
                    ));
                    continue;
                }
            };
            if let Some(fp) = at_path(&c.when.path, "cases", problems) {
                cases.push((fp, values, c.value.clone()));
            }
        }
        if problems.len() > before {
            continue;
        }
        if let Some(src) = src {
            fields.push(Field {
                name: name.clone(),
                slot: shape
                    .index_of(name)
                    .expect("the shape has every field of the schema"),
                src,
                divide_by,
                round: spec.round,
                convert: spec.convert,
                map: spec.map.clone(),
                default: spec.default.clone(),
                catch_all: None,
                cases,
                number: shape.is_number(
                    shape
                        .index_of(name)
                        .expect("the shape has every field of the schema"),
                ),
            });
        }
    }
    for r in shape.required_names() {
        if !ENGINE_FIELDS.contains(&r) && !spec.contains_key(r) {
            problems.push((
                at.to_vec(),
                "missing-field",
                format!("the mapping of {owner} lacks `{r}`, which the unified model requires"),
            ));
        }
    }
    // `from_lines` after `lines`.
    fields.sort_by_key(|f| matches!(f.src, Src::FromLines(..)));
    fields
}

fn map_fields(
    fields: &[Field],
    src: &Value,
    slots: &mut [Slot],
    raw_status: &mut Option<Value>,
) -> Result<(), MapError> {
    let fail = |f: &Field, m: String| MapError::Mapping(format!("field `{}`: {m}", f.name));
    for f in fields {
        let mut checked = false;
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
                        _ => return Err(fail(f, "a part of the key is missing".into())),
                    }
                }
                Value::String(s)
            }
            Src::Coalesce(paths) => paths
                .iter()
                .filter_map(|p| p.first(src))
                .find(|v| !v.is_null() && v.as_str().is_none_or(|s| !s.trim().is_empty()))
                .cloned()
                .unwrap_or(Value::Null),
            Src::Product(parts) => {
                let mut acc = Decimal::ONE;
                for p in parts {
                    let factor = money::parse(p.first(src).unwrap_or(&Value::Null))
                        .map_err(|m| fail(f, m))?
                        .unwrap_or(Decimal::ZERO);
                    acc = acc
                        .checked_mul(factor)
                        .ok_or_else(|| fail(f, "the product is out of range".into()))?;
                }
                checked = f.number;
                money::to_json(acc).map_err(|m| fail(f, m))?
            }
            Src::Sum(p) => {
                let mut acc = Decimal::ZERO;
                for v in p.all(src) {
                    acc += money::parse(v)
                        .map_err(|m| fail(f, m))?
                        .unwrap_or(Decimal::ZERO);
                }
                checked = f.number;
                money::to_json(acc).map_err(|m| fail(f, m))?
            }
            Src::FromLines(field, hint, lines) => {
                let mut acc = Decimal::ZERO;
                if let Slot::Checked(Value::Array(ls)) | Slot::Value(Value::Array(ls)) =
                    &slots[*lines]
                {
                    for l in ls {
                        let v = l.as_object().and_then(|l| member(l, field, hint));
                        acc += money::parse(v.unwrap_or(&Value::Null))
                            .map_err(|m| fail(f, m))?
                            .unwrap_or(Decimal::ZERO);
                    }
                }
                checked = f.number;
                money::to_json(acc).map_err(|m| fail(f, m))?
            }
            Src::Each(items, sub, shape) => {
                let elems = items.all(src);
                let mut list = Vec::with_capacity(elems.len());
                for (i, e) in elems.into_iter().enumerate() {
                    let mut line = shape.slots();
                    let mut ignored = None;
                    map_fields(sub, e, &mut line, &mut ignored).map_err(|err| match err {
                        MapError::Mapping(m) => MapError::Mapping(format!("{}[{i}]: {m}", f.name)),
                        other => other,
                    })?;
                    let m = shape.check_slots(line).map_err(|err| {
                        MapError::Model(format!("{}[{i}]: {}", f.name, err.message))
                    })?;
                    list.push(Value::Object(m));
                }
                checked = true;
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
        if let Some((_, _, value)) = f.cases.iter().find(|(p, values, _)| {
            let seen = p.first(src).unwrap_or(&Value::Null);
            values.iter().any(|want| {
                want == seen || (!seen.is_null() && scalar_text(want) == scalar_text(seen))
            })
        }) {
            if f.name == "status" && f.map.is_some() && !v.is_null() {
                *raw_status = Some(Value::String(scalar_text(&v).into_owned()));
            }
            slots[f.slot] = Slot::Value(value.clone());
            continue;
        }
        let v = if (f.divide_by.is_some() || f.round.is_some()) && !v.is_null() {
            checked = f.number;
            arithmetic(f, v, src).map_err(|m| fail(f, m))?
        } else {
            v
        };
        let v = match f.convert {
            Some(c) if !v.is_null() => {
                // Timestamps and dates come out of their converters in the model's form.
                checked = matches!(
                    c,
                    Converter::SapDate | Converter::Datetime | Converter::Date
                ) || (c == Converter::Number && f.number);
                convert(c, &v).map_err(|m| fail(f, m))?
            }
            _ => v,
        };
        let v = match &f.map {
            Some(map) if !v.is_null() => {
                checked = false;
                let key = scalar_text(&v);
                let found = match map.get(key.as_ref()) {
                    Some(m) => m.clone(),
                    None => match f.default.as_ref().or(f.catch_all.as_ref()) {
                        Some(d) => {
                            if f.default.is_none() {
                                UNMAPPED_VALUES.fetch_add(1, Ordering::Relaxed);
                                tracing::warn!(
                                    field = %f.name,
                                    value = %key,
                                    "a value missing from the value map became `other` (kept as remote_status)"
                                );
                            }
                            d.clone()
                        }
                        None => {
                            return Err(fail(
                                f,
                                format!(
                                    "value `{key}` is not in the value map (known: {})",
                                    map.keys().cloned().collect::<Vec<_>>().join(", ")
                                ),
                            ));
                        }
                    },
                };
                if f.name == "status" {
                    *raw_status = Some(Value::String(key.into_owned()));
                }
                found
            }
            _ => v,
        };
        let v = match (&v, &f.default) {
            (Value::Null, Some(d)) => {
                checked = false;
                d.clone()
            }
            _ => v,
        };
        if !v.is_null() {
            slots[f.slot] = if checked {
                Slot::Checked(v)
            } else {
                Slot::Value(v)
            };
        }
    }
    Ok(())
}

/// `divide_by` and `round` applied to a field's value, in exact decimals.
fn arithmetic(f: &Field, v: Value, src: &Value) -> Result<Value, String> {
    let Some(mut d) = money::parse(&v)? else {
        return Ok(Value::Null);
    };
    if let Some(divisor) = &f.divide_by {
        let by = match divisor {
            Divisor::Const(c) => *c,
            Divisor::Path(text, p) => match money::parse(p.first(src).unwrap_or(&Value::Null))? {
                Some(b) if !b.is_zero() => b,
                Some(_) => return Err(format!("cannot divide by `{text}`: it is 0")),
                None => return Err(format!("cannot divide by `{text}`: it is missing")),
            },
        };
        // A price unit of 1 (the common case) divides nothing.
        if by != Decimal::ONE {
            d = money::round_quotient(
                d.checked_div(by)
                    .ok_or_else(|| format!("{d} / {by} is out of range"))?,
                f.round.unwrap_or(money::DIVISION_SCALE),
            );
        } else if let Some(scale) = f.round {
            d = d.round_dp_with_strategy(
                scale,
                rust_decimal::RoundingStrategy::MidpointAwayFromZero,
            );
        }
    } else if let Some(scale) = f.round {
        d = d.round_dp_with_strategy(scale, rust_decimal::RoundingStrategy::MidpointAwayFromZero);
    }
    money::to_json(d)
}

fn scalar_text(v: &Value) -> std::borrow::Cow<'_, str> {
    match v {
        Value::String(s) => std::borrow::Cow::Borrowed(s),
        other => std::borrow::Cow::Owned(other.to_string()),
    }
}

fn glob(pattern: &str, name: &str) -> bool {
    match (pattern.strip_suffix('*'), pattern.strip_prefix('*')) {
        (Some(prefix), _) if !prefix.contains('*') => name.starts_with(prefix),
        (_, Some(suffix)) if !suffix.contains('*') => name.ends_with(suffix),
        _ => pattern == name,
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

/// A timestamp composed from its parts, as JSON-RPC systems send them
/// (Tryton: `{"__class__": "datetime", "year": 2024, "month": 1, "day": 2,
/// "hour": 3, "minute": 4, "second": 5, "microsecond": 6}`; a date has no
/// time parts), read as UTC.
fn from_parts(o: &Map<String, Value>) -> Result<DateTime<Utc>, String> {
    let part = |k: &str, default: Option<i64>| -> Result<i64, String> {
        match o.get(k) {
            Some(Value::Number(n)) => n
                .as_i64()
                .ok_or_else(|| format!("`{k}` {n} is not a whole number")),
            Some(Value::String(s)) => s
                .trim()
                .parse()
                .map_err(|_| format!("`{k}` `{s}` is not a number")),
            None | Some(Value::Null) => default.ok_or_else(|| format!("the date has no `{k}`")),
            Some(other) => Err(format!("`{k}` {other} is not a number")),
        }
    };
    let date = NaiveDate::from_ymd_opt(
        part("year", None)? as i32,
        part("month", None)? as u32,
        part("day", None)? as u32,
    )
    .ok_or_else(|| "the date's year, month and day are not a date".to_string())?;
    let t = date
        .and_hms_micro_opt(
            part("hour", Some(0))? as u32,
            part("minute", Some(0))? as u32,
            part("second", Some(0))? as u32,
            part("microsecond", Some(0))? as u32,
        )
        .ok_or_else(|| "the time's parts are out of range".to_string())?;
    Ok(t.and_utc())
}

/// Applies a converter to a non-null value.
pub fn convert(c: Converter, v: &Value) -> Result<Value, String> {
    // Dates and timestamps may come as their parts.
    if let (Converter::Datetime | Converter::Date | Converter::SapDate, Value::Object(o)) = (c, v) {
        let d = from_parts(o)?;
        return Ok(match c {
            Converter::Date => Value::String(d.date_naive().to_string()),
            _ => rfc3339(d),
        });
    }
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
            // Already `YYYY-MM-DD` (zero-padded, so in the model's form)?
            let b = s.as_bytes();
            if b.len() == 10 && b[4] == b'-' && b[7] == b'-' && s.parse::<NaiveDate>().is_ok() {
                Value::String(s.to_string())
            } else {
                let d = parse_datetime(s).ok_or_else(|| format!("`{s}` is not a date"))?;
                Value::String(d.date_naive().to_string())
            }
        }
        Converter::Number => money::to_json(money::parse(v)?.unwrap_or(Decimal::ZERO))?,
        Converter::Integer => {
            let d = money::parse(v)?.unwrap_or(Decimal::ZERO);
            if !d.fract().is_zero() {
                return Err(format!("{d} is not an integer"));
            }
            Value::from(
                d.to_i64()
                    .ok_or_else(|| format!("{d} is out of the range of an integer"))?,
            )
        }
        Converter::String => Value::String(scalar_text(v).into_owned()),
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
    fn string_filters_take_the_fast_route_and_agree_with_the_full_engine() {
        // Elements without the member, with a number or null in it, and
        // children that are not objects, in an array and in an object.
        let doc = json!({
            "items": {"results": [
                {"Code": "L", "n": 1}, {"Code": "", "n": 2}, {"n": 3},
                {"Code": null, "n": 4}, {"Code": 5, "n": 5}, "L", [1], {"Code": "S", "n": 6},
            ]},
            "byKey": {"a": {"Code": "L"}, "b": {"Code": "S"}, "c": 7},
        });
        for (text, fast) in [
            ("$.items.results[?@.Code != 'L']", true),
            ("$.items.results[?@.Code == 'L']", true),
            ("$.items.results[?@.Code=='S']", true),
            ("$.items.results[?@.Code != \"\"]", true),
            ("$['items'].results[?@.Code != 'L']", true),
            ("$.byKey[?@.Code != 'L']", true),
            ("$.missing[?@.Code != 'L']", true),
            ("$.items.results[?@.Code != 'L' && @.n > 1]", false),
            ("$.items.results[?@.Code != 1]", false),
            ("$.items.results[?@.Code != 'it''s']", false),
            ("$.items.results[?@.Code != 'L'].n", false),
            ("$.items.results[*][?@.Code != 'L']", false),
        ] {
            let p = match FastPath::parse(text) {
                Ok(p) => p,
                Err(_) => continue,
            };
            assert_eq!(matches!(p, FastPath::Filter { .. }), fast, "{text}");
            let expected: Vec<Value> = Query::parse(text).unwrap().select(&doc);
            let got: Vec<Value> = p.all(&doc).into_iter().cloned().collect();
            assert_eq!(got, expected, "{text}");
            assert_eq!(p.first(&doc), expected.first(), "{text}");
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
    fn converted_timestamps_and_dates_are_already_in_the_models_form() {
        // `to_unified` takes these converters' output without re-checking it,
        // so it must be exactly what the typed model serializes.
        for text in [
            "/Date(1700000000000)/",
            "/Date(1700000000123+0000)/",
            "2024-03-01T10:00:00",
            "2024-03-01T10:00:00.5+02:00",
            "2024-03-01T10:00:00.123456789Z",
            "2024-03-01",
        ] {
            let v = convert(Converter::Datetime, &json!(text)).unwrap();
            let typed: DateTime<Utc> = serde_json::from_value(v.clone()).unwrap();
            assert_eq!(serde_json::to_value(typed).unwrap(), v, "{text}");
            let d = convert(Converter::Date, &json!(text)).unwrap();
            let typed: NaiveDate = serde_json::from_value(d.clone()).unwrap();
            assert_eq!(serde_json::to_value(typed).unwrap(), d, "{text}");
        }
        assert_eq!(
            convert(Converter::Date, &json!("2024-3-1")).unwrap(),
            json!("2024-03-01"),
            "a date without zero padding is written in the model's form"
        );
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

    #[test]
    fn the_models_status_enums_are_read_from_its_schema() {
        let po = enum_values(Entity::PurchaseOrder, "status").expect("an enum");
        assert!(po.iter().any(|v| v == "draft"), "{po:?}");
        assert!(po.iter().any(|v| v == "pending_approval"), "{po:?}");
        let v = enum_values(Entity::Vendor, "status").expect("an enum");
        assert!(v.iter().any(|x| x == "blocked"), "{v:?}");
        assert_eq!(enum_values(Entity::PurchaseOrder, "number"), None);
    }

    #[test]
    fn a_value_missing_from_the_map_becomes_the_catch_all_with_a_warning() {
        let field = |catch_all: Option<Value>| Field {
            name: "status".into(),
            slot: 0,
            src: Src::Path(FastPath::parse("$.s").unwrap()),
            convert: None,
            map: Some([("01".to_string(), json!("draft"))].into()),
            default: None,
            catch_all,
            divide_by: None,
            round: None,
            cases: Vec::new(),
            number: false,
        };
        let with = [field(Some(json!("other")))];
        let before = unmapped_values();
        let mut slots = vec![Slot::Missing];
        let mut raw = None;
        map_fields(&with, &json!({"s": "04"}), &mut slots, &mut raw).unwrap();
        assert!(matches!(&slots[0], Slot::Value(v) if v == "other"));
        assert_eq!(raw, Some(json!("04")), "the system's value is kept");
        assert!(unmapped_values() > before, "counted");

        let mut slots = vec![Slot::Missing];
        map_fields(&with, &json!({"s": "01"}), &mut slots, &mut raw).unwrap();
        assert!(matches!(&slots[0], Slot::Value(v) if v == "draft"));

        let without = [field(None)];
        let mut slots = vec![Slot::Missing];
        let e = map_fields(&without, &json!({"s": "04"}), &mut slots, &mut raw).unwrap_err();
        assert!(
            matches!(&e, MapError::Mapping(m) if m.contains("not in the value map")),
            "{e:?}"
        );
    }

    /// An SAP-shaped order: prices per `NetPriceQuantity` units, a deleted
    /// item, decimals as strings.
    fn sap_mapping() -> Mapping {
        let spec: BTreeMap<String, FieldSource> = serde_json::from_value(json!({
            "remote_id": "$.PurchaseOrder",
            "number": "$.PurchaseOrder",
            "vendor_id": {"coalesce": ["$.Supplier", "$.InvoicingParty"]},
            "status": {
                "path": "$.Status",
                "map": {"01": "draft", "05": "approved"},
                "cases": [{"when": {"path": "$.DeletionCode", "equals": "L"}, "value": "cancelled"}]
            },
            "currency": "$.Currency",
            "order_date": {"const": "2024-01-01"},
            "remote_created_at": {"const": "2024-01-01T00:00:00Z"},
            "remote_updated_at": {"const": "2024-01-01T00:00:00Z"},
            "lines": {
                "each": "$.Items[?@.DeletionCode != 'L']",
                "fields": {
                    "line_number": {"path": "$.Item", "convert": "integer"},
                    "description": "$.Text",
                    "quantity": {"path": "$.Qty", "convert": "number"},
                    "unit_of_measure": "$.Unit",
                    "unit_price": {"path": "$.NetPrice", "divide_by": "$.PriceUnit"},
                    "amount": {"product": ["$.Qty", "$.NetPrice"], "divide_by": "$.PriceUnit", "round": 2}
                }
            },
            "total": {"from_lines": "amount"},
            "total_excluding_tax": {"from_lines": "amount"}
        }))
        .unwrap();
        let mut problems = Vec::new();
        let m = Mapping::compile(Entity::PurchaseOrder, &spec, &mut problems);
        assert!(problems.is_empty(), "{problems:?}");
        m.unwrap()
    }

    fn sap_order(items: Value) -> Value {
        json!({"PurchaseOrder": "4500000001", "InvoicingParty": "17300001", "Status": "05",
               "Currency": "JPY", "Items": items})
    }

    #[test]
    fn prices_per_price_unit_are_divided_exactly_and_deleted_lines_are_left_out() {
        let m = sap_mapping();
        let po = m
            .to_unified(
                &sap_order(json!([
                    {"Item": "10", "Text": "Bolts", "Qty": "400", "Unit": "PC",
                     "NetPrice": "3286.00", "PriceUnit": "100"},
                    {"Item": "20", "Text": "Nuts", "Qty": "3", "Unit": "PC",
                     "NetPrice": "0.10", "PriceUnit": "1"},
                    {"Item": "30", "Text": "Washers", "Qty": "3", "Unit": "PC",
                     "NetPrice": "0.20", "PriceUnit": "1"},
                    {"Item": "40", "Text": "Deleted", "Qty": "1000", "Unit": "PC",
                     "NetPrice": "99.00", "PriceUnit": "1", "DeletionCode": "L"}
                ])),
                "sap",
            )
            .unwrap();
        let lines = po["lines"].as_array().unwrap();
        assert_eq!(lines.len(), 3, "the deleted item is not a line: {lines:?}");
        assert_eq!(
            lines[0]["unit_price"],
            json!(32.86),
            "3,286 JPY per 100 pieces"
        );
        assert_eq!(lines[0]["amount"], json!(13144), "400 × 3,286 / 100");
        assert_eq!(lines[1]["amount"], json!(0.3));
        // 13144 + 0.3 + 0.6: no binary drift in the sum.
        assert_eq!(po["total"], json!(13144.9));
        assert_eq!(po["total"].to_string(), "13144.9");
        assert_eq!(po["total_excluding_tax"], json!(13144.9));
        assert_eq!(
            po["vendor_id"], "17300001",
            "coalesce falls back to the second path"
        );
        assert_eq!(po["status"], "approved");
    }

    #[test]
    fn a_case_overrides_the_mapped_status_and_keeps_the_remote_one() {
        let mut order = sap_order(json!([]));
        order["DeletionCode"] = json!("L");
        let po = sap_mapping().to_unified(&order, "sap").unwrap();
        assert_eq!(po["status"], "cancelled");
        assert_eq!(po["remote_status"], "05");
        assert_eq!(po["total"], json!(0));
        assert_eq!(po["total"].to_string(), "0");
    }

    #[test]
    fn a_missing_or_zero_price_unit_fails_the_record_naming_the_field() {
        for (unit, why) in [(json!(null), "it is missing"), (json!("0"), "it is 0")] {
            let e = sap_mapping()
                .to_unified(
                    &sap_order(json!([{"Item": "10", "Text": "x", "Qty": "1", "Unit": "PC",
                                       "NetPrice": "5", "PriceUnit": unit}])),
                    "sap",
                )
                .unwrap_err();
            let MapError::Mapping(m) = e else {
                panic!("{e:?}")
            };
            assert!(m.starts_with("lines[0]: field `"), "{m}");
            assert!(
                m.contains(&format!("cannot divide by `$.PriceUnit`: {why}")),
                "{m}"
            );
        }
    }

    #[test]
    fn dates_and_timestamps_compose_from_their_parts() {
        let dt = json!({"__class__": "datetime", "year": 2024, "month": 1, "day": 2,
                        "hour": 3, "minute": 4, "second": 5, "microsecond": 600000});
        assert_eq!(
            convert(Converter::Datetime, &dt).unwrap(),
            json!("2024-01-02T03:04:05.600Z")
        );
        let d = json!({"__class__": "date", "year": 2024, "month": 2, "day": 29});
        assert_eq!(convert(Converter::Date, &d).unwrap(), json!("2024-02-29"));
        assert_eq!(
            convert(Converter::Datetime, &d).unwrap(),
            json!("2024-02-29T00:00:00Z")
        );
        let bad = json!({"year": 2023, "month": 2, "day": 29});
        assert!(
            convert(Converter::Date, &bad)
                .unwrap_err()
                .contains("not a date")
        );
    }

    #[test]
    fn bad_arithmetic_and_cases_are_reported_at_compile_time() {
        let spec: BTreeMap<String, FieldSource> = serde_json::from_value(json!({
            "total": {"path": "$.t", "divide_by": 0},
            "status": {"path": "$.s", "cases": [{"when": {"path": "$.d"}, "value": "cancelled"}]}
        }))
        .unwrap();
        let mut problems = Vec::new();
        assert!(Mapping::compile(Entity::PurchaseOrder, &spec, &mut problems).is_none());
        let text = format!("{problems:?}");
        assert!(text.contains("`divide_by` takes a JSONPath"), "{text}");
        assert!(text.contains("exactly one of `equals` and `in`"), "{text}");
    }
}
