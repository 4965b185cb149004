//! Rows the server owns: API tokens (`api_tokens`), flow settings
//! (`flow_settings`) and fired schedule ticks (`schedule_ticks`). Request
//! keys (`request_keys`) are written with the run they started, by
//! [`Store::create_run_once`].

use serde::Serialize;
use sqlx::Row;

use super::{Store, StoreError, now_ms};

/// A stored API token. The secret itself is never stored, only its sha256.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct TokenRow {
    /// Token id (the part of the token before the secret).
    pub id: String,
    /// Who or what it is for.
    pub name: String,
    /// `admin`, `write` or `read`.
    pub scope: String,
    /// sha256 of the secret part (hex).
    #[serde(skip)]
    pub secret_hash: String,
    /// Requests per second this token may make (burst the same); `None`: the server's default.
    pub rate_per_sec: Option<i64>,
    /// Created (ms).
    pub created_at: i64,
    /// Revoked (ms), if revoked.
    pub revoked_at: Option<i64>,
}

/// The server's settings of a flow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FlowSettings {
    /// Flow id.
    pub id: String,
    /// Whether its triggers start runs.
    pub enabled: bool,
    /// `api` (uploaded) or `file` (loaded from the flows directory).
    pub origin: String,
    /// Deleted (ms), if deleted.
    pub deleted_at: Option<i64>,
    /// Last change (ms).
    pub updated_at: i64,
}

const TOKEN_COLUMNS: &str =
    "SELECT id, name, scope, secret_hash, rate_per_sec, created_at, revoked_at FROM api_tokens";

fn token_row(r: &sqlx::any::AnyRow) -> Result<TokenRow, StoreError> {
    Ok(TokenRow {
        id: r.try_get(0)?,
        name: r.try_get(1)?,
        scope: r.try_get(2)?,
        secret_hash: r.try_get(3)?,
        rate_per_sec: r.try_get(4)?,
        created_at: r.try_get(5)?,
        revoked_at: r.try_get(6)?,
    })
}

fn settings_row(r: &sqlx::any::AnyRow) -> Result<FlowSettings, StoreError> {
    Ok(FlowSettings {
        id: r.try_get(0)?,
        enabled: r.try_get::<i64, _>(1)? != 0,
        origin: r.try_get(2)?,
        deleted_at: r.try_get(3)?,
        updated_at: r.try_get(4)?,
    })
}

impl Store {
    /// Stores a new token.
    pub async fn insert_token(&self, t: &TokenRow) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO api_tokens (id, name, scope, secret_hash, rate_per_sec, created_at, revoked_at) VALUES ($1, $2, $3, $4, $5, $6, $7)")
            .bind(&t.id)
            .bind(&t.name)
            .bind(&t.scope)
            .bind(&t.secret_hash)
            .bind(t.rate_per_sec)
            .bind(t.created_at)
            .bind(t.revoked_at)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// A token by id (revoked ones included).
    pub async fn token(&self, id: &str) -> Result<Option<TokenRow>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{TOKEN_COLUMNS} WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| token_row(&r)).transpose()
    }

    /// All tokens, oldest first.
    pub async fn tokens(&self) -> Result<Vec<TokenRow>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{TOKEN_COLUMNS} ORDER BY created_at, id"
        )))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(token_row).collect()
    }

    /// Revokes a token. Returns false when there is no such active token.
    pub async fn revoke_token(&self, id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE api_tokens SET revoked_at = $1 WHERE id = $2 AND revoked_at IS NULL",
        )
        .bind(now_ms())
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The settings of every flow the server knows (deleted ones included).
    pub async fn flow_settings(&self) -> Result<Vec<FlowSettings>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, enabled, origin, deleted_at, updated_at FROM flow_settings ORDER BY id",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(settings_row).collect()
    }

    /// Creates or replaces a flow's settings (an upload undeletes the flow).
    pub async fn put_flow_settings(
        &self,
        id: &str,
        enabled: bool,
        origin: &str,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO flow_settings (id, enabled, origin, deleted_at, updated_at) VALUES ($1, $2, $3, NULL, $4) \
             ON CONFLICT (id) DO UPDATE SET enabled = excluded.enabled, origin = excluded.origin, deleted_at = NULL, updated_at = excluded.updated_at",
        )
        .bind(id)
        .bind(i64::from(enabled))
        .bind(origin)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Enables or disables a flow that is not deleted. Returns false when there is none.
    pub async fn set_flow_enabled(&self, id: &str, enabled: bool) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE flow_settings SET enabled = $1, updated_at = $2 WHERE id = $3 AND deleted_at IS NULL",
        )
        .bind(i64::from(enabled))
        .bind(now_ms())
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Marks a flow deleted. Returns false when there is no such flow.
    pub async fn delete_flow(&self, id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "UPDATE flow_settings SET deleted_at = $1, enabled = 0, updated_at = $1 WHERE id = $2 AND deleted_at IS NULL",
        )
        .bind(now_ms())
        .bind(id)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Claims a schedule tick for `run_id`. Returns false when another
    /// process (or an earlier start of this one) already fired it.
    pub async fn claim_tick(
        &self,
        flow_id: &str,
        trigger_key: &str,
        tick_at: i64,
        run_id: &str,
    ) -> Result<bool, StoreError> {
        let done = sqlx::query(
            "INSERT INTO schedule_ticks (flow_id, trigger_key, tick_at, run_id, fired_at) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (flow_id, trigger_key, tick_at) DO NOTHING",
        )
        .bind(flow_id)
        .bind(trigger_key)
        .bind(tick_at)
        .bind(run_id)
        .bind(now_ms())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// The last fired tick of a schedule trigger (ms), if any.
    pub async fn last_tick(
        &self,
        flow_id: &str,
        trigger_key: &str,
    ) -> Result<Option<i64>, StoreError> {
        let row = sqlx::query(
            "SELECT MAX(tick_at) FROM schedule_ticks WHERE flow_id = $1 AND trigger_key = $2",
        )
        .bind(flow_id)
        .bind(trigger_key)
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get::<Option<i64>, _>(0)?)
    }

    /// Whether the database answers (for `/readyz`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").fetch_one(&self.pool).await?;
        Ok(())
    }

    /// The run a request key started within the last `window_ms`, if any.
    pub async fn request_key_run(
        &self,
        key: &str,
        window_ms: i64,
    ) -> Result<Option<String>, StoreError> {
        let row = sqlx::query(
            "SELECT run_id FROM request_keys WHERE request_key = $1 AND created_at >= $2",
        )
        .bind(key)
        .bind(now_ms() - window_ms)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|r| r.try_get(0)).transpose()?)
    }

    /// Forgets request keys created before `before` (ms).
    pub async fn prune_request_keys(&self, before: i64) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM request_keys WHERE created_at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// Outbox messages by status, for metrics.
    pub async fn message_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query("SELECT status, COUNT(*) FROM webhook_messages GROUP BY status")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }

    /// Runs by status, for metrics.
    pub async fn run_counts(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query("SELECT status, COUNT(*) FROM runs GROUP BY status")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect()
    }
}
