//! `sluice connection add|list|test|status|remove` and `sluice connector list|validate`.

use std::path::PathBuf;
use std::sync::Arc;

use clap::Subcommand;
use serde_json::json;

use super::{CliError, DbArgs, EXIT_FAILED, EXIT_INVALID, EXIT_OK, format_ms, print_json};
use crate::connectors::connection::{self, StoreSink, status_name};
use crate::connectors::definition::{self, Definitions, RateLimit};
use crate::connectors::http::ConnectionConfig;
use crate::connectors::resilience::{Policy, StatusSink};
use crate::expr::secrets::Secrets;
use crate::store::Store;
use crate::sync::SyncSchedule;

/// Where user definitions live: `SLUICE_CONNECTORS_DIR`, else `./connectors`.
pub(super) fn definitions_dir() -> PathBuf {
    std::env::var_os("SLUICE_CONNECTORS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("connectors"))
}

/// Built-in definitions plus the user's. A file that is not a valid
/// definition is reported (once per command, on stderr) and skipped.
pub(super) fn definitions() -> Result<Definitions, CliError> {
    let (defs, broken) = Definitions::load(Some(&definitions_dir())).map_err(|e| {
        eprint!("{}", super::render_errors(&e));
        CliError {
            message: format!("{}: cannot read the connector definitions", e.file),
            code: EXIT_INVALID,
        }
    })?;
    for e in &broken {
        let first = e
            .diagnostics
            .first()
            .map(|d| d.to_string())
            .unwrap_or_default();
        let more = match e.diagnostics.len() {
            0 | 1 => String::new(),
            n => format!(" (and {} more)", n - 1),
        };
        eprintln!(
            "warning: skipped {}: not a valid connector definition: {first}{more}; `sluice connector validate {}` shows every problem",
            e.file, e.file
        );
    }
    Ok(defs)
}

#[derive(Subcommand, Debug)]
pub(super) enum ConnectionCommand {
    /// Add a connection: a definition plus parameters and credentials from secrets.
    Add {
        /// Connection id, as flows name it.
        id: String,
        /// Definition id (see `sluice connector list`).
        #[arg(long)]
        definition: String,
        /// A parameter, NAME=VALUE. Repeatable.
        #[arg(long = "param", short = 'p', value_name = "NAME=VALUE")]
        params: Vec<String>,
        /// A credential taken from secret SLUICE_SECRET_<SECRET>, as NAME=SECRET. Repeatable.
        #[arg(long = "credential", short = 'c', value_name = "NAME=SECRET")]
        credentials: Vec<String>,
        /// Rate limit, requests per second.
        #[arg(long)]
        rate_limit: Option<f64>,
        /// Burst of the rate limit.
        #[arg(long)]
        burst: Option<u32>,
        /// Retry, breaker and timeout settings as JSON, e.g. '{"max_attempts": 3, "failure_threshold": 5}'.
        #[arg(long)]
        policy: Option<String>,
        /// An incremental sync that `sluice serve` runs on a schedule, as
        /// ENTITY=CRON (e.g. 'purchase_order=*/15 * * * *'). Repeatable.
        #[arg(long = "sync", value_name = "ENTITY=CRON")]
        syncs: Vec<String>,
        /// A scheduled full re-sync (detects deletions), as ENTITY=CRON. Repeatable.
        #[arg(long = "full-sync", value_name = "ENTITY=CRON")]
        full_syncs: Vec<String>,
        /// IANA time zone of the sync schedules (default UTC).
        #[arg(long = "sync-timezone", value_name = "TZ")]
        sync_timezone: Option<String>,
        /// Replace an existing connection of that id.
        #[arg(long)]
        replace: bool,
        #[command(flatten)]
        db: DbArgs,
    },
    /// List connections with their status.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Make one cheap authenticated call and report what failed.
    Test {
        /// Connection id.
        id: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Show a connection's status and its history.
    Status {
        /// Connection id.
        id: String,
        /// History entries shown.
        #[arg(long, default_value_t = 20)]
        limit: i64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Remove a connection.
    Remove {
        /// Connection id.
        id: String,
        #[command(flatten)]
        db: DbArgs,
    },
}

#[derive(Subcommand, Debug)]
pub(super) enum ConnectorCommand {
    /// List connector definitions (built-in and from SLUICE_CONNECTORS_DIR or ./connectors).
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check definition files; exit 2 on any problem.
    Validate {
        /// Definition files, or directories of them (every `*.yaml` and
        /// `*.yml` below, e.g. `connectors/`).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

fn pairs(items: &[String], what: &str) -> Result<Vec<(String, String)>, CliError> {
    items
        .iter()
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.trim().to_string(), v.to_string()))
                .ok_or_else(|| CliError {
                    message: format!("{what} `{p}` is not NAME=VALUE"),
                    code: EXIT_INVALID,
                })
        })
        .collect()
}

pub(super) async fn dispatch_connector(cmd: ConnectorCommand) -> Result<i32, CliError> {
    match cmd {
        ConnectorCommand::List { json: as_json } => {
            let defs = definitions()?;
            let rows: Vec<_> = defs
                .iter()
                .map(|d| {
                    let entities: Vec<_> = d
                        .entities
                        .iter()
                        .map(|(e, c)| {
                            let mut ops = Vec::new();
                            for (name, has) in [
                                ("list", c.spec.list.is_some()),
                                ("get", c.spec.get.is_some()),
                                ("create", c.spec.create.is_some()),
                                ("update", c.spec.update.is_some()),
                                ("delete", c.spec.delete.is_some()),
                            ] {
                                if has {
                                    ops.push(name);
                                }
                            }
                            json!({"entity": e.name(), "operations": ops})
                        })
                        .collect();
                    json!({
                        "id": d.def.id,
                        "name": d.def.name,
                        "file": d.file,
                        "parameters": d.def.parameters.iter().map(|(k, p)| json!({"name": k, "required": p.default.is_none(), "default": p.default})).collect::<Vec<_>>(),
                        "credentials": d.def.credentials,
                        "entities": entities,
                    })
                })
                .collect();
            if as_json {
                print_json(&rows);
            } else {
                for r in &rows {
                    outln!(
                        "{}  {}",
                        r["id"].as_str().unwrap_or(""),
                        r["name"].as_str().unwrap_or("")
                    );
                    for e in r["entities"].as_array().into_iter().flatten() {
                        let ops: Vec<&str> = e["operations"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|o| o.as_str())
                            .collect();
                        outln!(
                            "    {:<16} {}",
                            e["entity"].as_str().unwrap_or(""),
                            ops.join(", ")
                        );
                    }
                }
            }
            Ok(EXIT_OK)
        }
        ConnectorCommand::Validate { files } => {
            let mut failed = false;
            let mut expanded = Vec::new();
            for f in files {
                if f.is_dir() {
                    let found = crate::flow::files_under(&f, &|p| {
                        p.extension().is_some_and(|x| x == "yaml" || x == "yml")
                    });
                    if found.is_empty() {
                        failed = true;
                        eprintln!(
                            "{}: no connector definitions (*.yaml, *.yml) in this directory",
                            f.display()
                        );
                    }
                    expanded.extend(found);
                } else {
                    expanded.push(f);
                }
            }
            for f in expanded {
                match definition::load_file(&f) {
                    Ok(d) => eprintln!(
                        "ok: {} ({}: {} entities)",
                        f.display(),
                        d.def.id,
                        d.entities.len()
                    ),
                    Err(e) => {
                        failed = true;
                        eprint!("{}", super::render_errors(&e));
                    }
                }
            }
            Ok(if failed { EXIT_INVALID } else { EXIT_OK })
        }
    }
}

pub(super) async fn dispatch(cmd: ConnectionCommand) -> Result<i32, CliError> {
    match cmd {
        ConnectionCommand::Add {
            id,
            definition,
            params,
            credentials,
            rate_limit,
            burst,
            policy,
            syncs,
            full_syncs,
            sync_timezone,
            replace,
            db,
        } => {
            let defs = definitions()?;
            let tz = sync_timezone.as_deref();
            let schedules = syncs
                .iter()
                .map(|t| SyncSchedule::parse(t, false, tz))
                .chain(full_syncs.iter().map(|t| SyncSchedule::parse(t, true, tz)))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|message| CliError {
                    message,
                    code: EXIT_INVALID,
                })?;
            let policy = match policy {
                Some(p) => serde_json::from_str::<Policy>(&p).map_err(|e| CliError {
                    message: format!("--policy: {e}"),
                    code: EXIT_INVALID,
                })?,
                None => Policy::default(),
            };
            let config = ConnectionConfig {
                definition,
                params: pairs(&params, "--param")?.into_iter().collect(),
                credentials: pairs(&credentials, "--credential")?.into_iter().collect(),
                rate_limit: rate_limit.map(|r| RateLimit {
                    requests_per_second: r,
                    burst,
                }),
                policy,
                syncs: schedules,
                guarded: false,
            };
            let store = Store::connect(&db.db).await?;
            connection::add(&store, &defs, &id, &config, replace)
                .await
                .map_err(|m| CliError {
                    message: m,
                    code: EXIT_INVALID,
                })?;
            let secrets = Secrets::from_env();
            let missing: Vec<String> = config
                .credentials
                .values()
                .filter(|s| secrets.get(s).is_none())
                .map(|s| format!("SLUICE_SECRET_{s}"))
                .collect();
            eprintln!("added connection `{id}` ({})", config.definition);
            for s in &config.syncs {
                eprintln!(
                    "  {} sync of {} on `{}` ({}), run by `sluice serve`",
                    s.mode().name(),
                    s.entity,
                    s.cron,
                    s.timezone.as_deref().unwrap_or("UTC")
                );
            }
            if !missing.is_empty() {
                eprintln!(
                    "note: {} not set in this environment; set it where flows run",
                    missing.join(", ")
                );
            }
            Ok(EXIT_OK)
        }
        ConnectionCommand::List { json: as_json, db } => {
            let store = Store::connect(&db.db).await?;
            let rows = store.connections().await?;
            if as_json {
                let out: Vec<_> = rows
                    .iter()
                    .map(|r| {
                        json!({
                            "id": r.id,
                            "definition": r.definition,
                            "status": r.status,
                            "status_reason": r.status_reason,
                            "status_at": format_ms(r.status_at),
                        })
                    })
                    .collect();
                print_json(&out);
            } else {
                outln!("{:<20} {:<18} {:<14} SINCE", "ID", "DEFINITION", "STATUS");
                outln!("{:<20} {:<18} {:<14} -", "sandbox", "(built-in)", "online");
                for r in rows {
                    outln!(
                        "{:<20} {:<18} {:<14} {}",
                        r.id,
                        r.definition,
                        r.status,
                        format_ms(r.status_at)
                    );
                }
            }
            Ok(EXIT_OK)
        }
        ConnectionCommand::Test {
            id,
            json: as_json,
            db,
        } => {
            if id == SANDBOX {
                return test_sandbox(as_json).await;
            }
            let store = Store::connect(&db.db).await?;
            let defs = definitions()?;
            let row = store
                .connection(&id)
                .await?
                .ok_or_else(|| CliError::failed(format!("no connection `{id}`")))?;
            let sink = StoreSink::start(store.clone());
            let c = connection::build(
                &row,
                &defs,
                &Secrets::from_env(),
                Some(sink.clone() as Arc<dyn StatusSink>),
            )
            .map_err(CliError::failed)?;
            let result = c.test().await;
            let status = c.health_state().status();
            drop(c);
            // The status change and its events are written before the
            // command exits.
            sink.flush().await;
            match result {
                Ok(latency) => {
                    if as_json {
                        print_json(
                            &json!({"ok": true, "connection": id, "latency_ms": latency.as_millis() as u64, "status": status_name(status)}),
                        );
                    } else {
                        outln!(
                            "ok: {id} answered in {} ms (status {})",
                            latency.as_millis(),
                            status_name(status)
                        );
                    }
                    Ok(EXIT_OK)
                }
                Err(e) => {
                    if as_json {
                        print_json(
                            &json!({"ok": false, "connection": id, "error": e.details(), "message": e.message, "status": status_name(status)}),
                        );
                    } else {
                        eprintln!(
                            "failed: {}: {} (status {})",
                            e.code(),
                            e.message,
                            status_name(status)
                        );
                    }
                    Ok(EXIT_FAILED)
                }
            }
        }
        ConnectionCommand::Status {
            id,
            limit,
            json: as_json,
            db,
        } => {
            if id == SANDBOX {
                // Built-in sample data: always online, no history.
                if as_json {
                    print_json(&json!({
                        "id": SANDBOX, "definition": "sandbox", "status": "online",
                        "reason": null, "since": null, "history": [],
                    }));
                } else {
                    outln!("{SANDBOX}: online (built-in sample data; its status never changes)");
                }
                return Ok(EXIT_OK);
            }
            let store = Store::connect(&db.db).await?;
            let row = store
                .connection(&id)
                .await?
                .ok_or_else(|| CliError::failed(format!("no connection `{id}`")))?;
            let history = store.status_history(&id, limit).await?;
            if as_json {
                print_json(&json!({
                    "id": row.id,
                    "definition": row.definition,
                    "status": row.status,
                    "reason": row.status_reason,
                    "since": format_ms(row.status_at),
                    "history": history.iter().map(|h| json!({"from": h.from, "to": h.to, "reason": h.reason, "at": format_ms(h.at)})).collect::<Vec<_>>(),
                }));
            } else {
                outln!(
                    "{}: {} since {}{}",
                    row.id,
                    row.status,
                    format_ms(row.status_at),
                    row.status_reason
                        .as_ref()
                        .map(|r| format!(" ({r})"))
                        .unwrap_or_default()
                );
                for h in history {
                    outln!(
                        "  {}  {} -> {}  {}",
                        format_ms(h.at),
                        h.from,
                        h.to,
                        h.reason
                    );
                }
            }
            Ok(EXIT_OK)
        }
        ConnectionCommand::Remove { id, db } => {
            if id == SANDBOX {
                return Err(CliError {
                    message: "`sandbox` is the built-in connection; it cannot be removed".into(),
                    code: EXIT_INVALID,
                });
            }
            let store = Store::connect(&db.db).await?;
            if store.remove_connection(&id).await? {
                eprintln!("removed connection `{id}`");
                Ok(EXIT_OK)
            } else {
                Err(CliError::failed(format!("no connection `{id}`")))
            }
        }
    }
}

/// The built-in sandbox connection's id.
const SANDBOX: &str = crate::connectors::sandbox::CONNECTION;

/// `connection test sandbox`: lists one record of the sample data, as a
/// live check of another connection would.
async fn test_sandbox(as_json: bool) -> Result<i32, CliError> {
    use crate::connectors::Connector;
    let started = std::time::Instant::now();
    let query = crate::connectors::ListQuery {
        limit: Some(1),
        ..Default::default()
    };
    crate::connectors::sandbox::SandboxConnector::new()
        .list(crate::unified::Entity::PurchaseOrder, &query)
        .await
        .map_err(|e| CliError::failed(e.message))?;
    let ms = started.elapsed().as_millis() as u64;
    if as_json {
        print_json(
            &json!({"ok": true, "connection": SANDBOX, "latency_ms": ms, "status": "online"}),
        );
    } else {
        outln!("ok: {SANDBOX} answered in {ms} ms (status online; built-in sample data)");
    }
    Ok(EXIT_OK)
}
