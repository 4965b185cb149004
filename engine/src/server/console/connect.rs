//! The connect flow: pick a system from the connector catalog, fill a form
//! made from its definition (parameters with their help text, credentials),
//! and the connection is tested live before anything is saved; a failure
//! is said in plain words and nothing is stored. Credentials are stored
//! sealed (see `connectors::vault`) and the connection is usable at once.
//!
//! Connect links: an admin makes a one-time link for one system and one
//! connection id, valid for a while; whoever opens it sees only that
//! system's form (no sign-in, no other page), and once it connected the
//! link is spent.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::{Console, enc, form, random_token, see_other};
use crate::connectors::connection as conn;
use crate::connectors::http::{ConnectionConfig, HttpConnector, STORED_PREFIX};
use crate::connectors::resilience::{Health, Policy};
use crate::connectors::{ConnectionStatus, ConnectorError, ErrorCode};
use crate::server::auth::Scope;
use crate::store::StoredCredential;
use crate::webhooks::ssrf::GuardPolicy;

/// How long a connect link lives unless told (seconds).
const LINK_DEFAULT_S: i64 = 7 * 24 * 3600;

/// The form of a definition: its parameters and credentials.
fn form_of(c: &Console, definition: &str) -> Option<Value> {
    let def = c.state.defs.get(definition)?;
    let d = &def.def;
    Some(json!({
        "id": d.id,
        "name": d.name,
        "description": d.description,
        "params": d.parameters.iter().map(|(name, p)| json!({
            "name": name,
            "help": p.description,
            "default": p.default,
            "required": p.default.is_none(),
        })).collect::<Vec<_>>(),
        "credentials": d.credentials,
    }))
}

/// `GET /connect`: the catalog (and, for admins, connect links).
pub(super) async fn catalog(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let s = match c.session(&headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let systems: Vec<Value> = c
        .state
        .defs
        .ids()
        .iter()
        .filter_map(|id| form_of(&c, id))
        .collect();
    c.page(
        "connect.html",
        &s,
        "connections",
        json!({"systems": systems, "is_admin": s.scope >= Scope::Admin}),
    )
}

/// `GET /connect/{definition}`: the form.
pub(super) async fn form_page(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Path(definition): Path<String>,
) -> Response {
    let s = match c.session(&headers).await {
        Ok(s) => s,
        Err(r) => return r,
    };
    let Some(system) = form_of(&c, &definition) else {
        return c.message(
            StatusCode::NOT_FOUND,
            "Not found",
            "no such system in the catalog",
        );
    };
    c.page(
        "connect_form.html",
        &s,
        "connections",
        json!({"system": system, "action": format!("/connect/{}", enc(&definition)), "values": {}}),
    )
}

/// `POST /connect/{definition}`: test, then save.
pub(super) async fn submit(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Path(definition): Path<String>,
    body: Bytes,
) -> Response {
    let fields = form(&body);
    let s = form_session!(c, headers, fields);
    // Connections change with `write`, as in the API.
    if let Err(e) = c.state.auth.check_id(&s.token_id, Scope::Write).await {
        return c.message(e.status, "Not allowed", &e.message);
    }
    let id = fields.get("connection_id").cloned().unwrap_or_default();
    match connect(&c, &definition, &id, &fields, false).await {
        Ok(()) => see_other(&format!("/connections/{}", enc(&id))),
        Err(problem) => {
            let Some(system) = form_of(&c, &definition) else {
                return c.message(StatusCode::NOT_FOUND, "Not found", &problem);
            };
            let mut r = c.page(
                "connect_form.html",
                &s,
                "connections",
                json!({
                    "system": system,
                    "action": format!("/connect/{}", enc(&definition)),
                    "values": kept_values(&fields),
                    "problem": problem,
                }),
            );
            *r.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
            r
        }
    }
}

/// The form's values to show again (never the credentials).
fn kept_values(fields: &BTreeMap<String, String>) -> Value {
    fields
        .iter()
        .filter(|(k, _)| k.starts_with("param.") || *k == "connection_id")
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// Tests the connection the form describes and, when it works, stores it
/// with its credentials sealed and makes it usable. The error is for the
/// person at the form: what is wrong, in plain words.
async fn connect(
    c: &Console,
    definition: &str,
    id: &str,
    fields: &BTreeMap<String, String>,
    via_link: bool,
) -> Result<(), String> {
    let state = &c.state;
    let def = state
        .defs
        .get(definition)
        .ok_or_else(|| format!("`{definition}` is not in the catalog"))?;
    let name = def.def.name.clone();
    conn::check_id(id).map_err(|e| format!("Connection name: {e}"))?;
    if id == crate::connectors::sandbox::CONNECTION
        || state
            .store
            .connection(id)
            .await
            .map_err(|e| e.to_string())?
            .is_some()
    {
        return Err(format!(
            "A connection named `{id}` already exists: choose another name."
        ));
    }
    if !state.vault.can_seal() {
        return Err("This server cannot store credentials: its administrator must set SLUICE_CREDENTIALS_KEY (see the README).".into());
    }
    let mut params = BTreeMap::new();
    for (p, spec) in &def.def.parameters {
        match fields.get(&format!("param.{p}")).map(|v| v.trim()) {
            Some(v) if !v.is_empty() => {
                params.insert(p.clone(), v.to_string());
            }
            _ if spec.default.is_none() => {
                return Err(format!(
                    "`{p}` is required: {}",
                    spec.description.clone().unwrap_or_default()
                ));
            }
            _ => {}
        }
    }
    let mut values = BTreeMap::new();
    let mut credentials = BTreeMap::new();
    for cred in &def.def.credentials {
        let value = fields
            .get(&format!("credential.{cred}"))
            .cloned()
            .unwrap_or_default();
        if value.is_empty() {
            return Err(format!("`{cred}` is required."));
        }
        let secret = format!("{STORED_PREFIX}{id}.{cred}");
        values.insert(secret.clone(), value);
        credentials.insert(cred.clone(), secret);
    }
    let hide = |text: &str| {
        values
            .values()
            .filter(|v| v.len() >= 3)
            .fold(text.to_string(), |t, v| t.replace(v.as_str(), "[REDACTED]"))
    };
    let config = ConnectionConfig {
        definition: definition.to_string(),
        params,
        credentials,
        rate_limit: None,
        policy: Policy::default(),
        syncs: Vec::new(),
        // Made by whoever held a link: every address it reaches is checked
        // when it connects, for as long as the connection exists.
        guarded: via_link,
    };
    let base = config.params.get("base_url").cloned().unwrap_or_default();
    // Whoever holds a link is not trusted with this server's network: the
    // address must be public (or allow-listed), and the answer's details
    // are not shown to them. (The connection checks it again, with every
    // other URL parameter, and each address whenever it connects.)
    if via_link {
        guard_link_address(&base).await?;
    }
    // The live test: one attempt, a short deadline.
    let trial_policy = Policy {
        max_attempts: 1,
        timeout_ms: 15_000,
        ..Policy::default()
    };
    let health = Arc::new(Health::new(
        id,
        trial_policy,
        ConnectionStatus::Online,
        None,
    ));
    let trial = HttpConnector::new(
        id,
        def.clone(),
        &ConnectionConfig {
            policy: trial_policy,
            ..config.clone()
        },
        &|name| values.get(name).cloned(),
        health,
    )
    .map_err(|e| hide(&e.message))?;
    match tokio::time::timeout(Duration::from_secs(20), trial.test()).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) if via_link => return Err(plain_words(&name, &base, e.code(), None)),
        Ok(Err(e)) => return Err(hide(&plain_words(&name, &base, e.code(), Some(&e)))),
        Err(_) => {
            return Err(format!(
                "{name} did not answer at {base} within 20 seconds: check the address and that the system is up."
            ));
        }
    }
    // It works: store the credentials sealed, then the connection.
    let sealed: Vec<StoredCredential> = values
        .iter()
        .map(|(secret, value)| {
            Ok(StoredCredential {
                secret_name: secret.clone(),
                connection_id: id.to_string(),
                sealed: state.vault.seal(secret, value)?,
            })
        })
        .collect::<Result<_, String>>()?;
    state
        .store
        .put_credentials(&sealed)
        .await
        .map_err(|e| e.to_string())?;
    if let Err(e) = conn::add(&state.store, &state.defs, id, &config, false).await {
        let _ = state.store.delete_credentials(id).await;
        return Err(hide(&e));
    }
    for (secret, value) in &values {
        state.secrets.add_stored(secret, value);
    }
    super::super::resources::install_connection(state, id)
        .await
        .map_err(|e| e.message)?;
    Ok(())
}

/// What a failed connection test means, for someone who is not a developer;
/// with the system's own message when `detail` is given.
fn plain_words(
    system: &str,
    base: &str,
    code: ErrorCode,
    detail: Option<&ConnectorError>,
) -> String {
    let text = match code {
        ErrorCode::AuthenticationFailed => format!(
            "Wrong credentials: {system} refused them. Check the user name, password, key or secret."
        ),
        ErrorCode::PermissionDenied => format!(
            "The credentials work, but {system} does not allow this user to read what Sluice needs. Ask its administrator for access."
        ),
        ErrorCode::ConnectionUnavailable => format!(
            "{system} could not be reached at {base}. Check the address and that the system is up and reachable from this server."
        ),
        ErrorCode::NotFound => {
            format!("Something answered at {base}, but not as {system} does: check the address.")
        }
        _ => format!("{system} answered with an error."),
    };
    match detail {
        Some(e) => format!("{text} ({})", e.message),
        None => text,
    }
}

/// Refuses a link's address that is not public and not allow-listed (the
/// webhooks' guard: loopback, private, link-local and metadata addresses),
/// by its name and by every address it resolves to; https unless allow-listed.
async fn guard_link_address(base: &str) -> Result<(), String> {
    let policy = GuardPolicy::for_connect_links()?;
    let url = policy
        .check_url(base)
        .map_err(|e| format!("The address is refused: {}", e.for_any_url()))?;
    let host = url.host_str().unwrap_or_default().to_string();
    let port = url.port_or_known_default().unwrap_or(443);
    let addrs = tokio::net::lookup_host((host.trim_start_matches('[').trim_end_matches(']'), port))
        .await
        .map_err(|e| format!("The address is refused: cannot resolve {host}: {e}"))?;
    for addr in addrs {
        policy
            .check_ip(&host, addr.ip())
            .map_err(|e| format!("The address is refused: {}", e.for_any_url()))?;
    }
    Ok(())
}

/// `POST /connect-links`: an admin makes a link.
pub(super) async fn create_link(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let fields = form(&body);
    let s = form_session!(c, headers, fields);
    if let Err(e) = c.state.auth.check_id(&s.token_id, Scope::Admin).await {
        return c.message(e.status, "Not allowed", &e.message);
    }
    let definition = fields.get("definition").cloned().unwrap_or_default();
    let id = fields.get("connection_id").cloned().unwrap_or_default();
    if c.state.defs.get(&definition).is_none() {
        return c.message(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Wrong input",
            &format!("`{definition}` is not in the catalog"),
        );
    }
    if let Err(e) = conn::check_id(&id) {
        return c.message(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Wrong input",
            &format!("Connection name: {e}"),
        );
    }
    match c.state.store.connection(&id).await {
        Ok(None) if id != crate::connectors::sandbox::CONNECTION => {}
        Ok(_) => {
            return c.message(
                StatusCode::UNPROCESSABLE_ENTITY,
                "Wrong input",
                &format!(
                    "A connection named `{id}` already exists: a link for it could never be used."
                ),
            );
        }
        Err(e) => {
            return c.message(
                StatusCode::SERVICE_UNAVAILABLE,
                "The store does not answer",
                &e.to_string(),
            );
        }
    }
    let valid_s = match fields
        .get("valid_s")
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
    {
        None => LINK_DEFAULT_S,
        Some(v) => match v.parse::<i64>() {
            Ok(n) if (1..=30 * 24 * 3600).contains(&n) => n,
            _ => {
                return c.message(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Wrong input",
                    &format!("valid for `{v}` seconds: give 1 to 2592000 (30 days)"),
                );
            }
        },
    };
    let token = random_token();
    let hash = hex::encode(Sha256::digest(token.as_bytes()));
    let expires_at = crate::store::now_ms() + valid_s * 1000;
    if let Err(e) = c
        .state
        .store
        .insert_connect_link(&hash, &definition, &id, expires_at)
        .await
    {
        return c.message(
            StatusCode::SERVICE_UNAVAILABLE,
            "The store does not answer",
            &e.to_string(),
        );
    }
    // The address partners reach this server at: SLUICE_PUBLIC_URL, else
    // the Host the admin used.
    let public = std::env::var("SLUICE_PUBLIC_URL")
        .ok()
        .map(|u| u.trim_end_matches('/').to_string())
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| {
            let host = headers
                .get(axum::http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("127.0.0.1:8080");
            format!("http://{host}")
        });
    c.page(
        "link_created.html",
        &s,
        "connections",
        json!({
            "url": format!("{public}/link/{token}"),
            "path": format!("/link/{token}"),
            "definition": definition,
            "connection_id": id,
            "expires_at": expires_at,
        }),
    )
}

/// A link that can still be used, or the page saying why not.
async fn live_link(
    c: &Console,
    token: &str,
) -> Result<(String, crate::store::ConnectLink), Response> {
    let hash = hex::encode(Sha256::digest(token.as_bytes()));
    let link = match c.state.store.connect_link(&hash).await {
        Ok(Some(l)) => l,
        Ok(None) => {
            return Err(c.message(
                StatusCode::NOT_FOUND,
                "This link is not valid",
                "Ask whoever sent it for a new one.",
            ));
        }
        Err(e) => {
            return Err(c.message(
                StatusCode::SERVICE_UNAVAILABLE,
                "The store does not answer",
                &e.to_string(),
            ));
        }
    };
    if link.used_at.is_some() {
        return Err(c.message(
            StatusCode::GONE,
            "This link was already used",
            "A connect link works once. Ask whoever sent it for a new one.",
        ));
    }
    if link.expires_at <= crate::store::now_ms() {
        return Err(c.message(
            StatusCode::GONE,
            "This link has expired",
            "Ask whoever sent it for a new one.",
        ));
    }
    Ok((hash, link))
}

/// `GET /link/{token}`: the one form the link opens.
pub(super) async fn link_page(
    State(c): State<Arc<Console>>,
    Path(token): Path<String>,
) -> Response {
    let (_, link) = match live_link(&c, &token).await {
        Ok(l) => l,
        Err(r) => return r,
    };
    let Some(system) = form_of(&c, &link.definition) else {
        return c.message(
            StatusCode::NOT_FOUND,
            "Not found",
            "the link's system is no longer in the catalog",
        );
    };
    c.render(
        "connect_form.html",
        json!({
            "system": system,
            "action": format!("/link/{}", enc(&token)),
            "locked_id": link.connection_id,
            "values": {},
        }),
    )
}

/// `POST /link/{token}`: test and save through a link.
pub(super) async fn link_submit(
    State(c): State<Arc<Console>>,
    Path(token): Path<String>,
    body: Bytes,
) -> Response {
    let (hash, link) = match live_link(&c, &token).await {
        Ok(l) => l,
        Err(r) => return r,
    };
    let fields = form(&body);
    match connect(&c, &link.definition, &link.connection_id, &fields, true).await {
        Ok(()) => {
            if let Err(e) = c.state.store.use_connect_link(&hash).await {
                tracing::warn!(error = %e, "a used connect link could not be marked used");
            }
            c.render(
                "message.html",
                json!({
                    "title": "Connected",
                    "text": format!(
                        "The connection to {} works and is saved. You can close this page.",
                        link.definition
                    ),
                    "ok": true,
                }),
            )
        }
        Err(problem) => {
            let Some(system) = form_of(&c, &link.definition) else {
                return c.message(StatusCode::NOT_FOUND, "Not found", &problem);
            };
            let mut r = c.render(
                "connect_form.html",
                json!({
                    "system": system,
                    "action": format!("/link/{}", enc(&token)),
                    "locked_id": link.connection_id,
                    "values": kept_values(&fields),
                    "problem": problem,
                }),
            );
            *r.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
            r
        }
    }
}
