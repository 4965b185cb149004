//! The `sluice` command line.
//!
//! Exit codes: 0 success, 1 the flow (or a command) failed, 2 an invalid flow
//! or invalid usage. Every command that touches the store takes `--db URL`
//! (`sqlite://PATH` or `postgres://...`; default `sqlite://sluice.db`, or the
//! `SLUICE_DB` variable).

/// `println!` that ignores a closed stdout (`sluice runs list | head`).
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

mod connection;
mod graph;
mod plugin;
mod progress;
mod serve;
mod sync;
mod webhook;

use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use serde_json::{Map, Value, json};

use crate::expr::secrets::Secrets;
use crate::flow::{self, CompiledFlow, FlowErrors, InputType, diagnostic};
use crate::run::{Engine, RunError, RunOutcome};
use crate::store::{DEFAULT_URL, RunFilter, RunStatus, Store, StoreError};

/// Exit code: success.
pub const EXIT_OK: i32 = 0;
/// Exit code: the flow or command failed.
pub const EXIT_FAILED: i32 = 1;
/// Exit code: invalid flow or usage.
pub const EXIT_INVALID: i32 = 2;

#[derive(Parser, Debug)]
#[command(
    name = "sluice",
    version,
    about = "Workflow automation for ERP, CMMS and WMS integrations"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Debug, Clone)]
struct DbArgs {
    /// Database URL: sqlite://PATH or postgres://USER@HOST/DB.
    #[arg(long, env = "SLUICE_DB", default_value = DEFAULT_URL)]
    db: String,
    /// How long a run stays claimed by this process without renewal (e.g. 30s).
    #[arg(long, env = "SLUICE_RUN_LEASE", default_value = "30s", value_parser = humantime::parse_duration, hide = true)]
    lease: Duration,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run a flow file and print its output.
    Run {
        /// The flow file.
        file: PathBuf,
        /// An input, as NAME=VALUE (VALUE is JSON, or text for string inputs). Repeatable.
        #[arg(long = "input", short = 'i', value_name = "NAME=VALUE")]
        inputs: Vec<String>,
        /// Print only the run's result as JSON.
        #[arg(long)]
        json: bool,
        /// Run it on a `sluice serve` at this URL instead of in this process.
        #[arg(long, value_name = "URL")]
        server: Option<String>,
        /// API token for --server.
        #[arg(long, env = "SLUICE_TOKEN", hide_env_values = true)]
        token: Option<String>,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Serve the HTTP API, triggers and workers.
    Serve(serve::ServeArgs),
    /// API tokens: create, list, revoke.
    Token {
        #[command(subcommand)]
        command: serve::TokenCommand,
    },
    /// Run flow tests (`*.test.yaml`, default: every one under `.`) in
    /// memory with pinned connections and plugins; exit 1 on any failure.
    Test {
        /// Test files or directories.
        paths: Vec<PathBuf>,
        /// Print the results as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Validate flow files (or directories of them); exit 2 on any problem.
    Validate {
        /// Files or directories.
        #[arg(required = true)]
        paths: Vec<PathBuf>,
        /// Print diagnostics as JSON.
        #[arg(long)]
        json: bool,
        /// The store whose connections and plugins flows may name, as `sluice run`
        /// uses it (default `sqlite://sluice.db` when that file exists).
        #[arg(long, env = "SLUICE_DB")]
        db: Option<String>,
    },
    /// Print the JSON Schema of the flow format.
    Schema,
    /// Draw a flow's DAG (Mermaid; --dot for Graphviz).
    Graph {
        /// The flow file.
        file: PathBuf,
        /// Graphviz DOT instead of Mermaid.
        #[arg(long)]
        dot: bool,
    },
    /// Inspect and resume runs.
    Runs {
        #[command(subcommand)]
        command: RunsCommand,
    },
    /// Outbound webhooks: endpoints, messages, delivery.
    Webhook {
        #[command(subcommand)]
        command: webhook::WebhookCommand,
    },
    /// WASM plugins: upload, list, show, remove.
    Plugin {
        #[command(subcommand)]
        command: plugin::PluginCommand,
    },
    /// Connections to systems: add, list, test, status, remove.
    Connection {
        #[command(subcommand)]
        command: connection::ConnectionCommand,
    },
    /// Connector definitions: list, validate.
    Connector {
        #[command(subcommand)]
        command: connection::ConnectorCommand,
    },
    /// Syncs of a connection's records into the local cache: start, status.
    Sync {
        #[command(subcommand)]
        command: sync::SyncCommand,
    },
}

/// `sluice runs resume --revision`.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum RevisionArg {
    /// The revision the run started on.
    Own,
    /// The flow's latest stored revision.
    Latest,
}

#[derive(Subcommand, Debug)]
enum RunsCommand {
    /// List runs, newest first.
    List {
        /// Only runs of this flow.
        #[arg(long)]
        flow: Option<String>,
        /// Only runs with this status (queued, running, succeeded, failed, cancelled).
        #[arg(long)]
        status: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 20)]
        limit: i64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Show a run with its steps and attempts.
    Show {
        /// Run id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Resume a run: an interrupted one after its lease expired, a failed
    /// one from the failed step, a cancelled one from the steps it had not
    /// finished. Without an id, resume every interrupted run.
    Resume {
        /// Run id.
        id: Option<String>,
        /// The flow revision to continue on: the run's own (default), or the
        /// flow's latest stored one, when the steps the run already completed
        /// are unchanged in it (else the differing steps are named).
        #[arg(long, value_enum, default_value_t = RevisionArg::Own, requires = "id")]
        revision: RevisionArg,
        /// Print only the result as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Write a stored run as a `sluice test` file: its inputs and trigger,
    /// what its reads and plugins returned, and what came out.
    Export {
        /// Run id.
        id: String,
        /// Required: the export format (a test file).
        #[arg(long, required = true)]
        as_test: bool,
        /// Write to this file instead of stdout.
        #[arg(long, short)]
        output: Option<PathBuf>,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Send a signal to a run parked by a `wait_for` step (an approval, a
    /// callback), then go on with the run here (unless a server takes it).
    Signal {
        /// Run id.
        id: String,
        /// The signal's name, as its `wait_for` step names it.
        signal: String,
        /// The signal's data as a JSON object, checked against the step's
        /// `data:` declaration, e.g. `{"approved": true}`.
        #[arg(long, default_value = "{}")]
        data: String,
        /// Only store the signal; leave the run for a server to resume.
        #[arg(long)]
        no_resume: bool,
        /// Print only the result as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Cancel a queued, running or waiting run.
    Cancel {
        /// Run id.
        id: String,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Delete finished runs with their step results, by age and/or count,
    /// and give SQLite's space back. Without a limit, applies each stored
    /// flow's `retention:`.
    Prune {
        /// Delete runs that finished longer ago than this, e.g. `30d`.
        #[arg(long, value_parser = humantime::parse_duration)]
        older_than: Option<std::time::Duration>,
        /// Keep failed runs this long instead, e.g. `90d`.
        #[arg(long, value_parser = humantime::parse_duration)]
        failed_older_than: Option<std::time::Duration>,
        /// Keep at most this many finished runs per flow (the newest).
        #[arg(long)]
        keep: Option<u64>,
        /// Only runs of this flow.
        #[arg(long)]
        flow: Option<String>,
        /// Also compact the SQLite file with a full VACUUM (rewrites it).
        #[arg(long)]
        vacuum: bool,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: DbArgs,
    },
}

/// Parses arguments, runs the command, returns the exit code.
pub async fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                EXIT_INVALID
            } else {
                EXIT_OK
            };
        }
    };
    // A test's expected failures are results, not warnings.
    init_tracing(if matches!(cli.command, Command::Test { .. }) {
        "error"
    } else {
        "warn"
    });
    match dispatch(cli.command).await {
        Ok(code) => code,
        Err(e) => {
            let secrets = Secrets::from_env();
            eprintln!("error: {}", secrets.redact(&e.message));
            e.code
        }
    }
}

fn init_tracing(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLUICE_LOG")
        .or_else(|_| tracing_subscriber::EnvFilter::try_from_default_env())
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none())
        .try_init();
}

/// Prints a value as pretty JSON on stdout.
fn print_json<T: serde::Serialize + ?Sized>(value: &T) {
    outln!(
        "{}",
        serde_json::to_string_pretty(value).expect("values built from JSON serialize")
    );
}

/// A time in milliseconds since the epoch, for tables.
fn format_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|d| d.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_default()
}

/// A command failure with its exit code.
struct CliError {
    message: String,
    code: i32,
}

impl CliError {
    fn failed(message: impl Into<String>) -> Self {
        CliError {
            message: message.into(),
            code: EXIT_FAILED,
        }
    }
    fn invalid(message: impl Into<String>) -> Self {
        CliError {
            message: message.into(),
            code: EXIT_INVALID,
        }
    }
}

impl From<StoreError> for CliError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::UnsupportedUrl(_) => CliError::invalid(e.to_string()),
            other => CliError::failed(other.to_string()),
        }
    }
}

impl From<RunError> for CliError {
    fn from(e: RunError) -> Self {
        match e {
            RunError::Inputs(_)
            | RunError::NotFound(_)
            | RunError::AlreadyFinished(..)
            | RunError::NotWaiting(_)
            | RunError::Signal(_)
            | RunError::StepsChanged { .. } => CliError::invalid(e.to_string()),
            other => CliError::failed(other.to_string()),
        }
    }
}

async fn dispatch(cmd: Command) -> Result<i32, CliError> {
    match cmd {
        Command::Run {
            file,
            inputs,
            json,
            server: Some(url),
            token,
            ..
        } => {
            let flow = compile_or_report(&file, &flow::Catalog::default()).ok();
            let parsed = match &flow {
                Some(f) => parse_inputs(f, &inputs)?,
                None => Map::new(),
            };
            serve::run_on_server(&file, parsed, &url, token.as_deref(), json).await
        }
        Command::Run {
            file,
            inputs,
            json,
            db,
            ..
        } => run(&file, &inputs, json, &db).await,
        Command::Serve(args) => serve::serve_command(args).await,
        Command::Token { command } => serve::token_command(command).await,
        Command::Test { paths, json } => Ok(test_command(&paths, json).await),
        Command::Validate { paths, json, db } => {
            // The same store as `sluice run`, so a connection or plugin that
            // `run` knows is known here; the default file is not created.
            let url = db.or_else(|| {
                Path::new(DEFAULT_URL.trim_start_matches("sqlite://"))
                    .exists()
                    .then(|| DEFAULT_URL.to_string())
            });
            let catalog = match url {
                Some(url) => {
                    let args = DbArgs {
                        db: url,
                        lease: Duration::from_secs(30),
                    };
                    let mut c = engine(&args).await?.catalog_with_plugins().await?;
                    // The flow may run in another process with other secrets.
                    c.secrets = None;
                    c
                }
                None => flow::Catalog::default(),
            };
            Ok(validate(&paths, json, &catalog))
        }
        Command::Schema => {
            print_json(&flow::json_schema());
            Ok(EXIT_OK)
        }
        Command::Graph { file, dot } => {
            let flow = compile_or_report(&file, &flow::Catalog::default())?;
            outln!(
                "{}",
                if dot {
                    graph::dot(&flow)
                } else {
                    graph::mermaid(&flow)
                }
                .trim_end()
            );
            Ok(EXIT_OK)
        }
        Command::Runs { command } => runs(command).await,
        Command::Webhook { command } => webhook::dispatch(command).await,
        Command::Plugin { command } => plugin::dispatch(command).await,
        Command::Connection { command } => connection::dispatch(command).await,
        Command::Connector { command } => connection::dispatch_connector(command).await,
        Command::Sync { command } => sync::dispatch(command).await,
    }
}

async fn engine(db: &DbArgs) -> Result<Engine, CliError> {
    let store = Store::connect(&db.db).await?;
    let plugins = Arc::new(crate::plugins::PluginRegistry::new(
        store.clone(),
        Some(plugin::cache_dir()),
    ));
    let secrets = Secrets::from_env();
    let defs = connection::definitions()?;
    let connectors = crate::connectors::connection::registry(&store, &defs, &secrets).await?;
    Ok(Engine::new(store, connectors, secrets)
        .with_lease(db.lease)
        .with_plugins(plugins))
}

fn compile_or_report(file: &Path, catalog: &flow::Catalog) -> Result<CompiledFlow, CliError> {
    flow::compile_file(file, catalog).map_err(|e| {
        eprint!("{}", render_errors(&e));
        CliError::invalid(format!(
            "{}: {} problem(s); the flow was not run",
            e.file,
            e.diagnostics.len()
        ))
    })
}

fn render_errors(e: &FlowErrors) -> String {
    diagnostic::render(
        &e.file,
        &e.source,
        &e.diagnostics,
        std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none(),
    )
}

/// Parses `NAME=VALUE` inputs, reading VALUE per the declared type.
fn parse_inputs(flow: &CompiledFlow, raw: &[String]) -> Result<Map<String, Value>, CliError> {
    let mut out = Map::new();
    for pair in raw {
        let (name, text) = pair
            .split_once('=')
            .ok_or_else(|| CliError::invalid(format!("--input `{pair}` is not NAME=VALUE")))?;
        let declared = flow.flow.inputs.get(name).map(|s| s.kind);
        let value = match declared {
            Some(InputType::String) => Value::String(text.to_string()),
            _ => serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_string())),
        };
        out.insert(name.to_string(), value);
    }
    Ok(out)
}

async fn run(
    file: &Path,
    raw_inputs: &[String],
    json_out: bool,
    db: &DbArgs,
) -> Result<i32, CliError> {
    let engine = engine(db).await?;
    // The flow files beside this one are the flows its `flow` steps and
    // `on_failure` may name (as the server's flows directory is), besides
    // the flows already stored.
    let siblings = sibling_flow_files(file);
    let mut catalog = engine.catalog_with_plugins().await?;
    let mut known = stored_flows(engine.store()).await?;
    known.extend(flow::known_flows(&siblings));
    catalog.flows = Some(known);
    let flow = Arc::new(compile_or_report(file, &catalog)?);
    catalog.flows = None;
    engine.set_flows(Arc::new(SiblingFlows {
        files: siblings,
        catalog,
        compiled: Default::default(),
    }));
    let inputs = parse_inputs(&flow, raw_inputs)?;
    let (events, display) = if json_out {
        (None, None)
    } else {
        progress::start(&flow)
    };
    // The run executes in a task so that Ctrl-C can cancel it: the first
    // cancels the run (it ends `cancelled`), a second leaves at once and
    // the run stays resumable once its lease expires.
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (run_id, _) = engine
        .start(
            flow,
            &inputs,
            json!({"type": "manual", "source": "cli"}),
            None,
            events,
            move |r| {
                let result = match r {
                    Ok(outcome) => Ok(outcome.clone()),
                    Err(e) => Err(e.to_string()),
                };
                let _ = tx.send(result);
            },
        )
        .await?;
    let mut rx = rx;
    let mut interrupts = 0;
    let outcome = loop {
        tokio::select! {
            r = &mut rx => break r,
            _ = tokio::signal::ctrl_c() => {
                interrupts += 1;
                if interrupts == 1 {
                    eprintln!("\ncancelling run {run_id} (press Ctrl-C again to leave it running; `sluice runs resume {run_id}` continues it after its lease expires)");
                    engine.cancel(&run_id).await?;
                } else {
                    eprintln!("\nleft run {run_id} as it is; `sluice runs resume {run_id}` continues it once its lease expires");
                    return Ok(EXIT_FAILED);
                }
            }
        }
    };
    if let Some(d) = display {
        let _ = d.await;
    }
    let outcome = match outcome {
        Ok(Ok(o)) => o,
        Ok(Err(e)) => return Err(CliError::failed(e)),
        Err(_) => return Err(CliError::failed("the run's task ended without a result")),
    };
    // A connection that entered `auth_required` during the run is recorded
    // and announced before the process exits.
    crate::connectors::connection::flush_status_writes().await;
    deliver_fired_webhooks(engine.store(), json_out).await?;
    print_step_warnings(engine.store(), &outcome.run_id).await?;
    report(&outcome, json_out)
}

/// The flow files in the directory of `file` (itself included).
fn sibling_flow_files(file: &Path) -> Vec<PathBuf> {
    let dir = match file.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_file() && flow::is_flow_file(p))
        .collect();
    files.sort();
    files
}

/// The flows stored (run or uploaded before), with their declared inputs.
async fn stored_flows(store: &Store) -> Result<flow::KnownFlows, CliError> {
    let mut known = flow::KnownFlows::new();
    for id in store.flow_ids().await? {
        if let Some(rev) = store.flow_revisions(&id).await?.pop()
            && let Some((id, inputs)) = flow::flow_signature(&rev.source)
        {
            known.insert(id, inputs);
        }
    }
    Ok(known)
}

/// The flows `sluice run` finds by id: the files beside the one it runs,
/// compiled when first called.
struct SiblingFlows {
    files: Vec<PathBuf>,
    catalog: flow::Catalog,
    compiled: std::sync::Mutex<BTreeMap<String, Arc<CompiledFlow>>>,
}

impl crate::run::FlowLibrary for SiblingFlows {
    fn flow(&self, id: &str) -> Result<Option<Arc<CompiledFlow>>, String> {
        if let Some(f) = self.compiled.lock().expect("flow cache lock").get(id) {
            return Ok(Some(f.clone()));
        }
        for file in &self.files {
            let Ok(text) = std::fs::read_to_string(file) else {
                continue;
            };
            if flow::flow_signature(&text).is_none_or(|(fid, _)| fid != id) {
                continue;
            }
            let compiled = flow::compile(&file.display().to_string(), &text, &self.catalog)
                .map_err(|e| e.to_string())?;
            let compiled = Arc::new(compiled);
            self.compiled
                .lock()
                .expect("flow cache lock")
                .insert(id.to_string(), compiled.clone());
            return Ok(Some(compiled));
        }
        Ok(None)
    }
}

/// Prints, on stderr, the warnings the run's steps returned in their
/// outputs: a write the system accepted but whose answer did not map
/// (`mapped: false` with a `warning`), so the record it made is not missed
/// in a run that otherwise succeeded.
async fn print_step_warnings(store: &Store, run_id: &str) -> Result<(), CliError> {
    for step in store.steps(run_id).await? {
        let outputs: Vec<&Value> = match &step.output {
            Some(Value::Array(items)) => items.iter().collect(),
            Some(one) => vec![one],
            None => Vec::new(),
        };
        for o in outputs {
            if o.get("mapped") == Some(&Value::Bool(false))
                && let Some(w) = o.get("warning").and_then(Value::as_str)
            {
                eprintln!("warning: step `{}`: {w}", step.step_id);
            }
        }
    }
    Ok(())
}

/// Delivers the webhooks that are due (those the run fired, and any left
/// over), so `sluice run` behaves like a server would; retries scheduled for
/// later are left to `sluice webhook deliver`.
async fn deliver_fired_webhooks(store: &Store, quiet: bool) -> Result<(), CliError> {
    if store.undelivered_count().await? == 0 {
        return Ok(());
    }
    let config =
        crate::webhooks::delivery::DeliveryConfig::from_env().map_err(CliError::invalid)?;
    let worker = crate::webhooks::delivery::DeliveryWorker::new(store.clone(), config)
        .map_err(CliError::failed)?;
    let r = worker.drain(Duration::from_secs(30)).await?;
    if !quiet {
        eprintln!(
            "webhooks: {} delivery attempt(s); {} message(s) waiting for a retry (`sluice webhook deliver`)",
            r.attempts, r.waiting
        );
    }
    Ok(())
}

fn report(outcome: &RunOutcome, json_out: bool) -> Result<i32, CliError> {
    if json_out {
        print_json(outcome);
    } else {
        match outcome.status {
            RunStatus::Succeeded => {
                eprintln!("run {} succeeded", outcome.run_id);
                print_json(&outcome.output);
            }
            RunStatus::Waiting => {
                eprintln!(
                    "run {0} waits (see `sluice runs show {0}`); `sluice runs signal {0} NAME --data JSON` answers a signal, and a server resumes it on an event or its timeout",
                    outcome.run_id
                );
            }
            status => {
                let message = outcome
                    .error
                    .as_ref()
                    .and_then(|e| e.get("message"))
                    .and_then(Value::as_str)
                    .unwrap_or("no error recorded");
                eprintln!("run {} {}: {message}", outcome.run_id, status.as_str());
            }
        }
    }
    Ok(
        if matches!(outcome.status, RunStatus::Succeeded | RunStatus::Waiting) {
            EXIT_OK
        } else {
            EXIT_FAILED
        },
    )
}

/// Flow files under `paths`: files as given, directories walked recursively
/// for `.yaml`/`.yml` (sorted). A path that holds none is in the second list.
fn collect_flow_files(paths: &[PathBuf]) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let mut files = Vec::new();
    let mut empty = Vec::new();
    for p in paths {
        if p.is_dir() {
            let before = files.len();
            files.extend(flow::files_under(p, &flow::is_flow_file));
            if files.len() == before {
                empty.push(p.clone());
            }
        } else if p.exists() {
            files.push(p.clone());
        } else {
            empty.push(p.clone());
        }
    }
    (files, empty)
}

async fn test_command(paths: &[PathBuf], json_out: bool) -> i32 {
    let paths = if paths.is_empty() {
        vec![PathBuf::from(".")]
    } else {
        paths.to_vec()
    };
    let files = crate::testing::find_test_files(&paths);
    if files.is_empty() {
        eprintln!(
            "no test files (*.test.yaml) under {}",
            paths
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        return EXIT_INVALID;
    }
    let mut results = Vec::new();
    for f in &files {
        for r in crate::testing::run_file(f).await {
            if !json_out {
                if r.passed() {
                    outln!("ok: {} › {}", r.file, r.name);
                } else {
                    outln!("FAIL: {} › {}", r.file, r.name);
                    for f in &r.failures {
                        outln!("    {f}");
                    }
                }
            }
            results.push(r);
        }
    }
    let failed = results.iter().filter(|r| !r.passed()).count();
    let passed = results.len() - failed;
    if json_out {
        print_json(&results);
    } else {
        outln!("{passed} passed, {failed} failed");
    }
    if failed > 0 { EXIT_FAILED } else { EXIT_OK }
}

fn validate(paths: &[PathBuf], json_out: bool, catalog: &flow::Catalog) -> i32 {
    let mut failed = 0;
    let mut ok = 0;
    let mut report = Vec::new();
    let (files, empty) = collect_flow_files(paths);
    for p in &empty {
        failed += 1;
        let why = if p.exists() {
            "holds no flow file (.yaml or .yml)"
        } else {
            "does not exist"
        };
        if !json_out {
            eprintln!("{}: error: {why}", p.display());
        }
        report.push(json!({"file": p.display().to_string(), "ok": false, "diagnostics": [{"code": "no-flow-file", "message": format!("{} {why}", p.display())}]}));
    }
    // The flows being validated, and those beside each file, are the flows
    // `flow` steps and `on_failure` may name.
    let mut catalog = catalog.clone();
    let mut around: Vec<PathBuf> = files.clone();
    for f in &files {
        around.extend(sibling_flow_files(f));
    }
    let mut known = catalog.flows.take().unwrap_or_default();
    known.extend(flow::known_flows(&around));
    catalog.flows = Some(known);
    let catalog = &catalog;
    // Flow ids must be unique across the files (the server keys flows by id).
    let mut ids: BTreeMap<String, String> = BTreeMap::new();
    for file in &files {
        let result = flow::compile_file(file, catalog).and_then(|f| {
            let shown = file.display().to_string();
            match ids.get(f.id()) {
                Some(first) => Err(FlowErrors {
                    file: shown,
                    source: f.source.clone(),
                    diagnostics: vec![
                        flow::Diagnostic::at(
                            "duplicate-flow-id",
                            flow::source::Loc {
                                line: f
                                    .source
                                    .lines()
                                    .position(|l| l.starts_with("id:"))
                                    .map_or(0, |i| i + 1),
                                column: 5,
                            },
                            format!("flow id `{}` is also the id of {first}", f.id()),
                        )
                        .with_hint("flow ids must be unique: rename one of them"),
                    ],
                }),
                None => {
                    ids.insert(f.id().to_string(), shown);
                    Ok(f)
                }
            }
        });
        match result {
            Ok(f) => {
                ok += 1;
                if !json_out {
                    outln!(
                        "ok: {} ({}: {} steps)",
                        file.display(),
                        f.id(),
                        f.steps.len()
                    );
                }
                report.push(
                    json!({"file": file.display().to_string(), "ok": true, "diagnostics": []}),
                );
            }
            Err(e) => {
                failed += 1;
                if !json_out {
                    eprint!("{}", render_errors(&e));
                }
                report.push(json!({"file": e.file, "ok": false, "diagnostics": e.diagnostics}));
            }
        }
    }
    if json_out {
        print_json(&report);
    } else {
        let summary = format!(
            "checked {} flow file(s): {ok} ok, {} with problems",
            files.len(),
            files.len() - ok
        );
        if failed > 0 {
            eprintln!("{summary}");
        } else {
            outln!("{summary}");
        }
    }
    if failed > 0 { EXIT_INVALID } else { EXIT_OK }
}

/// A child run as `runs show --json` lists it.
fn child_summary(r: &crate::store::RunRecord) -> Value {
    json!({"id": r.id, "flow_id": r.flow_id, "status": r.status, "parent_step": r.parent_step})
}

async fn runs(cmd: RunsCommand) -> Result<i32, CliError> {
    match cmd {
        RunsCommand::List {
            flow,
            status,
            limit,
            json,
            db,
        } => {
            let store = Store::connect(&db.db).await?;
            let status = status
                .map(|s| s.parse::<RunStatus>())
                .transpose()
                .map_err(CliError::invalid)?;
            let runs = store
                .list_runs(&RunFilter {
                    flow_id: flow,
                    status,
                    limit,
                    before: None,
                    ..RunFilter::default()
                })
                .await?;
            if json {
                print_json(&runs);
            } else {
                outln!(
                    "{:<36}  {:<24}  {:<9}  {:<24}  DURATION",
                    "RUN",
                    "FLOW",
                    "STATUS",
                    "CREATED"
                );
                for r in runs {
                    let created = format_ms(r.created_at);
                    let duration = r
                        .finished_at
                        .zip(r.started_at)
                        .map(|(f, s)| format!("{} ms", f - s))
                        .unwrap_or_else(|| "-".into());
                    outln!(
                        "{:<36}  {:<24}  {:<9}  {:<24}  {duration}",
                        r.id,
                        r.flow_id,
                        r.status.as_str(),
                        created
                    );
                }
            }
            Ok(EXIT_OK)
        }
        RunsCommand::Export { id, output, db, .. } => {
            let store = Store::connect(&db.db).await?;
            let (flow_id, file) = crate::testing::export_run(&store, &id)
                .await
                .map_err(CliError::invalid)?;
            let text = serde_saphyr::to_string(&file)
                .map_err(|e| CliError::invalid(format!("cannot write the test file: {e}")))?;
            match output {
                Some(path) => {
                    std::fs::write(&path, &text).map_err(|e| {
                        CliError::invalid(format!("cannot write {}: {e}", path.display()))
                    })?;
                    eprintln!(
                        "wrote {} (a test of flow `{flow_id}`; put it beside {flow_id}.yaml and run `sluice test`)",
                        path.display()
                    );
                }
                None => outln!("{}", text.trim_end()),
            }
            Ok(EXIT_OK)
        }
        RunsCommand::Show { id, json, db } => {
            let store = Store::connect(&db.db).await?;
            let run = store
                .get_run(&id)
                .await?
                .ok_or_else(|| CliError::invalid(format!("no run with id `{id}`")))?;
            let steps = store.steps(&id).await?;
            let attempts = store.attempts(&id).await?;
            let children = store.child_runs(&id).await?;
            let waits = store.waits(&id).await?;
            if json {
                let children: Vec<Value> = children.iter().map(child_summary).collect();
                let waits: Vec<Value> = waits
                    .iter()
                    .map(|w| json!({"step": w.step_id, "signal": w.spec.signal, "event": w.spec.event, "data": w.spec.data, "deadline": w.deadline}))
                    .collect();
                print_json(
                    &json!({"run": run, "steps": steps, "attempts": attempts, "children": children, "waits": waits}),
                );
            } else {
                outln!(
                    "run {}  flow {}@{}  {}",
                    run.id,
                    run.flow_id,
                    run.flow_revision,
                    run.status.as_str()
                );
                if let Some(parent) = &run.parent_run_id {
                    outln!(
                        "parent: run {parent} (step {})",
                        run.parent_step.as_deref().unwrap_or("?")
                    );
                }
                outln!("inputs: {}", run.inputs);
                for s in &steps {
                    let took = s
                        .finished_at
                        .zip(s.started_at)
                        .map(|(f, st)| format!("{} ms", f - st))
                        .unwrap_or_default();
                    let err = s
                        .error
                        .as_ref()
                        .and_then(|e| e.get("message"))
                        .and_then(Value::as_str)
                        .unwrap_or("");
                    outln!(
                        "  {:<24} {:<9} attempts={} {took} {err}",
                        s.step_id,
                        s.status.as_str(),
                        s.attempts
                    );
                    // What a failed step sent (all of it: `--json`).
                    if s.status == crate::store::StepStatus::Failed
                        && let Some(input) = &s.input
                    {
                        let text = input.to_string();
                        let cut: String = text.chars().take(300).collect();
                        let more = if cut.len() < text.len() { " ..." } else { "" };
                        outln!("  {:<24} input: {cut}{more}", "");
                    }
                }
                for w in &waits {
                    let until = w
                        .deadline
                        .and_then(chrono::DateTime::from_timestamp_millis)
                        .map(|d| {
                            format!(
                                " until {}",
                                d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                            )
                        })
                        .unwrap_or_default();
                    let data = if w.spec.data.is_empty() {
                        String::new()
                    } else {
                        let fields: Vec<String> = w
                            .spec
                            .data
                            .iter()
                            .map(|(k, s)| {
                                format!(
                                    "{k}: {}{}",
                                    s.kind.name(),
                                    if s.required { " (required)" } else { "" }
                                )
                            })
                            .collect();
                        format!(" with data {{{}}}", fields.join(", "))
                    };
                    outln!(
                        "waits: step {} for {}{data}{until}",
                        w.step_id,
                        w.spec.describe()
                    );
                    if let Some(name) = &w.spec.signal {
                        outln!(
                            "  answer: sluice runs signal {} {name} --data '{{...}}'",
                            run.id
                        );
                    }
                }
                if !children.is_empty() {
                    outln!("children:");
                    for c in &children {
                        outln!(
                            "  {:<24} run {}  flow {}  {}",
                            c.parent_step.as_deref().unwrap_or("?"),
                            c.id,
                            c.flow_id,
                            c.status.as_str()
                        );
                    }
                }
                if let Some(o) = &run.output {
                    outln!("output:");
                    print_json(o);
                }
                if let Some(e) = &run.error {
                    outln!("error: {e}");
                }
            }
            Ok(EXIT_OK)
        }
        RunsCommand::Resume {
            id,
            revision,
            json,
            db,
        } => {
            let engine = engine(&db).await?;
            match id {
                Some(id) => {
                    let (events, display) = if json {
                        (None, None)
                    } else {
                        progress::start_untitled()
                    };
                    let on = match revision {
                        RevisionArg::Own => crate::run::ResumeRevision::Own,
                        RevisionArg::Latest => crate::run::ResumeRevision::Latest,
                    };
                    let outcome = engine.resume_on(&id, on, events).await;
                    if let Some(d) = display {
                        let _ = d.await;
                    }
                    report(&outcome?, json)
                }
                None => {
                    let results = engine.resume_orphaned(None).await?;
                    let mut code = EXIT_OK;
                    if results.is_empty() {
                        eprintln!("no interrupted runs to resume");
                    }
                    for r in results {
                        match r {
                            Ok(o) => {
                                if report(&o, json)? != EXIT_OK {
                                    code = EXIT_FAILED;
                                }
                            }
                            Err(e) => {
                                eprintln!("error: {e}");
                                code = EXIT_FAILED;
                            }
                        }
                    }
                    Ok(code)
                }
            }
        }
        RunsCommand::Prune {
            older_than,
            failed_older_than,
            keep,
            flow,
            vacuum,
            json,
            db,
        } => {
            let store = Store::connect(&db.db).await?;
            let ms = |d: Option<std::time::Duration>| {
                d.map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            };
            let given = older_than.is_some() || failed_older_than.is_some() || keep.is_some();
            let mut policies = Vec::new();
            if given {
                policies.push(crate::store::Prune {
                    flow_id: flow.clone(),
                    older_than_ms: ms(older_than),
                    failed_older_than_ms: ms(failed_older_than),
                    keep_last: keep.map(|k| i64::try_from(k).unwrap_or(i64::MAX)),
                    except_flows: Vec::new(),
                });
            } else {
                // Each stored flow's own policy (its latest revision).
                let ids = match &flow {
                    Some(f) => vec![f.clone()],
                    None => store.flow_ids().await?,
                };
                for id in ids {
                    let Some(rev) = store.flow_revisions(&id).await?.pop() else {
                        continue;
                    };
                    let Some(f) = crate::yaml::source::parse_yaml(&rev.source)
                        .ok()
                        .and_then(|n| {
                            serde_json::from_value::<crate::flow::Flow>(n.to_json()).ok()
                        })
                    else {
                        continue;
                    };
                    if let Some(p) = f.retention.as_ref().and_then(|r| r.prune(&id)) {
                        policies.push(p);
                    }
                }
                if policies.is_empty() && !vacuum {
                    return Err(CliError::invalid(
                        "nothing to prune by: give --older-than, --failed-older-than or --keep (no stored flow declares `retention:`)",
                    ));
                }
            }
            let mut report = crate::store::PruneReport::default();
            for p in &policies {
                let r = store.prune_runs(p, false).await?;
                report.runs += r.runs;
                report.steps += r.steps;
                report.bytes_freed += r.bytes_freed;
            }
            if vacuum {
                let r = store
                    .prune_runs(&crate::store::Prune::default(), true)
                    .await?;
                report.bytes_freed += r.bytes_freed;
            }
            if json {
                print_json(&report);
            } else {
                outln!(
                    "deleted {} run(s) and {} step result(s); the database file gave back {} bytes",
                    report.runs,
                    report.steps,
                    report.bytes_freed
                );
            }
            Ok(EXIT_OK)
        }
        RunsCommand::Signal {
            id,
            signal,
            data,
            no_resume,
            json,
            db,
        } => {
            let data: Value = serde_json::from_str(&data).map_err(|e| {
                CliError::invalid(format!(
                    "--data is not JSON: {e} (e.g. '{{\"approved\": true}}')"
                ))
            })?;
            let engine = engine(&db).await?;
            let done = engine.signal(&id, &signal, &data).await?;
            eprintln!(
                "run {id}: step `{}` received signal `{signal}`",
                done.step_id
            );
            if no_resume {
                if json {
                    print_json(&done);
                }
                return Ok(EXIT_OK);
            }
            let (events, display) = if json {
                (None, None)
            } else {
                progress::start_untitled()
            };
            let outcome = engine.resume(&id, events).await;
            if let Some(d) = display {
                let _ = d.await;
            }
            match outcome {
                Ok(o) => report(&o, json),
                Err(crate::run::RunError::Held { .. }) => {
                    eprintln!("run {id} goes on in the process that holds it (a server)");
                    Ok(EXIT_OK)
                }
                Err(e) => Err(e.into()),
            }
        }
        RunsCommand::Cancel { id, db } => {
            let engine = engine(&db).await?;
            if engine.cancel(&id).await? {
                eprintln!("cancellation of run {id} requested");
                Ok(EXIT_OK)
            } else {
                Err(CliError::invalid(format!(
                    "run `{id}` is not queued or running"
                )))
            }
        }
    }
}
