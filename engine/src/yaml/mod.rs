//! Located YAML and the diagnostics made from it, shared by flows and
//! connector definitions.
//!
//! [`source`] parses YAML into a tree whose nodes remember their line and
//! column; [`shape`] checks such a tree against a JSON Schema (unknown keys
//! with "did you mean", wrong types, missing keys), each problem at its
//! place; [`diagnostic`] renders problems compiler-style. Both
//! [`crate::flow`] and [`crate::connectors`] build on these, so neither
//! imports the other for them.

pub mod diagnostic;
pub mod shape;
pub mod source;
