//! Webhook endpoints: where events go, with which secret, for which events.
//!
//! Managed by `sluice webhook endpoint add|list|rotate|disable|enable`; the
//! HTTP API is to call these same functions.

use std::time::Duration;

use super::signing::Secret;
use super::ssrf::{GuardError, GuardPolicy};
use crate::store::{Store, StoreError, now_ms};

/// How long the old secret stays valid after a rotation.
pub const ROTATION_OVERLAP: Duration = Duration::from_secs(24 * 3600);

pub use crate::store::Endpoint;

impl Endpoint {
    /// The secrets that sign now: the current one, and the previous one while
    /// the rotation overlap lasts.
    pub fn signing_secrets(&self, now: i64) -> Vec<&Secret> {
        let mut out = vec![&self.secret];
        if let (Some(prev), Some(until)) = (&self.previous_secret, self.previous_secret_expires_at)
            && now < until
        {
            out.push(prev);
        }
        out
    }
}

/// What a user gives to add an endpoint.
#[derive(Debug, Clone, Default)]
pub struct NewEndpoint {
    /// URL.
    pub url: String,
    /// `whsec_...`; generated when absent.
    pub secret: Option<String>,
    /// Event type filter.
    pub event_types: Vec<String>,
    /// Connection filter.
    pub connection_id: Option<String>,
    /// Description.
    pub description: Option<String>,
}

/// Why an endpoint could not be added or changed.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The URL is unusable or unsafe.
    #[error(transparent)]
    Url(#[from] GuardError),
    /// The secret is malformed.
    #[error(transparent)]
    Secret(#[from] super::signing::SecretError),
    /// A filter is malformed.
    #[error(
        "invalid event type filter `{0}`: use exact types like `sync.completed` or a prefix wildcard like `sync.*`"
    )]
    Filter(String),
    /// No such endpoint.
    #[error("no webhook endpoint with id `{0}`")]
    NotFound(String),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn check_filter(f: &str) -> bool {
    let body = f.strip_suffix('*').unwrap_or(f);
    f == "*"
        || (!body.is_empty()
            && body.chars().all(|c| {
                c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '_' || c == '-'
            }))
}

/// Validates and stores a new endpoint; returns it (with its secret).
pub async fn add(
    store: &Store,
    policy: &GuardPolicy,
    new: NewEndpoint,
) -> Result<Endpoint, EndpointError> {
    policy.check_url(&new.url)?;
    let secret = match &new.secret {
        Some(s) => Secret::parse(s)?,
        None => Secret::generate(),
    };
    if let Some(bad) = new.event_types.iter().find(|f| !check_filter(f)) {
        return Err(EndpointError::Filter(bad.clone()));
    }
    let now = now_ms();
    let e = Endpoint {
        id: format!("ep_{}", uuid::Uuid::now_v7().simple()),
        url: new.url,
        description: new.description,
        secret,
        previous_secret: None,
        previous_secret_expires_at: None,
        event_types: new.event_types,
        connection_id: new.connection_id,
        enabled: true,
        disabled_reason: None,
        created_at: now,
        updated_at: now,
    };
    store.insert_endpoint(&e).await?;
    Ok(e)
}

/// Rotates an endpoint's secret (to `secret`, or a generated one); the old
/// one keeps signing for [`ROTATION_OVERLAP`]. Returns the new secret.
pub async fn rotate(
    store: &Store,
    id: &str,
    secret: Option<&str>,
) -> Result<Secret, EndpointError> {
    let new = match secret {
        Some(s) => Secret::parse(s)?,
        None => Secret::generate(),
    };
    if !store
        .rotate_endpoint_secret(id, &new, ROTATION_OVERLAP)
        .await?
    {
        return Err(EndpointError::NotFound(id.to_string()));
    }
    Ok(new)
}

/// Enables or disables an endpoint.
pub async fn set_enabled(store: &Store, id: &str, enabled: bool) -> Result<(), EndpointError> {
    let reason = (!enabled).then_some("disabled by a user");
    if !store.set_endpoint_enabled(id, enabled, reason).await? {
        return Err(EndpointError::NotFound(id.to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(types: &[&str], conn: Option<&str>) -> Endpoint {
        Endpoint {
            id: "ep".into(),
            url: "https://x".into(),
            description: None,
            secret: Secret::generate(),
            previous_secret: None,
            previous_secret_expires_at: None,
            event_types: types.iter().map(|s| s.to_string()).collect(),
            connection_id: conn.map(str::to_string),
            enabled: true,
            disabled_reason: None,
            created_at: 0,
            updated_at: 0,
        }
    }

    #[test]
    fn filters_match_exact_types_wildcards_and_connections() {
        assert!(endpoint(&[], None).accepts("anything", None));
        let e = endpoint(&["sync.*", "po.high_value"], Some("sap"));
        assert!(e.accepts("sync.completed", Some("sap")));
        assert!(e.accepts("po.high_value", None));
        assert!(!e.accepts("sync.failed", Some("netsuite")));
        assert!(!e.accepts("po.low_value", Some("sap")));
    }

    #[test]
    fn the_previous_secret_signs_only_until_it_expires() {
        let mut e = endpoint(&[], None);
        e.previous_secret = Some(Secret::generate());
        e.previous_secret_expires_at = Some(1000);
        assert_eq!(e.signing_secrets(999).len(), 2);
        assert_eq!(e.signing_secrets(1000).len(), 1);
    }
}
