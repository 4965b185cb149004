//! The [`Checker`]: what step kinds use at compile time to report problems at
//! the right place and to compile their expressions with reference checks.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::Value;

use super::diagnostic::{Diagnostic, did_you_mean};
use super::source::{Loc, Node, Seg};
use crate::expr::types::{self, Type};
use crate::expr::{self, Template};
use crate::unified::Entity;

/// What an expression at a given place may refer to.
#[derive(Debug, Clone, Default)]
pub struct RefScope {
    /// Declared inputs.
    pub inputs: BTreeSet<String>,
    /// All step ids of the flow.
    pub all_steps: std::sync::Arc<BTreeSet<String>>,
    /// Steps that finish before this place is evaluated.
    pub upstream: BTreeSet<String>,
    /// The step being checked, if any.
    pub current: Option<String>,
    /// Whether `item` and `index` exist here (inside `for_each`).
    pub item: bool,
    /// Whether `event` exists here (a `wait_for` step's `match`).
    pub event: bool,
    /// Known connection names.
    pub connections: Vec<String>,
    /// Registered plugin names, when known.
    pub plugins: Option<Vec<String>>,
    /// Names of the secrets the running process holds, when known.
    pub secrets: Option<BTreeSet<String>>,
    /// Registered versions per plugin, where known.
    pub plugin_versions: std::sync::Arc<BTreeMap<String, Vec<semver::Version>>>,
    /// Flows that `flow` steps may call, with their declared inputs, where known.
    pub flows: Option<std::sync::Arc<super::KnownFlows>>,
    /// Operations per connection and entity, where known.
    pub operations: std::sync::Arc<BTreeMap<String, BTreeMap<Entity, Vec<&'static str>>>>,
    /// The static type of each variable an expression may read (`inputs`,
    /// `trigger`, `steps`, `secrets`, `item`, `index`).
    pub types: BTreeMap<String, Type>,
}

/// Collects diagnostics for one step (or the flow) at paths relative to a base.
pub struct Checker<'a> {
    source: &'a Node,
    text: &'a str,
    /// Output types of the steps checked so far, by id.
    pub step_types: Option<&'a BTreeMap<String, Type>>,
    /// Whether the place being checked is a sink that needs secrets (a
    /// plugin's `config`); elsewhere an expression reading `secrets` is an
    /// error, so no secret reaches stored outputs, events or systems.
    pub allow_secrets: bool,
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
        text: &'a str,
        base: Vec<Seg>,
        diags: &'a mut Vec<Diagnostic>,
        scope: RefScope,
    ) -> Self {
        Checker {
            source,
            text,
            step_types: None,
            allow_secrets: false,
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
        self.template_typed(rel, value).0
    }

    /// Like [`Checker::template`], also giving the value's static type (even
    /// when a problem was found, so checks that use it still run). Every
    /// string inside is checked on its own, so a problem is reported at its
    /// own line and column, inside the expression.
    pub fn template_typed(&mut self, rel: &[Seg], value: &Value) -> (Option<Template>, Type) {
        let mut ok = true;
        let (ty, template) = self.check_value(rel, value, &mut ok);
        (template.filter(|_| ok), ty)
    }

    /// Checks every string of `value` (at its own path): its static type,
    /// and the template built from the strings compiled on the way (each is
    /// compiled once).
    fn check_value(
        &mut self,
        rel: &[Seg],
        value: &Value,
        ok: &mut bool,
    ) -> (Type, Option<Template>) {
        match value {
            Value::String(s) if s.contains(expr::OPEN) && s.len() > super::MAX_EXPRESSION_BYTES => {
                self.error(
                    rel,
                    "too-large",
                    format!(
                        "this expression is {} bytes; the limit is {}",
                        s.len(),
                        super::MAX_EXPRESSION_BYTES
                    ),
                )
                .hint = Some("move the logic into a plugin, or split it over `set` steps".into());
                *ok = false;
                (Type::Any, None)
            }
            Value::String(s) if s.contains(expr::OPEN) => {
                let compiled = match Template::compile_strict(value) {
                    Ok(t) => t,
                    Err(e) => {
                        self.report_parse(rel, &e, "expression");
                        *ok = false;
                        return (Type::Any, None);
                    }
                };
                let before = self.diags.len();
                self.check_references(rel, &compiled);
                let ty = match &compiled {
                    Template::Expr { source, .. } => {
                        self.check_secret_flow(rel, source);
                        let offset = s.find(source.as_str()).unwrap_or(0);
                        self.check_types(rel, s, offset, source)
                    }
                    _ => {
                        for (offset, inner) in expr::embedded_expressions(s) {
                            self.check_secret_flow(rel, inner);
                            self.check_types(rel, s, offset, inner);
                        }
                        Type::String
                    }
                };
                if self.diags.len() > before {
                    *ok = false;
                }
                (ty, Some(compiled))
            }
            Value::Array(items) => {
                let mut elem: Option<Type> = None;
                let mut parts = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    let mut p = rel.to_vec();
                    p.push(Seg::Index(i));
                    let (t, part) = self.check_value(&p, item, ok);
                    parts.push(part);
                    elem = Some(match elem {
                        Some(e) => types::join(e, t),
                        None => t,
                    });
                }
                let template = parts.into_iter().collect::<Option<Vec<_>>>().map(|parts| {
                    if parts.iter().all(Template::is_literal) {
                        Template::Literal(value.clone())
                    } else {
                        Template::Array(parts)
                    }
                });
                (Type::list(elem.unwrap_or(Type::Any)), template)
            }
            Value::Object(map) => {
                let mut fields = BTreeMap::new();
                let mut parts = Vec::with_capacity(map.len());
                for (k, v) in map {
                    let mut p = rel.to_vec();
                    p.push(Seg::Key(k.clone()));
                    let (t, part) = self.check_value(&p, v, ok);
                    fields.insert(k.clone(), t);
                    parts.push(part.map(|part| (k.clone(), part)));
                }
                let template = parts.into_iter().collect::<Option<Vec<_>>>().map(|parts| {
                    if parts.iter().all(|(_, t)| t.is_literal()) {
                        Template::Literal(value.clone())
                    } else {
                        Template::Object(parts)
                    }
                });
                (Type::object(fields, false), template)
            }
            other => (
                Type::of_value(other),
                Some(Template::Literal(other.clone())),
            ),
        }
    }

    /// Type-checks one expression `inner`, found at byte `offset` of the
    /// string `whole` at `rel`; reports problems inside it.
    fn check_types(&mut self, rel: &[Seg], whole: &str, offset: usize, inner: &str) -> Type {
        match types::check_expression_with_steps(inner, &self.scope.types, self.step_types) {
            Ok((ty, issues)) => {
                for issue in issues {
                    let loc = self.locate_in(rel, whole, offset + issue.offset, issue.len);
                    let mut d = Diagnostic::at(issue.code, loc, issue.message);
                    d.hint = issue.hint;
                    d.length = Some(
                        inner[issue.offset.min(inner.len())..]
                            .chars()
                            .take(issue.len)
                            .count()
                            .max(1),
                    );
                    self.diags.push(d);
                }
                ty
            }
            Err(_) => Type::Any, // reported by the compile step
        }
    }

    /// The location of bytes `offset..offset+len` of the string value at `rel`.
    fn locate_in(&self, rel: &[Seg], value: &str, offset: usize, len: usize) -> Loc {
        let start = self.source.locate(&self.full(rel));
        locate_in_scalar(self.text, start, value, offset, len)
    }

    /// Reports a problem at bytes `offset..offset+len` of the string at `rel`.
    pub fn error_in_string(
        &mut self,
        rel: &[Seg],
        value: &str,
        offset: usize,
        len: usize,
        code: &'static str,
        message: impl Into<String>,
    ) -> &mut Diagnostic {
        let loc = self.locate_in(rel, value, offset, len);
        let mut d = Diagnostic::at(code, loc, message);
        d.length = Some(len.max(1));
        self.diags.push(d);
        self.diags.last_mut().expect("just pushed")
    }

    /// Compiles a condition (`if:`), with or without `${{ }}`.
    pub fn condition(&mut self, rel: &[Seg], text: &str) -> Option<Template> {
        if text.len() > super::MAX_EXPRESSION_BYTES {
            self.error(
                rel,
                "too-large",
                format!(
                    "this condition is {} bytes; the limit is {}",
                    text.len(),
                    super::MAX_EXPRESSION_BYTES
                ),
            );
            return None;
        }
        let t = match Template::compile_condition(text) {
            Ok(t) => t,
            Err(e) => {
                self.report_parse(rel, &e, "condition");
                return None;
            }
        };
        let before = self.diags.len();
        self.check_references(rel, &t);
        if let Template::Expr { source, .. } = &t {
            self.check_secret_flow(rel, source);
            let offset = text.find(source.as_str()).unwrap_or(0);
            self.check_types(rel, text, offset, source);
        }
        (self.diags.len() == before).then_some(t)
    }

    fn report_parse(&mut self, rel: &[Seg], e: &crate::expr::ExprError, what: &str) {
        self.error(
            rel,
            "invalid-expression",
            format!("{what} does not parse: {}", e.message),
        )
        .hint = Some(format!(
            "in `{}`; expressions use minijinja syntax, e.g. `${{{{ inputs.limit * 2 }}}}`",
            e.source_text
        ));
    }

    /// Refuses an expression that reads `secrets` outside a credential sink:
    /// whatever is made from a secret (a filter, a slice, a concatenation,
    /// JSON) would be stored, returned by the API or sent on.
    fn check_secret_flow(&mut self, rel: &[Seg], inner: &str) {
        if self.allow_secrets {
            return;
        }
        let Some(read) = expr::strict::read_paths(inner)
            .into_iter()
            .find(|p| p.root == "secrets")
        else {
            return;
        };
        let what = match read.segs.first() {
            Some(expr::strict::Seg::Key(k)) => format!("secrets.{k}"),
            _ => "secrets".to_string(),
        };
        let place: Vec<String> = self
            .full(rel)
            .iter()
            .map(|s| match s {
                Seg::Key(k) => k.clone(),
                Seg::Index(i) => i.to_string(),
            })
            .collect();
        self.error(
            rel,
            "secret-leak",
            format!(
                "`{what}` would flow into `{}`, where it is stored, returned by the API or sent on; a secret, and anything made from it, may only go where a credential is needed",
                place.join(".")
            ),
        )
        .hint = Some(
            "give credentials to a connection (`sluice connection add ... -c NAME=SECRET`), a plugin's `config`, an `http` step's `headers`, or a webhook trigger's `secret`".into(),
        );
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
                "event" if self.scope.event => {}
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
                "secrets" => {
                    if let (Some(name), Some(known)) = (second, &self.scope.secrets)
                        && !known.contains(name)
                    {
                        let hint = match did_you_mean(name, known.iter().map(String::as_str)) {
                            Some(s) => format!(
                                "did you mean `secrets.{s}`? or set {}{name}",
                                expr::secrets::ENV_PREFIX
                            ),
                            None => format!(
                                "set the environment variable {}{name} for the process that runs the flow",
                                expr::secrets::ENV_PREFIX
                            ),
                        };
                        self.error(rel, "unknown-secret", format!("secret `{name}` is not set"))
                            .hint = Some(hint);
                    }
                }
                r if ROOTS.contains(&r) || globals.iter().any(|g| g == r) => {}
                other => {
                    let hint = if let Some(s) = did_you_mean(other, ROOTS.iter().copied()) {
                        format!("did you mean `{s}`?")
                    } else if let Some(f) = did_you_mean(other, globals.iter().map(String::as_str))
                    {
                        format!("did you mean the function `{f}()`?")
                    } else {
                        format!(
                            "expressions can read: {}; functions: {}",
                            ROOTS.join(", "),
                            expr::function_names().join(", ")
                        )
                    };
                    self.error(
                        rel,
                        "unknown-variable",
                        format!("unknown variable or function `{other}`"),
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

    /// Checks that `connection` supports `op` on `entity` (when known).
    pub fn operation(&mut self, rel: &[Seg], connection: &str, entity: Entity, op: &str) -> bool {
        let Some(by_entity) = self.scope.operations.get(connection) else {
            return true;
        };
        let ops = by_entity.get(&entity).cloned().unwrap_or_default();
        if ops.contains(&op) {
            return true;
        }
        let hint = if ops.is_empty() {
            let served: Vec<&str> = by_entity
                .iter()
                .filter(|(_, o)| !o.is_empty())
                .map(|(e, _)| e.name())
                .collect();
            format!("connection `{connection}` serves: {}", served.join(", "))
        } else {
            format!("for {entity} it can: {}", ops.join(", "))
        };
        self.error(
            rel,
            "unsupported-operation",
            format!("connection `{connection}` cannot {op} {entity}"),
        )
        .hint = Some(hint);
        false
    }

    /// Checks that a registered version of a plugin meets `req` (when the
    /// registry is known).
    pub fn plugin_version(&mut self, rel: &[Seg], name: &str, req: &semver::VersionReq) -> bool {
        let Some(versions) = self.scope.plugin_versions.get(name) else {
            return true;
        };
        if versions.iter().any(|v| req.matches(v)) {
            return true;
        }
        let listed: Vec<String> = versions.iter().map(ToString::to_string).collect();
        self.error(
            rel,
            "unknown-plugin-version",
            format!("no registered version of plugin `{name}` meets `{req}`"),
        )
        .hint = Some(format!(
            "registered: {}; push one with `sluice plugin push FILE --name {name} --version X.Y.Z`",
            listed.join(", ")
        ));
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

/// The location, in the YAML `text`, of bytes `offset..offset+len` of the
/// string `value` whose scalar starts at `start` (quoted or plain; escapes
/// and block scalars are found near it, else the scalar's start).
pub(crate) fn locate_in_scalar(
    text: &str,
    start: Loc,
    value: &str,
    offset: usize,
    len: usize,
) -> Loc {
    let Some(base) = byte_offset(text, start) else {
        return start;
    };
    let fragment = value.get(offset..offset + len).unwrap_or("");
    let rest = &text[base..];
    let quote = usize::from(rest.starts_with(['"', '\'']));
    let direct = base + quote + offset;
    if !fragment.is_empty() && text.get(direct..direct + fragment.len()) == Some(fragment) {
        return loc_of(text, direct);
    }
    // Escapes or a block scalar moved the text: find the fragment with
    // what precedes it in the value, near the scalar.
    let lead = value
        .get(..offset)
        .unwrap_or("")
        .chars()
        .rev()
        .take(12)
        .collect::<Vec<_>>();
    let lead: String = lead.into_iter().rev().collect();
    let probe = format!("{lead}{fragment}");
    let window = &rest[..rest.len().min(value.len() * 2 + 256)];
    match window.find(&probe) {
        Some(p) => loc_of(text, base + p + lead.len()),
        None => start,
    }
}

/// The byte offset of a line:column (1-based, characters) in `text`.
fn byte_offset(text: &str, loc: Loc) -> Option<usize> {
    if loc.line == 0 {
        return None;
    }
    let mut offset = 0;
    for (i, line) in text.split_inclusive('\n').enumerate() {
        if i + 1 == loc.line {
            let col = line
                .char_indices()
                .nth(loc.column.saturating_sub(1))
                .map_or(line.len(), |(b, _)| b);
            return Some(offset + col);
        }
        offset += line.len();
    }
    None
}

/// The line:column of a byte offset in `text`.
fn loc_of(text: &str, offset: usize) -> Loc {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |p| p + 1);
    Loc {
        line,
        column: before[line_start..].chars().count() + 1,
    }
}
