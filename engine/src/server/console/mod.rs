//! The console: a web UI served by `sluice serve` at `/`, server-rendered
//! HTML (minijinja templates and one stylesheet, embedded in the binary; no
//! script, no Node toolchain).
//!
//! It is an API client in the process: every page reads, and every button
//! changes, through the same `/v1` routes a token would call, dispatched
//! in-process with the signed-in session's token ([`SessionCaller`]). So
//! the console shows what the API answers and a `read` token's session is
//! refused what the API refuses that token, by the same check.
//!
//! Sign-in exchanges an API token for a session cookie (`HttpOnly`,
//! `SameSite=Strict`), stored hashed; every form carries the session's CSRF
//! token, and a `POST` without it is refused. Signing out deletes the
//! session, so a replayed cookie is refused. `/status` needs no sign-in.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore;
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tower::ServiceExt;

use super::AppState;
use super::auth::Scope;
use crate::flow::model::InputType;

mod graph;

/// Marks a response as a console page: the API's middleware leaves its
/// body as it is (an HTML page saying what went wrong, not a JSON error).
#[derive(Debug, Clone, Copy)]
pub struct Page;

async fn mark_page(mut res: Response) -> Response {
    res.extensions_mut().insert(Page);
    let h = res.headers_mut();
    // Pages show secrets once (a new endpoint's) and carry CSRF tokens: not
    // kept by caches. Link tokens in URLs are not sent to other sites as a
    // Referer (`same-origin`; `no-referrer` would make browsers send
    // `Origin: null` on the forms' own posts, which sign-in refuses). No
    // framing; nothing but this server's own stylesheet and forms.
    if !h.contains_key(header::CACHE_CONTROL) {
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    res
}

/// Marks an in-process API request made for a console session.
#[derive(Debug, Clone)]
pub struct SessionCaller {
    /// The session's token.
    pub token_id: String,
}

const COOKIE: &str = "sluice_session";
/// How long a session lasts.
const SESSION_MS: i64 = 12 * 3600 * 1000;

struct Console {
    state: Arc<AppState>,
    api: Router,
    env: minijinja::Environment<'static>,
    /// Whether `/status` shows connection ids (`SLUICE_STATUS_NAMES=show`);
    /// by default it says "System 1, 2, ...": the page is public, and ids
    /// often name customers.
    status_names: bool,
}

/// A signed-in browser.
struct Session {
    id_hash: String,
    token_id: String,
    csrf: String,
    scope: Scope,
}

/// The console's routes.
pub fn router(state: Arc<AppState>, api: Router) -> Router {
    let console = Arc::new(Console {
        state,
        api,
        env: templates(),
        status_names: std::env::var("SLUICE_STATUS_NAMES").is_ok_and(|v| v == "show"),
    });
    Router::new()
        .route("/", get(flows_page))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/flows/{id}", get(flow_page))
        .route("/flows/{id}/{action}", post(flow_action))
        .route("/runs", get(runs_page))
        .route("/runs/{id}", get(run_page))
        .route("/runs/{id}/{action}", post(run_action))
        .route("/connections", get(connections_page))
        .route("/connections/{id}", get(connection_page))
        .route("/connections/{id}/sync", post(connection_sync))
        .route("/connect", get(connect::catalog))
        .route(
            "/connect/{definition}",
            get(connect::form_page).post(connect::submit),
        )
        .route("/connect-links", post(connect::create_link))
        .route(
            "/link/{token}",
            get(connect::link_page).post(connect::link_submit),
        )
        .route("/webhooks", get(webhooks_page))
        .route("/webhooks/endpoints", post(endpoint_create))
        .route("/webhooks/endpoints/{id}/{action}", post(endpoint_action))
        .route("/webhooks/messages/{id}", get(message_page))
        .route("/webhooks/messages/{id}/resend", post(message_resend))
        .route("/plugins", get(plugins_page).post(plugin_upload))
        .route("/status", get(status_page))
        .route("/console.css", get(stylesheet))
        .route_layer(axum::middleware::map_response(mark_page))
        .with_state(console)
}

fn templates() -> minijinja::Environment<'static> {
    let mut env = minijinja::Environment::new();
    for (name, text) in [
        ("base.html", include_str!("templates/base.html")),
        ("login.html", include_str!("templates/login.html")),
        ("message.html", include_str!("templates/message.html")),
        ("flows.html", include_str!("templates/flows.html")),
        ("flow.html", include_str!("templates/flow.html")),
        ("runs.html", include_str!("templates/runs.html")),
        ("run.html", include_str!("templates/run.html")),
        (
            "connections.html",
            include_str!("templates/connections.html"),
        ),
        ("connection.html", include_str!("templates/connection.html")),
        ("webhooks.html", include_str!("templates/webhooks.html")),
        (
            "webhook_message.html",
            include_str!("templates/webhook_message.html"),
        ),
        ("plugins.html", include_str!("templates/plugins.html")),
        ("graph.html", include_str!("templates/graph.html")),
        ("secret.html", include_str!("templates/secret.html")),
        ("connect.html", include_str!("templates/connect.html")),
        (
            "connect_form.html",
            include_str!("templates/connect_form.html"),
        ),
        (
            "link_created.html",
            include_str!("templates/link_created.html"),
        ),
        ("status.html", include_str!("templates/status.html")),
    ] {
        env.add_template(name, text)
            .expect("the console's templates parse");
    }
    env.add_filter("time", |ms: Option<i64>| -> String {
        ms.and_then(chrono::DateTime::from_timestamp_millis)
            .map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
            .unwrap_or_else(|| "—".into())
    });
    env.add_filter("pretty", |v: minijinja::Value| -> String {
        serde_json::to_value(&v)
            .ok()
            .and_then(|v| serde_json::to_string_pretty(&v).ok())
            .unwrap_or_default()
    });
    env
}

impl Console {
    fn render(&self, name: &str, ctx: Value) -> Response {
        match self
            .env
            .get_template(name)
            .and_then(|t| t.render(minijinja::value::Serde(&ctx)))
        {
            Ok(html) => Html(html).into_response(),
            Err(e) => {
                tracing::error!(template = name, error = %e, "console template failed");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the page could not be rendered",
                )
                    .into_response()
            }
        }
    }

    /// A page of the signed-in console, with what every page needs.
    fn page(&self, name: &str, s: &Session, section: &str, mut ctx: Value) -> Response {
        ctx["session"] = json!({
            "csrf": s.csrf,
            "scope": s.scope.as_str(),
            "can_write": s.scope >= Scope::Write,
        });
        ctx["section"] = json!(section);
        self.render(name, ctx)
    }

    /// A page that says what went wrong (escaped like every page).
    fn message(&self, status: StatusCode, title: &str, text: &str) -> Response {
        let mut r = self.render("message.html", json!({"title": title, "text": text}));
        *r.status_mut() = status;
        r
    }

    /// The browser's session, or the sign-in page.
    async fn session(&self, headers: &HeaderMap) -> Result<Session, Response> {
        let Some(cookie) = cookie(headers) else {
            return Err(to_login());
        };
        let id_hash = hex::encode(Sha256::digest(cookie.as_bytes()));
        let row = match self.state.store.session(&id_hash).await {
            Ok(Some(row)) => row,
            Ok(None) => return Err(to_login()),
            Err(e) => {
                return Err(self.message(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The store does not answer",
                    &e.to_string(),
                ));
            }
        };
        match self.state.auth.check_id(&row.token_id, Scope::Read).await {
            Ok(caller) => Ok(Session {
                id_hash,
                token_id: row.token_id,
                csrf: row.csrf,
                scope: caller.scope,
            }),
            Err(e) if e.status == StatusCode::TOO_MANY_REQUESTS => Err(self.message(
                StatusCode::TOO_MANY_REQUESTS,
                "Too many requests",
                &e.message,
            )),
            // Revoked or deleted: sign in again.
            Err(_) => Err(to_login()),
        }
    }

    /// The session of a form post whose `csrf` field matches it.
    async fn form_session(
        &self,
        headers: &HeaderMap,
        form: &BTreeMap<String, String>,
    ) -> Result<Session, Response> {
        let s = self.session(headers).await?;
        let given = form.get("csrf").map(String::as_str).unwrap_or("");
        if given.is_empty() || !bool::from(given.as_bytes().ct_eq(s.csrf.as_bytes())) {
            return Err(self.message(
                StatusCode::FORBIDDEN,
                "Refused: the form's CSRF token is missing or wrong",
                "Forms of the console carry a token of your session. Reload the page and send the form again.",
            ));
        }
        Ok(s)
    }

    /// Calls an API route for the session: its status and JSON body.
    async fn api(
        &self,
        s: &Session,
        method: Method,
        uri: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder().method(method).uri(uri);
        let body = match body {
            Some(v) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Body::from(serde_json::to_vec(&v).unwrap_or_default())
            }
            None => Body::empty(),
        };
        let Ok(req) = req.body(body) else {
            return (
                StatusCode::BAD_REQUEST,
                error_json(&format!("not a valid address: {uri}")),
            );
        };
        self.send(s, req).await
    }

    /// Sends an API request for the session: its status and JSON body.
    async fn send(&self, s: &Session, mut req: Request<Body>) -> (StatusCode, Value) {
        req.extensions_mut().insert(SessionCaller {
            token_id: s.token_id.clone(),
        });
        let resp = match self.api.clone().oneshot(req).await {
            Ok(r) => r,
            Err(never) => match never {},
        };
        let status = resp.status();
        let bytes = axum::body::to_bytes(resp.into_body(), 64 << 20)
            .await
            .unwrap_or_default();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// An API read the page cannot do without: its body, or a page saying why not.
    async fn read(&self, s: &Session, uri: &str) -> Result<Value, Response> {
        let (status, body) = self.api(s, Method::GET, uri, None).await;
        if status.is_success() {
            Ok(body)
        } else {
            Err(self.api_error(status, &body))
        }
    }

    fn api_error(&self, status: StatusCode, body: &Value) -> Response {
        let text = body["error"]["message"]
            .as_str()
            .unwrap_or("the request failed");
        let title = match status {
            StatusCode::FORBIDDEN => "Not allowed",
            StatusCode::NOT_FOUND => "Not found",
            _ => "The request failed",
        };
        self.message(status, title, text)
    }

    /// Runs an action (a `POST` to the API) and goes to `then`, or shows why it failed.
    async fn act(&self, s: &Session, uri: &str, body: Option<Value>, then: &str) -> Response {
        self.act_with(s, Method::POST, uri, body, then).await
    }

    /// [`Console::act`] with another method (`PATCH`).
    async fn act_with(
        &self,
        s: &Session,
        method: Method,
        uri: &str,
        body: Option<Value>,
        then: &str,
    ) -> Response {
        let (status, answer) = self.api(s, method, uri, body).await;
        if status.is_success() {
            see_other(then)
        } else {
            self.api_error(status, &answer)
        }
    }
}

fn error_json(message: &str) -> Value {
    json!({"error": {"message": message}})
}

fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
        .filter(|v| !v.is_empty() && v.len() <= 100)
}

fn see_other(to: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to.to_string())]).into_response()
}

fn to_login() -> Response {
    see_other("/login")
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// A form body's fields (the last of a repeated name wins).
fn form(body: &Bytes) -> BTreeMap<String, String> {
    url::form_urlencoded::parse(body).into_owned().collect()
}

/// A query string's fields.
fn query(q: &Option<String>) -> BTreeMap<String, String> {
    url::form_urlencoded::parse(q.as_deref().unwrap_or("").as_bytes())
        .into_owned()
        .collect()
}

/// A path segment or query value, encoded for a URL.
fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

macro_rules! session {
    ($c:expr, $headers:expr) => {
        match $c.session(&$headers).await {
            Ok(s) => s,
            Err(r) => return r,
        }
    };
}

/// The session of a form post (its CSRF token checked), or the page saying why not.
macro_rules! form_session {
    ($c:expr, $headers:expr, $fields:expr) => {
        match $c.form_session(&$headers, &$fields).await {
            Ok(s) => s,
            Err(r) => return r,
        }
    };
}

macro_rules! read {
    ($c:expr, $s:expr, $uri:expr) => {
        match $c.read(&$s, &$uri).await {
            Ok(v) => v,
            Err(r) => return r,
        }
    };
}

// After the macros above, which it uses.
mod connect;

async fn stylesheet() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        include_str!("console.css"),
    )
}

async fn login_page(State(c): State<Arc<Console>>) -> Response {
    c.render("login.html", json!({}))
}

async fn login(State(c): State<Arc<Console>>, headers: HeaderMap, body: Bytes) -> Response {
    // A sign-in posted from another site's page is refused (login CSRF):
    // by `Origin` (`null` included: a sandboxed frame), else by `Referer`.
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let same_site = |url: &str| {
        url.split_once("://")
            .map(|(_, rest)| rest.split('/').next().unwrap_or(""))
            == host
    };
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let referer = headers.get(header::REFERER).and_then(|v| v.to_str().ok());
    let foreign = match (origin, referer) {
        (Some(o), _) => !same_site(o),
        (None, Some(r)) => !same_site(r),
        (None, None) => false,
    };
    if foreign {
        return c.message(
            StatusCode::FORBIDDEN,
            "Refused: sign-in from another site",
            "The sign-in form was sent from a page this server did not serve.",
        );
    }
    let fields = form(&body);
    let token = fields.get("token").map(|t| t.trim()).unwrap_or("");
    let bearer = format!("Bearer {token}");
    let caller = match c.state.auth.check(Some(&bearer), Scope::Read).await {
        Ok(caller) => caller,
        Err(e) => {
            let mut r = c.render("login.html", json!({"error": e.message}));
            *r.status_mut() = StatusCode::UNAUTHORIZED;
            return r;
        }
    };
    let id = random_token();
    let id_hash = hex::encode(Sha256::digest(id.as_bytes()));
    let expires = crate::store::now_ms() + SESSION_MS;
    if let Err(e) = c
        .state
        .store
        .insert_session(&id_hash, &caller.token_id, &random_token(), expires)
        .await
    {
        return c.message(
            StatusCode::SERVICE_UNAVAILABLE,
            "The store does not answer",
            &e.to_string(),
        );
    }
    let cookie = format!(
        "{COOKIE}={id}; HttpOnly; SameSite=Strict; Path=/; Max-Age={}{}",
        SESSION_MS / 1000,
        secure_attribute(&headers)
    );
    (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, "/".to_string()),
            (header::SET_COOKIE, cookie),
        ],
    )
        .into_response()
}

/// `; Secure` when the console is reached over https: `SLUICE_PUBLIC_URL`
/// is https, or the proxy in front says so (`X-Forwarded-Proto: https`).
/// Plain http (a local server) gets a cookie the browser would send back.
fn secure_attribute(headers: &HeaderMap) -> &'static str {
    let public = std::env::var("SLUICE_PUBLIC_URL")
        .is_ok_and(|u| u.trim().to_ascii_lowercase().starts_with("https://"));
    let forwarded = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|p| p.trim().eq_ignore_ascii_case("https"));
    if public || forwarded { "; Secure" } else { "" }
}

async fn logout(State(c): State<Arc<Console>>, headers: HeaderMap, body: Bytes) -> Response {
    let s = form_session!(c, headers, form(&body));
    if let Err(e) = c.state.store.delete_session(&s.id_hash).await {
        return c.message(
            StatusCode::SERVICE_UNAVAILABLE,
            "The store does not answer",
            &e.to_string(),
        );
    }
    (
        StatusCode::SEE_OTHER,
        [
            (header::LOCATION, "/login".to_string()),
            (
                header::SET_COOKIE,
                format!(
                    "{COOKIE}=; HttpOnly; SameSite=Strict; Path=/; Max-Age=0{}",
                    secure_attribute(&headers)
                ),
            ),
        ],
    )
        .into_response()
}

/// Success rate and last run of a flow's latest runs.
fn run_stats(runs: &[Value]) -> Value {
    let ended: Vec<&Value> = runs
        .iter()
        .filter(|r| {
            matches!(
                r["status"].as_str(),
                Some("succeeded" | "failed" | "cancelled")
            )
        })
        .collect();
    let ok = ended.iter().filter(|r| r["status"] == "succeeded").count();
    json!({
        "last": runs.first(),
        "rate": (!ended.is_empty()).then(|| (ok * 100) / ended.len()),
        "counted": ended.len(),
    })
}

async fn flows_page(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let s = session!(c, headers);
    let mut flows = read!(c, s, "/v1/flows");
    if let Some(items) = flows["items"].as_array_mut() {
        for f in items {
            let id = f["id"].as_str().unwrap_or_default().to_string();
            let runs = read!(c, s, format!("/v1/runs?flow={}&limit=20", enc(&id)));
            f["stats"] = run_stats(runs["items"].as_array().map_or(&[], |v| v));
        }
    }
    c.page("flows.html", &s, "flows", json!({"flows": flows["items"]}))
}

async fn flow_page(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    let s = session!(c, headers);
    let q = query(&q);
    let flow = read!(c, s, format!("/v1/flows/{}", enc(&id)));
    let runs = read!(c, s, format!("/v1/runs?flow={}&limit=10", enc(&id)));
    // The revision shown, and the one it is compared with.
    let revision = q.get("revision").and_then(|r| r.parse::<i64>().ok());
    let against = q.get("diff").and_then(|r| r.parse::<i64>().ok());
    let shown = match revision {
        Some(r) => read!(c, s, format!("/v1/flows/{}?revision={r}", enc(&id))),
        None => flow.clone(),
    };
    let diff = match against {
        Some(r) => {
            let old = read!(c, s, format!("/v1/flows/{}?revision={r}", enc(&id)));
            Some(line_diff(
                old["source"].as_str().unwrap_or(""),
                shown["source"].as_str().unwrap_or(""),
            ))
        }
        None => None,
    };
    let loaded = c.state.flows.get(&id);
    let inputs: Vec<Value> = loaded
        .as_ref()
        .map(|l| {
            l.compiled
                .flow
                .inputs
                .iter()
                .map(|(name, spec)| {
                    json!({
                        "name": name,
                        "kind": spec.kind.name(),
                        "required": spec.required,
                        "description": spec.description,
                        "default": spec.default.as_ref().map(|d| match d {
                            Value::String(s) => s.clone(),
                            other => other.to_string(),
                        }),
                    })
                })
                .collect()
        })
        .unwrap_or_default();
    let picture = loaded
        .as_ref()
        .map(|l| graph::draw(&l.compiled.flow.steps, &BTreeMap::new()));
    c.page(
        "flow.html",
        &s,
        "flows",
        json!({
            "flow": flow,
            "shown": shown,
            "diff": diff,
            "against": against,
            "inputs": inputs,
            "graph": picture,
            "runs": runs["items"],
        }),
    )
}

/// A value without its `null` members and empty lists (a step's unset keys).
fn without_nulls(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(_, v)| !v.is_null() && v.as_array().is_none_or(|a| !a.is_empty()))
                .map(|(k, v)| (k, without_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(without_nulls).collect()),
        other => other,
    }
}

/// A line diff of two texts: `[{op: " "|"-"|"+", line}]` (longest common subsequence).
fn line_diff(old: &str, new: &str) -> Vec<Value> {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    // Flows are short; texts beyond 2,000 lines are shown whole, not diffed.
    if a.len() * b.len() > 4_000_000 {
        return b.iter().map(|l| json!({"op": " ", "line": l})).collect();
    }
    let mut lcs = vec![vec![0u32; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out.push(json!({"op": " ", "line": a[i]}));
            i += 1;
            j += 1;
        } else if j < b.len() && (i == a.len() || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out.push(json!({"op": "+", "line": b[j]}));
            j += 1;
        } else {
            out.push(json!({"op": "-", "line": a[i]}));
            i += 1;
        }
    }
    out
}

/// Turns the run form's fields into typed inputs, or says which is wrong.
fn typed_inputs(
    c: &Console,
    flow_id: &str,
    fields: &BTreeMap<String, String>,
) -> Result<Map<String, Value>, String> {
    let Some(loaded) = c.state.flows.get(flow_id) else {
        return Err(format!("flow `{flow_id}` is not loaded"));
    };
    let mut inputs = Map::new();
    for (name, spec) in &loaded.compiled.flow.inputs {
        let raw = fields.get(&format!("input.{name}"));
        let value = match (spec.kind, raw) {
            (InputType::Boolean, raw) => Value::Bool(raw.is_some_and(|v| v == "true" || v == "on")),
            (_, None) => continue,
            (_, Some(v)) if v.trim().is_empty() => continue,
            (InputType::String, Some(v)) => Value::String(v.clone()),
            (_, Some(v)) => serde_json::from_str(v.trim())
                .map_err(|e| format!("input `{name}`: `{v}` is not a {}: {e}", spec.kind.name()))?,
        };
        inputs.insert(name.clone(), value);
    }
    Ok(inputs)
}

async fn flow_action(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let fields = form(&body);
    let s = form_session!(c, headers, fields);
    let back = format!("/flows/{}", enc(&id));
    match action.as_str() {
        "enable" | "disable" => {
            c.act(&s, &format!("/v1/flows/{}/{action}", enc(&id)), None, &back)
                .await
        }
        "run" => {
            let inputs = match typed_inputs(&c, &id, &fields) {
                Ok(i) => i,
                Err(e) => return c.message(StatusCode::UNPROCESSABLE_ENTITY, "Wrong input", &e),
            };
            let (status, answer) = c
                .api(
                    &s,
                    Method::POST,
                    "/v1/runs",
                    Some(json!({"flow": id, "inputs": inputs})),
                )
                .await;
            match answer["id"].as_str() {
                Some(run) if status.is_success() => see_other(&format!("/runs/{}", enc(run))),
                _ => c.api_error(status, &answer),
            }
        }
        _ => c.message(StatusCode::NOT_FOUND, "Not found", "no such action"),
    }
}

async fn runs_page(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let s = session!(c, headers);
    let q = query(&q);
    let mut uri = "/v1/runs?limit=100".to_string();
    for key in ["flow", "status", "cursor", "trigger"] {
        if let Some(v) = q.get(key).filter(|v| !v.is_empty()) {
            uri.push_str(&format!("&{key}={}", enc(v)));
        }
    }
    // `since=24h`: runs created in the last 24 hours.
    if let Some(since) = q.get("since").filter(|v| !v.is_empty()) {
        let Some(hours) = since
            .strip_suffix('h')
            .and_then(|h| h.parse::<i64>().ok())
            .filter(|h| (1..=1_000_000).contains(h))
        else {
            return c.message(
                StatusCode::BAD_REQUEST,
                "Wrong filter",
                &format!("`since={since}`: give hours, e.g. `24h`"),
            );
        };
        let after = crate::store::now_ms() - hours * 3_600_000;
        uri.push_str(&format!("&created_after={after}"));
    }
    let runs = read!(c, s, uri);
    let items = runs["items"].clone();
    let flows = read!(c, s, "/v1/flows");
    c.page(
        "runs.html",
        &s,
        "runs",
        json!({"runs": items, "q": q, "next": runs["next_cursor"], "flows": flows["items"], "live": true, "refresh": 5}),
    )
}

async fn run_page(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let s = session!(c, headers);
    let mut run = read!(c, s, format!("/v1/runs/{}", enc(&id)));
    // The timeline: each step's bar, in percent of the run's span.
    let steps = run["steps"].as_array().cloned().unwrap_or_default();
    let start = steps
        .iter()
        .filter_map(|s| s["started_at"].as_i64())
        .chain(run["started_at"].as_i64())
        .min();
    let end = steps
        .iter()
        .filter_map(|s| s["finished_at"].as_i64().or(s["started_at"].as_i64()))
        .chain(run["finished_at"].as_i64())
        .max();
    let mut statuses = BTreeMap::new();
    if let (Some(start), Some(end)) = (start, end) {
        let span = (end - start).max(1) as f64;
        if let Some(list) = run["steps"].as_array_mut() {
            for step in list {
                let from = step["started_at"].as_i64().unwrap_or(start);
                let to = step["finished_at"].as_i64().unwrap_or(end);
                step["bar"] = json!({
                    "left": ((from - start) as f64 / span * 100.0).clamp(0.0, 100.0),
                    "width": (((to - from) as f64 / span) * 100.0).clamp(0.5, 100.0),
                    "ms": to - from,
                });
            }
        }
    }
    for step in &steps {
        if let (Some(id), Some(status)) = (step["step_id"].as_str(), step["status"].as_str()) {
            statuses.insert(id.to_string(), status.to_string());
        }
    }
    let flow_id = run["flow_id"].as_str().unwrap_or_default().to_string();
    let loaded = c.state.flows.get(&flow_id);
    let picture = loaded
        .as_ref()
        .map(|l| graph::draw(&l.compiled.flow.steps, &statuses));
    // Each step's definition in the flow, next to its input (the values
    // its expressions took, stored with its result).
    if let (Some(l), Some(list)) = (&loaded, run["steps"].as_array_mut()) {
        for step in list {
            let id = step["step_id"].as_str().unwrap_or_default().to_string();
            if let Some(def) = l.compiled.flow.steps.iter().find(|s| s.id == id) {
                step["definition"] =
                    without_nulls(serde_json::to_value(def).unwrap_or(Value::Null));
            }
        }
    }
    // Secret values never reach the page, whatever a step returned.
    let run = c.state.secrets.redact_json(&run);
    let attempts = c.state.store.attempts(&id).await.unwrap_or_default();
    let live = matches!(
        run["status"].as_str(),
        Some("queued" | "running" | "waiting")
    );
    c.page(
        "run.html",
        &s,
        "runs",
        json!({"run": run, "graph": picture, "attempts": attempts, "live": live}),
    )
}

async fn run_action(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let s = form_session!(c, headers, form(&body));
    let back = format!("/runs/{}", enc(&id));
    match action.as_str() {
        "cancel" | "rerun" => {
            c.act(&s, &format!("/v1/runs/{}/{action}", enc(&id)), None, &back)
                .await
        }
        _ => c.message(StatusCode::NOT_FOUND, "Not found", "no such action"),
    }
}

async fn connections_page(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let s = session!(c, headers);
    let mut list = read!(c, s, "/v1/connections");
    if let Some(items) = list["items"].as_array_mut() {
        for conn in items {
            let id = conn["id"].as_str().unwrap_or_default().to_string();
            let syncs = read!(c, s, format!("/v1/connections/{}/syncs", enc(&id)));
            conn["syncs"] = syncs["items"].clone();
        }
    }
    c.page(
        "connections.html",
        &s,
        "connections",
        json!({"connections": list["items"]}),
    )
}

async fn connection_page(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    RawQuery(q): RawQuery,
) -> Response {
    let s = session!(c, headers);
    let q = query(&q);
    let conn = read!(c, s, format!("/v1/connections/{}", enc(&id)));
    let mut syncs = read!(c, s, format!("/v1/connections/{}/syncs", enc(&id)));
    if let Some(items) = syncs["items"].as_array_mut() {
        for sync in items {
            // The counts are stored as JSON text.
            if let Some(text) = sync["counts"].as_str() {
                sync["counts_obj"] = serde_json::from_str(text).unwrap_or(Value::Null);
            }
        }
    }
    let entity = q.get("entity").filter(|e| !e.is_empty());
    let records = match entity {
        Some(e) => Some(read!(
            c,
            s,
            format!("/v1/connections/{}/{}?limit=50", enc(&id), enc(e))
        )),
        None => None,
    };
    let live = syncs["items"]
        .as_array()
        .is_some_and(|v| v.iter().any(|s| s["state"] == "running"));
    c.page(
        "connection.html",
        &s,
        "connections",
        json!({
            "connection": conn,
            "syncs": syncs["items"],
            "entity": entity,
            "records": records.map(|r| r["items"].clone()),
            "entities": served_entities(&c, &id),
            "live": live,
        }),
    )
}

/// The entities a connection's system serves (the sandbox: all).
fn served_entities(c: &Console, id: &str) -> Vec<String> {
    let all = || {
        crate::unified::Entity::ALL
            .iter()
            .map(|e| e.name().to_string())
            .collect()
    };
    if id == crate::connectors::sandbox::CONNECTION {
        return all();
    }
    let definition = c
        .state
        .connections
        .read()
        .expect("connections lock")
        .get(id)
        .map(|conn| conn.definition().clone());
    match definition {
        Some(def) => def.def.entities.keys().cloned().collect(),
        None => all(),
    }
}

async fn connection_sync(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let fields = form(&body);
    let s = form_session!(c, headers, fields);
    let entity = fields.get("entity").cloned().unwrap_or_default();
    let full = fields.get("full").is_some_and(|v| v == "true");
    c.act(
        &s,
        &format!("/v1/connections/{}/syncs", enc(&id)),
        Some(json!({"entity": entity, "full": full})),
        &format!("/connections/{}", enc(&id)),
    )
    .await
}

async fn webhooks_page(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    let s = session!(c, headers);
    let q = query(&q);
    let endpoints = read!(c, s, "/v1/webhooks/endpoints");
    let mut uri = "/v1/webhooks/messages?limit=100".to_string();
    if let Some(e) = q.get("endpoint").filter(|v| !v.is_empty()) {
        uri.push_str(&format!("&endpoint={}", enc(e)));
    }
    let messages = read!(c, s, uri);
    c.page(
        "webhooks.html",
        &s,
        "webhooks",
        json!({"endpoints": endpoints["items"], "messages": messages["items"], "q": q}),
    )
}

async fn message_page(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    let s = session!(c, headers);
    let message = read!(c, s, format!("/v1/webhooks/messages/{}", enc(&id)));
    c.page(
        "webhook_message.html",
        &s,
        "webhooks",
        json!({"message": message}),
    )
}

async fn message_resend(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Bytes,
) -> Response {
    let s = form_session!(c, headers, form(&body));
    let back = format!("/webhooks/messages/{}", enc(&id));
    c.act(
        &s,
        &format!("/v1/webhooks/messages/{}/resend", enc(&id)),
        None,
        &back,
    )
    .await
}

/// `POST /webhooks/endpoints`: a new endpoint; its secret is shown once.
async fn endpoint_create(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let fields = form(&body);
    let s = form_session!(c, headers, fields);
    let field = |k: &str| {
        fields
            .get(k)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let event_types: Vec<String> = field("event_types")
        .unwrap_or_default()
        .split([',', ' '])
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect();
    let (status, answer) = c
        .api(
            &s,
            Method::POST,
            "/v1/webhooks/endpoints",
            Some(json!({
                "url": field("url").unwrap_or_default(),
                "event_types": event_types,
                "description": field("description"),
            })),
        )
        .await;
    if !status.is_success() {
        return c.api_error(status, &answer);
    }
    c.page(
        "secret.html",
        &s,
        "webhooks",
        json!({"title": "Endpoint created", "id": answer["id"], "secret": answer["secret"]}),
    )
}

/// `POST /webhooks/endpoints/{id}/enable|disable|rotate`.
async fn endpoint_action(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Path((id, action)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let s = form_session!(c, headers, form(&body));
    let uri = format!("/v1/webhooks/endpoints/{}", enc(&id));
    match action.as_str() {
        "enable" | "disable" => {
            let enabled = json!({"enabled": action == "enable"});
            c.act_with(&s, Method::PATCH, &uri, Some(enabled), "/webhooks")
                .await
        }
        "rotate" => {
            let (status, answer) = c
                .api(&s, Method::POST, &format!("{uri}/rotate-secret"), None)
                .await;
            if !status.is_success() {
                return c.api_error(status, &answer);
            }
            c.page(
                "secret.html",
                &s,
                "webhooks",
                json!({
                    "title": "Secret rotated",
                    "id": answer["id"],
                    "secret": answer["secret"],
                    "previous_valid_s": answer["previous_secret_valid_for_s"],
                }),
            )
        }
        _ => c.message(StatusCode::NOT_FOUND, "Not found", "no such action"),
    }
}

/// `POST /plugins`: a `.wasm` file from a form (multipart), sent on to the API.
async fn plugin_upload(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    mut multipart: axum::extract::Multipart,
) -> Response {
    let mut fields = BTreeMap::new();
    let mut wasm = None;
    loop {
        match multipart.next_field().await {
            Ok(Some(field)) => {
                let name = field.name().unwrap_or_default().to_string();
                match field.bytes().await {
                    Ok(bytes) if name == "file" => wasm = Some(bytes),
                    Ok(bytes) => {
                        fields.insert(name, String::from_utf8_lossy(&bytes).trim().to_string());
                    }
                    Err(e) => {
                        return c.message(
                            StatusCode::BAD_REQUEST,
                            "The upload failed",
                            &e.body_text(),
                        );
                    }
                }
            }
            Ok(None) => break,
            Err(e) => {
                return c.message(StatusCode::BAD_REQUEST, "The upload failed", &e.body_text());
            }
        }
    }
    let s = form_session!(c, headers, fields);
    let Some(wasm) = wasm.filter(|w| !w.is_empty()) else {
        return c.message(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Wrong input",
            "choose a .wasm file to upload",
        );
    };
    let field = |k: &str| fields.get(k).cloned().unwrap_or_default();
    let mut uri = format!(
        "/v1/plugins?name={}&version={}",
        enc(&field("name")),
        enc(&field("version"))
    );
    if !field("description").is_empty() {
        uri.push_str(&format!("&description={}", enc(&field("description"))));
    }
    let mut req = Request::builder()
        .method(Method::POST)
        .uri(&uri)
        .header(header::CONTENT_TYPE, "application/wasm");
    if let Some(h) = req.headers_mut() {
        h.insert(header::CONTENT_LENGTH, wasm.len().into());
    }
    let Ok(req) = req.body(Body::from(wasm)) else {
        return c.message(
            StatusCode::BAD_REQUEST,
            "Wrong input",
            "not a valid plugin name or version",
        );
    };
    let (status, answer) = c.send(&s, req).await;
    if status.is_success() {
        see_other("/plugins")
    } else {
        c.api_error(status, &answer)
    }
}

async fn plugins_page(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let s = session!(c, headers);
    let plugins = read!(c, s, "/v1/plugins");
    c.page(
        "plugins.html",
        &s,
        "plugins",
        json!({"plugins": plugins["items"]}),
    )
}

/// `/status`: the engine's health and each connection's status with its
/// incidents (status changes), without sign-in.
async fn status_page(State(c): State<Arc<Console>>) -> Response {
    let store = &c.state.store;
    let healthy = store.ping().await.is_ok();
    let mut connections = Vec::new();
    if let Ok(rows) = store.connections().await {
        for (n, row) in rows.iter().enumerate() {
            let events = store.status_history(&row.id, 20).await.unwrap_or_default();
            let name = if c.status_names {
                row.id.clone()
            } else {
                format!("System {}", n + 1)
            };
            connections.push(json!({
                "name": name,
                "status": row.status,
                "since": row.status_at,
                "incidents": events,
            }));
        }
    }
    c.render(
        "status.html",
        json!({"healthy": healthy, "connections": connections}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_diff_marks_removed_and_added_lines() {
        let d = line_diff("a\nb\nc\n", "a\nc\nd\n");
        let ops: Vec<String> = d
            .iter()
            .map(|l| {
                format!(
                    "{}{}",
                    l["op"].as_str().unwrap(),
                    l["line"].as_str().unwrap()
                )
            })
            .collect();
        assert_eq!(ops, [" a", "-b", " c", "+d"]);
    }
}
