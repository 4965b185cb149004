//! Connection rows (`connections`) and their status history
//! (`connection_status_events`). The config is JSON text holding parameters
//! and the *names* of secrets, never their values.

use serde::Serialize;
use sqlx::Row;

use super::{Store, StoreError, now_ms};

/// A stored connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConnectionRow {
    /// Connection id, as flows name it.
    pub id: String,
    /// Definition id.
    pub definition: String,
    /// Config as JSON text.
    pub config: String,
    /// Last recorded status (`online`, `degraded`, `offline`, `auth_required`).
    pub status: String,
    /// Why the status last changed.
    pub status_reason: Option<String>,
    /// When it last changed (ms).
    pub status_at: i64,
    /// Created (ms).
    pub created_at: i64,
}

/// One status change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct StatusEvent {
    /// Connection id.
    pub connection_id: String,
    /// Status before.
    pub from: String,
    /// Status after.
    pub to: String,
    /// Why.
    pub reason: String,
    /// When (ms).
    pub at: i64,
}

const COLUMNS: &str =
    "SELECT id, definition, config, status, status_reason, status_at, created_at FROM connections";

fn row(r: &sqlx::any::AnyRow) -> Result<ConnectionRow, StoreError> {
    Ok(ConnectionRow {
        id: r.try_get(0)?,
        definition: r.try_get(1)?,
        config: r.try_get(2)?,
        status: r.try_get(3)?,
        status_reason: r.try_get(4)?,
        status_at: r.try_get(5)?,
        created_at: r.try_get(6)?,
    })
}

impl Store {
    /// Adds a connection, or replaces its definition and config when `replace`.
    /// Returns false when it exists and `replace` is false.
    pub async fn put_connection(
        &self,
        id: &str,
        definition: &str,
        config: &str,
        replace: bool,
    ) -> Result<bool, StoreError> {
        let now = now_ms();
        let sql = if replace {
            "INSERT INTO connections (id, definition, config, status, status_reason, status_at, created_at, updated_at) VALUES ($1, $2, $3, 'online', NULL, $4, $4, $4) ON CONFLICT (id) DO UPDATE SET definition = excluded.definition, config = excluded.config, updated_at = excluded.updated_at"
        } else {
            "INSERT INTO connections (id, definition, config, status, status_reason, status_at, created_at, updated_at) VALUES ($1, $2, $3, 'online', NULL, $4, $4, $4) ON CONFLICT (id) DO NOTHING"
        };
        let done = sqlx::query(sql)
            .bind(id)
            .bind(definition)
            .bind(config)
            .bind(now)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// All connections, by id.
    pub async fn connections(&self) -> Result<Vec<ConnectionRow>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!("{COLUMNS} ORDER BY id")))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(row).collect()
    }

    /// One connection.
    pub async fn connection(&self, id: &str) -> Result<Option<ConnectionRow>, StoreError> {
        let r = sqlx::query(sqlx::AssertSqlSafe(format!("{COLUMNS} WHERE id = $1")))
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        r.as_ref().map(row).transpose()
    }

    /// Removes a connection, its history and its stored credentials; false
    /// when there was none.
    pub async fn remove_connection(&self, id: &str) -> Result<bool, StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("DELETE FROM connection_status_events WHERE connection_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        sqlx::query("DELETE FROM connection_credentials WHERE connection_id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query("DELETE FROM connections WHERE id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(done.rows_affected() == 1)
    }

    /// Records a status change and makes it the connection's current status.
    pub async fn record_status_change(&self, e: &StatusEvent) -> Result<(), StoreError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("INSERT INTO connection_status_events (id, connection_id, from_status, to_status, reason, at) VALUES ($1, $2, $3, $4, $5, $6)")
            .bind(uuid::Uuid::now_v7().to_string())
            .bind(&e.connection_id)
            .bind(&e.from)
            .bind(&e.to)
            .bind(&e.reason)
            .bind(e.at)
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "UPDATE connections SET status = $1, status_reason = $2, status_at = $3 WHERE id = $4",
        )
        .bind(&e.to)
        .bind(&e.reason)
        .bind(e.at)
        .bind(&e.connection_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Status changes of a connection, newest first.
    pub async fn status_history(
        &self,
        id: &str,
        limit: i64,
    ) -> Result<Vec<StatusEvent>, StoreError> {
        let rows = sqlx::query("SELECT connection_id, from_status, to_status, reason, at FROM connection_status_events WHERE connection_id = $1 ORDER BY at DESC, id DESC LIMIT $2")
            .bind(id)
            .bind(limit)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(StatusEvent {
                    connection_id: r.try_get(0)?,
                    from: r.try_get(1)?,
                    to: r.try_get(2)?,
                    reason: r.try_get(3)?,
                    at: r.try_get(4)?,
                })
            })
            .collect()
    }
}
