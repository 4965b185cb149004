//! The server's retention: each flow's `retention:` policy, and for flows
//! without one the server default from the environment:
//!
//! - `SLUICE_RETENTION`: delete finished runs older than this (e.g. `30d`);
//! - `SLUICE_RETENTION_FAILED`: keep failed runs this long instead (e.g. `90d`);
//! - `SLUICE_RETENTION_MAX_RUNS`: keep at most this many finished runs per flow;
//! - `SLUICE_RETENTION_EVERY`: how often to apply it (default `10m`).
//!
//! Nothing is deleted when neither the flow nor the environment sets a limit.

use std::time::Duration;

use super::AppState;
use crate::store::{Prune, PruneReport, StoreError};

/// The default policy from the environment; `Err` names a bad variable.
pub fn defaults_from_env() -> Result<Option<Prune>, String> {
    let ms = |name: &str| -> Result<Option<i64>, String> {
        match std::env::var(name) {
            Ok(v) if !v.trim().is_empty() => humantime::parse_duration(v.trim())
                .map(|d| Some(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)))
                .map_err(|e| format!("{name}=`{v}`: {e} (e.g. `30d`)")),
            _ => Ok(None),
        }
    };
    let keep = match std::env::var("SLUICE_RETENTION_MAX_RUNS") {
        Ok(v) if !v.trim().is_empty() => Some(
            v.trim()
                .parse::<i64>()
                .map_err(|_| format!("SLUICE_RETENTION_MAX_RUNS=`{v}` is not a number of runs"))?,
        ),
        _ => None,
    };
    let p = Prune {
        older_than_ms: ms("SLUICE_RETENTION")?,
        failed_older_than_ms: ms("SLUICE_RETENTION_FAILED")?,
        keep_last: keep,
        ..Prune::default()
    };
    Ok(
        (p.older_than_ms.is_some() || p.failed_older_than_ms.is_some() || p.keep_last.is_some())
            .then_some(p),
    )
}

/// How often the maintenance loop applies retention.
pub fn every() -> Duration {
    std::env::var("SLUICE_RETENTION_EVERY")
        .ok()
        .and_then(|v| humantime::parse_duration(v.trim()).ok())
        .unwrap_or(Duration::from_secs(600))
}

/// Applies every flow's policy, then the default to the runs of every other
/// flow (deleted flows' too).
pub async fn apply(state: &AppState, defaults: Option<&Prune>) -> Result<PruneReport, StoreError> {
    let mut total = PruneReport::default();
    let mut own = Vec::new();
    for f in state.flows.all() {
        let id = f.compiled.id().to_string();
        if let Some(policy) = f
            .compiled
            .flow
            .retention
            .as_ref()
            .and_then(|r| r.prune(&id))
        {
            add(&mut total, state.store.prune_runs(&policy, false).await?);
            own.push(id);
        }
    }
    if let Some(d) = defaults {
        let p = Prune {
            except_flows: own,
            ..d.clone()
        };
        add(&mut total, state.store.prune_runs(&p, false).await?);
    }
    if total.runs > 0 {
        tracing::info!(
            runs = total.runs,
            steps = total.steps,
            bytes_freed = total.bytes_freed,
            "retention deleted finished runs"
        );
    }
    Ok(total)
}

fn add(total: &mut PruneReport, r: PruneReport) {
    total.runs += r.runs;
    total.steps += r.steps;
    total.bytes_freed += r.bytes_freed;
}

/// Body of `POST /v1/runs/prune`.
#[derive(Debug, serde::Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PruneBody {
    /// Delete runs that finished longer ago than this, e.g. `30d`.
    #[serde(default)]
    older_than: Option<String>,
    /// Keep failed runs this long instead.
    #[serde(default)]
    failed_older_than: Option<String>,
    /// Keep at most this many finished runs per flow.
    #[serde(default)]
    keep: Option<u64>,
    /// Only this flow's runs.
    #[serde(default)]
    flow: Option<String>,
}

/// `POST /v1/runs/prune`: deletes finished runs by age and/or count.
pub async fn prune(
    axum::extract::State(state): axum::extract::State<std::sync::Arc<AppState>>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> super::error::ApiResult<axum::Json<PruneReport>> {
    use super::error::ApiError;
    let req: PruneBody = super::json_body(&headers, &body)?;
    let ms = |name: &str, v: &Option<String>| -> Result<Option<i64>, ApiError> {
        v.as_deref()
            .map(|t| {
                humantime::parse_duration(t)
                    .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                    .map_err(|e| {
                        ApiError::invalid(format!(
                            "`{name}`: `{t}` is not a duration ({e}); e.g. `30d`"
                        ))
                    })
            })
            .transpose()
    };
    let p = Prune {
        flow_id: req.flow.clone(),
        older_than_ms: ms("older_than", &req.older_than)?,
        failed_older_than_ms: ms("failed_older_than", &req.failed_older_than)?,
        keep_last: req.keep.map(|k| i64::try_from(k).unwrap_or(i64::MAX)),
        except_flows: Vec::new(),
    };
    if p.older_than_ms.is_none() && p.failed_older_than_ms.is_none() && p.keep_last.is_none() {
        return Err(ApiError::invalid(
            "nothing to prune by: give `older_than`, `failed_older_than` or `keep`",
        ));
    }
    Ok(axum::Json(state.store.prune_runs(&p, false).await?))
}
