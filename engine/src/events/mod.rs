//! Events: what the engine and flows fire (`record.created`, `run.failed`,
//! `connection.status_changed`, custom `po.high_value`...), and how they
//! reach their two kinds of subscribers.
//!
//! An event is an [`Envelope`]. Firing one writes, in the same transaction
//! as the change that fired it (a step result, a run's end; for sync and
//! connection events, which have no such change, a transaction of their own):
//!
//! - one outbox message per webhook endpoint that accepts it ([`route`]),
//!   which the delivery worker sends (`crate::webhooks::delivery`);
//! - one row in the event log (table `events`) when an `event` trigger may
//!   want it. Every `sluice serve` consumes the log (`crate::server`): it
//!   claims undispatched events under a lease, starts one run per matching
//!   flow under the request key `event:<flow>:<event id>` (so exactly one run
//!   per event and flow, across processes, kills and bursts), then marks the
//!   event dispatched. Events written by `sluice run` wait in the log for the
//!   next `sluice serve`.
//!
//! Keeping the hot path cheap: an event goes into the log only when an
//! `event` trigger listens to its type ([`set_interest`], kept by the server
//! from its flows) or when nobody said (a CLI process logs every event); an
//! endpoint gets a message only when it accepts the event. A run's
//! `run.succeeded` that nobody wants costs no write.
//!
//! Waking consumers: PostgreSQL `NOTIFY sluice_events` at commit (every
//! process `LISTEN`s); in-process, a [`tokio::sync::Notify`]; SQLite
//! processes also poll every [`SQLITE_POLL`].
//!
//! Retention: `sluice serve` deletes events older than
//! `SLUICE_EVENT_RETENTION` (default 7 days; see [`retention_from_env`]),
//! dispatched or not.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::store::{Backend, Effects, Endpoint, NewEvent, NewMessage, Store, StoreError};

/// How long [`endpoints_recent`] trusts its copy of the endpoints (changes
/// made through the same store are seen at once; other processes' within this).
pub const ENDPOINT_CACHE_TTL: Duration = Duration::from_secs(1);

/// How often an idle SQLite consumer looks for events other processes wrote.
pub const SQLITE_POLL: Duration = Duration::from_millis(200);

/// How often an idle PostgreSQL consumer looks without a notification (a
/// safety net for a dropped listener connection).
pub const POSTGRES_POLL: Duration = Duration::from_secs(2);

/// Default retention of the event log.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// The envelope every receiver gets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

/// The messages an event becomes: one per enabled endpoint that accepts it,
/// or only the named endpoint.
pub fn route(endpoints: &[Endpoint], env: &Envelope, only: Option<&str>) -> Vec<NewMessage> {
    let mut body = None;
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
            body: body.get_or_insert_with(|| env.body()).clone(),
        })
        .collect()
}

/// Per-store state of this module (attached to the store, see
/// [`Store::attached`]): the in-process wake-up, the trigger interest and
/// the endpoint cache.
#[derive(Default)]
struct Hub {
    /// Woken when this process logs events.
    logged: tokio::sync::Notify,
    /// Event types some `event` trigger listens to; `None`: unknown, log all.
    interest: RwLock<Option<Arc<HashSet<String>>>>,
    /// Endpoints as last read.
    endpoints: Mutex<Option<CachedEndpoints>>,
}

/// Endpoints as read at a time and a [`Store::endpoint_generation`].
struct CachedEndpoints {
    read_at: Instant,
    generation: u64,
    list: Arc<Vec<Endpoint>>,
}

fn hub(store: &Store) -> Arc<Hub> {
    store.attached::<Hub>()
}

/// Says which event types `event` triggers listen to (`None`: unknown, so
/// every event is logged). Events of other types are not logged.
pub fn set_interest(store: &Store, types: Option<HashSet<String>>) {
    *hub(store).interest.write().expect("interest lock") = types.map(Arc::new);
}

/// Whether an event of this type goes into the log.
pub fn logged(store: &Store, event_type: &str) -> bool {
    match &*hub(store).interest.read().expect("interest lock") {
        None => true,
        Some(types) => types.contains(event_type),
    }
}

/// All endpoints, read at most [`ENDPOINT_CACHE_TTL`] ago, for the hot path
/// of `webhook` steps and run events.
pub async fn endpoints_recent(store: &Store) -> Result<Arc<Vec<Endpoint>>, StoreError> {
    let hub = hub(store);
    let generation = store.endpoint_generation();
    if let Some(c) = &*hub.endpoints.lock().expect("endpoint cache lock")
        && c.read_at.elapsed() < ENDPOINT_CACHE_TTL
        && c.generation == generation
    {
        return Ok(c.list.clone());
    }
    let list = Arc::new(store.endpoints().await?);
    *hub.endpoints.lock().expect("endpoint cache lock") = Some(CachedEndpoints {
        read_at: Instant::now(),
        generation,
        list: list.clone(),
    });
    Ok(list)
}

/// What firing these events writes: outbox messages for the endpoints
/// (each event to the endpoint it names, if any) and log rows for the
/// types triggers listen to.
pub fn effects(
    store: &Store,
    endpoints: &[Endpoint],
    fired: &[(Envelope, Option<String>)],
) -> Effects {
    let mut out = Effects::default();
    for (env, only) in fired {
        out.messages.extend(route(endpoints, env, only.as_deref()));
        if logged(store, &env.event_type) {
            out.events.push(NewEvent {
                id: env.id.clone(),
                event_type: env.event_type.clone(),
                connection_id: env.connection_id.clone(),
                body: env.body(),
            });
        }
    }
    out
}

/// Tells this process's consumer that events were committed. Call after
/// the transaction holding `effects` committed.
pub fn committed(store: &Store, effects: &Effects) {
    if !effects.events.is_empty() {
        hub(store).logged.notify_one();
    }
}

/// Fires an engine event (`sync.completed`, `connection.status_changed`,
/// `system.error`...) in a transaction of its own: to every endpoint that
/// accepts it, and into the log for `event` triggers. `key` makes the event
/// id: firing twice with the same key delivers once and starts one run per
/// flow.
pub async fn emit(
    store: &Store,
    key: &str,
    event_type: &str,
    connection_id: Option<&str>,
    data: Value,
) -> Result<Envelope, StoreError> {
    let env = Envelope::new(key, event_type, connection_id.map(str::to_string), data);
    // A fresh read: engine events are rare, and an endpoint added by another
    // process a moment ago should get them.
    let endpoints = store.endpoints().await?;
    let fired = [(env, None)];
    let effects = effects(store, &endpoints, &fired);
    store.record_effects(&effects).await?;
    committed(store, &effects);
    let [(env, _)] = fired;
    Ok(env)
}

/// What wakes an idle consumer of the log: this process logging events, a
/// PostgreSQL notification, or the poll interval passing.
pub struct Wakeup {
    hub: Arc<Hub>,
    listener: Option<sqlx::postgres::PgListener>,
    poll: Duration,
}

impl Wakeup {
    /// Listens on `sluice_events` when the store is PostgreSQL (falling back
    /// to polling, with a warning, when the listener cannot connect).
    pub async fn new(store: &Store) -> Wakeup {
        let (listener, poll) = match store.backend() {
            Backend::Sqlite => (None, SQLITE_POLL),
            Backend::Postgres => match listen(store).await {
                Ok(l) => (Some(l), POSTGRES_POLL),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot LISTEN for events; polling every {SQLITE_POLL:?} instead");
                    (None, SQLITE_POLL)
                }
            },
        };
        Wakeup {
            hub: hub(store),
            listener,
            poll,
        }
    }

    /// Waits until events may have been logged; says what woke it.
    pub async fn wait(&mut self) -> Woken {
        let poll = tokio::time::sleep(self.poll);
        match &mut self.listener {
            Some(l) => {
                tokio::select! {
                    r = l.recv() => match r {
                        Ok(_) => Woken::Notified,
                        Err(e) => {
                            // The listener reconnects on its next recv; not in a hot loop.
                            tracing::debug!(error = %e, "event listener interrupted");
                            tokio::time::sleep(self.poll).await;
                            Woken::Poll
                        }
                    },
                    _ = self.hub.logged.notified() => Woken::InProcess,
                    _ = poll => Woken::Poll,
                }
            }
            None => {
                tokio::select! {
                    _ = self.hub.logged.notified() => Woken::InProcess,
                    _ = poll => Woken::Poll,
                }
            }
        }
    }
}

/// What ended a [`Wakeup::wait`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woken {
    /// This process logged events.
    InProcess,
    /// A PostgreSQL notification: some process committed events.
    Notified,
    /// The poll interval passed.
    Poll,
}

async fn listen(store: &Store) -> Result<sqlx::postgres::PgListener, sqlx::Error> {
    let mut l = sqlx::postgres::PgListener::connect(store.url()).await?;
    l.listen(crate::store::EVENTS_CHANNEL).await?;
    Ok(l)
}

/// The event log's retention from `SLUICE_EVENT_RETENTION` (e.g. `7d`,
/// `12h`); [`DEFAULT_RETENTION`] when unset. `Err` names a bad value.
pub fn retention_from_env() -> Result<Duration, String> {
    match std::env::var("SLUICE_EVENT_RETENTION") {
        Ok(v) if !v.trim().is_empty() => humantime::parse_duration(v.trim())
            .map_err(|e| format!("SLUICE_EVENT_RETENTION=`{v}`: {e} (e.g. `7d`)")),
        _ => Ok(DEFAULT_RETENTION),
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
    fn envelopes_read_back_from_their_body() {
        let env = Envelope::new(
            "k",
            "po.approved",
            Some("sap".into()),
            serde_json::json!({"n": 1}),
        );
        let back: Envelope = serde_json::from_str(&env.body()).unwrap();
        assert_eq!(back, env);
    }
}
