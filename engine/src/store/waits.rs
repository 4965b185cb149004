//! Parked runs (`wait_for` steps): the waits of `waiting` runs, and their
//! resolution (a signal, an event, a deadline), which stores the step's
//! result and queues the run again in one transaction.

use sqlx::Row;

use super::{Arg, RunStatus, StepRecord, Store, StoreError, json_text, now_ms, save_step_stmt};
use crate::steps::wait_for::WaitSpec;

/// A stored wait of a parked step.
#[derive(Debug, Clone)]
pub struct Wait {
    /// The run.
    pub run_id: String,
    /// The `wait_for` step.
    pub step_id: String,
    /// What resolves it.
    pub spec: WaitSpec,
    /// When it times out (ms since the epoch), if ever.
    pub deadline: Option<i64>,
}

const WAIT_COLUMNS: &str = "SELECT run_id, step_id, spec, deadline FROM run_waits";

fn wait_from_row(r: &sqlx::any::AnyRow) -> Result<Wait, StoreError> {
    Ok(Wait {
        run_id: r.try_get(0)?,
        step_id: r.try_get(1)?,
        spec: serde_json::from_str(&r.try_get::<String, _>(2)?)?,
        deadline: r.try_get(3)?,
    })
}

impl Store {
    /// Stores a step as waiting, with its wait, in one transaction.
    pub async fn park_step(
        &self,
        run_id: &str,
        step: &StepRecord,
        spec: &WaitSpec,
        deadline: Option<i64>,
    ) -> Result<(), StoreError> {
        let spec_text = json_text(&serde_json::to_value(spec)?);
        self.write_all(vec![
            save_step_stmt(run_id, step),
            (
                "INSERT INTO run_waits (run_id, step_id, signal, event_type, deadline, spec, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7) \
                 ON CONFLICT (run_id, step_id) DO UPDATE SET signal = excluded.signal, event_type = excluded.event_type, deadline = excluded.deadline, spec = excluded.spec",
                vec![
                    Arg::Text(Some(run_id.to_string())),
                    Arg::Text(Some(step.step_id.clone())),
                    Arg::Text(spec.signal.clone()),
                    Arg::Text(spec.event.clone()),
                    Arg::Int(deadline),
                    Arg::Text(Some(spec_text)),
                    Arg::Int(Some(now_ms())),
                ],
            ),
        ])
        .await?;
        Ok(())
    }

    /// Parks a run this owner holds: `waiting`, lease released, while it
    /// still has a wait. False when its waits were all resolved meanwhile
    /// (the run goes on at once) or the lease was lost.
    pub async fn park_run(&self, run_id: &str, owner: &str) -> Result<bool, StoreError> {
        let n = self
            .write(
                "UPDATE runs SET status = 'waiting', lease_owner = NULL, lease_expires_at = NULL \
                 WHERE id = $1 AND lease_owner = $2 AND status = 'running' \
                 AND EXISTS (SELECT 1 FROM run_waits WHERE run_id = $1)",
                vec![
                    Arg::Text(Some(run_id.to_string())),
                    Arg::Text(Some(owner.to_string())),
                ],
            )
            .await?;
        Ok(n == 1)
    }

    /// The waits of a run.
    pub async fn waits(&self, run_id: &str) -> Result<Vec<Wait>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{WAIT_COLUMNS} WHERE run_id = $1 ORDER BY step_id"
        )))
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(wait_from_row).collect()
    }

    /// The waits for events of this type.
    pub async fn event_waits(&self, event_type: &str) -> Result<Vec<Wait>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{WAIT_COLUMNS} WHERE event_type = $1 ORDER BY created_at"
        )))
        .bind(event_type)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(wait_from_row).collect()
    }

    /// The event types some run waits for.
    pub async fn waited_event_types(&self) -> Result<Vec<String>, StoreError> {
        let rows =
            sqlx::query("SELECT DISTINCT event_type FROM run_waits WHERE event_type IS NOT NULL")
                .fetch_all(&self.pool)
                .await?;
        rows.iter()
            .map(|r| r.try_get(0).map_err(StoreError::from))
            .collect()
    }

    /// Waits whose deadline has passed.
    pub async fn due_waits(&self, now: i64) -> Result<Vec<Wait>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{WAIT_COLUMNS} WHERE deadline <= $1 ORDER BY deadline LIMIT 500"
        )))
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(wait_from_row).collect()
    }

    /// Resolves a wait: deletes it, stores the step's result and, when the
    /// run is parked, queues it again, in one transaction. False when the
    /// wait is gone (resolved before, or its run ended): nothing changes.
    pub async fn resolve_wait(&self, run_id: &str, step: &StepRecord) -> Result<bool, StoreError> {
        // The delete comes first, so of two racing resolutions the second
        // waits for the first's row lock (PostgreSQL) or the write lock
        // (SQLite) and then deletes nothing.
        let mut tx = self.pool.begin().await?;
        let deleted = sqlx::query("DELETE FROM run_waits WHERE run_id = $1 AND step_id = $2")
            .bind(run_id)
            .bind(&step.step_id)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if deleted != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        let (sql, args) = save_step_stmt(run_id, step);
        super::bind_all(sqlx::query(sql), &args)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE runs SET status = 'queued', lease_owner = NULL, lease_expires_at = NULL WHERE id = $1 AND status = 'waiting'",
        )
        .bind(run_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Cancelling a parked run: forgets its waits and queues it with its
    /// cancel request, so resuming it ends it `cancelled` (with its
    /// `run.cancelled` event). False when the run was not waiting.
    pub async fn cancel_waiting(&self, run_id: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        let n = sqlx::query(
            "UPDATE runs SET status = 'queued', cancel_requested = 1 WHERE id = $1 AND status = 'waiting'",
        )
        .bind(run_id)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        if n != 1 {
            tx.rollback().await?;
            return Ok(false);
        }
        sqlx::query("DELETE FROM run_waits WHERE run_id = $1")
            .bind(run_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Forgets the waits of a run that ended.
    pub async fn clear_waits(&self, run_id: &str) -> Result<(), StoreError> {
        self.write(
            "DELETE FROM run_waits WHERE run_id = $1",
            vec![Arg::Text(Some(run_id.to_string()))],
        )
        .await?;
        Ok(())
    }

    /// Whether someone asked to cancel the run.
    pub async fn cancel_requested(&self, run_id: &str) -> Result<bool, StoreError> {
        let row = sqlx::query("SELECT cancel_requested FROM runs WHERE id = $1")
            .bind(run_id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(match row {
            Some(r) => r.try_get::<i64, _>(0)? != 0,
            None => false,
        })
    }

    /// How many runs are parked.
    pub async fn waiting_runs(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) FROM runs WHERE status = $1")
            .bind(RunStatus::Waiting.as_str())
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get(0)?)
    }
}
