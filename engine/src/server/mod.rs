//! `sluice serve`: the HTTP API, the triggers and the workers in one process.
//!
//! One long-running service owns flows, plugins, connections, runs and
//! webhooks. Every route is declared once in [`routes`] through the
//! [`api::Api`] builder, which also records it for the OpenAPI document at
//! `/v1/openapi.json`, with its scope and body limit. Requests carry an
//! `x-request-id` (taken from the client when sane, else made here) that is
//! in the response, in every error body and in the server's log lines for
//! that request.
//!
//! Runs started here are stored before the API answers; their steps execute
//! in the background. On shutdown (SIGINT/SIGTERM) the listener stops
//! accepting, in-flight runs get a grace period to finish, and whatever is
//! still running keeps its lease until it expires so the next process
//! resumes it (`Engine::resume_orphaned` runs at start and periodically).

// Handlers return `ApiError` by value: errors are the rare path and end in
// a response at once, so boxing them would only add noise.
#![allow(clippy::result_large_err)]

mod accept;
pub mod api;
pub mod auth;
mod console;
pub mod error;
mod flows;
mod metrics;
mod resources;
mod retention;
mod routes;
mod runs;
mod triggers;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;
use tracing::Instrument;

use crate::connectors::connection::{self as conn, StoreSink};
use crate::connectors::definition::Definitions;
use crate::connectors::http::HttpConnector;
use crate::connectors::resilience::StatusSink;
use crate::expr::secrets::Secrets;
use crate::plugins::PluginRegistry;
use crate::run::Engine;
use crate::store::Store;
use crate::webhooks::delivery::{DeliveryConfig, DeliveryWorker};
use auth::{Authenticator, Scope};
use error::{ApiError, ApiResult};
pub use routes::routes;

/// Default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// How `sluice serve` runs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Address to listen on (port 0: any free port; the chosen one is printed).
    pub listen: SocketAddr,
    /// Database URL.
    pub db: String,
    /// Flow files loaded at start.
    pub flows_dir: PathBuf,
    /// Requests per second per token, for tokens without their own limit.
    pub token_rate: i64,
    /// Runs executing at once; starts beyond it wait for a slot, and get
    /// `503` + `Retry-After` when none frees within a second.
    pub max_runs: usize,
    /// Run lease (how long a dead process keeps others from resuming its runs).
    pub lease: Duration,
    /// How long shutdown waits for in-flight runs.
    pub grace: Duration,
    /// Where compiled plugins are cached.
    pub plugin_cache: Option<PathBuf>,
    /// Connector definitions directory.
    pub connectors_dir: Option<PathBuf>,
    /// Connections served at once; beyond it new connections wait in the
    /// listen backlog until one closes (idle ones close to make room).
    pub max_connections: usize,
    /// How long a client may take to send a request's headers (from accept,
    /// or from the first byte of the next request on a kept-alive
    /// connection); also the longest pause inside a request body.
    pub header_timeout: Duration,
    /// How long a kept-alive connection may sit idle between requests.
    pub idle_timeout: Duration,
}

/// What every handler can reach.
pub struct AppState {
    engine: Engine,
    store: Store,
    flows: Arc<flows::FlowSet>,
    auth: Authenticator,
    metrics: metrics::Metrics,
    defs: Definitions,
    secrets: Secrets,
    plugins: Arc<PluginRegistry>,
    /// HTTP connections by id (for `test` and record reads).
    connections: std::sync::RwLock<HashMap<String, Arc<HttpConnector>>>,
    status_sink: Arc<dyn StatusSink>,
    /// Slots for executing runs.
    run_slots: Arc<Semaphore>,
    max_runs: usize,
    /// False once shutdown begins: new starts get 503.
    accepting: AtomicBool,
    /// Seals and opens credentials stored in the database.
    vault: crate::connectors::vault::Vault,
}

impl AppState {
    /// A connection's connector: the sandbox or an HTTP connection.
    fn connector(&self, id: &str) -> ApiResult<Arc<dyn crate::connectors::Connector>> {
        check_id("connection", id)?;
        self.engine
            .connectors()
            .get(id)
            .cloned()
            .ok_or_else(|| ApiError::not_found(format!("no connection `{id}`")))
    }
}

/// Ids in paths: letters, digits, `-`, `_` and `.`, not `..`; anything else
/// (a path traversal such as `../etc`) is refused before it reaches the store.
pub fn check_id(what: &str, id: &str) -> ApiResult<()> {
    let ok = !id.is_empty()
        && id.len() <= 128
        && id != "."
        && !id.contains("..")
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "invalid {what} id `{}`: use up to 128 letters, digits, `-`, `_` and `.`",
            id.chars().take(80).collect::<String>()
        )))
    }
}

/// Refuses a request whose `Content-Type` is none of `accepted` (415),
/// naming the first as the one to use.
pub fn require_content_type(headers: &HeaderMap, accepted: &[&str]) -> ApiResult<()> {
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if accepted.iter().any(|t| ctype.starts_with(t)) {
        return Ok(());
    }
    Err(ApiError::media_type(format!(
        "this route takes `Content-Type: {}`, not `{}`",
        accepted.first().copied().unwrap_or("?"),
        if ctype.is_empty() { "(none)" } else { ctype }
    )))
}

/// Parses a JSON request body, with the content type checked and the
/// parse error's line and column in the message.
pub fn json_body<T: DeserializeOwned>(headers: &HeaderMap, body: &[u8]) -> ApiResult<T> {
    require_content_type(headers, &["application/json"])?;
    serde_json::from_slice(body).map_err(|e| {
        use serde_json::error::Category;
        let at = format!("line {} column {}", e.line(), e.column());
        match e.classify() {
            Category::Data => ApiError::validation(format!("invalid request body at {at}: {e}")),
            _ => ApiError::invalid(format!("malformed JSON at {at}: {e}")),
        }
    })
}

/// Builds the state: store, engine with every stored connection, plugin
/// registry, flows from the directory and the store.
pub async fn state(config: &ServeConfig) -> Result<Arc<AppState>, String> {
    let store = Store::connect(&config.db)
        .await
        .map_err(|e| e.to_string())?;
    let secrets = Secrets::from_env();
    let vault = crate::connectors::vault::Vault::from_env()?;
    open_stored_credentials(&store, &vault, &secrets).await?;
    let (defs, broken) =
        Definitions::load(config.connectors_dir.as_deref()).map_err(|e| e.to_string())?;
    for e in &broken {
        tracing::warn!(
            file = %e.file,
            problems = %e,
            "skipped a connector definition that is not valid; connections using it are not loaded"
        );
    }
    let plugins = Arc::new(PluginRegistry::new(
        store.clone(),
        config.plugin_cache.clone(),
    ));
    let engine = Engine::new(store.clone(), Default::default(), secrets.clone())
        .with_lease(config.lease)
        .with_plugins(plugins.clone());
    let status_sink: Arc<dyn StatusSink> = StoreSink::start(store.clone());
    let mut connections = HashMap::new();
    for row in store.connections().await.map_err(|e| e.to_string())? {
        match conn::build(&row, &defs, &secrets, Some(status_sink.clone())) {
            Ok(c) => {
                let c = Arc::new(c);
                engine.set_connection(&row.id, c.clone());
                connections.insert(row.id.clone(), c);
            }
            Err(e) => tracing::warn!("{e}"),
        }
    }
    let state = Arc::new(AppState {
        auth: Authenticator::new(store.clone(), config.token_rate),
        flows: Arc::new(flows::FlowSet::default()),
        metrics: metrics::Metrics::default(),
        engine,
        store,
        defs,
        secrets,
        plugins,
        connections: std::sync::RwLock::new(connections),
        status_sink,
        run_slots: Arc::new(Semaphore::new(config.max_runs)),
        max_runs: config.max_runs,
        accepting: AtomicBool::new(true),
        vault,
    });
    // `flow` steps and `on_failure` run the flows this server has loaded.
    state.engine.set_flows(state.flows.clone());
    flows::load_dir(&state, &config.flows_dir).await?;
    flows::reload(&state).await.map_err(|e| e.to_string())?;
    Ok(state)
}

/// Opens the credentials stored sealed in the database (the console's
/// connect flow) into `secrets`, sealing again with the current key those
/// sealed with the old one (key rotation). One that does not open is
/// logged, and its connection reports the credential missing.
async fn open_stored_credentials(
    store: &Store,
    vault: &crate::connectors::vault::Vault,
    secrets: &Secrets,
) -> Result<(), String> {
    let mut resealed = Vec::new();
    for c in store.credentials().await.map_err(|e| e.to_string())? {
        match vault.open(&c.secret_name, &c.sealed) {
            Ok(opened) => {
                secrets.add_stored(&c.secret_name, &opened.value);
                if opened.stale {
                    resealed.push(crate::store::StoredCredential {
                        sealed: vault.seal(&c.secret_name, &opened.value)?,
                        ..c
                    });
                }
            }
            Err(e) => tracing::warn!(connection = %c.connection_id, "{e}"),
        }
    }
    if !resealed.is_empty() {
        store
            .put_credentials(&resealed)
            .await
            .map_err(|e| e.to_string())?;
        tracing::info!(
            count = resealed.len(),
            "stored credentials sealed again with the new SLUICE_CREDENTIALS_KEY; SLUICE_CREDENTIALS_OLD_KEY can go"
        );
    }
    Ok(())
}

/// Runs the server until `shutdown` completes. `on_listening` gets the bound address.
pub async fn serve(
    config: ServeConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    on_listening: impl FnOnce(SocketAddr),
) -> Result<(), String> {
    let state = state(&config).await?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    if state
        .store
        .tokens()
        .await
        .map_err(|e| e.to_string())?
        .iter()
        .all(|t| t.revoked_at.is_some())
    {
        tracing::warn!(
            "no API token exists: every /v1 route except inbound hooks will answer 401; create one with `sluice token create --name NAME --scope admin`"
        );
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut workers = tokio::task::JoinSet::new();
    let delivery = DeliveryWorker::new(state.store.clone(), DeliveryConfig::from_env()?)?;
    // A bad retention setting stops the start, not the first prune.
    retention::defaults_from_env()?;
    {
        let mut stop = stop_rx.clone();
        workers.spawn(async move {
            delivery
                .run_until(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await;
        });
    }
    workers.spawn(triggers::schedule_loop(state.clone(), stop_rx.clone()));
    workers.spawn(triggers::event_loop(state.clone(), stop_rx.clone()));
    workers.spawn(triggers::waits_loop(state.clone(), stop_rx.clone()));
    workers.spawn(triggers::sync_schedule_loop(state.clone(), stop_rx.clone()));
    workers.spawn(triggers::maintenance_loop(
        state.clone(),
        stop_rx.clone(),
        config.lease,
    ));

    // The console calls the API in-process through its own copy of it.
    let api = routes(state.clone()).into_router();
    let app = routes(state.clone()).into_router_with(console::router(state.clone(), api));
    on_listening(addr);
    tracing::info!(%addr, "listening");
    let limits = accept::ConnectionLimits {
        max_connections: config.max_connections,
        header_timeout: config.header_timeout,
        idle_timeout: config.idle_timeout,
        grace: config.grace,
    };
    accept::accept_loop(listener, app, limits, shutdown).await;

    // Shutdown: stop starting runs, let in-flight ones finish (within the
    // grace period), stop the workers.
    state.accepting.store(false, Ordering::SeqCst);
    let all = u32::try_from(state.max_runs).unwrap_or(u32::MAX);
    match tokio::time::timeout(config.grace, state.run_slots.acquire_many(all)).await {
        Ok(_) => tracing::info!("all in-flight runs finished"),
        Err(_) => tracing::warn!(
            in_flight = state.max_runs - state.run_slots.available_permits(),
            "runs still in flight after the grace period; they stay leased and resume in the next process once the lease expires"
        ),
    }
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while workers.join_next().await.is_some() {}
    })
    .await;
    Ok(())
}

/// The answer of `/healthz` and `/readyz`.
#[derive(serde::Serialize, schemars::JsonSchema)]
pub struct Status {
    /// `ok` (healthz) or `ready` (readyz).
    pub status: &'static str,
}

async fn health() -> axum::Json<Status> {
    axum::Json(Status { status: "ok" })
}

async fn ready(State(state): State<Arc<AppState>>) -> ApiResult<impl IntoResponse> {
    if !state.accepting.load(Ordering::SeqCst) {
        return Err(ApiError::unavailable("shutting down", 5));
    }
    state
        .store
        .ping()
        .await
        .map_err(|e| ApiError::unavailable(format!("the database does not answer: {e}"), 5))?;
    Ok(axum::Json(Status { status: "ready" }))
}

async fn openapi(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    axum::Json(routes(state).openapi())
}

/// The request id of a request: the client's `x-request-id` when it is
/// short and plain, else a new UUID v7.
fn request_id_of(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        })
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::now_v7().to_string())
}

/// Marks a response a flow wrote (a `respond: output` hook's answer): its
/// 4xx or 5xx is the flow's own answer, not an error to re-render.
#[derive(Debug, Clone, Copy)]
pub struct FlowAnswer;

/// The header naming the run that answered a `respond: output` hook.
pub const RUN_ID_HEADER: &str = "sluice-run-id";

/// Middleware: request id (header, log span, error bodies), access log,
/// uniform error bodies (except a flow's own answer), request metrics.
pub async fn request_id(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let id = request_id_of(req.headers());
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let span = tracing::info_span!("request", request_id = %id, %method, %path);
    let started = std::time::Instant::now();
    let mut res = next.run(req).instrument(span.clone()).await;
    let status = res.status();
    // A flow's synchronous answer and a console page keep their own bodies.
    let flow_answer = res.extensions().get::<FlowAnswer>().is_some()
        || res.extensions().get::<console::Page>().is_some();
    if (status.is_client_error() || status.is_server_error()) && !flow_answer {
        let err = res.extensions().get::<ApiError>().cloned().unwrap_or_else(|| {
            let mut e = ApiError::for_status(status);
            if status == axum::http::StatusCode::METHOD_NOT_ALLOWED {
                // axum adds the `Allow` header after this middleware runs.
                e.message = format!(
                    "{method} is not allowed on {path}; the `Allow` header lists the methods it takes"
                );
            }
            e
        });
        let headers = res.headers().clone();
        res = (status, axum::Json(err.body(&id))).into_response();
        for name in [
            header::RETRY_AFTER,
            header::ALLOW,
            header::HeaderName::from_static(RUN_ID_HEADER),
        ] {
            for v in headers.get_all(&name) {
                res.headers_mut().append(name.clone(), v.clone());
            }
        }
        span.in_scope(|| {
            if status.is_server_error() {
                tracing::error!(status = status.as_u16(), code = err.code, "request failed")
            } else {
                tracing::info!(status = status.as_u16(), code = err.code, message = %err.message, "request refused")
            }
        });
    }
    if let Ok(v) = HeaderValue::from_str(&id) {
        res.headers_mut().insert("x-request-id", v);
    }
    let elapsed = started.elapsed();
    state.metrics.request(status.as_u16(), elapsed);
    span.in_scope(|| {
        tracing::debug!(
            status = status.as_u16(),
            ms = elapsed.as_secs_f64() * 1000.0,
            "request"
        )
    });
    res
}

/// Middleware: the route's scope, checked against the bearer token.
pub async fn require_scope(
    State((state, scope)): State<(Arc<AppState>, Scope)>,
    mut req: Request,
    next: Next,
) -> Response {
    // The console calls the API in-process for its signed-in user; the
    // extension cannot come from the network.
    let checked = match req.extensions().get::<console::SessionCaller>() {
        Some(session) => state.auth.check_id(&session.token_id, scope).await,
        None => {
            let header = req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok());
            state.auth.check(header, scope).await
        }
    };
    match checked {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(e) => e.into_response(),
    }
}

/// Methods the API uses, by name.
pub(crate) fn method(name: &str) -> Method {
    Method::from_bytes(name.as_bytes()).expect("route methods are valid")
}
