//! A fast record checker compiled from an entity's JSON Schema.
//!
//! [`Entity::validate`] checks a record by deserializing it into the typed
//! model and serializing it back. The connectors' hot path maps thousands of
//! records per page, so [`Shape`] does the same checks (types, enum values,
//! dates and timestamps, required and unknown fields, defaults) in place and
//! produces the same JSON, without the round trip. The shapes are derived from
//! the schemars schemas of the typed model, so they cannot drift from it (a
//! test compares both on every sandbox record).

use std::collections::BTreeSet;
use std::sync::{Arc, OnceLock};

use chrono::{DateTime, NaiveDate, Utc};
use serde_json::{Map, Value};

use super::{Entity, RecordError};

#[derive(Debug)]
enum Kind {
    Str,
    Num,
    Int,
    Bool,
    DateTime,
    Date,
    Enum(BTreeSet<String>),
    Object,
    Any,
    List(Arc<Shape>),
}

#[derive(Debug)]
struct Field {
    name: String,
    kind: Kind,
    nullable: bool,
    /// Value used when the field is missing; `None` = required.
    default: Option<Value>,
    /// Left out of the output when null (`raw`).
    omit_null: bool,
}

/// The compiled shape of a record (or of a purchase-order line).
#[derive(Debug)]
pub struct Shape {
    fields: Vec<Field>,
    /// The output's keys in the model's order (fields left out when null
    /// excepted), each with null: a checked record is a copy of it with its
    /// values filled in, so building it hashes no key.
    template: Map<String, Value>,
}

fn resolve<'a>(s: &'a Value, root: &'a Value) -> &'a Value {
    match s.get("$ref").and_then(Value::as_str) {
        Some(r) => r
            .strip_prefix("#/$defs/")
            .and_then(|n| root.get("$defs")?.get(n))
            .unwrap_or(s),
        None => s,
    }
}

fn kind_of(s: &Value, root: &Value) -> (Kind, bool) {
    let s = resolve(s, root);
    if let Some(Value::Array(branches)) = s.get("anyOf").or_else(|| s.get("oneOf")) {
        let consts: Option<BTreeSet<String>> = branches
            .iter()
            .map(|b| {
                resolve(b, root)
                    .get("const")
                    .and_then(Value::as_str)
                    .map(str::to_string)
            })
            .collect();
        if let Some(values) = consts {
            return (Kind::Enum(values), false);
        }
        let mut nullable = false;
        let mut kind = Kind::Any;
        for b in branches {
            let b = resolve(b, root);
            if b.get("type").and_then(Value::as_str) == Some("null") {
                nullable = true;
            } else {
                kind = kind_of(b, root).0;
            }
        }
        return (kind, nullable);
    }
    if let Some(Value::Array(values)) = s.get("enum") {
        return (
            Kind::Enum(
                values
                    .iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect(),
            ),
            false,
        );
    }
    let (ty, nullable) = match s.get("type") {
        Some(Value::String(t)) => (t.as_str(), false),
        Some(Value::Array(ts)) => (
            ts.iter()
                .filter_map(Value::as_str)
                .find(|t| *t != "null")
                .unwrap_or("null"),
            ts.iter().any(|t| t == "null"),
        ),
        _ => return (Kind::Any, true),
    };
    let format = s.get("format").and_then(Value::as_str);
    let kind = match (ty, format) {
        ("string", Some("date-time")) => Kind::DateTime,
        ("string", Some("date")) => Kind::Date,
        ("string", _) => Kind::Str,
        ("number", _) => Kind::Num,
        ("integer", _) => Kind::Int,
        ("boolean", _) => Kind::Bool,
        ("object", _) => Kind::Object,
        ("array", _) => match s.get("items") {
            Some(items) => Kind::List(Arc::new(Shape::from_schema(resolve(items, root), root))),
            None => Kind::Any,
        },
        _ => Kind::Any,
    };
    (kind, nullable)
}

impl Shape {
    fn from_schema(schema: &Value, root: &Value) -> Shape {
        let required: BTreeSet<&str> = schema
            .get("required")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut fields = Vec::new();
        for (name, prop) in schema
            .get("properties")
            .and_then(Value::as_object)
            .into_iter()
            .flatten()
        {
            let (kind, nullable) = kind_of(prop, root);
            let explicit_default = resolve(prop, root)
                .get("default")
                .or_else(|| prop.get("default"))
                .cloned();
            let default = if required.contains(name.as_str()) {
                None
            } else {
                Some(explicit_default.unwrap_or(Value::Null))
            };
            fields.push(Field {
                omit_null: name == "raw",
                name: name.clone(),
                kind,
                nullable: nullable || matches!(default, Some(Value::Null)),
                default,
            });
        }
        let template = fields
            .iter()
            .filter(|f| !f.omit_null)
            .map(|f| (f.name.clone(), Value::Null))
            .collect();
        Shape { fields, template }
    }

    /// The shape of an entity's records.
    pub fn of(entity: Entity) -> &'static Shape {
        static SHAPES: OnceLock<Vec<(Entity, Shape)>> = OnceLock::new();
        let all = SHAPES.get_or_init(|| {
            Entity::ALL
                .iter()
                .map(|e| {
                    let schema = e.json_schema();
                    (*e, Shape::from_schema(&schema, &schema))
                })
                .collect()
        });
        &all.iter()
            .find(|(e, _)| *e == entity)
            .expect("every entity")
            .1
    }

    /// The top-level field names, in the model's order.
    pub fn field_names(&self) -> impl Iterator<Item = &str> {
        self.fields.iter().map(|f| f.name.as_str())
    }

    /// Checks a record and returns it as the typed model would serialize it.
    pub fn check(&self, mut record: Map<String, Value>) -> Result<Value, RecordError> {
        let mut slots = self.slots();
        for (i, f) in self.fields.iter().enumerate() {
            if let Some(v) = record.remove(&f.name) {
                slots[i] = Slot::Value(v);
            }
        }
        if let Some(extra) = record.keys().next() {
            return Err(RecordError {
                message: format!("unknown field `{extra}`"),
            });
        }
        self.check_slots(slots).map(Value::Object)
    }

    /// One empty slot per field, in the model's order.
    pub fn slots(&self) -> Vec<Slot> {
        std::iter::repeat_with(|| Slot::Missing)
            .take(self.fields.len())
            .collect()
    }

    /// The fields a record must have (no default).
    pub fn required_names(&self) -> impl Iterator<Item = &str> {
        self.fields
            .iter()
            .filter(|f| f.default.is_none())
            .map(|f| f.name.as_str())
    }

    /// The slot index of a field.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.fields.iter().position(|f| f.name == name)
    }

    /// Whether the field at `slot` is a non-nullable number (a value that
    /// [`super::money::to_json`] made needs no second check there).
    pub fn is_number(&self, slot: usize) -> bool {
        self.fields
            .get(slot)
            .is_some_and(|f| matches!(f.kind, Kind::Num) && !f.nullable)
    }

    /// The shape of the elements of a list field (a purchase order's `lines`).
    pub fn list_shape(&self, name: &str) -> Option<&Shape> {
        self.fields.iter().find_map(|f| match &f.kind {
            Kind::List(s) if f.name == name => Some(&**s),
            _ => None,
        })
    }

    /// Checks a record given as one slot per field (see [`Shape::slots`])
    /// and returns it as the typed model would serialize it. Slots marked
    /// [`Slot::Checked`] hold values already in the model's form (a
    /// converter's canonical timestamp, a list of checked lines) and are
    /// taken as they are.
    pub fn check_slots(&self, slots: Vec<Slot>) -> Result<Map<String, Value>, RecordError> {
        let omitted_has_value = self.fields.iter().zip(&slots).any(|(f, s)| {
            f.omit_null && matches!(s, Slot::Value(v) | Slot::Checked(v) if !v.is_null())
        });
        if omitted_has_value {
            let mut out = Map::with_capacity(self.fields.len());
            for (f, slot) in self.fields.iter().zip(slots) {
                if let Some(v) = Self::check_slot(f, slot)? {
                    out.insert(f.name.clone(), v);
                }
            }
            return Ok(out);
        }
        // The common case: every key the output has is in the template, in order.
        let mut out = self.template.clone();
        let mut values = out.values_mut();
        for (f, slot) in self.fields.iter().zip(slots) {
            if f.omit_null {
                continue;
            }
            let v = Self::check_slot(f, slot)?;
            *values.next().expect("the template has every field") = v.unwrap_or(Value::Null);
        }
        Ok(out)
    }

    /// One field's value as the model writes it; `None` when it is left out.
    fn check_slot(f: &Field, slot: Slot) -> Result<Option<Value>, RecordError> {
        let err = |m: String| RecordError { message: m };
        let v = match slot {
            Slot::Checked(v) => return Ok(Some(v)),
            Slot::Value(v) => v,
            Slot::Missing => match &f.default {
                Some(d) => d.clone(),
                None => return Err(err(format!("missing field `{}`", f.name))),
            },
        };
        if v.is_null() {
            if !f.nullable {
                return Err(err(format!(
                    "invalid type: null, expected a value for `{}`",
                    f.name
                )));
            }
            return Ok((!f.omit_null).then_some(Value::Null));
        }
        let bad = |what: &str, v: &Value| {
            err(format!(
                "invalid value {v} for `{}`: expected {what}",
                f.name
            ))
        };
        let v = match &f.kind {
            Kind::Str => match v {
                Value::String(_) => v,
                other => return Err(bad("a string", &other)),
            },
            Kind::Num => match &v {
                Value::Number(n) => super::money::normalize_number(n)
                    .map_err(|m| err(format!("invalid value for `{}`: {m}", f.name)))?,
                _ => return Err(bad("a number", &v)),
            },
            Kind::Int => match v.as_u64() {
                Some(n) if n <= u64::from(u32::MAX) => v,
                _ => return Err(bad("a non-negative integer", &v)),
            },
            Kind::Bool => match v {
                Value::Bool(_) => v,
                other => return Err(bad("a boolean", &other)),
            },
            Kind::DateTime => match v.as_str().and_then(|s| s.parse::<DateTime<Utc>>().ok()) {
                Some(d) => serde_json::to_value(d).expect("timestamps serialize"),
                None => return Err(bad("an RFC 3339 timestamp", &v)),
            },
            Kind::Date => match v.as_str().and_then(|s| s.parse::<NaiveDate>().ok()) {
                Some(d) => serde_json::to_value(d).expect("dates serialize"),
                None => return Err(bad("a YYYY-MM-DD date", &v)),
            },
            Kind::Enum(values) => match v.as_str() {
                Some(s) if values.contains(s) => v,
                _ => {
                    return Err(err(format!(
                        "unknown variant {v} for `{}`, expected one of {}",
                        f.name,
                        values.iter().cloned().collect::<Vec<_>>().join(", ")
                    )));
                }
            },
            Kind::Object => match v {
                Value::Object(_) => v,
                other => return Err(bad("an object", &other)),
            },
            Kind::Any => v,
            Kind::List(shape) => match v {
                Value::Array(items) => Value::Array(
                    items
                        .into_iter()
                        .enumerate()
                        .map(|(i, item)| match item {
                            Value::Object(m) => shape
                                .check(m)
                                .map_err(|e| err(format!("{}[{i}]: {}", f.name, e.message))),
                            other => Err(bad("a list of objects", &other)),
                        })
                        .collect::<Result<_, _>>()?,
                ),
                other => return Err(bad("a list", &other)),
            },
        };
        Ok(Some(v))
    }
}

/// A field's value on its way into [`Shape::check_slots`].
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Slot {
    /// Not given: the field's default, or an error when it is required.
    #[default]
    Missing,
    /// A value to check.
    Value(Value),
    /// A value already in the model's form, taken as it is.
    Checked(Value),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connectors::sandbox::DATA;

    #[test]
    fn the_fast_check_agrees_with_the_typed_model_on_every_sandbox_record() {
        for e in Entity::ALL {
            for r in DATA.records(e) {
                let typed = e.validate(r).unwrap();
                let fast = Shape::of(e).check(r.as_object().unwrap().clone()).unwrap();
                assert_eq!(fast, typed, "{e}");
                assert_eq!(
                    serde_json::to_string(&fast).unwrap(),
                    serde_json::to_string(&typed).unwrap(),
                    "{e}: same key order"
                );
            }
        }
    }

    #[test]
    fn the_fast_check_refuses_what_the_typed_model_refuses() {
        let good = DATA.records(Entity::PurchaseOrder)[0]
            .as_object()
            .unwrap()
            .clone();
        let cases: Vec<(&str, Value)> = vec![
            ("status", Value::from("lost")),
            ("total", Value::from("12")),
            ("order_date", Value::from("2024-13-01")),
            ("remote_updated_at", Value::from("yesterday")),
            ("number", Value::Null),
        ];
        for (field, bad) in cases {
            let mut r = good.clone();
            r.insert(field.into(), bad.clone());
            assert!(
                Entity::PurchaseOrder
                    .validate(&Value::Object(r.clone()))
                    .is_err()
            );
            let e = Shape::of(Entity::PurchaseOrder).check(r).unwrap_err();
            assert!(e.message.contains(field), "{field}: {}", e.message);
        }
        let mut r = good.clone();
        r.insert("colour".into(), Value::from("red"));
        assert!(
            Shape::of(Entity::PurchaseOrder)
                .check(r)
                .unwrap_err()
                .message
                .contains("unknown field `colour`")
        );
        let mut r = good;
        r.remove("vendor_id");
        assert!(
            Shape::of(Entity::PurchaseOrder)
                .check(r)
                .unwrap_err()
                .message
                .contains("missing field `vendor_id`")
        );
    }
}
