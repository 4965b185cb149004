//! `sluice sync start CONNECTION ENTITY [--full]` and `sluice sync status`.

use std::io::IsTerminal;
use std::sync::Arc;

use clap::Subcommand;
use serde_json::json;

use super::{CliError, DbArgs, EXIT_FAILED, EXIT_INVALID, EXIT_OK, format_ms, print_json};
use crate::connectors::connection::{self, StoreSink};
use crate::connectors::resilience::StatusSink;
use crate::expr::secrets::Secrets;
use crate::store::Store;
use crate::sync::{self, Mode, Progress, SyncError, SyncOptions};
use crate::unified::Entity;

#[derive(Subcommand, Debug)]
pub(super) enum SyncCommand {
    /// Sync one entity of a connection into the record cache.
    Start {
        /// Connection id.
        connection: String,
        /// Entity (`purchase_order`, `work_order`, `vendor`, `inventory_item`, `asset`).
        entity: String,
        /// Full re-sync: ignore the cursor and detect deletions.
        #[arg(long)]
        full: bool,
        /// Records per page.
        #[arg(long, default_value_t = 500)]
        page_size: usize,
        /// A full sync looks only at records changed within this window (e.g. 90d).
        #[arg(long, value_parser = humantime::parse_duration)]
        window: Option<std::time::Duration>,
        /// Subtracted from the cursor to cover clock skew.
        #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
        lookback: std::time::Duration,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: DbArgs,
    },
    /// The sync state of every connection and entity.
    Status {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: DbArgs,
    },
}

pub(super) async fn dispatch(cmd: SyncCommand) -> Result<i32, CliError> {
    match cmd {
        SyncCommand::Start {
            connection: conn_id,
            entity,
            full,
            page_size,
            window,
            lookback,
            json: as_json,
            db,
        } => {
            let entity: Entity = entity.parse().map_err(|m: String| CliError {
                message: m,
                code: EXIT_INVALID,
            })?;
            let store = Store::connect(&db.db).await?;
            // The built-in sandbox syncs like any connection (from its
            // records' timestamps); it is not a stored connection.
            let c: Arc<dyn crate::connectors::Connector> = if conn_id
                == crate::connectors::sandbox::CONNECTION
            {
                Arc::new(crate::connectors::sandbox::SandboxConnector::new())
            } else {
                let defs = super::connection::definitions()?;
                let row = store.connection(&conn_id).await?.ok_or_else(|| CliError {
                    message: format!("no connection `{conn_id}` (see `sluice connection list`)"),
                    code: EXIT_INVALID,
                })?;
                let sink = StoreSink::start(store.clone());
                Arc::new(
                    connection::build(
                        &row,
                        &defs,
                        &Secrets::from_env(),
                        Some(sink as Arc<dyn StatusSink>),
                    )
                    .map_err(CliError::failed)?,
                )
            };
            let opts = SyncOptions {
                mode: if full { Mode::Full } else { Mode::Incremental },
                page_size: page_size.max(1),
                lookback,
                history_window: window,
                ..SyncOptions::default()
            };
            let bar = std::io::stderr().is_terminal().then(|| {
                let b = indicatif::ProgressBar::new_spinner();
                b.set_message(format!("syncing {conn_id}/{entity}"));
                b
            });
            let report = |p: &Progress| {
                if let Some(b) = &bar {
                    b.set_message(format!(
                        "syncing {conn_id}/{entity}: {} records, {} pages",
                        p.records, p.pages
                    ));
                    b.tick();
                }
            };
            let result =
                sync::run(&store, c.as_ref(), &conn_id, entity, &opts, Some(&report)).await;
            // A connection that entered `auth_required` is recorded and
            // announced before the process exits.
            crate::connectors::connection::flush_status_writes().await;
            if let Some(b) = &bar {
                b.finish_and_clear();
            }
            // Let status changes reach the store.
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            match result {
                Ok(r) => {
                    if as_json {
                        print_json(&r);
                    } else {
                        outln!(
                            "{} sync of {}/{} {}: {} added, {} updated, {} unchanged, {} deleted in {} pages, {} ms; cursor {}",
                            r.mode.name(),
                            r.connection_id,
                            r.entity,
                            if r.resumed { "(resumed)" } else { "done" },
                            r.added,
                            r.updated,
                            r.unchanged,
                            r.deleted,
                            r.pages,
                            r.duration_ms,
                            r.cursor.as_deref().unwrap_or("-")
                        );
                    }
                    Ok(EXIT_OK)
                }
                Err(e @ SyncError::AlreadyRunning { .. }) => Err(CliError::failed(e.to_string())),
                Err(e) => {
                    if as_json {
                        print_json(&json!({"ok": false, "error": e.to_string()}));
                    }
                    eprintln!("{e}; the next `sluice sync start` resumes from the last saved page");
                    Ok(EXIT_FAILED)
                }
            }
        }
        SyncCommand::Status { json: as_json, db } => {
            let store = Store::connect(&db.db).await?;
            let states = store.sync_states().await?;
            if as_json {
                print_json(&states);
            } else {
                outln!(
                    "{:<18} {:<15} {:<8} {:<12} {:<20} {:<20} COUNTS",
                    "CONNECTION",
                    "ENTITY",
                    "STATE",
                    "MODE",
                    "LAST SUCCESS",
                    "CURSOR"
                );
                for s in states {
                    outln!(
                        "{:<18} {:<15} {:<8} {:<12} {:<20} {:<20} {}{}",
                        s.connection_id,
                        s.entity,
                        s.state,
                        s.mode.as_deref().unwrap_or("-"),
                        s.last_success_at
                            .map(format_ms)
                            .unwrap_or_else(|| "-".into()),
                        s.cursor_ms.map(format_ms).unwrap_or_else(|| "-".into()),
                        s.counts.as_deref().unwrap_or("-"),
                        s.last_error
                            .as_deref()
                            .filter(|_| s.state == "failed")
                            .map(|e| format!("  error: {e}"))
                            .unwrap_or_default()
                    );
                }
                print_schedules(&store).await?;
            }
            Ok(EXIT_OK)
        }
    }
}

/// Lists the connections' sync schedules with their next tick (run by `sluice serve`).
async fn print_schedules(store: &Store) -> Result<(), CliError> {
    let mut rows = Vec::new();
    for c in store.connections().await? {
        let Ok(config) =
            serde_json::from_str::<crate::connectors::http::ConnectionConfig>(&c.config)
        else {
            continue;
        };
        for s in config.syncs {
            let next = crate::schedule::parse_cron(&s.cron)
                .ok()
                .zip(crate::schedule::parse_timezone(s.timezone.as_deref()).ok())
                .and_then(|(cron, tz)| crate::schedule::next_after(&cron, tz, chrono::Utc::now()))
                .map(|t| format_ms(t.timestamp_millis()))
                .unwrap_or_else(|| "-".into());
            rows.push((c.id.clone(), s, next));
        }
    }
    if rows.is_empty() {
        return Ok(());
    }
    outln!();
    outln!(
        "{:<18} {:<15} {:<12} {:<20} {:<16} NEXT (run by `sluice serve`)",
        "SCHEDULED",
        "ENTITY",
        "MODE",
        "CRON",
        "TIME ZONE"
    );
    for (id, s, next) in rows {
        outln!(
            "{:<18} {:<15} {:<12} {:<20} {:<16} {}",
            id,
            s.entity,
            s.mode().name(),
            s.cron,
            s.timezone.as_deref().unwrap_or("UTC"),
            next
        );
    }
    Ok(())
}
