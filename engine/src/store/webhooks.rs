//! Webhook endpoints, the outbox of messages, and the delivery attempt log.

use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Arg, Backend, Stmt, Store, StoreError, json_text, ms, now_ms};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// A receiver of events: a webhook endpoint as stored. Managed through
/// `crate::webhooks::endpoints`, which also signs with its secrets.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct Endpoint {
    /// `ep_` + UUID v7.
    pub id: String,
    /// Where to POST.
    pub url: String,
    /// What it is for.
    pub description: Option<String>,
    /// Signing secret.
    #[serde(skip)]
    pub secret: Secret,
    /// The secret before the last rotation, still signing until it expires.
    #[serde(skip)]
    pub previous_secret: Option<Secret>,
    /// When the previous secret stops signing (ms).
    pub previous_secret_expires_at: Option<i64>,
    /// Event types accepted: exact (`sync.completed`) or wildcard (`sync.*`,
    /// `*`); empty accepts all.
    pub event_types: Vec<String>,
    /// Only events about this connection (events without one always pass).
    pub connection_id: Option<String>,
    /// Disabled endpoints get nothing.
    pub enabled: bool,
    /// Why it was disabled (e.g. the receiver answered 410).
    pub disabled_reason: Option<String>,
    /// Created (ms).
    pub created_at: i64,
    /// Last changed (ms).
    pub updated_at: i64,
}

impl Endpoint {
    /// Whether the endpoint takes an event of this type and connection.
    pub fn accepts(&self, event_type: &str, connection: Option<&str>) -> bool {
        let type_ok = self.event_types.is_empty()
            || self.event_types.iter().any(|p| match p.strip_suffix('*') {
                Some(prefix) => event_type.starts_with(prefix),
                None => p == event_type,
            });
        let conn_ok = match (&self.connection_id, connection) {
            (Some(want), Some(got)) => want == got,
            _ => true,
        };
        type_ok && conn_ok
    }
}

/// The prefix of a webhook secret.
pub const SECRET_PREFIX: &str = "whsec_";

/// A webhook signing secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    key: Vec<u8>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// A secret that is not `whsec_` + base64.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid webhook secret: {0}")]
pub struct SecretError(String);

impl Secret {
    /// Parses `whsec_<base64>`.
    pub fn parse(text: &str) -> Result<Secret, SecretError> {
        let b64 = text
            .strip_prefix(SECRET_PREFIX)
            .ok_or_else(|| SecretError(format!("it must start with `{SECRET_PREFIX}`")))?;
        let key = STANDARD.decode(b64).map_err(|e| {
            SecretError(format!(
                "the part after `{SECRET_PREFIX}` is not base64: {e}"
            ))
        })?;
        if !(24..=64).contains(&key.len()) {
            return Err(SecretError(format!(
                "the key is {} bytes; use 24 to 64",
                key.len()
            )));
        }
        Ok(Secret { key })
    }

    /// `whsec_<base64>`.
    pub fn to_text(&self) -> String {
        format!("{SECRET_PREFIX}{}", STANDARD.encode(&self.key))
    }

    /// A secret of these key bytes.
    pub(crate) fn from_key(key: Vec<u8>) -> Secret {
        Secret { key }
    }

    /// The key bytes.
    pub(crate) fn key(&self) -> &[u8] {
        &self.key
    }
}

/// State of an outbox message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MessageStatus {
    /// Waiting for its next attempt.
    Pending,
    /// Claimed by a delivery worker.
    Delivering,
    /// The receiver answered 2xx.
    Delivered,
    /// Attempts exhausted, endpoint gone (410) or disabled; can be resent.
    Failed,
}

impl MessageStatus {
    /// Name as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            MessageStatus::Pending => "pending",
            MessageStatus::Delivering => "delivering",
            MessageStatus::Delivered => "delivered",
            MessageStatus::Failed => "failed",
        }
    }
}

impl FromStr for MessageStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "pending" => MessageStatus::Pending,
            "delivering" => MessageStatus::Delivering,
            "delivered" => MessageStatus::Delivered,
            "failed" => MessageStatus::Failed,
            other => return Err(format!("unknown message status `{other}`")),
        })
    }
}

/// A message to put in the outbox.
#[derive(Debug, Clone)]
pub struct NewMessage {
    /// Envelope id (`webhook-id`), stable across retries and resumes.
    pub event_id: String,
    /// Receiving endpoint.
    pub endpoint_id: String,
    /// Event type.
    pub event_type: String,
    /// The exact body to send.
    pub body: String,
}

/// A stored outbox message.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct MessageRecord {
    /// Message id (one per event and endpoint).
    pub id: String,
    /// Envelope id (`webhook-id`).
    pub event_id: String,
    /// Endpoint.
    pub endpoint_id: String,
    /// Event type.
    pub event_type: String,
    /// State.
    pub status: MessageStatus,
    /// Attempts made (since the last resend).
    pub attempts: i64,
    /// When the next attempt is due (ms).
    pub next_attempt_at: i64,
    /// Last failure.
    pub last_error: Option<String>,
    /// Enqueued (ms), i.e. when the step result committed.
    pub created_at: i64,
    /// Delivered (ms).
    pub delivered_at: Option<i64>,
    /// The body sent.
    pub body: String,
}

/// A message claimed for delivery.
#[derive(Debug, Clone)]
pub struct ClaimedMessage {
    /// Message id.
    pub id: String,
    /// Envelope id.
    pub event_id: String,
    /// Endpoint.
    pub endpoint_id: String,
    /// The body.
    pub body: String,
    /// Attempts made before this one.
    pub attempts: i64,
    /// Enqueued (ms).
    pub created_at: i64,
}

/// One logged delivery attempt.
#[derive(Debug, Clone, Serialize, schemars::JsonSchema)]
pub struct AttemptLog {
    /// Message id.
    pub message_id: String,
    /// 1-based attempt number.
    pub attempt: i64,
    /// Started (ms).
    pub started_at: i64,
    /// HTTP status, if a response came.
    pub status_code: Option<i64>,
    /// Time to the end of the response (or failure).
    pub latency_ms: i64,
    /// Failure (timeout, refused, non-2xx...).
    pub error: Option<String>,
    /// First 20 kB of the response body.
    pub response_body: Option<String>,
}

/// Filters for listing messages.
#[derive(Debug, Clone, Default)]
pub struct MessageFilter {
    /// Only this endpoint.
    pub endpoint_id: Option<String>,
    /// Only this status.
    pub status: Option<MessageStatus>,
    /// At most this many (newest first).
    pub limit: i64,
}

const ENDPOINT_COLUMNS: &str = "SELECT id, url, description, secret, previous_secret, previous_secret_expires_at, event_types, connection_id, enabled, disabled_reason, created_at, updated_at FROM webhook_endpoints";
const MESSAGE_COLUMNS: &str = "SELECT id, event_id, endpoint_id, event_type, status, attempts, next_attempt_at, last_error, created_at, delivered_at, body FROM webhook_messages";

fn endpoint_from_row(r: &AnyRow) -> Result<Endpoint, StoreError> {
    let bad = |e: String| StoreError::Write(format!("corrupt webhook endpoint row: {e}"));
    let secret: String = r.try_get(3)?;
    let previous: Option<String> = r.try_get(4)?;
    let events: String = r.try_get(6)?;
    Ok(Endpoint {
        id: r.try_get(0)?,
        url: r.try_get(1)?,
        description: r.try_get(2)?,
        secret: Secret::parse(&secret).map_err(|e| bad(e.to_string()))?,
        previous_secret: previous
            .map(|p| Secret::parse(&p))
            .transpose()
            .map_err(|e| bad(e.to_string()))?,
        previous_secret_expires_at: r.try_get(5)?,
        event_types: serde_json::from_str(&events)?,
        connection_id: r.try_get(7)?,
        enabled: r.try_get::<i64, _>(8)? != 0,
        disabled_reason: r.try_get(9)?,
        created_at: r.try_get(10)?,
        updated_at: r.try_get(11)?,
    })
}

fn message_from_row(r: &AnyRow) -> Result<MessageRecord, StoreError> {
    let status: String = r.try_get(4)?;
    Ok(MessageRecord {
        id: r.try_get(0)?,
        event_id: r.try_get(1)?,
        endpoint_id: r.try_get(2)?,
        event_type: r.try_get(3)?,
        status: status.parse().map_err(StoreError::Write)?,
        attempts: r.try_get(5)?,
        next_attempt_at: r.try_get(6)?,
        last_error: r.try_get(7)?,
        created_at: r.try_get(8)?,
        delivered_at: r.try_get(9)?,
        body: r.try_get(10)?,
    })
}

pub(super) fn insert_message_stmt(m: &NewMessage, now: i64) -> Stmt {
    (
        "INSERT INTO webhook_messages (id, event_id, endpoint_id, event_type, body, status, attempts, next_attempt_at, created_at) \
         VALUES ($1, $2, $3, $4, $5, 'pending', 0, $6, $6) ON CONFLICT (event_id, endpoint_id) DO NOTHING",
        vec![
            Arg::Text(Some(uuid::Uuid::now_v7().to_string())),
            Arg::Text(Some(m.event_id.clone())),
            Arg::Text(Some(m.endpoint_id.clone())),
            Arg::Text(Some(m.event_type.clone())),
            Arg::Text(Some(m.body.clone())),
            Arg::Int(Some(now)),
        ],
    )
}

/// How an attempt ended, for [`Store::finish_attempt`].
#[derive(Debug, Clone)]
pub enum AttemptEnd {
    /// 2xx.
    Delivered,
    /// Try again at this time (ms).
    Retry(i64),
    /// Give up; the message is kept as failed.
    Failed,
}

impl Store {
    /// Adds an endpoint.
    pub async fn insert_endpoint(&self, e: &Endpoint) -> Result<(), StoreError> {
        sqlx::query("INSERT INTO webhook_endpoints (id, url, description, secret, previous_secret, previous_secret_expires_at, event_types, connection_id, enabled, disabled_reason, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)")
            .bind(&e.id)
            .bind(&e.url)
            .bind(e.description.clone())
            .bind(e.secret.to_text())
            .bind(e.previous_secret.as_ref().map(Secret::to_text))
            .bind(e.previous_secret_expires_at)
            .bind(json_text(&serde_json::json!(e.event_types)))
            .bind(e.connection_id.clone())
            .bind(i64::from(e.enabled))
            .bind(e.disabled_reason.clone())
            .bind(e.created_at)
            .bind(e.updated_at)
            .execute(&self.pool)
            .await?;
        self.endpoints_changed();
        Ok(())
    }

    /// Counts a change to the endpoints, so caches of them (see
    /// `crate::events::endpoints_recent`) read them again.
    fn endpoints_changed(&self) {
        self.endpoint_changes
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }

    /// How many times endpoints were changed through this store (and its clones).
    pub fn endpoint_generation(&self) -> u64 {
        self.endpoint_changes
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// All endpoints, oldest first.
    pub async fn endpoints(&self) -> Result<Vec<Endpoint>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{ENDPOINT_COLUMNS} ORDER BY created_at, id"
        )))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(endpoint_from_row).collect()
    }

    /// One endpoint.
    pub async fn endpoint(&self, id: &str) -> Result<Option<Endpoint>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{ENDPOINT_COLUMNS} WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| endpoint_from_row(&r)).transpose()
    }

    /// Replaces the secret, keeping the old one valid for `overlap`.
    pub async fn rotate_endpoint_secret(
        &self,
        id: &str,
        new: &Secret,
        overlap: Duration,
    ) -> Result<bool, StoreError> {
        let now = now_ms();
        let done = sqlx::query("UPDATE webhook_endpoints SET previous_secret = secret, previous_secret_expires_at = $1, secret = $2, updated_at = $3 WHERE id = $4")
            .bind(now + ms(overlap))
            .bind(new.to_text())
            .bind(now)
            .bind(id)
            .execute(&self.pool)
            .await?;
        self.endpoints_changed();
        Ok(done.rows_affected() == 1)
    }

    /// Enables or disables an endpoint, with the reason for disabling.
    pub async fn set_endpoint_enabled(
        &self,
        id: &str,
        enabled: bool,
        reason: Option<&str>,
    ) -> Result<bool, StoreError> {
        let n = self
            .write(
                "UPDATE webhook_endpoints SET enabled = $1, disabled_reason = $2, updated_at = $3 WHERE id = $4",
                vec![
                    Arg::Int(Some(i64::from(enabled))),
                    Arg::Text(reason.map(str::to_string)),
                    Arg::Int(Some(now_ms())),
                    Arg::Text(Some(id.to_string())),
                ],
            )
            .await?;
        self.endpoints_changed();
        Ok(n == 1)
    }

    /// Puts messages in the outbox (system events). Duplicates of an
    /// (event, endpoint) pair are ignored.
    pub async fn enqueue_messages(&self, messages: &[NewMessage]) -> Result<(), StoreError> {
        if messages.is_empty() {
            return Ok(());
        }
        let now = now_ms();
        self.write_all(
            messages
                .iter()
                .map(|m| insert_message_stmt(m, now))
                .collect(),
        )
        .await?;
        self.outbox_signal.notify_waiters();
        Ok(())
    }

    /// Waits until messages may have been added (or `max` passes).
    pub async fn outbox_changed(&self, max: Duration) {
        let _ = tokio::time::timeout(max, self.outbox_signal.notified()).await;
    }

    /// Claims up to `limit` due messages (pending and due, or delivering
    /// under an expired lease) for `owner`.
    pub async fn claim_messages(
        &self,
        owner: &str,
        lease: Duration,
        limit: i64,
    ) -> Result<Vec<ClaimedMessage>, StoreError> {
        self.claim_messages_per_endpoint(owner, lease, limit, i64::MAX)
            .await
    }

    /// Like [`Store::claim_messages`], taking at most `per_endpoint` messages
    /// of each endpoint (the oldest due), so one endpoint's backlog neither
    /// fills a batch nor waits out its lease behind the endpoint's cap. The
    /// outer condition is checked again on update, so two workers never
    /// claim one message.
    pub async fn claim_messages_per_endpoint(
        &self,
        owner: &str,
        lease: Duration,
        limit: i64,
        per_endpoint: i64,
    ) -> Result<Vec<ClaimedMessage>, StoreError> {
        self.claim_messages_except(owner, lease, limit, per_endpoint, &[])
            .await
    }

    /// Like [`Store::claim_messages_per_endpoint`], leaving out the messages
    /// of the endpoints in `skip` (those the caller has enough of already).
    pub async fn claim_messages_except(
        &self,
        owner: &str,
        lease: Duration,
        limit: i64,
        per_endpoint: i64,
        skip: &[String],
    ) -> Result<Vec<ClaimedMessage>, StoreError> {
        let now = now_ms();
        // `$6, $7, ...`: one placeholder per skipped endpoint.
        let skip_sql = if skip.is_empty() {
            String::new()
        } else {
            let marks: Vec<String> = (0..skip.len()).map(|i| format!("${}", i + 6)).collect();
            format!(" AND endpoint_id NOT IN ({})", marks.join(", "))
        };
        const DUE: &str = "((status = 'pending' AND next_attempt_at <= $3) OR (status = 'delivering' AND lease_expires_at < $3))";
        let sql = if per_endpoint == i64::MAX && skip.is_empty() {
            match self.backend {
                Backend::Postgres => format!(
                    "UPDATE webhook_messages SET status = 'delivering', lease_owner = $1, lease_expires_at = $2 WHERE id IN (SELECT id FROM webhook_messages WHERE {DUE} ORDER BY next_attempt_at LIMIT $4 FOR UPDATE SKIP LOCKED) AND $5 > 0 RETURNING id, event_id, endpoint_id, body, attempts, created_at"
                ),
                Backend::Sqlite => format!(
                    "UPDATE webhook_messages SET status = 'delivering', lease_owner = $1, lease_expires_at = $2 WHERE id IN (SELECT id FROM webhook_messages WHERE {DUE} ORDER BY next_attempt_at LIMIT $4) AND $5 > 0 RETURNING id, event_id, endpoint_id, body, attempts, created_at"
                ),
            }
        } else {
            format!(
                "UPDATE webhook_messages SET status = 'delivering', lease_owner = $1, lease_expires_at = $2 \
                 WHERE id IN (SELECT id FROM (SELECT id, next_attempt_at, ROW_NUMBER() OVER (PARTITION BY endpoint_id ORDER BY next_attempt_at, id) AS n \
                 FROM webhook_messages WHERE {DUE}{skip_sql}) c WHERE n <= $5 ORDER BY next_attempt_at LIMIT $4) AND {DUE} \
                 RETURNING id, event_id, endpoint_id, body, attempts, created_at"
            )
        };
        // `$5 > 0` keeps one parameter list for every form of the query.
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(owner)
            .bind(now + ms(lease))
            .bind(now)
            .bind(limit)
            .bind(per_endpoint);
        for endpoint in skip {
            query = query.bind(endpoint.as_str());
        }
        let rows = query.fetch_all(&self.pool).await?;
        rows.iter()
            .map(|r| {
                Ok(ClaimedMessage {
                    id: r.try_get(0)?,
                    event_id: r.try_get(1)?,
                    endpoint_id: r.try_get(2)?,
                    body: r.try_get(3)?,
                    attempts: r.try_get(4)?,
                    created_at: r.try_get(5)?,
                })
            })
            .collect()
    }

    /// Gives claimed messages back without an attempt (their endpoint is
    /// backing off): pending again, due at `next_attempt_at`, attempts kept.
    pub async fn release_messages(
        &self,
        owner: &str,
        ids: &[String],
        next_attempt_at: i64,
    ) -> Result<(), StoreError> {
        for id in ids {
            sqlx::query("UPDATE webhook_messages SET status = 'pending', lease_owner = NULL, lease_expires_at = NULL, next_attempt_at = $1 WHERE id = $2 AND lease_owner = $3 AND status = 'delivering'")
                .bind(next_attempt_at)
                .bind(id)
                .bind(owner)
                .execute(&self.pool)
                .await?;
        }
        self.outbox_signal.notify_waiters();
        Ok(())
    }

    /// Logs an attempt and moves the message on, in one transaction.
    pub async fn finish_attempt(
        &self,
        log: &AttemptLog,
        end: &AttemptEnd,
    ) -> Result<(), StoreError> {
        let (status, next, delivered) = match end {
            AttemptEnd::Delivered => ("delivered", None, Some(log.started_at + log.latency_ms)),
            AttemptEnd::Retry(at) => ("pending", Some(*at), None),
            AttemptEnd::Failed => ("failed", None, None),
        };
        self.write_all(vec![
            (
                "INSERT INTO webhook_attempts (id, message_id, attempt, started_at, status_code, latency_ms, error, response_body) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                vec![
                    Arg::Text(Some(uuid::Uuid::now_v7().to_string())),
                    Arg::Text(Some(log.message_id.clone())),
                    Arg::Int(Some(log.attempt)),
                    Arg::Int(Some(log.started_at)),
                    Arg::Int(log.status_code),
                    Arg::Int(Some(log.latency_ms)),
                    Arg::Text(log.error.clone()),
                    Arg::Text(log.response_body.clone()),
                ],
            ),
            (
                "UPDATE webhook_messages SET status = $1, attempts = $2, next_attempt_at = COALESCE($3, next_attempt_at), delivered_at = $4, last_error = $5, lease_owner = NULL, lease_expires_at = NULL WHERE id = $6",
                vec![
                    Arg::Text(Some(status.to_string())),
                    Arg::Int(Some(log.attempt)),
                    Arg::Int(next),
                    Arg::Int(delivered),
                    Arg::Text(log.error.clone()),
                    Arg::Text(Some(log.message_id.clone())),
                ],
            ),
        ])
        .await?;
        Ok(())
    }

    /// Messages, newest first.
    pub async fn messages(&self, f: &MessageFilter) -> Result<Vec<MessageRecord>, StoreError> {
        let limit = if f.limit > 0 { f.limit } else { 50 };
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{MESSAGE_COLUMNS} WHERE ($1 = '' OR endpoint_id = $1) AND ($2 = '' OR status = $2) ORDER BY created_at DESC, id DESC LIMIT $3"
        )))
        .bind(f.endpoint_id.clone().unwrap_or_default())
        .bind(f.status.map(|s| s.as_str()).unwrap_or_default())
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(message_from_row).collect()
    }

    /// One message by id.
    pub async fn message(&self, id: &str) -> Result<Option<MessageRecord>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{MESSAGE_COLUMNS} WHERE id = $1"
        )))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|r| message_from_row(&r)).transpose()
    }

    /// Messages of one event (one per endpoint).
    pub async fn messages_of_event(
        &self,
        event_id: &str,
    ) -> Result<Vec<MessageRecord>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "{MESSAGE_COLUMNS} WHERE event_id = $1 ORDER BY endpoint_id"
        )))
        .bind(event_id)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(message_from_row).collect()
    }

    /// The attempt log of a message, oldest first.
    pub async fn message_attempts(&self, message_id: &str) -> Result<Vec<AttemptLog>, StoreError> {
        let rows = sqlx::query("SELECT message_id, attempt, started_at, status_code, latency_ms, error, response_body FROM webhook_attempts WHERE message_id = $1 ORDER BY started_at, id")
            .bind(message_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(AttemptLog {
                    message_id: r.try_get(0)?,
                    attempt: r.try_get(1)?,
                    started_at: r.try_get(2)?,
                    status_code: r.try_get(3)?,
                    latency_ms: r.try_get(4)?,
                    error: r.try_get(5)?,
                    response_body: r.try_get(6)?,
                })
            })
            .collect()
    }

    /// Queues a delivered or failed message again, with a fresh retry schedule.
    pub async fn resend_message(&self, id: &str) -> Result<bool, StoreError> {
        let n = self
            .write(
                "UPDATE webhook_messages SET status = 'pending', attempts = 0, next_attempt_at = $1, lease_owner = NULL, lease_expires_at = NULL WHERE id = $2 AND status IN ('delivered', 'failed')",
                vec![Arg::Int(Some(now_ms())), Arg::Text(Some(id.to_string()))],
            )
            .await?;
        if n == 1 {
            self.outbox_signal.notify_waiters();
        }
        Ok(n == 1)
    }

    /// Messages not yet delivered or failed.
    pub async fn undelivered_count(&self) -> Result<i64, StoreError> {
        let row = sqlx::query(
            "SELECT COUNT(*) FROM webhook_messages WHERE status IN ('pending', 'delivering')",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get(0)?)
    }

    /// The earliest next attempt of a pending message (ms), if any.
    pub async fn next_due(&self) -> Result<Option<i64>, StoreError> {
        let row = sqlx::query(
            "SELECT MIN(next_attempt_at) FROM webhook_messages WHERE status = 'pending'",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(row.try_get(0)?)
    }
}
