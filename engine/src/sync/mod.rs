//! Syncs: keep a local, current copy of a connection's records of one entity.
//!
//! An **incremental** sync reads the records changed after the cursor (the
//! highest `remote_updated_at` a successful sync saw, minus a lookback for
//! clock skew), page by page, upserting them into the record cache with a
//! content hash, so each record counts as created, updated or unchanged. A
//! **full** sync ignores the cursor (within an optional history window) and
//! marks cached records it no longer sees as deleted.
//!
//! Each page and the sync's checkpoint are saved in one transaction; a sync
//! that fails midway keeps its checkpoint, and the next sync of the same mode
//! resumes from it (same sync id, so events are not repeated). The cursor
//! advances only when a sync succeeds. One sync per connection and entity
//! runs at a time (a lease in `sync_state`).
//!
//! Events (to webhook endpoints): `sync.completed`, `sync.failed`, and
//! `record.created|updated|deleted`: one event per record (with the record)
//! for the first [`PER_RECORD_EVENTS`] changes of a sync, then one batched
//! event per page and kind with `{"batch": true, "remote_ids": [...]}`.

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::connectors::{Connector, ConnectorError, ListQuery};
use crate::store::{CachedRecord, Store, StoreError, now_ms};
use crate::unified::Entity;

/// Changes per sync announced one event per record; the rest come in batches.
pub const PER_RECORD_EVENTS: usize = 100;

/// Incremental or full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Records changed after the cursor.
    Incremental,
    /// Everything (within the history window), detecting deletions.
    Full,
}

impl Mode {
    /// `incremental` or `full`.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Incremental => "incremental",
            Mode::Full => "full",
        }
    }
}

/// A sync that runs on a schedule: one entry of a connection's `syncs`
/// (set with `sluice connection add --sync ENTITY=CRON`, or `"syncs"` in the
/// API's connection body). `sluice serve` fires it; each tick syncs once
/// however many processes share the database.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SyncSchedule {
    /// Entity synced, e.g. `purchase_order`.
    pub entity: String,
    /// Cron expression: five fields, or six with seconds first.
    pub cron: String,
    /// IANA time zone of the cron (UTC when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// A full re-sync (detects deletions) instead of an incremental one.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub full: bool,
}

impl SyncSchedule {
    /// Parses the CLI form `ENTITY=CRON`.
    pub fn parse(text: &str, full: bool, timezone: Option<&str>) -> Result<SyncSchedule, String> {
        let (entity, cron) = text.split_once('=').ok_or_else(|| {
            format!("sync schedule `{text}` is not ENTITY=CRON, e.g. `purchase_order=*/15 * * * *`")
        })?;
        Ok(SyncSchedule {
            entity: entity.trim().to_string(),
            cron: cron.trim().to_string(),
            timezone: timezone.map(str::to_string),
            full,
        })
    }

    /// The mode each tick runs.
    pub fn mode(&self) -> Mode {
        if self.full {
            Mode::Full
        } else {
            Mode::Incremental
        }
    }

    /// Checks the entity (one the definition can list), the cron and the time zone.
    pub fn check(
        &self,
        def: &crate::connectors::definition::CompiledDefinition,
    ) -> Result<(), String> {
        let what = format!("sync schedule `{}={}`", self.entity, self.cron);
        let entity: Entity = self.entity.parse().map_err(|e| format!("{what}: {e}"))?;
        if def
            .entities
            .get(&entity)
            .is_none_or(|e| e.spec.list.is_none())
        {
            let listable: Vec<&str> = def
                .entities
                .iter()
                .filter(|(_, e)| e.spec.list.is_some())
                .map(|(e, _)| e.name())
                .collect();
            return Err(format!(
                "{what}: definition `{}` cannot list {entity} (it lists: {})",
                def.def.id,
                listable.join(", ")
            ));
        }
        crate::schedule::parse_cron(&self.cron)
            .map_err(|e| format!("{what}: {e}; write {}", crate::schedule::CRON_HINT))?;
        crate::schedule::parse_timezone(self.timezone.as_deref())
            .map_err(|e| format!("{what}: {e}"))?;
        Ok(())
    }

    /// The key its ticks are recorded under (with the connection as owner).
    pub fn tick_key(&self) -> String {
        format!(
            "{}:{}:{}:{}",
            self.entity,
            self.mode().name(),
            self.cron,
            self.timezone.as_deref().unwrap_or("UTC")
        )
    }
}

/// How a sync runs.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// Incremental or full.
    pub mode: Mode,
    /// Records per page asked for.
    pub page_size: usize,
    /// Subtracted from the cursor to cover clock skew.
    pub lookback: Duration,
    /// A full sync only looks at records changed in this window (None: all).
    pub history_window: Option<Duration>,
    /// How long a running sync holds its claim without progress.
    pub lease: Duration,
    /// Failed syncs of a connection's entity in a row after which
    /// `system.error` is emitted, once per streak (default
    /// `SLUICE_SYNC_ALERT_AFTER`, else 3).
    pub alert_after_failures: u32,
}

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            mode: Mode::Incremental,
            page_size: 500,
            lookback: Duration::from_secs(300),
            history_window: None,
            lease: Duration::from_secs(120),
            alert_after_failures: failure_alert_after(),
        }
    }
}

/// What a sync did.
#[derive(Debug, Clone, PartialEq, Serialize, schemars::JsonSchema)]
pub struct SyncReport {
    /// Sync id.
    pub sync_id: String,
    /// Connection.
    pub connection_id: String,
    /// Entity.
    pub entity: String,
    /// Mode.
    pub mode: Mode,
    /// Records new to the cache.
    pub added: u64,
    /// Records whose content changed.
    pub updated: u64,
    /// Records seen unchanged.
    pub unchanged: u64,
    /// Records marked deleted (full syncs).
    pub deleted: u64,
    /// Pages read.
    pub pages: u64,
    /// Whether it continued an interrupted sync.
    pub resumed: bool,
    /// Duration.
    pub duration_ms: u64,
    /// The cursor after the sync (RFC 3339).
    pub cursor: Option<String>,
}

/// Progress after each page.
#[derive(Debug, Clone, Serialize)]
pub struct Progress {
    /// Pages so far.
    pub pages: u64,
    /// Records so far.
    pub records: u64,
}

/// Why a sync did not complete.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// Another sync of the same connection and entity holds the claim.
    #[error(
        "a sync of {connection}/{entity} is already running (started {started}); wait for it or try again later"
    )]
    AlreadyRunning {
        /// Connection.
        connection: String,
        /// Entity.
        entity: String,
        /// When it started.
        started: String,
    },
    /// The system failed; the sync is `failed` and resumes from its checkpoint next time.
    #[error("sync failed after {pages} page(s): {source}")]
    Connector {
        /// Pages saved before the failure.
        pages: u64,
        /// The failure.
        source: ConnectorError,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Checkpoint {
    mode: Option<Mode>,
    page_cursor: Option<String>,
    modified_after_ms: Option<i64>,
    max_updated_ms: Option<i64>,
    added: u64,
    updated: u64,
    unchanged: u64,
    pages: u64,
    announced: usize,
}

/// A record as cached: its JSON once, hashed.
fn to_cached(record: &Value) -> CachedRecord {
    let remote_id = match &record["remote_id"] {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let data = record.to_string();
    CachedRecord {
        remote_id,
        hash: hex::encode(Sha256::digest(data.as_bytes())),
        data,
        remote_updated_at: ms(&record["remote_updated_at"]).unwrap_or(0),
    }
}

fn ms(v: &Value) -> Option<i64> {
    DateTime::parse_from_rfc3339(v.as_str()?)
        .ok()
        .map(|d| d.timestamp_millis())
}

fn rfc3339(ms: i64) -> Option<String> {
    DateTime::<Utc>::from_timestamp_millis(ms)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

/// Failed syncs in a row after which `system.error` is emitted
/// (`SLUICE_SYNC_ALERT_AFTER`, default 3).
/// A value that is not a positive whole number is named in one warning and
/// the default used.
fn failure_alert_after() -> u32 {
    static AFTER: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *AFTER.get_or_init(|| {
        let Ok(v) = std::env::var("SLUICE_SYNC_ALERT_AFTER") else {
            return 3;
        };
        match v.trim().parse::<u32>() {
            Ok(n) if n > 0 => n,
            _ => {
                tracing::warn!(
                    "SLUICE_SYNC_ALERT_AFTER=`{v}` is not a positive whole number of failed syncs; using 3"
                );
                3
            }
        }
    })
}

async fn emit(store: &Store, key: &str, kind: &str, connection: &str, data: Value) {
    if let Err(e) = crate::webhooks::emit(store, key, kind, Some(connection), data).await {
        tracing::warn!(error = %e, event = kind, "cannot emit a sync event");
    }
}

/// Runs one sync of `entity` from `connector` (connection `connection`).
pub async fn run(
    store: &Store,
    connector: &dyn Connector,
    connection: &str,
    entity: Entity,
    opts: &SyncOptions,
    progress: Option<&(dyn Fn(&Progress) + Send + Sync)>,
) -> Result<SyncReport, SyncError> {
    let started = Instant::now();
    let ename = entity.name();
    let before = store.sync_state(connection, ename).await?;
    let resume: Option<(String, Checkpoint)> = before.as_ref().and_then(|b| {
        if b.state != "failed" {
            return None;
        }
        let cp: Checkpoint = serde_json::from_str(b.checkpoint.as_deref()?).ok()?;
        (cp.mode == Some(opts.mode)).then(|| (b.sync_id.clone().unwrap_or_default(), cp))
    });
    let sync_id = resume
        .as_ref()
        .map(|(id, _)| id.clone())
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
    let lease_ms = opts.lease.as_millis() as i64;
    let Some(prior) = store
        .claim_sync(connection, ename, &sync_id, opts.mode.name(), lease_ms)
        .await?
    else {
        let s = store.sync_state(connection, ename).await?;
        return Err(SyncError::AlreadyRunning {
            connection: connection.into(),
            entity: ename.into(),
            started: s
                .and_then(|s| s.started_at)
                .and_then(rfc3339)
                .unwrap_or_else(|| "just now".into()),
        });
    };
    let resumed = resume.is_some();
    let mut cp = match resume {
        Some((_, cp)) => cp,
        None => {
            let modified_after_ms = match opts.mode {
                Mode::Incremental => prior
                    .cursor_ms
                    .map(|c| c - opts.lookback.as_millis() as i64),
                Mode::Full => opts.history_window.map(|w| now_ms() - w.as_millis() as i64),
            };
            Checkpoint {
                mode: Some(opts.mode),
                modified_after_ms,
                ..Checkpoint::default()
            }
        }
    };
    let modified_after = cp
        .modified_after_ms
        .and_then(DateTime::<Utc>::from_timestamp_millis);
    let mut announced = cp.announced;
    let mut deleted = 0u64;
    let query = |cursor: Option<String>| ListQuery {
        modified_after,
        limit: Some(opts.page_size),
        cursor,
        ..ListQuery::default()
    };
    let result: Result<(), ConnectorError> = async {
        let mut fetched = connector.list(entity, &query(cp.page_cursor.clone())).await;
        loop {
            let page = fetched?;
            for r in &page.records {
                let updated = ms(&r["remote_updated_at"]).unwrap_or(0);
                cp.max_updated_ms = Some(cp.max_updated_ms.map_or(updated, |m| m.max(updated)));
            }
            let next = page.next_cursor.clone();
            let mut after = cp.clone();
            after.page_cursor = next.clone();
            after.pages += 1;
            let announced_before = announced;
            let records = page.records;
            // This page is serialized and hashed (on a blocking thread) and
            // written (on the store's) by a task of its own, while the next
            // page is fetched, parsed and mapped here.
            let save = {
                let store = store.clone();
                let (connection, sync_id) = (connection.to_string(), sync_id.clone());
                tokio::spawn(async move {
                    let (records, cached) = tokio::task::spawn_blocking(move || {
                        let cached: Vec<CachedRecord> = records.iter().map(to_cached).collect();
                        (records, cached)
                    })
                    .await
                    .expect("hashing a page does not panic");
                    let saved = store
                        .save_sync_page(
                            &connection,
                            ename,
                            &sync_id,
                            &cached,
                            |ch| {
                                after.added += ch.created.len() as u64;
                                after.updated += ch.updated.len() as u64;
                                after.unchanged += ch.unchanged;
                                after.announced = (announced_before + ch.created.len() + ch.updated.len())
                                    .min(PER_RECORD_EVENTS);
                                serde_json::to_string(&after).expect("checkpoints serialize")
                            },
                            now_ms() + lease_ms,
                        )
                        .await;
                    (records, saved)
                })
            };
            let (saved, prefetched) = match &next {
                Some(cursor) => {
                    let q = query(Some(cursor.clone()));
                    let (fetched, saved) = tokio::join!(connector.list(entity, &q), save);
                    (saved, Some(fetched))
                }
                None => (save.await, None),
            };
            let cannot_save = |e: &dyn std::fmt::Display| {
                ConnectorError::new(
                    connection,
                    crate::connectors::ConnectorErrorKind::Permanent,
                    format!("cannot save the page: {e}"),
                )
            };
            // The task stops early only when the runtime shuts down (or a bug panics it).
            let (records, saved) = saved.map_err(|e| cannot_save(&e))?;
            let changes = saved.map_err(|e| cannot_save(&e))?;
            cp.page_cursor = next.clone();
            cp.pages += 1;
            cp.added += changes.created.len() as u64;
            cp.updated += changes.updated.len() as u64;
            cp.unchanged += changes.unchanged;
            // Record events: one per record first, then batched per page.
            for (kind, ids) in [("record.created", &changes.created), ("record.updated", &changes.updated)] {
                let mut rest = Vec::new();
                for id in ids {
                    if announced < PER_RECORD_EVENTS {
                        announced += 1;
                        let rec = records
                            .iter()
                            .find(|r| r["remote_id"].as_str() == Some(id.as_str()))
                            .cloned()
                            .unwrap_or(Value::Null);
                        emit(store, &format!("sync:{sync_id}:{kind}:{id}"), kind, connection,
                            json!({"connection_id": connection, "entity": ename, "remote_id": id, "record": rec})).await;
                    } else {
                        rest.push(id.clone());
                    }
                }
                if !rest.is_empty() {
                    emit(store, &format!("sync:{sync_id}:{kind}:page:{}", cp.pages), kind, connection,
                        json!({"connection_id": connection, "entity": ename, "batch": true, "remote_ids": rest})).await;
                }
            }
            cp.announced = announced;
            if let Some(p) = progress {
                p(&Progress {
                    pages: cp.pages,
                    records: cp.added + cp.updated + cp.unchanged,
                });
            }
            match prefetched {
                Some(f) => fetched = f,
                None => break,
            }
        }
        Ok(())
    }
    .await;
    let counts = |deleted: u64, cp: &Checkpoint| {
        json!({"added": cp.added, "updated": cp.updated, "unchanged": cp.unchanged, "deleted": deleted, "pages": cp.pages}).to_string()
    };
    let duration_ms = started.elapsed().as_millis() as u64;
    if let Err(e) = result {
        store
            .finish_sync(
                connection,
                ename,
                &sync_id,
                false,
                None,
                &counts(0, &cp),
                Some(&e.to_string()),
                duration_ms as i64,
            )
            .await?;
        emit(store, &format!("sync:{sync_id}:failed:{}", now_ms()), "sync.failed", connection,
            json!({"connection_id": connection, "entity": ename, "mode": opts.mode, "error": e.to_string(), "details": e.details(), "pages": cp.pages})).await;
        // A sync that keeps failing needs a person: `system.error` once per streak.
        let failures = store.sync_failures(connection, ename).await.unwrap_or(0);
        if failures == i64::from(opts.alert_after_failures.max(1)) {
            crate::webhooks::system_error(
                store,
                &format!("sync:{connection}:{ename}:failing:{sync_id}"),
                "sync",
                &format!("the {ename} sync of connection {connection} failed {failures} times in a row: {e}"),
                json!({"connection_id": connection, "entity": ename, "failures": failures, "details": e.details()}),
            )
            .await;
        }
        return Err(SyncError::Connector {
            pages: cp.pages,
            source: e,
        });
    }
    if opts.mode == Mode::Full {
        let ids = store
            .mark_unseen_deleted(connection, ename, &sync_id, cp.modified_after_ms)
            .await?;
        deleted = ids.len() as u64;
        for chunk in ids.chunks(500) {
            if announced < PER_RECORD_EVENTS && chunk.len() + announced <= PER_RECORD_EVENTS {
                for id in chunk {
                    announced += 1;
                    emit(
                        store,
                        &format!("sync:{sync_id}:record.deleted:{id}"),
                        "record.deleted",
                        connection,
                        json!({"connection_id": connection, "entity": ename, "remote_id": id}),
                    )
                    .await;
                }
            } else {
                emit(store, &format!("sync:{sync_id}:record.deleted:{}", chunk[0]), "record.deleted", connection,
                    json!({"connection_id": connection, "entity": ename, "batch": true, "remote_ids": chunk})).await;
            }
        }
    }
    let cursor_ms = match (prior.cursor_ms, cp.max_updated_ms) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    store
        .finish_sync(
            connection,
            ename,
            &sync_id,
            true,
            cursor_ms,
            &counts(deleted, &cp),
            None,
            duration_ms as i64,
        )
        .await?;
    let report = SyncReport {
        sync_id: sync_id.clone(),
        connection_id: connection.into(),
        entity: ename.into(),
        mode: opts.mode,
        added: cp.added,
        updated: cp.updated,
        unchanged: cp.unchanged,
        deleted,
        pages: cp.pages,
        resumed,
        duration_ms,
        cursor: cursor_ms.and_then(rfc3339),
    };
    emit(store, &format!("sync:{sync_id}:completed"), "sync.completed", connection,
        json!({"connection_id": connection, "entity": ename, "mode": opts.mode, "added": report.added,
               "updated": report.updated, "deleted": deleted, "duration_ms": duration_ms, "cursor": report.cursor})).await;
    Ok(report)
}
