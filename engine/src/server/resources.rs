//! The API over what the engine already does: plugins (the registry's
//! upload and validation), connections (add, status history, test), syncs,
//! unified records, outbound webhook endpoints and messages, API tokens.
//! Each handler checks its input, calls the engine's function and maps the
//! error to an API error; none holds logic of its own.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::auth::{self, Scope};
use super::error::{ApiError, ApiResult};
use super::routes::Items;
use super::{AppState, check_id, json_body, require_content_type};
use crate::connectors::connection as conn;
use crate::connectors::http::ConnectionConfig;
use crate::connectors::{ConnectorError, ErrorCode, ListQuery};
use crate::plugins::RegistryError;
use crate::store::{
    AttemptLog, MessageFilter, MessageRecord, MessageStatus, PluginRecord, StatusEvent, TokenRow,
};
use crate::unified::Entity;
use crate::webhooks::endpoints::{self, EndpointError, NewEndpoint};

type Params = Query<BTreeMap<String, String>>;

fn registry_error(e: RegistryError) -> ApiError {
    match e {
        RegistryError::Refused { .. } => ApiError::validation(e.to_string()),
        RegistryError::BadInput(m) => ApiError::invalid(m),
        RegistryError::Conflict { .. } => ApiError::conflict(e.to_string()),
        RegistryError::NotFound(m) => ApiError::not_found(m),
        RegistryError::Host(m) => ApiError::unavailable(format!("plugin host: {m}"), 30),
        RegistryError::Store(s) => ApiError::internal(s),
    }
}

/// A query string of type `Q`, or 400 naming what is wrong with it.
fn query_of<Q>(q: Result<Query<Q>, QueryRejection>) -> ApiResult<Q> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiError::invalid(e.body_text()))
}

/// The query of `POST /v1/plugins`.
#[derive(Deserialize, JsonSchema)]
pub struct PluginQuery {
    /// Plugin name.
    name: String,
    /// Semver version, e.g. `1.2.0`.
    version: String,
    /// What it does.
    description: Option<String>,
}

/// A WebAssembly component (`wasm32-wasip2`, exporting the plugin world).
pub struct WasmBytes;

impl JsonSchema for WasmBytes {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "WasmBytes".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "contentMediaType": "application/wasm",
            "description": "The component's bytes (they start with `\\0asm`)."
        })
    }
}

/// A plugin's versions.
#[derive(Serialize, JsonSchema)]
pub struct PluginVersions {
    /// Plugin name.
    name: String,
    /// Its versions.
    versions: Vec<PluginRecord>,
}

/// `POST /v1/plugins?name=&version=&description=`: the body is the `.wasm`.
pub async fn plugin_upload(
    State(state): State<Arc<AppState>>,
    q: Result<Query<PluginQuery>, QueryRejection>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    require_content_type(&headers, &["application/wasm", "application/octet-stream"])?;
    let q = query_of(q)?;
    let (name, version) = (&q.name, &q.version);
    if !body.starts_with(b"\0asm") {
        return Err(ApiError::validation(format!(
            "plugin {name}@{version} refused: the body is not WebAssembly (it does not start with `\\0asm`)"
        )));
    }
    let before = state
        .plugins
        .list(Some(name))
        .await
        .map_err(registry_error)?
        .iter()
        .any(|p| &p.version == version);
    let rec = state
        .plugins
        .push(name, version, &body, q.description.as_deref())
        .await
        .map_err(registry_error)?;
    let status = if before {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(rec)))
}

/// `GET /v1/plugins`.
pub async fn plugin_list(State(state): State<Arc<AppState>>) -> ApiResult<impl IntoResponse> {
    let items = state.plugins.list(None).await.map_err(registry_error)?;
    Ok(Json(Items { items }))
}

/// `GET /v1/plugins/{name}`: its versions.
pub async fn plugin_get(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> ApiResult<impl IntoResponse> {
    check_id("plugin", &name)?;
    let versions = state
        .plugins
        .list(Some(&name))
        .await
        .map_err(registry_error)?;
    if versions.is_empty() {
        return Err(ApiError::not_found(format!("no plugin `{name}`")));
    }
    Ok(Json(PluginVersions { name, versions }))
}

/// The body of `POST /v1/connections`.
#[derive(Deserialize, JsonSchema)]
pub struct NewConnection {
    /// Connection id, as flows name it.
    id: String,
    #[serde(flatten)]
    config: ConnectionConfig,
    /// Replace a connection of this id.
    #[serde(default)]
    replace: bool,
}

/// A connection as the API shows it (the sandbox has only id, definition and status).
#[derive(Serialize, JsonSchema)]
pub struct ConnectionOut {
    /// Connection id.
    id: String,
    /// Definition id.
    definition: String,
    /// Parameters and the *names* of secrets, never their values.
    #[serde(skip_serializing_if = "Option::is_none")]
    config: Option<Value>,
    /// `online`, `degraded`, `offline` or `auth_required`.
    status: String,
    /// Why the status last changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    status_reason: Option<String>,
    /// When it last changed (ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    status_at: Option<i64>,
    /// Created (ms).
    #[serde(skip_serializing_if = "Option::is_none")]
    created_at: Option<i64>,
}

/// A connection with its status history.
#[derive(Serialize, JsonSchema)]
pub struct ConnectionDetail {
    #[serde(flatten)]
    connection: ConnectionOut,
    /// Status changes, newest first.
    history: Vec<StatusEvent>,
}

/// The query of `GET /v1/connections/{id}`.
#[derive(Deserialize, JsonSchema)]
pub struct HistoryQuery {
    /// Status changes to return (1 to 1000, default 50).
    #[schemars(range(min = 1, max = 1000))]
    history_limit: Option<i64>,
}

/// `POST /v1/connections`.
pub async fn connection_create(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    let req: NewConnection = json_body(&headers, &body)?;
    conn::check_id(&req.id).map_err(ApiError::invalid)?;
    if state.store.connection(&req.id).await?.is_some() && !req.replace {
        return Err(ApiError::conflict(format!(
            "connection `{}` already exists; send `\"replace\": true` to change it",
            req.id
        )));
    }
    conn::add(&state.store, &state.defs, &req.id, &req.config, req.replace)
        .await
        .map_err(ApiError::validation)?;
    let row = install_connection(&state, &req.id).await?;
    Ok((StatusCode::CREATED, Json(connection_json(&row))))
}

/// Makes a stored connection usable at once: flows, syncs and tests use it
/// without a restart.
pub async fn install_connection(
    state: &AppState,
    id: &str,
) -> ApiResult<crate::store::ConnectionRow> {
    let row = state
        .store
        .connection(id)
        .await?
        .ok_or_else(|| ApiError::internal("a stored connection vanished"))?;
    let c = conn::build(
        &row,
        &state.defs,
        &state.secrets,
        Some(state.status_sink.clone()),
    )
    .map_err(ApiError::validation)?;
    let c = Arc::new(c);
    state.engine.set_connection(id, c.clone());
    state
        .connections
        .write()
        .expect("connections lock")
        .insert(id.to_string(), c);
    Ok(row)
}

fn connection_json(row: &crate::store::ConnectionRow) -> ConnectionOut {
    // The config holds parameters and secret *names*, never secret values.
    ConnectionOut {
        id: row.id.clone(),
        definition: row.definition.clone(),
        config: Some(serde_json::from_str::<Value>(&row.config).unwrap_or(Value::Null)),
        status: row.status.clone(),
        status_reason: row.status_reason.clone(),
        status_at: Some(row.status_at),
        created_at: Some(row.created_at),
    }
}

/// The built-in sandbox connection, as the API shows it.
fn sandbox_json() -> ConnectionOut {
    ConnectionOut {
        id: crate::connectors::sandbox::CONNECTION.to_string(),
        definition: "sandbox".to_string(),
        config: None,
        status: "online".to_string(),
        status_reason: None,
        status_at: None,
        created_at: None,
    }
}

/// `GET /v1/connections`.
pub async fn connection_list(State(state): State<Arc<AppState>>) -> ApiResult<impl IntoResponse> {
    let mut items = vec![sandbox_json()];
    items.extend(state.store.connections().await?.iter().map(connection_json));
    Ok(Json(Items { items }))
}

/// `GET /v1/connections/{id}`: status and status history.
pub async fn connection_get(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    q: Result<Query<HistoryQuery>, QueryRejection>,
) -> ApiResult<impl IntoResponse> {
    check_id("connection", &id)?;
    let q = query_of(q)?;
    let limit = q.history_limit.unwrap_or(50);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid(format!(
            "history_limit must be 1 to 1000, not {limit}"
        )));
    }
    // The sandbox is built in: listed, so readable too (always online).
    if id == crate::connectors::sandbox::CONNECTION {
        return Ok(Json(ConnectionDetail {
            connection: sandbox_json(),
            history: Vec::new(),
        }));
    }
    let row = state
        .store
        .connection(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no connection `{id}`")))?;
    let history = state.store.status_history(&id, limit).await?;
    Ok(Json(ConnectionDetail {
        connection: connection_json(&row),
        history,
    }))
}

/// A connector's error, as the API shows it.
#[derive(Serialize, JsonSchema)]
pub struct ConnectorErrorOut {
    /// Stable code, e.g. `AUTHENTICATION_FAILED`.
    code: &'static str,
    /// What went wrong.
    message: String,
    /// The upstream system's status and body, when there was one.
    details: Value,
}

/// The answer of `POST /v1/connections/{id}/test`.
#[derive(Serialize, JsonSchema)]
pub struct ConnectionTest {
    /// Whether the call succeeded.
    ok: bool,
    /// The connection's status after the call.
    status: &'static str,
    /// How long the call took (when it succeeded).
    #[serde(skip_serializing_if = "Option::is_none")]
    latency_ms: Option<u64>,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ConnectorErrorOut>,
}

fn connector_error(e: &ConnectorError) -> ConnectorErrorOut {
    ConnectorErrorOut {
        code: e.code().as_str(),
        message: e.message.clone(),
        details: e.details(),
    }
}

/// `POST /v1/connections/{id}/test`.
pub async fn connection_test(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    check_id("connection", &id)?;
    let c = state
        .connections
        .read()
        .expect("connections lock")
        .get(&id)
        .cloned()
        .ok_or_else(|| ApiError::not_found(format!("no connection `{id}`")))?;
    let result = c.test().await;
    let status = conn::status_name(c.health_state().status());
    Ok(Json(match result {
        Ok(latency) => ConnectionTest {
            ok: true,
            status,
            latency_ms: Some(latency.as_millis() as u64),
            error: None,
        },
        Err(e) => ConnectionTest {
            ok: false,
            status,
            latency_ms: None,
            error: Some(connector_error(&e)),
        },
    }))
}

/// The body of `POST /v1/connections/{id}/syncs`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SyncBody {
    /// The entity to sync.
    #[schemars(with = "Entity")]
    entity: String,
    /// A full re-sync (detects deletions) instead of an incremental one.
    #[serde(default)]
    full: bool,
    /// Records per page (clamped to 1 to 10000).
    #[serde(default)]
    page_size: Option<usize>,
}

/// `POST /v1/connections/{id}/syncs`: runs a sync to its end.
pub async fn sync_start(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    let req: SyncBody = json_body(&headers, &body)?;
    let connector = state.connector(&id)?;
    let entity: Entity = req.entity.parse().map_err(ApiError::validation)?;
    let mut opts = crate::sync::SyncOptions {
        mode: if req.full {
            crate::sync::Mode::Full
        } else {
            crate::sync::Mode::Incremental
        },
        ..Default::default()
    };
    if let Some(p) = req.page_size {
        opts.page_size = p.clamp(1, 10_000);
    }
    match crate::sync::run(&state.store, connector.as_ref(), &id, entity, &opts, None).await {
        Ok(report) => Ok(Json(report)),
        Err(e @ crate::sync::SyncError::AlreadyRunning { .. }) => {
            Err(ApiError::conflict(e.to_string()))
        }
        // Refused before any page (an entity the system does not serve):
        // the request is wrong, not the system down.
        Err(crate::sync::SyncError::Connector { pages: 0, source })
            if source.code() == crate::connectors::ErrorCode::ValidationFailed =>
        {
            Err(ApiError::validation(format!("sync refused: {source}")))
        }
        Err(e) => Err(ApiError::unavailable(format!("sync failed: {e}"), 30)),
    }
}

/// `GET /v1/connections/{id}/syncs`.
pub async fn sync_status(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    check_id("connection", &id)?;
    let items: Vec<_> = state
        .store
        .sync_states()
        .await?
        .into_iter()
        .filter(|s| s.connection_id == id)
        .collect();
    Ok(Json(Items { items }))
}

fn connector_api_error(e: ConnectorError) -> ApiError {
    let details = serde_json::to_value(connector_error(&e)).unwrap_or(Value::Null);
    let message = e.to_string();
    let err = match e.code() {
        ErrorCode::NotFound => ApiError::not_found(message),
        ErrorCode::ValidationFailed => ApiError::validation(message),
        ErrorCode::RateLimitExceeded => ApiError::rate_limited(
            message,
            e.retry_after.map(|d| d.as_secs().max(1)).unwrap_or(1),
        ),
        _ => ApiError::unavailable(message, 30),
    };
    err.with_details(details)
}

/// The query of `GET /v1/connections/{id}/{entity}`; any other parameter
/// `FIELD=VALUE` (or `FIELD.SUB=VALUE`) filters on a field of the entity.
#[derive(Deserialize, JsonSchema)]
pub struct RecordsQuery {
    /// Only records changed after this time (RFC 3339).
    #[schemars(with = "Option<chrono::DateTime<chrono::Utc>>")]
    modified_after: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Records per page (1 to 1000, default 100).
    #[schemars(range(min = 1, max = 1000))]
    limit: Option<usize>,
    /// Include each record's `raw` upstream payload.
    raw: Option<bool>,
}

/// A unified record of any entity: what connectors return, as JSON.
pub struct UnifiedRecord;

impl JsonSchema for UnifiedRecord {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "UnifiedRecord".into()
    }
    fn json_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
        use crate::unified::{Asset, InventoryItem, PurchaseOrder, Vendor, WorkOrder};
        let any_of = vec![
            generator.subschema_for::<PurchaseOrder>(),
            generator.subschema_for::<WorkOrder>(),
            generator.subschema_for::<Vendor>(),
            generator.subschema_for::<InventoryItem>(),
            generator.subschema_for::<Asset>(),
        ];
        schemars::json_schema!({
            "description": "A record of the path's entity, in the unified model.",
            "anyOf": any_of,
        })
    }
}

/// A page of unified records.
#[derive(Serialize, JsonSchema)]
pub struct RecordPage {
    /// Unified records of the entity.
    #[schemars(with = "Vec<UnifiedRecord>")]
    items: Vec<Value>,
    /// Pass as `cursor` for the next page; null on the last one.
    next_cursor: Option<String>,
}

/// A record's id in its system.
pub struct RemoteId;

impl JsonSchema for RemoteId {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "RemoteId".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "string", "minLength": 1, "maxLength": 256})
    }
}

/// `GET /v1/connections/{id}/{entity}?modified_after=&cursor=&limit=&raw=&FIELD=VALUE`.
pub async fn records_list(
    State(state): State<Arc<AppState>>,
    Path((id, entity)): Path<(String, String)>,
    known: Result<Query<RecordsQuery>, QueryRejection>,
    Query(all): Params,
) -> ApiResult<impl IntoResponse> {
    let connector = state.connector(&id)?;
    let entity: Entity = entity.parse().map_err(ApiError::not_found)?;
    let known = query_of(known)?;
    let mut query = ListQuery {
        cursor: known.cursor,
        raw: known.raw.unwrap_or(false),
        ..ListQuery::default()
    };
    if let Some(v) = &known.modified_after {
        query.modified_after = Some(
            chrono::DateTime::parse_from_rfc3339(v)
                .map_err(|e| {
                    ApiError::invalid(format!("modified_after `{v}` is not an RFC 3339 time: {e}"))
                })?
                .with_timezone(&chrono::Utc),
        );
    }
    if let Some(n) = known.limit {
        if !(1..=1000).contains(&n) {
            return Err(ApiError::invalid("limit must be 1 to 1000"));
        }
        query.limit = Some(n);
    }
    for (k, v) in all {
        match k.as_str() {
            "modified_after" | "cursor" | "limit" | "raw" => {}
            _ => {
                let field = k.split('.').next().unwrap_or("");
                if !crate::unified::shape::Shape::of(entity)
                    .field_names()
                    .any(|f| f == field)
                {
                    return Err(ApiError::invalid(format!(
                        "unknown filter `{k}`: {entity} has no field `{field}`"
                    )));
                }
                query.filters.insert(k, Value::String(v));
            }
        }
    }
    if query.limit.is_none() {
        query.limit = Some(100);
    }
    let page = connector
        .list(entity, &query)
        .await
        .map_err(connector_api_error)?;
    Ok(Json(RecordPage {
        items: page.records,
        next_cursor: page.next_cursor,
    }))
}

/// `GET /v1/connections/{id}/{entity}/{remote_id}`.
pub async fn record_get(
    State(state): State<Arc<AppState>>,
    Path((id, entity, remote_id)): Path<(String, String, String)>,
) -> ApiResult<impl IntoResponse> {
    let connector = state.connector(&id)?;
    let entity: Entity = entity.parse().map_err(ApiError::not_found)?;
    if remote_id.is_empty() || remote_id.len() > 256 || remote_id.contains("..") {
        return Err(ApiError::invalid("invalid remote id"));
    }
    let record = connector
        .get(entity, &remote_id)
        .await
        .map_err(connector_api_error)?;
    Ok(Json(record))
}

fn endpoint_error(e: EndpointError) -> ApiError {
    match e {
        EndpointError::NotFound(_) => ApiError::not_found(e.to_string()),
        EndpointError::Store(s) => ApiError::internal(s),
        other => ApiError::validation(other.to_string()),
    }
}

/// The body of `POST /v1/webhooks/endpoints`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointBody {
    /// Where to POST (HTTPS unless allow-listed).
    url: String,
    /// Event types accepted: exact or wildcard (`sync.*`, `*`); empty accepts all.
    #[serde(default)]
    event_types: Vec<String>,
    /// Only events about this connection.
    #[serde(default)]
    connection_id: Option<String>,
    /// What it is for.
    #[serde(default)]
    description: Option<String>,
    /// A signing secret (`whsec_` + base64); one is made when absent.
    #[serde(default)]
    secret: Option<String>,
}

/// An endpoint with its signing secret (only when created).
#[derive(Serialize, JsonSchema)]
pub struct EndpointWithSecret {
    #[serde(flatten)]
    endpoint: crate::webhooks::endpoints::Endpoint,
    /// The signing secret, `whsec_` + base64.
    secret: String,
}

/// The answer of `POST /v1/webhooks/endpoints/{id}/rotate-secret`.
#[derive(Serialize, JsonSchema)]
pub struct RotatedSecret {
    /// The endpoint.
    id: String,
    /// The new signing secret.
    secret: String,
    /// How long the previous secret keeps signing too.
    previous_secret_valid_for_s: u64,
}

/// `POST /v1/webhooks/endpoints`: the answer holds the signing secret (only here).
pub async fn endpoint_create(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    let req: EndpointBody = json_body(&headers, &body)?;
    let policy = crate::webhooks::ssrf::GuardPolicy::from_env().map_err(ApiError::internal)?;
    let e = endpoints::add(
        &state.store,
        &policy,
        NewEndpoint {
            url: req.url,
            secret: req.secret,
            event_types: req.event_types,
            connection_id: req.connection_id,
            description: req.description,
        },
    )
    .await
    .map_err(endpoint_error)?;
    let secret = e.secret.to_text();
    Ok((
        StatusCode::CREATED,
        Json(EndpointWithSecret {
            endpoint: e,
            secret,
        }),
    ))
}

/// `GET /v1/webhooks/endpoints`.
pub async fn endpoint_list(State(state): State<Arc<AppState>>) -> ApiResult<impl IntoResponse> {
    Ok(Json(Items {
        items: state.store.endpoints().await?,
    }))
}

async fn endpoint_of(
    state: &AppState,
    id: &str,
) -> ApiResult<crate::webhooks::endpoints::Endpoint> {
    check_id("endpoint", id)?;
    state
        .store
        .endpoint(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no webhook endpoint `{id}`")))
}

/// `GET /v1/webhooks/endpoints/{id}`.
pub async fn endpoint_get(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(endpoint_of(&state, &id).await?))
}

/// The body of `PATCH /v1/webhooks/endpoints/{id}`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EndpointPatch {
    /// Whether the endpoint gets events.
    enabled: bool,
}

/// `PATCH /v1/webhooks/endpoints/{id}`.
pub async fn endpoint_update(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    endpoint_of(&state, &id).await?;
    let req: EndpointPatch = json_body(&headers, &body)?;
    endpoints::set_enabled(&state.store, &id, req.enabled)
        .await
        .map_err(endpoint_error)?;
    Ok(Json(endpoint_of(&state, &id).await?))
}

/// `DELETE /v1/webhooks/endpoints/{id}`: disabled for good; its messages stay.
pub async fn endpoint_delete(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    endpoint_of(&state, &id).await?;
    state
        .store
        .set_endpoint_enabled(&id, false, Some("deleted through the API"))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/webhooks/endpoints/{id}/rotate-secret`.
pub async fn endpoint_rotate(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    endpoint_of(&state, &id).await?;
    let secret = endpoints::rotate(&state.store, &id, None)
        .await
        .map_err(endpoint_error)?;
    Ok(Json(RotatedSecret {
        id,
        secret: secret.to_text(),
        previous_secret_valid_for_s: endpoints::ROTATION_OVERLAP.as_secs(),
    }))
}

/// The query of `GET /v1/webhooks/messages`.
#[derive(Deserialize, JsonSchema)]
pub struct MessageQuery {
    /// Only this endpoint's messages.
    endpoint: Option<String>,
    /// Only messages in this state.
    #[schemars(with = "Option<MessageStatus>")]
    status: Option<String>,
    /// Messages to return (1 to 500, default 50).
    #[schemars(range(min = 1, max = 500))]
    limit: Option<i64>,
}

/// A message with its delivery attempts.
#[derive(Serialize, JsonSchema)]
pub struct MessageDetail {
    #[serde(flatten)]
    message: MessageRecord,
    /// Every attempt since it was enqueued, oldest first.
    attempts: Vec<AttemptLog>,
}

/// The answer of `POST /v1/webhooks/messages/{id}/resend`.
#[derive(Serialize, JsonSchema)]
pub struct Resent {
    /// The message.
    id: String,
    /// `pending`: due for delivery now.
    status: MessageStatus,
}

/// `GET /v1/webhooks/messages?endpoint=&status=&limit=`.
pub async fn message_list(
    State(state): State<Arc<AppState>>,
    q: Result<Query<MessageQuery>, QueryRejection>,
) -> ApiResult<impl IntoResponse> {
    let q = query_of(q)?;
    let status = q
        .status
        .map(|s| s.parse::<MessageStatus>())
        .transpose()
        .map_err(ApiError::invalid)?;
    if let Some(e) = &q.endpoint {
        check_id("endpoint", e)?;
    }
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::invalid(format!(
            "limit must be 1 to 500, not {limit}"
        )));
    }
    let items = state
        .store
        .messages(&MessageFilter {
            endpoint_id: q.endpoint,
            status,
            limit,
        })
        .await?;
    Ok(Json(Items { items }))
}

/// `GET /v1/webhooks/messages/{id}`: with its attempts.
pub async fn message_get(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    check_id("message", &id)?;
    let m = state
        .store
        .message(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no webhook message `{id}`")))?;
    let attempts = state.store.message_attempts(&id).await?;
    Ok(Json(MessageDetail {
        message: m,
        attempts,
    }))
}

/// `POST /v1/webhooks/messages/{id}/resend`.
pub async fn message_resend(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    check_id("message", &id)?;
    if !state.store.resend_message(&id).await? {
        return Err(ApiError::not_found(format!("no webhook message `{id}`")));
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(Resent {
            id,
            status: MessageStatus::Pending,
        }),
    ))
}

/// The body of `POST /v1/tokens`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenBody {
    /// Who or what it is for (1 to 100 characters).
    name: String,
    /// What it may do.
    #[schemars(with = "Scope")]
    scope: String,
    /// Requests per second it may make (at least 1); the server's default when absent.
    #[serde(default)]
    rate_per_sec: Option<i64>,
}

/// A token just created, with its text (only here).
#[derive(Serialize, JsonSchema)]
pub struct NewTokenOut {
    #[serde(flatten)]
    row: TokenRow,
    /// `slc_<id>_<secret>`: send as `Authorization: Bearer ...`.
    token: String,
}

/// `POST /v1/tokens`: the answer holds the token (only here).
pub async fn token_create(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    let req: TokenBody = json_body(&headers, &body)?;
    let scope: Scope = req.scope.parse().map_err(ApiError::validation)?;
    let t = auth::create(&state.store, &req.name, scope, req.rate_per_sec)
        .await
        .map_err(ApiError::validation)?;
    Ok((
        StatusCode::CREATED,
        Json(NewTokenOut {
            row: t.row,
            token: t.text,
        }),
    ))
}

/// `GET /v1/tokens`.
pub async fn token_list(State(state): State<Arc<AppState>>) -> ApiResult<impl IntoResponse> {
    Ok(Json(Items {
        items: state.store.tokens().await?,
    }))
}

/// `DELETE /v1/tokens/{id}`.
pub async fn token_revoke(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    check_id("token", &id)?;
    if !state.store.revoke_token(&id).await? {
        return Err(ApiError::not_found(format!("no active token `{id}`")));
    }
    state.auth.forget(&id);
    Ok(StatusCode::NO_CONTENT)
}
