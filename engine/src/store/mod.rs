//! Durable state: flows with revisions, runs, step results and the attempt
//! log, on SQLite (embedded default: one file, WAL) or PostgreSQL (many
//! processes sharing one database).
//!
//! One code path serves both backends through sqlx's `Any` driver: the SQL is
//! portable (`$1` parameters, `BIGINT` times in milliseconds, JSON as text)
//! and one set of migrations creates the same tables on both.

use std::str::FromStr;
use std::time::Duration;

use chrono::Utc;
use serde::Serialize;
use serde_json::Value;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Executor, Row};
use tokio::sync::{mpsc, oneshot};

mod archive;
mod connections;
mod console;
mod events;
mod plugins;
mod retention;
mod server;
mod syncs;
mod waits;
mod webhooks;

pub use archive::RawArchive;
pub use connections::{ConnectionRow, StatusEvent};
pub use console::{ConnectLink, SessionRow, StoredCredential};
pub use events::{EVENTS_CHANNEL, Effects, NewEvent, StoredEvent};
pub use plugins::PluginRecord;
pub use retention::{Prune, PruneReport};
pub use server::{FlowSettings, TokenRow};
pub use syncs::{CachedRecord, PageChanges, SyncStateRow};
pub use waits::Wait;
pub use webhooks::{
    AttemptEnd, AttemptLog, ClaimedMessage, Endpoint, MessageFilter, MessageRecord, MessageStatus,
    NewMessage, SECRET_PREFIX, Secret, SecretError,
};

/// The default database: a SQLite file in the working directory.
pub const DEFAULT_URL: &str = "sqlite://sluice.db";

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The URL's scheme is neither `sqlite` nor `postgres`.
    #[error("unsupported database URL `{0}`: use sqlite://PATH or postgres://USER@HOST/DB")]
    UnsupportedUrl(String),
    /// The database could not be reached or opened.
    #[error("cannot open database {url}: {source}")]
    Connect {
        /// The URL, without password.
        url: String,
        /// The driver's error.
        source: sqlx::Error,
    },
    /// Migrations failed.
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A query failed.
    #[error("database error: {0}")]
    Query(#[from] sqlx::Error),
    /// Stored JSON did not parse.
    #[error("corrupt stored JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// A write through the SQLite writer failed.
    #[error("database write failed: {0}")]
    Write(String),
}

/// Which database a store talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// SQLite.
    Sqlite,
    /// PostgreSQL.
    Postgres,
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// Status of a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum RunStatus {
    /// Waiting to start.
    Queued,
    /// Executing.
    Running,
    /// Every step succeeded or was skipped.
    Succeeded,
    /// A step failed.
    Failed,
    /// Cancelled (by a user or a concurrency limit).
    Cancelled,
    /// Parked by a `wait_for` step until a signal, an event or a timeout;
    /// holds no lease and no run slot.
    Waiting,
}

impl RunStatus {
    /// Name as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Queued => "queued",
            RunStatus::Running => "running",
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Cancelled => "cancelled",
            RunStatus::Waiting => "waiting",
        }
    }

    /// Whether the run is over.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            RunStatus::Succeeded | RunStatus::Failed | RunStatus::Cancelled
        )
    }
}

impl FromStr for RunStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "queued" => RunStatus::Queued,
            "running" => RunStatus::Running,
            "succeeded" => RunStatus::Succeeded,
            "failed" => RunStatus::Failed,
            "cancelled" => RunStatus::Cancelled,
            "waiting" => RunStatus::Waiting,
            other => return Err(format!("unknown run status `{other}`")),
        })
    }
}

/// Status of a step in a run.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, schemars::JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum StepStatus {
    /// Not started.
    Pending,
    /// Executing.
    Running,
    /// Done.
    Succeeded,
    /// Failed after its attempts.
    Failed,
    /// Skipped by `if`, or because a step it needs was skipped.
    Skipped,
    /// A `wait_for` step waiting for its signal, event or timeout.
    Waiting,
}

impl StepStatus {
    /// Name as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            StepStatus::Pending => "pending",
            StepStatus::Running => "running",
            StepStatus::Succeeded => "succeeded",
            StepStatus::Failed => "failed",
            StepStatus::Skipped => "skipped",
            StepStatus::Waiting => "waiting",
        }
    }
}

impl FromStr for StepStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "pending" => StepStatus::Pending,
            "running" => StepStatus::Running,
            "succeeded" => StepStatus::Succeeded,
            "failed" => StepStatus::Failed,
            "skipped" => StepStatus::Skipped,
            "waiting" => StepStatus::Waiting,
            other => return Err(format!("unknown step status `{other}`")),
        })
    }
}

/// A stored flow revision.
#[derive(Debug, Clone, Serialize)]
pub struct FlowRevision {
    /// Flow id.
    pub id: String,
    /// 1, 2, 3... per flow id.
    pub revision: i64,
    /// sha256 of the source.
    pub hash: String,
    /// YAML text.
    pub source: String,
    /// When stored (ms).
    pub created_at: i64,
}

/// A stored run.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct RunRecord {
    /// Run id (UUID v7).
    pub id: String,
    /// Flow id.
    pub flow_id: String,
    /// Flow revision run.
    pub flow_revision: i64,
    /// Status.
    pub status: RunStatus,
    /// Inputs after defaults.
    pub inputs: Value,
    /// Trigger data.
    pub trigger: Value,
    /// Output, when succeeded.
    pub output: Option<Value>,
    /// Error, when failed or cancelled.
    pub error: Option<Value>,
    /// Created (ms).
    pub created_at: i64,
    /// Started (ms).
    pub started_at: Option<i64>,
    /// Finished (ms).
    pub finished_at: Option<i64>,
    /// Process holding the run.
    pub lease_owner: Option<String>,
    /// Lease end (ms).
    pub lease_expires_at: Option<i64>,
    /// How many times the run was resumed.
    pub resumes: i64,
    /// The run whose `flow` step started this one.
    pub parent_run_id: Option<String>,
    /// That step's id (`step[index]` for a `for_each` item).
    pub parent_step: Option<String>,
}

/// A stored step result.
#[derive(Debug, Clone, PartialEq, Serialize, serde::Deserialize, schemars::JsonSchema)]
pub struct StepRecord {
    /// Step id.
    pub step_id: String,
    /// Status.
    pub status: StepStatus,
    /// Attempts made.
    pub attempts: i64,
    /// Input: the step's config with its expressions evaluated, as it went
    /// to the system (secrets redacted); a list of them, item by item, for
    /// a `for_each` step. Absent for steps that send nothing (`set`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input: Option<Value>,
    /// Output.
    pub output: Option<Value>,
    /// Error `{kind, message}` (secrets redacted).
    pub error: Option<Value>,
    /// Started (ms).
    pub started_at: Option<i64>,
    /// Finished (ms).
    pub finished_at: Option<i64>,
}

/// One logged attempt of a step with external effects.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct AttemptRecord {
    /// Step id.
    pub step_id: String,
    /// Idempotency key (`run:step` or `run:step:item`).
    pub idempotency_key: String,
    /// Attempt number within this execution.
    pub attempt: i64,
    /// Started (ms).
    pub started_at: i64,
}

/// A new run to insert.
#[derive(Debug, Clone)]
pub struct NewRun<'a> {
    /// Run id.
    pub id: &'a str,
    /// Flow id.
    pub flow_id: &'a str,
    /// Flow revision.
    pub flow_revision: i64,
    /// Inputs after defaults.
    pub inputs: &'a Value,
    /// Trigger data.
    pub trigger: &'a Value,
    /// Claim it at once for this owner (skips a separate claim).
    pub lease: Option<(&'a str, Duration)>,
    /// The run and step that started it (a `flow` step's child run).
    pub parent: Option<(&'a str, &'a str)>,
}

/// Filters for listing runs.
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    /// Only this flow.
    pub flow_id: Option<String>,
    /// Only this status.
    pub status: Option<RunStatus>,
    /// At most this many (newest first).
    pub limit: i64,
    /// Only runs older than this `(created_at, id)`: the cursor of the next page.
    pub before: Option<(i64, String)>,
    /// Only runs started by this kind of trigger (`manual`, `webhook`, ...).
    pub trigger: Option<String>,
    /// Only runs created at or after this time (ms).
    pub created_after: Option<i64>,
}

/// What [`Store::admit_run`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// The run is claimed and running.
    Admitted,
    /// The flow already has `limit` running runs.
    Full,
    /// The run is not queued (finished, or held by a live process).
    NotClaimable,
}

/// The durable store.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// SQLite only: the group-commit writer (see [`writer_thread`]).
    writer: Option<mpsc::Sender<WriteJob>>,
    /// Woken when messages enter the outbox, so in-process delivery workers start at once.
    outbox_signal: std::sync::Arc<tokio::sync::Notify>,
    /// Changes to webhook endpoints made through this store (see [`Store::endpoint_generation`]).
    endpoint_changes: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// State higher layers keep per store (see [`Store::attached`]).
    attached: std::sync::Arc<std::sync::Mutex<Vec<Attachment>>>,
    /// The URL it was opened with (PostgreSQL listeners open their own connection).
    url: std::sync::Arc<str>,
}

type Attachment = std::sync::Arc<dyn std::any::Any + Send + Sync>;

/// A bind parameter of a queued write.
#[derive(Debug, Clone)]
enum Arg {
    Text(Option<String>),
    Int(Option<i64>),
    Blob(Option<Vec<u8>>),
}

/// One statement of a write.
type Stmt = (&'static str, Vec<Arg>);

/// Statements committed together (atomically), waiting for the SQLite writer.
#[derive(Debug)]
struct WriteJob {
    stmts: Vec<Stmt>,
    done: oneshot::Sender<Result<Vec<u64>, String>>,
}

fn bind_all<'q>(
    mut q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    args: &[Arg],
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    for a in args {
        q = match a {
            Arg::Text(t) => q.bind(t.clone()),
            Arg::Int(i) => q.bind(*i),
            Arg::Blob(b) => q.bind(b.clone()),
        };
    }
    q
}

/// Most writes one SQLite transaction takes.
const MAX_BATCH: usize = 256;

/// The group-commit writer's own connection to a SQLite file (after the
/// migrations). `Err(None)` for an in-memory database, which the writer's
/// connection could not share.
fn open_writer(url: &str) -> Result<rusqlite::Connection, Option<String>> {
    let options =
        sqlx::sqlite::SqliteConnectOptions::from_str(url).map_err(|e| Some(e.to_string()))?;
    let path = options.get_filename();
    if url.contains(":memory:")
        || url.contains("mode=memory")
        || path.to_string_lossy().starts_with("file:sqlx-in-memory")
    {
        return Err(None);
    }
    let conn = rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(|e| Some(e.to_string()))?;
    conn.busy_timeout(Duration::from_secs(10))
        .and_then(|()| conn.pragma_update(None, "synchronous", "NORMAL"))
        .map_err(|e| Some(e.to_string()))?;
    conn.set_prepared_statement_cache_capacity(128);
    Ok(conn)
}

/// SQLite has one writer at a time, and connections waiting for the lock
/// back off by sleeping. So all hot-path writes go through one thread with
/// its own connection that takes every write waiting in its queue and
/// commits them in one transaction ("group commit") of cached prepared
/// statements, with no hop between threads per statement: a caller still
/// gets its answer only after its write is committed, and concurrent runs
/// share commits.
fn writer_thread(conn: rusqlite::Connection, mut rx: mpsc::Receiver<WriteJob>) {
    let mut batch: Vec<WriteJob> = Vec::with_capacity(MAX_BATCH);
    while let Some(job) = rx.blocking_recv() {
        batch.push(job);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) => batch.push(j),
                Err(_) => break,
            }
        }
        match run_batch_direct(&conn, &batch) {
            Ok(counts) => {
                for (job, n) in batch.drain(..).zip(counts) {
                    let _ = job.done.send(Ok(n));
                }
            }
            Err(_) if batch.len() > 1 => {
                // Attribute the failure: replay the writes one by one.
                for job in batch.drain(..) {
                    let r = run_batch_direct(&conn, std::slice::from_ref(&job))
                        .map(|mut v| v.pop().unwrap_or_default())
                        .map_err(|e| e.to_string());
                    let _ = job.done.send(r);
                }
            }
            Err(e) => {
                for job in batch.drain(..) {
                    let _ = job.done.send(Err(e.to_string()));
                }
            }
        }
    }
}

/// Runs the jobs' statements in one transaction (`BEGIN IMMEDIATE`, so it
/// waits for the write lock under the busy timeout); rolled back on error.
fn run_batch_direct(
    conn: &rusqlite::Connection,
    jobs: &[WriteJob],
) -> Result<Vec<Vec<u64>>, rusqlite::Error> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let result = (|| {
        let mut out = Vec::with_capacity(jobs.len());
        for job in jobs {
            let mut counts = Vec::with_capacity(job.stmts.len());
            for (sql, args) in &job.stmts {
                let mut stmt = conn.prepare_cached(sql)?;
                // `$n` is the n-th argument wherever it appears (as sqlx binds
                // it); an argument not given is NULL.
                for i in 1..=stmt.parameter_count() {
                    let n: usize = stmt
                        .parameter_name(i)
                        .and_then(|name| name.strip_prefix('$'))
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(i);
                    match args.get(n.wrapping_sub(1)) {
                        Some(Arg::Text(t)) => stmt.raw_bind_parameter(i, t)?,
                        Some(Arg::Int(v)) => stmt.raw_bind_parameter(i, v)?,
                        Some(Arg::Blob(v)) => stmt.raw_bind_parameter(i, v)?,
                        None => stmt.raw_bind_parameter(i, rusqlite::types::Null)?,
                    }
                }
                counts.push(stmt.raw_execute()? as u64);
            }
            out.push(counts);
        }
        Ok(out)
    })();
    match result {
        Ok(out) => match conn.execute_batch("COMMIT") {
            Ok(()) => Ok(out),
            Err(e) => {
                let _ = conn.execute_batch("ROLLBACK");
                Err(e)
            }
        },
        Err(e) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(e)
        }
    }
}

fn json_text(v: &Value) -> String {
    v.to_string()
}

fn parse_json(s: Option<String>) -> Result<Option<Value>, StoreError> {
    s.map(|t| serde_json::from_str(&t))
        .transpose()
        .map_err(StoreError::from)
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl Store {
    /// Opens (creating if needed) and migrates the database at `url`.
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let (backend, conn_url, max) = if let Some(path) = url.strip_prefix("sqlite://") {
            let sep = if path.contains('?') { '&' } else { '?' };
            let with_mode = if path.contains("mode=") {
                url.to_string()
            } else {
                format!("{url}{sep}mode=rwc")
            };
            (Backend::Sqlite, with_mode, 4)
        } else if url.starts_with("sqlite:") {
            (Backend::Sqlite, url.to_string(), 4)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            (Backend::Postgres, url.to_string(), 8)
        } else {
            return Err(StoreError::UnsupportedUrl(url.to_string()));
        };
        let mut options = AnyPoolOptions::new().max_connections(max);
        if backend == Backend::Sqlite {
            options = options.after_connect(|conn, _| {
                Box::pin(async move {
                    // auto_vacuum takes effect on a new file (before its first
                    // table): pruned runs then give their pages back.
                    conn.execute("PRAGMA busy_timeout = 10000; PRAGMA synchronous = NORMAL; PRAGMA auto_vacuum = INCREMENTAL;")
                        .await?;
                    // WAL is a property of the file, set once. Switching needs an
                    // exclusive lock that busy_timeout does not wait for, so
                    // processes opening a new file at once retry briefly.
                    for attempt in 0..100u64 {
                        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
                            .fetch_one(&mut *conn)
                            .await?;
                        if mode.eq_ignore_ascii_case("wal") {
                            break;
                        }
                        match conn.execute("PRAGMA journal_mode = WAL").await {
                            Ok(_) => {}
                            Err(e) if attempt < 99 && e.to_string().contains("locked") => {
                                tokio::time::sleep(Duration::from_millis(10 + attempt)).await;
                            }
                            Err(e) => return Err(e),
                        }
                    }
                    Ok(())
                })
            });
        }
        let pool = options
            .connect(&conn_url)
            .await
            .map_err(|source| StoreError::Connect {
                url: redact_password(url),
                source,
            })?;
        // Two processes opening a new SQLite file at once both try to apply
        // the migrations; the loser fails ("table already exists") after the
        // winner committed. Each migration is one transaction, so trying
        // again sees it applied and does nothing.
        let mut tries = 0;
        loop {
            match sqlx::migrate!("./migrations").run(&pool).await {
                Ok(()) => break,
                Err(e) if tries < 5 && backend == Backend::Sqlite => {
                    tries += 1;
                    tracing::debug!(error = %e, "migration raced another process; retrying");
                    tokio::time::sleep(Duration::from_millis(50 * tries)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        let writer = match backend {
            Backend::Sqlite => {
                let conn = open_writer(&conn_url).map_err(|e| match e {
                    None => StoreError::UnsupportedUrl(url.to_string()),
                    Some(e) => StoreError::Write(format!(
                        "cannot open the SQLite writer's connection to {}: {e}",
                        redact_password(url)
                    )),
                })?;
                let (tx, rx) = mpsc::channel(4 * MAX_BATCH);
                std::thread::Builder::new()
                    .name("sluice-sqlite-writer".into())
                    .spawn(move || writer_thread(conn, rx))
                    .expect("the SQLite writer thread starts");
                Some(tx)
            }
            Backend::Postgres => None,
        };
        Ok(Store {
            pool,
            backend,
            writer,
            outbox_signal: std::sync::Arc::new(tokio::sync::Notify::new()),
            endpoint_changes: Default::default(),
            attached: Default::default(),
            url: url.into(),
        })
    }

    /// A transaction that reads and then writes. On SQLite it takes the
    /// write lock up front (`BEGIN IMMEDIATE`), waiting for it under the
    /// busy timeout: a deferred transaction that read first and then writes
    /// after another connection committed fails at once with "database is
    /// locked" (SQLITE_BUSY_SNAPSHOT), which no timeout retries.
    pub(crate) async fn begin_write(
        &self,
    ) -> Result<sqlx::Transaction<'static, sqlx::Any>, StoreError> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        })
    }

    /// Runs a write: through the group-commit writer on SQLite, directly on PostgreSQL.
    async fn write(&self, sql: &'static str, args: Vec<Arg>) -> Result<u64, StoreError> {
        Ok(self
            .write_all(vec![(sql, args)])
            .await?
            .pop()
            .unwrap_or_default())
    }

    /// Runs statements in one transaction; returns each one's affected rows.
    async fn write_all(&self, stmts: Vec<Stmt>) -> Result<Vec<u64>, StoreError> {
        match &self.writer {
            Some(writer) => {
                let (done, answer) = oneshot::channel();
                writer
                    .send(WriteJob { stmts, done })
                    .await
                    .map_err(|_| StoreError::Write("the store's writer has stopped".into()))?;
                answer
                    .await
                    .map_err(|_| StoreError::Write("the store's writer has stopped".into()))?
                    .map_err(StoreError::Write)
            }
            None if stmts.len() == 1 => {
                let (sql, args) = &stmts[0];
                Ok(vec![
                    bind_all(sqlx::query(*sql), args)
                        .execute(&self.pool)
                        .await?
                        .rows_affected(),
                ])
            }
            None => {
                let mut tx = self.pool.begin().await?;
                let mut counts = Vec::with_capacity(stmts.len());
                for (sql, args) in &stmts {
                    counts.push(
                        bind_all(sqlx::query(*sql), args)
                            .execute(&mut *tx)
                            .await?
                            .rows_affected(),
                    );
                }
                tx.commit().await?;
                Ok(counts)
            }
        }
    }

    /// Which backend this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Stores a flow's source as a new revision, unless the latest revision
    /// has the same hash. Returns the revision number.
    pub async fn save_flow(&self, id: &str, source: &str, hash: &str) -> Result<i64, StoreError> {
        let latest = sqlx::query(
            "SELECT revision, hash FROM flows WHERE id = $1 ORDER BY revision DESC LIMIT 1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        let next = match latest {
            Some(row) => {
                let rev: i64 = row.try_get(0)?;
                let h: String = row.try_get(1)?;
                if h == hash {
                    return Ok(rev);
                }
                rev + 1
            }
            None => 1,
        };
        let inserted = sqlx::query("INSERT INTO flows (id, revision, hash, source, created_at) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (id, revision) DO NOTHING")
            .bind(id)
            .bind(next)
            .bind(hash)
            .bind(source)
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        if inserted.rows_affected() == 0 {
            // Another process stored a revision at the same moment; store ours after it.
            return Box::pin(self.save_flow(id, source, hash)).await;
        }
        Ok(next)
    }

    /// One revision of a flow.
    pub async fn flow_revision(
        &self,
        id: &str,
        revision: i64,
    ) -> Result<Option<FlowRevision>, StoreError> {
        let row = sqlx::query("SELECT id, revision, hash, source, created_at FROM flows WHERE id = $1 AND revision = $2")
            .bind(id)
            .bind(revision)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| flow_from_row(&r)).transpose()
    }

    /// The latest revision of a flow.
    pub async fn latest_flow_revision(&self, id: &str) -> Result<Option<FlowRevision>, StoreError> {
        let row = sqlx::query("SELECT id, revision, hash, source, created_at FROM flows WHERE id = $1 ORDER BY revision DESC LIMIT 1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| flow_from_row(&r)).transpose()
    }

    /// Moves a run to another revision of its flow (a resume on the latest
    /// revision, by the process holding the run's lease).
    pub async fn set_run_revision(
        &self,
        run_id: &str,
        owner: &str,
        revision: i64,
    ) -> Result<bool, StoreError> {
        let done =
            sqlx::query("UPDATE runs SET flow_revision = $1 WHERE id = $2 AND lease_owner = $3")
                .bind(revision)
                .bind(run_id)
                .bind(owner)
                .execute(&self.pool)
                .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Every revision of a flow, oldest first.
    pub async fn flow_revisions(&self, id: &str) -> Result<Vec<FlowRevision>, StoreError> {
        let rows = sqlx::query("SELECT id, revision, hash, source, created_at FROM flows WHERE id = $1 ORDER BY revision")
            .bind(id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(flow_from_row).collect()
    }

    /// A mark that changes whenever a flow revision is stored or a flow is
    /// enabled, disabled or deleted, by any process: a process compares it
    /// with the mark of its loaded flows to know they are current.
    pub async fn flows_mark(&self) -> Result<(i64, i64, i64), StoreError> {
        let row = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM flows), (SELECT COUNT(*) FROM flow_settings), \
             (SELECT CAST(COALESCE(SUM(updated_at % 1000000007), 0) AS BIGINT) FROM flow_settings)",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?))
    }

    /// Inserts a run: `running` and leased when `lease` is given, else `queued`.
    pub async fn create_run(&self, run: NewRun<'_>) -> Result<(), StoreError> {
        self.write(INSERT_RUN, new_run_args(&run)).await?;
        Ok(())
    }

    /// Inserts a run unless `key` (a request key: an `Idempotency-Key` or an
    /// inbound `webhook-id`) already started one in the last `window`; in
    /// that case nothing is inserted and the first run's id is returned.
    /// Key and run are written in one transaction.
    pub async fn create_run_once(
        &self,
        run: NewRun<'_>,
        key: &str,
        window: Duration,
    ) -> Result<Option<String>, StoreError> {
        let now = now_ms();
        let mut insert_args = new_run_args(&run);
        insert_args.push(Arg::Text(Some(key.to_string())));
        let counts = self
            .write_all(vec![
                (
                    "DELETE FROM request_keys WHERE request_key = $1 AND created_at < $2",
                    vec![
                        Arg::Text(Some(key.to_string())),
                        Arg::Int(Some(now - ms(window))),
                    ],
                ),
                (
                    "INSERT INTO request_keys (request_key, run_id, created_at) VALUES ($1, $2, $3) ON CONFLICT (request_key) DO NOTHING",
                    vec![
                        Arg::Text(Some(key.to_string())),
                        Arg::Text(Some(run.id.to_string())),
                        Arg::Int(Some(now)),
                    ],
                ),
                (INSERT_RUN_FOR_KEY, insert_args),
            ])
            .await?;
        if counts.get(2).copied().unwrap_or(0) == 1 {
            return Ok(None);
        }
        let row = sqlx::query("SELECT run_id FROM request_keys WHERE request_key = $1")
            .bind(key)
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(r) => Ok(Some(r.try_get(0)?)),
            None => Err(StoreError::Write(format!(
                "request key `{key}` was neither inserted nor found"
            ))),
        }
    }

    /// Takes the lease of a run that is queued, running under an expired
    /// lease, or (with `reopen`) failed or cancelled (its cancel request is
    /// then forgotten). Returns false when another process holds it.
    pub async fn claim_run(
        &self,
        run_id: &str,
        owner: &str,
        lease: Duration,
        reopen: bool,
    ) -> Result<bool, StoreError> {
        let now = now_ms();
        static SQL: std::sync::LazyLock<[&'static str; 2]> = std::sync::LazyLock::new(|| {
            ["('queued', 'running')", "('queued', 'running', 'failed', 'cancelled')"].map(
                |statuses| {
                    &*format!(
                        "UPDATE runs SET status = 'running', lease_owner = $1, lease_expires_at = $2, \
                         started_at = COALESCE(started_at, $3), finished_at = NULL, error = NULL, \
                         cancel_requested = CASE WHEN status = 'cancelled' THEN 0 ELSE cancel_requested END, \
                         resumes = resumes + CASE WHEN started_at IS NULL THEN 0 ELSE 1 END \
                         WHERE id = $4 AND status IN {statuses} \
                         AND (lease_owner IS NULL OR lease_owner = $1 OR lease_expires_at < $3)"
                    )
                    .leak()
                },
            )
        });
        let args = vec![
            Arg::Text(Some(owner.to_string())),
            Arg::Int(Some(now + ms(lease))),
            Arg::Int(Some(now)),
            Arg::Text(Some(run_id.to_string())),
        ];
        Ok(self.write(SQL[usize::from(reopen)], args).await? == 1)
    }

    /// Claims a run of a flow with a concurrency limit, atomically with the
    /// count of its running runs (those whose lease is live): the one
    /// admission for new, queued and resumed runs, across processes. On
    /// PostgreSQL a transaction-scoped advisory lock per flow serializes
    /// admissions (a plain `UPDATE ... WHERE (SELECT count(*)) < n` lets two
    /// transactions both see room); on SQLite the single statement holds the
    /// write lock.
    pub async fn admit_run(
        &self,
        run_id: &str,
        flow_id: &str,
        owner: &str,
        lease: Duration,
        limit: u32,
        resume: Option<bool>,
    ) -> Result<Admission, StoreError> {
        let now = now_ms();
        // A new run is claimed while queued (held by its waiting caller, or
        // by nobody). A resumed one (`Some(reopen)`) only once nobody holds
        // it: never a run this very process is executing or waiting for.
        const ADMIT_NEW: &str = "status = 'queued' AND (lease_owner IS NULL OR lease_owner = $1 OR lease_expires_at < $3)";
        const ADMIT_RESUMED: &str = "status IN ('queued', 'running') AND (lease_expires_at IS NULL OR lease_expires_at < $3)";
        const ADMIT_REOPENED: &str = "status IN ('queued', 'running', 'failed', 'cancelled') AND (lease_expires_at IS NULL OR lease_expires_at < $3)";
        static SQL: std::sync::LazyLock<[&'static str; 3]> = std::sync::LazyLock::new(|| {
            [ADMIT_NEW, ADMIT_RESUMED, ADMIT_REOPENED].map(|claimable| {
                &*format!(
                    "UPDATE runs SET status = 'running', lease_owner = $1, lease_expires_at = $2, \
                     started_at = COALESCE(started_at, $3), finished_at = NULL, error = NULL, \
                     cancel_requested = CASE WHEN status = 'cancelled' THEN 0 ELSE cancel_requested END, \
                     resumes = resumes + CASE WHEN started_at IS NULL THEN 0 ELSE 1 END \
                     WHERE id = $4 AND {claimable} \
                     AND (SELECT COUNT(*) FROM runs r WHERE r.flow_id = $5 AND r.status = 'running' \
                          AND r.id <> $4 AND r.lease_expires_at >= $3) < $6"
                )
                .leak()
            })
        });
        let sql = SQL[match resume {
            None => 0,
            Some(false) => 1,
            Some(true) => 2,
        }];
        let args = vec![
            Arg::Text(Some(owner.to_string())),
            Arg::Int(Some(now + ms(lease))),
            Arg::Int(Some(now)),
            Arg::Text(Some(run_id.to_string())),
            Arg::Text(Some(flow_id.to_string())),
            Arg::Int(Some(i64::from(limit))),
        ];
        let admitted = if self.backend == Backend::Postgres {
            let mut tx = self.pool.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1)::bigint)::text")
                .bind(flow_id)
                .fetch_one(&mut *tx)
                .await?;
            let done = bind_all(sqlx::query(sql), &args).execute(&mut *tx).await?;
            tx.commit().await?;
            done.rows_affected() == 1
        } else {
            // SQLite: the one statement holds the write lock, and goes
            // through the group-commit writer like the run's other writes.
            self.write(sql, args).await? == 1
        };
        if admitted {
            return Ok(Admission::Admitted);
        }
        // Full, or not ours to claim? The same conditions, in Rust.
        let row =
            sqlx::query("SELECT status, lease_owner, lease_expires_at FROM runs WHERE id = $1")
                .bind(run_id)
                .fetch_optional(&self.pool)
                .await?;
        let still = match row {
            None => false,
            Some(r) => {
                let status: String = r.try_get(0)?;
                let lease_owner: Option<String> = r.try_get(1)?;
                let expires: Option<i64> = r.try_get(2)?;
                let free = expires.is_none_or(|t| t < now);
                match resume {
                    None => {
                        status == "queued"
                            && (lease_owner.is_none()
                                || lease_owner.as_deref() == Some(owner)
                                || free)
                    }
                    Some(reopen) => {
                        (status == "queued"
                            || status == "running"
                            || (reopen && (status == "failed" || status == "cancelled")))
                            && free
                    }
                }
            }
        };
        Ok(if still {
            Admission::Full
        } else {
            Admission::NotClaimable
        })
    }

    /// Marks a queued run as waited for by `owner` until the lease ends, so
    /// no other process takes it for an orphan while its caller waits for a
    /// slot. Returns false if the run is no longer queued for this owner.
    pub async fn hold_queued(
        &self,
        run_id: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<bool, StoreError> {
        let now = now_ms();
        let done = sqlx::query(
            "UPDATE runs SET lease_owner = $1, lease_expires_at = $2 WHERE id = $3 AND status = 'queued' \
             AND (lease_owner IS NULL OR lease_owner = $1 OR lease_expires_at < $4)",
        )
        .bind(owner)
        .bind(now + ms(lease))
        .bind(run_id)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Extends a lease. Returns the run's `cancel_requested` flag, or `None`
    /// when the lease was lost.
    pub async fn renew_lease(
        &self,
        run_id: &str,
        owner: &str,
        lease: Duration,
    ) -> Result<Option<bool>, StoreError> {
        let done = self
            .write(
                "UPDATE runs SET lease_expires_at = $1 WHERE id = $2 AND lease_owner = $3 AND status = 'running'",
                vec![Arg::Int(Some(now_ms() + ms(lease))), Arg::Text(Some(run_id.to_string())), Arg::Text(Some(owner.to_string()))],
            )
            .await?;
        if done == 0 {
            return Ok(None);
        }
        let row = sqlx::query("SELECT cancel_requested FROM runs WHERE id = $1")
            .bind(run_id)
            .fetch_one(&self.pool)
            .await?;
        Ok(Some(row.try_get::<i64, _>(0)? != 0))
    }

    /// Ends a run and releases its lease.
    pub async fn finish_run(
        &self,
        run_id: &str,
        status: RunStatus,
        output: Option<&Value>,
        error: Option<&Value>,
    ) -> Result<(), StoreError> {
        self.write_all(vec![finish_run_stmt(run_id, status, output, error)])
            .await?;
        Ok(())
    }

    /// Asks the process running `run_id` to cancel it. A queued run is cancelled at once.
    pub async fn request_cancel(&self, run_id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE runs SET cancel_requested = 1 WHERE id = $1 AND status IN ('queued', 'running')")
            .bind(run_id)
            .execute(&self.pool)
            .await?;
        sqlx::query("UPDATE runs SET status = 'cancelled', finished_at = $1, error = $2 WHERE id = $3 AND status = 'queued'")
            .bind(now_ms())
            .bind(json_text(&serde_json::json!({"kind": "cancelled", "message": "cancelled before it started"})))
            .bind(run_id)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// A run by id.
    pub async fn get_run(&self, run_id: &str) -> Result<Option<RunRecord>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!("{RUN_COLUMNS} WHERE id = $1")))
            .bind(run_id)
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(r) => Ok(Some(self.run_from_row(&r).await?)),
            None => Ok(None),
        }
    }

    /// Runs, newest first.
    pub async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunRecord>, StoreError> {
        let limit = if filter.limit > 0 { filter.limit } else { 50 };
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{RUN_COLUMNS} WHERE ($1 = '' OR flow_id = $1) AND ($2 = '' OR status = $2) \
             AND ($4 = 0 OR created_at < $4 OR (created_at = $4 AND id < $5)) \
             AND ($6 = '' OR trigger_data LIKE $6 ESCAPE '!') AND created_at >= $7 \
             ORDER BY created_at DESC, id DESC LIMIT $3"
        )))
        .bind(filter.flow_id.clone().unwrap_or_default())
        .bind(filter.status.map(|s| s.as_str()).unwrap_or_default())
        .bind(limit)
        .bind(filter.before.as_ref().map(|b| b.0).unwrap_or(0))
        .bind(
            filter
                .before
                .as_ref()
                .map(|b| b.1.clone())
                .unwrap_or_default(),
        )
        // The trigger data is `{"type":"<kind>", ...}`: its kind is a prefix.
        .bind(
            filter
                .trigger
                .as_ref()
                .map(|t| {
                    let escaped = t.replace('!', "!!").replace('%', "!%").replace('_', "!_");
                    format!("{{\"type\":\"{escaped}\"%")
                })
                .unwrap_or_default(),
        )
        .bind(filter.created_after.unwrap_or(0))
        .fetch_all(&self.pool)
        .await?;
        self.runs_from_rows(&rows).await
    }

    /// The runs that `flow` steps of `run_id` started, oldest first.
    pub async fn child_runs(&self, run_id: &str) -> Result<Vec<RunRecord>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{RUN_COLUMNS} WHERE parent_run_id = $1 ORDER BY created_at, id"
        )))
        .bind(run_id)
        .fetch_all(&self.pool)
        .await?;
        self.runs_from_rows(&rows).await
    }

    /// The run that step `parent_step` of `run_id` started, if any.
    pub async fn child_run(
        &self,
        run_id: &str,
        parent_step: &str,
    ) -> Result<Option<String>, StoreError> {
        let row = sqlx::query(
            "SELECT id FROM runs WHERE parent_run_id = $1 AND parent_step = $2 ORDER BY created_at LIMIT 1",
        )
        .bind(run_id)
        .bind(parent_step)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| r.try_get(0).map_err(StoreError::from))
            .transpose()
    }

    /// Ids of running runs of a flow, oldest first.
    pub async fn active_runs(&self, flow_id: &str) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT id FROM runs WHERE flow_id = $1 AND status = 'running' AND lease_expires_at >= $2 ORDER BY created_at, id",
        )
        .bind(flow_id)
        .bind(now_ms())
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| r.try_get(0).map_err(StoreError::from))
            .collect()
    }

    /// Runs left `queued` or `running` whose lease has expired (their process
    /// died). A queued run with no lease yet counts after a few seconds: its
    /// creator holds it (see [`Store::hold_queued`]) as soon as it waits.
    pub async fn orphaned_runs(&self) -> Result<Vec<String>, StoreError> {
        let now = now_ms();
        let rows = sqlx::query("SELECT id FROM runs WHERE status IN ('queued', 'running') AND ((lease_expires_at IS NULL AND created_at < $1) OR lease_expires_at < $2) ORDER BY created_at")
            .bind(now - 5_000)
            .bind(now)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| r.try_get(0).map_err(StoreError::from))
            .collect()
    }

    /// Logs the start of an attempt of a step with external effects.
    pub async fn record_attempt(
        &self,
        run_id: &str,
        step_id: &str,
        key: &str,
        attempt: u32,
    ) -> Result<(), StoreError> {
        let attempt = AttemptRecord {
            step_id: step_id.to_string(),
            idempotency_key: key.to_string(),
            attempt: i64::from(attempt),
            started_at: now_ms(),
        };
        self.write_all(vec![attempt_stmt(run_id, &attempt)]).await?;
        Ok(())
    }

    /// Every logged attempt of a run.
    pub async fn attempts(&self, run_id: &str) -> Result<Vec<AttemptRecord>, StoreError> {
        let attempts = self.attempt_rows(run_id).await?;
        if !attempts.is_empty() {
            return Ok(attempts);
        }
        // An archived run's attempt log is in its archive.
        Ok(self
            .run_archive(run_id)
            .await?
            .map(|a| a.attempts)
            .unwrap_or_default())
    }

    /// The attempt log's rows of a run.
    async fn attempt_rows(&self, run_id: &str) -> Result<Vec<AttemptRecord>, StoreError> {
        let rows = sqlx::query("SELECT step_id, idempotency_key, attempt, started_at FROM step_attempts WHERE run_id = $1 ORDER BY started_at, id")
            .bind(run_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(AttemptRecord {
                    step_id: r.try_get(0)?,
                    idempotency_key: r.try_get(1)?,
                    attempt: r.try_get(2)?,
                    started_at: r.try_get(3)?,
                })
            })
            .collect()
    }

    /// Stores a step's result (insert or replace).
    pub async fn save_step(&self, run_id: &str, step: &StepRecord) -> Result<(), StoreError> {
        self.write_all(vec![save_step_stmt(run_id, step)]).await?;
        Ok(())
    }

    /// Forgets failed and skipped step results so a resumed run retries them.
    pub async fn reset_unfinished_steps(&self, run_id: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM step_runs WHERE run_id = $1 AND status IN ('failed', 'skipped', 'running', 'pending')")
            .bind(run_id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The stored step results of a run.
    pub async fn steps(&self, run_id: &str) -> Result<Vec<StepRecord>, StoreError> {
        let rows = sqlx::query("SELECT step_id, status, attempts, output, error, started_at, finished_at, input FROM step_runs WHERE run_id = $1 ORDER BY started_at, step_id")
            .bind(run_id)
            .fetch_all(&self.pool)
            .await?;
        let mut steps: Vec<StepRecord> = rows
            .iter()
            .map(|r| {
                let status: String = r.try_get(1)?;
                Ok(StepRecord {
                    step_id: r.try_get(0)?,
                    status: status
                        .parse()
                        .map_err(|e: String| StoreError::Query(sqlx::Error::Protocol(e)))?,
                    attempts: r.try_get(2)?,
                    input: parse_json(r.try_get(7)?)?,
                    output: parse_json(r.try_get(3)?)?,
                    error: parse_json(r.try_get(4)?)?,
                    started_at: r.try_get(5)?,
                    finished_at: r.try_get(6)?,
                })
            })
            .collect::<Result<_, StoreError>>()?;
        // An archived run's results are in its archive.
        let incomplete = steps.is_empty()
            || steps.iter().any(|s| {
                s.output.is_none() && matches!(s.status, StepStatus::Succeeded | StepStatus::Failed)
            });
        if incomplete && let Some(mut archived) = self.run_archive(run_id).await? {
            if steps.is_empty() {
                return Ok(archived.records);
            }
            for s in steps.iter_mut().filter(|s| s.output.is_none()) {
                s.output = archived.steps.remove(&s.step_id);
            }
        }
        Ok(steps)
    }

    /// The value of type `T` attached to this store (and its clones),
    /// created with `T::default()` on first use. Higher layers keep their
    /// per-store state here without the store knowing their types: the
    /// events module's wake-up and endpoint cache (see `crate::events`).
    pub fn attached<T: std::any::Any + Send + Sync + Default>(&self) -> std::sync::Arc<T> {
        let mut list = self.attached.lock().expect("attachment lock");
        for a in list.iter() {
            if let Ok(t) = a.clone().downcast::<T>() {
                return t;
            }
        }
        let t = std::sync::Arc::new(T::default());
        list.push(t.clone());
        t
    }

    /// The URL the store was opened with (with its password).
    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// Closes the pool.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

const INSERT_RUN: &str = "INSERT INTO runs (id, flow_id, flow_revision, status, inputs, trigger_data, created_at, started_at, lease_owner, lease_expires_at, parent_run_id, parent_step) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)";

/// Inserts the run only when the request key `$13` is this run's.
const INSERT_RUN_FOR_KEY: &str = "INSERT INTO runs (id, flow_id, flow_revision, status, inputs, trigger_data, created_at, started_at, lease_owner, lease_expires_at, parent_run_id, parent_step) \
     SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12 WHERE EXISTS (SELECT 1 FROM request_keys WHERE request_key = $13 AND run_id = $1)";

/// The bind parameters of [`INSERT_RUN`].
fn new_run_args(run: &NewRun<'_>) -> Vec<Arg> {
    let now = now_ms();
    let (status, owner, expires, started) = match run.lease {
        Some((owner, lease)) => (
            "running",
            Some(owner.to_string()),
            Some(now + ms(lease)),
            Some(now),
        ),
        None => ("queued", None, None, None),
    };
    vec![
        Arg::Text(Some(run.id.to_string())),
        Arg::Text(Some(run.flow_id.to_string())),
        Arg::Int(Some(run.flow_revision)),
        Arg::Text(Some(status.to_string())),
        Arg::Text(Some(json_text(run.inputs))),
        Arg::Text(Some(json_text(run.trigger))),
        Arg::Int(Some(now)),
        Arg::Int(started),
        Arg::Text(owner),
        Arg::Int(expires),
        Arg::Text(run.parent.map(|p| p.0.to_string())),
        Arg::Text(run.parent.map(|p| p.1.to_string())),
    ]
}

/// The update that ends a run and releases its lease.
fn finish_run_stmt(
    run_id: &str,
    status: RunStatus,
    output: Option<&Value>,
    error: Option<&Value>,
) -> Stmt {
    (
        "UPDATE runs SET status = $1, output = $2, error = $3, finished_at = $4, lease_owner = NULL, lease_expires_at = NULL WHERE id = $5",
        vec![
            Arg::Text(Some(status.as_str().to_string())),
            Arg::Text(output.map(json_text)),
            Arg::Text(error.map(json_text)),
            Arg::Int(Some(now_ms())),
            Arg::Text(Some(run_id.to_string())),
        ],
    )
}

/// The upsert of a step result.
fn save_step_stmt(run_id: &str, step: &StepRecord) -> Stmt {
    (
        "INSERT INTO step_runs (run_id, step_id, status, attempts, output, error, started_at, finished_at, input) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
         ON CONFLICT (run_id, step_id) DO UPDATE SET status = excluded.status, attempts = excluded.attempts, output = excluded.output, error = excluded.error, started_at = excluded.started_at, finished_at = excluded.finished_at, input = excluded.input",
        vec![
            Arg::Text(Some(run_id.to_string())),
            Arg::Text(Some(step.step_id.clone())),
            Arg::Text(Some(step.status.as_str().to_string())),
            Arg::Int(Some(step.attempts)),
            Arg::Text(step.output.as_ref().map(json_text)),
            Arg::Text(step.error.as_ref().map(json_text)),
            Arg::Int(step.started_at),
            Arg::Int(step.finished_at),
            Arg::Text(step.input.as_ref().map(json_text)),
        ],
    )
}

/// The statement that logs an attempt.
fn attempt_stmt(run_id: &str, attempt: &AttemptRecord) -> Stmt {
    (
        "INSERT INTO step_attempts (id, run_id, step_id, idempotency_key, attempt, started_at) VALUES ($1, $2, $3, $4, $5, $6)",
        vec![
            Arg::Text(Some(uuid::Uuid::now_v7().to_string())),
            Arg::Text(Some(run_id.to_string())),
            Arg::Text(Some(attempt.step_id.clone())),
            Arg::Text(Some(attempt.idempotency_key.clone())),
            Arg::Int(Some(attempt.attempt)),
            Arg::Int(Some(attempt.started_at)),
        ],
    )
}

const RUN_COLUMNS: &str = "SELECT id, flow_id, flow_revision, status, inputs, trigger_data, output, error, created_at, started_at, finished_at, lease_owner, lease_expires_at, resumes, parent_run_id, parent_step, archive, archive_base FROM runs";

fn run_from_row_sync(r: &AnyRow) -> Result<RunRecord, StoreError> {
    let status: String = r.try_get(3)?;
    Ok(RunRecord {
        id: r.try_get(0)?,
        flow_id: r.try_get(1)?,
        flow_revision: r.try_get(2)?,
        status: status
            .parse()
            .map_err(|e: String| StoreError::Query(sqlx::Error::Protocol(e)))?,
        inputs: serde_json::from_str(&r.try_get::<String, _>(4)?)?,
        trigger: serde_json::from_str(&r.try_get::<String, _>(5)?)?,
        output: parse_json(r.try_get(6)?)?,
        error: parse_json(r.try_get(7)?)?,
        created_at: r.try_get(8)?,
        started_at: r.try_get(9)?,
        finished_at: r.try_get(10)?,
        lease_owner: r.try_get(11)?,
        lease_expires_at: r.try_get(12)?,
        resumes: r.try_get(13)?,
        parent_run_id: r.try_get(14)?,
        parent_step: r.try_get(15)?,
    })
}

impl Store {
    async fn run_from_row(&self, r: &AnyRow) -> Result<RunRecord, StoreError> {
        let mut run = run_from_row_sync(r)?;
        // An archived run's output is in its archive.
        if run.output.is_none()
            && let Some(bytes) = r.try_get::<Option<Vec<u8>>, _>(16)?
        {
            let base: Option<String> = r.try_get(17)?;
            run.output = self.read_archive_output(&bytes, base.as_deref()).await?;
        }
        Ok(run)
    }

    async fn runs_from_rows(&self, rows: &[AnyRow]) -> Result<Vec<RunRecord>, StoreError> {
        let mut runs = Vec::with_capacity(rows.len());
        for r in rows {
            runs.push(self.run_from_row(r).await?);
        }
        Ok(runs)
    }
}

fn flow_from_row(r: &AnyRow) -> Result<FlowRevision, StoreError> {
    Ok(FlowRevision {
        id: r.try_get(0)?,
        revision: r.try_get(1)?,
        hash: r.try_get(2)?,
        source: r.try_get(3)?,
        created_at: r.try_get(4)?,
    })
}

/// The URL with any password replaced by `***`.
pub fn redact_password(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}
