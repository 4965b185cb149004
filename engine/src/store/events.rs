//! The event log (table `events`) and the effects a step or a run's end
//! commits with it: event rows for `event` triggers and outbox messages for
//! webhook endpoints, in one transaction with the change that fired them.
//!
//! Consumers (every `sluice serve`, see `crate::events`) claim undispatched
//! events under a lease, start their runs and mark them dispatched; a killed
//! consumer's claims expire and another takes them over.

use std::time::Duration;

use serde_json::Value;
use sqlx::Row;

use super::webhooks::insert_message_stmt;
use super::{
    Arg, Backend, NewMessage, RunStatus, StepRecord, Stmt, Store, StoreError, finish_run_stmt, ms,
    now_ms, save_step_stmt,
};

/// The PostgreSQL channel notified when events commit.
pub const EVENTS_CHANNEL: &str = "sluice_events";

/// An event to append to the log.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// Envelope id; firing the same id twice stores one row.
    pub id: String,
    /// Event type, e.g. `record.created`.
    pub event_type: String,
    /// The connection it is about, if any.
    pub connection_id: Option<String>,
    /// The envelope as JSON.
    pub body: String,
}

/// An event read back from the log.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    /// Envelope id.
    pub id: String,
    /// Event type.
    pub event_type: String,
    /// The envelope as JSON.
    pub body: String,
    /// When it was written (ms).
    pub created_at: i64,
}

/// What a change fires, committed with it: event rows and outbox messages.
#[derive(Debug, Clone, Default)]
pub struct Effects {
    /// Outbox messages, one per (event, endpoint).
    pub messages: Vec<NewMessage>,
    /// Events for `event` triggers.
    pub events: Vec<NewEvent>,
}

impl Effects {
    /// Nothing to write.
    pub fn is_empty(&self) -> bool {
        self.messages.is_empty() && self.events.is_empty()
    }
}

impl Store {
    fn effect_stmts(&self, effects: &Effects, stmts: &mut Vec<Stmt>) {
        let now = now_ms();
        stmts.extend(effects.messages.iter().map(|m| insert_message_stmt(m, now)));
        for e in &effects.events {
            stmts.push((
                "INSERT INTO events (id, event_type, connection_id, body, created_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id) DO NOTHING",
                vec![
                    Arg::Text(Some(e.id.clone())),
                    Arg::Text(Some(e.event_type.clone())),
                    Arg::Text(e.connection_id.clone()),
                    Arg::Text(Some(e.body.clone())),
                    Arg::Int(Some(now)),
                ],
            ));
        }
        if !effects.events.is_empty() && self.backend == Backend::Postgres {
            // Delivered at commit, to every process listening (idle consumers wake).
            stmts.push(("SELECT pg_notify('sluice_events', '')::text", Vec::new()));
        }
    }

    async fn commit_with_effects(
        &self,
        mut stmts: Vec<Stmt>,
        effects: &Effects,
    ) -> Result<(), StoreError> {
        self.effect_stmts(effects, &mut stmts);
        if stmts.is_empty() {
            return Ok(());
        }
        self.write_all(stmts).await?;
        if !effects.messages.is_empty() {
            self.outbox_signal.notify_waiters();
        }
        Ok(())
    }

    /// Writes events and outbox messages fired by no other change (a sync's
    /// events, a connection's status), in one transaction.
    pub async fn record_effects(&self, effects: &Effects) -> Result<(), StoreError> {
        self.commit_with_effects(Vec::new(), effects).await
    }

    /// Stores a step's result with what it fired, in one transaction.
    pub async fn save_step_with_effects(
        &self,
        run_id: &str,
        step: &StepRecord,
        effects: &Effects,
    ) -> Result<(), StoreError> {
        self.commit_with_effects(vec![save_step_stmt(run_id, step)], effects)
            .await
    }

    /// Ends a run (see [`Store::finish_run`]) with what its end fires
    /// (`run.failed`, ...), in one transaction.
    #[allow(clippy::too_many_arguments)]
    pub async fn finish_run_with_effects(
        &self,
        run_id: &str,
        flow_id: &str,
        status: RunStatus,
        output: Option<&Value>,
        error: Option<&Value>,
        effects: &Effects,
        steps: &[StepRecord],
    ) -> Result<(), StoreError> {
        // A run with large outputs is kept compact: its step outputs and
        // its output move into one compressed archive (see `archive`).
        let (stmts, made) = match self.archive_stmts(run_id, flow_id, steps, output).await? {
            Some((archived, made)) => {
                let mut stmts = vec![finish_run_stmt(run_id, status, None, error)];
                stmts.extend(archived);
                (stmts, made)
            }
            None => (vec![finish_run_stmt(run_id, status, output, error)], None),
        };
        self.commit_with_effects(stmts, effects).await?;
        if let Some(made) = made {
            self.remember_base(made);
        }
        Ok(())
    }

    /// Claims up to `limit` undispatched events, oldest first, for `owner`
    /// until the lease ends: those nobody holds and those whose holder's lease
    /// expired (it died or stalled).
    pub async fn claim_events(
        &self,
        owner: &str,
        lease: Duration,
        limit: i64,
    ) -> Result<Vec<StoredEvent>, StoreError> {
        if self.backend == Backend::Sqlite {
            // An idle poll reads; only a claim takes the write lock.
            let any = sqlx::query("SELECT 1 FROM events WHERE dispatched_at IS NULL LIMIT 1")
                .fetch_optional(&self.pool)
                .await?;
            if any.is_none() {
                return Ok(Vec::new());
            }
        }
        let now = now_ms();
        const FREE: &str =
            "dispatched_at IS NULL AND (lease_expires_at IS NULL OR lease_expires_at < $3)";
        let sql = match self.backend {
            Backend::Postgres => format!(
                "UPDATE events SET lease_owner = $1, lease_expires_at = $2 WHERE id IN \
                 (SELECT id FROM events WHERE {FREE} ORDER BY created_at LIMIT $4 FOR UPDATE SKIP LOCKED) \
                 RETURNING id, event_type, body, created_at"
            ),
            Backend::Sqlite => format!(
                "UPDATE events SET lease_owner = $1, lease_expires_at = $2 WHERE id IN \
                 (SELECT id FROM events WHERE {FREE} ORDER BY created_at LIMIT $4) \
                 RETURNING id, event_type, body, created_at"
            ),
        };
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(owner)
            .bind(now + ms(lease))
            .bind(now)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        let mut out = rows
            .iter()
            .map(|r| {
                Ok(StoredEvent {
                    id: r.try_get(0)?,
                    event_type: r.try_get(1)?,
                    body: r.try_get(2)?,
                    created_at: r.try_get(3)?,
                })
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        out.sort_by(|a, b| (a.created_at, &a.id).cmp(&(b.created_at, &b.id)));
        Ok(out)
    }

    /// Marks events as dispatched (every matching trigger has its run).
    pub async fn mark_events_dispatched(&self, ids: &[String]) -> Result<(), StoreError> {
        self.update_events(
            "UPDATE events SET dispatched_at = $1, lease_owner = NULL, lease_expires_at = NULL WHERE id IN",
            now_ms(),
            ids,
        )
        .await
    }

    /// Gives claimed events back undispatched, free for any consumer at once
    /// (this one is shutting down).
    pub async fn release_events(&self, ids: &[String]) -> Result<(), StoreError> {
        self.update_events(
            "UPDATE events SET lease_owner = NULL, lease_expires_at = NULL WHERE $1 > 0 AND id IN",
            1,
            ids,
        )
        .await
    }

    async fn update_events(
        &self,
        head: &str,
        first: i64,
        ids: &[String],
    ) -> Result<(), StoreError> {
        for chunk in ids.chunks(200) {
            let marks: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 2)).collect();
            let sql = format!("{head} ({})", marks.join(", "));
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(first);
            for id in chunk {
                q = q.bind(id.as_str());
            }
            q.execute(&self.pool).await?;
        }
        Ok(())
    }

    /// Events not yet dispatched.
    pub async fn undispatched_events(&self) -> Result<i64, StoreError> {
        let row = sqlx::query("SELECT COUNT(*) FROM events WHERE dispatched_at IS NULL")
            .fetch_one(&self.pool)
            .await?;
        Ok(row.try_get(0)?)
    }

    /// Deletes events written before `before` (ms), dispatched or not.
    /// Returns how many were deleted, and of those how many were never dispatched.
    pub async fn prune_events(&self, before: i64) -> Result<(u64, u64), StoreError> {
        let never: i64 = sqlx::query(
            "SELECT COUNT(*) FROM events WHERE created_at < $1 AND dispatched_at IS NULL",
        )
        .bind(before)
        .fetch_one(&self.pool)
        .await?
        .try_get(0)?;
        let done = sqlx::query("DELETE FROM events WHERE created_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok((done.rows_affected(), u64::try_from(never).unwrap_or(0)))
    }
}
