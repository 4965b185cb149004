//! Connections: a definition + parameters + credentials from secrets, stored
//! in the `connections` table, made into [`HttpConnector`]s for the engine.
//!
//! Status changes are recorded in the store (current status and history)
//! and emitted as `connection.status_changed` events to webhook endpoints.

use std::sync::Arc;

use serde_json::json;
use tokio::sync::mpsc;

use super::definition::Definitions;
use super::http::{ConnectionConfig, HttpConnector};
use super::resilience::{Health, StatusChange, StatusSink};
use super::{ConnectionStatus, ConnectorRegistry};
use crate::expr::secrets::Secrets;
use crate::store::{ConnectionRow, StatusEvent, Store};

/// The name of a status as stored and shown.
pub fn status_name(s: ConnectionStatus) -> &'static str {
    match s {
        ConnectionStatus::Online => "online",
        ConnectionStatus::Degraded => "degraded",
        ConnectionStatus::Offline => "offline",
        ConnectionStatus::AuthRequired => "auth_required",
    }
}

/// Parses a stored status (unknown text reads as `online`).
pub fn parse_status(s: &str) -> ConnectionStatus {
    match s {
        "degraded" => ConnectionStatus::Degraded,
        "offline" => ConnectionStatus::Offline,
        "auth_required" => ConnectionStatus::AuthRequired,
        _ => ConnectionStatus::Online,
    }
}

/// Writes status changes to the store, in order, from a background task.
pub struct StoreSink {
    tx: mpsc::UnboundedSender<SinkMessage>,
}

enum SinkMessage {
    Change(StatusChange),
    /// Answered once every change sent before it is written.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// The sinks of this process, for [`flush_status_writes`].
static SINKS: std::sync::Mutex<Vec<std::sync::Weak<StoreSink>>> = std::sync::Mutex::new(Vec::new());

/// Waits until every status change reported so far is written, with its
/// events (`connection.status_changed`, `connection.auth_required`). A
/// command that exits after a run calls it, so a connection that entered
/// `auth_required` during the run is recorded and announced.
pub async fn flush_status_writes() {
    let sinks: Vec<Arc<StoreSink>> = {
        let mut all = SINKS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        all.retain(|w| w.strong_count() > 0);
        all.iter().filter_map(std::sync::Weak::upgrade).collect()
    };
    for sink in sinks {
        sink.flush().await;
    }
}

impl StoreSink {
    /// Waits until every change sent before is written.
    pub async fn flush(&self) {
        let (tx, rx) = tokio::sync::oneshot::channel();
        if self.tx.send(SinkMessage::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Starts the writer task (needs a tokio runtime).
    pub fn start(store: Store) -> Arc<StoreSink> {
        let (tx, mut rx) = mpsc::unbounded_channel::<SinkMessage>();
        tokio::spawn(async move {
            while let Some(m) = rx.recv().await {
                let c = match m {
                    SinkMessage::Change(c) => c,
                    SinkMessage::Flush(done) => {
                        let _ = done.send(());
                        continue;
                    }
                };
                let at = c.at.timestamp_millis();
                let event = StatusEvent {
                    connection_id: c.connection_id.clone(),
                    from: status_name(c.from).into(),
                    to: status_name(c.to).into(),
                    reason: c.reason.clone(),
                    at,
                };
                if let Err(e) = store.record_status_change(&event).await {
                    tracing::warn!(connection = %c.connection_id, error = %e, "cannot record a connection status change");
                }
                let key = format!("connection:{}:{}:{at}", c.connection_id, event.to);
                let data = json!({
                    "connection_id": c.connection_id,
                    "from": event.from,
                    "status": event.to,
                    "reason": c.reason,
                    "at": c.at.to_rfc3339(),
                });
                if let Err(e) = crate::webhooks::emit(
                    &store,
                    &key,
                    "connection.status_changed",
                    Some(&c.connection_id),
                    data,
                )
                .await
                {
                    tracing::warn!(connection = %c.connection_id, error = %e, "cannot emit connection.status_changed");
                }
                // Credentials refused (or a token refresh refused): someone
                // has to give the connection new ones.
                if event.to == "auth_required" && event.from != "auth_required" {
                    let data = json!({
                        "connection_id": c.connection_id,
                        "reason": c.reason,
                        "at": c.at.to_rfc3339(),
                    });
                    if let Err(e) = crate::webhooks::emit(
                        &store,
                        // Not the status_changed key (`connection:ID:auth_required:AT`):
                        // the same key is the same event id, and an endpoint
                        // taking both would get only the first.
                        &format!("connection-auth:{}:{at}", c.connection_id),
                        "connection.auth_required",
                        Some(&c.connection_id),
                        data,
                    )
                    .await
                    {
                        tracing::warn!(connection = %c.connection_id, error = %e, "cannot emit connection.auth_required");
                    }
                }
            }
        });
        let sink = Arc::new(StoreSink { tx });
        SINKS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(Arc::downgrade(&sink));
        sink
    }
}

impl StatusSink for StoreSink {
    fn changed(&self, change: StatusChange) {
        let _ = self.tx.send(SinkMessage::Change(change));
    }
}

/// Checks a connection id: letters, digits, `-`, `_`; not `sandbox`.
pub fn check_id(id: &str) -> Result<(), String> {
    if id.is_empty()
        || id.len() > 64
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(format!(
            "invalid connection id `{id}`: use up to 64 letters, digits, `-` and `_`"
        ));
    }
    if id == super::sandbox::CONNECTION {
        return Err("`sandbox` is the built-in connection; choose another id".into());
    }
    Ok(())
}

/// Makes a connector from a stored row.
pub fn build(
    row: &ConnectionRow,
    defs: &Definitions,
    secrets: &Secrets,
    sink: Option<Arc<dyn StatusSink>>,
) -> Result<HttpConnector, String> {
    let config: ConnectionConfig = serde_json::from_str(&row.config)
        .map_err(|e| format!("connection `{}`: stored config is unreadable: {e}", row.id))?;
    let def = defs.get(&row.definition).ok_or_else(|| {
        format!(
            "connection `{}`: unknown definition `{}` (known: {})",
            row.id,
            row.definition,
            defs.ids().join(", ")
        )
    })?;
    let health = Arc::new(Health::new(
        &row.id,
        config.policy,
        parse_status(&row.status),
        sink,
    ));
    HttpConnector::new(
        &row.id,
        def.clone(),
        &config,
        &|name| secrets.lookup(name),
        health,
    )
    .map_err(|e| e.to_string())
}

/// Validates and stores a connection. Secrets need not be set yet.
pub async fn add(
    store: &Store,
    defs: &Definitions,
    id: &str,
    config: &ConnectionConfig,
    replace: bool,
) -> Result<(), String> {
    check_id(id)?;
    let def = defs.get(&config.definition).ok_or_else(|| {
        format!(
            "unknown definition `{}` (known: {})",
            config.definition,
            defs.ids().join(", ")
        )
    })?;
    let health = Arc::new(Health::new(
        id,
        config.policy,
        ConnectionStatus::Online,
        None,
    ));
    HttpConnector::new(id, def.clone(), config, &|_| Some(String::new()), health)
        .map_err(|e| e.message)?;
    for s in &config.syncs {
        s.check(def)?;
    }
    let text = serde_json::to_string(config).expect("configs serialize");
    let added = store
        .put_connection(id, &config.definition, &text, replace)
        .await
        .map_err(|e| e.to_string())?;
    if !added {
        return Err(format!(
            "connection `{id}` already exists; remove it first or pass --replace"
        ));
    }
    Ok(())
}

/// The built-in sandbox plus every stored connection. Connections that cannot
/// be made (unknown definition) are left out with a warning, so flows naming
/// them fail validation with "unknown connection".
pub async fn registry(
    store: &Store,
    defs: &Definitions,
    secrets: &Secrets,
) -> Result<ConnectorRegistry, crate::store::StoreError> {
    let mut reg = ConnectorRegistry::new();
    let rows = store.connections().await?;
    if rows.is_empty() {
        return Ok(reg);
    }
    let sink: Arc<dyn StatusSink> = StoreSink::start(store.clone());
    for row in rows {
        match build(&row, defs, secrets, Some(sink.clone())) {
            Ok(c) => reg.insert(&row.id, Arc::new(c)),
            Err(e) => tracing::warn!("{e}"),
        }
    }
    Ok(reg)
}
