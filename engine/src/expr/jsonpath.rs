//! JSONPath (RFC 9535) selection, by `serde_json_path`.
//!
//! The library passes the whole JSONPath Compliance Test Suite; the test
//! `jsonpath_compliance_suite` in `tests/` runs it against this module.

use serde_json::Value;
use serde_json_path::JsonPath;

/// A compiled JSONPath query.
#[derive(Debug, Clone)]
pub struct Query {
    text: String,
    path: JsonPath,
}

/// A query that does not parse.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid JSONPath `{text}`: {message}")]
pub struct QueryError {
    /// The query as written.
    pub text: String,
    /// The parser's message.
    pub message: String,
}

impl Query {
    /// Parses a query.
    pub fn parse(text: &str) -> Result<Query, QueryError> {
        JsonPath::parse(text)
            .map(|path| Query {
                text: text.to_string(),
                path,
            })
            .map_err(|e| QueryError {
                text: text.to_string(),
                message: e.to_string(),
            })
    }

    /// The matched values, in document order.
    pub fn select(&self, doc: &Value) -> Vec<Value> {
        self.path.query(doc).all().into_iter().cloned().collect()
    }

    /// The first matched value.
    pub fn first<'a>(&self, doc: &'a Value) -> Option<&'a Value> {
        self.path.query(doc).first()
    }

    /// Every matched value, by reference.
    pub fn all<'a>(&self, doc: &'a Value) -> Vec<&'a Value> {
        self.path.query(doc).all()
    }

    /// The query as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }
}
