//! Outbound webhooks: events, endpoints, Standard Webhooks signing, a
//! durable outbox and the delivery worker, behind an SSRF guard.
//!
//! An event is an envelope `{id, type, timestamp, connection_id, data}`.
//! Flows fire custom events with the `webhook` step; the engine's own events
//! (`sync.completed`, `connection.status_changed`, ...) go through
//! [`emit`]. Each event becomes one outbox message per matching endpoint,
//! written in the same transaction as the step result that fired it (see
//! [`crate::events`], which also logs events for `event` triggers), and the
//! [`delivery::DeliveryWorker`] delivers it, retrying on a schedule.

pub mod delivery;
pub mod endpoints;
pub mod signing;
pub mod ssrf;

use serde_json::Value;

pub use crate::events::{Envelope, event_id, route};
use crate::store::{Store, StoreError};

/// Event types the engine itself emits.
pub const SYSTEM_EVENTS: &[&str] = &[
    "sync.completed",
    "sync.failed",
    "connection.auth_required",
    "connection.status_changed",
    "system.error",
    "record.created",
    "record.updated",
    "record.deleted",
];

/// Largest body an event may have.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// Whether an event type is valid for a flow to fire: lowercase words
/// separated by dots, not in a namespace the engine reserves.
pub fn check_custom_event_type(t: &str) -> Result<(), String> {
    let shape_ok = !t.is_empty()
        && t.split('.').all(|part| {
            !part.is_empty()
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
        });
    if !shape_ok {
        return Err(format!(
            "event type `{t}` must be lowercase words separated by dots, e.g. `po.high_value`"
        ));
    }
    for reserved in ["sync.", "connection.", "system.", "record.", "run."] {
        if t.starts_with(reserved) {
            return Err(format!(
                "event type `{t}` is in the engine's reserved `{reserved}*` namespace; choose another"
            ));
        }
    }
    Ok(())
}

/// Emits an engine event to every endpoint that accepts it and to the
/// event log for `event` triggers (see [`crate::events::emit`]). `key` makes
/// the event id: emitting twice with the same key delivers once.
pub async fn emit(
    store: &Store,
    key: &str,
    event_type: &str,
    connection_id: Option<&str>,
    data: Value,
) -> Result<Envelope, StoreError> {
    crate::events::emit(store, key, event_type, connection_id, data).await
}

/// Emits `system.error`: something the engine cannot fix that needs a
/// person (`source`: `sync`, `webhooks`, `store`...). Failing to emit is
/// logged, never raised: the caller is already handling an error.
pub async fn system_error(store: &Store, key: &str, source: &str, message: &str, details: Value) {
    tracing::error!(source, "{message}");
    let data = serde_json::json!({
        "source": source,
        "message": message,
        "details": details,
        "at": chrono::Utc::now().to_rfc3339(),
    });
    if let Err(e) = emit(store, key, "system.error", None, data).await {
        tracing::warn!(error = %e, "cannot emit system.error");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_event_types_are_checked() {
        assert!(check_custom_event_type("po.high_value").is_ok());
        assert!(
            check_custom_event_type("PO High")
                .unwrap_err()
                .contains("lowercase words")
        );
        assert!(
            check_custom_event_type("sync.completed")
                .unwrap_err()
                .contains("reserved `sync.*`")
        );
    }
}
