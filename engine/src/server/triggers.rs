//! Triggers that start runs without an API call:
//!
//! - `webhook`: `POST /v1/hooks/{path}`; the run (with body, headers and
//!   query as `trigger`) is stored before `202` + run id is returned; an
//!   optional Standard Webhooks signature is checked with the trigger's
//!   secret; a repeated `webhook-id` within 24 h starts nothing new and
//!   returns the first run's id. With `respond: output` the answer waits for
//!   the run and is the flow's output (see [`crate::flow::respond`]); a
//!   repeated `webhook-id` waits for (or reads) the first run and gets the
//!   same answer. The wait holds no database connection: the run's end
//!   wakes it in-process ([`crate::run::Engine::finished_runs`]), and a run
//!   another process executes is re-read once a second.
//! - `schedule`: cron with an optional time zone. Each tick's run is created
//!   together with the key `tick:<flow>:<trigger>:<time>`, so one tick fires
//!   once however many processes share the database; after downtime only
//!   the latest missed tick fires.
//! - `event`: events in the durable event log (fired by any process sharing
//!   the database, `sluice run` included) start the flows whose trigger
//!   matches (type, connection, entity): one run per event and flow, under
//!   the request key `event:<flow>:<event id>` (see [`crate::events`]).
//! - connection sync schedules (`syncs` in a connection's config): each tick
//!   is claimed in `schedule_ticks` under `sync:<connection>` before the sync
//!   starts, so it runs once however many processes share the database.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};
use tokio::sync::watch;

use super::AppState;
use super::error::{ApiError, ApiResult};
use super::flows::{self, LoadedFlow};
use super::runs::{slot, start_run};
use crate::connectors::http::ConnectionConfig;
use crate::flow::respond::{self, HookReply, ReplyBody, Respond, ResponseSpec};
use crate::schedule::{self, next_after};
use crate::store::now_ms;
use crate::sync::{SyncOptions, SyncSchedule};

/// Headers not copied into a run's trigger data.
const HIDDEN_HEADERS: &[&str] = &["authorization", "cookie", "proxy-authorization"];

/// The path after `/v1/hooks/`: a flow's webhook trigger `path`.
pub struct HookPath;

impl schemars::JsonSchema for HookPath {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "HookPath".into()
    }
    fn inline_schema() -> bool {
        true
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({"type": "string", "minLength": 1})
    }
}

/// The answer of an inbound hook.
#[derive(serde::Serialize, schemars::JsonSchema)]
pub struct HookAnswer {
    /// The run it started (or, for a repeated `webhook-id`, the run the first delivery started).
    pub run_id: String,
    /// Whether this `webhook-id` had already started a run.
    pub duplicate: bool,
}

/// `POST /v1/hooks/{*path}`.
pub async fn inbound_hook(
    State(state): State<Arc<AppState>>,
    Path(path): Path<String>,
    RawQuery(raw_query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<axum::response::Response> {
    let path = path.trim_start_matches('/').to_string();
    let flow = state
        .flows
        .by_hook(&path)
        .ok_or_else(|| ApiError::not_found(format!("no flow has a webhook trigger at `{path}`")))?;
    if !flow.enabled {
        return Err(ApiError::conflict(format!(
            "flow `{}` is disabled; enable it to accept this hook",
            flow.compiled.id()
        )));
    }
    // A `webhook-id` that is not visible ASCII cannot be deduplicated or
    // signed-over reliably: refuse it rather than start a new run per replay.
    if headers
        .get("webhook-id")
        .is_some_and(|v| v.to_str().is_err())
    {
        return Err(ApiError::invalid(
            "header `webhook-id` must be visible ASCII (RFC 9110 field value)",
        ));
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    match &flow.hook_secret {
        None => {}
        Some(Err(why)) => {
            tracing::error!("{why}");
            return Err(ApiError::unavailable(
                "this hook's signing secret is not configured on the server",
                60,
            ));
        }
        Some(Ok(secret)) => {
            let missing = |h: &'static str| {
                ApiError::unauthenticated(format!(
                    "this hook needs a Standard Webhooks signature: missing header `{h}`"
                ))
            };
            let id = header("webhook-id").ok_or_else(|| missing("webhook-id"))?;
            let ts = header("webhook-timestamp").ok_or_else(|| missing("webhook-timestamp"))?;
            let sig = header("webhook-signature").ok_or_else(|| missing("webhook-signature"))?;
            secret
                .verify(id, ts, sig, &body, now_ms() / 1000)
                .map_err(|e| ApiError::unauthenticated(format!("signature refused: {e}")))?;
        }
    }
    let ctype = header(header::CONTENT_TYPE.as_str()).unwrap_or("");
    let body_value = if body.is_empty() {
        Value::Null
    } else if ctype.starts_with("application/json") || ctype.ends_with("+json") {
        serde_json::from_slice(&body).map_err(|e| {
            ApiError::invalid(format!(
                "malformed JSON at line {} column {}: {e}",
                e.line(),
                e.column()
            ))
        })?
    } else {
        Value::String(
            String::from_utf8(body.to_vec())
                .map_err(|_| ApiError::invalid("the body is neither JSON nor UTF-8 text"))?,
        )
    };
    let hook = flow
        .compiled
        .flow
        .triggers
        .iter()
        .filter_map(|t| t.webhook.as_ref())
        .find(|w| w.path == path);
    let spec = hook.map(ResponseSpec::of);
    // A body that does not match the hook's declared schema starts nothing.
    if let Some(schema) = hook.and_then(|w| w.body_schema.as_ref()) {
        let ty = crate::expr::types::Type::from_schema(schema, schema);
        crate::expr::types::conforms(&body_value, &ty, "body").map_err(|why| {
            ApiError::validation(format!(
                "the body does not match this hook's body_schema: {why}"
            ))
        })?;
    }
    let mut header_map = Map::new();
    for (name, value) in &headers {
        if HIDDEN_HEADERS.contains(&name.as_str()) {
            continue;
        }
        if let Ok(v) = value.to_str() {
            header_map.insert(name.as_str().to_string(), Value::String(v.to_string()));
        }
    }
    let query: Map<String, Value> = raw_query
        .as_deref()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .map(|(k, v)| (k.into_owned(), Value::String(v.into_owned())))
                .collect()
        })
        .unwrap_or_default();
    // Body fields named like declared inputs become inputs.
    let inputs: Map<String, Value> = match &body_value {
        Value::Object(o) => o
            .iter()
            .filter(|(k, _)| flow.compiled.flow.inputs.contains_key(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        _ => Map::new(),
    };
    let webhook_id = header("webhook-id").map(str::to_string);
    let key = webhook_id.as_ref().map(|id| format!("hook:{path}:{id}"));
    let trigger = json!({
        "type": "webhook",
        "path": path,
        "webhook_id": webhook_id,
        "body": body_value,
        "headers": header_map,
        "query": query,
        "received_at": Utc::now().to_rfc3339(),
    });
    let permit = slot(&state, Some(Duration::from_secs(1))).await?;
    let sync = spec.filter(|s| s.respond == Respond::Output);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (run_id, new) = start_run(
        &state,
        &flow,
        &inputs,
        trigger,
        key.as_deref(),
        permit,
        sync.is_some().then_some(tx),
    )
    .await?;
    let Some(spec) = sync else {
        return Ok((
            if new {
                StatusCode::ACCEPTED
            } else {
                StatusCode::OK
            },
            Json(HookAnswer {
                run_id,
                duplicate: !new,
            }),
        )
            .into_response());
    };
    let ended = if new {
        match tokio::time::timeout(spec.timeout, rx).await {
            Ok(Ok(Ok(o))) => Some(respond::reply(
                &spec,
                &o.run_id,
                o.status,
                o.output.as_ref(),
                o.error.as_ref(),
            )),
            // Not executed to its end here (its lease was lost, the store
            // failed): answer what the store says, or 202 if it goes on.
            Ok(_) => ended_run(&state, &spec, &run_id).await?,
            Err(_) => None,
        }
    } else {
        wait_for_run(&state, &run_id, spec.timeout).await?;
        ended_run(&state, &spec, &run_id).await?
    };
    match ended {
        Some(reply) => hook_reply(reply, &run_id),
        None => {
            let mut res = (
                StatusCode::ACCEPTED,
                Json(HookAnswer {
                    run_id: run_id.clone(),
                    duplicate: !new,
                }),
            )
                .into_response();
            set_run_header(&mut res, &run_id);
            Ok(res)
        }
    }
}

/// The answer of a `respond: output` hook whose run ended (`None`: still going).
async fn ended_run(
    state: &AppState,
    spec: &ResponseSpec,
    run_id: &str,
) -> ApiResult<Option<HookReply>> {
    let run = state
        .store
        .get_run(run_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("run `{run_id}` was deleted")))?;
    Ok(run.status.is_final().then(|| {
        respond::reply(
            spec,
            run_id,
            run.status,
            run.output.as_ref(),
            run.error.as_ref(),
        )
    }))
}

/// Waits up to `timeout` for a run to end: woken when this process ends it,
/// and re-reading the store once a second for a run another process executes.
async fn wait_for_run(state: &AppState, run_id: &str, timeout: Duration) -> ApiResult<()> {
    use tokio::sync::broadcast::error::RecvError;
    const REREAD: Duration = Duration::from_secs(1);
    // Subscribed before the first read, so an end between the two is not missed.
    let mut finished = state.engine.finished_runs();
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match state.store.get_run(run_id).await? {
            Some(run) if !run.status.is_final() => {}
            _ => return Ok(()),
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Ok(());
        }
        let reread = tokio::time::sleep_until(deadline.min(now + REREAD));
        tokio::pin!(reread);
        loop {
            tokio::select! {
                ended = finished.recv() => match ended {
                    Ok(id) if id == run_id => return Ok(()),
                    Ok(_) => {}
                    Err(RecvError::Lagged(_)) => break,
                    Err(RecvError::Closed) => {
                        (&mut reread).await;
                        break;
                    }
                },
                _ = &mut reread => break,
            }
        }
    }
}

/// A run's result as the hook's HTTP answer.
fn hook_reply(reply: HookReply, run_id: &str) -> ApiResult<axum::response::Response> {
    let mut res = match reply {
        HookReply::Failed {
            status,
            code,
            message,
            details,
        } => ApiError::hook_failed(status, code, message, details).into_response(),
        HookReply::Output {
            status,
            headers,
            body,
        } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
            let mut res = match body {
                ReplyBody::Empty => status.into_response(),
                ReplyBody::Text(t) => (
                    status,
                    [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                    t,
                )
                    .into_response(),
                ReplyBody::Json(v) => (status, Json(v)).into_response(),
            };
            for (name, value) in headers {
                // Validated in `respond::reply`.
                if let (Ok(n), Ok(v)) = (
                    header::HeaderName::from_bytes(name.as_bytes()),
                    header::HeaderValue::from_str(&value),
                ) {
                    res.headers_mut().insert(n, v);
                }
            }
            res.extensions_mut().insert(super::FlowAnswer);
            res
        }
    };
    set_run_header(&mut res, run_id);
    Ok(res)
}

/// `sluice-run-id`: which run answered a `respond: output` hook.
fn set_run_header(res: &mut axum::response::Response, run_id: &str) {
    if let Ok(v) = header::HeaderValue::from_str(run_id) {
        res.headers_mut().insert(super::RUN_ID_HEADER, v);
    }
}

/// One schedule trigger of a flow.
struct Schedule {
    flow_id: String,
    key: String,
    cron: croner::Cron,
    tz: chrono_tz::Tz,
    expr: String,
    /// The next tick to fire.
    next: DateTime<Utc>,
}

fn schedules_of(f: &LoadedFlow) -> Vec<(String, croner::Cron, chrono_tz::Tz, String)> {
    f.compiled
        .flow
        .triggers
        .iter()
        .enumerate()
        .filter_map(|(i, t)| {
            let expr = t.schedule.as_ref()?;
            let cron = schedule::parse_cron(expr).ok()?;
            let tz = schedule::parse_timezone(t.timezone.as_deref()).unwrap_or(chrono_tz::UTC);
            Some((format!("{i}:{expr}"), cron, tz, expr.clone()))
        })
        .collect()
}

async fn fire(state: &Arc<AppState>, s: &Schedule, tick: DateTime<Utc>, missed: bool) {
    let Some(flow) = state.flows.get(&s.flow_id) else {
        return;
    };
    let permit = match slot(state, None).await {
        Ok(p) => p,
        Err(_) => return,
    };
    let tick_ms = tick.timestamp_millis();
    let key = format!("tick:{}:{}:{tick_ms}", s.flow_id, s.key);
    let trigger = json!({
        "type": "schedule",
        "cron": s.expr,
        "timezone": s.tz.name(),
        "scheduled_for": tick.to_rfc3339(),
        "missed": missed,
    });
    match start_run(state, &flow, &Map::new(), trigger, Some(&key), permit, None).await {
        Ok((run_id, new)) => {
            if new {
                tracing::info!(flow_id = %s.flow_id, %run_id, tick = %tick, "schedule fired");
            }
            if let Err(e) = state
                .store
                .claim_tick(&s.flow_id, &s.key, tick_ms, &run_id)
                .await
            {
                tracing::warn!(error = %e, "could not record a schedule tick");
            }
        }
        Err(e) => {
            tracing::warn!(flow_id = %s.flow_id, error = %e, "schedule could not start a run")
        }
    }
}

/// Fires schedule triggers until `stop`.
pub async fn schedule_loop(state: Arc<AppState>, mut stop: watch::Receiver<bool>) {
    let mut known: HashMap<(String, String), Schedule> = HashMap::new();
    loop {
        let now = Utc::now();
        // Pick up flows added, changed, disabled or deleted.
        let mut live = std::collections::HashSet::new();
        for f in state.flows.all().into_iter().filter(|f| f.enabled) {
            for (key, cron, tz, expr) in schedules_of(&f) {
                let id = (f.compiled.id().to_string(), key.clone());
                live.insert(id.clone());
                if known.contains_key(&id) {
                    continue;
                }
                let Some(next) = next_after(&cron, tz, now) else {
                    continue;
                };
                let s = Schedule {
                    flow_id: id.0.clone(),
                    key: key.clone(),
                    cron,
                    tz,
                    expr,
                    next,
                };
                // A tick missed while no process ran fires once, not once per missed tick.
                if let Ok(Some(last)) = state.store.last_tick(&s.flow_id, &s.key).await
                    && let Some(last) = DateTime::from_timestamp_millis(last)
                    && let Some(missed) = schedule::latest_at(&s.cron, s.tz, now)
                    && missed > last
                {
                    fire(&state, &s, missed, true).await;
                }
                known.insert(id, s);
            }
        }
        known.retain(|id, _| live.contains(id));
        for s in known.values_mut() {
            while s.next <= now {
                let tick = s.next;
                fire(&state, s, tick, false).await;
                match next_after(&s.cron, s.tz, tick) {
                    Some(n) => s.next = n,
                    None => break,
                }
            }
        }
        let wait = known
            .values()
            .map(|s| s.next)
            .min()
            .map(|n| (n - Utc::now()).to_std().unwrap_or_default())
            .unwrap_or(Duration::from_secs(1))
            .min(Duration::from_millis(500));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// One scheduled sync of a connection.
struct SyncTick {
    connection: String,
    schedule: SyncSchedule,
    cron: croner::Cron,
    tz: chrono_tz::Tz,
    next: DateTime<Utc>,
}

/// The sync schedules of every stored connection.
async fn sync_schedules(state: &AppState) -> Vec<(String, SyncSchedule)> {
    let rows = match state.store.connections().await {
        Ok(rows) => rows,
        Err(e) => {
            store_failed(
                state,
                "sync schedules",
                "cannot read connections for their sync schedules",
                &e,
            )
            .await;
            return Vec::new();
        }
    };
    rows.into_iter()
        .filter_map(|r| {
            let config: ConnectionConfig = serde_json::from_str(&r.config).ok()?;
            Some(config.syncs.into_iter().map(move |s| (r.id.clone(), s)))
        })
        .flatten()
        .collect()
}

/// Opens a stored connection and makes it live in this process.
async fn open_connection(
    state: &AppState,
    id: &str,
) -> Result<Arc<dyn crate::connectors::Connector>, String> {
    let row = state
        .store
        .connection(id)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("connection `{id}` was removed"))?;
    let c = Arc::new(crate::connectors::connection::build(
        &row,
        &state.defs,
        &state.secrets,
        Some(state.status_sink.clone()),
    )?);
    state.engine.set_connection(id, c.clone());
    state
        .connections
        .write()
        .expect("connections lock")
        .insert(id.to_string(), c.clone());
    Ok(c)
}

/// Claims a sync tick and, when this process won it, runs the sync in the background.
async fn fire_sync(state: &Arc<AppState>, t: &SyncTick, tick: DateTime<Utc>, missed: bool) {
    let owner = format!("sync:{}", t.connection);
    let claimed = state
        .store
        .claim_tick(
            &owner,
            &t.schedule.tick_key(),
            tick.timestamp_millis(),
            "sync",
        )
        .await;
    match claimed {
        Ok(true) => {}
        Ok(false) => return,
        Err(e) => {
            store_failed(state, "sync schedules", "cannot claim a sync tick", &e).await;
            return;
        }
    }
    let Ok(entity) = t.schedule.entity.parse::<crate::unified::Entity>() else {
        return;
    };
    let connector = match state.engine.connectors().get(&t.connection).cloned() {
        Some(c) => c,
        // Added by another process (the CLI, another server): open it here.
        None => match open_connection(state, &t.connection).await {
            Ok(c) => c,
            Err(e) => {
                // Every tick fails the same way until someone fixes the
                // connection (its definition or secrets): an hourly alert.
                crate::webhooks::system_error(
                    &state.store,
                    &format!(
                        "sync-schedule:{}:cannot-open:{}",
                        t.connection,
                        now_ms() / 3_600_000
                    ),
                    "sync",
                    &format!(
                        "the scheduled {entity} sync of connection {} cannot run: {e}",
                        t.connection
                    ),
                    json!({"connection_id": t.connection, "entity": entity.to_string()}),
                )
                .await;
                return;
            }
        },
    };
    let (state, connection, mode) = (state.clone(), t.connection.clone(), t.schedule.mode());
    tracing::info!(%connection, entity = %entity, mode = mode.name(), %tick, missed, "scheduled sync starts");
    tokio::spawn(async move {
        let opts = SyncOptions {
            mode,
            ..SyncOptions::default()
        };
        match crate::sync::run(
            &state.store,
            connector.as_ref(),
            &connection,
            entity,
            &opts,
            None,
        )
        .await
        {
            Ok(r) => tracing::info!(
                %connection, entity = %entity, added = r.added, updated = r.updated,
                deleted = r.deleted, duration_ms = r.duration_ms, "scheduled sync completed"
            ),
            Err(e) => {
                tracing::warn!(%connection, entity = %entity, error = %e, "scheduled sync did not complete")
            }
        }
    });
}

/// Fires connections' sync schedules until `stop`. Schedules are re-read
/// from the store every few seconds, so connections added by the API or the
/// CLI (by any process) are picked up.
pub async fn sync_schedule_loop(state: Arc<AppState>, mut stop: watch::Receiver<bool>) {
    const RELOAD: Duration = Duration::from_secs(5);
    let mut known: HashMap<(String, String), SyncTick> = HashMap::new();
    let mut loaded_at: Option<std::time::Instant> = None;
    loop {
        let now = Utc::now();
        if loaded_at.is_none_or(|t| t.elapsed() >= RELOAD) {
            loaded_at = Some(std::time::Instant::now());
            let mut live = std::collections::HashSet::new();
            for (connection, s) in sync_schedules(&state).await {
                let id = (connection.clone(), s.tick_key());
                live.insert(id.clone());
                if known.contains_key(&id) {
                    continue;
                }
                let (Ok(cron), Ok(tz)) = (
                    schedule::parse_cron(&s.cron),
                    schedule::parse_timezone(s.timezone.as_deref()),
                ) else {
                    continue;
                };
                let Some(next) = next_after(&cron, tz, now) else {
                    continue;
                };
                let t = SyncTick {
                    connection,
                    schedule: s,
                    cron,
                    tz,
                    next,
                };
                // A tick missed while no process ran fires once.
                if let Ok(Some(last)) = state
                    .store
                    .last_tick(&format!("sync:{}", t.connection), &t.schedule.tick_key())
                    .await
                    && let Some(missed) = schedule::latest_at(&t.cron, t.tz, now)
                    && missed.timestamp_millis() > last
                {
                    fire_sync(&state, &t, missed, true).await;
                }
                known.insert(id, t);
            }
            known.retain(|id, _| live.contains(id));
        }
        for t in known.values_mut() {
            if t.next <= now {
                // However many ticks passed, one sync.
                let tick = schedule::latest_at(&t.cron, t.tz, now).unwrap_or(t.next);
                fire_sync(&state, t, tick, false).await;
                t.next =
                    next_after(&t.cron, t.tz, now).unwrap_or(now + chrono::Duration::days(365));
            }
        }
        let wait = known
            .values()
            .map(|t| (t.next - Utc::now()).to_std().unwrap_or_default())
            .min()
            .unwrap_or(RELOAD)
            .min(Duration::from_millis(500));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

fn event_matches(t: &crate::flow::model::Trigger, env: &crate::events::Envelope) -> bool {
    t.event.as_deref() == Some(env.event_type.as_str())
        && t.connection
            .as_ref()
            .is_none_or(|c| env.connection_id.as_deref() == Some(c.as_str()))
        && t.entity
            .as_ref()
            .is_none_or(|e| env.data.get("entity").and_then(Value::as_str) == Some(e.as_str()))
}

/// Events claimed at once from the log.
const EVENT_BATCH: i64 = 256;

/// Events dispatched at once (each waits for a run slot).
const EVENT_CONCURRENCY: usize = 32;

/// How one event's dispatch ended.
enum Dispatched {
    /// Every matching flow has its run.
    Done,
    /// Not now (shutting down, or a run could not be stored): left for later.
    Later,
}

/// Consumes the event log (see [`crate::events`]): claims undispatched
/// events (this process's, other processes', `sluice run`'s), starts one run
/// per event and matching enabled flow, marks them dispatched.
pub async fn event_loop(state: Arc<AppState>, mut stop: watch::Receiver<bool>) {
    let owner = format!("events:{}", uuid::Uuid::now_v7());
    // A claim lasts a run lease (`--lease`); a killed process's claims are
    // taken over after it. A claim outlasted by a slow batch only costs
    // repeated work: the request key keeps one run per event and flow.
    let lease = state.engine.lease();
    let mut flows_mark = None;
    let mut wakeup = crate::events::Wakeup::new(&state.store).await;
    loop {
        if *stop.borrow() {
            return;
        }
        let mut types = listened_event_types(&state);
        match state.store.waited_event_types().await {
            Ok(waited) => types.extend(waited),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the event types parked runs wait for")
            }
        }
        crate::events::set_interest(&state.store, Some(types));
        let claimed = match state.store.claim_events(&owner, lease, EVENT_BATCH).await {
            Ok(c) => c,
            Err(e) => {
                store_failed(&state, "event dispatch", "cannot claim events", &e).await;
                Vec::new()
            }
        };
        let full = claimed.len() as i64 == EVENT_BATCH;
        if !claimed.is_empty() {
            // Match against the flows as they are now: a flow another process
            // just stored (and already logs events for) must not miss them
            // here because this process has not reloaded yet.
            match state.store.flows_mark().await {
                Ok(mark) if flows_mark == Some(mark) => {}
                Ok(mark) => match flows::reload(&state).await {
                    Ok(()) => flows_mark = Some(mark),
                    Err(e) => {
                        tracing::warn!(error = %e, "flows not reloaded before dispatching events")
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %e, "cannot check the flows before dispatching events")
                }
            }
            dispatch_events(&state, claimed).await;
        }
        if !full {
            tokio::select! {
                _ = wakeup.wait() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }
}

/// The event types the flows' `event` triggers (enabled flows) and
/// `wait_for` steps (any flow: its runs may be parked) listen to.
fn listened_event_types(state: &AppState) -> std::collections::HashSet<String> {
    let flows = state.flows.all();
    let triggers = flows
        .iter()
        .filter(|f| f.enabled)
        .flat_map(|f| f.compiled.flow.triggers.iter())
        .filter_map(|t| t.event.clone());
    let waits = flows
        .iter()
        .flat_map(|f| f.compiled.flow.steps.iter())
        .filter_map(|s| s.wait_for.as_ref().and_then(|w| w.event.clone()));
    triggers.chain(waits).collect()
}

async fn dispatch_events(state: &Arc<AppState>, claimed: Vec<crate::store::StoredEvent>) {
    use futures::StreamExt as _;
    let results: Vec<(String, Dispatched)> = futures::stream::iter(claimed)
        .map(|e| async move {
            let outcome = dispatch_event(state, &e).await;
            (e.id, outcome)
        })
        .buffer_unordered(EVENT_CONCURRENCY)
        .collect()
        .await;
    let (done, later): (Vec<_>, Vec<_>) = results
        .into_iter()
        .partition(|(_, d)| matches!(d, Dispatched::Done));
    let ids = |v: Vec<(String, Dispatched)>| v.into_iter().map(|(id, _)| id).collect::<Vec<_>>();
    if let Err(e) = state.store.mark_events_dispatched(&ids(done)).await {
        // Left claimed: redispatched after the lease, starting no second run.
        tracing::warn!(error = %e, "cannot mark events dispatched");
    }
    if !later.is_empty() && !state.accepting.load(std::sync::atomic::Ordering::SeqCst) {
        // Shutting down: let another process take them at once.
        if let Err(e) = state.store.release_events(&ids(later)).await {
            tracing::warn!(error = %e, "cannot release events");
        }
    }
}

async fn dispatch_event(state: &Arc<AppState>, e: &crate::store::StoredEvent) -> Dispatched {
    let env: crate::events::Envelope = match serde_json::from_str(&e.body) {
        Ok(env) => env,
        Err(err) => {
            tracing::error!(event_id = %e.id, error = %err, "stored event does not parse; dropped");
            return Dispatched::Done;
        }
    };
    let mut outcome = Dispatched::Done;
    for f in state.flows.all().into_iter().filter(|f| f.enabled) {
        if !f
            .compiled
            .flow
            .triggers
            .iter()
            .any(|t| event_matches(t, &env))
        {
            continue;
        }
        let Ok(permit) = slot(state, None).await else {
            return Dispatched::Later;
        };
        let key = format!("event:{}:{}", f.compiled.id(), env.id);
        let trigger = json!({"type": "event", "event": env});
        if let Err(err) = start_run(state, &f, &Map::new(), trigger, Some(&key), permit, None).await
        {
            tracing::warn!(flow_id = %f.compiled.id(), event_id = %env.id, error = %err, "event trigger could not start a run; retried later");
            outcome = Dispatched::Later;
        }
    }
    // Parked runs waiting for this event.
    match state.engine.offer_event(&env).await {
        Ok(queued) => resume_resolved(state, queued).await,
        Err(err) => {
            tracing::warn!(event_id = %env.id, error = %err, "waiting runs not offered the event; retried later");
            outcome = Dispatched::Later;
        }
    }
    outcome
}

/// Resumes runs that a resolved wait (a signal, an event, a deadline)
/// queued, each under a run slot, in tasks of their own. A run this
/// process cannot take now is left queued for the orphan sweep.
pub async fn resume_resolved(state: &Arc<AppState>, run_ids: Vec<String>) {
    for id in run_ids {
        let Ok(permit) = slot(state, None).await else {
            return;
        };
        let s = state.clone();
        tokio::spawn(async move {
            s.engine.resume_resolved(&id).await;
            drop(permit);
        });
    }
}

/// Resolves parked runs' waits whose deadline passed, every second.
pub async fn waits_loop(state: Arc<AppState>, mut stop: watch::Receiver<bool>) {
    loop {
        match state.engine.expire_waits().await {
            Ok(queued) => resume_resolved(&state, queued).await,
            Err(crate::run::RunError::Store(e)) => {
                store_failed(&state, "waits", "wait deadlines not applied", &e).await
            }
            Err(e) => tracing::warn!(error = %e, "wait deadlines not applied"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Periodically: reload flows from the store (other processes' uploads),
/// resume runs whose process died, forget request keys older than 24 h,
/// apply retention (see [`super::retention`]) and the event log's
/// (`SLUICE_EVENT_RETENTION`, see [`crate::events`]).
pub async fn maintenance_loop(
    state: Arc<AppState>,
    mut stop: watch::Receiver<bool>,
    lease: Duration,
) {
    let every = (lease / 2).clamp(Duration::from_millis(500), Duration::from_secs(5));
    let defaults = super::retention::defaults_from_env().unwrap_or_else(|e| {
        tracing::error!(error = %e, "retention default ignored");
        None
    });
    let retention_every = super::retention::every();
    let event_retention = crate::events::retention_from_env().unwrap_or_else(|e| {
        tracing::error!(error = %e, "event retention default used");
        crate::events::DEFAULT_RETENTION
    });
    let mut retained_at: Option<std::time::Instant> = None;
    loop {
        if retained_at.is_none_or(|t| t.elapsed() >= retention_every) {
            retained_at = Some(std::time::Instant::now());
            if let Err(e) = super::retention::apply(&state, defaults.as_ref()).await {
                store_failed(&state, "maintenance", "retention not applied", &e).await;
            }
            prune_events(&state, event_retention).await;
        }
        if let Err(e) = flows::reload(&state).await {
            tracing::warn!(error = %e, "flows not reloaded");
        }
        if let Err(e) = resume_orphans(&state, lease).await {
            store_failed(&state, "maintenance", "orphaned runs not resumed", &e).await;
        }
        if let Err(e) = state
            .store
            .prune_request_keys(now_ms() - super::runs::KEY_WINDOW.as_millis() as i64)
            .await
        {
            store_failed(&state, "maintenance", "request keys not pruned", &e).await;
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// A background loop's store failure: logged, and `system.error` (someone
/// has to look at the database) at most once a minute per loop, since the
/// loop retries every few seconds.
async fn store_failed(state: &AppState, task: &str, what: &str, e: &crate::store::StoreError) {
    crate::webhooks::system_error(
        &state.store,
        &format!("store:{task}:{}", now_ms() / 60_000),
        "store",
        &format!("{task}: {what}: {e}"),
        json!({"task": task}),
    )
    .await;
}

/// Deletes events older than the event log's retention.
async fn prune_events(state: &AppState, retention: Duration) {
    let before = now_ms() - i64::try_from(retention.as_millis()).unwrap_or(i64::MAX);
    match state.store.prune_events(before).await {
        Ok((0, _)) => {}
        Ok((n, 0)) => tracing::info!(events = n, "pruned events past their retention"),
        Ok((n, never)) => tracing::warn!(
            events = n,
            undispatched = never,
            "pruned events past their retention; {never} of them never started their flows"
        ),
        Err(e) => store_failed(state, "maintenance", "events not pruned", &e).await,
    }
}

async fn resume_orphans(
    state: &Arc<AppState>,
    lease: Duration,
) -> Result<(), crate::store::StoreError> {
    let cutoff = now_ms() - lease.as_millis() as i64;
    for id in state.store.orphaned_runs().await? {
        // Queued runs younger than a lease may still be waiting for admission here.
        match state.store.get_run(&id).await? {
            Some(r) if r.created_at < cutoff => {}
            _ => continue,
        }
        let Ok(permit) = slot(state, None).await else {
            return Ok(());
        };
        let s = state.clone();
        tokio::spawn(async move {
            let result = s.engine.resume(&id, Some(s.metrics.step_events())).await;
            drop(permit);
            match &result {
                Ok(o) => {
                    tracing::info!(run_id = %id, status = o.status.as_str(), "resumed an interrupted run")
                }
                Err(e) => tracing::debug!(run_id = %id, error = %e, "not resumed"),
            }
            s.metrics.run_finished(&result);
        });
    }
    Ok(())
}
