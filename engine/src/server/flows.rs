//! The flows a server runs: loaded from the flows directory at start and
//! from the store (uploads), kept compiled in memory with their trigger
//! indexes, and reloaded from the store periodically so processes sharing a
//! PostgreSQL database see each other's uploads.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use schemars::JsonSchema;
use serde::Serialize;
use serde_json::{Value, json};

use super::error::{ApiError, ApiResult};
use super::routes::Items;
use super::{AppState, check_id, require_content_type};
use crate::expr::{Scope as ExprScope, Template};
use crate::flow::{self, CompiledFlow};
use crate::store::StoreError;
use crate::webhooks::signing::Secret;

/// A flow the server knows.
#[derive(Clone)]
pub struct LoadedFlow {
    /// Compiled latest revision.
    pub compiled: Arc<CompiledFlow>,
    /// Its revision number.
    pub revision: i64,
    /// Whether its triggers start runs.
    pub enabled: bool,
    /// `api` or `file`.
    pub origin: String,
    /// The webhook trigger's secret, resolved (or why it could not be).
    pub hook_secret: Option<Result<Secret, String>>,
}

/// Loaded flows by id, and webhook paths to flow ids.
#[derive(Default)]
pub struct FlowSet {
    flows: RwLock<HashMap<String, LoadedFlow>>,
}

impl FlowSet {
    /// A flow by id.
    pub fn get(&self, id: &str) -> Option<LoadedFlow> {
        self.flows.read().expect("flow set lock").get(id).cloned()
    }

    /// All flows, by id.
    pub fn all(&self) -> Vec<LoadedFlow> {
        let mut v: Vec<LoadedFlow> = self
            .flows
            .read()
            .expect("flow set lock")
            .values()
            .cloned()
            .collect();
        v.sort_by(|a, b| a.compiled.id().cmp(b.compiled.id()));
        v
    }

    /// The enabled flow whose webhook trigger has `path`.
    pub fn by_hook(&self, path: &str) -> Option<LoadedFlow> {
        self.flows
            .read()
            .expect("flow set lock")
            .values()
            .find(|f| hook_path(&f.compiled) == Some(path))
            .cloned()
    }

    fn put(&self, f: LoadedFlow) {
        self.flows
            .write()
            .expect("flow set lock")
            .insert(f.compiled.id().to_string(), f);
    }

    fn remove(&self, id: &str) -> bool {
        self.flows
            .write()
            .expect("flow set lock")
            .remove(id)
            .is_some()
    }

    fn set_enabled(&self, id: &str, enabled: bool) {
        if let Some(f) = self.flows.write().expect("flow set lock").get_mut(id) {
            f.enabled = enabled;
        }
    }
}

impl crate::run::FlowLibrary for FlowSet {
    fn flow(&self, id: &str) -> Result<Option<Arc<CompiledFlow>>, String> {
        Ok(self.get(id).map(|f| f.compiled))
    }
}

/// The flows `flow` steps and `on_failure` may name: those loaded, those
/// stored and not deleted (uploads not loaded yet), and `extra` (files
/// being loaded together).
async fn known_flows(
    state: &AppState,
    extra: flow::KnownFlows,
) -> Result<flow::KnownFlows, StoreError> {
    let mut known = flow::KnownFlows::new();
    for s in state.store.flow_settings().await? {
        if s.deleted_at.is_none()
            && let Some(rev) = state.store.flow_revisions(&s.id).await?.pop()
            && let Some((id, inputs)) = flow::flow_signature(&rev.source)
        {
            known.insert(id, inputs);
        }
    }
    for f in state.flows.all() {
        known.insert(f.compiled.id().to_string(), f.compiled.flow.inputs.clone());
    }
    known.extend(extra);
    Ok(known)
}

/// The path of a flow's webhook trigger, without leading `/`.
pub fn hook_path(f: &CompiledFlow) -> Option<&str> {
    f.flow
        .triggers
        .iter()
        .find_map(|t| t.webhook.as_ref())
        .map(|w| w.path.trim_start_matches('/'))
}

fn resolve_hook_secret(state: &AppState, f: &CompiledFlow) -> Option<Result<Secret, String>> {
    let text = f
        .flow
        .triggers
        .iter()
        .find_map(|t| t.webhook.as_ref())?
        .secret
        .as_ref()?;
    let scope = ExprScope {
        secrets: state.secrets.to_value(),
        ..Default::default()
    };
    Some(
        Template::compile_strict(&Value::String(text.clone()))
            .and_then(|t| t.eval(&scope.context(None)))
            .map_err(|e| e.to_string())
            .and_then(|v| match v {
                Value::String(s) => Secret::parse(&s).map_err(|e| e.to_string()),
                other => Err(format!("the secret evaluates to {other}, not a string")),
            })
            .map_err(|e| {
                format!(
                    "flow `{}`: the webhook trigger's secret cannot be used: {e}",
                    f.id()
                )
            }),
    )
}

async fn compile_text(state: &AppState, file: &str, text: &str) -> ApiResult<CompiledFlow> {
    let mut catalog = state.engine.catalog_with_plugins().await?;
    catalog.flows = Some(known_flows(state, Default::default()).await?);
    flow::compile(file, text, &catalog).map_err(|e| {
        ApiError::validation(format!(
            "the flow has {} problem(s); see details.diagnostics",
            e.diagnostics.len()
        ))
        .with_details(json!({"file": e.file, "diagnostics": e.diagnostics}))
    })
}

/// Refuses a webhook path that another flow already serves.
fn check_hook_conflict(state: &AppState, f: &CompiledFlow) -> ApiResult<()> {
    if let Some(path) = hook_path(f)
        && let Some(other) = state.flows.by_hook(path)
        && other.compiled.id() != f.id()
    {
        return Err(ApiError::conflict(format!(
            "webhook path `{path}` is already served by flow `{}`",
            other.compiled.id()
        )));
    }
    Ok(())
}

async fn install(
    state: &AppState,
    compiled: CompiledFlow,
    enabled: bool,
    origin: &str,
) -> Result<LoadedFlow, StoreError> {
    let revision = state
        .store
        .save_flow(compiled.id(), &compiled.source, &compiled.hash)
        .await?;
    state
        .store
        .put_flow_settings(compiled.id(), enabled, origin)
        .await?;
    let loaded = LoadedFlow {
        hook_secret: resolve_hook_secret(state, &compiled),
        compiled: Arc::new(compiled),
        revision,
        enabled,
        origin: origin.to_string(),
    };
    state.flows.put(loaded.clone());
    Ok(loaded)
}

/// Loads every `*.yaml` flow of `dir` (a missing directory is no error).
/// Files that do not validate are logged with their diagnostics and skipped.
pub async fn load_dir(state: &AppState, dir: &Path) -> Result<(), String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        tracing::info!(dir = %dir.display(), "no flows directory");
        return Ok(());
    };
    let mut files: Vec<_> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| crate::flow::is_flow_file(p))
        .collect();
    files.sort();
    let mut catalog = state
        .engine
        .catalog_with_plugins()
        .await
        .map_err(|e| e.to_string())?;
    catalog.flows = Some(
        known_flows(state, flow::known_flows(&files))
            .await
            .map_err(|e| e.to_string())?,
    );
    let settings = state
        .store
        .flow_settings()
        .await
        .map_err(|e| e.to_string())?;
    for file in files {
        match flow::compile_file(&file, &catalog) {
            Ok(compiled) => {
                let prior = settings.iter().find(|s| s.id == compiled.id());
                // A flow deleted through the API stays deleted; one disabled stays disabled.
                if prior.is_some_and(|s| s.deleted_at.is_some()) {
                    continue;
                }
                let enabled = prior.is_none_or(|s| s.enabled);
                install(state, compiled, enabled, "file")
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Err(e) => tracing::error!("{e}\nflow file skipped: {}", file.display()),
        }
    }
    Ok(())
}

/// Brings the set in line with the store: flows uploaded, changed, enabled,
/// disabled or deleted by other processes.
pub async fn reload(state: &AppState) -> Result<(), StoreError> {
    let catalog = match state.engine.catalog_with_plugins().await {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "flows not reloaded");
            return Ok(());
        }
    };
    for s in state.store.flow_settings().await? {
        if s.deleted_at.is_some() {
            state.flows.remove(&s.id);
            continue;
        }
        let current = state.flows.get(&s.id);
        let Some(latest) = state.store.flow_revisions(&s.id).await?.pop() else {
            continue;
        };
        match current {
            Some(c) if c.revision == latest.revision => {
                if c.enabled != s.enabled {
                    state.flows.set_enabled(&s.id, s.enabled);
                }
            }
            _ => match flow::compile(
                &format!("{}@{}", s.id, latest.revision),
                &latest.source,
                &catalog,
            ) {
                Ok(compiled) => state.flows.put(LoadedFlow {
                    hook_secret: resolve_hook_secret(state, &compiled),
                    compiled: Arc::new(compiled),
                    revision: latest.revision,
                    enabled: s.enabled,
                    origin: s.origin.clone(),
                }),
                Err(e) => tracing::warn!("stored flow `{}` does not compile now: {e}", s.id),
            },
        }
    }
    Ok(())
}

/// A flow as the API shows it.
#[derive(Serialize, JsonSchema)]
pub struct FlowSummary {
    /// Flow id.
    pub id: String,
    /// Latest revision.
    pub revision: i64,
    /// Whether its triggers start runs.
    pub enabled: bool,
    /// `api` (uploaded) or `file` (from the flows directory).
    pub origin: String,
    /// What the flow is for.
    pub description: Option<String>,
    /// Number of steps.
    pub steps: usize,
    /// What starts the flow.
    pub triggers: Vec<crate::flow::model::Trigger>,
    /// sha256 of the source.
    pub hash: String,
}

/// A flow with its source and revisions.
#[derive(Serialize, JsonSchema)]
pub struct FlowDetail {
    #[serde(flatten)]
    summary: FlowSummary,
    /// The YAML of the revision asked for (default: the latest).
    source: String,
    /// Which revision `source` is.
    source_revision: i64,
    /// Every stored revision, oldest first.
    revisions: Vec<RevisionOut>,
}

/// One stored revision of a flow.
#[derive(Serialize, JsonSchema)]
pub struct RevisionOut {
    /// Revision number.
    revision: i64,
    /// sha256 of its source.
    hash: String,
    /// Stored (ms).
    created_at: i64,
}

/// The body of `POST /v1/flows`: the flow's YAML text.
pub struct FlowYaml;

impl JsonSchema for FlowYaml {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "FlowYaml".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "description": "A flow in YAML (`apiVersion: sluice/v1`), UTF-8; its JSON Schema is `sluice schema`'s."
        })
    }
}

fn summary(f: &LoadedFlow) -> FlowSummary {
    FlowSummary {
        id: f.compiled.id().to_string(),
        revision: f.revision,
        enabled: f.enabled,
        origin: f.origin.clone(),
        description: f.compiled.flow.description.clone(),
        steps: f.compiled.steps.len(),
        triggers: f.compiled.flow.triggers.clone(),
        hash: f.compiled.hash.clone(),
    }
}

/// `POST /v1/flows`: the body is the YAML.
pub async fn upload(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    require_content_type(
        &headers,
        &[
            "application/yaml",
            "application/x-yaml",
            "text/yaml",
            "text/x-yaml",
        ],
    )?;
    let text = std::str::from_utf8(&body)
        .map_err(|e| ApiError::invalid(format!("the flow is not UTF-8 text: {e}")))?;
    let compiled = compile_text(&state, "flow.yaml", text).await?;
    check_id("flow", compiled.id())?;
    check_hook_conflict(&state, &compiled)?;
    let before = state.flows.get(compiled.id()).map(|f| f.revision);
    let enabled = state.flows.get(compiled.id()).is_none_or(|f| f.enabled);
    let loaded = install(&state, compiled, enabled, "api").await?;
    let status = if before == Some(loaded.revision) {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, axum::Json(summary(&loaded))))
}

/// `GET /v1/flows`.
pub async fn list(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let items = state.flows.all().iter().map(summary).collect();
    axum::Json(Items { items })
}

fn loaded(state: &AppState, id: &str) -> ApiResult<LoadedFlow> {
    check_id("flow", id)?;
    state
        .flows
        .get(id)
        .ok_or_else(|| ApiError::not_found(format!("no flow `{id}`")))
}

/// The query of `GET /v1/flows/{id}`.
#[derive(serde::Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FlowQuery {
    /// Answer this revision's source instead of the latest's.
    #[schemars(range(min = 1))]
    revision: Option<i64>,
}

/// `GET /v1/flows/{id}?revision=`: the flow, its source and its revisions.
pub async fn get_one(
    State(state): State<Arc<AppState>>,
    UrlPath(id): UrlPath<String>,
    query: Result<axum::extract::Query<FlowQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<impl IntoResponse> {
    let axum::extract::Query(q) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    let f = loaded(&state, &id)?;
    let (source, source_revision) = match q.revision {
        Some(r) => match state.store.flow_revision(&id, r).await? {
            Some(rev) => (rev.source, rev.revision),
            None => {
                return Err(ApiError::not_found(format!(
                    "flow `{id}` has no revision {r}"
                )));
            }
        },
        None => (f.compiled.source.clone(), f.revision),
    };
    let revisions = state
        .store
        .flow_revisions(&id)
        .await?
        .into_iter()
        .map(|r| RevisionOut {
            revision: r.revision,
            hash: r.hash,
            created_at: r.created_at,
        })
        .collect();
    Ok(axum::Json(FlowDetail {
        summary: summary(&f),
        source,
        source_revision,
        revisions,
    }))
}

/// `DELETE /v1/flows/{id}`.
pub async fn remove(
    State(state): State<Arc<AppState>>,
    UrlPath(id): UrlPath<String>,
) -> ApiResult<impl IntoResponse> {
    loaded(&state, &id)?;
    state.store.delete_flow(&id).await?;
    state.flows.remove(&id);
    Ok(StatusCode::NO_CONTENT)
}

async fn set_enabled(
    state: &AppState,
    id: &str,
    enabled: bool,
) -> ApiResult<axum::Json<FlowSummary>> {
    loaded(state, id)?;
    if !state.store.set_flow_enabled(id, enabled).await? {
        return Err(ApiError::not_found(format!("no flow `{id}`")));
    }
    state.flows.set_enabled(id, enabled);
    Ok(axum::Json(summary(&loaded(state, id)?)))
}

/// `POST /v1/flows/{id}/enable`.
pub async fn enable(
    State(state): State<Arc<AppState>>,
    UrlPath(id): UrlPath<String>,
) -> ApiResult<impl IntoResponse> {
    set_enabled(&state, &id, true).await
}

/// `POST /v1/flows/{id}/disable`.
pub async fn disable(
    State(state): State<Arc<AppState>>,
    UrlPath(id): UrlPath<String>,
) -> ApiResult<impl IntoResponse> {
    set_enabled(&state, &id, false).await
}
