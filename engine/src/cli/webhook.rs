//! `sluice webhook ...`: endpoints, messages, attempts, resends, delivery.

use std::time::Duration;

use clap::Subcommand;
use serde_json::json;

use super::{CliError, DbArgs, EXIT_OK, format_ms, print_json};
use crate::store::{MessageFilter, MessageStatus, Store};
use crate::webhooks::delivery::{DeliveryConfig, DeliveryWorker};
use crate::webhooks::endpoints::{self, EndpointError, NewEndpoint};

#[derive(Subcommand, Debug)]
pub(super) enum WebhookCommand {
    /// Manage endpoints.
    Endpoint {
        #[command(subcommand)]
        command: EndpointCommand,
    },
    /// List outbox messages, newest first.
    Messages {
        /// Only this endpoint.
        #[arg(long)]
        endpoint: Option<String>,
        /// Only this status: pending, delivering, delivered, failed.
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
    /// Show the delivery attempts of a message.
    Attempts {
        /// Message id.
        message: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Queue a delivered or failed message again.
    Resend {
        /// Message id.
        message: String,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Run the delivery worker (until interrupted; `--once`: until nothing is due).
    Deliver {
        /// Deliver what is due now, then exit.
        #[arg(long)]
        once: bool,
        #[command(flatten)]
        db: DbArgs,
    },
}

#[derive(Subcommand, Debug)]
pub(super) enum EndpointCommand {
    /// Add an endpoint; prints its id and secret.
    Add {
        /// The receiver's URL (https, or http to an allow-listed host).
        url: String,
        /// `whsec_...` secret; generated when absent.
        #[arg(long)]
        secret: Option<String>,
        /// Event types (exact or `prefix.*`), comma-separated; all when absent.
        #[arg(long, value_delimiter = ',')]
        events: Vec<String>,
        /// Only events about this connection.
        #[arg(long)]
        connection: Option<String>,
        /// What it is for.
        #[arg(long)]
        description: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: DbArgs,
    },
    /// List endpoints.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Replace an endpoint's secret; the old one keeps signing for 24 h.
    Rotate {
        /// Endpoint id.
        id: String,
        /// New `whsec_...` secret; generated when absent.
        #[arg(long)]
        secret: Option<String>,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Stop sending to an endpoint.
    Disable {
        /// Endpoint id.
        id: String,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Resume sending to an endpoint.
    Enable {
        /// Endpoint id.
        id: String,
        #[command(flatten)]
        db: DbArgs,
    },
}

impl From<EndpointError> for CliError {
    fn from(e: EndpointError) -> Self {
        match e {
            EndpointError::Store(s) => CliError::from(s),
            other => CliError::invalid(other.to_string()),
        }
    }
}

fn config() -> Result<DeliveryConfig, CliError> {
    DeliveryConfig::from_env().map_err(CliError::invalid)
}

pub(super) async fn dispatch(cmd: WebhookCommand) -> Result<i32, CliError> {
    match cmd {
        WebhookCommand::Endpoint { command } => endpoint(command).await,
        WebhookCommand::Messages {
            endpoint,
            status,
            limit,
            json,
            db,
        } => {
            let store = Store::connect(&db.db).await?;
            let status = status
                .map(|s| s.parse::<MessageStatus>())
                .transpose()
                .map_err(CliError::invalid)?;
            let list = store
                .messages(&MessageFilter {
                    endpoint_id: endpoint,
                    status,
                    limit,
                })
                .await?;
            if json {
                print_json(&list);
            } else {
                outln!(
                    "{:<36}  {:<30}  {:<24}  {:<10}  {:>8}  CREATED",
                    "MESSAGE",
                    "EVENT",
                    "TYPE",
                    "STATUS",
                    "ATTEMPTS"
                );
                for m in list {
                    outln!(
                        "{:<36}  {:<30}  {:<24}  {:<10}  {:>8}  {}",
                        m.id,
                        m.event_id,
                        m.event_type,
                        m.status.as_str(),
                        m.attempts,
                        format_ms(m.created_at)
                    );
                }
            }
            Ok(EXIT_OK)
        }
        WebhookCommand::Attempts { message, json, db } => {
            let store = Store::connect(&db.db).await?;
            if store.message(&message).await?.is_none() {
                return Err(CliError::invalid(format!(
                    "no webhook message with id `{message}`"
                )));
            }
            let attempts = store.message_attempts(&message).await?;
            if json {
                print_json(&attempts);
            } else {
                for a in attempts {
                    let status = a
                        .status_code
                        .map(|c| c.to_string())
                        .unwrap_or_else(|| "-".into());
                    outln!(
                        "#{} {} status={} {} ms {}",
                        a.attempt,
                        format_ms(a.started_at),
                        status,
                        a.latency_ms,
                        a.error.unwrap_or_default()
                    );
                }
            }
            Ok(EXIT_OK)
        }
        WebhookCommand::Resend { message, db } => {
            let store = Store::connect(&db.db).await?;
            if store.resend_message(&message).await? {
                eprintln!("message {message} queued again; `sluice webhook deliver` sends it");
                Ok(EXIT_OK)
            } else {
                Err(CliError::invalid(format!(
                    "no delivered or failed webhook message with id `{message}`"
                )))
            }
        }
        WebhookCommand::Deliver { once, db } => {
            let store = Store::connect(&db.db).await?;
            let worker = DeliveryWorker::new(store, config()?).map_err(CliError::failed)?;
            if once {
                let r = worker.drain(Duration::from_secs(600)).await?;
                eprintln!(
                    "{} delivery attempt(s); {} message(s) waiting for a later retry",
                    r.attempts, r.waiting
                );
            } else {
                eprintln!("delivering webhooks; Ctrl-C stops");
                worker
                    .run_until(async {
                        let _ = tokio::signal::ctrl_c().await;
                    })
                    .await;
            }
            Ok(EXIT_OK)
        }
    }
}

async fn endpoint(cmd: EndpointCommand) -> Result<i32, CliError> {
    match cmd {
        EndpointCommand::Add {
            url,
            secret,
            events,
            connection,
            description,
            json,
            db,
        } => {
            let store = Store::connect(&db.db).await?;
            let e = endpoints::add(
                &store,
                &config()?.policy,
                NewEndpoint {
                    url,
                    secret,
                    event_types: events,
                    connection_id: connection,
                    description,
                },
            )
            .await?;
            if json {
                print_json(
                    &json!({"id": e.id, "url": e.url, "secret": e.secret.to_text(), "event_types": e.event_types}),
                );
            } else {
                outln!("endpoint {}\nsecret   {}", e.id, e.secret.to_text());
            }
            Ok(EXIT_OK)
        }
        EndpointCommand::List { json, db } => {
            let store = Store::connect(&db.db).await?;
            let list = store.endpoints().await?;
            if json {
                print_json(&list);
            } else {
                outln!(
                    "{:<36}  {:<8}  {:<24}  URL",
                    "ENDPOINT",
                    "ENABLED",
                    "EVENTS"
                );
                for e in list {
                    let events = if e.event_types.is_empty() {
                        "*".to_string()
                    } else {
                        e.event_types.join(",")
                    };
                    outln!("{:<36}  {:<8}  {:<24}  {}", e.id, e.enabled, events, e.url);
                }
            }
            Ok(EXIT_OK)
        }
        EndpointCommand::Rotate { id, secret, db } => {
            let store = Store::connect(&db.db).await?;
            let s = endpoints::rotate(&store, &id, secret.as_deref()).await?;
            outln!("{}", s.to_text());
            eprintln!("the previous secret keeps signing for 24 h");
            Ok(EXIT_OK)
        }
        EndpointCommand::Disable { id, db } => {
            let store = Store::connect(&db.db).await?;
            endpoints::set_enabled(&store, &id, false).await?;
            eprintln!("endpoint {id} disabled");
            Ok(EXIT_OK)
        }
        EndpointCommand::Enable { id, db } => {
            let store = Store::connect(&db.db).await?;
            endpoints::set_enabled(&store, &id, true).await?;
            eprintln!("endpoint {id} enabled");
            Ok(EXIT_OK)
        }
    }
}
