//! Retention: deleting finished runs (with their step results and attempt
//! log) by age and by count, and giving SQLite's space back.
//!
//! Only finished runs (`succeeded`, `failed`, `cancelled`) are ever deleted.
//! Failed runs can be kept longer than the others (`failed_older_than`), so
//! the evidence of a failure outlives routine successes. Deduplication keys
//! (`request_keys`, `schedule_ticks`) are kept: a replayed webhook stays
//! refused after its run is gone.

use sqlx::Row;

use super::{Arg, Backend, Stmt, Store, StoreError, now_ms};

/// What to delete. Every limit is optional; a run goes when any limit it
/// falls under says so.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Prune {
    /// Only runs of this flow.
    pub flow_id: Option<String>,
    /// Runs that finished longer ago than this many milliseconds.
    pub older_than_ms: Option<i64>,
    /// Failed runs that finished longer ago than this (default: `older_than_ms`).
    pub failed_older_than_ms: Option<i64>,
    /// Keep at most this many finished runs per flow (the newest).
    pub keep_last: Option<i64>,
    /// Leave the runs of these flows alone (they have a policy of their own).
    pub except_flows: Vec<String>,
}

/// What a prune did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
pub struct PruneReport {
    /// Runs deleted.
    pub runs: u64,
    /// Step results deleted.
    pub steps: u64,
    /// Bytes the database file gave back (SQLite; 0 on PostgreSQL, whose
    /// autovacuum reuses the space).
    pub bytes_freed: u64,
}

/// Runs deleted per transaction.
const BATCH: i64 = 200;

/// Finished runs past the limits; `{except}` is `flow_id NOT IN (...)` or `1 = 1`.
const SELECT_EXPIRED: &str = "SELECT id FROM (\
     SELECT id, status, finished_at, \
            ROW_NUMBER() OVER (PARTITION BY flow_id ORDER BY created_at DESC, id DESC) AS n \
     FROM runs WHERE status IN ('succeeded', 'failed', 'cancelled') AND ($1 = '' OR flow_id = $1) \
     AND {except}\
     ) r \
     WHERE ($2 > 0 AND status <> 'failed' AND finished_at < $2) \
        OR ($3 > 0 AND status = 'failed' AND finished_at < $3) \
        OR ($4 >= 0 AND n > $4) \
     LIMIT $5";

impl Store {
    /// Deletes the finished runs `prune` names, in batches, then gives the
    /// space back on SQLite (`PRAGMA incremental_vacuum`; with `vacuum`, a
    /// full `VACUUM`, which also turns incremental vacuum on for a file made
    /// before it was the default).
    pub async fn prune_runs(&self, prune: &Prune, vacuum: bool) -> Result<PruneReport, StoreError> {
        let now = now_ms();
        let cutoff = |ms: Option<i64>| ms.map(|ms| now - ms.max(0)).unwrap_or(0);
        let other = cutoff(prune.older_than_ms);
        let failed = cutoff(prune.failed_older_than_ms.or(prune.older_than_ms));
        // -1: no count limit (`keep_last: 0` keeps none).
        let keep = prune.keep_last.map(|k| k.max(0)).unwrap_or(-1);
        let size_before = self.file_bytes().await?;
        let except = if prune.except_flows.is_empty() {
            "1 = 1".to_string()
        } else {
            let marks: Vec<String> = (0..prune.except_flows.len())
                .map(|i| format!("${}", i + 6))
                .collect();
            format!("flow_id NOT IN ({})", marks.join(", "))
        };
        let sql = SELECT_EXPIRED.replace("{except}", &except);
        let mut report = PruneReport::default();
        loop {
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(prune.flow_id.clone().unwrap_or_default())
                .bind(other)
                .bind(failed)
                .bind(keep)
                .bind(BATCH);
            for f in &prune.except_flows {
                q = q.bind(f.clone());
            }
            let rows = q.fetch_all(&self.pool).await?;
            let ids: Vec<String> = rows
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()?;
            if ids.is_empty() {
                break;
            }
            // Step results kept in archives (their rows are gone).
            let marks: Vec<String> = (1..=ids.len()).map(|i| format!("${i}")).collect();
            let mut archived = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT COALESCE(SUM(archived_steps), 0) FROM runs WHERE id IN ({}) \
                 AND status IN ('succeeded', 'failed', 'cancelled')",
                marks.join(", ")
            )));
            for id in &ids {
                archived = archived.bind(id.clone());
            }
            let archived: i64 = archived.fetch_one(&self.pool).await?.try_get(0)?;
            report.steps += archived.max(0) as u64;
            let mut stmts: Vec<Stmt> = Vec::with_capacity(ids.len() * 3);
            for id in &ids {
                let arg = || vec![Arg::Text(Some(id.clone()))];
                stmts.push(("DELETE FROM step_attempts WHERE run_id = $1", arg()));
                stmts.push(("DELETE FROM step_runs WHERE run_id = $1", arg()));
                stmts.push((
                    "DELETE FROM runs WHERE id = $1 AND status IN ('succeeded', 'failed', 'cancelled')",
                    arg(),
                ));
            }
            let counts = self.write_all(stmts).await?;
            for chunk in counts.chunks(3) {
                report.steps += chunk[1];
                report.runs += chunk[2];
            }
            if (ids.len() as i64) < BATCH {
                break;
            }
        }
        // Bases of archives no run needs any more.
        self.prune_bases().await?;
        if self.backend == Backend::Sqlite && (report.runs > 0 || vacuum) {
            let sql = if vacuum {
                "VACUUM"
            } else {
                "PRAGMA incremental_vacuum"
            };
            sqlx::query(sql).execute(&self.pool).await?;
            report.bytes_freed = size_before.saturating_sub(self.file_bytes().await?);
        }
        Ok(report)
    }

    /// Ids of the stored flows.
    pub async fn flow_ids(&self) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query("SELECT DISTINCT id FROM flows ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| r.try_get(0).map_err(StoreError::from))
            .collect()
    }

    /// The SQLite file's size in bytes (pages × page size); 0 on PostgreSQL.
    async fn file_bytes(&self) -> Result<u64, StoreError> {
        if self.backend != Backend::Sqlite {
            return Ok(0);
        }
        let pages: i64 = sqlx::query_scalar("PRAGMA page_count")
            .fetch_one(&self.pool)
            .await?;
        let size: i64 = sqlx::query_scalar("PRAGMA page_size")
            .fetch_one(&self.pool)
            .await?;
        Ok(u64::try_from(pages * size).unwrap_or(0))
    }
}
