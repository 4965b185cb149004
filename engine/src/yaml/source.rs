//! A YAML document as a tree of nodes that remember where they are.
//!
//! The typed model ([`crate::flow::model`]) has no positions; validation works on
//! it and asks this tree for the line and column of a path such as
//! `steps[2].needs[0]`. Parsing goes through serde-saphyr, whose `Spanned`
//! wrapper gives each node's location.

use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use serde_saphyr::Spanned;

/// A position in a source file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Loc {
    /// 1-based line.
    pub line: usize,
    /// 1-based column (characters).
    pub column: usize,
}

impl From<serde_saphyr::Location> for Loc {
    fn from(l: serde_saphyr::Location) -> Self {
        Loc {
            line: usize::try_from(l.line()).unwrap_or(0),
            column: usize::try_from(l.column()).unwrap_or(0),
        }
    }
}

/// One YAML node with its location.
#[derive(Debug, Clone)]
pub struct Node {
    /// The value.
    pub value: NodeValue,
    /// Where the value starts.
    pub loc: Loc,
}

/// A mapping key with its location.
#[derive(Debug, Clone)]
pub struct Key {
    /// The key as text.
    pub name: String,
    /// Where the key starts.
    pub loc: Loc,
}

/// The value of a [`Node`].
#[derive(Debug, Clone)]
pub enum NodeValue {
    /// `null` or `~` or nothing.
    Null,
    /// A boolean.
    Bool(bool),
    /// A number.
    Number(Number),
    /// A string.
    Str(String),
    /// A sequence.
    Seq(Vec<Node>),
    /// A mapping, in source order.
    Map(Vec<(Key, Node)>),
}

/// One step of a path into a document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    /// A mapping key.
    Key(String),
    /// A sequence index.
    Index(usize),
}

impl From<&str> for Seg {
    fn from(s: &str) -> Self {
        Seg::Key(s.to_string())
    }
}

impl From<usize> for Seg {
    fn from(i: usize) -> Self {
        Seg::Index(i)
    }
}

/// Builds a path: `path!["steps", 2, "needs"]`.
#[macro_export]
macro_rules! path {
    ($($seg:expr),* $(,)?) => { [$($crate::yaml::source::Seg::from($seg)),*] };
}

impl Node {
    /// The node's JSON type name, as JSON Schema spells it.
    pub fn type_name(&self) -> &'static str {
        match &self.value {
            NodeValue::Null => "null",
            NodeValue::Bool(_) => "boolean",
            NodeValue::Number(n) if n.is_f64() => "number",
            NodeValue::Number(_) => "integer",
            NodeValue::Str(_) => "string",
            NodeValue::Seq(_) => "array",
            NodeValue::Map(_) => "object",
        }
    }

    /// The node without positions, as JSON.
    pub fn to_json(&self) -> Value {
        match &self.value {
            NodeValue::Null => Value::Null,
            NodeValue::Bool(b) => Value::Bool(*b),
            NodeValue::Number(n) => Value::Number(n.clone()),
            NodeValue::Str(s) => Value::String(s.clone()),
            NodeValue::Seq(items) => Value::Array(items.iter().map(Node::to_json).collect()),
            NodeValue::Map(entries) => {
                let mut map = Map::with_capacity(entries.len());
                for (k, v) in entries {
                    map.insert(k.name.clone(), v.to_json());
                }
                Value::Object(map)
            }
        }
    }

    /// The value under a mapping key.
    pub fn get(&self, key: &str) -> Option<&Node> {
        match &self.value {
            NodeValue::Map(entries) => entries.iter().find(|(k, _)| k.name == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The deepest node along `path`, and whether the whole path exists.
    fn walk(&self, path: &[Seg]) -> (&Node, bool) {
        let mut node = self;
        for seg in path {
            let next = match (seg, &node.value) {
                (Seg::Key(k), NodeValue::Map(entries)) => entries
                    .iter()
                    .find(|(key, _)| &key.name == k)
                    .map(|(_, v)| v),
                (Seg::Index(i), NodeValue::Seq(items)) => items.get(*i),
                _ => None,
            };
            match next {
                Some(n) => node = n,
                None => return (node, false),
            }
        }
        (node, true)
    }

    /// The node at `path`, or the deepest existing node on the way.
    pub fn locate(&self, path: &[Seg]) -> Loc {
        self.walk(path).0.loc
    }

    /// The location of the key at the end of `path` (the value's if the last
    /// segment is an index).
    pub fn locate_key(&self, path: &[Seg]) -> Loc {
        let Some((Seg::Key(last), parent)) = path.split_last() else {
            return self.locate(path);
        };
        match self.walk(parent) {
            (
                Node {
                    value: NodeValue::Map(entries),
                    loc,
                },
                true,
            ) => entries
                .iter()
                .find(|(k, _)| &k.name == last)
                .map(|(k, _)| k.loc)
                .unwrap_or(*loc),
            (node, _) => node.loc,
        }
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let spanned = Spanned::<NodeValue>::deserialize(d)?;
        Ok(Node {
            value: spanned.value,
            loc: spanned.referenced.into(),
        })
    }
}

/// A scalar key read as text.
struct KeyText(String);

impl<'de> Deserialize<'de> for KeyText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = NodeValue::deserialize(d)?;
        match v {
            NodeValue::Str(s) => Ok(KeyText(s)),
            NodeValue::Number(n) => Ok(KeyText(n.to_string())),
            NodeValue::Bool(b) => Ok(KeyText(b.to_string())),
            NodeValue::Null => Ok(KeyText("null".into())),
            _ => Err(de::Error::custom("mapping keys must be plain scalars")),
        }
    }
}

impl<'de> Deserialize<'de> for NodeValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NodeVisitor)
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = NodeValue;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_unit<E>(self) -> Result<NodeValue, E> {
        Ok(NodeValue::Null)
    }
    fn visit_none<E>(self) -> Result<NodeValue, E> {
        Ok(NodeValue::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<NodeValue, D::Error> {
        NodeValue::deserialize(d)
    }
    fn visit_bool<E>(self, v: bool) -> Result<NodeValue, E> {
        Ok(NodeValue::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<NodeValue, E> {
        Ok(NodeValue::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<NodeValue, E> {
        Ok(NodeValue::Number(v.into()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<NodeValue, E> {
        Number::from_f64(v)
            .map(NodeValue::Number)
            .ok_or_else(|| E::custom("numbers must be finite"))
    }
    fn visit_str<E>(self, v: &str) -> Result<NodeValue, E> {
        Ok(NodeValue::Str(v.to_string()))
    }
    fn visit_string<E>(self, v: String) -> Result<NodeValue, E> {
        Ok(NodeValue::Str(v))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<NodeValue, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Node>()? {
            items.push(item);
        }
        Ok(NodeValue::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<NodeValue, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Spanned<KeyText>>()? {
            let value: Node = map.next_value()?;
            entries.push((
                Key {
                    name: key.value.0,
                    loc: key.referenced.into(),
                },
                value,
            ));
        }
        Ok(NodeValue::Map(entries))
    }
}

/// Parses YAML text into a located tree. The error carries serde-saphyr's
/// location when it has one.
pub fn parse_yaml(text: &str) -> Result<Node, (String, Option<Loc>)> {
    // YAML 1.2 booleans only: `n`, `no`, `on`, `yes` stay strings (the
    // "Norway problem"), as flow authors expect for input names and values.
    let mut options = serde_saphyr::Options::default();
    options.strict_booleans = true;
    serde_saphyr::from_str_with_options::<Node>(text, options).map_err(|e| {
        let mut loc = e.location().map(Loc::from);
        let message = e.to_string();
        // serde-saphyr appends its own snippet; keep the first line only, the
        // diagnostic renderer shows the source itself.
        let first = message.lines().next().unwrap_or("invalid YAML");
        let (message, tab) = yaml_message(first);
        // A tab is reported where it is.
        if tab {
            let tab_at = text.lines().enumerate().find_map(|(i, l)| {
                let indent: String = l.chars().take_while(|c| c.is_whitespace()).collect();
                indent
                    .find('\t')
                    .map(|col| (i + 1, indent[..col].chars().count() + 1))
            });
            if let Some((line, column)) = tab_at {
                loc = Some(Loc { line, column });
            }
        }
        (message, loc)
    })
}

/// serde-saphyr's message in the author's words (its own position prefix
/// and advice about its options dropped); whether it is about a tab.
fn yaml_message(raw: &str) -> (String, bool) {
    let mut m = raw.trim();
    m = m.strip_prefix("error:").map_or(m, str::trim);
    if let Some(rest) = m.strip_prefix("line ")
        && let Some((_, after)) = rest.split_once(": ")
    {
        m = after.trim();
    }
    if let Some(key) = m.strip_prefix("duplicate mapping key: ") {
        let key = key.split(',').next().unwrap_or(key).trim();
        return (
            format!("duplicate key `{key}`: each key may appear once in a mapping"),
            false,
        );
    }
    if m.contains("tabs disallowed") || m.contains("tab character") {
        return (
            "a tab is used for indentation; YAML indents with spaces".into(),
            true,
        );
    }
    (m.to_string(), false)
}
