//! `sluice test`: flows tested like code, in memory, touching no connection.
//!
//! A test file (`NAME.test.yaml`, beside `NAME.yaml`) names the trigger,
//! pins what each connection and plugin answers, and says what must come
//! out:
//!
//! ```yaml
//! flow: po-high-value-alert.yaml        # default: this file's name without `.test`
//! tests:
//!   - name: one big order alerts
//!     inputs: { threshold: 10000 }
//!     trigger: { type: manual }          # what `trigger` holds (default: a manual start)
//!     secrets: { API_TOKEN: test-token }
//!     connections:
//!       sandbox:                         # pinned per connection and entity
//!         purchase_order:
//!           records:                     # what reads return (equality filters apply)
//!             - { remote_id: "4500000001", number: PO-1, status: approved, total: 25000, ... }
//!           # write: {...}               # what create/update return (default: the data written)
//!           # error: { code: NOT_FOUND, message: gone }   # every call fails so
//!     plugins:
//!       po-risk: { output: { risk: 0.9 } }               # or { error: "..." }
//!     expect:
//!       status: succeeded                # default
//!       output: { alerts: [...] }        # the run's output, compared whole
//!       steps: { approved: succeeded }   # step statuses
//!       writes: [ { connection: sandbox, entity: purchase_order, op: update, id: "1", data: {...} } ]
//!       events: [ { type: po.high_value, data: {...} } ]
//!       error: "substring of the run's error"
//! ```
//!
//! Pinned records are completed with the common fields a connector fills
//! (`id`, `connection_id`, timestamps, `custom_fields`) and must be valid
//! records of the entity. Each run uses a throwaway SQLite store, so the
//! engine under test is the real one: durable steps, retries, strict
//! expressions. A mismatch prints a diff by JSON path.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::connectors::{
    ConnectionStatus, Connector, ConnectorError, ConnectorErrorKind, ConnectorRegistry, ListQuery,
    Page, WriteRequest, record_matches,
};
use crate::expr::secrets::Secrets;
use crate::flow::{self, Catalog};
use crate::run::Engine;
use crate::steps::CompiledKind;
use crate::store::Store;
use crate::unified::Entity;

/// A test file.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestFile {
    /// The flow file, relative to the test file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow: Option<String>,
    /// The cases.
    pub tests: Vec<TestCase>,
}

/// One case.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TestCase {
    /// What the case checks.
    pub name: String,
    /// Flow inputs.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub inputs: Map<String, Value>,
    /// What `trigger` holds (e.g. `{type: webhook, body: {...}}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<Value>,
    /// Secrets the flow reads.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secrets: BTreeMap<String, String>,
    /// Pinned answers per connection, then per entity.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub connections: BTreeMap<String, BTreeMap<String, Pinned>>,
    /// Pinned plugin outputs by plugin name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub plugins: BTreeMap<String, PinnedPlugin>,
    /// What must come out.
    #[serde(default)]
    pub expect: Expect,
}

/// What a connection answers for one entity.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Pinned {
    /// Records that reads return.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub records: Vec<Value>,
    /// What create and update return (default: the record written).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub write: Option<Value>,
    /// Every call fails with this error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<PinnedError>,
}

/// A pinned connector failure.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PinnedError {
    /// A unified code: `NOT_FOUND`, `VALIDATION_FAILED`, `RATE_LIMIT_EXCEEDED`,
    /// `UPSTREAM_ERROR`, `UNAVAILABLE`, `AUTHENTICATION_FAILED`, `PERMISSION_DENIED`.
    pub code: String,
    /// The message.
    #[serde(default)]
    pub message: String,
}

/// What a plugin returns.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PinnedPlugin {
    /// Its output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// Or its error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What must come out of a case.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// `succeeded` (default), `failed` or `cancelled`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    /// The run's output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    /// Step statuses by step id.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub steps: BTreeMap<String, String>,
    /// Writes made, in any order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub writes: Option<Vec<Value>>,
    /// Events fired (`{type, data}`), in any order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Vec<Value>>,
    /// A text the run's error message contains.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The result of one case.
#[derive(Debug, Clone, Serialize)]
pub struct CaseResult {
    /// The test file.
    pub file: String,
    /// The case name.
    pub name: String,
    /// Every mismatch (empty: passed).
    pub failures: Vec<String>,
}

impl CaseResult {
    /// Whether the case passed.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Test files under `paths`: `*.test.yaml` / `*.test.yml`, directories walked.
pub fn find_test_files(paths: &[PathBuf]) -> Vec<PathBuf> {
    fn is_test(p: &Path) -> bool {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        name.ends_with(".test.yaml") || name.ends_with(".test.yml")
    }
    let mut out = Vec::new();
    for p in paths {
        if p.is_dir() {
            out.extend(flow::files_under(p, &is_test));
        } else if p.is_file() {
            out.push(p.clone());
        }
    }
    out
}

/// The flow a test file tests.
fn flow_path(test_file: &Path, file: &TestFile) -> PathBuf {
    let dir = test_file.parent().unwrap_or(Path::new("."));
    match &file.flow {
        Some(f) => dir.join(f),
        None => {
            let name = test_file.file_name().and_then(|n| n.to_str()).unwrap_or("");
            let stem = name
                .strip_suffix(".test.yaml")
                .or_else(|| name.strip_suffix(".test.yml"))
                .unwrap_or(name);
            dir.join(format!("{stem}.yaml"))
        }
    }
}

/// Runs every case of one test file.
pub async fn run_file(path: &Path) -> Vec<CaseResult> {
    let shown = path.display().to_string();
    let fail_all = |msg: String| {
        vec![CaseResult {
            file: shown.clone(),
            name: "(file)".into(),
            failures: vec![msg],
        }]
    };
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => return fail_all(format!("cannot read {shown}: {e}")),
    };
    let file: TestFile = match serde_saphyr::from_str(&text) {
        Ok(f) => f,
        Err(e) => {
            let first = e.to_string().lines().next().unwrap_or("").to_string();
            return fail_all(format!("{shown} is not a valid test file: {first}"));
        }
    };
    let flow_file = flow_path(path, &file);
    let flow_text = match std::fs::read_to_string(&flow_file) {
        Ok(t) => t,
        Err(e) => {
            return fail_all(format!(
                "cannot read the flow {}: {e} (set `flow:` in the test file)",
                flow_file.display()
            ));
        }
    };
    let mut out = Vec::new();
    for case in &file.tests {
        let failures = match run_case(&flow_file.display().to_string(), &flow_text, case).await {
            Ok(f) => f,
            Err(e) => vec![e],
        };
        out.push(CaseResult {
            file: shown.clone(),
            name: case.name.clone(),
            failures,
        });
    }
    out
}

/// Runs one case against the flow text; the mismatches found.
pub async fn run_case(
    flow_file: &str,
    flow_text: &str,
    case: &TestCase,
) -> Result<Vec<String>, String> {
    let writes = Arc::new(Mutex::new(Vec::new()));
    let mut registry = ConnectorRegistry::new();
    for (name, entities) in &case.connections {
        let mut pinned = BTreeMap::new();
        for (entity, p) in entities {
            let e: Entity = entity
                .parse()
                .map_err(|e| format!("connections.{name}: {e}"))?;
            let mut p = p.clone();
            for (i, r) in p.records.iter_mut().enumerate() {
                *r = complete(name, e, r.clone())
                    .map_err(|m| format!("connections.{name}.{entity}.records[{i}]: {m}"))?;
            }
            pinned.insert(e, p);
        }
        registry.insert(
            name,
            Arc::new(PinnedConnector {
                name: name.clone(),
                pinned,
                writes: writes.clone(),
            }),
        );
    }
    let catalog = Catalog {
        connections: registry.names(),
        plugins: None,
        secrets: Some(Secrets::from_pairs(case.secrets.clone())),
        plugin_versions: BTreeMap::new(),
        operations: BTreeMap::new(),
        flows: None,
    };
    let compiled = flow::compile(flow_file, flow_text, &catalog).map_err(|e| {
        let mut msg = format!(
            "the flow does not validate ({} problem(s))",
            e.diagnostics.len()
        );
        for d in &e.diagnostics {
            msg.push_str(&format!("\n      {flow_file}:{d}"));
        }
        msg
    })?;
    let db = std::env::temp_dir().join(format!("sluice-test-{}.db", uuid::Uuid::now_v7()));
    let url = format!("sqlite://{}", db.display());
    let result = async {
        let store = Store::connect(&url).await.map_err(|e| e.to_string())?;
        let outputs: BTreeMap<String, Result<Value, String>> = case
            .plugins
            .iter()
            .map(|(k, p)| {
                let v = match (&p.output, &p.error) {
                    (_, Some(e)) => Err(e.clone()),
                    (Some(o), None) => Ok(o.clone()),
                    (None, None) => Ok(Value::Null),
                };
                (k.clone(), v)
            })
            .collect();
        let engine = Engine::new(
            store.clone(),
            registry,
            Secrets::from_pairs(case.secrets.clone()),
        )
        .with_plugin_outputs(outputs);
        let flow = Arc::new(compiled);
        let trigger = case
            .trigger
            .clone()
            .unwrap_or_else(|| json!({"type": "manual", "source": "test"}));
        let outcome = engine
            .run(flow.clone(), &case.inputs, trigger, None)
            .await
            .map_err(|e| format!("the run did not start: {e}"))?;
        let steps = store
            .steps(&outcome.run_id)
            .await
            .map_err(|e| e.to_string())?;
        store.close().await;
        let mut failures = Vec::new();
        let status = outcome.status.as_str();
        let want_status = case.expect.status.as_deref().unwrap_or("succeeded");
        if status != want_status {
            let why = outcome
                .error
                .as_ref()
                .and_then(|e| e.get("message"))
                .and_then(Value::as_str)
                .map(|m| format!(": {m}"))
                .unwrap_or_default();
            failures.push(format!("status: expected {want_status}, got {status}{why}"));
        }
        if let Some(want) = &case.expect.output {
            let got = outcome.output.clone().unwrap_or(Value::Null);
            diff("output", want, &got, &mut failures);
        }
        if let Some(want) = &case.expect.error {
            let got = outcome
                .error
                .as_ref()
                .and_then(|e| e.get("message"))
                .and_then(Value::as_str)
                .unwrap_or("");
            if !got.contains(want.as_str()) {
                failures.push(format!(
                    "error: expected a message containing `{want}`, got `{got}`"
                ));
            }
        }
        for (id, want) in &case.expect.steps {
            match steps.iter().find(|s| &s.step_id == id) {
                Some(s) if s.status.as_str() == want => {}
                Some(s) => failures.push(format!(
                    "steps.{id}: expected {want}, got {}",
                    s.status.as_str()
                )),
                None => failures.push(format!("steps.{id}: expected {want}, but it did not run")),
            }
        }
        if let Some(want) = &case.expect.writes {
            let got = writes.lock().expect("writes").clone();
            same_items("writes", want, &got, &mut failures);
        }
        if let Some(want) = &case.expect.events {
            let mut got = Vec::new();
            for s in &steps {
                let is_webhook = flow
                    .step_index(&s.step_id)
                    .is_some_and(|i| matches!(flow.steps[i].kind, CompiledKind::Webhook(_)));
                if !is_webhook {
                    continue;
                }
                let envelopes = match &s.output {
                    Some(Value::Array(items)) => items.clone(),
                    Some(v) => vec![v.clone()],
                    None => vec![],
                };
                got.extend(
                    envelopes
                        .into_iter()
                        .filter(|e| e.is_object())
                        .map(|e| json!({"type": e["type"], "data": e["data"]})),
                );
            }
            same_items("events", want, &got, &mut failures);
        }
        Ok(failures)
    }
    .await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    result
}

/// Completes a pinned record with the fields a connector fills and checks it.
fn complete(connection: &str, entity: Entity, record: Value) -> Result<Value, String> {
    let Value::Object(mut r) = record else {
        return Err("a record is a mapping".into());
    };
    let remote_id = match r.get("remote_id") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => return Err("a pinned record needs `remote_id`".into()),
    };
    r.insert("remote_id".into(), json!(remote_id));
    r.entry("id")
        .or_insert_with(|| json!(format!("{connection}:{}:{remote_id}", entity.name())));
    r.entry("connection_id")
        .or_insert_with(|| json!(connection));
    r.entry("remote_created_at")
        .or_insert_with(|| json!("2026-01-01T00:00:00Z"));
    r.entry("remote_updated_at")
        .or_insert_with(|| json!("2026-01-01T00:00:00Z"));
    entity
        .validate_owned(Value::Object(r))
        .map_err(|e| format!("not a valid {entity}: {}", e.message))
}

/// A connection answering from pinned data and recording writes.
struct PinnedConnector {
    name: String,
    pinned: BTreeMap<Entity, Pinned>,
    writes: Arc<Mutex<Vec<Value>>>,
}

impl PinnedConnector {
    fn entry(&self, entity: Entity, op: &'static str) -> Result<&Pinned, ConnectorError> {
        let p = self.pinned.get(&entity).ok_or_else(|| {
            ConnectorError::new(
                &self.name,
                ConnectorErrorKind::Validation,
                format!(
                    "the test pins no `{entity}` for connection `{}`; add `connections.{}.{entity}`",
                    self.name, self.name
                ),
            )
        })?;
        if let Some(e) = &p.error {
            let kind = match e.code.as_str() {
                "NOT_FOUND" => ConnectorErrorKind::NotFound,
                "VALIDATION_FAILED" | "INVALID_REQUEST" => ConnectorErrorKind::Validation,
                "RATE_LIMIT_EXCEEDED" => ConnectorErrorKind::RateLimited,
                "UNAVAILABLE" | "SERVICE_UNAVAILABLE" => ConnectorErrorKind::Unavailable,
                "AUTHENTICATION_FAILED" => ConnectorErrorKind::AuthRequired,
                "PERMISSION_DENIED" => ConnectorErrorKind::PermissionDenied,
                "UPSTREAM_ERROR" | "TRANSIENT" => ConnectorErrorKind::Transient,
                _ => ConnectorErrorKind::Permanent,
            };
            let mut err = ConnectorError::new(&self.name, kind, e.message.clone());
            err.entity = Some(entity);
            err.operation = Some(op);
            return Err(err);
        }
        Ok(p)
    }

    fn write(&self, op: &'static str, req: &WriteRequest<'_>) -> Result<Value, ConnectorError> {
        let p = self.entry(req.entity, op)?;
        let mut w = json!({"connection": self.name, "entity": req.entity.name(), "op": op});
        if let Some(id) = req.remote_id {
            w["id"] = json!(id);
        }
        if !req.data.is_null() {
            w["data"] = req.data.clone();
        }
        self.writes.lock().expect("writes").push(w);
        if let Some(v) = &p.write {
            return Ok(v.clone());
        }
        let mut record = p
            .records
            .iter()
            .find(|r| req.remote_id.is_some_and(|id| r["remote_id"] == id))
            .cloned()
            .unwrap_or_else(|| json!({}));
        if let (Value::Object(r), Value::Object(d)) = (&mut record, req.data) {
            for (k, v) in d {
                r.insert(k.clone(), v.clone());
            }
        }
        if op == "delete" {
            record["remote_was_deleted"] = json!(true);
        }
        Ok(record)
    }
}

#[async_trait]
impl Connector for PinnedConnector {
    async fn list(&self, entity: Entity, query: &ListQuery) -> Result<Page, ConnectorError> {
        let p = self.entry(entity, "list")?;
        let records = p
            .records
            .iter()
            .filter(|r| record_matches(r, &query.filters))
            .filter(|r| match query.modified_after {
                Some(after) => r["remote_updated_at"]
                    .as_str()
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    .is_none_or(|t| t > after),
                None => true,
            })
            .take(query.limit.unwrap_or(usize::MAX))
            .cloned()
            .collect();
        Ok(Page {
            records,
            next_cursor: None,
        })
    }

    async fn get(&self, entity: Entity, remote_id: &str) -> Result<Value, ConnectorError> {
        let p = self.entry(entity, "get")?;
        p.records
            .iter()
            .find(|r| r["remote_id"] == remote_id)
            .cloned()
            .ok_or_else(|| {
                ConnectorError::new(
                    &self.name,
                    ConnectorErrorKind::NotFound,
                    format!("no pinned {entity} with remote_id `{remote_id}`"),
                )
            })
    }

    async fn create(&self, req: WriteRequest<'_>) -> Result<Value, ConnectorError> {
        self.write("create", &req)
    }

    async fn update(&self, req: WriteRequest<'_>) -> Result<Value, ConnectorError> {
        self.write("update", &req)
    }

    async fn delete(&self, req: WriteRequest<'_>) -> Result<Value, ConnectorError> {
        self.write("delete", &req)
    }

    async fn health(&self) -> ConnectionStatus {
        ConnectionStatus::Online
    }

    fn entities(&self) -> Vec<Entity> {
        self.pinned.keys().copied().collect()
    }
}

/// Differences between `want` and `got`, by JSON path.
pub fn diff(path: &str, want: &Value, got: &Value, out: &mut Vec<String>) {
    match (want, got) {
        (Value::Object(w), Value::Object(g)) => {
            for (k, wv) in w {
                match g.get(k) {
                    Some(gv) => diff(&format!("{path}.{k}"), wv, gv, out),
                    None => out.push(format!("{path}.{k}: expected {wv}, but it is missing")),
                }
            }
            for k in g.keys().filter(|k| !w.contains_key(*k)) {
                out.push(format!("{path}.{k}: not expected, got {}", g[k]));
            }
        }
        (Value::Array(w), Value::Array(g)) => {
            for (i, (wv, gv)) in w.iter().zip(g).enumerate() {
                diff(&format!("{path}[{i}]"), wv, gv, out);
            }
            if w.len() != g.len() {
                out.push(format!(
                    "{path}: expected {} element(s), got {}",
                    w.len(),
                    g.len()
                ));
            }
        }
        (Value::Number(a), Value::Number(b)) if a.as_f64() == b.as_f64() => {}
        (w, g) if w == g => {}
        (w, g) => out.push(format!("{path}: expected {w}, got {g}")),
    }
}

/// Compares two lists as multisets.
fn same_items(what: &str, want: &[Value], got: &[Value], out: &mut Vec<String>) {
    let mut left: Vec<&Value> = got.iter().collect();
    let mut missing = Vec::new();
    for w in want {
        match left.iter().position(|g| {
            let mut d = Vec::new();
            diff("", w, g, &mut d);
            d.is_empty()
        }) {
            Some(i) => {
                left.remove(i);
            }
            None => missing.push(w),
        }
    }
    for m in missing {
        out.push(format!("{what}: expected {m}, not made"));
    }
    for g in left {
        out.push(format!("{what}: not expected, made {g}"));
    }
}

/// A test file that replays a stored run: its inputs and trigger, what its
/// reads and plugins returned, and what came out.
pub async fn export_run(store: &Store, run_id: &str) -> Result<(String, TestFile), String> {
    let run = store
        .get_run(run_id)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no run {run_id}"))?;
    let source = store
        .flow_revision(&run.flow_id, run.flow_revision)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("the flow revision of run {run_id} is not stored"))?
        .source;
    let compiled = flow::compile(
        "flow.yaml",
        &source,
        &Catalog {
            connections: vec![],
            plugins: None,
            secrets: None,
            plugin_versions: BTreeMap::new(),
            operations: BTreeMap::new(),
            flows: None,
        },
    );
    let flow: flow::Flow = match &compiled {
        Ok(c) => c.flow.clone(),
        Err(_) => {
            let root = crate::flow::source::parse_yaml(&source).map_err(|(m, _)| m)?;
            serde_json::from_value(root.to_json()).map_err(|e| e.to_string())?
        }
    };
    let steps = store.steps(run_id).await.map_err(|e| e.to_string())?;
    let mut connections: BTreeMap<String, BTreeMap<String, Pinned>> = BTreeMap::new();
    let mut plugins = BTreeMap::new();
    let mut expect_steps = BTreeMap::new();
    for s in &steps {
        expect_steps.insert(s.step_id.clone(), s.status.as_str().to_string());
        let Some(step) = flow.steps.iter().find(|x| x.id == s.step_id) else {
            continue;
        };
        if let (Some(r), Some(out)) = (&step.read, &s.output) {
            let outputs = if step.for_each.is_some() {
                out.as_array().cloned().unwrap_or_default()
            } else {
                vec![out.clone()]
            };
            let entry = connections
                .entry(r.connection.clone())
                .or_default()
                .entry(r.entity.clone())
                .or_default();
            for o in outputs {
                for rec in o["records"].as_array().cloned().unwrap_or_default() {
                    if !entry.records.contains(&rec) {
                        entry.records.push(rec);
                    }
                }
            }
        }
        if let Some(w) = &step.write {
            connections
                .entry(w.connection.clone())
                .or_default()
                .entry(w.entity.clone())
                .or_default();
        }
        if let (Some(p), Some(out)) = (&step.plugin, &s.output) {
            let output = if step.for_each.is_some() {
                out.as_array().and_then(|a| a.first()).cloned()
            } else {
                Some(out.clone())
            };
            plugins.insert(
                p.name.clone(),
                PinnedPlugin {
                    output,
                    error: None,
                },
            );
        }
    }
    let case = TestCase {
        name: format!("replay of run {run_id}"),
        inputs: run.inputs.as_object().cloned().unwrap_or_default(),
        trigger: Some(run.trigger.clone()),
        secrets: BTreeMap::new(),
        connections,
        plugins,
        expect: Expect {
            status: Some(run.status.as_str().to_string()),
            output: run.output.clone(),
            steps: expect_steps,
            writes: None,
            events: None,
            error: run
                .error
                .as_ref()
                .and_then(|e| e.get("message"))
                .and_then(Value::as_str)
                .map(str::to_string),
        },
    };
    Ok((
        run.flow_id.clone(),
        TestFile {
            flow: Some(format!("{}.yaml", run.flow_id)),
            tests: vec![case],
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_names_the_path_of_each_difference() {
        let mut out = Vec::new();
        diff(
            "output",
            &json!({"a": [1, {"b": 2}], "c": "x"}),
            &json!({"a": [1.0, {"b": 3}], "d": true}),
            &mut out,
        );
        assert_eq!(
            out,
            vec![
                "output.a[1].b: expected 2, got 3",
                "output.c: expected \"x\", but it is missing",
                "output.d: not expected, got true",
            ]
        );
    }

    #[test]
    fn writes_compare_in_any_order() {
        let mut out = Vec::new();
        same_items(
            "writes",
            &[json!({"id": 1}), json!({"id": 2})],
            &[json!({"id": 2}), json!({"id": 1})],
            &mut out,
        );
        assert!(out.is_empty(), "{out:?}");
        same_items("writes", &[json!({"id": 1})], &[json!({"id": 3})], &mut out);
        assert_eq!(out.len(), 2, "{out:?}");
    }
}
