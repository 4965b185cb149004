//! Sync rows: `sync_state` (one per connection and entity) and
//! `synced_records` (the record cache, with a content hash per record).

use std::collections::HashMap;

use serde::Serialize;
use sqlx::Row;

use super::{Backend, Store, StoreError, now_ms};

/// The sync state of one connection and entity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct SyncStateRow {
    /// Connection id.
    pub connection_id: String,
    /// Entity name.
    pub entity: String,
    /// `idle`, `running` or `failed`.
    pub state: String,
    /// `incremental` or `full`, of the last sync.
    pub mode: Option<String>,
    /// Id of the last (or current) sync.
    pub sync_id: Option<String>,
    /// Highest `remote_updated_at` seen by a successful sync (ms).
    pub cursor_ms: Option<i64>,
    /// Where an interrupted sync continues (JSON).
    pub checkpoint: Option<String>,
    /// A running sync's lease (ms).
    pub lease_until: Option<i64>,
    /// When the last sync started (ms).
    pub started_at: Option<i64>,
    /// Last success (ms).
    pub last_success_at: Option<i64>,
    /// Last failure (ms).
    pub last_failure_at: Option<i64>,
    /// Last error.
    pub last_error: Option<String>,
    /// Counts of the last sync (JSON).
    pub counts: Option<String>,
    /// Duration of the last sync (ms).
    pub duration_ms: Option<i64>,
}

const COLUMNS: &str = "SELECT connection_id, entity, state, mode, sync_id, cursor_ms, checkpoint, lease_until, started_at, last_success_at, last_failure_at, last_error, counts, duration_ms FROM sync_state";

fn row(r: &sqlx::any::AnyRow) -> Result<SyncStateRow, StoreError> {
    Ok(SyncStateRow {
        connection_id: r.try_get(0)?,
        entity: r.try_get(1)?,
        state: r.try_get(2)?,
        mode: r.try_get(3)?,
        sync_id: r.try_get(4)?,
        cursor_ms: r.try_get(5)?,
        checkpoint: r.try_get(6)?,
        lease_until: r.try_get(7)?,
        started_at: r.try_get(8)?,
        last_success_at: r.try_get(9)?,
        last_failure_at: r.try_get(10)?,
        last_error: r.try_get(11)?,
        counts: r.try_get(12)?,
        duration_ms: r.try_get(13)?,
    })
}

/// A record as the cache stores it.
#[derive(Debug, Clone)]
pub struct CachedRecord {
    /// Remote id.
    pub remote_id: String,
    /// sha256 of the record's JSON.
    pub hash: String,
    /// The record's JSON.
    pub data: String,
    /// `remote_updated_at` (ms).
    pub remote_updated_at: i64,
}

/// What saving a page changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PageChanges {
    /// Remote ids new to the cache.
    pub created: Vec<String>,
    /// Remote ids whose content changed (or came back after a deletion).
    pub updated: Vec<String>,
    /// Records seen again unchanged.
    pub unchanged: u64,
}

/// Rows per multi-row statement of [`Store::save_sync_page`] (7 parameters a
/// row, 1,750 in all: under SQLite's 32,766 and PostgreSQL's 65,535).
const ROWS_PER_STATEMENT: usize = 250;

/// A statement whose `$N` parameters appear in order (`$1`, `$2`, ...) for
/// the store's backend: on SQLite they become anonymous `?`, bound by
/// position. SQLite finds a numbered parameter by a linear search of the
/// statement's names, once per parameter, so binding a statement with a
/// thousand of them took 40 % of the store's time in a sync.
fn in_order(backend: Backend, sql: String) -> String {
    if backend != Backend::Sqlite {
        return sql;
    }
    let mut out = String::with_capacity(sql.len());
    let mut rest = sql.as_str();
    let mut expected = 1;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let digits = rest[at + 1..]
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len() - at - 1);
        debug_assert_eq!(
            rest[at + 1..at + 1 + digits].parse::<usize>().ok(),
            Some(expected),
            "parameters numbered in order of appearance"
        );
        expected += 1;
        out.push('?');
        rest = &rest[at + 1 + digits..];
    }
    out.push_str(rest);
    out
}

/// `$first, $first+1, ...`: `n` numbered parameters for an `IN (...)` list.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Store {
    /// The sync state of a connection and entity.
    pub async fn sync_state(
        &self,
        connection: &str,
        entity: &str,
    ) -> Result<Option<SyncStateRow>, StoreError> {
        let r = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{COLUMNS} WHERE connection_id = $1 AND entity = $2"
        )))
        .bind(connection)
        .bind(entity)
        .fetch_optional(&self.pool)
        .await?;
        r.as_ref().map(row).transpose()
    }

    /// Every sync state.
    pub async fn sync_states(&self) -> Result<Vec<SyncStateRow>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{COLUMNS} ORDER BY connection_id, entity"
        )))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(row).collect()
    }

    /// Marks a sync running unless another one holds a live lease. Returns the
    /// state as it was before (None when refused).
    pub async fn claim_sync(
        &self,
        connection: &str,
        entity: &str,
        sync_id: &str,
        mode: &str,
        lease_ms: i64,
    ) -> Result<Option<SyncStateRow>, StoreError> {
        let now = now_ms();
        sqlx::query("INSERT INTO sync_state (connection_id, entity, state) VALUES ($1, $2, 'idle') ON CONFLICT (connection_id, entity) DO NOTHING")
            .bind(connection)
            .bind(entity)
            .execute(&self.pool)
            .await?;
        let before = self.sync_state(connection, entity).await?;
        let done = sqlx::query("UPDATE sync_state SET state = 'running', sync_id = $1, mode = $2, lease_until = $3, started_at = $4 WHERE connection_id = $5 AND entity = $6 AND (state <> 'running' OR lease_until IS NULL OR lease_until < $4)")
            .bind(sync_id)
            .bind(mode)
            .bind(now + lease_ms)
            .bind(now)
            .bind(connection)
            .bind(entity)
            .execute(&self.pool)
            .await?;
        Ok(if done.rows_affected() == 1 {
            before
        } else {
            None
        })
    }

    /// Upserts one page of records and the sync's checkpoint (made from what the
    /// page changed) in one transaction.
    pub async fn save_sync_page(
        &self,
        connection: &str,
        entity: &str,
        sync_id: &str,
        records: &[CachedRecord],
        checkpoint: impl FnOnce(&PageChanges) -> String,
        lease_until: i64,
    ) -> Result<PageChanges, StoreError> {
        let mut tx = self.begin_write().await?;
        let mut known = HashMap::new();
        for chunk in records.chunks(500) {
            let sql = in_order(
                self.backend,
                format!(
                    "SELECT remote_id, hash, deleted FROM synced_records WHERE connection_id = $1 AND entity = $2 AND remote_id IN ({})",
                    placeholders(3, chunk.len())
                ),
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(connection)
                .bind(entity);
            for r in chunk {
                q = q.bind(&r.remote_id);
            }
            for row in q.fetch_all(&mut *tx).await? {
                let id: String = row.try_get(0)?;
                let hash: String = row.try_get(1)?;
                let deleted: i64 = row.try_get(2)?;
                known.insert(id, (hash, deleted != 0));
            }
        }
        let mut changes = PageChanges::default();
        let mut seen: Vec<&str> = Vec::new();
        let mut upserts: Vec<&CachedRecord> = Vec::new();
        // A record listed twice in one page counts once, with its last content
        // (one multi-row upsert cannot touch a row twice on PostgreSQL).
        let mut last: HashMap<&str, usize> = HashMap::with_capacity(records.len());
        for (i, r) in records.iter().enumerate() {
            last.insert(&r.remote_id, i);
        }
        for (i, r) in records.iter().enumerate() {
            if last.get(r.remote_id.as_str()) != Some(&i) {
                continue;
            }
            match known.get(&r.remote_id) {
                Some((hash, false)) if *hash == r.hash => {
                    seen.push(&r.remote_id);
                    changes.unchanged += 1;
                }
                existing => {
                    upserts.push(r);
                    if existing.is_some() {
                        changes.updated.push(r.remote_id.clone());
                    } else {
                        changes.created.push(r.remote_id.clone());
                    }
                }
            }
        }
        // Unchanged records: only their `seen_sync` moves (deletion detection).
        for chunk in seen.chunks(ROWS_PER_STATEMENT) {
            let sql = in_order(
                self.backend,
                format!(
                    "UPDATE synced_records SET seen_sync = $1 WHERE connection_id = $2 AND entity = $3 AND remote_id IN ({})",
                    placeholders(4, chunk.len())
                ),
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(sync_id)
                .bind(connection)
                .bind(entity);
            for id in chunk {
                q = q.bind(*id);
            }
            q.execute(&mut *tx).await?;
        }
        // New and changed records: one multi-row upsert per chunk.
        for chunk in upserts.chunks(ROWS_PER_STATEMENT) {
            let rows: Vec<String> = (0..chunk.len())
                .map(|i| format!("({}, 0, ${})", placeholders(1 + i * 7, 6), 7 + i * 7))
                .collect();
            let sql = in_order(
                self.backend,
                format!(
                    "INSERT INTO synced_records (connection_id, entity, remote_id, hash, data, remote_updated_at, deleted, seen_sync) VALUES {} \
                 ON CONFLICT (connection_id, entity, remote_id) DO UPDATE SET hash = excluded.hash, data = excluded.data, \
                 remote_updated_at = excluded.remote_updated_at, deleted = 0, seen_sync = excluded.seen_sync",
                    rows.join(", ")
                ),
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for r in chunk {
                q = q
                    .bind(connection)
                    .bind(entity)
                    .bind(&r.remote_id)
                    .bind(&r.hash)
                    .bind(&r.data)
                    .bind(r.remote_updated_at)
                    .bind(sync_id);
            }
            q.execute(&mut *tx).await?;
        }
        sqlx::query("UPDATE sync_state SET checkpoint = $1, lease_until = $2 WHERE connection_id = $3 AND entity = $4 AND sync_id = $5")
            .bind(checkpoint(&changes))
            .bind(lease_until)
            .bind(connection)
            .bind(entity)
            .bind(sync_id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(changes)
    }

    /// Marks cached records a full sync did not see as deleted (only those
    /// changed after `since_ms`, the history window, when given). Returns their ids.
    pub async fn mark_unseen_deleted(
        &self,
        connection: &str,
        entity: &str,
        sync_id: &str,
        since_ms: Option<i64>,
    ) -> Result<Vec<String>, StoreError> {
        let since = since_ms.unwrap_or(i64::MIN);
        let mut tx = self.begin_write().await?;
        let rows = sqlx::query("SELECT remote_id FROM synced_records WHERE connection_id = $1 AND entity = $2 AND seen_sync <> $3 AND deleted = 0 AND remote_updated_at > $4 ORDER BY remote_id")
            .bind(connection)
            .bind(entity)
            .bind(sync_id)
            .bind(since)
            .fetch_all(&mut *tx)
            .await?;
        let ids: Vec<String> = rows
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?;
        sqlx::query("UPDATE synced_records SET deleted = 1 WHERE connection_id = $1 AND entity = $2 AND seen_sync <> $3 AND deleted = 0 AND remote_updated_at > $4")
            .bind(connection)
            .bind(entity)
            .bind(sync_id)
            .bind(since)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(ids)
    }

    /// Ends a sync: success advances the cursor and clears the checkpoint;
    /// failure keeps the checkpoint so the next sync resumes from it.
    #[allow(clippy::too_many_arguments)]
    pub async fn finish_sync(
        &self,
        connection: &str,
        entity: &str,
        sync_id: &str,
        ok: bool,
        cursor_ms: Option<i64>,
        counts: &str,
        error: Option<&str>,
        duration_ms: i64,
    ) -> Result<(), StoreError> {
        let now = now_ms();
        let q = if ok {
            sqlx::query("UPDATE sync_state SET state = 'idle', cursor_ms = COALESCE($1, cursor_ms), checkpoint = NULL, lease_until = NULL, last_success_at = $2, counts = $3, last_error = $4, duration_ms = $5, failures = 0 WHERE connection_id = $6 AND entity = $7 AND sync_id = $8")
                .bind(cursor_ms)
        } else {
            // The cursor stays; the checkpoint stays for the next sync to resume from.
            sqlx::query(
                "UPDATE sync_state SET state = 'failed', lease_until = NULL, last_failure_at = $1, counts = $2, last_error = $3, duration_ms = $4, failures = failures + 1 WHERE connection_id = $5 AND entity = $6 AND sync_id = $7",
            )
        };
        q.bind(now)
            .bind(counts)
            .bind(error.map(str::to_string))
            .bind(duration_ms)
            .bind(connection)
            .bind(entity)
            .bind(sync_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// How many syncs of a connection's entity failed in a row (0 after a success).
    pub async fn sync_failures(&self, connection: &str, entity: &str) -> Result<i64, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT failures FROM sync_state WHERE connection_id = $1 AND entity = $2",
        )
        .bind(connection)
        .bind(entity)
        .fetch_optional(&self.pool)
        .await?
        .unwrap_or(0))
    }

    /// Cached records of a connection and entity (deleted ones included, flagged).
    pub async fn cached_records(
        &self,
        connection: &str,
        entity: &str,
    ) -> Result<Vec<(String, bool)>, StoreError> {
        let rows = sqlx::query("SELECT data, deleted FROM synced_records WHERE connection_id = $1 AND entity = $2 ORDER BY remote_updated_at, remote_id")
            .bind(connection)
            .bind(entity)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                let d: String = r.try_get(0)?;
                let del: i64 = r.try_get(1)?;
                Ok((d, del != 0))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_parameters_become_positional_on_sqlite_only() {
        let sql = format!(
            "UPDATE t SET a = $1 WHERE b IN ({}) AND c = $12",
            placeholders(2, 10)
        );
        assert_eq!(
            in_order(Backend::Sqlite, sql.clone()),
            "UPDATE t SET a = ? WHERE b IN (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) AND c = ?"
        );
        assert_eq!(in_order(Backend::Postgres, sql.clone()), sql);
    }
}
