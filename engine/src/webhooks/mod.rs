//! Outbound webhooks: events, endpoints, Standard Webhooks signing, a
//! durable outbox and the delivery worker, behind an SSRF guard.
//!
//! An event is an envelope `{id, type, timestamp, connection_id, data}`.
//! Flows fire custom events with the `webhook` step; the engine's own events
//! (`sync.completed`, `connection.status_changed`, ...) go through
//! [`emit`]. Each event becomes one outbox message per matching endpoint,
//! written in the same transaction as the step result that fired it, and the
//! [`delivery::DeliveryWorker`] delivers it, retrying on a schedule.

pub mod delivery;
pub mod endpoints;
pub mod signing;
pub mod ssrf;

use chrono::{SecondsFormat, Utc};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::store::{NewMessage, Store, StoreError};
use endpoints::Endpoint;

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

/// The envelope every receiver gets.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Envelope {
    /// Event id; the `webhook-id` header. Stable across retries and resumes.
    pub id: String,
    /// Event type, e.g. `po.high_value` or `sync.completed`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// When the event happened (RFC 3339).
    pub timestamp: String,
    /// The connection the event is about, if any.
    pub connection_id: Option<String>,
    /// The event's payload.
    pub data: Value,
}

impl Envelope {
    /// A new envelope whose id is derived from `key` (an idempotency key), so
    /// the same key always yields the same id.
    pub fn new(
        key: &str,
        event_type: &str,
        connection_id: Option<String>,
        data: Value,
    ) -> Envelope {
        Envelope {
            id: event_id(key),
            event_type: event_type.to_string(),
            timestamp: Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true),
            connection_id,
            data,
        }
    }

    /// The body as sent.
    pub fn body(&self) -> String {
        serde_json::to_string(self).expect("envelopes serialize")
    }
}

/// `msg_` + 26 base32 characters of sha256(key).
pub fn event_id(key: &str) -> String {
    const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";
    let digest = Sha256::digest(key.as_bytes());
    let mut out = String::from("msg_");
    let mut bits: u32 = 0;
    let mut nbits = 0;
    for &b in digest.iter().take(17) {
        bits = (bits << 8) | u32::from(b);
        nbits += 8;
        while nbits >= 5 && out.len() < 30 {
            nbits -= 5;
            out.push(ALPHABET[((bits >> nbits) & 31) as usize] as char);
        }
    }
    out
}

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

/// The messages an event becomes: one per enabled endpoint that accepts it,
/// or only the named endpoint.
pub fn route(endpoints: &[Endpoint], env: &Envelope, only: Option<&str>) -> Vec<NewMessage> {
    let body = env.body();
    endpoints
        .iter()
        .filter(|e| e.enabled)
        .filter(|e| match only {
            Some(id) => e.id == id,
            None => e.accepts(&env.event_type, env.connection_id.as_deref()),
        })
        .map(|e| NewMessage {
            event_id: env.id.clone(),
            endpoint_id: e.id.clone(),
            event_type: env.event_type.clone(),
            body: body.clone(),
        })
        .collect()
}

/// Emits an engine event to every endpoint that accepts it. `key` makes the
/// event id: emitting twice with the same key delivers once.
pub async fn emit(
    store: &Store,
    key: &str,
    event_type: &str,
    connection_id: Option<&str>,
    data: Value,
) -> Result<Envelope, StoreError> {
    let env = Envelope::new(key, event_type, connection_id.map(str::to_string), data);
    let endpoints = store.endpoints().await?;
    store
        .enqueue_messages(&route(&endpoints, &env, None))
        .await?;
    store.publish(&env);
    Ok(env)
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
    fn event_ids_are_stable_and_distinct() {
        assert_eq!(event_id("run1:step"), event_id("run1:step"));
        assert_ne!(event_id("run1:step"), event_id("run1:step:0"));
        assert_eq!(event_id("x").len(), 30);
        assert!(event_id("x").starts_with("msg_"));
    }

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
