//! The executor: runs a compiled flow durably on a [`Store`].
//!
//! Ready steps run concurrently as tokio tasks; each step's result is stored
//! before any step that needs it starts. A step whose `if` is false is
//! skipped, and so are the steps that need it. `for_each` runs items with
//! bounded concurrency and keeps outputs in item order. Failed attempts are
//! retried with backoff and jitter; each attempt has the step's `timeout`.
//!
//! Durability: a run is leased by the process executing it and the lease is
//! renewed while it runs. If the process dies, the lease expires and
//! [`Engine::resume`] (or [`Engine::resume_orphaned`]) continues the run:
//! completed steps are not run again; a step that was in flight runs again
//! with the same idempotency key (`run:step[:item]`), so connectors can
//! deduplicate. Starts of steps with external effects are logged in the
//! store's attempt log, which is how executions can be counted.

pub mod memory;
pub mod retry;
mod waits;

pub use waits::Signalled;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde::Serialize;
use serde_json::{Map, Value, json};
use tokio::sync::{Mutex, Notify, mpsc};
use tokio::task::JoinSet;
use tracing::{Instrument, info_span};

use crate::connectors::ConnectorRegistry;
use crate::expr::secrets::Secrets;
use crate::expr::{Scope, from_json};
use crate::flow::{self, Catalog, CompiledFlow, CompiledStep, FlowErrors, OnError, OnLimit};
use crate::steps::{CompiledKind, Effect, StepError, StepErrorKind, StepOutput, StepRuntime};
use crate::store::{
    NewRun, RunRecord, RunStatus, StepRecord, StepStatus, Store, StoreError, now_ms,
};

/// Default lease of a run: how long a dead process keeps others from resuming it.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

/// Run ends a slow [`Engine::finished_runs`] receiver may fall behind by
/// before it is told it lagged (and re-reads the store).
const FINISHED_BACKLOG: usize = 1024;

/// Progress of a run, for live display.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum RunEvent {
    /// The run was claimed and starts executing.
    Started {
        /// Run id.
        run_id: String,
        /// Steps already done (resumed run).
        already_done: usize,
        /// Total steps.
        total: usize,
    },
    /// A step attempt started.
    StepStarted {
        /// Step id.
        step_id: String,
    },
    /// A `wait_for` step parked the run.
    StepWaiting {
        /// Step id.
        step_id: String,
        /// What it waits for (`signal \`approve\``, `event \`po.shipped\``).
        waits_for: String,
    },
    /// A step finished.
    StepFinished {
        /// Step id.
        step_id: String,
        /// Final status.
        status: StepStatus,
        /// Wall time.
        elapsed_ms: u64,
        /// Attempts made.
        attempts: i64,
        /// Error message, if failed.
        error: Option<String>,
    },
}

/// The result of a run.
#[derive(Debug, Clone, Serialize)]
pub struct RunOutcome {
    /// Run id.
    pub run_id: String,
    /// Flow id.
    pub flow_id: String,
    /// Final status.
    pub status: RunStatus,
    /// Output, when succeeded (no secret reaches it: see `flow::check`).
    pub output: Option<Value>,
    /// Error `{step, kind, message}` (secrets redacted), when not succeeded.
    pub error: Option<Value>,
}

/// Why a run could not be started or resumed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// Inputs do not match the flow's declaration.
    #[error("invalid inputs: {0}")]
    Inputs(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No such run.
    #[error("no run with id `{0}`")]
    NotFound(String),
    /// Another process holds the run's lease.
    #[error(
        "run `{run_id}` is held by process {owner} until its lease expires in {remaining_ms} ms; try again then"
    )]
    Held {
        /// Run id.
        run_id: String,
        /// Lease owner.
        owner: String,
        /// Milliseconds left.
        remaining_ms: i64,
    },
    /// The flow already has as many running runs as its concurrency limit.
    #[error(
        "run `{run_id}` waits: flow `{flow_id}` already has {limit} running run(s), its concurrency limit; it is resumed when a slot frees"
    )]
    AtLimit {
        /// Run id.
        run_id: String,
        /// Flow id.
        flow_id: String,
        /// The limit.
        limit: u32,
    },
    /// The run already ended.
    #[error("run `{0}` already {1}; only failed, cancelled or interrupted runs can be resumed")]
    AlreadyFinished(String, &'static str),
    /// The revision a resume asked for changed steps the run already completed.
    #[error(
        "run `{run_id}` cannot resume on revision {revision} of flow `{flow_id}`: these steps already ran and differ in it: {}; resume it on its own revision (without `--revision latest`) or start a new run",
        steps.join(", ")
    )]
    StepsChanged {
        /// Run id.
        run_id: String,
        /// Flow id.
        flow_id: String,
        /// The revision asked for.
        revision: i64,
        /// Completed steps whose definition (or whose dependencies') differs,
        /// or that the revision no longer has.
        steps: Vec<String>,
    },
    /// The run does not wait for this signal (it ended, already received
    /// it, or waits for something else).
    #[error("{0}")]
    NotWaiting(String),
    /// A signal's data does not match the `wait_for` step's declaration.
    #[error("invalid signal data: {0}")]
    Signal(String),
    /// The stored flow revision is missing or no longer compiles.
    #[error("flow of run `{run_id}`: {message}")]
    Flow {
        /// Run id.
        run_id: String,
        /// What is wrong.
        message: String,
    },
}

/// Which revision of its flow a resumed run continues on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ResumeRevision {
    /// The revision it started on.
    #[default]
    Own,
    /// The flow's latest stored revision, provided the steps the run already
    /// completed are defined the same in it (else [`RunError::StepsChanged`]).
    Latest,
}

/// A run claimed for a resume by [`Engine::claim_resume`], ready for
/// [`Engine::execute_claimed`].
pub struct ClaimedRun {
    flow: Arc<CompiledFlow>,
    record: RunRecord,
}

impl ClaimedRun {
    /// The run's id.
    pub fn run_id(&self) -> &str {
        &self.record.id
    }

    /// The flow revision it continues on.
    pub fn revision(&self) -> i64 {
        self.record.flow_revision
    }
}

/// A run [`Engine::create`] stored (or the first run of its request key).
struct Created {
    run_id: String,
    revision: i64,
    inputs: Value,
    limited: bool,
    /// The run the request key already started; nothing was created.
    first: Option<String>,
    /// The run and step that started it (a child run).
    parent: Option<(String, String)>,
}

struct CancelSignal {
    flag: AtomicBool,
    notify: Notify,
}

impl CancelSignal {
    fn new() -> Self {
        CancelSignal {
            flag: AtomicBool::new(false),
            notify: Notify::new(),
        }
    }
    fn cancel(&self) {
        self.flag.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
        self.notify.notify_one();
    }
}

struct Inner {
    store: Store,
    connectors: std::sync::RwLock<Arc<ConnectorRegistry>>,
    secrets: Secrets,
    owner: String,
    lease: Duration,
    admission: Mutex<()>,
    active: std::sync::Mutex<HashMap<String, Arc<CancelSignal>>>,
    /// (flow id, source hash) → stored revision, so repeated runs skip a query.
    revisions: std::sync::Mutex<HashMap<(String, String), i64>>,
    /// WASM plugins, when enabled.
    plugins: Option<Arc<crate::plugins::PluginRegistry>>,
    /// Pinned plugin results by plugin name (`sluice test`): used instead of
    /// calling the plugin.
    plugin_outputs: Option<Arc<BTreeMap<String, Result<Value, String>>>>,
    /// Where `flow` steps and `on_failure` find flows by id.
    flows: std::sync::RwLock<Option<Arc<dyn FlowLibrary>>>,
    /// The id of every run that ends here, for waiters such as a
    /// `respond: output` hook (see [`Engine::finished_runs`]).
    finished: tokio::sync::broadcast::Sender<String>,
}

/// Where the engine finds the flows that `flow` steps and `on_failure` name
/// (the server's loaded flows; the flow files beside the one `sluice run`
/// runs). A flow it does not have is looked up in the store (its latest
/// revision), unless the server deleted it.
pub trait FlowLibrary: Send + Sync {
    /// The flow with this id, compiled, if there is one; an error when it
    /// exists but does not validate.
    fn flow(&self, id: &str) -> Result<Option<Arc<CompiledFlow>>, String>;
}

/// Runs flows durably. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

type Events = Option<mpsc::UnboundedSender<RunEvent>>;

fn emit(events: &Events, e: RunEvent) {
    if let Some(tx) = events {
        let _ = tx.send(e);
    }
}

impl Engine {
    /// An engine over a store and connections, with secrets for expressions.
    pub fn new(store: Store, connectors: ConnectorRegistry, secrets: Secrets) -> Engine {
        Engine {
            inner: Arc::new(Inner {
                store,
                connectors: std::sync::RwLock::new(Arc::new(connectors)),
                secrets,
                owner: uuid::Uuid::now_v7().to_string(),
                lease: DEFAULT_LEASE,
                admission: Mutex::new(()),
                active: std::sync::Mutex::new(HashMap::new()),
                revisions: std::sync::Mutex::new(HashMap::new()),
                plugins: None,
                plugin_outputs: None,
                flows: std::sync::RwLock::new(None),
                finished: tokio::sync::broadcast::channel(FINISHED_BACKLOG).0,
            }),
        }
    }

    /// Sets where `flow` steps and `on_failure` find flows by id.
    pub fn set_flows(&self, library: Arc<dyn FlowLibrary>) {
        *self.inner.flows.write().expect("flow library lock") = Some(library);
    }

    /// The flow `id` for a child or failure-handler run: from the flow
    /// library, else the latest stored revision (not of a flow the server
    /// deleted).
    async fn find_flow(&self, id: &str) -> Result<Option<Arc<CompiledFlow>>, String> {
        let library = self.inner.flows.read().expect("flow library lock").clone();
        if let Some(f) = library.map(|l| l.flow(id)).transpose()?.flatten() {
            return Ok(Some(f));
        }
        let store = &self.inner.store;
        let deleted = store
            .flow_settings()
            .await
            .map_err(|e| e.to_string())?
            .iter()
            .any(|s| s.id == id && s.deleted_at.is_some());
        let latest = store
            .flow_revisions(id)
            .await
            .map_err(|e| e.to_string())?
            .pop();
        let Some(latest) = latest.filter(|_| !deleted) else {
            return Ok(None);
        };
        let catalog = self
            .catalog_with_plugins()
            .await
            .map_err(|e| e.to_string())?;
        flow::compile(
            &format!("{id}@{}", latest.revision),
            &latest.source,
            &catalog,
        )
        .map(|c| Some(Arc::new(c)))
        .map_err(|e| format!("stored flow `{id}` does not validate now: {e}"))
    }

    /// How long a claim by this engine lasts (runs' leases; the server's
    /// event claims too).
    pub fn lease(&self) -> Duration {
        self.inner.lease
    }

    /// Sets the run lease (before any run starts).
    pub fn with_lease(self, lease: Duration) -> Engine {
        let inner = Arc::try_unwrap(self.inner)
            .unwrap_or_else(|_| panic!("with_lease is called before the engine is shared"));
        Engine {
            inner: Arc::new(Inner { lease, ..inner }),
        }
    }

    /// Enables `plugin` steps through `registry` (before the engine is shared).
    pub fn with_plugins(self, registry: Arc<crate::plugins::PluginRegistry>) -> Engine {
        let inner = Arc::try_unwrap(self.inner)
            .unwrap_or_else(|_| panic!("with_plugins is called before the engine is shared"));
        Engine {
            inner: Arc::new(Inner {
                plugins: Some(registry),
                ..inner
            }),
        }
    }

    /// Answers plugin steps from pinned results instead of calling plugins
    /// (before any run starts).
    pub fn with_plugin_outputs(self, outputs: BTreeMap<String, Result<Value, String>>) -> Engine {
        let inner = Arc::try_unwrap(self.inner).unwrap_or_else(|_| {
            panic!("with_plugin_outputs is called before the engine is shared")
        });
        Engine {
            inner: Arc::new(Inner {
                plugin_outputs: Some(Arc::new(outputs)),
                ..inner
            }),
        }
    }

    /// The plugin registry, if enabled.
    pub fn plugins(&self) -> Option<&Arc<crate::plugins::PluginRegistry>> {
        self.inner.plugins.as_ref()
    }

    /// Like [`Engine::catalog`], with the registered plugin names.
    pub async fn catalog_with_plugins(&self) -> Result<Catalog, RunError> {
        let mut c = self.catalog();
        if self.inner.plugins.is_some() {
            let records = self.inner.store.plugins(None).await?;
            let mut names: Vec<String> = records.iter().map(|p| p.name.clone()).collect();
            names.dedup();
            c.plugins = Some(names);
            for p in records {
                if let Ok(v) = semver::Version::parse(&p.version) {
                    c.plugin_versions.entry(p.name).or_default().push(v);
                }
            }
        }
        Ok(c)
    }

    /// The connections runs use now.
    pub fn connectors(&self) -> Arc<ConnectorRegistry> {
        self.inner
            .connectors
            .read()
            .expect("connector registry lock")
            .clone()
    }

    /// Adds or replaces a connection for the runs that start from now on.
    pub fn set_connection(&self, name: &str, connector: Arc<dyn crate::connectors::Connector>) {
        let mut guard = self
            .inner
            .connectors
            .write()
            .expect("connector registry lock");
        let mut next = ConnectorRegistry::clone(&guard);
        next.insert(name, connector);
        *guard = Arc::new(next);
    }

    /// The ids of runs this process ends from now on (succeeded, failed or
    /// cancelled), as they end: wakes a waiter without polling the store.
    /// Runs ended by another process are not announced here.
    pub fn finished_runs(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.inner.finished.subscribe()
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The secrets (for redacting what callers print).
    pub fn secrets(&self) -> &Secrets {
        &self.inner.secrets
    }

    /// What validation needs to know (connection names).
    pub fn catalog(&self) -> Catalog {
        let connectors = self.connectors();
        let operations = connectors
            .names()
            .into_iter()
            .filter_map(|name| {
                let c = connectors.get(&name)?;
                let ops = c
                    .entities()
                    .into_iter()
                    .map(|e| (e, c.operations(e)))
                    .collect();
                Some((name, ops))
            })
            .collect();
        Catalog {
            connections: connectors.names(),
            plugins: None,
            secrets: Some(self.inner.secrets.clone()),
            plugin_versions: BTreeMap::new(),
            operations,
            flows: None,
        }
    }

    /// Applies defaults and checks given inputs against the declaration.
    pub fn resolve_inputs(
        flow: &CompiledFlow,
        given: &Map<String, Value>,
    ) -> Result<Value, RunError> {
        crate::flow::model::check_values(&flow.flow.inputs, given, "input")
            .map_err(|problems| RunError::Inputs(problems.join("; ")))
    }

    /// Stores the flow (as a new revision if changed), starts a run with
    /// `inputs` and executes it to the end.
    pub async fn run(
        &self,
        flow: Arc<CompiledFlow>,
        inputs: &Map<String, Value>,
        trigger: Value,
        events: Events,
    ) -> Result<RunOutcome, RunError> {
        let created = self.create(&flow, inputs, &trigger, None, None).await?;
        self.execute_started(flow, created, trigger, events).await
    }

    /// Stores a new run (its flow revision too); with `key`, only when the
    /// key has not started one yet (`Err(first run id)` then).
    async fn create(
        &self,
        flow: &CompiledFlow,
        inputs: &Map<String, Value>,
        trigger: &Value,
        key: Option<(&str, Duration)>,
        parent: Option<(&str, &str)>,
    ) -> Result<Created, RunError> {
        let inputs = Self::resolve_inputs(flow, inputs)?;
        let revision = self.revision_of(flow).await?;
        let run_id = uuid::Uuid::now_v7().to_string();
        let limited = flow.flow.concurrency.is_some();
        let new = NewRun {
            id: &run_id,
            flow_id: flow.id(),
            flow_revision: revision,
            inputs: &inputs,
            trigger,
            lease: (!limited).then_some((self.inner.owner.as_str(), self.inner.lease)),
            parent,
        };
        let first = match key {
            Some((key, window)) => self.inner.store.create_run_once(new, key, window).await?,
            None => {
                self.inner.store.create_run(new).await?;
                None
            }
        };
        Ok(Created {
            run_id,
            revision,
            inputs,
            limited,
            first,
            parent: parent.map(|(r, s)| (r.to_string(), s.to_string())),
        })
    }

    /// Starts a run in the background and returns its id once the run is
    /// stored (durable): the server's way to start runs. With `key` (a
    /// request key and how long it holds), a second start with the same key
    /// starts nothing and returns the first run's id with `false`.
    /// `done` is called with the outcome when the run ends.
    pub async fn start(
        &self,
        flow: Arc<CompiledFlow>,
        inputs: &Map<String, Value>,
        trigger: Value,
        key: Option<(&str, Duration)>,
        events: Events,
        done: impl FnOnce(&Result<RunOutcome, RunError>) + Send + 'static,
    ) -> Result<(String, bool), RunError> {
        // Created and executed in a task of its own: a caller that goes away
        // (an HTTP client that disconnects while its run is being stored)
        // cannot leave a stored run that nothing executes.
        let (created_tx, created_rx) = tokio::sync::oneshot::channel();
        let engine = self.clone();
        let inputs = inputs.clone();
        let key = key.map(|(k, window)| (k.to_string(), window));
        tokio::spawn(async move {
            let key = key.as_ref().map(|(k, window)| (k.as_str(), *window));
            let created = match engine.create(&flow, &inputs, &trigger, key, None).await {
                Ok(created) => created,
                Err(e) => {
                    let _ = created_tx.send(Err(e));
                    return;
                }
            };
            if let Some(first) = created.first {
                let _ = created_tx.send(Ok((first, false)));
                return;
            }
            let _ = created_tx.send(Ok((created.run_id.clone(), true)));
            let result = engine.execute_started(flow, created, trigger, events).await;
            if let Err(e) = &result {
                tracing::error!(error = %e, "a started run could not be executed");
            }
            done(&result);
        });
        created_rx.await.map_err(|_| {
            RunError::Store(StoreError::Write(
                "the task starting the run ended without an answer".into(),
            ))
        })?
    }

    /// Admits (under the flow's concurrency limit) and executes a run just created.
    async fn execute_started(
        &self,
        flow: Arc<CompiledFlow>,
        created: Created,
        trigger: Value,
        events: Events,
    ) -> Result<RunOutcome, RunError> {
        let Created {
            run_id,
            revision,
            inputs,
            limited,
            parent,
            ..
        } = created;
        if limited && !self.admit(&flow, &run_id).await? {
            return self.outcome(&run_id).await;
        }
        let now = now_ms();
        let record = RunRecord {
            id: run_id,
            flow_id: flow.id().to_string(),
            flow_revision: revision,
            status: RunStatus::Running,
            inputs,
            trigger,
            output: None,
            error: None,
            created_at: now,
            started_at: Some(now),
            finished_at: None,
            lease_owner: Some(self.inner.owner.clone()),
            lease_expires_at: None,
            resumes: 0,
            parent_step: parent.as_ref().map(|p| p.1.clone()),
            parent_run_id: parent.map(|p| p.0),
        };
        self.execute(flow, record, true, events).await
    }

    /// The stored revision of a compiled flow, storing it if new.
    async fn revision_of(&self, flow: &CompiledFlow) -> Result<i64, RunError> {
        let key = (flow.id().to_string(), flow.hash.clone());
        if let Some(rev) = self
            .inner
            .revisions
            .lock()
            .expect("revision cache lock")
            .get(&key)
        {
            return Ok(*rev);
        }
        let rev = self
            .inner
            .store
            .save_flow(flow.id(), &flow.source, &flow.hash)
            .await?;
        self.inner
            .revisions
            .lock()
            .expect("revision cache lock")
            .insert(key, rev);
        Ok(rev)
    }

    /// Waits for a slot under the flow's concurrency limit and claims the run.
    /// Returns false when the run was skipped. The slot is taken by one
    /// atomic statement in the store ([`Store::admit_run`]), so the limit
    /// holds across processes and for resumed runs.
    async fn admit(&self, flow: &CompiledFlow, run_id: &str) -> Result<bool, RunError> {
        let Some(limit) = &flow.flow.concurrency else {
            return Ok(true);
        };
        let mut held_at: Option<Instant> = None;
        loop {
            // While it waits, the run is held by this process (a lease on
            // the queued run), so an orphan sweep elsewhere does not take it.
            if held_at.is_none_or(|t| t.elapsed() > self.inner.lease / 3) {
                self.inner
                    .store
                    .hold_queued(run_id, &self.inner.owner, self.inner.lease)
                    .await?;
                held_at = Some(Instant::now());
            }
            {
                let _guard = self.inner.admission.lock().await;
                match self
                    .inner
                    .store
                    .admit_run(
                        run_id,
                        flow.id(),
                        &self.inner.owner,
                        self.inner.lease,
                        limit.limit,
                        None,
                    )
                    .await?
                {
                    crate::store::Admission::Admitted => return Ok(true),
                    crate::store::Admission::NotClaimable => {
                        return Err(RunError::Held {
                            run_id: run_id.to_string(),
                            owner: "another process".into(),
                            remaining_ms: 0,
                        });
                    }
                    crate::store::Admission::Full => {}
                }
                let active = self.inner.store.active_runs(flow.id()).await?;
                match limit.on_limit {
                    OnLimit::Skip => {
                        let error = json!({"kind": "concurrency_limit", "message": format!("skipped: flow `{}` already has {} active run(s), its concurrency limit", flow.id(), active.len())});
                        self.inner
                            .store
                            .finish_run(run_id, RunStatus::Cancelled, None, Some(&error))
                            .await?;
                        let _ = self.inner.finished.send(run_id.to_string());
                        return Ok(false);
                    }
                    OnLimit::CancelOldest => {
                        if let Some(oldest) = active.first() {
                            self.cancel(oldest).await?;
                        }
                    }
                    OnLimit::Queue => {}
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Asks a run to stop. Returns false if it was not queued or running.
    pub async fn cancel(&self, run_id: &str) -> Result<bool, RunError> {
        if self.inner.store.cancel_waiting(run_id).await? {
            // A parked run has nothing executing: end it here, so it fires
            // `run.cancelled` and its children are cancelled too.
            if let Err(e) = Box::pin(self.resume(run_id, None)).await
                && !matches!(e, RunError::Held { .. })
            {
                return Err(e);
            }
            return Ok(true);
        }
        let requested = self.inner.store.request_cancel(run_id).await?;
        let signal = self
            .inner
            .active
            .lock()
            .expect("cancel map lock")
            .get(run_id)
            .cloned();
        if let Some(s) = signal {
            s.cancel();
        }
        Ok(requested)
    }

    /// A stored run, or `NotFound`.
    async fn load_run(&self, run_id: &str) -> Result<RunRecord, RunError> {
        self.inner
            .store
            .get_run(run_id)
            .await?
            .ok_or_else(|| RunError::NotFound(run_id.to_string()))
    }

    /// Continues a run that was interrupted (its process died and its lease
    /// expired), that failed (from the failed step on) or that was cancelled
    /// (from the steps it had not finished).
    pub async fn resume(&self, run_id: &str, events: Events) -> Result<RunOutcome, RunError> {
        self.resume_on(run_id, ResumeRevision::Own, events).await
    }

    /// The stored revision `revision` of a run's flow, compiled.
    async fn compile_revision(
        &self,
        run: &RunRecord,
        revision: Option<i64>,
    ) -> Result<(i64, CompiledFlow), RunError> {
        let stored = match revision {
            Some(r) => self.inner.store.flow_revision(&run.flow_id, r).await?,
            None => self.inner.store.latest_flow_revision(&run.flow_id).await?,
        }
        .ok_or_else(|| RunError::Flow {
            run_id: run.id.clone(),
            message: match revision {
                Some(r) => format!("revision {r} of flow `{}` is not in the store", run.flow_id),
                None => format!("flow `{}` has no revision in the store", run.flow_id),
            },
        })?;
        let compiled = flow::compile(
            &format!("{}@{}", run.flow_id, stored.revision),
            &stored.source,
            &self.catalog(),
        )
        .map_err(|e: FlowErrors| RunError::Flow {
            run_id: run.id.clone(),
            message: e.to_string(),
        })?;
        Ok((stored.revision, compiled))
    }

    /// The run's completed steps (those a resume keeps: succeeded ones, and
    /// of an interrupted run also skipped ones and failed ones that let the
    /// run continue) that `latest` defines differently from `own`, or not at all.
    async fn changed_completed_steps(
        &self,
        run: &RunRecord,
        own: &CompiledFlow,
        latest: &CompiledFlow,
    ) -> Result<Vec<String>, RunError> {
        let definition = |f: &CompiledFlow, id: &str| {
            f.flow.steps.iter().find(|s| s.id == id).map(|s| {
                let mut v = serde_json::to_value(s).unwrap_or(Value::Null);
                // A description is not part of what a step does.
                if let Some(o) = v.as_object_mut() {
                    o.remove("description");
                }
                v
            })
        };
        let completed: Vec<String> = self
            .inner
            .store
            .steps(&run.id)
            .await?
            .into_iter()
            .filter(|r| match r.status {
                StepStatus::Succeeded => true,
                // A failed or cancelled run's resume forgets these and runs them again.
                StepStatus::Skipped | StepStatus::Failed => {
                    !matches!(run.status, RunStatus::Failed | RunStatus::Cancelled)
                }
                _ => false,
            })
            .map(|r| r.step_id)
            .collect();
        // A completed step's dependencies completed before it, so comparing
        // every completed step compares each one's dependencies too.
        Ok(completed
            .into_iter()
            .filter(|id| {
                let old = definition(own, id);
                old.is_none() || old != definition(latest, id)
            })
            .collect())
    }

    /// [`Engine::resume`] on the run's own revision or its flow's latest one.
    pub async fn resume_on(
        &self,
        run_id: &str,
        on: ResumeRevision,
        events: Events,
    ) -> Result<RunOutcome, RunError> {
        let claimed = self.claim_resume(run_id, on).await?;
        self.execute_claimed(claimed, events).await
    }

    /// Executes a run [`Engine::claim_resume`] claimed, to its end.
    pub async fn execute_claimed(
        &self,
        claimed: ClaimedRun,
        events: Events,
    ) -> Result<RunOutcome, RunError> {
        self.execute(claimed.flow, claimed.record, false, events)
            .await
    }

    /// The first half of a resume: checks the run can resume (on `on`),
    /// claims it (its lease, and a slot under the flow's concurrency limit)
    /// and prepares its steps; every refusal is known when this returns.
    pub async fn claim_resume(
        &self,
        run_id: &str,
        on: ResumeRevision,
    ) -> Result<ClaimedRun, RunError> {
        let run = self.load_run(run_id).await?;
        if run.status == RunStatus::Waiting {
            let waits: Vec<String> = self
                .inner
                .store
                .waits(run_id)
                .await?
                .iter()
                .map(|w| format!("{} (step `{}`)", w.spec.describe(), w.step_id))
                .collect();
            return Err(RunError::NotWaiting(format!(
                "run `{run_id}` is waiting for {}; it goes on by itself once that arrives (`sluice runs signal` sends a signal), or cancel it",
                waits.join(" and ")
            )));
        }
        if run.status == RunStatus::Succeeded {
            return Err(RunError::AlreadyFinished(
                run_id.to_string(),
                run.status.as_str(),
            ));
        }
        let (revision, compiled) = match on {
            ResumeRevision::Own => self.compile_revision(&run, Some(run.flow_revision)).await?,
            ResumeRevision::Latest => {
                let (latest, compiled) = self.compile_revision(&run, None).await?;
                if latest != run.flow_revision {
                    let (_, own) = self.compile_revision(&run, Some(run.flow_revision)).await?;
                    let steps = self.changed_completed_steps(&run, &own, &compiled).await?;
                    if !steps.is_empty() {
                        return Err(RunError::StepsChanged {
                            run_id: run_id.to_string(),
                            flow_id: run.flow_id.clone(),
                            revision: latest,
                            steps,
                        });
                    }
                }
                (latest, compiled)
            }
        };
        let reopen = matches!(run.status, RunStatus::Failed | RunStatus::Cancelled);
        let claimed = if let Some(limit) = &compiled.flow.concurrency {
            // A resumed run takes a slot like a new one; when the flow is at
            // its limit the run stays where it is, for a later sweep.
            match self
                .inner
                .store
                .admit_run(
                    run_id,
                    &run.flow_id,
                    &self.inner.owner,
                    self.inner.lease,
                    limit.limit,
                    Some(reopen),
                )
                .await?
            {
                crate::store::Admission::Admitted => true,
                crate::store::Admission::NotClaimable => false,
                crate::store::Admission::Full => {
                    return Err(RunError::AtLimit {
                        run_id: run_id.to_string(),
                        flow_id: run.flow_id.clone(),
                        limit: limit.limit,
                    });
                }
            }
        } else {
            self.inner
                .store
                .claim_run(run_id, &self.inner.owner, self.inner.lease, reopen)
                .await?
        };
        if !claimed {
            return Err(RunError::Held {
                run_id: run_id.to_string(),
                owner: run.lease_owner.unwrap_or_default(),
                remaining_ms: run.lease_expires_at.map(|t| t - now_ms()).unwrap_or(0),
            });
        }
        if revision != run.flow_revision
            && !self
                .inner
                .store
                .set_run_revision(run_id, &self.inner.owner, revision)
                .await?
        {
            return Err(RunError::Held {
                run_id: run_id.to_string(),
                owner: "another process".into(),
                remaining_ms: 0,
            });
        }
        if reopen {
            // Only once the run is ours: its archived step results back in
            // rows, then forget its failed and skipped steps.
            self.inner.store.unarchive(run_id).await?;
            self.inner.store.reset_unfinished_steps(run_id).await?;
        }
        let record = self.load_run(run_id).await?;
        Ok(ClaimedRun {
            flow: Arc::new(compiled),
            record,
        })
    }

    /// Resumes every run whose process died (lease expired).
    pub async fn resume_orphaned(
        &self,
        events: Events,
    ) -> Result<Vec<Result<RunOutcome, RunError>>, RunError> {
        let ids = self.inner.store.orphaned_runs().await?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            // A child run is resumed by its parent's `flow` step, which
            // may have finished it by now.
            if self
                .inner
                .store
                .get_run(&id)
                .await?
                .is_some_and(|r| r.status.is_final())
            {
                continue;
            }
            out.push(self.resume(&id, events.clone()).await);
        }
        Ok(out)
    }

    async fn outcome(&self, run_id: &str) -> Result<RunOutcome, RunError> {
        let r = self.load_run(run_id).await?;
        Ok(RunOutcome {
            run_id: r.id,
            flow_id: r.flow_id,
            status: r.status,
            output: r.output,
            error: r.error,
        })
    }

    /// Executes a claimed run to its end.
    /// `fresh`: the run was just created here, so nothing of it is stored yet.
    async fn execute(
        &self,
        flow: Arc<CompiledFlow>,
        run: RunRecord,
        fresh: bool,
        events: Events,
    ) -> Result<RunOutcome, RunError> {
        let span = info_span!("run", run_id = %run.id, flow_id = %flow.id());
        self.execute_inner(flow, run, fresh, events)
            .instrument(span)
            .await
    }

    async fn execute_inner(
        &self,
        flow: Arc<CompiledFlow>,
        run: RunRecord,
        fresh: bool,
        events: Events,
    ) -> Result<RunOutcome, RunError> {
        let inner = &self.inner;
        let run_id = run.id.clone();
        let cancel = Arc::new(CancelSignal::new());
        inner
            .active
            .lock()
            .expect("cancel map lock")
            .insert(run_id.clone(), cancel.clone());
        let lost = Arc::new(AtomicBool::new(false));
        let keeper = tokio::spawn(keep_lease(
            inner.store.clone(),
            run_id.clone(),
            inner.owner.clone(),
            inner.lease,
            cancel.clone(),
            lost.clone(),
        ));
        let mut fresh = fresh;
        // Every step result of the run, for its compact archive at the end.
        let mut records = Vec::new();
        let result = loop {
            records.clear();
            let result = self
                .drive(&flow, &run, fresh, &cancel, &events, &mut records)
                .await;
            if !matches!(result, Ok((RunStatus::Waiting, ..))) || lost.load(Ordering::SeqCst) {
                break result;
            }
            // Parked: the run lets go of its lease (and slot) while a wait
            // is open. When every wait was resolved while it parked, it
            // goes on at once.
            match inner.store.park_run(&run_id, &inner.owner).await {
                Ok(true) => break result,
                Ok(false) => fresh = false,
                Err(e) => break Err(e.into()),
            }
        };
        keeper.abort();
        inner
            .active
            .lock()
            .expect("cancel map lock")
            .remove(&run_id);
        let (status, output, error) = result?;
        if lost.load(Ordering::SeqCst) {
            return Err(RunError::Held {
                run_id,
                owner: "another process".into(),
                remaining_ms: 0,
            });
        }
        if status == RunStatus::Waiting {
            tracing::info!("run waits");
            return Ok(RunOutcome {
                run_id,
                flow_id: flow.id().to_string(),
                status,
                output: None,
                error: None,
            });
        }
        // An ended run waits for nothing (a wait left open by a failing
        // branch must not queue it again).
        inner.store.clear_waits(&run_id).await?;
        // Outputs are data: no secret reaches them (validation allows
        // secrets only where credentials go, and a plugin's output is
        // redacted of the secrets its config holds), and redacting by value
        // would corrupt records whose fields equal a credential (a buyer who
        // is the connection's user). Errors may quote a system's answer, so
        // they are still redacted.
        let error = error.map(|e| inner.secrets.redact_json(&e));
        // The failure handler's run is stored before the run ends, so a
        // crash in between starts it when the run is resumed (once: its
        // request key is the run's).
        let handler = match status {
            RunStatus::Failed => {
                self.create_failure_handler(&flow, &run, error.as_ref())
                    .await
            }
            _ => None,
        };
        // `run.succeeded` / `run.failed` / `run.cancelled` commit with the run's end.
        let fired = self.run_event(&flow, &run, status, error.as_ref()).await;
        inner
            .store
            .finish_run_with_effects(
                &run_id,
                &run.flow_id,
                status,
                output.as_ref(),
                error.as_ref(),
                &fired,
                &records,
            )
            .await?;
        crate::events::committed(&inner.store, &fired);
        // Nobody listening is the usual case, and not an error.
        let _ = inner.finished.send(run_id.clone());
        if let Some((handler_flow, created, trigger)) = handler {
            let id = created.run_id.clone();
            match Box::pin(self.execute_started(handler_flow, created, trigger, None)).await {
                Ok(o) => {
                    tracing::info!(handler_run_id = %id, status = o.status.as_str(), "on_failure flow ran")
                }
                Err(e) => {
                    tracing::warn!(handler_run_id = %id, error = %e, "on_failure flow did not run")
                }
            }
        }
        match status {
            RunStatus::Succeeded => tracing::info!("run succeeded"),
            _ => {
                tracing::warn!(status = status.as_str(), error = %error.as_ref().map(|e| e.to_string()).unwrap_or_default(), "run did not succeed")
            }
        }
        Ok(RunOutcome {
            run_id,
            flow_id: flow.id().to_string(),
            status,
            output,
            error,
        })
    }

    /// What a finished run fires: `run.succeeded`, `run.failed` or
    /// `run.cancelled`, to the endpoints subscribed to it and the `event`
    /// triggers listening (a failure handler). A run started by a run event
    /// does not announce itself, so a handler that fails cannot trigger
    /// itself forever.
    async fn run_event(
        &self,
        flow: &CompiledFlow,
        run: &RunRecord,
        status: RunStatus,
        error: Option<&Value>,
    ) -> crate::store::Effects {
        let started_by_run_event = run.trigger["type"] == "event"
            && run.trigger["event"]["type"]
                .as_str()
                .is_some_and(|t| t.starts_with("run."));
        if started_by_run_event {
            return Default::default();
        }
        let event_type = match status {
            RunStatus::Succeeded => "run.succeeded",
            RunStatus::Failed => "run.failed",
            RunStatus::Cancelled => "run.cancelled",
            _ => return Default::default(),
        };
        let store = &self.inner.store;
        let endpoints = match crate::events::endpoints_recent(store).await {
            Ok(endpoints) => endpoints,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read webhook endpoints for {event_type}");
                Default::default()
            }
        };
        let wanted = crate::events::logged(store, event_type)
            || endpoints
                .iter()
                .any(|e| e.enabled && e.accepts(event_type, None));
        if !wanted {
            return Default::default(); // the hot path: nobody listens
        }
        let data = run_event_data(flow, run, status, error);
        let env = crate::events::Envelope::new(
            &format!("run:{}:{event_type}", run.id),
            event_type,
            None,
            data,
        );
        crate::events::effects(store, &endpoints, &[(env, None)])
    }

    /// Cancels the children of a cancelled run that are still going, and
    /// waits (up to a lease) until they have ended, so a cancelled parent
    /// leaves no child running.
    async fn cancel_children(&self, run_id: &str) -> Result<(), RunError> {
        let store = &self.inner.store;
        let going: Vec<String> = store
            .child_runs(run_id)
            .await?
            .into_iter()
            .filter(|c| !c.status.is_final())
            .map(|c| c.id)
            .collect();
        for id in &going {
            self.cancel(id).await?;
        }
        let deadline = Instant::now() + self.inner.lease;
        for id in &going {
            while Instant::now() < deadline
                && store
                    .get_run(id)
                    .await?
                    .is_some_and(|r| !r.status.is_final())
            {
                tokio::time::sleep(Duration::from_millis(25)).await;
            }
        }
        Ok(())
    }

    /// Stores the run of the flow's `on_failure` handler for a failed run
    /// (once per run: request key `on_failure:<run id>`), with the
    /// `run.failed` data as its inputs. Nothing when the flow has no handler,
    /// when the run is itself a handler's (a failing handler does not start
    /// handlers), or when it already started one.
    async fn create_failure_handler(
        &self,
        flow: &CompiledFlow,
        run: &RunRecord,
        error: Option<&Value>,
    ) -> Option<(Arc<CompiledFlow>, Created, Value)> {
        let handler_id = flow.flow.on_failure.as_ref()?.flow_id();
        if run.trigger["type"] == "on_failure" {
            return None;
        }
        let handler = match self.find_flow(handler_id).await {
            Ok(Some(f)) => f,
            Ok(None) => {
                tracing::warn!(
                    on_failure = handler_id,
                    "the on_failure flow is unknown; not run"
                );
                return None;
            }
            Err(e) => {
                tracing::warn!(on_failure = handler_id, error = %e, "the on_failure flow could not be loaded");
                return None;
            }
        };
        let data = run_event_data(flow, run, RunStatus::Failed, error);
        // The handler gets the data it declares as inputs (nulls left out,
        // so a missing failing step does not break a string input).
        let inputs: Map<String, Value> = data
            .as_object()
            .into_iter()
            .flatten()
            .filter(|(k, v)| !v.is_null() && handler.flow.inputs.contains_key(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let trigger = json!({"type": "on_failure", "event": {"type": "run.failed", "data": data}});
        let key = format!("on_failure:{}", run.id);
        match self
            .create(
                &handler,
                &inputs,
                &trigger,
                Some((&key, CHILD_KEY_WINDOW)),
                None,
            )
            .await
        {
            Ok(created) if created.first.is_none() => Some((handler, created, trigger)),
            Ok(_) => None, // started before this run was resumed
            Err(e) => {
                tracing::warn!(on_failure = handler_id, error = %e, "the on_failure flow could not start");
                None
            }
        }
    }

    /// The scheduling loop. Returns the run's final status, output and error.
    async fn drive(
        &self,
        flow: &Arc<CompiledFlow>,
        run: &RunRecord,
        fresh: bool,
        cancel: &Arc<CancelSignal>,
        events: &Events,
        records: &mut Vec<StepRecord>,
    ) -> Result<(RunStatus, Option<Value>, Option<Value>), RunError> {
        let inner = &self.inner;
        let n = flow.steps.len();
        let mut status: Vec<Option<StepStatus>> = vec![None; n];
        let mut scope = Scope {
            inputs: from_json(&run.inputs),
            trigger: from_json(&run.trigger),
            steps: BTreeMap::new(),
            secrets: inner.secrets.to_value(),
            now: chrono::DateTime::from_timestamp_millis(run.created_at)
                .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        };
        let mut outputs: Vec<Value> = vec![Value::Null; n];
        let stored = if fresh {
            Vec::new() // a run this process just created has no stored steps
        } else {
            inner.store.steps(&run.id).await?
        };
        // A parked `wait_for` step (its wait not yet resolved) is neither
        // run again nor finished: its dependents wait with it.
        let mut parked = vec![false; n];
        let mut failure: Option<Value> = None;
        records.extend(stored.iter().cloned());
        for rec in stored {
            let Some(i) = flow.step_index(&rec.step_id) else {
                continue;
            };
            if rec.status == StepStatus::Waiting {
                parked[i] = true;
                continue;
            }
            // A step that failed while the run was parked (a `wait_for`
            // past its deadline) fails the run as if it had just failed.
            if rec.status == StepStatus::Failed
                && flow.steps[i].on_error == OnError::Fail
                && failure.is_none()
            {
                let mut err = rec.error.clone().unwrap_or_else(|| json!({}));
                if let Some(o) = err.as_object_mut() {
                    o.insert("step".into(), json!(rec.step_id));
                }
                failure = Some(err);
            }
            if matches!(
                rec.status,
                StepStatus::Succeeded | StepStatus::Skipped | StepStatus::Failed
            ) {
                status[i] = Some(rec.status);
                outputs[i] = rec.output.clone().unwrap_or(Value::Null);
                scope.steps.insert(rec.step_id.clone(), step_value(&rec));
            }
        }
        emit(
            events,
            RunEvent::Started {
                run_id: run.id.clone(),
                already_done: status.iter().filter(|s| s.is_some()).count(),
                total: n,
            },
        );

        let children = Arc::new(ChildLauncher {
            engine: self.clone(),
            run_id: run.id.clone(),
            flow_id: flow.id().to_string(),
            chain: call_chain(flow.id(), &run.trigger),
        });
        let mut running = vec![false; n];
        let mut tasks: JoinSet<(usize, StepRecord, Option<Value>, Vec<Effect>)> = JoinSet::new();
        // A run resumed after a cancel request made while it was parked ends
        // at once.
        let mut cancelled = !fresh && inner.store.cancel_requested(&run.id).await?;
        loop {
            if failure.is_none() && !cancelled {
                for &i in &flow.topo_order {
                    if status[i].is_some() || running[i] || parked[i] {
                        continue;
                    }
                    let step = &flow.steps[i];
                    if !step.needs.iter().all(|&d| status[d].is_some()) {
                        continue;
                    }
                    if let Some(&d) = step
                        .needs
                        .iter()
                        .find(|&&d| status[d] == Some(StepStatus::Skipped))
                    {
                        let rec = StepRecord {
                            step_id: step.id.clone(),
                            status: StepStatus::Skipped,
                            attempts: 0,
                            input: None,
                            output: None,
                            error: Some(
                                json!({"kind": "skipped", "message": format!("skipped because `{}` was skipped", flow.steps[d].id)}),
                            ),
                            started_at: None,
                            finished_at: Some(now_ms()),
                        };
                        inner.store.save_step(&run.id, &rec).await?;
                        records.push(rec.clone());
                        emit(
                            events,
                            RunEvent::StepFinished {
                                step_id: step.id.clone(),
                                status: StepStatus::Skipped,
                                elapsed_ms: 0,
                                attempts: 0,
                                error: None,
                            },
                        );
                        scope.steps.insert(step.id.clone(), step_value(&rec));
                        status[i] = Some(StepStatus::Skipped);
                        continue;
                    }
                    running[i] = true;
                    emit(
                        events,
                        RunEvent::StepStarted {
                            step_id: step.id.clone(),
                        },
                    );
                    let task = StepTask {
                        inner: inner.clone(),
                        flow: flow.clone(),
                        index: i,
                        run_id: run.id.clone(),
                        scope: scope.clone(),
                        children: children.clone(),
                    };
                    let span = info_span!("step", run_id = %run.id, flow_id = %flow.id(), step_id = %step.id);
                    tasks.spawn(task.run().instrument(span));
                }
            }
            if tasks.is_empty() {
                // Skips above may have made more steps ready.
                if failure.is_none()
                    && !cancelled
                    && status.iter().enumerate().any(|(i, s)| {
                        s.is_none()
                            && !parked[i]
                            && flow.steps[i].needs.iter().all(|&d| status[d].is_some())
                    })
                {
                    continue;
                }
                break;
            }
            let joined = tokio::select! {
                j = tasks.join_next() => j,
                _ = cancel.notify.notified(), if !cancelled => {
                    cancelled = true;
                    tasks.abort_all();
                    continue;
                }
            };
            let Some(joined) = joined else { break };
            let (i, mut rec, raw_output, effects) = match joined {
                Ok(r) => r,
                Err(e) if e.is_cancelled() => continue,
                Err(e) => {
                    return Err(RunError::Flow {
                        run_id: run.id.clone(),
                        message: format!("step task crashed: {e}"),
                    });
                }
            };
            running[i] = false;
            let step = &flow.steps[i];
            // The effects a step returned commit with its result, or none
            // does; a failed step's effects are dropped.
            let mut fired = Vec::new();
            let mut park = None;
            if rec.status == StepStatus::Succeeded {
                for effect in effects {
                    match effect {
                        Effect::Publish(events) => fired.extend(events),
                        Effect::Park(p) => park = Some(p),
                    }
                }
            }
            if let Some(p) = park {
                rec.status = StepStatus::Waiting;
                rec.output = None;
                rec.finished_at = None;
                rec.input = rec.input.as_ref().map(|i| inner.secrets.redact_json(i));
                inner
                    .store
                    .park_step(&run.id, &rec, &p.spec, p.deadline)
                    .await?;
                tracing::info!(step_id = %step.id, waits_for = %p.spec.describe(), "step waits");
                emit(
                    events,
                    RunEvent::StepWaiting {
                        step_id: step.id.clone(),
                        waits_for: p.spec.describe(),
                    },
                );
                parked[i] = true;
                if cancel.flag.load(Ordering::SeqCst) && !cancelled {
                    cancelled = true;
                    tasks.abort_all();
                }
                continue;
            }
            let stored = StepRecord {
                error: rec.error.as_ref().map(|e| inner.secrets.redact_json(e)),
                input: rec.input.as_ref().map(|i| inner.secrets.redact_json(i)),
                ..rec.clone()
            };
            if fired.is_empty() {
                inner.store.save_step(&run.id, &stored).await?;
            } else {
                let endpoints = crate::events::endpoints_recent(&inner.store).await?;
                let effects = crate::events::effects(&inner.store, &endpoints, &fired);
                inner
                    .store
                    .save_step_with_effects(&run.id, &stored, &effects)
                    .await?;
                crate::events::committed(&inner.store, &effects);
            }
            records.push(stored.clone());
            emit(
                events,
                RunEvent::StepFinished {
                    step_id: step.id.clone(),
                    status: rec.status,
                    elapsed_ms: rec
                        .finished_at
                        .zip(rec.started_at)
                        .map(|(f, s)| (f - s).max(0) as u64)
                        .unwrap_or(0),
                    attempts: rec.attempts,
                    error: stored
                        .error
                        .as_ref()
                        .and_then(|e| e.get("message"))
                        .and_then(Value::as_str)
                        .map(str::to_string),
                },
            );
            if rec.status == StepStatus::Failed {
                tracing::warn!(step_id = %step.id, error = %stored.error.as_ref().map(|e| e.to_string()).unwrap_or_default(), "step failed");
            }
            let mut value_rec = rec.clone();
            value_rec.output = raw_output.clone();
            scope.steps.insert(step.id.clone(), step_value(&value_rec));
            outputs[i] = raw_output.unwrap_or(Value::Null);
            status[i] = Some(rec.status);
            if rec.status == StepStatus::Failed
                && step.on_error == OnError::Fail
                && failure.is_none()
            {
                let mut err = stored.error.clone().unwrap_or_else(|| json!({}));
                if let Some(o) = err.as_object_mut() {
                    o.insert("step".into(), json!(step.id));
                }
                failure = Some(err);
            }
            if cancel.flag.load(Ordering::SeqCst) && !cancelled {
                cancelled = true;
                tasks.abort_all();
            }
        }
        if cancelled || cancel.flag.load(Ordering::SeqCst) {
            self.cancel_children(&run.id).await?;
            return Ok((
                RunStatus::Cancelled,
                None,
                Some(json!({"kind": "cancelled", "message": "the run was cancelled"})),
            ));
        }
        if let Some(err) = failure {
            return Ok((RunStatus::Failed, None, Some(err)));
        }
        if parked.iter().any(|&p| p) {
            return Ok((RunStatus::Waiting, None, None));
        }
        let output = match &flow.output {
            Some(t) => match t.eval(&scope.context(None)) {
                Ok(v) => v,
                Err(e) => {
                    let e = StepError::from(e);
                    return Ok((
                        RunStatus::Failed,
                        None,
                        Some(
                            json!({"step": "output", "kind": e.kind, "message": format!("flow output: {}", e.message)}),
                        ),
                    ));
                }
            },
            None => {
                let sinks = &flow.sinks;
                if sinks.len() == 1 {
                    outputs[sinks[0]].clone()
                } else {
                    Value::Object(
                        sinks
                            .iter()
                            .map(|&i| (flow.steps[i].id.clone(), outputs[i].clone()))
                            .collect(),
                    )
                }
            }
        };
        Ok((RunStatus::Succeeded, Some(output), None))
    }
}

/// The largest step output stored, in bytes (`SLUICE_MAX_STEP_OUTPUT`,
/// e.g. `16MiB`; default 16 MiB). A larger output fails the step: it would be
/// stored, kept in memory by every later step and served whole.
pub fn max_step_output() -> usize {
    static MAX: std::sync::LazyLock<usize> = std::sync::LazyLock::new(|| {
        std::env::var("SLUICE_MAX_STEP_OUTPUT")
            .ok()
            .and_then(|v| parse_bytes(&v))
            .unwrap_or(16 << 20)
    });
    *MAX
}

/// `123`, `64KiB`, `16MiB`, `1GiB` (also `KB`, `MB`, `GB` as powers of 1000).
fn parse_bytes(text: &str) -> Option<usize> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: usize = n.parse().ok()?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// Whether `v` takes more than `max` bytes as JSON (counted, not built;
/// the count stops at `max`).
fn json_longer_than(v: &Value, max: usize) -> bool {
    struct Count(usize, usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            if self.0 > self.1 {
                return Err(std::io::Error::other("too large"));
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0, max);
    serde_json::to_writer(&mut count, v).is_err() && count.0 > max
}

/// The largest step input kept with a step's result, in bytes.
const MAX_KEPT_INPUT: usize = 256 * 1024;

/// A step's input as kept: itself, or a note when it is over
/// [`MAX_KEPT_INPUT`] (the step still ran with all of it).
fn kept_input(input: Value) -> Value {
    if json_longer_than(&input, MAX_KEPT_INPUT) {
        return json!({
            "not_kept": format!("the input is more than {MAX_KEPT_INPUT} bytes; only inputs up to that size are kept")
        });
    }
    input
}

/// Fails a step whose output is larger than [`max_step_output`].
fn check_output_size(v: Value) -> Result<Value, StepError> {
    let max = max_step_output();
    if json_longer_than(&v, max) {
        return Err(StepError::new(
            StepErrorKind::Validation,
            format!(
                "the step's output is more than {max} bytes (the limit, set by SLUICE_MAX_STEP_OUTPUT); select or reduce what the step returns"
            ),
        ));
    }
    Ok(v)
}

/// `steps.<id>` as expressions see it.
fn step_value(rec: &StepRecord) -> minijinja::Value {
    from_json(&json!({
        "output": rec.output,
        "status": rec.status.as_str(),
        "error": rec.error.as_ref().and_then(|e| e.get("message")).cloned(),
    }))
}

async fn keep_lease(
    store: Store,
    run_id: String,
    owner: String,
    lease: Duration,
    cancel: Arc<CancelSignal>,
    lost: Arc<AtomicBool>,
) {
    let period = (lease / 3).max(Duration::from_millis(100));
    loop {
        tokio::time::sleep(period).await;
        match store.renew_lease(&run_id, &owner, lease).await {
            Ok(Some(true)) => cancel.cancel(),
            Ok(Some(false)) => {}
            Ok(None) => {
                tracing::error!(run_id = %run_id, "lost the run's lease; another process took it over");
                lost.store(true, Ordering::SeqCst);
                cancel.cancel();
                return;
            }
            Err(e) => tracing::warn!(run_id = %run_id, error = %e, "could not renew lease"),
        }
    }
}

/// One step of one run, executed as its own task.
struct StepTask {
    inner: Arc<Inner>,
    flow: Arc<CompiledFlow>,
    index: usize,
    run_id: String,
    scope: Scope,
    children: Arc<ChildLauncher>,
}

impl StepTask {
    async fn run(self) -> (usize, StepRecord, Option<Value>, Vec<Effect>) {
        let step = &self.flow.steps[self.index];
        let started = now_ms();
        let mut effects = Vec::new();
        let mut input = None;
        let (status, output, error, attempts) = match &step.for_each {
            Some(list) => {
                self.run_for_each(step, list, &mut effects, &mut input)
                    .await
            }
            None => {
                let ctx = self.scope.context(None);
                let key = format!("{}:{}", self.run_id, step.id);
                match step.condition.as_ref().map(|c| c.eval_truthy(&ctx)) {
                    Some(Ok(false)) => (
                        StepStatus::Skipped,
                        None,
                        Some(json!({"kind": "skipped", "message": "condition `if` was false"})),
                        0,
                    ),
                    Some(Err(e)) => (
                        StepStatus::Failed,
                        None,
                        Some(error_json(step, &StepError::from(e), 1)),
                        1,
                    ),
                    _ => {
                        let (result, n, sent) = self.attempts(step, &ctx, &key).await;
                        input = sent;
                        match result {
                            Ok(out) => {
                                effects = out.effects;
                                (StepStatus::Succeeded, Some(out.value), None, n)
                            }
                            Err(e) => (StepStatus::Failed, None, Some(error_json(step, &e, n)), n),
                        }
                    }
                }
            }
        };
        let rec = StepRecord {
            step_id: step.id.clone(),
            status,
            attempts: i64::from(attempts),
            input: input.map(kept_input),
            output: output.clone(),
            error,
            started_at: Some(started),
            finished_at: Some(now_ms()),
        };
        (self.index, rec, output, effects)
    }

    async fn run_for_each(
        &self,
        step: &CompiledStep,
        list: &crate::expr::Template,
        effects: &mut Vec<Effect>,
        inputs: &mut Option<Value>,
    ) -> (StepStatus, Option<Value>, Option<Value>, u32) {
        let base = self.scope.context(None);
        let items = match list.eval(&base) {
            Ok(Value::Array(items)) => items,
            Ok(other) => {
                let e = StepError::new(
                    StepErrorKind::Expression,
                    format!("`for_each` must give a list, got {}", type_name(&other)),
                );
                return (StepStatus::Failed, None, Some(error_json(step, &e, 1)), 1);
            }
            Err(e) => {
                return (
                    StepStatus::Failed,
                    None,
                    Some(error_json(step, &StepError::from(e), 1)),
                    1,
                );
            }
        };
        #[allow(clippy::type_complexity)]
        let results: Vec<(
            usize,
            Result<Option<StepOutput>, StepError>,
            u32,
            Option<Value>,
        )> = futures::stream::iter(items.into_iter().enumerate())
            .map(|(index, item)| async move {
                let item = from_json(&item);
                let ctx = self.scope.context(Some((&item, index)));
                match step.condition.as_ref().map(|c| c.eval_truthy(&ctx)) {
                    Some(Ok(false)) => (index, Ok(None), 0, None),
                    Some(Err(e)) => (index, Err(StepError::from(e)), 1, None),
                    _ => {
                        let key = format!("{}:{}:{}", self.run_id, step.id, index);
                        let (r, n, sent) = self.attempts(step, &ctx, &key).await;
                        (index, r.map(Some), n, sent)
                    }
                }
            })
            .buffered(step.concurrency)
            .collect()
            .await;
        let attempts = results.iter().map(|r| r.2).max().unwrap_or(0);
        let total = results.len();
        // Each item's input in item order (`null` for an item left out or
        // that sent nothing); none when no item sent anything.
        if results.iter().any(|r| r.3.is_some()) {
            *inputs = Some(Value::Array(
                results
                    .iter()
                    .map(|r| r.3.clone().unwrap_or(Value::Null))
                    .collect(),
            ));
        }
        let mut out = Vec::with_capacity(total);
        let mut failed: Vec<Value> = Vec::new();
        let mut first_error: Option<(StepError, u32)> = None;
        for (index, r, n, _) in results {
            match r {
                Ok(Some(v)) => {
                    out.push(v.value);
                    effects.extend(v.effects);
                }
                Ok(None) => {}
                Err(e) => {
                    let e = StepError {
                        message: format!("item {index}: {}", e.message),
                        ..e
                    };
                    if step.on_error == OnError::Fail {
                        return (
                            StepStatus::Failed,
                            None,
                            Some(error_json(step, &e, n)),
                            attempts,
                        );
                    }
                    // `on_error: continue`: the other items' results are
                    // kept, in order, with `null` where an item failed.
                    out.push(Value::Null);
                    failed.push(json!({"index": index, "kind": e.kind, "message": e.message}));
                    first_error.get_or_insert((e, n));
                }
            }
        }
        if let Some((e, n)) = first_error {
            let mut error = error_json(step, &e, n);
            error["message"] = json!(format!(
                "step `{}`: {} of {total} items failed; first: {}",
                step.id,
                failed.len(),
                e.message
            ));
            error["items"] = Value::Array(failed);
            return (
                StepStatus::Failed,
                Some(Value::Array(out)),
                Some(error),
                attempts,
            );
        }
        (
            StepStatus::Succeeded,
            Some(Value::Array(out)),
            None,
            attempts,
        )
    }

    /// Runs attempts until one succeeds, the error is not retryable, or the
    /// policy is exhausted. Returns the result, the number of attempts and
    /// the input the last attempt recorded.
    async fn attempts(
        &self,
        step: &CompiledStep,
        ctx: &minijinja::Value,
        key: &str,
    ) -> (Result<StepOutput, StepError>, u32, Option<Value>) {
        let max = step.retry.max_attempts.max(1);
        let mut attempt = 1;
        let input = std::sync::Mutex::new(None);
        let sent = |input: std::sync::Mutex<Option<Value>>| input.into_inner().ok().flatten();
        loop {
            if !step.kind.is_pure()
                && let Err(e) = self
                    .inner
                    .store
                    .record_attempt(&self.run_id, &step.id, key, attempt)
                    .await
            {
                return (
                    Err(StepError::new(
                        StepErrorKind::Connector,
                        format!("could not log the attempt: {e}"),
                    )),
                    attempt,
                    sent(input),
                );
            }
            let connectors = self
                .inner
                .connectors
                .read()
                .expect("connector registry lock")
                .clone();
            let rt = StepRuntime {
                connectors: &connectors,
                ctx,
                idempotency_key: key,
                store: Some(&self.inner.store),
                plugins: self.inner.plugins.as_deref(),
                plugin_outputs: self.inner.plugin_outputs.as_deref(),
                children: Some(&*self.children),
                input: Some(&input),
            };
            let fut = step.kind.execute(&rt);
            // A plugin enforces the step's timeout itself (and says so in its
            // error); the outer timeout is then only a backstop.
            let outer = match (&step.kind, step.timeout) {
                // The backstop leaves room for compiling and instantiating
                // the component (seconds on a loaded machine), which the
                // plugin's own limit does not count.
                (CompiledKind::Plugin(_), Some(t)) => Some(t + Duration::from_secs(5)),
                (_, t) => t,
            };
            let result = match outer {
                Some(limit) => match tokio::time::timeout(limit, fut).await {
                    Ok(r) => r,
                    Err(_) => Err(StepError {
                        kind: StepErrorKind::Timeout,
                        message: format!("timed out after {}", humantime::format_duration(limit)),
                        retryable: true,
                        retry_after: None,
                        details: None,
                    }),
                },
                None => fut.await,
            };
            let result = result.and_then(|out| {
                Ok(StepOutput {
                    value: check_output_size(out.value)?,
                    effects: out.effects,
                })
            });
            match result {
                Ok(v) => return (Ok(v), attempt, sent(input)),
                Err(e) if e.retryable && attempt < max => {
                    let delay = retry::delay(&step.retry, attempt + 1, e.retry_after);
                    tracing::info!(step_id = %step.id, attempt, delay_ms = delay.as_millis() as u64, error = %self.inner.secrets.redact(&e.message), "retrying step");
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Err(e) => {
                    let e = if attempt > 1 {
                        StepError {
                            message: format!("{} (gave up after {attempt} attempts)", e.message),
                            ..e
                        }
                    } else {
                        e
                    };
                    return (Err(e), attempt, sent(input));
                }
            }
        }
    }
}

/// How long the request key of a child or failure-handler run holds: as
/// long as its parent may be resumed.
const CHILD_KEY_WINDOW: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// The data of `run.succeeded` / `run.failed` / `run.cancelled`, which is
/// also what an `on_failure` flow gets.
fn run_event_data(
    flow: &CompiledFlow,
    run: &RunRecord,
    status: RunStatus,
    error: Option<&Value>,
) -> Value {
    json!({
        "flow_id": flow.id(),
        "run_id": run.id,
        "status": status.as_str(),
        "step": error.and_then(|e| e.get("step")).cloned().unwrap_or(Value::Null),
        "error": error.and_then(|e| e.get("message")).cloned().unwrap_or(Value::Null),
    })
}

/// The flows from the outermost run to this one: a child run's trigger
/// carries its parent's chain; any other run starts one.
fn call_chain(flow_id: &str, trigger: &Value) -> Vec<String> {
    match trigger["chain"].as_array() {
        Some(chain) if trigger["type"] == "flow" => chain
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_string)
            .collect(),
        _ => vec![flow_id.to_string()],
    }
}

/// Starts and awaits the child runs of one run's `flow` steps.
struct ChildLauncher {
    engine: Engine,
    run_id: String,
    flow_id: String,
    chain: Vec<String>,
}

impl crate::steps::ChildRuns for ChildLauncher {
    fn run_child<'a>(
        &'a self,
        call: crate::steps::ChildCall<'a>,
    ) -> futures::future::BoxFuture<'a, Result<Value, StepError>> {
        Box::pin(self.run_child_inner(call))
    }
}

impl ChildLauncher {
    async fn run_child_inner(&self, call: crate::steps::ChildCall<'_>) -> Result<Value, StepError> {
        // `run:step` or `run:step:index` → `step` or `step[index]`.
        let local = call
            .key
            .strip_prefix(&format!("{}:", self.run_id))
            .unwrap_or(call.key);
        let label = match local.split_once(':') {
            Some((step, index)) => format!("{step}[{index}]"),
            None => local.to_string(),
        };
        // A resumed parent waits for the child this step already started.
        let existing = self
            .engine
            .store()
            .child_run(&self.run_id, &label)
            .await
            .map_err(|e| child_store_error(&e))?;
        if let Some(id) = existing {
            return self.wait_existing(&id).await;
        }
        self.start_child(call, &label).await
    }

    /// Stores the child run (once per step key), executes it in a task of
    /// its own and gives its result.
    async fn start_child(
        &self,
        call: crate::steps::ChildCall<'_>,
        label: &str,
    ) -> Result<Value, StepError> {
        let flow_err = |m: String| StepError::new(StepErrorKind::Flow, m);
        let mut chain = self.chain.clone();
        chain.push(call.flow_id.to_string());
        let max = crate::steps::flow::max_depth();
        if chain.len() > max + 1 {
            return Err(flow_err(format!(
                "flow `{}` not started: flow calls would nest {} deep, more than the limit of {max} (SLUICE_MAX_FLOW_DEPTH): {}",
                call.flow_id,
                chain.len() - 1,
                chain.join(" → ")
            )));
        }
        let child = self
            .engine
            .find_flow(call.flow_id)
            .await
            .map_err(|e| flow_err(format!("flow `{}`: {e}", call.flow_id)))?
            .ok_or_else(|| {
                flow_err(format!(
                    "unknown flow `{}`: neither loaded nor stored",
                    call.flow_id
                ))
            })?;
        let trigger = json!({
            "type": "flow",
            "parent_run_id": self.run_id,
            "parent_flow_id": self.flow_id,
            "parent_step": label,
            "chain": chain,
        });
        let key = format!("flow:{}", call.key);
        let created = match self
            .engine
            .create(
                &child,
                &call.inputs,
                &trigger,
                Some((&key, CHILD_KEY_WINDOW)),
                Some((&self.run_id, label)),
            )
            .await
        {
            Ok(c) => c,
            Err(RunError::Inputs(m)) => {
                return Err(StepError::new(
                    StepErrorKind::Validation,
                    format!("flow `{}`: invalid inputs: {m}", call.flow_id),
                ));
            }
            Err(e) => return Err(child_store_error(&e)),
        };
        if let Some(first) = created.first {
            return self.wait_existing(&first).await;
        }
        let child_id = created.run_id.clone();
        // The child runs in its own task; if this step is dropped (a
        // timeout, or the parent's cancellation) the child is cancelled too.
        let mut guard = CancelChildOnDrop {
            engine: self.engine.clone(),
            run_id: Some(child_id.clone()),
        };
        let engine = self.engine.clone();
        let result =
            tokio::spawn(
                async move { engine.execute_started(child, created, trigger, None).await },
            )
            .await;
        // A child parked by a `wait_for` step is waited for (the parent
        // holds its slot meanwhile); cancelling the parent cancels it.
        if matches!(&result, Ok(Ok(o)) if o.status == RunStatus::Waiting) {
            let r = self.wait_existing(&child_id).await;
            guard.run_id = None;
            return r;
        }
        guard.run_id = None;
        match result {
            Ok(Ok(o)) => child_result(o),
            Ok(Err(e)) => Err(flow_err(format!("child run `{child_id}`: {e}"))),
            Err(e) => Err(flow_err(format!("child run `{child_id}` crashed: {e}"))),
        }
    }

    /// Waits for a child started before (by this step before a crash, or by
    /// another process): takes its result when it has ended, resumes it
    /// when its process died (or it failed: re-running the parent's step
    /// re-runs the child from its failed step), else polls.
    async fn wait_existing(&self, child_id: &str) -> Result<Value, StepError> {
        let flow_err = |m: String| StepError::new(StepErrorKind::Flow, m);
        loop {
            let run = self
                .engine
                .load_run(child_id)
                .await
                .map_err(|e| flow_err(format!("child run `{child_id}`: {e}")))?;
            let orphaned = match run.status {
                RunStatus::Succeeded | RunStatus::Cancelled => {
                    return child_result(RunOutcome {
                        run_id: run.id,
                        flow_id: run.flow_id,
                        status: run.status,
                        output: run.output,
                        error: run.error,
                    });
                }
                RunStatus::Failed => true,
                RunStatus::Waiting => false,
                // As [`Store::orphaned_runs`] tells a dead process's runs.
                RunStatus::Queued | RunStatus::Running => match run.lease_expires_at {
                    Some(t) => t < now_ms(),
                    None => run.created_at < now_ms() - 5_000,
                },
            };
            if orphaned {
                match Box::pin(self.engine.resume(child_id, None)).await {
                    Ok(o) => return child_result(o),
                    Err(RunError::Held { .. } | RunError::AtLimit { .. }) => {}
                    Err(e) => return Err(flow_err(format!("child run `{child_id}`: {e}"))),
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A store failure around a child run: retryable, as the store may recover.
fn child_store_error(e: &dyn std::fmt::Display) -> StepError {
    StepError {
        retryable: true,
        ..StepError::new(
            StepErrorKind::Flow,
            format!("the child run could not be stored: {e}"),
        )
    }
}

/// The step's result from its child's outcome: the output, or an error
/// naming the child run and the step that failed in it.
fn child_result(o: RunOutcome) -> Result<Value, StepError> {
    if o.status == RunStatus::Succeeded {
        return Ok(o.output.unwrap_or(Value::Null));
    }
    let step = o
        .error
        .as_ref()
        .and_then(|e| e.get("step"))
        .and_then(Value::as_str)
        .map(str::to_string);
    // A grandchild's failure is told once, by its own run id, not nested in
    // every level's message: the cause travels up in `details.cause`.
    let message = o
        .error
        .as_ref()
        .and_then(|e| {
            e.pointer("/details/cause")
                .or_else(|| e.get("message"))
                .and_then(Value::as_str)
        })
        .unwrap_or("no error recorded")
        .to_string();
    let at = step
        .as_ref()
        .map(|s| format!(" at step `{s}`"))
        .unwrap_or_default();
    let mut e = StepError::new(
        StepErrorKind::Flow,
        format!(
            "child run `{}` of flow `{}` {}{at}: {message}",
            o.run_id,
            o.flow_id,
            o.status.as_str()
        ),
    );
    e.details = Some(json!({
        "child_run_id": o.run_id,
        "child_flow_id": o.flow_id,
        "child_status": o.status.as_str(),
        "child_step": step,
        "cause": message,
    }));
    Err(e)
}

/// Cancels a child run whose parent step stopped waiting for it.
struct CancelChildOnDrop {
    engine: Engine,
    run_id: Option<String>,
}

impl Drop for CancelChildOnDrop {
    fn drop(&mut self) {
        if let Some(id) = self.run_id.take() {
            let engine = self.engine.clone();
            tokio::spawn(async move {
                if let Err(e) = engine.cancel(&id).await {
                    tracing::warn!(run_id = %id, error = %e, "could not cancel the child run");
                }
            });
        }
    }
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

fn error_json(step: &CompiledStep, e: &StepError, attempts: u32) -> Value {
    let mut v = json!({
        "kind": e.kind,
        "message": format!("step `{}`: {}", step.id, e.message),
        "attempts": attempts,
        "retryable": e.retryable,
    });
    if let Some(d) = &e.details {
        v["details"] = d.clone();
    }
    v
}
