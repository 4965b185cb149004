//! The HTTP connector: runs a [`CompiledDefinition`] against a real system.
//!
//! One [`HttpConnector`] per connection. Every request goes through the same
//! path: circuit breaker → token bucket → auth (cached OAuth2 token, CSRF
//! token for writes) → send with a deadline → classify the answer (retry
//! transient failures and `429` with backoff, map the rest through the
//! definition's error rules) → update the connection status.
//!
//! Pagination state travels in `next_cursor` as an opaque token; a next link
//! must stay on the connection's host, and a listing stops with an error after
//! `max_pages` pages or when the system repeats a next link.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use url::Url;

use super::definition::{
    Auth, CompiledDefinition, CompiledEntity, KeyPlacement, Method, Paginator, RequestSpec,
};
use super::mapping::{FastPath, MapError};
use super::resilience::{Admit, Health, Policy, TokenBucket};
use super::{
    ConnectionStatus, Connector, ConnectorError, ConnectorErrorKind, ErrorCode, ListQuery, Page,
    WriteRequest,
};
use crate::expr::jsonpath::Query;
use crate::expr::{Template, from_json};
use crate::unified::Entity;

/// Largest response body read (bytes).
pub const MAX_BODY: usize = 64 * 1024 * 1024;

/// A JSON body template: templates plus `{"$for": list, "$do": body}` repetition.
#[derive(Debug)]
pub enum BodyTemplate {
    /// Plain template.
    T(Template),
    /// Repeat `body` for each element of `items`, bound to `item`.
    For {
        /// The list.
        items: Template,
        /// Per element.
        body: Box<BodyTemplate>,
    },
    /// An array with repetitions inside.
    Array(Vec<BodyTemplate>),
    /// An object with repetitions inside.
    Object(Vec<(String, BodyTemplate)>),
}

fn has_for(v: &Value) -> bool {
    match v {
        Value::Object(m) => m.contains_key("$for") || m.values().any(has_for),
        Value::Array(a) => a.iter().any(has_for),
        _ => false,
    }
}

impl BodyTemplate {
    /// Compiles a body.
    pub fn compile(v: &Value) -> Result<BodyTemplate, String> {
        if !has_for(v) {
            return Template::compile(v)
                .map(BodyTemplate::T)
                .map_err(|e| e.to_string());
        }
        match v {
            Value::Object(m) if m.contains_key("$for") => {
                let items = m
                    .get("$for")
                    .and_then(Value::as_str)
                    .ok_or("`$for` takes an expression such as `${{ record.lines }}`")?;
                let body = m
                    .get("$do")
                    .ok_or("`$for` needs `$do`: the body per element")?;
                if m.len() != 2 {
                    return Err("an object with `$for` has only `$for` and `$do`".into());
                }
                Ok(BodyTemplate::For {
                    items: Template::compile_str(items).map_err(|e| e.to_string())?,
                    body: Box::new(BodyTemplate::compile(body)?),
                })
            }
            Value::Object(m) => Ok(BodyTemplate::Object(
                m.iter()
                    .map(|(k, v)| Ok((k.clone(), BodyTemplate::compile(v)?)))
                    .collect::<Result<_, String>>()?,
            )),
            Value::Array(a) => Ok(BodyTemplate::Array(
                a.iter()
                    .map(BodyTemplate::compile)
                    .collect::<Result<_, _>>()?,
            )),
            _ => unreachable!("has_for is false for scalars"),
        }
    }

    /// Renders the body; null values are left out of objects.
    pub fn eval(&self, ctx: &Value) -> Result<Value, String> {
        match self {
            BodyTemplate::T(t) => t
                .eval(&from_json(ctx))
                .map(strip_nulls)
                .map_err(|e| e.to_string()),
            BodyTemplate::For { items, body } => {
                let list = items.eval(&from_json(ctx)).map_err(|e| e.to_string())?;
                match list {
                    Value::Null => Ok(Value::Null),
                    Value::Array(items) => {
                        let mut out = Vec::with_capacity(items.len());
                        for item in items {
                            let mut c = ctx.clone();
                            c["item"] = item;
                            out.push(body.eval(&c)?);
                        }
                        Ok(Value::Array(out))
                    }
                    other => Err(format!("`$for` needs a list, got {other}")),
                }
            }
            BodyTemplate::Array(a) => a
                .iter()
                .map(|b| b.eval(ctx))
                .collect::<Result<Vec<_>, _>>()
                .map(Value::Array),
            BodyTemplate::Object(entries) => {
                let mut m = Map::new();
                for (k, b) in entries {
                    let v = b.eval(ctx)?;
                    if !v.is_null() {
                        m.insert(k.clone(), v);
                    }
                }
                Ok(Value::Object(m))
            }
        }
    }
}

fn strip_nulls(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| (k, strip_nulls(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(strip_nulls).collect()),
        v => v,
    }
}

/// A request template, compiled.
#[derive(Debug)]
struct CompiledRequest {
    method: Method,
    path: Template,
    query: Vec<(String, Template)>,
    headers: Vec<(String, Template)>,
    body: Option<BodyTemplate>,
}

impl CompiledRequest {
    fn compile(r: &RequestSpec) -> Result<CompiledRequest, String> {
        let t = |s: &str| Template::compile_str(s).map_err(|e| e.to_string());
        Ok(CompiledRequest {
            method: r.method,
            path: t(&r.path)?,
            query: r
                .query
                .iter()
                .map(|(k, v)| Ok((k.clone(), t(v)?)))
                .collect::<Result<_, String>>()?,
            headers: r
                .headers
                .iter()
                .map(|(k, v)| Ok((k.clone(), t(v)?)))
                .collect::<Result<_, String>>()?,
            body: r.body.as_ref().map(BodyTemplate::compile).transpose()?,
        })
    }
}

/// `auth: {type: login}`, compiled.
#[derive(Debug)]
struct LoginAuth {
    request: CompiledRequest,
    token: Query,
    token_text: String,
    header: String,
    value: Template,
    expires_after: Option<Duration>,
}

/// A request ready to send.
#[derive(Debug, Clone)]
struct Req {
    method: Method,
    url: Url,
    headers: Vec<(String, String)>,
    body: Option<Value>,
    write: bool,
    /// A create without an idempotency key: when its answer is lost (a
    /// timeout, a 500/502/504) it is not sent again, since the system may
    /// have made the record and could not tell a repeat from a new one.
    once: bool,
}

/// A response.
struct Resp {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: bytes::Bytes,
}

/// Where a listing continues.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct PageToken {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    page: Option<u64>,
    /// The system's cursor as it gave it: text, a number, or a list or
    /// object (`search_after`), so a body template sends it back as it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cursor: Option<Value>,
    /// Records of the page at `url` already returned: the server sent more
    /// than the caller's limit (server-driven paging has no page size the
    /// client can impose), so the rest of that page comes next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    skip: Option<u64>,
    /// Pages fetched so far.
    n: u64,
}

impl PageToken {
    fn encode(&self) -> String {
        URL_SAFE_NO_PAD.encode(serde_json::to_vec(self).expect("tokens serialize"))
    }

    fn decode(s: &str) -> Option<PageToken> {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(s).ok()?).ok()
    }
}

#[derive(Debug)]
struct CompiledEntityRequests {
    list: Option<CompiledRequest>,
    incremental: Vec<(String, Template)>,
    detail: Option<CompiledRequest>,
    ops: BTreeMap<&'static str, CompiledRequest>,
}

/// A connection's settings, as stored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ConnectionConfig {
    /// Definition id.
    pub definition: String,
    /// Parameter values.
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// Credential name → secret name (the value comes from `SLUICE_SECRET_<NAME>`).
    #[serde(default)]
    pub credentials: BTreeMap<String, String>,
    /// Overrides the definition's rate limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<super::definition::RateLimit>,
    /// Retry, breaker and timeout settings.
    #[serde(default)]
    pub policy: Policy,
    /// Syncs that `sluice serve` runs on a schedule.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub syncs: Vec<crate::sync::SyncSchedule>,
    /// Whether it was made through a connect link, by someone not trusted
    /// with this server's network: its URL parameters and every address
    /// its host names resolve to, at each connection (so a name re-pointed
    /// inward later is refused too), must be public or in
    /// `SLUICE_CONNECT_LINK_ALLOW`; redirects are never followed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub guarded: bool,
}

/// The prefix of the secret names of credentials stored sealed in the
/// database (the console's connect flow): `stored:<connection>.<credential>`.
pub const STORED_PREFIX: &str = "stored:";

/// Static credentials, resolved once from the auth templates.
#[derive(Clone)]
enum StaticAuth {
    None,
    Basic(String, String),
    Bearer(String),
    Header(String, String),
    Query(String, String),
}

/// A connection to a system described by a definition.
pub struct HttpConnector {
    /// The SSRF guard of a connection made through a connect link.
    guard: Option<Arc<crate::webhooks::ssrf::GuardPolicy>>,
    id: String,
    def: Arc<CompiledDefinition>,
    base: Url,
    ctx: Value,
    secret_values: Vec<String>,
    missing: Vec<String>,
    client: reqwest::Client,
    policy: Policy,
    bucket: Option<TokenBucket>,
    health: Arc<Health>,
    token: tokio::sync::Mutex<Option<(String, Instant)>>,
    csrf: tokio::sync::Mutex<Option<(String, String)>>,
    /// The last page a caller's limit cut (its URL and body): the next call
    /// continues within it without fetching it again.
    kept_page: std::sync::Mutex<Option<(String, Arc<Value>)>>,
    /// The login call of `auth: {type: login}`.
    login: Option<LoginAuth>,
    test: CompiledRequest,
    csrf_path: Option<Template>,
    default_headers: Vec<(String, Template)>,
    requests: BTreeMap<Entity, CompiledEntityRequests>,
    auth: StaticAuth,
}

impl std::fmt::Debug for HttpConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpConnector")
            .field("id", &self.id)
            .field("definition", &self.def.def.id)
            .field("base", &self.base.as_str())
            .finish()
    }
}

/// Why a connection cannot be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("connection `{connection}`: {message}")]
pub struct ConfigError {
    /// The connection.
    pub connection: String,
    /// What is wrong.
    pub message: String,
}

impl HttpConnector {
    /// Makes a connector. `secrets` resolves credential secret names to values;
    /// a missing secret does not fail here: the connection reports
    /// `auth_required` and its calls fail with `AUTHENTICATION_FAILED`.
    pub fn new(
        id: &str,
        def: Arc<CompiledDefinition>,
        config: &ConnectionConfig,
        secret: &dyn Fn(&str) -> Option<String>,
        health: Arc<Health>,
    ) -> Result<HttpConnector, ConfigError> {
        let err = |m: String| ConfigError {
            connection: id.to_string(),
            message: m,
        };
        let mut params = Map::new();
        for (name, spec) in &def.def.parameters {
            match config.params.get(name).or(spec.default.as_ref()) {
                Some(v) => {
                    params.insert(name.clone(), Value::String(v.clone()));
                }
                None => {
                    return Err(err(format!(
                        "parameter `{name}` is required by definition `{}`",
                        def.def.id
                    )));
                }
            }
        }
        for name in config.params.keys() {
            if !def.def.parameters.contains_key(name) {
                let known: Vec<&str> = def.def.parameters.keys().map(String::as_str).collect();
                return Err(err(format!(
                    "definition `{}` has no parameter `{name}` (it has {})",
                    def.def.id,
                    known.join(", ")
                )));
            }
        }
        let base_text = params["base_url"].as_str().unwrap_or_default().to_string();
        let base = Url::parse(&base_text)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .ok_or_else(|| err(format!("base_url `{base_text}` is not an http(s) URL")))?;
        let mut credentials = Map::new();
        let mut secret_values = Vec::new();
        let mut missing = Vec::new();
        for name in &def.def.credentials {
            let Some(secret_name) = config.credentials.get(name) else {
                return Err(err(format!(
                    "credential `{name}` is required by definition `{}`; give it with --credential {name}=SECRET_NAME",
                    def.def.id
                )));
            };
            match secret(secret_name) {
                Some(v) => {
                    secret_values.push(v.clone());
                    credentials.insert(name.clone(), Value::String(v));
                }
                None => {
                    missing.push(match secret_name.strip_prefix(STORED_PREFIX) {
                        Some(_) => format!(
                            "the stored credential `{secret_name}` (it opens with the SLUICE_CREDENTIALS_KEY it was stored with)"
                        ),
                        None => format!("SLUICE_SECRET_{secret_name}"),
                    });
                    credentials.insert(name.clone(), Value::String(String::new()));
                }
            }
        }
        for name in config.credentials.keys() {
            if !def.def.credentials.contains(name) {
                return Err(err(format!(
                    "definition `{}` has no credential `{name}` (it has {})",
                    def.def.id,
                    def.def.credentials.join(", ")
                )));
            }
        }
        let compile = |r: &RequestSpec| CompiledRequest::compile(r).map_err(|m| err(m.clone()));
        let mut requests = BTreeMap::new();
        for (entity, ce) in &def.entities {
            let s = &ce.spec;
            let mut ops = BTreeMap::new();
            for op in ["get", "create", "update", "delete"] {
                if let Some(o) = ce.op(op) {
                    ops.insert(op, compile(&o.request)?);
                }
            }
            requests.insert(
                *entity,
                CompiledEntityRequests {
                    list: s.list.as_ref().map(|l| compile(&l.request)).transpose()?,
                    incremental: s
                        .list
                        .as_ref()
                        .and_then(|l| l.incremental.as_ref())
                        .map(|i| {
                            i.query
                                .iter()
                                .map(|(k, v)| {
                                    Ok((
                                        k.clone(),
                                        Template::compile_str(v).map_err(|e| err(e.to_string()))?,
                                    ))
                                })
                                .collect::<Result<Vec<_>, ConfigError>>()
                        })
                        .transpose()?
                        .unwrap_or_default(),
                    detail: s
                        .list
                        .as_ref()
                        .and_then(|l| l.detail.as_ref())
                        .map(|d| compile(&d.request))
                        .transpose()?,
                    ops,
                },
            );
        }
        let policy = config.policy;
        let mut builder = reqwest::Client::builder()
            .timeout(Duration::from_millis(policy.timeout_ms))
            .redirect(reqwest::redirect::Policy::none());
        let guard = if config.guarded {
            use crate::webhooks::ssrf::{GuardPolicy, GuardedResolver};
            let guard = Arc::new(GuardPolicy::for_connect_links().map_err(err)?);
            // An address written as an IP never reaches the resolver: the
            // base URL and every parameter that parses as an http(s) URL
            // (in whatever spelling the URL parser accepts) are checked
            // here; the token URL is checked when it is used.
            let urls = std::iter::once(("base_url", base.clone())).chain(
                config
                    .params
                    .iter()
                    .filter_map(|(k, v)| Url::parse(v.trim()).ok().map(|u| (k.as_str(), u))),
            );
            for (name, url) in urls {
                if matches!(url.scheme(), "http" | "https") {
                    guard
                        .check_url(url.as_str())
                        .map_err(|e| err(format!("parameter `{name}`: {}", e.for_any_url())))?;
                }
            }
            builder = builder.dns_resolver(Arc::new(GuardedResolver::new(guard.clone())));
            Some(guard)
        } else {
            None
        };
        let client = builder
            .build()
            .map_err(|e| err(format!("cannot build an HTTP client: {e}")))?;
        let rate = config.rate_limit.or(def.def.rate_limit);
        let ctx = json!({"params": params, "credentials": credentials});
        let resolve = |what: &str, text: &str| -> Result<String, ConfigError> {
            let t = Template::compile_str(text)
                .map_err(|e| err(format!("auth {what} of definition `{}`: {e}", def.def.id)))?;
            match t.eval(&from_json(&ctx)) {
                Ok(Value::String(s)) => Ok(s),
                Ok(Value::Null) => Err(err(format!(
                    "auth {what} of definition `{}`: `{text}` evaluates to nothing; check the credential and parameter names",
                    def.def.id
                ))),
                Ok(v) => Ok(v.to_string()),
                Err(e) => Err(err(format!(
                    "auth {what} of definition `{}`: {e}",
                    def.def.id
                ))),
            }
        };
        let auth = match &def.def.auth {
            Auth::None | Auth::Oauth2ClientCredentials { .. } | Auth::Login { .. } => {
                StaticAuth::None
            }
            Auth::Basic { username, password } => StaticAuth::Basic(
                resolve("username", username)?,
                resolve("password", password)?,
            ),
            Auth::Bearer { token } => StaticAuth::Bearer(resolve("token", token)?),
            Auth::ApiKey {
                name,
                value,
                placement: KeyPlacement::Header,
            } => StaticAuth::Header(name.clone(), resolve("value", value)?),
            Auth::ApiKey {
                name,
                value,
                placement: KeyPlacement::Query,
            } => StaticAuth::Query(name.clone(), resolve("value", value)?),
        };
        let c = HttpConnector {
            guard,
            id: id.to_string(),
            base,
            ctx,
            auth,
            secret_values,
            client,
            policy,
            bucket: rate.map(TokenBucket::new),
            health,
            token: tokio::sync::Mutex::new(None),
            csrf: tokio::sync::Mutex::new(None),
            kept_page: std::sync::Mutex::new(None),
            login: match &def.def.auth {
                Auth::Login {
                    request,
                    token,
                    header,
                    value,
                    expires_after,
                } => Some(LoginAuth {
                    request: compile(request)?,
                    token: Query::parse(token).map_err(|e| err(e.to_string()))?,
                    token_text: token.clone(),
                    header: header.clone(),
                    value: Template::compile_str(value.as_deref().unwrap_or("Bearer ${{ token }}"))
                        .map_err(|e| err(e.to_string()))?,
                    expires_after: expires_after
                        .as_deref()
                        .and_then(|d| humantime::parse_duration(d).ok()),
                }),
                _ => None,
            },
            test: compile(&def.def.test)?,
            csrf_path: def
                .def
                .csrf
                .as_ref()
                .map(|c| Template::compile_str(&c.path).map_err(|e| err(e.to_string())))
                .transpose()?,
            default_headers: def
                .def
                .headers
                .iter()
                .map(|(k, v)| {
                    Ok((
                        k.clone(),
                        Template::compile_str(v).map_err(|e| err(e.to_string()))?,
                    ))
                })
                .collect::<Result<_, ConfigError>>()?,
            requests,
            missing: missing.clone(),
            def,
        };
        if !missing.is_empty() {
            c.health.auth_failure(&format!(
                "credentials missing: {} not set",
                missing.join(", ")
            ));
        }
        Ok(c)
    }

    /// The connection id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The definition.
    pub fn definition(&self) -> &Arc<CompiledDefinition> {
        &self.def
    }

    /// The breaker and status.
    pub fn health_state(&self) -> &Arc<Health> {
        &self.health
    }

    /// Makes the definition's cheap authenticated call; returns its latency.
    ///
    /// A success is a 2xx answer carrying a JSON object or array (or
    /// nothing), as every API a definition describes answers. Anything else
    /// that says 2xx (a web server's page at a wrong base URL, a proxy's
    /// sign-in form) is not the system, and the test fails saying what
    /// answered.
    pub async fn test(&self) -> Result<Duration, ConnectorError> {
        let t = Instant::now();
        let req = self.render(&self.test, &self.ctx, false, None, "test")?;
        let url = req.url.clone();
        let resp = self.execute(req, None, "test").await?;
        // An empty answer (a 204 to a ping) says nothing against it.
        let json = resp.body.is_empty()
            || serde_json::from_slice::<Value>(&resp.body)
                .is_ok_and(|v| v.is_object() || v.is_array());
        if !json {
            let kind = resp
                .headers
                .get(reqwest::header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok())
                .map_or_else(|| "no content type".to_string(), str::to_string);
            return Err(self.error(
                ConnectorErrorKind::NotFound,
                None,
                "test",
                Some(resp.status),
                format!(
                    "{} {} answered {} with {kind} ({} bytes), where {} answers with JSON: check the base URL",
                    method_name(self.test.method),
                    url.path(),
                    resp.status,
                    resp.body.len(),
                    self.def.def.name
                ),
            ));
        }
        Ok(t.elapsed())
    }

    fn redact(&self, text: &str) -> String {
        let mut out = text.to_string();
        for v in &self.secret_values {
            if v.len() >= 3 {
                out = out.replace(v.as_str(), "[REDACTED]");
            }
        }
        out
    }

    fn error(
        &self,
        kind: ConnectorErrorKind,
        entity: Option<Entity>,
        op: &'static str,
        status: Option<u16>,
        message: impl Into<String>,
    ) -> ConnectorError {
        ConnectorError {
            entity,
            operation: Some(op),
            upstream_status: status,
            ..ConnectorError::new(&self.id, kind, self.redact(&message.into()))
        }
    }

    fn entity(&self, entity: Entity, op: &'static str) -> Result<&CompiledEntity, ConnectorError> {
        self.def.entities.get(&entity).ok_or_else(|| {
            self.error(
                ConnectorErrorKind::Validation,
                Some(entity),
                op,
                None,
                format!(
                    "definition `{}` does not serve {entity} (it serves {})",
                    self.def.def.id,
                    self.def
                        .entities
                        .keys()
                        .map(|e| e.name())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            )
        })
    }

    fn render(
        &self,
        r: &CompiledRequest,
        ctx: &Value,
        write: bool,
        entity: Option<Entity>,
        op: &'static str,
    ) -> Result<Req, ConnectorError> {
        let bad = |m: String| self.template_error(entity, op, m);
        let mj = from_json(ctx);
        let text = |t: &Template| self.template_text(t, &mj, entity, op);
        let path = text(&r.path)?;
        let mut url = self.join(&path).map_err(bad)?;
        let mut pairs = query_pairs(&url);
        for (k, t) in &r.query {
            let v = text(t)?;
            if !v.is_empty() {
                pairs.push((k.clone(), v));
            }
        }
        set_query_pairs(&mut url, &pairs);
        let headers = self.headers(r, &mj, entity, op)?;
        let body = match &r.body {
            Some(b) => Some(b.eval(ctx).map_err(bad)?),
            None => None,
        };
        Ok(Req {
            method: r.method,
            url,
            headers,
            body,
            write,
            once: false,
        })
    }

    fn template_error(
        &self,
        entity: Option<Entity>,
        op: &'static str,
        m: String,
    ) -> ConnectorError {
        self.error(
            ConnectorErrorKind::Validation,
            entity,
            op,
            None,
            format!("request template of definition `{}`: {m}", self.def.def.id),
        )
    }

    /// A request template's value as text (null is empty).
    fn template_text(
        &self,
        t: &Template,
        mj: &minijinja::Value,
        entity: Option<Entity>,
        op: &'static str,
    ) -> Result<String, ConnectorError> {
        match t.eval(mj) {
            Ok(Value::String(s)) => Ok(s),
            Ok(Value::Null) => Ok(String::new()),
            Ok(other) => Ok(other.to_string()),
            Err(e) => Err(self.template_error(entity, op, e.to_string())),
        }
    }

    /// The definition's default headers and the request's own, rendered.
    fn headers(
        &self,
        r: &CompiledRequest,
        mj: &minijinja::Value,
        entity: Option<Entity>,
        op: &'static str,
    ) -> Result<Vec<(String, String)>, ConnectorError> {
        self.default_headers
            .iter()
            .chain(&r.headers)
            .map(|(k, t)| Ok((k.clone(), self.template_text(t, mj, entity, op)?)))
            .collect()
    }

    fn join(&self, path: &str) -> Result<Url, String> {
        let base = self.base.as_str().trim_end_matches('/');
        let path = if path.starts_with('/') {
            path.to_string()
        } else {
            format!("/{path}")
        };
        Url::parse(&format!("{base}{path}")).map_err(|e| format!("bad URL path `{path}`: {e}"))
    }

    fn same_origin(&self, u: &Url) -> bool {
        u.scheme() == self.base.scheme()
            && u.host_str() == self.base.host_str()
            && u.port_or_known_default() == self.base.port_or_known_default()
    }

    /// Evaluates an auth-related template (token URL, client id, CSRF path)
    /// against the connection's parameters and credentials.
    fn auth_text(&self, t: &Template) -> Result<String, ConnectorError> {
        match t.eval(&from_json(&self.ctx)) {
            Ok(Value::String(s)) => Ok(s),
            Ok(v) => Ok(v.to_string()),
            Err(e) => Err(self.error(
                ConnectorErrorKind::Validation,
                None,
                "auth",
                None,
                e.to_string(),
            )),
        }
    }

    /// The header a dynamic auth adds to each call: OAuth 2.0's bearer
    /// token, or a login's session. Cached; fetched when missing or due.
    async fn dynamic_auth(&self) -> Result<Option<(String, String)>, ConnectorError> {
        if let Some(login) = &self.login {
            return self
                .login_session(login)
                .await
                .map(|v| Some((login.header.clone(), v)));
        }
        Ok(self
            .bearer(false)
            .await?
            .map(|t| ("authorization".to_string(), format!("Bearer {t}"))))
    }

    /// Logs in (when no session is cached or it is due) and returns the
    /// session header's value.
    async fn login_session(&self, login: &LoginAuth) -> Result<String, ConnectorError> {
        let mut cached = self.token.lock().await;
        if let Some((v, due)) = cached.as_ref()
            && Instant::now() < *due
        {
            return Ok(v.clone());
        }
        let req = self.render(&login.request, &self.ctx, false, None, "auth")?;
        let what = format!("login {} {}", method_name(req.method), req.url.path());
        let resp = self.send_once(&req, None, None).await.map_err(|e| {
            let reason = format!(
                "{what}: unreachable: {}",
                crate::webhooks::delivery::error_chain(&e)
            );
            self.health.failure(&reason);
            self.error(ConnectorErrorKind::Unavailable, None, "auth", None, reason)
        })?;
        let refused = |status: Option<u16>, why: String| {
            let msg = format!("{what}: the system refused the login: {why}");
            self.health.auth_failure(&self.redact(&msg));
            self.error(
                ConnectorErrorKind::AuthRequired,
                None,
                "auth",
                status,
                self.redact(&msg),
            )
        };
        // Throttled or down is not refused: the credentials stay good.
        if resp.status == 429 {
            let wait = retry_after(&resp.headers);
            let msg = format!("{what}: the system is rate limiting (429)");
            self.health.throttled(&msg);
            return Err(ConnectorError {
                retry_after: wait,
                ..self.error(
                    ConnectorErrorKind::RateLimited,
                    None,
                    "auth",
                    Some(429),
                    msg,
                )
            });
        }
        if resp.status >= 500 || resp.status == 408 {
            let msg = format!("{what}: {} {}", resp.status, snippet(&resp.body));
            self.health.failure(&self.redact(&msg));
            return Err(self.error(
                ConnectorErrorKind::Unavailable,
                None,
                "auth",
                Some(resp.status),
                self.redact(&msg),
            ));
        }
        if !(200..300).contains(&resp.status) {
            return Err(refused(
                Some(resp.status),
                format!("{} {}", resp.status, snippet(&resp.body)),
            ));
        }
        let body: Value = serde_json::from_slice(&resp.body).unwrap_or(Value::Null);
        // An error the system puts inside a 2xx answer (JSON-RPC) is a refusal too.
        let text = String::from_utf8_lossy(&resp.body);
        if self
            .def
            .errors
            .iter()
            .any(|r| r.matches(resp.status, &text, Some(&body)))
        {
            return Err(refused(Some(resp.status), snippet(&resp.body)));
        }
        let token = match login.token.first(&body) {
            Some(t) if !t.is_null() => t.clone(),
            _ => {
                return Err(refused(
                    Some(resp.status),
                    format!(
                        "no session at `{}` in the answer: {}",
                        login.token_text,
                        snippet(&resp.body)
                    ),
                ));
            }
        };
        let mut ctx = self.ctx.clone();
        ctx["token"] = token;
        let value = self.template_text(&login.value, &from_json(&ctx), None, "auth")?;
        let due = login
            .expires_after
            .map(|d| Instant::now() + d)
            .unwrap_or_else(|| Instant::now() + Duration::from_secs(100 * 365 * 86_400));
        *cached = Some((value.clone(), due));
        Ok(value)
    }

    async fn bearer(&self, force_refresh: bool) -> Result<Option<String>, ConnectorError> {
        let Auth::Oauth2ClientCredentials {
            token_url,
            client_id,
            client_secret,
            scope,
            refresh_before,
        } = &self.def.def.auth
        else {
            return Ok(None);
        };
        let mut cached = self.token.lock().await;
        if !force_refresh
            && let Some((t, refresh_at)) = cached.as_ref()
            && Instant::now() < *refresh_at
        {
            return Ok(Some(t.clone()));
        }
        let eval = |s: &str| -> Result<String, ConnectorError> {
            let t = Template::compile_str(s).map_err(|e| {
                self.error(
                    ConnectorErrorKind::Validation,
                    None,
                    "auth",
                    None,
                    e.to_string(),
                )
            })?;
            self.auth_text(&t)
        };
        let form = {
            let mut form = url::form_urlencoded::Serializer::new(String::new());
            form.append_pair("grant_type", "client_credentials");
            form.append_pair("client_id", &eval(client_id)?);
            form.append_pair("client_secret", &eval(client_secret)?);
            if let Some(s) = scope {
                form.append_pair("scope", &eval(s)?);
            }
            form.finish()
        };
        let url = eval(token_url)?;
        if let Some(guard) = &self.guard {
            let normalized = Url::parse(url.trim()).map_or(url.clone(), |u| u.to_string());
            guard.check_url(&normalized).map_err(|e| {
                self.error(
                    ConnectorErrorKind::Validation,
                    None,
                    "auth",
                    None,
                    format!("token URL: {}", e.for_any_url()),
                )
            })?;
        }
        let resp = self
            .client
            .post(&url)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json")
            .body(form)
            .send()
            .await
            .map_err(|e| {
                self.error(
                    ConnectorErrorKind::Unavailable,
                    None,
                    "auth",
                    None,
                    format!("token endpoint {url} unreachable: {e}"),
                )
            })?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.unwrap_or_default();
        if !(200..300).contains(&status) {
            let kind = if status >= 500 {
                ConnectorErrorKind::Unavailable
            } else {
                ConnectorErrorKind::AuthRequired
            };
            let msg = format!(
                "token endpoint refused the client credentials ({status}): {}",
                snippet(&body)
            );
            if kind == ConnectorErrorKind::AuthRequired {
                self.health.auth_failure(&self.redact(&msg));
            }
            return Err(self.error(kind, None, "auth", Some(status), msg));
        }
        let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let Some(token) = parsed.get("access_token").and_then(Value::as_str) else {
            return Err(self.error(
                ConnectorErrorKind::AuthRequired,
                None,
                "auth",
                Some(status),
                "token endpoint answered without `access_token`",
            ));
        };
        let expires = parsed
            .get("expires_in")
            .and_then(|v| v.as_u64().or_else(|| v.as_str()?.parse().ok()))
            .unwrap_or(3600);
        let early = refresh_before
            .as_deref()
            .and_then(|s| humantime::parse_duration(s).ok())
            .unwrap_or(Duration::from_secs(60));
        let refresh_at = Instant::now() + Duration::from_secs(expires).saturating_sub(early);
        *cached = Some((token.to_string(), refresh_at));
        Ok(Some(token.to_string()))
    }

    async fn csrf_token(&self, force: bool) -> Result<Option<(String, String)>, ConnectorError> {
        let (Some(path), Some(spec)) = (&self.csrf_path, &self.def.def.csrf) else {
            return Ok(None);
        };
        let mut cached = self.csrf.lock().await;
        if !force && let Some(c) = cached.as_ref() {
            return Ok(Some(c.clone()));
        }
        let p = self.auth_text(path)?;
        let url = self
            .join(&p)
            .map_err(|m| self.error(ConnectorErrorKind::Validation, None, "auth", None, m))?;
        // The definition's headers (e.g. `sap-client`) go with the fetch as
        // with every other request: the token belongs to that client's session.
        let mj = from_json(&self.ctx);
        let mut headers = self
            .default_headers
            .iter()
            .map(|(k, t)| Ok((k.clone(), self.template_text(t, &mj, None, "auth")?)))
            .collect::<Result<Vec<_>, ConnectorError>>()?;
        headers.push((spec.header.clone(), "Fetch".into()));
        let req = Req {
            method: Method::Get,
            url,
            headers,
            body: None,
            write: false,
            once: false,
        };
        let resp = Box::pin(self.execute(req, None, "auth")).await?;
        let token = resp
            .headers
            .get(spec.header.as_str())
            .and_then(|v| v.to_str().ok())
            .filter(|t| !t.is_empty() && !t.eq_ignore_ascii_case("fetch"))
            .ok_or_else(|| {
                self.error(
                    ConnectorErrorKind::Permanent,
                    None,
                    "auth",
                    Some(resp.status),
                    format!("the CSRF fetch answered without a `{}` header", spec.header),
                )
            })?
            .to_string();
        let cookies: Vec<String> = resp
            .headers
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|c| c.split(';').next().map(str::to_string))
            .collect();
        let c = (token, cookies.join("; "));
        *cached = Some(c.clone());
        Ok(Some(c))
    }

    async fn send_once(
        &self,
        req: &Req,
        dynamic: Option<(String, String)>,
        csrf: Option<(String, String)>,
    ) -> Result<Resp, reqwest::Error> {
        let method = match req.method {
            Method::Get => reqwest::Method::GET,
            Method::Post => reqwest::Method::POST,
            Method::Put => reqwest::Method::PUT,
            Method::Patch => reqwest::Method::PATCH,
            Method::Delete => reqwest::Method::DELETE,
        };
        let mut url = req.url.clone();
        if let StaticAuth::Query(name, value) = &self.auth {
            let mut pairs = query_pairs(&url);
            pairs.push((name.clone(), value.clone()));
            set_query_pairs(&mut url, &pairs);
        }
        let mut b = self.client.request(method, url);
        b = self.with_static_auth(b);
        if let Some((name, value)) = dynamic {
            b = b.header(name.as_str(), value.as_str());
        }
        b = b.header("accept", "application/json");
        for (k, v) in &req.headers {
            b = b.header(k.as_str(), v.as_str());
        }
        b = self.with_csrf(b, csrf);
        if let Some(body) = &req.body {
            b = b.json(body);
        }
        let resp = b.send().await?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let mut body = Vec::new();
        let mut resp = resp;
        while let Some(chunk) = resp.chunk().await? {
            if body.len() + chunk.len() > MAX_BODY {
                break;
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Resp {
            status,
            headers,
            body: body.into(),
        })
    }

    /// Sends a request with the connection's resilience rules.
    async fn execute(
        &self,
        req: Req,
        entity: Option<Entity>,
        op: &'static str,
    ) -> Result<Resp, ConnectorError> {
        if !self.missing.is_empty() {
            return Err(self.error(
                ConnectorErrorKind::AuthRequired,
                entity,
                op,
                None,
                format!("credentials missing: {} not set", self.missing.join(", ")),
            ));
        }
        let what = format!("{} {}", method_name(req.method), req.url.path());
        let mut attempt = 0u32;
        let mut troubled: Option<String> = None;
        let mut refreshed = false;
        let mut csrf_refreshed = false;
        loop {
            attempt += 1;
            if let Admit::Open(left) = self.health.admit() {
                return Err(self.circuit_open(left, entity, op));
            }
            if let Some(b) = &self.bucket {
                b.acquire().await;
            }
            let dynamic = self.dynamic_auth().await.map_err(|e| ConnectorError {
                entity,
                operation: Some(op),
                ..e
            })?;
            let csrf = if req.write {
                self.csrf_token(false).await?
            } else {
                None
            };
            let used = dynamic.as_ref().map(|(_, v)| v.clone());
            let result = self.send_once(&req, dynamic, csrf).await;
            let resp = match result {
                Ok(r) => r,
                Err(e) => {
                    let reason = self.transport_reason(&what, &e);
                    self.health.failure(&reason);
                    if req.once && e.is_timeout() {
                        return Err(self.not_sent_again(entity, op, None, reason));
                    }
                    if attempt < self.policy.max_attempts {
                        troubled = Some(reason);
                        tokio::time::sleep(self.policy.backoff(attempt)).await;
                        continue;
                    }
                    return Err(self.error(
                        ConnectorErrorKind::Unavailable,
                        entity,
                        op,
                        None,
                        format!("{reason} (after {attempt} attempts)"),
                    ));
                }
            };
            let status = resp.status;
            // An error a system reports inside a 2xx body, per the
            // definition's `errors` rules for 2xx statuses.
            let success_error = (200..300).contains(&status)
                && self
                    .def
                    .errors
                    .iter()
                    .any(|r| r.status.iter().any(|(a, b)| *a < 300 && *b >= 200))
                && {
                    let text = String::from_utf8_lossy(&resp.body);
                    let json: Option<Value> = serde_json::from_slice(&resp.body).ok();
                    self.def
                        .errors
                        .iter()
                        .any(|r| r.matches(status, &text, json.as_ref()))
                };
            if (200..300).contains(&status) && !success_error {
                self.health
                    .success(troubled.is_some(), troubled.as_deref().unwrap_or(""));
                return Ok(resp);
            }
            let text = String::from_utf8_lossy(&resp.body).to_string();
            if status == 401 && !refreshed && used.is_some() {
                // An expired or revoked token or session: fetch a new one
                // once. Only the one this call was refused with is dropped;
                // a call refused with it at the same time may have fetched
                // the next one already.
                refreshed = true;
                self.forget_token(used.as_deref()).await;
                attempt -= 1;
                continue;
            }
            if status == 403
                && req.write
                && !csrf_refreshed
                && resp
                    .headers
                    .get("x-csrf-token")
                    .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"required"))
            {
                csrf_refreshed = true;
                *self.csrf.lock().await = None;
                attempt -= 1;
                continue;
            }
            if status == 429 {
                let wait = retry_after(&resp.headers);
                let reason = format!("{what}: throttled (429)");
                self.health.throttled(&reason);
                let backoff = self.policy.backoff(attempt);
                let wait_for = wait.unwrap_or(backoff).max(backoff);
                if attempt < self.policy.max_attempts
                    && wait_for <= Duration::from_millis(self.policy.max_retry_after_ms)
                {
                    troubled = Some(reason);
                    tokio::time::sleep(wait_for).await;
                    continue;
                }
                return Err(ConnectorError {
                    retry_after: wait,
                    ..self.error(
                        ConnectorErrorKind::RateLimited,
                        entity,
                        op,
                        Some(429),
                        format!(
                            "{what}: the system is rate limiting (429){}",
                            wait.map(|w| format!(
                                ", retry after {}",
                                humantime::format_duration(w)
                            ))
                            .unwrap_or_default()
                        ),
                    )
                });
            }
            let json: Option<Value> = serde_json::from_slice(&resp.body).ok();
            let rule = self
                .def
                .errors
                .iter()
                .find(|r| r.matches(status, &text, json.as_ref()));
            let upstream_message = rule
                .and_then(|r| r.message.as_ref())
                .and_then(|q| json.as_ref().and_then(|j| q.first(j)))
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .unwrap_or_else(|| snippet(&resp.body));
            let code = rule.map(|r| r.code).unwrap_or(match status {
                401 => ErrorCode::AuthenticationFailed,
                403 => ErrorCode::PermissionDenied,
                404 | 410 => ErrorCode::NotFound,
                400 | 409 | 412 | 422 => ErrorCode::ValidationFailed,
                _ => ErrorCode::UpstreamError,
            });
            let transient = status >= 500 || matches!(status, 408);
            let retryable = rule.and_then(|r| r.retryable).unwrap_or(transient);
            let message = format!("{what}: {status} {upstream_message}");
            if code == ErrorCode::AuthenticationFailed {
                self.health.auth_failure(&self.redact(&message));
            } else if transient {
                self.health.failure(&self.redact(&message));
            } else {
                self.health.answered();
            }
            if req.once && matches!(status, 500 | 502 | 504) {
                return Err(self.not_sent_again(entity, op, Some(status), message));
            }
            if retryable && attempt < self.policy.max_attempts {
                troubled = Some(message);
                tokio::time::sleep(self.policy.backoff(attempt)).await;
                continue;
            }
            let kind = match (code, retryable) {
                (ErrorCode::UpstreamError, true) => ConnectorErrorKind::Transient,
                (c, _) => c.kind(),
            };
            let mut e = self.error(kind, entity, op, Some(status), message);
            if retryable && !e.is_retryable() {
                e.kind = ConnectorErrorKind::Transient;
            }
            return Err(e);
        }
    }

    /// The error of a call the open circuit breaker refuses.
    fn circuit_open(
        &self,
        left: Duration,
        entity: Option<Entity>,
        op: &'static str,
    ) -> ConnectorError {
        ConnectorError {
            retry_after: Some(left),
            ..self.error(
                ConnectorErrorKind::Unavailable,
                entity,
                op,
                None,
                format!(
                    "circuit open: the system failed repeatedly; next probe in {}",
                    humantime::format_duration(Duration::from_millis(left.as_millis() as u64))
                ),
            )
        }
    }

    /// Why a request got no answer: its deadline, or the network.
    fn transport_reason(&self, what: &str, e: &reqwest::Error) -> String {
        let why = if e.is_timeout() {
            format!(
                "no answer within {}",
                humantime::format_duration(Duration::from_millis(self.policy.timeout_ms))
            )
        } else {
            format!("unreachable: {}", crate::webhooks::delivery::error_chain(e))
        };
        format!("{what}: {why}")
    }

    /// Adds the connection's static auth (basic, bearer, API key header).
    fn with_static_auth(&self, b: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.auth {
            StaticAuth::None | StaticAuth::Query(..) => b,
            StaticAuth::Basic(u, p) => b.basic_auth(u, Some(p)),
            StaticAuth::Bearer(t) => b.bearer_auth(t),
            StaticAuth::Header(name, value) => b.header(name.as_str(), value.as_str()),
        }
    }

    /// Adds a write's CSRF token and its session cookie, per the definition.
    fn with_csrf(
        &self,
        b: reqwest::RequestBuilder,
        csrf: Option<(String, String)>,
    ) -> reqwest::RequestBuilder {
        match (csrf, &self.def.def.csrf) {
            (Some((token, cookies)), Some(spec)) => {
                let b = b.header(spec.header.as_str(), token);
                if cookies.is_empty() {
                    b
                } else {
                    b.header("cookie", cookies)
                }
            }
            _ => b,
        }
    }

    /// Drops the cached token or session a call was refused with (`401`),
    /// unless a call refused with it at the same time already fetched the next.
    async fn forget_token(&self, used: Option<&str>) {
        let mut cached = self.token.lock().await;
        if cached.as_ref().is_some_and(|(t, _)| {
            used.is_some_and(|u| u == t || u.strip_prefix("Bearer ") == Some(t))
        }) {
            *cached = None;
        }
    }

    /// The passthrough: one request as the caller built it, under the
    /// connection's base URL (never another origin), with its auth and
    /// default headers, through the breaker and the token bucket. Every
    /// answer is returned as it is (the `http` step's `on_status` decides);
    /// an expired token or session is fetched again once on `401`, and a
    /// write refused for its CSRF token is sent again with a new one.
    async fn send_raw(&self, req: super::RawRequest) -> Result<super::RawResponse, ConnectorError> {
        const OP: &str = "passthrough";
        if !self.missing.is_empty() {
            return Err(self.error(
                ConnectorErrorKind::AuthRequired,
                None,
                OP,
                None,
                format!("credentials missing: {} not set", self.missing.join(", ")),
            ));
        }
        let invalid = |m: String| self.error(ConnectorErrorKind::Validation, None, OP, None, m);
        if req.path.contains("://") || req.path.starts_with("//") {
            return Err(invalid(format!(
                "`{}` is not a path: a passthrough goes to the connection's own base URL",
                req.path
            )));
        }
        let mut url = self.join(&req.path).map_err(invalid)?;
        if !self.same_origin(&url) {
            return Err(invalid(format!(
                "`{}` leaves the connection's host",
                req.path
            )));
        }
        if !req.query.is_empty() {
            let mut pairs = query_pairs(&url);
            pairs.extend(req.query.iter().cloned());
            set_query_pairs(&mut url, &pairs);
        }
        if let StaticAuth::Query(name, value) = &self.auth {
            let mut pairs = query_pairs(&url);
            pairs.push((name.clone(), value.clone()));
            set_query_pairs(&mut url, &pairs);
        }
        let write = !matches!(
            req.method,
            reqwest::Method::GET | reqwest::Method::HEAD | reqwest::Method::OPTIONS
        );
        let what = format!("{} {}", req.method, url.path());
        let mut refreshed = false;
        let mut csrf_refreshed = false;
        loop {
            if let Admit::Open(left) = self.health.admit() {
                return Err(self.circuit_open(left, None, OP));
            }
            if let Some(b) = &self.bucket {
                b.acquire().await;
            }
            let dynamic = self.dynamic_auth().await?;
            let csrf = if write {
                self.csrf_token(false).await?
            } else {
                None
            };
            let used = dynamic.as_ref().map(|(_, v)| v.clone());
            let mut b = self.client.request(req.method.clone(), url.clone());
            b = self.with_static_auth(b);
            if let Some((name, value)) = dynamic {
                b = b.header(name.as_str(), value.as_str());
            }
            let ctx = from_json(&self.ctx);
            for (k, t) in &self.default_headers {
                b = b.header(k.as_str(), self.template_text(t, &ctx, None, OP)?);
            }
            for (k, v) in &req.headers {
                b = b.header(k, v);
            }
            b = self.with_csrf(b, csrf);
            if let Some(body) = &req.body {
                b = b.body(body.clone());
            }
            let resp = match b.send().await {
                Ok(r) => r,
                Err(e) => {
                    let reason = self.transport_reason(&what, &e);
                    self.health.failure(&reason);
                    return Err(self.error(
                        ConnectorErrorKind::Unavailable,
                        None,
                        OP,
                        None,
                        reason,
                    ));
                }
            };
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let mut body = Vec::new();
            let mut resp = resp;
            loop {
                match resp.chunk().await {
                    Ok(Some(chunk)) => {
                        if body.len() + chunk.len() > MAX_BODY {
                            return Err(invalid(format!(
                                "{what}: the answer is larger than {MAX_BODY} bytes"
                            )));
                        }
                        body.extend_from_slice(&chunk);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let reason = format!("{what}: the answer broke off: {e}");
                        self.health.failure(&reason);
                        return Err(self.error(
                            ConnectorErrorKind::Unavailable,
                            None,
                            OP,
                            None,
                            reason,
                        ));
                    }
                }
            }
            if status == 401 && !refreshed && used.is_some() {
                refreshed = true;
                self.forget_token(used.as_deref()).await;
                continue;
            }
            if status == 403
                && write
                && !csrf_refreshed
                && headers
                    .get("x-csrf-token")
                    .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"required"))
            {
                csrf_refreshed = true;
                *self.csrf.lock().await = None;
                continue;
            }
            let message = format!("{what}: {status}");
            match status {
                200..=399 => self.health.success(false, ""),
                401 => self.health.auth_failure(&message),
                429 => self.health.throttled(&message),
                s if s >= 500 || s == 408 => self.health.failure(&message),
                _ => self.health.answered(),
            }
            return Ok(super::RawResponse {
                status,
                headers,
                body: body.into(),
            });
        }
    }

    /// Whether the definition's create request sends the step's
    /// idempotency key (in a header or the body), so that the system can
    /// recognise a create sent again.
    fn create_carries_key(&self, entity: Entity) -> bool {
        self.def
            .def
            .entities
            .get(&entity.to_string())
            .and_then(|e| e.create.as_ref())
            .and_then(|c| serde_json::to_string(&c.request).ok())
            .is_some_and(|t| t.contains("idempotency_key"))
    }

    /// The error of a create whose answer was lost and that is not sent
    /// again (see [`Req::once`]): not retryable, saying why.
    fn not_sent_again(
        &self,
        entity: Option<Entity>,
        op: &'static str,
        status: Option<u16>,
        why: String,
    ) -> ConnectorError {
        self.error(
            ConnectorErrorKind::Permanent,
            entity,
            op,
            status,
            format!(
                "{why}; the create was not sent again: the system may have made the record, and `{}` sends no idempotency key it could recognise a repeat by (look for the record before running this again)",
                self.def.def.id
            ),
        )
    }

    fn parse_json(
        &self,
        resp: &Resp,
        entity: Entity,
        op: &'static str,
        what: &str,
    ) -> Result<Value, ConnectorError> {
        serde_json::from_slice(&resp.body).map_err(|e| {
            self.error(
                ConnectorErrorKind::Permanent,
                Some(entity),
                op,
                Some(resp.status),
                format!("{what} is not JSON ({e}): {}", snippet(&resp.body)),
            )
        })
    }

    fn to_record(
        &self,
        ce: &CompiledEntity,
        entity: Entity,
        op: &'static str,
        src: &Value,
        raw: bool,
    ) -> Result<Value, ConnectorError> {
        let mapped = ce.mapping.to_unified(src, &self.id).map_err(|err| {
            let id = ce
                .mapping
                .remote_id_path()
                .and_then(|p| p.first(src))
                .map(|v| v.as_str().map(str::to_string).unwrap_or(v.to_string()));
            let def = &self.def.def.id;
            let message = match err {
                MapError::Mapping(msg) => {
                    let id = id.map(|i| format!(" {i}")).unwrap_or_default();
                    format!("cannot map {entity}{id} from `{def}`: {msg}")
                }
                MapError::Model(msg) => format!(
                    "{entity} {} from `{def}` does not fit the unified model: {msg}",
                    id.unwrap_or_default()
                ),
                MapError::NoRemoteId => {
                    format!("a {entity} record from `{def}` has no remote_id")
                }
            };
            self.error(
                ConnectorErrorKind::Permanent,
                Some(entity),
                op,
                None,
                message,
            )
        })?;
        let mut valid = Value::Object(mapped);
        if raw {
            valid["raw"] = src.clone();
        }
        Ok(valid)
    }

    async fn list_page(
        &self,
        entity: Entity,
        query: &ListQuery,
    ) -> Result<(Vec<Value>, Option<String>), ConnectorError> {
        let ce = self.entity(entity, "list")?;
        let reqs = &self.requests[&entity];
        let (Some(spec), Some(list_req)) = (&ce.spec.list, &reqs.list) else {
            return Err(self.error(
                ConnectorErrorKind::Validation,
                Some(entity),
                "list",
                None,
                format!("definition `{}` cannot list {entity}", self.def.def.id),
            ));
        };
        let token = match &query.cursor {
            Some(c) => PageToken::decode(c).ok_or_else(|| {
                self.error(
                    ConnectorErrorKind::Validation,
                    Some(entity),
                    "list",
                    None,
                    format!("cursor `{c}` was not made by this connection"),
                )
            })?,
            None => PageToken::default(),
        };
        if token.n >= spec.max_pages {
            return Err(self.error(
                ConnectorErrorKind::Permanent,
                Some(entity),
                "list",
                None,
                format!(
                    "listing {entity} went past {} pages, the definition's max_pages; the system keeps paging (refused)",
                    spec.max_pages
                ),
            ));
        }
        let page_size = query
            .limit
            .map(|l| (l as u64).min(spec.page_size))
            .unwrap_or(spec.page_size)
            .max(1);
        let mut ctx = self.ctx.clone();
        ctx["page_size"] = json!(page_size);
        // The page's position, for paginators whose request template places it.
        ctx["offset"] = json!(token.offset.unwrap_or(0));
        ctx["page"] = json!(token.page.unwrap_or(match &spec.paginator {
            Paginator::PageNumber { start, .. } => *start,
            _ => 1,
        }));
        ctx["cursor"] = json!(token.cursor);
        // Null when the read is not incremental, so a body can test it.
        ctx["modified_after"] = Value::Null;
        ctx["modified_after_ms"] = Value::Null;
        if let Some(m) = query.modified_after {
            ctx["modified_after"] = json!(m.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
            ctx["modified_after_ms"] = json!(m.timestamp_millis());
        }
        let req = match &token.url {
            Some(u) => {
                let url = self.base.join(u).map_err(|e| {
                    self.error(
                        ConnectorErrorKind::Validation,
                        Some(entity),
                        "list",
                        None,
                        format!("bad next link `{u}`: {e}"),
                    )
                })?;
                Req {
                    method: Method::Get,
                    url,
                    headers: self.headers(list_req, &from_json(&ctx), Some(entity), "list")?,
                    body: None,
                    write: false,
                    once: false,
                }
            }
            None => {
                let mut req = self.render(list_req, &ctx, false, Some(entity), "list")?;
                let mut extra: Vec<(String, String)> = Vec::new();
                if query.modified_after.is_some() {
                    let mj = from_json(&ctx);
                    for (k, t) in &reqs.incremental {
                        let v = t.eval(&mj).map_err(|e| {
                            self.error(
                                ConnectorErrorKind::Validation,
                                Some(entity),
                                "list",
                                None,
                                e.to_string(),
                            )
                        })?;
                        extra.push((
                            k.clone(),
                            v.as_str().map(str::to_string).unwrap_or(v.to_string()),
                        ));
                    }
                }
                match &spec.paginator {
                    Paginator::Offset {
                        offset_param,
                        limit_param,
                        ..
                    } => {
                        if let Some(p) = offset_param {
                            extra.push((p.clone(), token.offset.unwrap_or(0).to_string()));
                        }
                        if let Some(p) = limit_param {
                            extra.push((p.clone(), page_size.to_string()));
                        }
                    }
                    Paginator::PageNumber {
                        param,
                        size_param,
                        start,
                    } => {
                        if let Some(p) = param {
                            extra.push((p.clone(), token.page.unwrap_or(*start).to_string()));
                        }
                        if let Some(s) = size_param {
                            extra.push((s.clone(), page_size.to_string()));
                        }
                    }
                    Paginator::Cursor { param, .. } => {
                        if let (Some(p), Some(c)) = (param, &token.cursor) {
                            let text = match c {
                                Value::String(s) => s.clone(),
                                other => other.to_string(),
                            };
                            extra.push((p.clone(), text));
                        }
                    }
                    _ => {}
                }
                set_query(&mut req.url, &extra);
                req
            }
        };
        // A page is its URL and, for paging in the body, its body.
        let current_url = match &req.body {
            Some(b) => format!("{} {b}", req.url),
            None => req.url.to_string(),
        };
        let page_no = token.n + 1;
        let kept = if token.skip.is_some() {
            let mut slot = self.kept_page.lock().unwrap_or_else(|e| e.into_inner());
            match slot.take() {
                Some((url, body)) if url == current_url => Some(body),
                other => {
                    *slot = other;
                    None
                }
            }
        } else {
            None
        };
        let (body, status, raw) = match kept {
            Some(body) => (body, 200, bytes::Bytes::new()),
            None => {
                let resp = self.execute(req, Some(entity), "list").await?;
                let body = self.parse_json(
                    &resp,
                    entity,
                    "list",
                    &format!("page {page_no} of {entity}"),
                )?;
                (Arc::new(body), resp.status, resp.body)
            }
        };
        let items = self.select_records(ce, entity, &body).map_err(|m| {
            self.error(
                ConnectorErrorKind::Permanent,
                Some(entity),
                "list",
                Some(status),
                format!("page {page_no} of {entity} {m}: {}", snippet(&raw)),
            )
        })?;
        let raw_count = items.len() as u64;
        // Server-driven paging (OData `@odata.nextLink`, `__next`, next
        // links): the server decides the page size, `$top` would cap the whole
        // result. A caller's limit is honoured by returning at most `limit`
        // records and continuing within the same page on the next call.
        let server_paged = matches!(
            spec.paginator,
            Paginator::NextLink { .. } | Paginator::Odata
        );
        let skip = token.skip.unwrap_or(0) as usize;
        let mut items = items;
        let mut rest_of_page = None;
        if server_paged {
            items.drain(..skip.min(items.len()));
            if let Some(limit) = query.limit
                && items.len() > limit.max(1)
            {
                items.truncate(limit.max(1));
                *self.kept_page.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some((current_url.clone(), body.clone()));
                rest_of_page = Some(PageToken {
                    url: Some(current_url.clone()),
                    skip: Some((skip + items.len()) as u64),
                    n: token.n,
                    ..PageToken::default()
                });
            }
        }
        let mut records = Vec::with_capacity(items.len());
        if let (Some(detail), Some(detail_req), Some(id_path)) =
            (&spec.detail, &reqs.detail, &ce.detail_id)
        {
            let ids: Vec<String> = items
                .iter()
                .filter_map(|i| id_path.first(i))
                .map(|v| v.as_str().map(str::to_string).unwrap_or(v.to_string()))
                .collect();
            let fetches = futures::stream::iter(ids.into_iter().map(|id| {
                let mut c = self.ctx.clone();
                c["id"] = json!(id);
                async move {
                    let req = self.render(detail_req, &c, false, Some(entity), "list")?;
                    let resp = self.execute(req, Some(entity), "list").await?;
                    self.parse_json(&resp, entity, "list", &format!("{entity} {id}"))
                }
            }))
            .buffered(detail.concurrency.max(1))
            .collect::<Vec<_>>()
            .await;
            for f in fetches {
                records.push(self.to_record(ce, entity, "list", &f?, query.raw)?);
            }
        } else {
            for i in &items {
                records.push(self.to_record(ce, entity, "list", i, query.raw)?);
            }
        }
        records.retain(|r| super::record_matches(r, &query.filters));
        let next = match &spec.paginator {
            Paginator::None => None,
            Paginator::NextLink { .. } | Paginator::Odata => {
                let link = match (&spec.paginator, &ce.next) {
                    (Paginator::NextLink { .. }, Some(q)) => q.first(&body).cloned(),
                    _ => body
                        .pointer("/d/__next")
                        .or_else(|| body.get("@odata.nextLink"))
                        .cloned(),
                };
                // OData JSON Format v4.01 §4.6: a relative URL in a payload is
                // relative to the context URL (`@odata.context`), itself
                // relative to the request URL; without one, the request URL.
                let request_url = Url::parse(&current_url).unwrap_or_else(|_| self.base.clone());
                let link_base = match body.get("@odata.context").and_then(Value::as_str) {
                    Some(c) => request_url.join(c).unwrap_or(request_url),
                    None => request_url,
                };
                match link {
                    _ if rest_of_page.is_some() => rest_of_page,
                    Some(Value::String(s)) if !s.is_empty() => {
                        let url = link_base.join(&s).map_err(|e| {
                            self.error(
                                ConnectorErrorKind::Permanent,
                                Some(entity),
                                "list",
                                None,
                                format!("next link `{s}` is not a URL: {e}"),
                            )
                        })?;
                        if !self.same_origin(&url) {
                            return Err(self.error(
                                ConnectorErrorKind::Permanent,
                                Some(entity),
                                "list",
                                None,
                                format!(
                                    "next link `{s}` points at another host than {}; refused",
                                    self.base.origin().ascii_serialization()
                                ),
                            ));
                        }
                        if url.as_str() == current_url {
                            return Err(self.error(
                                ConnectorErrorKind::Permanent,
                                Some(entity),
                                "list",
                                None,
                                format!("the system returned the page's own URL as its next link ({s}); refused to loop"),
                            ));
                        }
                        Some(PageToken {
                            url: Some(url.to_string()),
                            n: page_no,
                            ..PageToken::default()
                        })
                    }
                    _ => None,
                }
            }
            // No cursor (absent, null, false, empty) or the same one again
            // ends the listing; a number is a cursor as much as a text.
            Paginator::Cursor { .. } => match ce.next.as_ref().and_then(|q| q.first(&body)) {
                Some(c) if is_cursor(c) && Some(c) != token.cursor.as_ref() => Some(PageToken {
                    cursor: Some(c.clone()),
                    n: page_no,
                    ..PageToken::default()
                }),
                _ => None,
            },
            Paginator::Offset { .. } => {
                let more = match ce.has_more.as_ref().and_then(|q| q.first(&body)) {
                    Some(v) => v.as_bool().unwrap_or(false),
                    None => raw_count >= page_size,
                };
                (more && raw_count > 0).then(|| PageToken {
                    offset: Some(token.offset.unwrap_or(0) + raw_count),
                    n: page_no,
                    ..PageToken::default()
                })
            }
            Paginator::PageNumber { start, .. } => (raw_count >= page_size).then(|| PageToken {
                page: Some(token.page.unwrap_or(*start) + 1),
                n: page_no,
                ..PageToken::default()
            }),
        };
        Ok((records, next.map(|t| t.encode())))
    }

    /// The records of a list page, by the definition's selector. A plain
    /// selector whose container is missing is an error (`lacks the records path`).
    fn select_records<'a>(
        &self,
        ce: &CompiledEntity,
        _entity: Entity,
        body: &'a Value,
    ) -> Result<Vec<&'a Value>, String> {
        let selector = ce.records.as_ref().expect("list has a selector");
        match &ce.records_path {
            Some(FastPath::Simple { segs, wildcard }) => {
                let container = FastPath::Simple {
                    segs: segs.clone(),
                    wildcard: false,
                };
                if container.first(body).is_none() {
                    return Err(format!("lacks the records path `{}`", selector.as_str()));
                }
                if *wildcard {
                    Ok(container
                        .first(body)
                        .and_then(Value::as_array)
                        .map(|a| a.iter().collect())
                        .unwrap_or_default())
                } else {
                    Ok(container.all(body))
                }
            }
            _ => Ok(selector.all(body)),
        }
    }

    /// Maps one list page (the system's JSON) into unified records, as `list`
    /// does after fetching it: selector, field mapping, model validation.
    pub fn map_page(&self, entity: Entity, body: &Value) -> Result<Vec<Value>, ConnectorError> {
        let ce = self.entity(entity, "list")?;
        let items = self.select_records(ce, entity, body).map_err(|m| {
            self.error(
                ConnectorErrorKind::Permanent,
                Some(entity),
                "list",
                None,
                format!("the page {m}"),
            )
        })?;
        items
            .into_iter()
            .map(|i| self.to_record(ce, entity, "list", i, false))
            .collect()
    }

    async fn single(
        &self,
        entity: Entity,
        op: &'static str,
        remote_id: Option<&str>,
        data: Option<&Value>,
        idempotency_key: Option<&str>,
    ) -> Result<Option<Value>, ConnectorError> {
        let ce = self.entity(entity, op)?;
        let Some(r) = self.requests[&entity].ops.get(op) else {
            return Err(self.error(
                ConnectorErrorKind::Validation,
                Some(entity),
                op,
                None,
                format!("definition `{}` cannot {op} {entity}", self.def.def.id),
            ));
        };
        let mut ctx = self.ctx.clone();
        if let Some(id) = remote_id {
            ctx["remote_id"] = json!(id);
        }
        if let Some(d) = data {
            let mut rec = Map::new();
            for f in crate::unified::shape::Shape::of(entity).field_names() {
                rec.insert(f.to_string(), Value::Null);
            }
            if let Some(obj) = d.as_object() {
                for (k, v) in obj {
                    rec.insert(k.clone(), v.clone());
                }
            }
            ctx["record"] = Value::Object(rec);
        }
        if let Some(k) = idempotency_key {
            ctx["idempotency_key"] = json!(k);
        }
        let write = op != "get";
        let mut req = self.render(r, &ctx, write, Some(entity), op)?;
        req.once = op == "create" && !self.create_carries_key(entity);
        let resp = self.execute(req, Some(entity), op).await?;
        // The system accepted a create or update: from here on, a response
        // we cannot read must not hide that the record exists (an orphan).
        let accepted = matches!(op, "create" | "update");
        if resp.body.iter().all(u8::is_ascii_whitespace) {
            if !accepted {
                return Ok(None);
            }
            // `204`: the record is read back, a created one by the id in
            // `Location` (NetSuite, OData `return=minimal`).
            let id = match op {
                "update" => remote_id.map(str::to_string),
                _ => remote_id_in_headers(&resp),
            };
            let can_get = self.requests[&entity].ops.contains_key("get");
            if let Some(id) = id.clone().filter(|_| can_get) {
                return Ok(Some(self.read_back(ce, entity, op, &resp, id).await));
            }
            let mut out = self.unmapped_write(
                ce,
                entity,
                op,
                &resp,
                None,
                format!("the {op} response is empty"),
            );
            if let Some(id) = id {
                out["id"] = json!(format!("{}:{id}", self.id));
                out["remote_id"] = json!(id);
            }
            return Ok(Some(out));
        }
        let body = match self.parse_json(&resp, entity, op, &format!("the {op} response")) {
            Ok(b) => b,
            Err(e) if accepted => {
                return Ok(Some(
                    self.unmapped_write(ce, entity, op, &resp, None, e.message),
                ));
            }
            Err(e) => return Err(e),
        };
        // An answer of ids only: read the record back.
        if accepted && let Some(q) = ce.id_paths.get(op) {
            let Some(id) = q.first(&body).and_then(|v| match v {
                Value::String(s) if !s.is_empty() => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            }) else {
                let why = format!("no record id in the {op} answer: {}", snippet(&resp.body));
                return Ok(Some(self.unmapped_write(
                    ce,
                    entity,
                    op,
                    &resp,
                    Some(&body),
                    why,
                )));
            };
            return Ok(Some(self.read_back(ce, entity, op, &resp, id).await));
        }
        let Some(src) = ce.record_paths.get(op).and_then(|q| q.first(&body)) else {
            let why = format!("the {op} response has no record: {}", snippet(&resp.body));
            if accepted {
                return Ok(Some(self.unmapped_write(
                    ce,
                    entity,
                    op,
                    &resp,
                    Some(&body),
                    why,
                )));
            }
            return Err(self.error(
                ConnectorErrorKind::Permanent,
                Some(entity),
                op,
                Some(resp.status),
                why,
            ));
        };
        match self.to_record(ce, entity, op, src, false) {
            Ok(r) => Ok(Some(r)),
            Err(e) if accepted => Ok(Some(self.unmapped_write(
                ce,
                entity,
                op,
                &resp,
                Some(src),
                e.message,
            ))),
            Err(e) => Err(e),
        }
    }

    /// The record a create or update the system accepted made, read back
    /// with `get` by the id its answer gave; when that read fails, the id
    /// and the answer with a warning (the record exists all the same).
    async fn read_back(
        &self,
        ce: &CompiledEntity,
        entity: Entity,
        op: &'static str,
        resp: &Resp,
        id: String,
    ) -> Value {
        match self.get(entity, &id).await {
            Ok(r) => r,
            Err(e) => {
                let mut out = self.unmapped_write(
                    ce,
                    entity,
                    op,
                    resp,
                    None,
                    format!("reading the record back failed: {}", e.message),
                );
                out["remote_id"] = json!(id);
                out["id"] = json!(format!("{}:{id}", self.id));
                out
            }
        }
    }

    /// What a create or update the system accepted returns when its response
    /// cannot be mapped: the remote id (from the mapping's `remote_id` path in
    /// the response, else the `Location` or `OData-EntityId` header), the raw
    /// response and a warning saying why, so the flow knows the record exists.
    fn unmapped_write(
        &self,
        ce: &CompiledEntity,
        entity: Entity,
        op: &'static str,
        resp: &Resp,
        src: Option<&Value>,
        why: String,
    ) -> Value {
        let from_body = src.and_then(|s| {
            ce.mapping
                .remote_id_path()
                .and_then(|p| p.first(s))
                .and_then(|v| match v {
                    Value::String(t) if !t.is_empty() => Some(t.clone()),
                    Value::Number(n) => Some(n.to_string()),
                    _ => None,
                })
        });
        let remote_id = from_body.or_else(|| remote_id_in_headers(resp));
        let warning = format!(
            "{} accepted the {op} of {entity} (HTTP {}) but its response could not be mapped: {why}",
            self.id, resp.status
        );
        tracing::warn!(connection = %self.id, %entity, op, remote_id = ?remote_id, "{warning}");
        json!({
            "id": remote_id.as_ref().map(|r| format!("{}:{r}", self.id)),
            "remote_id": remote_id,
            "connection_id": self.id,
            "mapped": false,
            "warning": warning,
            "raw": src.cloned().or_else(|| serde_json::from_slice::<Value>(&resp.body).ok())
                .unwrap_or_else(|| Value::String(String::from_utf8_lossy(&resp.body).into_owned())),
        })
    }
}

/// The id of the record a write made, from the answer's `Location` or
/// `OData-EntityId` header.
fn remote_id_in_headers(resp: &Resp) -> Option<String> {
    ["location", "odata-entityid"].iter().find_map(|h| {
        let v = resp.headers.get(*h)?.to_str().ok()?;
        remote_id_in_url(v)
    })
}

/// The key at the end of an entity URL: `.../purchaseOrders(abc)` → `abc`,
/// `.../A_PurchaseOrder('4500001000')` → `4500001000`, `.../workorder/123` → `123`.
fn remote_id_in_url(url: &str) -> Option<String> {
    let path = url.split(['?', '#']).next()?.trim_end_matches('/');
    let last = path.rsplit('/').next()?;
    let key = match (last.find('('), last.ends_with(')')) {
        (Some(open), true) => {
            let inner = &last[open + 1..last.len() - 1];
            // A compound key `(a=1,b=2)` has no single id.
            if inner.contains('=') || inner.contains(',') {
                return None;
            }
            inner.trim_matches('\'').to_string()
        }
        _ => last.to_string(),
    };
    let key = percent_encoding::percent_decode_str(&key)
        .decode_utf8()
        .ok()?
        .into_owned();
    (!key.is_empty()).then_some(key)
}

fn method_name(m: Method) -> &'static str {
    match m {
        Method::Get => "GET",
        Method::Post => "POST",
        Method::Put => "PUT",
        Method::Patch => "PATCH",
        Method::Delete => "DELETE",
    }
}

fn set_query(url: &mut Url, extra: &[(String, String)]) {
    if extra.is_empty() {
        return;
    }
    let mut pairs: Vec<(String, String)> = query_pairs(url)
        .into_iter()
        .filter(|(k, _)| !extra.iter().any(|(e, _)| e == k))
        .collect();
    pairs.extend(extra.iter().cloned());
    set_query_pairs(url, &pairs);
}

/// A URL's query as decoded pairs. Only `%XX` is decoded: a `+` is a plus
/// sign (RFC 3986, and the OData URL grammar), not a space as in HTML forms.
fn query_pairs(url: &Url) -> Vec<(String, String)> {
    let Some(q) = url.query() else {
        return Vec::new();
    };
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push(h * 16 + l);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// Sets a URL's query from pairs, percent-encoded as RFC 3986 and the OData
/// URL conventions (v4.01 §2, ABNF `query`) want: a space is `%20` (never
/// `+`, which OData reads as a plus sign), `&`, `=`, `#`, `+`, `%`, `;` and
/// non-ASCII are escaped, while `$` (system query option names such as
/// `$filter`), parentheses, `:`, `,`, `/` and `@` stay literal (the URL
/// standard then writes `'` as `%27` in http queries; servers decode it).
fn set_query_pairs(url: &mut Url, pairs: &[(String, String)]) {
    if pairs.is_empty() {
        url.set_query(None);
        return;
    }
    let mut q = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            q.push('&');
        }
        encode_query_component(k, &mut q);
        q.push('=');
        encode_query_component(v, &mut q);
    }
    url.set_query(Some(&q));
}

/// What stays literal in a query name or value: RFC 3986 unreserved
/// characters and the sub-delimiters OData's URL grammar writes as they are
/// (`$filter`, `'text'`, `(`...`)`); everything else, a space included, is
/// percent-encoded (`%20`, never `+`).
const QUERY_COMPONENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'$')
    .remove(b'\'')
    .remove(b'(')
    .remove(b')')
    .remove(b'*')
    .remove(b',')
    .remove(b':')
    .remove(b'/')
    .remove(b'@')
    .remove(b'!');

/// Whether a value a system gave as its next cursor is one.
fn is_cursor(v: &Value) -> bool {
    match v {
        Value::Null | Value::Bool(_) => false,
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        Value::Number(_) => true,
    }
}

fn encode_query_component(s: &str, out: &mut String) {
    out.extend(percent_encoding::utf8_percent_encode(s, QUERY_COMPONENT));
}

fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let t = text.trim();
    if t.chars().count() > 200 {
        format!("{}…", t.chars().take(200).collect::<String>())
    } else if t.is_empty() {
        "(empty body)".into()
    } else {
        t.to_string()
    }
}

/// `Retry-After` as seconds or an HTTP date.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    crate::webhooks::delivery::parse_retry_after(headers.get("retry-after")?.to_str().ok()?)
}

#[async_trait]
impl Connector for HttpConnector {
    async fn list(&self, entity: Entity, query: &ListQuery) -> Result<Page, ConnectorError> {
        let (records, next_cursor) = self.list_page(entity, query).await?;
        Ok(Page {
            records,
            next_cursor,
        })
    }

    async fn get(&self, entity: Entity, remote_id: &str) -> Result<Value, ConnectorError> {
        self.single(entity, "get", Some(remote_id), None, None)
            .await?
            .ok_or_else(|| {
                self.error(
                    ConnectorErrorKind::Permanent,
                    Some(entity),
                    "get",
                    None,
                    "the get response is empty",
                )
            })
    }

    async fn create(&self, req: WriteRequest<'_>) -> Result<Value, ConnectorError> {
        self.single(
            req.entity,
            "create",
            None,
            Some(req.data),
            Some(req.idempotency_key),
        )
        .await?
        .ok_or_else(|| {
            self.error(
                ConnectorErrorKind::Permanent,
                Some(req.entity),
                "create",
                None,
                "the create response has no record",
            )
        })
    }

    async fn update(&self, req: WriteRequest<'_>) -> Result<Value, ConnectorError> {
        let id = req.remote_id.unwrap_or_default();
        match self
            .single(
                req.entity,
                "update",
                Some(id),
                Some(req.data),
                Some(req.idempotency_key),
            )
            .await?
        {
            Some(r) => Ok(r),
            None => self.get(req.entity, id).await,
        }
    }

    async fn delete(&self, req: WriteRequest<'_>) -> Result<Value, ConnectorError> {
        let id = req.remote_id.unwrap_or_default();
        let before = match self
            .requests
            .get(&req.entity)
            .map(|r| r.ops.contains_key("get"))
        {
            Some(true) => Some(self.get(req.entity, id).await?),
            _ => None,
        };
        self.single(
            req.entity,
            "delete",
            Some(id),
            None,
            Some(req.idempotency_key),
        )
        .await?;
        let mut rec = before.unwrap_or_else(|| json!({"remote_id": id, "connection_id": self.id}));
        rec["remote_was_deleted"] = json!(true);
        Ok(rec)
    }

    async fn passthrough(
        &self,
        req: super::RawRequest,
    ) -> Result<super::RawResponse, ConnectorError> {
        self.send_raw(req).await
    }

    async fn health(&self) -> ConnectionStatus {
        self.health.status()
    }

    fn entities(&self) -> Vec<Entity> {
        self.def.entities.keys().copied().collect()
    }

    fn operations(&self, entity: Entity) -> Vec<&'static str> {
        let Some(r) = self.requests.get(&entity) else {
            return Vec::new();
        };
        let mut ops: Vec<&'static str> = r.list.iter().map(|_| "list").collect();
        for op in ["get", "create", "update", "delete"] {
            if r.ops.contains_key(op) || (op == "get" && r.detail.is_some()) {
                ops.push(op);
            }
        }
        ops
    }
}
