//! Resolving parked runs (`wait_for` steps): a signal, a matching event or
//! a passed deadline stores the step's result and queues the run; the
//! caller then resumes it ([`Engine::resume_resolved`]), and a server's
//! sweep resumes any that a crash left queued.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::{Value, json};

use super::{Engine, RunError, step_value};
use crate::events::Envelope;
use crate::expr::from_json;
use crate::steps::wait_for;
use crate::store::{RunStatus, StepRecord, StepStatus, Wait, now_ms};

/// What a signal did.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Signalled {
    /// The run, now queued to go on.
    pub run_id: String,
    /// The `wait_for` step the signal answered.
    pub step_id: String,
    /// The signal.
    pub signal: String,
    /// Its data as the step's output holds it (defaults applied).
    pub data: Value,
}

impl Engine {
    /// Sends a signal to a parked run: checks it waits for this signal and
    /// the data against the step's declaration, then stores the step's
    /// output and queues the run (once: a second identical signal is
    /// refused). The caller resumes the run.
    pub async fn signal(
        &self,
        run_id: &str,
        signal: &str,
        data: &Value,
    ) -> Result<Signalled, RunError> {
        let run = self.load_run(run_id).await?;
        let store = &self.inner.store;
        let waits = store.waits(run_id).await?;
        let Some(wait) = waits
            .iter()
            .find(|w| w.spec.signal.as_deref() == Some(signal))
        else {
            let waited: Vec<String> = waits.iter().map(|w| w.spec.describe()).collect();
            let message = if !waited.is_empty() {
                format!(
                    "run `{run_id}` waits for {}, not signal `{signal}`",
                    waited.join(" and ")
                )
            } else if run.status == RunStatus::Waiting || !run.status.is_final() {
                format!(
                    "run `{run_id}` is {} and waits for no signal (signal `{signal}` was already received, or no step asked for it)",
                    run.status.as_str()
                )
            } else {
                format!(
                    "run `{run_id}` already {}; it waits for no signal",
                    run.status.as_str()
                )
            };
            return Err(RunError::NotWaiting(message));
        };
        let data = wait
            .spec
            .check_data(data)
            .map_err(|m| RunError::Signal(format!("signal `{signal}`: {m}")))?;
        let rec = self
            .resolved(
                wait,
                StepStatus::Succeeded,
                Some(wait_for::signal_output(signal, data.clone())),
                None,
            )
            .await?;
        if !store.resolve_wait(run_id, &rec).await? {
            return Err(RunError::NotWaiting(format!(
                "run `{run_id}` already received signal `{signal}`"
            )));
        }
        tracing::info!(run_id, step_id = %wait.step_id, signal, "signal received");
        Ok(Signalled {
            run_id: run_id.to_string(),
            step_id: wait.step_id.clone(),
            signal: signal.to_string(),
            data,
        })
    }

    /// Resolves the waits whose deadline passed (`on_timeout`: the step
    /// fails, or continues with `timed_out: true`). Returns the runs queued.
    pub async fn expire_waits(&self) -> Result<Vec<String>, RunError> {
        let store = &self.inner.store;
        let mut queued = Vec::new();
        for wait in store.due_waits(now_ms()).await? {
            let rec = match wait_for::timeout_result(&wait.spec) {
                Ok(v) => {
                    self.resolved(&wait, StepStatus::Succeeded, Some(v), None)
                        .await?
                }
                Err(e) => {
                    let error = json!({
                        "kind": e.kind,
                        "message": format!("step `{}`: {}", wait.step_id, e.message),
                        "attempts": 1,
                        "retryable": false,
                    });
                    self.resolved(&wait, StepStatus::Failed, None, Some(error))
                        .await?
                }
            };
            if store.resolve_wait(&wait.run_id, &rec).await? {
                tracing::info!(run_id = %wait.run_id, step_id = %wait.step_id, "wait timed out");
                queued.push(wait.run_id);
            }
        }
        Ok(queued)
    }

    /// Offers an event to the runs waiting for its type: each whose `match`
    /// holds (evaluated with the run's `inputs`, `trigger` and `steps`) is
    /// resolved with the event. Returns the runs queued.
    pub async fn offer_event(&self, env: &Envelope) -> Result<Vec<String>, RunError> {
        let store = &self.inner.store;
        let mut queued = Vec::new();
        for wait in store.event_waits(&env.event_type).await? {
            let ctx = match &wait.spec.matches {
                Some(_) => self.wait_context(&wait.run_id).await?,
                None => BTreeMap::new(),
            };
            match wait.spec.event_matches(env, &ctx) {
                Ok(true) => {}
                Ok(false) => continue,
                Err(e) => {
                    tracing::warn!(run_id = %wait.run_id, step_id = %wait.step_id, error = %e, "`match` failed; the event is not taken");
                    continue;
                }
            }
            let rec = self
                .resolved(
                    &wait,
                    StepStatus::Succeeded,
                    Some(wait_for::event_output(env)),
                    None,
                )
                .await?;
            if store.resolve_wait(&wait.run_id, &rec).await? {
                tracing::info!(run_id = %wait.run_id, step_id = %wait.step_id, event_id = %env.id, "event received");
                queued.push(wait.run_id);
            }
        }
        Ok(queued)
    }

    /// Resumes a run that a resolved wait queued, unless another process
    /// got to it first (it then goes on there).
    pub async fn resume_resolved(&self, run_id: &str) {
        match self.resume(run_id, None).await {
            Ok(o) => tracing::info!(run_id, status = o.status.as_str(), "resumed after its wait"),
            Err(RunError::Held { .. }) => {}
            Err(e) => tracing::warn!(run_id, error = %e, "could not resume after its wait"),
        }
    }

    /// The step record that resolves `wait`.
    async fn resolved(
        &self,
        wait: &Wait,
        status: StepStatus,
        output: Option<Value>,
        error: Option<Value>,
    ) -> Result<StepRecord, RunError> {
        let parked = self
            .inner
            .store
            .steps(&wait.run_id)
            .await?
            .into_iter()
            .find(|s| s.step_id == wait.step_id);
        let started_at = parked.as_ref().and_then(|s| s.started_at);
        Ok(StepRecord {
            step_id: wait.step_id.clone(),
            status,
            attempts: 1,
            input: parked.and_then(|s| s.input),
            output,
            error,
            started_at: started_at.or(Some(now_ms())),
            finished_at: Some(now_ms()),
        })
    }

    /// What a `match` condition reads besides `event`.
    async fn wait_context(
        &self,
        run_id: &str,
    ) -> Result<BTreeMap<String, minijinja::Value>, RunError> {
        let run = self.load_run(run_id).await?;
        let steps: BTreeMap<String, minijinja::Value> = self
            .inner
            .store
            .steps(run_id)
            .await?
            .iter()
            .filter(|s| s.status != StepStatus::Waiting)
            .map(|s| (s.step_id.clone(), step_value(s)))
            .collect();
        Ok(BTreeMap::from([
            ("inputs".to_string(), from_json(&run.inputs)),
            ("trigger".to_string(), from_json(&run.trigger)),
            ("steps".to_string(), minijinja::Value::from(steps)),
        ]))
    }
}
