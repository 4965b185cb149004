//! Flows: the YAML format, validation with located diagnostics, and
//! compilation into an executable DAG.
//!
//! [`compile`] runs every check before anything executes and reports every
//! problem at once: YAML syntax, the document's shape against the format's
//! JSON Schema (unknown keys with "did you mean", wrong types, missing keys),
//! then meaning: duplicate step ids, `needs` naming a missing step, cycles,
//! expressions that do not parse, references to steps that are not upstream,
//! unknown connections, entities and fields of the unified model.

pub mod check;
pub mod model;
pub mod respond;

pub use crate::yaml::{diagnostic, shape, source};

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;
use std::time::Duration;

use petgraph::algo::tarjan_scc;
use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::{Dfs, Reversed};
use serde_json::Value;
use sha2::{Digest, Sha256};

pub use diagnostic::{Diagnostic, FlowErrors};
pub use model::*;

use check::{Checker, RefScope};
use diagnostic::did_you_mean;
use source::{Loc, Node, NodeValue, Seg};

use crate::expr::Template;
use crate::expr::types::Type;
use crate::path;
use crate::steps::{self, CompiledKind};

/// Engine events a flow can be triggered by (besides custom events that
/// flows fire with the `webhook` step, such as `po.high_value`).
pub const EVENT_TYPES: &[&str] = &[
    "sync.completed",
    "sync.failed",
    "record.created",
    "record.updated",
    "record.deleted",
    "connection.auth_required",
    "connection.status_changed",
    "system.error",
    "run.succeeded",
    "run.failed",
    "run.cancelled",
];

/// A retry policy with durations resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct RetrySpec {
    /// Total attempts including the first.
    pub max_attempts: u32,
    /// Delay growth.
    pub backoff: Backoff,
    /// First delay.
    pub initial: Duration,
    /// Largest delay.
    pub max: Duration,
    /// Full jitter.
    pub jitter: bool,
}

impl RetrySpec {
    /// No retries.
    pub const NONE: RetrySpec = RetrySpec {
        max_attempts: 1,
        backoff: Backoff::Constant,
        initial: Duration::ZERO,
        max: Duration::ZERO,
        jitter: false,
    };

    /// Delay before attempt `next` (2 for the first retry), before jitter.
    pub fn base_delay(&self, next: u32) -> Duration {
        let d = match self.backoff {
            Backoff::Constant => self.initial,
            Backoff::Exponential => self
                .initial
                .saturating_mul(2u32.saturating_pow(next.saturating_sub(2))),
        };
        d.min(self.max.max(self.initial))
    }
}

/// One step ready to execute.
#[derive(Debug)]
pub struct CompiledStep {
    /// Step id.
    pub id: String,
    /// Indexes of the steps it needs.
    pub needs: Vec<usize>,
    /// Indexes of the steps that need it.
    pub dependents: Vec<usize>,
    /// `if`
    pub condition: Option<Template>,
    /// `for_each`
    pub for_each: Option<Template>,
    /// Items in flight at once.
    pub concurrency: usize,
    /// Retries.
    pub retry: RetrySpec,
    /// Per-attempt time limit.
    pub timeout: Option<Duration>,
    /// What a failure does.
    pub on_error: OnError,
    /// The kind's compiled config.
    pub kind: CompiledKind,
}

/// A validated flow, compiled into a DAG of steps.
#[derive(Debug)]
pub struct CompiledFlow {
    /// The typed flow as written.
    pub flow: Flow,
    /// The file it came from (for messages).
    pub file: String,
    /// The YAML text.
    pub source: String,
    /// sha256 of the text, hex.
    pub hash: String,
    /// Steps, in the order written.
    pub steps: Vec<CompiledStep>,
    /// Indexes in a topological order.
    pub topo_order: Vec<usize>,
    /// `output:` template.
    pub output: Option<Template>,
    /// Steps nothing depends on.
    pub sinks: Vec<usize>,
}

impl CompiledFlow {
    /// The flow id.
    pub fn id(&self) -> &str {
        &self.flow.id
    }

    /// Index of a step by id.
    pub fn step_index(&self, id: &str) -> Option<usize> {
        self.steps.iter().position(|s| s.id == id)
    }
}

/// What validation needs to know about the world.
#[derive(Debug, Clone)]
pub struct Catalog {
    /// Known connection names.
    pub connections: Vec<String>,
    /// Registered plugin names; `None` when unknown (not checked).
    pub plugins: Option<Vec<String>>,
    /// The secrets of the process that will run the flow; `None` when that
    /// process is not this one (`sluice validate`), so they are not checked.
    pub secrets: Option<crate::expr::secrets::Secrets>,
    /// Registered versions per plugin name (when `plugins` is known).
    pub plugin_versions: BTreeMap<String, Vec<semver::Version>>,
    /// Per connection, the operations it supports per entity; a connection
    /// missing here is not checked.
    pub operations: BTreeMap<String, BTreeMap<crate::unified::Entity, Vec<&'static str>>>,
    /// The flows that `flow` steps and `on_failure` may name, with their
    /// declared inputs; `None` when unknown (not checked). The flow being
    /// compiled is added to it (a flow may call itself).
    pub flows: Option<KnownFlows>,
}

/// Flow ids with their declared inputs.
pub type KnownFlows = BTreeMap<String, BTreeMap<String, InputSpec>>;

/// A flow's id and declared inputs, read from its text without validating
/// the rest (for [`Catalog::flows`]); `None` when it does not parse.
pub fn flow_signature(text: &str) -> Option<(String, BTreeMap<String, InputSpec>)> {
    let node = source::parse_yaml(text).ok()?;
    let inputs = match node.get("inputs") {
        Some(i) => serde_json::from_value(i.to_json()).ok()?,
        None => BTreeMap::new(),
    };
    let id = node.get("id")?.to_json().as_str()?.to_string();
    Some((id, inputs))
}

/// The flows in `files` (those that parse), by id.
pub fn known_flows(files: &[std::path::PathBuf]) -> KnownFlows {
    files
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .filter_map(|text| flow_signature(&text))
        .collect()
}

impl Default for Catalog {
    fn default() -> Self {
        Catalog {
            connections: vec![crate::connectors::sandbox::CONNECTION.to_string()],
            plugins: None,
            secrets: None,
            plugin_versions: BTreeMap::new(),
            operations: BTreeMap::new(),
            flows: None,
        }
    }
}

/// Whether a path names a flow file: `.yaml` or `.yml`, but not a flow test
/// (`NAME.test.yaml`, see [`crate::testing`]).
pub fn is_flow_file(path: &std::path::Path) -> bool {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
    (name.ends_with(".yaml") || name.ends_with(".yml"))
        && !name.ends_with(".test.yaml")
        && !name.ends_with(".test.yml")
}

/// The files below `dir` (walked recursively, sorted, `target` and `.git`
/// skipped) that `keep` accepts.
pub fn files_under(
    dir: &std::path::Path,
    keep: &dyn Fn(&std::path::Path) -> bool,
) -> Vec<std::path::PathBuf> {
    let mut entries: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .collect();
    entries.sort();
    let mut out = Vec::new();
    for p in entries {
        if p.is_dir() {
            if !p.file_name().is_some_and(|n| n == "target" || n == ".git") {
                out.extend(files_under(&p, keep));
            }
        } else if keep(&p) {
            out.push(p);
        }
    }
    out
}

/// Reads and compiles a flow file.
pub fn compile_file(path: &std::path::Path, catalog: &Catalog) -> Result<CompiledFlow, FlowErrors> {
    let file = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => compile(&file, &text, catalog),
        Err(e) => Err(FlowErrors {
            file: file.clone(),
            source: String::new(),
            diagnostics: vec![Diagnostic::at(
                "io",
                Loc::default(),
                format!("cannot read {file}: {e}"),
            )],
        }),
    }
}

fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_slug(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// Prunes the keys and values the shape check found wrong, so the rest can
/// still be checked in the same pass.
fn to_json_pruned(node: &Node, bad: &BTreeSet<(usize, usize)>) -> Value {
    let is_bad = |l: Loc| bad.contains(&(l.line, l.column));
    match &node.value {
        NodeValue::Map(entries) => Value::Object(
            entries
                .iter()
                .filter(|(k, v)| !is_bad(k.loc) && !is_bad(v.loc))
                .map(|(k, v)| (k.name.clone(), to_json_pruned(v, bad)))
                .collect(),
        ),
        NodeValue::Seq(items) => Value::Array(
            items
                .iter()
                .filter(|i| !is_bad(i.loc))
                .map(|i| to_json_pruned(i, bad))
                .collect(),
        ),
        _ => node.to_json(),
    }
}

/// The largest flow file accepted, in bytes.
pub const MAX_FLOW_BYTES: usize = 2 << 20;
/// The most steps a flow may have.
pub const MAX_STEPS: usize = 1000;
/// The longest string holding `${{ }}` expressions, in bytes.
pub const MAX_EXPRESSION_BYTES: usize = 16 << 10;

/// Validates and compiles flow text. `file` names it in diagnostics.
///
/// Work is bounded: a file over [`MAX_FLOW_BYTES`] or with more than
/// [`MAX_STEPS`] steps is refused before it is checked, as is an expression
/// over [`MAX_EXPRESSION_BYTES`]; YAML nesting is bounded by the parser's
/// budget, expression nesting by minijinja's parser, JSONPath by
/// [`crate::expr::jsonpath`]'s limits.
pub fn compile(file: &str, text: &str, catalog: &Catalog) -> Result<CompiledFlow, FlowErrors> {
    let fail = |diagnostics: Vec<Diagnostic>| FlowErrors {
        file: file.to_string(),
        source: text.to_string(),
        diagnostics,
    };
    if text.len() > MAX_FLOW_BYTES {
        return Err(fail(vec![
            Diagnostic::at(
                "too-large",
                Loc::default(),
                format!(
                    "the flow is {} bytes; the limit is {MAX_FLOW_BYTES}",
                    text.len()
                ),
            )
            .with_hint("split it into smaller flows"),
        ]));
    }
    let root = match source::parse_yaml(text) {
        Ok(n) => n,
        Err((message, loc)) => {
            return Err(fail(vec![
                Diagnostic::at(
                    "yaml-syntax",
                    loc.unwrap_or_default(),
                    format!("invalid YAML: {message}"),
                )
                .with_hint(if message.starts_with("duplicate key") {
                    "remove one of them, or rename it"
                } else if message.contains("a tab") {
                    "replace the tab with spaces"
                } else {
                    "check indentation, quoting and `:` after keys"
                }),
            ]));
        }
    };
    if !matches!(root.value, NodeValue::Map(_)) {
        return Err(fail(vec![
            Diagnostic::at(
                "wrong-type",
                root.loc,
                format!("a flow is a mapping, found {}", root.type_name()),
            )
            .with_hint("start with `apiVersion: sluice/v1`"),
        ]));
    }

    let schema = json_schema();
    let mut diags = Vec::new();
    shape::check(&root, &schema, &schema, &mut diags);
    // Keys and values of the wrong shape are pruned so the rest of the flow
    // is still checked: every problem comes in one pass. A missing key
    // leaves nothing to check its mapping against.
    let prunable = [
        "unknown-key",
        "wrong-type",
        "unknown-value",
        "out-of-range",
        "duplicate-key",
    ];
    if diags.iter().any(|d| !prunable.contains(&d.code)) {
        diags.sort_by_key(|d| (d.line, d.column));
        return Err(fail(diags));
    }
    let bad: BTreeSet<(usize, usize)> = diags
        .iter()
        .filter_map(|d| Some((d.line?, d.column?)))
        .collect();
    if let Some(NodeValue::Seq(steps)) = root.get("steps").map(|s| &s.value)
        && steps.len() > MAX_STEPS
    {
        return Err(fail(vec![
            Diagnostic::at(
                "too-many-steps",
                root.locate_key(&path!["steps"]),
                format!(
                    "the flow has {} steps; the limit is {MAX_STEPS}",
                    steps.len()
                ),
            )
            .with_hint("split it into smaller flows"),
        ]));
    }
    let flow: Flow = match serde_json::from_value(to_json_pruned(&root, &bad)) {
        Ok(f) => f,
        Err(e) => {
            if diags.is_empty() {
                diags.push(Diagnostic::at(
                    "invalid-flow",
                    root.loc,
                    format!("the flow does not match the format: {e}"),
                ));
            }
            diags.sort_by_key(|d| (d.line, d.column));
            return Err(fail(diags));
        }
    };

    let compiled = check_meaning(&flow, &root, text, catalog, &mut diags);
    if !diags.is_empty() {
        diags.sort_by_key(|d| (d.line.unwrap_or(0), d.column.unwrap_or(0)));
        diags.dedup();
        return Err(fail(diags));
    }
    let (steps, topo_order, output, sinks) =
        compiled.expect("no diagnostics means everything compiled");
    Ok(CompiledFlow {
        hash: hex::encode(Sha256::digest(text.as_bytes())),
        flow,
        file: file.to_string(),
        source: text.to_string(),
        steps,
        topo_order,
        output,
        sinks,
    })
}

type Compiled = (Vec<CompiledStep>, Vec<usize>, Option<Template>, Vec<usize>);

fn check_meaning(
    flow: &Flow,
    root: &Node,
    text: &str,
    catalog: &Catalog,
    diags: &mut Vec<Diagnostic>,
) -> Option<Compiled> {
    let at = |p: &[Seg]| root.locate(p);
    let at_key = |p: &[Seg]| root.locate_key(p);

    if !is_slug(&flow.id) {
        diags.push(
            Diagnostic::at(
                "invalid-id",
                at(&path!["id"]),
                format!("invalid flow id `{}`", flow.id),
            )
            .with_hint("use letters, digits, `-` and `_`"),
        );
    }
    for (name, spec) in &flow.inputs {
        if !is_identifier(name) {
            diags.push(
                Diagnostic::at(
                    "invalid-id",
                    at_key(&path!["inputs", name.as_str()]),
                    format!("invalid input name `{name}`"),
                )
                .with_hint("use letters, digits and `_`, starting with a letter"),
            );
        }
        if let Some(d) = &spec.default
            && !spec.kind.accepts(d)
        {
            diags.push(Diagnostic::at(
                "wrong-type",
                at(&path!["inputs", name.as_str(), "default"]),
                format!("default of input `{name}` is not a {}", spec.kind.name()),
            ));
        }
    }
    check_triggers(flow, root, catalog, diags);
    check_on_failure(flow, root, catalog, diags);
    if let Some(r) = &flow.retention {
        for (key, value) in [
            ("max_age", &r.max_age),
            ("failed_max_age", &r.failed_max_age),
        ] {
            if let Some(text) = value
                && let Err(e) = humantime::parse_duration(text)
            {
                diags.push(
                    Diagnostic::at(
                        "invalid-duration",
                        at(&path!["retention", key]),
                        format!("invalid duration `{text}`: {e}"),
                    )
                    .with_hint("write a number and a unit, e.g. `30d`, `12h`"),
                );
            }
        }
        if r.max_age.is_none() && r.failed_max_age.is_none() && r.max_runs.is_none() {
            diags.push(
                Diagnostic::at(
                    "empty-retention",
                    at(&path!["retention"]),
                    "`retention` names no limit",
                )
                .with_hint("give `max_age`, `failed_max_age` and/or `max_runs`"),
            );
        }
    }

    // Step ids and kinds.
    let mut index_of: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, step) in flow.steps.iter().enumerate() {
        if !is_identifier(&step.id) {
            diags.push(
                Diagnostic::at(
                    "invalid-id",
                    at(&path!["steps", i, "id"]),
                    format!("invalid step id `{}`", step.id),
                )
                .with_hint("use letters, digits and `_` (expressions read it as `steps.<id>`)"),
            );
        }
        if index_of.insert(step.id.as_str(), i).is_some() {
            diags.push(
                Diagnostic::at(
                    "duplicate-step",
                    at(&path!["steps", i, "id"]),
                    format!("duplicate step id `{}`", step.id),
                )
                .with_hint("step ids must be unique within a flow"),
            );
        }
        let kinds = step.kinds();
        match kinds.len() {
            0 => diags.push(
                Diagnostic::at(
                    "missing-kind",
                    at(&path!["steps", i]),
                    format!("step `{}` does nothing", step.id),
                )
                .with_hint(format!("add one of: {}", STEP_KINDS.join(", "))),
            ),
            1 => {}
            _ => {
                let names: Vec<&str> = kinds.iter().map(|k| k.name()).collect();
                diags.push(
                    Diagnostic::at(
                        "several-kinds",
                        at_key(&path!["steps", i, names[1]]),
                        format!("step `{}` has several kinds: {}", step.id, names.join(", ")),
                    )
                    .with_hint("split it into one step per kind"),
                );
            }
        }
    }
    // Needs.
    let mut graph: DiGraph<usize, ()> = DiGraph::new();
    let nodes: Vec<NodeIndex> = (0..flow.steps.len()).map(|i| graph.add_node(i)).collect();
    for (i, step) in flow.steps.iter().enumerate() {
        for (j, need) in step.needs.iter().enumerate() {
            match index_of.get(need.as_str()) {
                Some(&n) if n == i => diags.push(Diagnostic::at(
                    "cycle",
                    at(&path!["steps", i, "needs", j]),
                    format!("step `{need}` needs itself"),
                )),
                Some(&n) => {
                    graph.update_edge(nodes[n], nodes[i], ());
                }
                None => {
                    let hint = match did_you_mean(need, index_of.keys().copied()) {
                        Some(s) => format!("did you mean `{s}`?"),
                        None => "`needs` lists ids of steps in this flow".to_string(),
                    };
                    diags.push(
                        Diagnostic::at(
                            "unknown-step",
                            at(&path!["steps", i, "needs", j]),
                            format!("`needs` names `{need}`, which is not a step of this flow"),
                        )
                        .with_hint(hint),
                    );
                }
            }
        }
    }
    let mut cyclic = false;
    for scc in tarjan_scc(&graph) {
        if scc.len() > 1 {
            cyclic = true;
            let mut members: Vec<usize> = scc.iter().map(|n| graph[*n]).collect();
            members.sort();
            let names: Vec<&str> = members.iter().map(|i| flow.steps[*i].id.as_str()).collect();
            let first = members[0];
            diags.push(
                Diagnostic::at(
                    "cycle",
                    at_key(&path!["steps", first, "needs"]),
                    format!("steps form a cycle: {} → {}", names.join(" → "), names[0]),
                )
                .with_hint("remove one of these `needs` so the steps form a DAG"),
            );
        }
    }
    if cyclic {
        return None;
    }
    let topo: Vec<usize> = petgraph::algo::toposort(&graph, None)
        .map(|order| order.into_iter().map(|n| graph[n]).collect())
        .unwrap_or_default();

    let all_steps: BTreeSet<String> = flow.steps.iter().map(|s| s.id.clone()).collect();
    let base_scope = RefScope {
        inputs: flow.inputs.keys().cloned().collect(),
        all_steps: std::sync::Arc::new(all_steps.clone()),
        connections: catalog.connections.clone(),
        plugins: catalog.plugins.clone(),
        secrets: catalog
            .secrets
            .as_ref()
            .map(|s| s.names().map(str::to_string).collect()),
        operations: std::sync::Arc::new(catalog.operations.clone()),
        plugin_versions: std::sync::Arc::new(catalog.plugin_versions.clone()),
        flows: catalog.flows.as_ref().map(|known| {
            let mut known = known.clone();
            known.insert(flow.id.clone(), flow.inputs.clone());
            std::sync::Arc::new(known)
        }),
        types: root_types(flow),
        ..RefScope::default()
    };
    let mut steps = Vec::with_capacity(flow.steps.len());
    let mut ok = true;
    // Steps are checked in topological order, so each one knows the output
    // types of the steps it reads.
    let mut step_types: BTreeMap<String, Type> = BTreeMap::new();
    let mut compiled_at: Vec<Option<CompiledStep>> = (0..flow.steps.len()).map(|_| None).collect();
    for &i in &topo {
        let step = &flow.steps[i];
        let mut upstream = BTreeSet::new();
        let reversed = Reversed(&graph);
        let mut dfs = Dfs::new(reversed, nodes[i]);
        while let Some(n) = dfs.next(reversed) {
            if n != nodes[i] {
                upstream.insert(flow.steps[graph[n]].id.clone());
            }
        }
        let scope = RefScope {
            upstream,
            current: Some(step.id.clone()),
            ..base_scope.clone()
        };
        match compile_step(
            flow,
            i,
            step,
            root,
            text,
            scope,
            &step_types,
            &index_of,
            diags,
        ) {
            Some((s, output_type)) => {
                step_types.insert(step.id.clone(), output_type);
                compiled_at[i] = Some(s);
            }
            None => ok = false,
        }
    }
    steps.extend(compiled_at.into_iter().flatten());
    let mut output = None;
    if let Some(o) = &flow.output {
        let scope = RefScope {
            upstream: all_steps,
            ..base_scope
        };
        let mut c = Checker::new(root, text, vec![], diags, scope);
        c.step_types = Some(&step_types);
        output = c.template(&path!["output"], o);
        ok &= output.is_some();
    }
    if !ok {
        return None;
    }
    for i in 0..steps.len() {
        let needs = steps[i].needs.clone();
        for n in needs {
            steps[n].dependents.push(i);
        }
    }
    let sinks = (0..steps.len())
        .filter(|i| steps[*i].dependents.is_empty())
        .collect();
    Some((steps, topo, output, sinks))
}

/// `on_failure` names a flow (checked where flows are known) that can take
/// the `run.failed` data as its inputs: every input it requires is one of
/// them, and they are strings.
fn check_on_failure(flow: &Flow, root: &Node, catalog: &Catalog, diags: &mut Vec<Diagnostic>) {
    let Some(handler) = &flow.on_failure else {
        return;
    };
    let id = handler.flow_id();
    let at = match handler {
        OnFailure::Flow(_) => root.locate(&path!["on_failure"]),
        OnFailure::Handler(_) => root.locate(&path!["on_failure", "flow"]),
    };
    if !is_slug(id) {
        diags.push(
            Diagnostic::at("invalid-id", at, format!("invalid flow id `{id}`"))
                .with_hint("use letters, digits, `-` and `_`"),
        );
        return;
    }
    let Some(known) = &catalog.flows else {
        return;
    };
    let declared = if id == flow.id {
        Some(&flow.inputs)
    } else {
        known.get(id)
    };
    let Some(declared) = declared else {
        let hint = match did_you_mean(id, known.keys().map(String::as_str)) {
            Some(s) => format!("did you mean `{s}`?"),
            None if known.is_empty() => "no other flow is known here".to_string(),
            None => format!(
                "known flows: {}",
                known.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        };
        diags.push(
            Diagnostic::at(
                "unknown-flow",
                at,
                format!("`on_failure` names unknown flow `{id}`"),
            )
            .with_hint(hint),
        );
        return;
    };
    for (name, spec) in declared {
        let given = FAILURE_INPUTS.contains(&name.as_str());
        if !given && spec.required && spec.default.is_none() {
            diags.push(
                Diagnostic::at(
                    "missing-input",
                    at,
                    format!("flow `{id}` requires input `{name}`, which a failure does not give"),
                )
                .with_hint(format!(
                    "a failure handler gets {}; give `{name}` a default or make it optional",
                    FAILURE_INPUTS.join(", ")
                )),
            );
        } else if given && spec.kind != InputType::String {
            diags.push(
                Diagnostic::at(
                    "wrong-type",
                    at,
                    format!(
                        "flow `{id}` declares input `{name}` as {}, but a failure gives a string",
                        spec.kind.name()
                    ),
                )
                .with_hint(format!("declare `{name}: {{ type: string }}`")),
            );
        }
    }
}

/// The inputs an `on_failure` flow is given (the `run.failed` event's data).
pub const FAILURE_INPUTS: &[&str] = &["flow_id", "run_id", "status", "step", "error"];

/// A webhook trigger's secret must be a Standard Webhooks secret
/// (`whsec_` + base64 of 24 to 64 bytes): checked when written in the file,
/// and when it names a secret this process holds.
fn check_webhook_secret(text: &str, catalog: &Catalog, at: Loc, diags: &mut Vec<Diagnostic>) {
    use crate::webhooks::signing::Secret;
    let (value, what) = if text.contains(crate::expr::OPEN) {
        let name = text
            .trim()
            .strip_prefix(crate::expr::OPEN)
            .and_then(|r| r.strip_suffix(crate::expr::CLOSE))
            .map(str::trim)
            .and_then(|r| r.strip_prefix("secrets."))
            .filter(|n| n.chars().all(|c| c.is_alphanumeric() || c == '_'));
        let Some(name) = name else {
            diags.push(
                Diagnostic::at(
                    "invalid-webhook-secret",
                    at,
                    "a webhook trigger's secret is a secret, not an expression",
                )
                .with_hint("write `${{ secrets.NAME }}` and set SLUICE_SECRET_NAME"),
            );
            return;
        };
        // An unset secret is reported by the reference check.
        match catalog.secrets.as_ref().and_then(|s| s.get(name)) {
            Some(v) => (v.to_string(), format!("the secret `{name}`")),
            None => return,
        }
    } else {
        (text.to_string(), "the webhook secret".to_string())
    };
    if let Err(e) = Secret::parse(&value) {
        diags.push(
            Diagnostic::at(
                "invalid-webhook-secret",
                at,
                format!("{what} is not a Standard Webhooks secret: {e}"),
            )
            .with_hint("use `whsec_` and the base64 of 24 to 64 random bytes, e.g. from `sluice webhook endpoint add`"),
        );
    }
}

/// The static types of the variables every expression may read.
fn root_types(flow: &Flow) -> BTreeMap<String, Type> {
    let inputs = Type::object(
        flow.inputs
            .iter()
            .map(|(name, spec)| (name.clone(), input_type(spec.kind))),
        // Unknown inputs are reported by the reference check, with a hint.
        true,
    );
    let mut trigger: Option<Type> = None;
    let kinds = flow
        .triggers
        .iter()
        .map(trigger_type)
        .chain([manual_trigger_type(), child_run_trigger_type()]);
    for t in kinds {
        trigger = Some(match trigger {
            Some(prev) => crate::expr::types::join(prev, t),
            None => t,
        });
    }
    BTreeMap::from([
        ("inputs".to_string(), inputs),
        (
            "trigger".to_string(),
            trigger.unwrap_or(Type::Any).named("trigger"),
        ),
        ("secrets".to_string(), Type::any_object()),
        ("index".to_string(), Type::Integer),
    ])
}

fn input_type(kind: InputType) -> Type {
    match kind {
        InputType::String => Type::String,
        InputType::Number => Type::Number,
        InputType::Integer => Type::Integer,
        InputType::Boolean => Type::Bool,
        InputType::Object => Type::any_object(),
        InputType::Array => Type::list(Type::Any),
    }
}

fn fields(list: &[(&str, Type)]) -> Vec<(String, Type)> {
    list.iter()
        .map(|(k, t)| (k.to_string(), t.clone()))
        .collect()
}

/// The `data` of each engine event, as the engine fills it; custom events
/// (fired by flows) carry whatever their payload is.
fn event_data_type(event: &str, entity: Option<crate::unified::Entity>) -> Type {
    let s = Type::String;
    let i = Type::Integer;
    let base = [("connection_id", s.clone()), ("entity", s.clone())];
    let with = |extra: &[(&str, Type)]| {
        let mut all: Vec<(&str, Type)> = base.to_vec();
        all.extend_from_slice(extra);
        Type::object(fields(&all), false).named(&format!("the data of {event}"))
    };
    let record = entity.map_or(Type::Any, |e| e.value_type());
    match event {
        "sync.completed" => with(&[
            ("mode", s.clone()),
            ("added", i.clone()),
            ("updated", i.clone()),
            ("deleted", i.clone()),
            ("duration_ms", i.clone()),
            ("cursor", Type::Any),
        ]),
        "sync.failed" => with(&[
            ("mode", s.clone()),
            ("error", s.clone()),
            ("details", Type::Any),
            ("pages", i.clone()),
        ]),
        // One record each, or a batch of ids for large changes.
        "record.created" | "record.updated" => with(&[
            ("remote_id", s.clone()),
            ("record", record),
            ("batch", Type::Bool),
            ("remote_ids", Type::list(s.clone())),
        ]),
        "record.deleted" => with(&[
            ("remote_id", s.clone()),
            ("batch", Type::Bool),
            ("remote_ids", Type::list(s.clone())),
        ]),
        "run.succeeded" | "run.failed" | "run.cancelled" => Type::object(
            fields(&[
                ("flow_id", s.clone()),
                ("run_id", s.clone()),
                ("status", s.clone()),
                ("step", s.clone()),
                ("error", s.clone()),
            ]),
            false,
        )
        .named(&format!("the data of {event}")),
        "connection.auth_required" => Type::object(
            fields(&[
                ("connection_id", s.clone()),
                ("reason", Type::Any),
                ("at", s.clone()),
            ]),
            false,
        )
        .named("the data of connection.auth_required"),
        "system.error" => Type::object(
            fields(&[
                ("source", s.clone()),
                ("message", s.clone()),
                ("details", Type::Any),
                ("at", s.clone()),
            ]),
            false,
        )
        .named("the data of system.error"),
        "connection.status_changed" => Type::object(
            fields(&[
                ("connection_id", s.clone()),
                ("from", s.clone()),
                ("status", s.clone()),
                ("reason", Type::Any),
                ("at", s),
            ]),
            false,
        )
        .named("the data of connection.status_changed"),
        _ => Type::Any,
    }
}

/// `trigger` of a run started by the CLI or the API (any flow can be).
fn manual_trigger_type() -> Type {
    Type::object(
        fields(&[
            ("type", Type::String),
            ("source", Type::String),
            ("token", Type::Any),
        ]),
        false,
    )
}

/// `trigger` of a child run, started by a `flow` step (any flow can be).
fn child_run_trigger_type() -> Type {
    Type::object(
        fields(&[
            ("type", Type::String),
            ("parent_run_id", Type::String),
            ("parent_flow_id", Type::String),
            ("parent_step", Type::String),
            ("chain", Type::list(Type::String)),
        ]),
        false,
    )
}

/// `trigger` as each trigger kind fills it.
fn trigger_type(t: &Trigger) -> Type {
    if let Some(w) = &t.webhook {
        let body = match &w.body_schema {
            Some(s) => Type::from_schema(s, s).named("the webhook body"),
            None => Type::Any,
        };
        Type::object(
            fields(&[
                ("type", Type::String),
                ("path", Type::String),
                ("webhook_id", Type::String),
                ("body", body),
                ("headers", Type::any_object()),
                ("query", Type::any_object()),
                ("received_at", Type::String),
            ]),
            false,
        )
    } else if t.schedule.is_some() {
        Type::object(
            fields(&[
                ("type", Type::String),
                ("cron", Type::String),
                ("timezone", Type::String),
                ("scheduled_for", Type::String),
                ("missed", Type::Any),
            ]),
            false,
        )
    } else if let Some(event) = &t.event {
        let entity = t
            .entity
            .as_deref()
            .and_then(|e| e.parse::<crate::unified::Entity>().ok());
        let envelope = Type::object(
            fields(&[
                ("id", Type::String),
                ("type", Type::String),
                ("timestamp", Type::String),
                ("connection_id", Type::String),
                ("data", event_data_type(event, entity)),
            ]),
            false,
        )
        .named("event envelope");
        Type::object(
            fields(&[("type", Type::String), ("event", envelope)]),
            false,
        )
    } else {
        manual_trigger_type()
    }
}

#[allow(clippy::too_many_arguments)]
fn compile_step(
    flow: &Flow,
    i: usize,
    step: &Step,
    root: &Node,
    text: &str,
    scope: RefScope,
    step_types: &BTreeMap<String, Type>,
    index_of: &BTreeMap<&str, usize>,
    diags: &mut Vec<Diagnostic>,
) -> Option<(CompiledStep, Type)> {
    let _ = flow;
    let mut c = Checker::new(root, text, path!["steps", i].to_vec(), diags, scope);
    c.step_types = Some(step_types);
    let mut ok = true;
    let for_each = match &step.for_each {
        Some(v) => {
            let (t, ty) = c.template_typed(&path!["for_each"], v);
            let item = match ty {
                Type::List(elem) => *elem,
                Type::Any => Type::Any,
                other => {
                    c.error(
                        &path!["for_each"],
                        "wrong-type",
                        format!("`for_each` needs a list, but this gives {}", other.a()),
                    )
                    .hint = Some("give a list, e.g. `${{ steps.read.output.records }}`".into());
                    ok = false;
                    Type::Any
                }
            };
            c.scope.types.insert("item".into(), item);
            ok &= t.is_some();
            t
        }
        None => None,
    };
    c.scope.item = step.for_each.is_some();
    if step.with.is_some() && step.plugin.is_none() {
        c.error_at_key(
            &path!["with"],
            "misplaced-key",
            "`with` is the input of `plugin` steps only",
        )
        .hint = Some("remove `with`, or make this a `plugin` step".into());
        ok = false;
    }
    if step.concurrency.is_some() && step.for_each.is_none() {
        c.error_at_key(
            &path!["concurrency"],
            "concurrency-without-for-each",
            "`concurrency` applies only to steps with `for_each`",
        )
        .hint = Some("add `for_each:` or remove `concurrency`".into());
        ok = false;
    }
    let condition = match &step.condition {
        Some(text) => {
            let t = c.condition(&path!["if"], text);
            ok &= t.is_some();
            t
        }
        None => None,
    };
    let timeout = match &step.timeout {
        Some(t) => {
            let d = c.duration(&path!["timeout"], t);
            ok &= d.is_some();
            d
        }
        None => None,
    };
    let retry = match &step.retry {
        Some(r) => {
            let initial = match &r.initial {
                Some(t) => c.duration(&path!["retry", "initial"], t),
                None => Some(Duration::from_secs(1)),
            };
            let max = match &r.max {
                Some(t) => c.duration(&path!["retry", "max"], t),
                None => Some(Duration::from_secs(60)),
            };
            match (initial, max) {
                (Some(initial), Some(max)) => {
                    if max < initial {
                        c.error(
                            &path!["retry", "max"],
                            "invalid-retry",
                            "`retry.max` is shorter than `retry.initial`",
                        );
                        ok = false;
                    }
                    RetrySpec {
                        max_attempts: r.max_attempts.max(1),
                        backoff: r.backoff,
                        initial,
                        max,
                        jitter: r.jitter,
                    }
                }
                _ => {
                    ok = false;
                    RetrySpec::NONE
                }
            }
        }
        None => RetrySpec::NONE,
    };
    let ctx = steps::CompileCtx { step, timeout };
    let kind = step.kind().and_then(|k| k.compile(&ctx, &mut c));
    if !ok {
        return None;
    }
    let kind = kind?;
    // A `for_each` step's output is the list of its items' outputs.
    let output_type = match &for_each {
        Some(_) => Type::list(kind.output_type()),
        None => kind.output_type(),
    };
    let step = CompiledStep {
        id: step.id.clone(),
        needs: step
            .needs
            .iter()
            .filter_map(|n| index_of.get(n.as_str()).copied())
            .collect(),
        dependents: Vec::new(),
        condition,
        for_each,
        concurrency: step.concurrency.unwrap_or(1).max(1) as usize,
        retry,
        timeout,
        on_error: step.on_error,
        kind,
    };
    Some((step, output_type))
}

fn check_triggers(flow: &Flow, root: &Node, catalog: &Catalog, diags: &mut Vec<Diagnostic>) {
    for (i, t) in flow.triggers.iter().enumerate() {
        let here = |rel: &[Seg]| {
            let mut p = path!["triggers", i].to_vec();
            p.extend_from_slice(rel);
            root.locate(&p)
        };
        let kinds: Vec<&str> = [
            t.schedule.as_ref().map(|_| "schedule"),
            t.event.as_ref().map(|_| "event"),
            t.webhook.as_ref().map(|_| "webhook"),
            t.manual.as_ref().map(|_| "manual"),
        ]
        .into_iter()
        .flatten()
        .collect();
        match kinds.len() {
            0 => diags.push(
                Diagnostic::at("missing-kind", here(&[]), "trigger has no kind")
                    .with_hint("use one of: schedule, event, webhook, manual"),
            ),
            1 => {}
            _ => diags.push(
                Diagnostic::at(
                    "several-kinds",
                    here(&[]),
                    format!("trigger has several kinds: {}", kinds.join(", ")),
                )
                .with_hint("write one trigger per list item"),
            ),
        }
        if let Some(cron) = &t.schedule
            && let Err(e) = crate::schedule::parse_cron(cron)
        {
            diags.push(
                Diagnostic::at("invalid-cron", here(&path!["schedule"]), e)
                    .with_hint(crate::schedule::CRON_HINT),
            );
        }
        if let Some(tz) = &t.timezone {
            if t.schedule.is_none() {
                diags.push(Diagnostic::at(
                    "misplaced-key",
                    here(&path!["timezone"]),
                    "`timezone` applies only to `schedule` triggers",
                ));
            } else if chrono_tz::Tz::from_str(tz).is_err() {
                diags.push(
                    Diagnostic::at(
                        "invalid-timezone",
                        here(&path!["timezone"]),
                        format!("unknown time zone `{tz}`"),
                    )
                    .with_hint("use an IANA name such as `Europe/Berlin` or `America/Chicago`"),
                );
            }
        }
        if let Some(ev) = &t.event
            && !EVENT_TYPES.contains(&ev.as_str())
            && crate::webhooks::check_custom_event_type(ev).is_err()
        {
            let hint = match did_you_mean(ev, EVENT_TYPES.iter().copied()) {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!("events: {}", EVENT_TYPES.join(", ")),
            };
            diags.push(
                Diagnostic::at(
                    "unknown-event",
                    here(&path!["event"]),
                    format!("unknown event `{ev}`"),
                )
                .with_hint(hint),
            );
        }
        if t.event.is_none() {
            for key in ["connection", "entity"] {
                let present = if key == "connection" {
                    t.connection.is_some()
                } else {
                    t.entity.is_some()
                };
                if present {
                    diags.push(Diagnostic::at(
                        "misplaced-key",
                        here(&path![key]),
                        format!("`{key}` filters `event` triggers only"),
                    ));
                }
            }
        }
        if let Some(c) = &t.connection
            && !catalog.connections.contains(c)
        {
            diags.push(
                Diagnostic::at(
                    "unknown-connection",
                    here(&path!["connection"]),
                    format!("unknown connection `{c}`"),
                )
                .with_hint(format!(
                    "known connections: {}",
                    catalog.connections.join(", ")
                )),
            );
        }
        if let Some(e) = &t.entity
            && e.parse::<crate::unified::Entity>().is_err()
        {
            diags.push(Diagnostic::at(
                "unknown-entity",
                here(&path!["entity"]),
                format!("unknown entity `{e}`"),
            ));
        }
        if let Some(secret) = t.webhook.as_ref().and_then(|w| w.secret.as_ref()) {
            check_webhook_secret(secret, catalog, here(&path!["webhook", "secret"]), diags);
        }
        if let Some(w) = &t.webhook {
            respond::check(
                flow,
                w,
                root,
                |rel| {
                    let mut p = path!["webhook"].to_vec();
                    p.extend_from_slice(rel);
                    here(&p)
                },
                diags,
            );
        }
        if let Some(w) = &t.webhook
            && !w.path.split('/').all(is_slug)
        {
            diags.push(
                Diagnostic::at(
                    "invalid-path",
                    here(&path!["webhook", "path"]),
                    format!("invalid webhook path `{}`", w.path),
                )
                .with_hint("use letters, digits, `-`, `_` and `/` between segments"),
            );
        }
    }
}
