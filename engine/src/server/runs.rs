//! `/v1/runs`: start (with `Idempotency-Key`), get, list with cursor
//! pagination, cancel, re-run from the failed step; and [`start_run`], the
//! one way the server starts a run (API, hooks, schedules, events).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::IntoResponse;
use axum::{Extension, Json};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::sync::OwnedSemaphorePermit;

use super::auth::Caller;
use super::error::{ApiError, ApiResult};
use super::flows::LoadedFlow;
use super::{AppState, check_id, json_body};
use crate::run::{ResumeRevision, RunError, RunOutcome};
use crate::store::{RunFilter, RunRecord, RunStatus, StepRecord};

/// How long a request key (Idempotency-Key, webhook-id) holds.
pub const KEY_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// How long an API start waits for a free run slot before answering 503.
const SLOT_WAIT: Duration = Duration::from_secs(1);

/// Takes a run slot, waiting up to `wait` (forever when `None`).
pub async fn slot(state: &AppState, wait: Option<Duration>) -> ApiResult<OwnedSemaphorePermit> {
    if !state.accepting.load(Ordering::SeqCst) {
        return Err(ApiError::unavailable(
            "the server is shutting down; retry against another instance",
            5,
        ));
    }
    let acquire = state.run_slots.clone().acquire_owned();
    let permit = match wait {
        Some(w) => tokio::time::timeout(w, acquire).await.map_err(|_| {
            ApiError::unavailable(
                format!("all {} run slots are busy; retry shortly", state.max_runs),
                1,
            )
        })?,
        None => acquire.await,
    };
    permit.map_err(|_| ApiError::unavailable("the server is shutting down", 5))
}

/// Starts a run of `flow` in the background once it is stored. Returns the
/// run id and whether it is new (false: `key` already started it).
pub async fn start_run(
    state: &Arc<AppState>,
    flow: &LoadedFlow,
    inputs: &Map<String, Value>,
    trigger: Value,
    key: Option<&str>,
    permit: OwnedSemaphorePermit,
    finished: Option<tokio::sync::oneshot::Sender<Result<RunOutcome, String>>>,
) -> ApiResult<(String, bool)> {
    let metrics_state = state.clone();
    let kind = trigger
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or("manual")
        .to_string();
    let (id, new) = state
        .engine
        .start(
            flow.compiled.clone(),
            inputs,
            trigger,
            key.map(|k| (k, KEY_WINDOW)),
            Some(state.metrics.step_events()),
            move |result: &Result<RunOutcome, RunError>| {
                drop(permit);
                metrics_state.metrics.run_finished(result);
                if let Some(tx) = finished {
                    let _ = tx.send(match result {
                        Ok(o) => Ok(o.clone()),
                        Err(e) => Err(e.to_string()),
                    });
                }
            },
        )
        .await?;
    if new {
        state.metrics.run_started(&kind);
    }
    Ok((id, new))
}

/// The body of `POST /v1/runs`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StartBody {
    /// The flow to run.
    flow: String,
    /// The flow's inputs by name (defaults fill the rest).
    #[serde(default)]
    inputs: Map<String, Value>,
    /// Wait for the run to end (up to `timeout_s`, default 30).
    #[serde(default)]
    wait: bool,
    /// How long `wait` waits, in seconds (1 to 600).
    #[serde(default)]
    timeout_s: Option<u64>,
}

/// A run with its steps.
#[derive(Serialize, JsonSchema)]
pub struct RunDetail {
    #[serde(flatten)]
    run: RunRecord,
    /// Its steps' results, in the order they started.
    steps: Vec<StepRecord>,
    /// The runs its `flow` steps started, oldest first.
    children: Vec<ChildRun>,
    /// What a `waiting` run waits for (one per parked `wait_for` step).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    waits: Vec<WaitInfo>,
    /// Whether this request started it (`POST /v1/runs` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    created: Option<bool>,
}

/// What a parked step waits for.
#[derive(Serialize, JsonSchema)]
pub struct WaitInfo {
    /// The `wait_for` step.
    step: String,
    /// The signal it takes (`POST /v1/runs/{id}/signal`).
    #[serde(skip_serializing_if = "Option::is_none")]
    signal: Option<String>,
    /// The signal's declared data: name → `{type, required, default, description}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<Value>,
    /// The event type it takes.
    #[serde(skip_serializing_if = "Option::is_none")]
    event: Option<String>,
    /// When it times out (ms since the epoch).
    #[serde(skip_serializing_if = "Option::is_none")]
    deadline: Option<i64>,
}

/// A run started by a `flow` step of the run shown.
#[derive(Serialize, JsonSchema)]
pub struct ChildRun {
    /// Run id.
    id: String,
    /// Flow id.
    flow_id: String,
    /// Status.
    status: RunStatus,
    /// The step that started it (`step[index]` for a `for_each` item).
    parent_step: Option<String>,
}

/// A page of runs.
#[derive(Serialize, JsonSchema)]
pub struct RunPage {
    /// Runs, newest first.
    items: Vec<RunRecord>,
    /// Pass as `cursor` for the next page; null on the last one.
    next_cursor: Option<String>,
}

/// The answer of `POST /v1/runs/{id}/cancel`.
#[derive(Serialize, JsonSchema)]
pub struct CancelAnswer {
    /// The run.
    run_id: String,
    /// Always true: the run stops at its next step boundary.
    cancel_requested: bool,
}

/// The answer of `POST /v1/runs/{id}/rerun`.
#[derive(Serialize, JsonSchema)]
pub struct RerunAnswer {
    /// The run.
    run_id: String,
    /// `running`.
    status: RunStatus,
    /// The flow revision it continues on.
    revision: i64,
}

/// `POST /v1/runs`.
pub async fn start(
    State(state): State<Arc<AppState>>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    let req: StartBody = json_body(&headers, &body)?;
    check_id("flow", &req.flow)?;
    let flow = state
        .flows
        .get(&req.flow)
        .ok_or_else(|| ApiError::not_found(format!("no flow `{}`", req.flow)))?;
    let key = match headers.get("idempotency-key") {
        Some(v) => {
            let k = v
                .to_str()
                .ok()
                .filter(|k| !k.is_empty() && k.len() <= 200)
                .ok_or_else(|| {
                    ApiError::invalid("`Idempotency-Key` must be 1 to 200 visible ASCII characters")
                })?;
            Some(format!("idem:{}:{k}", caller.token_id))
        }
        None => None,
    };
    // A repeated key answers at once, even when every run slot is busy.
    if let Some(k) = &key
        && let Some(first) = state
            .store
            .request_key_run(k, KEY_WINDOW.as_millis() as i64)
            .await?
    {
        let mut out = run_json(&state, &first).await?;
        out.created = Some(false);
        return Ok((StatusCode::OK, Json(out)).into_response());
    }
    let permit = slot(&state, Some(SLOT_WAIT)).await?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (run_id, new) = start_run(
        &state,
        &flow,
        &req.inputs,
        json!({"type": "manual", "source": "api", "token": caller.token_id}),
        key.as_deref(),
        permit,
        req.wait.then_some(tx),
    )
    .await?;
    if req.wait && new {
        let limit = Duration::from_secs(req.timeout_s.unwrap_or(30).clamp(1, 600));
        let _ = tokio::time::timeout(limit, rx).await;
    }
    let mut out = run_json(&state, &run_id).await?;
    out.created = Some(new);
    let mut res = (
        if new {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        Json(out),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&format!("/v1/runs/{run_id}")) {
        res.headers_mut().insert(header::LOCATION, v);
    }
    Ok(res)
}

/// A stored run, or 404.
async fn stored_run(state: &AppState, id: &str) -> ApiResult<crate::store::RunRecord> {
    check_id("run", id)?;
    state
        .store
        .get_run(id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no run `{id}`")))
}

async fn run_json(state: &AppState, id: &str) -> ApiResult<RunDetail> {
    let run = stored_run(state, id).await?;
    let steps = state.store.steps(id).await?;
    let children = state
        .store
        .child_runs(id)
        .await?
        .into_iter()
        .map(|c| ChildRun {
            id: c.id,
            flow_id: c.flow_id,
            status: c.status,
            parent_step: c.parent_step,
        })
        .collect();
    let waits = if run.status == RunStatus::Waiting {
        state
            .store
            .waits(id)
            .await?
            .into_iter()
            .map(|w| WaitInfo {
                step: w.step_id,
                data: (!w.spec.data.is_empty())
                    .then(|| serde_json::to_value(&w.spec.data).unwrap_or(Value::Null)),
                signal: w.spec.signal,
                event: w.spec.event,
                deadline: w.deadline,
            })
            .collect()
    } else {
        Vec::new()
    };
    Ok(RunDetail {
        run,
        steps,
        children,
        waits,
        created: None,
    })
}

/// `GET /v1/runs/{id}`: the run with its steps.
pub async fn get_one(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(run_json(&state, &id).await?))
}

/// The query of `GET /v1/runs`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only this flow's runs.
    flow: Option<String>,
    /// Only runs in this status.
    #[schemars(with = "Option<RunStatus>")]
    status: Option<String>,
    /// Runs per page (1 to 500, default 50).
    #[schemars(range(min = 1, max = 500))]
    limit: Option<i64>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
    /// Only runs started by this kind of trigger (`manual`, `webhook`, `schedule`, `event`, `flow`, `on_failure`).
    #[schemars(length(min = 1, max = 40), regex(pattern = r"^[a-z_]+$"))]
    trigger: Option<String>,
    /// Only runs created at or after this time (ms since the Unix epoch).
    #[schemars(range(min = 0))]
    created_after: Option<i64>,
}

/// `GET /v1/runs?flow=&status=&limit=&cursor=`.
pub async fn list(
    State(state): State<Arc<AppState>>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<impl IntoResponse> {
    let Query(q) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    if let Some(f) = &q.flow {
        check_id("flow", f)?;
    }
    let status = q
        .status
        .map(|s| s.parse::<RunStatus>())
        .transpose()
        .map_err(ApiError::invalid)?;
    if let Some(t) = &q.trigger
        && (t.is_empty() || t.len() > 40 || !t.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
    {
        return Err(ApiError::invalid(format!(
            "trigger `{}` is not a trigger kind (lowercase letters and `_`, e.g. `webhook`)",
            t.chars().take(40).collect::<String>()
        )));
    }
    if q.created_after.is_some_and(|t| t < 0) {
        return Err(ApiError::invalid(
            "created_after must be 0 or more (ms since the Unix epoch)",
        ));
    }
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::invalid(format!(
            "limit must be 1 to 500, not {limit}"
        )));
    }
    let before = match q.cursor {
        Some(c) => {
            let (at, id) = c
                .split_once('_')
                .and_then(|(a, id)| Some((a.parse::<i64>().ok()?, id.to_string())))
                .ok_or_else(|| {
                    ApiError::invalid("invalid cursor: pass `next_cursor` from the previous page")
                })?;
            Some((at, id))
        }
        None => None,
    };
    let runs = state
        .store
        .list_runs(&RunFilter {
            flow_id: q.flow,
            status,
            limit: limit + 1,
            before,
            trigger: q.trigger,
            created_after: q.created_after,
        })
        .await?;
    let more = runs.len() as i64 > limit;
    let items: Vec<_> = runs.into_iter().take(limit as usize).collect();
    let next = if more {
        items.last().map(|r| format!("{}_{}", r.created_at, r.id))
    } else {
        None
    };
    Ok(Json(RunPage {
        items,
        next_cursor: next,
    }))
}

/// `POST /v1/runs/{id}/cancel`.
pub async fn cancel(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let run = stored_run(&state, &id).await?;
    if !state.engine.cancel(&id).await? {
        return Err(ApiError::conflict(format!(
            "run `{id}` already {}; only queued or running runs can be cancelled",
            run.status.as_str()
        )));
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(CancelAnswer {
            run_id: id,
            cancel_requested: true,
        }),
    ))
}

/// The body of `POST /v1/runs/{id}/signal`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SignalBody {
    /// The signal's name, as its `wait_for` step names it.
    signal: String,
    /// Its data, checked against the step's `data:` declaration.
    #[serde(default)]
    data: Value,
}

/// `POST /v1/runs/{id}/signal`: answers a parked `wait_for` step; the run
/// goes on in the background.
pub async fn signal(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<impl IntoResponse> {
    let body: SignalBody = json_body(&headers, &body)?;
    stored_run(&state, &id).await?;
    let done = state.engine.signal(&id, &body.signal, &body.data).await?;
    super::triggers::resume_resolved(&state, vec![id]).await;
    Ok((StatusCode::ACCEPTED, Json(done)))
}

/// The query of `POST /v1/runs/{id}/rerun`.
#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RerunQuery {
    /// `own` (default): the revision the run started on; `latest`: the
    /// flow's latest stored revision, refused (409, naming the steps) when a
    /// step the run already completed differs in it.
    #[schemars(with = "Option<RerunRevision>")]
    revision: Option<String>,
}

/// The values of `revision` in [`RerunQuery`].
#[derive(JsonSchema)]
#[serde(rename_all = "snake_case")]
#[allow(dead_code)] // documents the query's values
enum RerunRevision {
    Own,
    Latest,
}

/// `POST /v1/runs/{id}/rerun?revision=own|latest`: resumes a failed run
/// from its failed step, or a cancelled one from the steps it had not finished.
pub async fn rerun(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    query: Result<Query<RerunQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult<impl IntoResponse> {
    let Query(q) = query.map_err(|e| ApiError::invalid(e.body_text()))?;
    let on = match q.revision.as_deref() {
        None | Some("own") => ResumeRevision::Own,
        Some("latest") => ResumeRevision::Latest,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "revision must be `own` or `latest`, not `{other}`"
            )));
        }
    };
    let run = stored_run(&state, &id).await?;
    if !matches!(run.status, RunStatus::Failed | RunStatus::Cancelled) {
        return Err(ApiError::conflict(format!(
            "run `{id}` is {}; only failed or cancelled runs can be re-run",
            run.status.as_str()
        )));
    }
    let permit = slot(&state, Some(SLOT_WAIT)).await?;
    // Refusals (a changed step, another holder) answer here, not in a log.
    let claimed = state.engine.claim_resume(&id, on).await?;
    let revision = claimed.revision();
    let s = state.clone();
    let run_id = id.clone();
    tokio::spawn(async move {
        let result = s
            .engine
            .execute_claimed(claimed, Some(s.metrics.step_events()))
            .await;
        drop(permit);
        if let Err(e) = &result {
            tracing::warn!(run_id = %run_id, error = %e, "re-run failed to start");
        }
        s.metrics.run_finished(&result);
    });
    Ok((
        StatusCode::ACCEPTED,
        Json(RerunAnswer {
            run_id: id,
            status: RunStatus::Running,
            revision,
        }),
    ))
}
