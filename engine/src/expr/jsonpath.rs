//! JSONPath (RFC 9535) selection, by `serde_json_path`.
//!
//! The library passes the whole JSONPath Compliance Test Suite; the test
//! `jsonpath_compliance_suite` in `tests/` runs it against this module.
//!
//! The parser recurses and nested filters (`$[?@[?@[?...]]]`) cost it
//! exponential time, so a query is measured before it is parsed: at most
//! [`MAX_QUERY_BYTES`] long, brackets and parentheses nested at most
//! [`MAX_NESTING`] deep, and filters within filters at most
//! [`MAX_FILTER_NESTING`] deep. A query past a limit is refused with the
//! limit named; no flow or connector needs more.

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

/// The longest query accepted, in bytes.
pub const MAX_QUERY_BYTES: usize = 4096;
/// How deep `[`/`(` may nest.
pub const MAX_NESTING: usize = 32;
/// How deep filters (`?`) may nest inside filters.
pub const MAX_FILTER_NESTING: usize = 4;

/// Checks the size and nesting of a query without parsing it.
fn check_limits(text: &str) -> Result<(), String> {
    if text.len() > MAX_QUERY_BYTES {
        return Err(format!(
            "the query is {} bytes; the limit is {MAX_QUERY_BYTES}",
            text.len()
        ));
    }
    // Brackets and parentheses outside string literals; the filter depth of
    // each open bracket.
    let mut stack: Vec<(char, usize)> = Vec::new();
    let mut quote: Option<char> = None;
    let mut escaped = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if let Some(q) = quote {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == q {
                quote = None;
            }
            continue;
        }
        let filters = stack.last().map_or(0, |(_, f)| *f);
        match c {
            '\'' | '"' => quote = Some(c),
            '[' | '(' => {
                let is_filter = c == '[' && chars.peek().is_some_and(|n| *n == '?');
                let depth = filters + usize::from(is_filter);
                if depth > MAX_FILTER_NESTING {
                    return Err(format!(
                        "filters are nested {depth} deep; the limit is {MAX_FILTER_NESTING}"
                    ));
                }
                stack.push((c, depth));
                if stack.len() > MAX_NESTING {
                    return Err(format!(
                        "brackets and parentheses are nested more than {MAX_NESTING} deep"
                    ));
                }
            }
            ']' | ')' => {
                stack.pop();
            }
            _ => {}
        }
    }
    Ok(())
}

impl Query {
    /// Parses a query (after checking its size and nesting).
    pub fn parse(text: &str) -> Result<Query, QueryError> {
        check_limits(text).map_err(|message| QueryError {
            text: text.chars().take(80).collect(),
            message,
        })?;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    #[test]
    fn deep_or_huge_queries_are_refused_before_parsing_and_quickly() {
        let t = Instant::now();
        let deep = format!("$[?{}@.a{}]", "(".repeat(940), ")".repeat(940));
        let e = Query::parse(&deep).unwrap_err();
        assert!(e.message.contains("nested more than 32 deep"), "{e}");
        let filters = format!("$[?@{}]", "[?@".repeat(40)) + &"]".repeat(40);
        let e = Query::parse(&filters).unwrap_err();
        assert!(e.message.contains("the limit is 4"), "{e}");
        let huge = format!("$[?@.a == '{}']", "x".repeat(5000));
        assert!(
            Query::parse(&huge)
                .unwrap_err()
                .message
                .contains("the limit is 4096")
        );
        assert!(t.elapsed().as_secs() < 5, "refused without parsing");
        // Ordinary queries, and brackets inside strings, are untouched.
        Query::parse("$[?@.total > 10000 && (@.status == 'approved' || @.status == 'open')]")
            .unwrap();
        Query::parse("$[?@.name == '((((((((((((((((((((((((((((((((((((((']").unwrap();
        Query::parse("$[?@.lines[?@.qty > 1]]").unwrap();
    }
}
