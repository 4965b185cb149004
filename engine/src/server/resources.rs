//! The API over what the engine already does: plugins (the registry's
//! upload and validation), connections (add, status history, test), syncs,
//! unified records, outbound webhook endpoints and messages, API tokens.
//! Each handler checks its input, calls the engine's function and maps the
//! error to an API error; none holds logic of its own.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::{self, Scope};
use super::error::{ApiError, ApiResult};
use super::{AppState, check_id, json_body, require_content_type};
use crate::connectors::connection as conn;
use crate::connectors::http::ConnectionConfig;
use crate::connectors::{ConnectorError, ErrorCode, ListQuery};
use crate::plugins::RegistryError;
use crate::store::{MessageFilter, MessageStatus};
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

/// `POST /v1/plugins?name=&version=&description=`: the body is the `.wasm`.
pub async fn plugin_upload(
    State(state): State<Arc<AppState>>,
    Query(q): Params,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    require_content_type(&headers, &["application/wasm", "application/octet-stream"])?;
    let name = q
        .get("name")
        .ok_or_else(|| ApiError::invalid("missing query parameter `name`"))?;
    let version = q
        .get("version")
        .ok_or_else(|| ApiError::invalid("missing query parameter `version`"))?;
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
        .push(
            name,
            version,
            &body,
            q.get("description").map(String::as_str),
        )
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
    Ok(Json(json!({ "items": items })))
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
    Ok(Json(json!({"name": name, "versions": versions})))
}

#[derive(Deserialize)]
struct NewConnection {
    id: String,
    #[serde(flatten)]
    config: ConnectionConfig,
    #[serde(default)]
    replace: bool,
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
    let row = state
        .store
        .connection(&req.id)
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
    state.engine.set_connection(&req.id, c.clone());
    state
        .connections
        .write()
        .expect("connections lock")
        .insert(req.id.clone(), c);
    Ok((StatusCode::CREATED, Json(connection_json(&row))))
}

fn connection_json(row: &crate::store::ConnectionRow) -> Value {
    // The config holds parameters and secret *names*, never secret values.
    json!({
        "id": row.id,
        "definition": row.definition,
        "config": serde_json::from_str::<Value>(&row.config).unwrap_or(Value::Null),
        "status": row.status,
        "status_reason": row.status_reason,
        "status_at": row.status_at,
        "created_at": row.created_at,
    })
}

/// `GET /v1/connections`.
pub async fn connection_list(State(state): State<Arc<AppState>>) -> ApiResult<impl IntoResponse> {
    let mut items = vec![
        json!({"id": crate::connectors::sandbox::CONNECTION, "definition": "sandbox", "status": "online"}),
    ];
    items.extend(state.store.connections().await?.iter().map(connection_json));
    Ok(Json(json!({ "items": items })))
}

/// `GET /v1/connections/{id}`: status and status history.
pub async fn connection_get(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    Query(q): Params,
) -> ApiResult<impl IntoResponse> {
    check_id("connection", &id)?;
    let row = state
        .store
        .connection(&id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no connection `{id}`")))?;
    let limit: i64 = q
        .get("history_limit")
        .map(|l| l.parse())
        .transpose()
        .map_err(|_| ApiError::invalid("history_limit must be a number"))?
        .unwrap_or(50);
    let history = state.store.status_history(&id, limit).await?;
    let mut out = connection_json(&row);
    out["history"] = serde_json::to_value(history).map_err(ApiError::internal)?;
    Ok(Json(out))
}

fn connector_error(e: &ConnectorError) -> Value {
    json!({
        "code": e.code().as_str(),
        "message": e.message,
        "details": e.details(),
    })
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
        Ok(latency) => {
            json!({"ok": true, "status": status, "latency_ms": latency.as_millis() as u64})
        }
        Err(e) => json!({"ok": false, "status": status, "error": connector_error(&e)}),
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SyncBody {
    entity: String,
    #[serde(default)]
    full: bool,
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
        Ok(report) => Ok(Json(
            serde_json::to_value(report).map_err(ApiError::internal)?,
        )),
        Err(e) => {
            let text = e.to_string();
            if text.contains("already running") {
                Err(ApiError::conflict(text))
            } else {
                Err(ApiError::unavailable(format!("sync failed: {text}"), 30))
            }
        }
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
    Ok(Json(json!({ "items": items })))
}

fn connector_api_error(e: ConnectorError) -> ApiError {
    let details = connector_error(&e);
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

/// `GET /v1/connections/{id}/{entity}?modified_after=&cursor=&limit=&raw=&FIELD=VALUE`.
pub async fn records_list(
    State(state): State<Arc<AppState>>,
    Path((id, entity)): Path<(String, String)>,
    Query(q): Params,
) -> ApiResult<impl IntoResponse> {
    let connector = state.connector(&id)?;
    let entity: Entity = entity.parse().map_err(ApiError::not_found)?;
    let mut query = ListQuery::default();
    for (k, v) in q {
        match k.as_str() {
            "modified_after" => {
                query.modified_after = Some(
                    chrono::DateTime::parse_from_rfc3339(&v)
                        .map_err(|e| {
                            ApiError::invalid(format!(
                                "modified_after `{v}` is not an RFC 3339 time: {e}"
                            ))
                        })?
                        .with_timezone(&chrono::Utc),
                )
            }
            "cursor" => query.cursor = Some(v),
            "limit" => {
                let n: usize = v
                    .parse()
                    .ok()
                    .filter(|n| (1..=1000).contains(n))
                    .ok_or_else(|| ApiError::invalid("limit must be 1 to 1000"))?;
                query.limit = Some(n);
            }
            "raw" => query.raw = v == "true",
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
    Ok(Json(json!({
        "items": page.records,
        "next_cursor": page.next_cursor,
    })))
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointBody {
    url: String,
    #[serde(default)]
    event_types: Vec<String>,
    #[serde(default)]
    connection_id: Option<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    secret: Option<String>,
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
    let mut out = serde_json::to_value(&e).map_err(ApiError::internal)?;
    out["secret"] = Value::String(e.secret.to_text());
    Ok((StatusCode::CREATED, Json(out)))
}

/// `GET /v1/webhooks/endpoints`.
pub async fn endpoint_list(State(state): State<Arc<AppState>>) -> ApiResult<impl IntoResponse> {
    Ok(Json(json!({"items": state.store.endpoints().await?})))
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EndpointPatch {
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
    Ok(Json(json!({
        "id": id,
        "secret": secret.to_text(),
        "previous_secret_valid_for_s": endpoints::ROTATION_OVERLAP.as_secs(),
    })))
}

/// `GET /v1/webhooks/messages?endpoint=&status=&limit=`.
pub async fn message_list(
    State(state): State<Arc<AppState>>,
    Query(q): Params,
) -> ApiResult<impl IntoResponse> {
    let status = q
        .get("status")
        .map(|s| s.parse::<MessageStatus>())
        .transpose()
        .map_err(ApiError::invalid)?;
    if let Some(e) = q.get("endpoint") {
        check_id("endpoint", e)?;
    }
    let limit: i64 = q
        .get("limit")
        .map(|l| l.parse())
        .transpose()
        .map_err(|_| ApiError::invalid("limit must be a number"))?
        .unwrap_or(50);
    let items = state
        .store
        .messages(&MessageFilter {
            endpoint_id: q.get("endpoint").cloned(),
            status,
            limit: limit.clamp(1, 500),
        })
        .await?;
    Ok(Json(json!({ "items": items })))
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
    let mut out = serde_json::to_value(m).map_err(ApiError::internal)?;
    out["attempts"] = serde_json::to_value(attempts).map_err(ApiError::internal)?;
    Ok(Json(out))
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
        Json(json!({"id": id, "status": "pending"})),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    name: String,
    scope: String,
    #[serde(default)]
    rate_per_sec: Option<i64>,
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
    let mut out = serde_json::to_value(&t.row).map_err(ApiError::internal)?;
    out["token"] = Value::String(t.text);
    Ok((StatusCode::CREATED, Json(out)))
}

/// `GET /v1/tokens`.
pub async fn token_list(State(state): State<Arc<AppState>>) -> ApiResult<impl IntoResponse> {
    Ok(Json(json!({"items": state.store.tokens().await?})))
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
