//! The [`Checker`]: what step kinds use at compile time to report problems at
//! the right place and to compile their expressions with reference checks.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::Value;

use super::diagnostic::{Diagnostic, did_you_mean};
use super::source::{Node, Seg};
use crate::expr::{self, Template};
use crate::unified::Entity;

/// What an expression at a given place may refer to.
#[derive(Debug, Clone, Default)]
pub struct RefScope {
    /// Declared inputs.
    pub inputs: BTreeSet<String>,
    /// All step ids of the flow.
    pub all_steps: BTreeSet<String>,
    /// Steps that finish before this place is evaluated.
    pub upstream: BTreeSet<String>,
    /// The step being checked, if any.
    pub current: Option<String>,
    /// Whether `item` and `index` exist here (inside `for_each`).
    pub item: bool,
    /// Known connection names.
    pub connections: Vec<String>,
    /// Registered plugin names, when known.
    pub plugins: Option<Vec<String>>,
}

/// Collects diagnostics for one step (or the flow) at paths relative to a base.
pub struct Checker<'a> {
    source: &'a Node,
    base: Vec<Seg>,
    diags: &'a mut Vec<Diagnostic>,
    /// What expressions may refer to.
    pub scope: RefScope,
}

const ROOTS: &[&str] = &["inputs", "trigger", "steps", "secrets", "item", "index"];

impl<'a> Checker<'a> {
    /// A checker rooted at `base` in `source`.
    pub fn new(
        source: &'a Node,
        base: Vec<Seg>,
        diags: &'a mut Vec<Diagnostic>,
        scope: RefScope,
    ) -> Self {
        Checker {
            source,
            base,
            diags,
            scope,
        }
    }

    fn full(&self, rel: &[Seg]) -> Vec<Seg> {
        let mut p = self.base.clone();
        p.extend_from_slice(rel);
        p
    }

    /// Reports a problem at the value at `rel`.
    pub fn error(
        &mut self,
        rel: &[Seg],
        code: &'static str,
        message: impl Into<String>,
    ) -> &mut Diagnostic {
        let loc = self.source.locate(&self.full(rel));
        self.diags.push(Diagnostic::at(code, loc, message));
        self.diags.last_mut().expect("just pushed")
    }

    /// Reports a problem at the key at the end of `rel`.
    pub fn error_at_key(
        &mut self,
        rel: &[Seg],
        code: &'static str,
        message: impl Into<String>,
    ) -> &mut Diagnostic {
        let loc = self.source.locate_key(&self.full(rel));
        self.diags.push(Diagnostic::at(code, loc, message));
        self.diags.last_mut().expect("just pushed")
    }

    /// Compiles a value with `${{ }}` expressions and checks what they refer to.
    pub fn template(&mut self, rel: &[Seg], value: &Value) -> Option<Template> {
        self.checked(rel, Template::compile(value), "expression")
    }

    /// Compiles a condition (`if:`), with or without `${{ }}`.
    pub fn condition(&mut self, rel: &[Seg], text: &str) -> Option<Template> {
        self.checked(rel, Template::compile_condition(text), "condition")
    }

    fn checked(
        &mut self,
        rel: &[Seg],
        compiled: Result<Template, crate::expr::ExprError>,
        what: &str,
    ) -> Option<Template> {
        match compiled {
            Ok(t) => {
                self.check_references(rel, &t);
                Some(t)
            }
            Err(e) => {
                self.error(
                    rel,
                    "invalid-expression",
                    format!("{what} does not parse: {}", e.message),
                )
                .hint = Some(format!(
                    "in `{}`; expressions use minijinja syntax, e.g. `${{{{ inputs.limit * 2 }}}}`",
                    e.source_text
                ));
                None
            }
        }
    }

    fn check_references(&mut self, rel: &[Seg], t: &Template) {
        let globals = expr::global_names();
        for reference in t.references() {
            let mut parts = reference.split('.');
            let root = parts.next().unwrap_or_default();
            let second = parts.next();
            match root {
                "inputs" => {
                    if let Some(name) = second
                        && !self.scope.inputs.contains(name)
                    {
                        let hint = match did_you_mean(
                            name,
                            self.scope.inputs.iter().map(String::as_str),
                        ) {
                            Some(s) => format!("did you mean `inputs.{s}`?"),
                            None => "declare it under `inputs:`".to_string(),
                        };
                        self.error(
                            rel,
                            "unknown-input",
                            format!("`inputs.{name}` is not a declared input"),
                        )
                        .hint = Some(hint);
                    }
                }
                "steps" => {
                    let Some(id) = second else { continue };
                    if !self.scope.all_steps.contains(id) {
                        let hint =
                            match did_you_mean(id, self.scope.all_steps.iter().map(String::as_str))
                            {
                                Some(s) => format!("did you mean `steps.{s}`?"),
                                None => "refer to a step id of this flow".to_string(),
                            };
                        self.error(
                            rel,
                            "unknown-step",
                            format!("`steps.{id}` names no step of this flow"),
                        )
                        .hint = Some(hint);
                    } else if self.scope.current.as_deref() == Some(id) {
                        self.error(
                            rel,
                            "self-reference",
                            format!("step `{id}` refers to its own output"),
                        );
                    } else if !self.scope.upstream.contains(id) {
                        let current = self.scope.current.clone().unwrap_or_default();
                        self.error(
                            rel,
                            "not-upstream",
                            format!("`steps.{id}` is not upstream of step `{current}`, so its output may not exist yet"),
                        )
                        .hint = Some(format!("add `{id}` to `needs:` of `{current}`"));
                    }
                }
                "item" | "index" if !self.scope.item => {
                    self.error(
                        rel,
                        "item-outside-for-each",
                        format!("`{root}` exists only in a step with `for_each`"),
                    )
                    .hint = Some(
                        "add `for_each:` to the step, or refer to a step output instead".into(),
                    );
                }
                r if ROOTS.contains(&r) || globals.iter().any(|g| g == r) => {}
                other => {
                    let hint = match did_you_mean(other, ROOTS.iter().copied()) {
                        Some(s) => format!("did you mean `{s}`?"),
                        None => format!("expressions can read: {}", ROOTS.join(", ")),
                    };
                    self.error(
                        rel,
                        "unknown-variable",
                        format!("unknown variable `{other}`"),
                    )
                    .hint = Some(hint);
                }
            }
        }
    }

    /// Checks that a connection exists.
    pub fn connection(&mut self, rel: &[Seg], name: &str) -> bool {
        if self.scope.connections.iter().any(|c| c == name) {
            return true;
        }
        let known = self.scope.connections.clone();
        let hint = match did_you_mean(name, known.iter().map(String::as_str)) {
            Some(s) => format!("did you mean `{s}`?"),
            None => format!("known connections: {}", known.join(", ")),
        };
        self.error(
            rel,
            "unknown-connection",
            format!("unknown connection `{name}`"),
        )
        .hint = Some(hint);
        false
    }

    /// Checks that a plugin is registered (when the registry is known).
    pub fn plugin(&mut self, rel: &[Seg], name: &str) -> bool {
        let Some(known) = self.scope.plugins.clone() else {
            return true;
        };
        if known.iter().any(|p| p == name) {
            return true;
        }
        let hint = match did_you_mean(name, known.iter().map(String::as_str)) {
            Some(s) => format!("did you mean `{s}`?"),
            None => {
                "upload it with `sluice plugin push FILE --name NAME --version X.Y.Z`".to_string()
            }
        };
        self.error(rel, "unknown-plugin", format!("unknown plugin `{name}`"))
            .hint = Some(hint);
        false
    }

    /// Checks an entity name.
    pub fn entity(&mut self, rel: &[Seg], name: &str) -> Option<Entity> {
        match name.parse::<Entity>() {
            Ok(e) => Some(e),
            Err(_) => {
                let names: Vec<&str> = Entity::ALL.iter().map(|e| e.name()).collect();
                let hint = match did_you_mean(name, names.iter().copied()) {
                    Some(s) => format!("did you mean `{s}`?"),
                    None => format!("entities: {}", names.join(", ")),
                };
                self.error(rel, "unknown-entity", format!("unknown entity `{name}`"))
                    .hint = Some(hint);
                None
            }
        }
    }

    /// Checks that `field` (possibly dotted, e.g. `custom_fields.x`) is a field of `entity`.
    pub fn entity_field(&mut self, rel: &[Seg], entity: Entity, field: &str) -> bool {
        let top = field.split('.').next().unwrap_or(field);
        let fields = entity.fields();
        if fields.contains(top) {
            return true;
        }
        let hint = match did_you_mean(top, fields.iter().map(String::as_str)) {
            Some(s) => format!("did you mean `{s}`?"),
            None => format!(
                "fields of {entity}: {}",
                fields.iter().cloned().collect::<Vec<_>>().join(", ")
            ),
        };
        self.error_at_key(
            rel,
            "unknown-field",
            format!("`{top}` is not a field of {entity}"),
        )
        .hint = Some(hint);
        false
    }

    /// Parses a duration such as `30s`, `2m`, `500ms`.
    pub fn duration(&mut self, rel: &[Seg], text: &str) -> Option<Duration> {
        match humantime::parse_duration(text) {
            Ok(d) => Some(d),
            Err(e) => {
                self.error(
                    rel,
                    "invalid-duration",
                    format!("invalid duration `{text}`: {e}"),
                )
                .hint = Some("write a number and a unit, e.g. `500ms`, `30s`, `2m`, `1h`".into());
                None
            }
        }
    }
}
