//! `http`: call an HTTP API that is neither a connection's unified model nor a
//! registered webhook endpoint (Slack, Teams, a partner's REST API).
//!
//! ```yaml
//! - id: notify
//!   http:
//!     method: POST                      # default GET
//!     url: https://hooks.slack.com/services/T000/B000/XXXX
//!     query: { channel: ops }           # percent-encoded, appended to the URL
//!     headers: { Authorization: "Bearer ${{ secrets.SLACK_TOKEN }}" }
//!     json: { text: "PO ${{ inputs.po }} is waiting" }
//!     # or: form: {a: b} | text: "..." | bytes: "<base64>"
//!     response: auto                    # auto (JSON when the type says so) | json | text
//!     on_status: { "404": continue, "409": fail, "5xx": retry }
//! ```
//!
//! The output is `{status, headers, body}` (headers with lower-case names;
//! `body` parsed as JSON or kept as text). A status outside 2xx fails the step
//! unless `on_status` says otherwise: `continue` gives the response as the
//! output, `retry` fails retryably (the step's `retry` policy, honouring
//! `Retry-After`), `fail` fails. Without a rule, `429` and `5xx` are retried
//! and the rest fail. Every request goes through the SSRF guard that webhook
//! deliveries use (internal addresses refused unless `SLUICE_WEBHOOK_ALLOW`
//! lists them, `https` required elsewhere), redirects are not followed, and a
//! response larger than `SLUICE_HTTP_MAX_RESPONSE` bytes (default 10 MiB)
//! fails the step. Headers are the one place besides plugin config where an
//! expression may read `secrets` (an auth header needs one); they are never
//! stored or returned.
//!
//! **Passthrough**: with `connection: ID`, `url` is a path under that
//! connection's base URL, and the request goes through the connection: its
//! auth (basic, bearer, API key, OAuth 2.0, login session, SAP's CSRF token
//! for writes) and default headers are added, and its rate limit and
//! circuit breaker apply, for the endpoints the unified model does not cover
//! (like Merge's and Nango's proxies). The connection's host is the only
//! destination: an absolute URL is refused.
//!
//! ```yaml
//! - id: custom_fields
//!   http:
//!     connection: bc
//!     url: /api/v2.0/companies(${{ inputs.company }})/items
//!     query: { $top: 5 }
//! ```

use std::collections::BTreeMap;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use base64::Engine as _;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::{StepError, StepErrorKind, StepRuntime};
use crate::connectors::definition::parse_status_pattern;
use crate::expr::Template;
use crate::expr::types::Type;
use crate::flow::check::Checker;
use crate::path;
use crate::webhooks::ssrf::{GuardPolicy, GuardedResolver};

/// Config of an `http` step.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpStep {
    /// Send the request through this connection (a passthrough): `url` is
    /// then a path under its base URL, and its auth, rate limit and circuit
    /// breaker apply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection: Option<String>,
    /// `GET` (default), `POST`, `PUT`, `PATCH`, `DELETE`, `HEAD` or `OPTIONS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// The URL (a template).
    pub url: String,
    /// Query parameters, appended to the URL percent-encoded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<BTreeMap<String, Value>>,
    /// Request headers; the only place an expression may read `secrets`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<BTreeMap<String, String>>,
    /// A JSON body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json: Option<Value>,
    /// A form body (`application/x-www-form-urlencoded`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub form: Option<BTreeMap<String, Value>>,
    /// A text body (`text/plain` unless a `Content-Type` header says otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// A binary body, given as standard base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<String>,
    /// How to read the response body: `auto` (default), `json` or `text`.
    #[serde(default)]
    pub response: ResponseAs,
    /// What a status outside 2xx does: patterns (`404`, `4xx`, `500-599`,
    /// `401|403`) → `fail`, `continue` or `retry`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_status: Option<BTreeMap<String, StatusAction>>,
}

/// How a response body is read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ResponseAs {
    /// JSON when the content type is JSON (`application/json`, `*+json`), else text.
    #[default]
    Auto,
    /// JSON; a body that is not JSON fails the step.
    Json,
    /// Text, whatever the content type.
    Text,
}

/// What a response status does to the step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StatusAction {
    /// The step fails (not retried).
    Fail,
    /// The step succeeds with the response as its output.
    Continue,
    /// The step fails retryably, so its `retry` policy runs.
    Retry,
}

#[derive(Debug)]
enum Body {
    None,
    Json(Template),
    Form(Template),
    Text(Template),
    Bytes(Template),
}

/// Request headers whose values are credentials: kept as `[redacted]` in
/// the step's recorded input (names lowercase, as `HeaderName` has them).
const SENSITIVE_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-api-key",
    "api-key",
    "apikey",
    "x-auth-token",
];

/// A compiled `http` step.
#[derive(Debug)]
pub struct CompiledHttp {
    connection: Option<String>,
    method: reqwest::Method,
    url: Template,
    query: Option<Template>,
    headers: Vec<(reqwest::header::HeaderName, Template)>,
    /// Headers whose value reads a secret: their values are never kept.
    secret_headers: Vec<reqwest::header::HeaderName>,
    body: Body,
    response: ResponseAs,
    on_status: Vec<(Vec<(u16, u16)>, StatusAction)>,
    /// The limit of one request, answer included, when the step sets no
    /// `timeout` of its own (which the executor enforces).
    deadline: Option<Duration>,
}

/// How long a request of an `http` step without a `timeout` may take, from
/// connecting to the answer's last byte: `SLUICE_HTTP_TIMEOUT` (e.g. `90s`),
/// 60 s by default. A server that accepts and never answers fails the
/// attempt instead of holding the run.
/// `0s` sets no limit; a value that does not parse is reported and the
/// default used.
fn default_timeout() -> Option<Duration> {
    static LIMIT: LazyLock<Option<Duration>> = LazyLock::new(|| {
        let Ok(text) = std::env::var("SLUICE_HTTP_TIMEOUT") else {
            return Some(Duration::from_secs(60));
        };
        match humantime::parse_duration(text.trim()) {
            Ok(d) if d.is_zero() => None,
            Ok(d) => Some(d),
            Err(e) => {
                tracing::warn!(value = %text, error = %e, "SLUICE_HTTP_TIMEOUT is not a duration (e.g. 90s); using 60s");
                Some(Duration::from_secs(60))
            }
        }
    });
    *LIMIT
}

/// The static type of an `http` step's output.
pub fn output_type() -> Type {
    Type::object(
        [
            ("status", Type::Integer),
            ("headers", Type::any_object()),
            ("body", Type::Any),
        ]
        .map(|(k, t)| (k.to_string(), t)),
        false,
    )
    .named("the HTTP response")
}

/// Checks and compiles an `http` step.
/// Calls other systems: has an effect outside the run.
pub const PURE: bool = false;

pub fn compile(
    step: &HttpStep,
    ctx: &super::CompileCtx<'_>,
    c: &mut Checker<'_>,
) -> Option<CompiledHttp> {
    let mut ok = true;
    let method = match step
        .method
        .as_deref()
        .unwrap_or("GET")
        .to_ascii_uppercase()
        .as_str()
    {
        m @ ("GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS") => {
            reqwest::Method::from_bytes(m.as_bytes()).expect("a standard method")
        }
        other => {
            c.error(
                &path!["http", "method"],
                "invalid-method",
                format!("`{other}` is not an HTTP method this step sends"),
            )
            .hint = Some("use GET, POST, PUT, PATCH, DELETE, HEAD or OPTIONS".into());
            ok = false;
            reqwest::Method::GET
        }
    };
    let url = c.template(&path!["http", "url"], &Value::String(step.url.clone()));
    if let Some(name) = &step.connection {
        ok &= c.connection(&path!["http", "connection"], name);
        if step.url.contains("://") {
            c.error(
                &path!["http", "url"],
                "absolute-url",
                "with `connection`, `url` is a path under the connection's base URL",
            )
            .hint = Some("write the path only, e.g. `/api/v2.0/items`".into());
            ok = false;
        }
    }
    let query = step.query.as_ref().map(|q| {
        c.template(
            &path!["http", "query"],
            &Value::Object(q.clone().into_iter().collect()),
        )
    });
    let mut headers = Vec::new();
    let mut secret_headers = Vec::new();
    // An auth header is where a credential is needed.
    c.allow_secrets = true;
    for (name, value) in step.headers.iter().flatten() {
        let t = c.template(
            &path!["http", "headers", name.as_str()],
            &Value::String(value.clone()),
        );
        match reqwest::header::HeaderName::from_bytes(name.as_bytes()) {
            Ok(h) => {
                if value.contains("secrets") {
                    secret_headers.push(h.clone());
                }
                if let Some(t) = t {
                    headers.push((h, t));
                }
            }
            Err(_) => {
                c.error_at_key(
                    &path!["http", "headers", name.as_str()],
                    "invalid-header",
                    format!("`{name}` is not a valid header name"),
                );
                ok = false;
            }
        }
    }
    c.allow_secrets = false;
    let bodies: Vec<&str> = [
        step.json.as_ref().map(|_| "json"),
        step.form.as_ref().map(|_| "form"),
        step.text.as_ref().map(|_| "text"),
        step.bytes.as_ref().map(|_| "bytes"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if bodies.len() > 1 {
        c.error_at_key(
            &path!["http", bodies[1]],
            "several-bodies",
            format!(
                "an `http` step sends one body, not {}",
                bodies.join(" and ")
            ),
        );
        ok = false;
    }
    let body = if let Some(j) = &step.json {
        c.template(&path!["http", "json"], j).map(Body::Json)
    } else if let Some(f) = &step.form {
        c.template(
            &path!["http", "form"],
            &Value::Object(f.clone().into_iter().collect()),
        )
        .map(Body::Form)
    } else if let Some(t) = &step.text {
        c.template(&path!["http", "text"], &Value::String(t.clone()))
            .map(Body::Text)
    } else if let Some(b) = &step.bytes {
        c.template(&path!["http", "bytes"], &Value::String(b.clone()))
            .map(Body::Bytes)
    } else {
        Some(Body::None)
    };
    let mut on_status = Vec::new();
    for (pattern, action) in step.on_status.iter().flatten() {
        match parse_status_pattern(pattern) {
            Ok(ranges) => on_status.push((ranges, *action)),
            Err(e) => {
                c.error_at_key(
                    &path!["http", "on_status", pattern.as_str()],
                    "invalid-status",
                    e,
                );
                ok = false;
            }
        }
    }
    // The most specific rule wins: single statuses before ranges and classes.
    on_status.sort_by_key(|(ranges, _)| ranges.iter().map(|(a, b)| b - a).max().unwrap_or(0));
    if !ok {
        return None;
    }
    Some(CompiledHttp {
        connection: step.connection.clone(),
        method,
        url: url?,
        query: query.flatten(),
        headers,
        secret_headers,
        body: body?,
        response: step.response,
        on_status,
        deadline: ctx.step.timeout.is_none().then(default_timeout).flatten(),
    })
}

/// The largest response body read, from `SLUICE_HTTP_MAX_RESPONSE` (bytes).
fn max_response() -> usize {
    static MAX: LazyLock<usize> = LazyLock::new(|| {
        std::env::var("SLUICE_HTTP_MAX_RESPONSE")
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(10 * 1024 * 1024)
    });
    *MAX
}

/// The guard policy and client, built once per process.
fn client() -> &'static Result<(Arc<GuardPolicy>, reqwest::Client), String> {
    static CLIENT: LazyLock<Result<(Arc<GuardPolicy>, reqwest::Client), String>> =
        LazyLock::new(|| {
            let policy = Arc::new(
                GuardPolicy::from_env().map_err(|e| format!("SLUICE_WEBHOOK_ALLOW: {e}"))?,
            );
            let client = reqwest::Client::builder()
                .dns_resolver(Arc::new(GuardedResolver::new(policy.clone())))
                .redirect(reqwest::redirect::Policy::none())
                .connect_timeout(Duration::from_secs(10))
                .user_agent(concat!("sluice/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
            Ok((policy, client))
        });
    &CLIENT
}

fn text_of(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

impl CompiledHttp {
    /// Sends the request and reads the response.
    /// See [`output_type`].
    pub fn output_type(&self) -> Type {
        output_type()
    }

    pub async fn execute(&self, rt: &StepRuntime<'_>) -> Result<Value, StepError> {
        let invalid = |m: String| StepError::new(StepErrorKind::Validation, m);
        let url_text = text_of(&self.url.eval(rt.ctx)?);
        let mut query = Vec::new();
        if let Some(q) = &self.query
            && let Value::Object(params) = q.eval(rt.ctx)?
        {
            for (k, v) in &params {
                match v {
                    Value::Null => {}
                    Value::Array(items) => {
                        query.extend(items.iter().map(|item| (k.clone(), text_of(item))));
                    }
                    other => query.push((k.clone(), text_of(other))),
                }
            }
        }
        let mut headers = Vec::with_capacity(self.headers.len() + 1);
        for (name, t) in &self.headers {
            let v = text_of(&t.eval(rt.ctx)?);
            let hv = reqwest::header::HeaderValue::from_str(&v).map_err(|_| {
                invalid(format!(
                    "the value of header `{name}` is not a valid header value"
                ))
            })?;
            headers.push((name.clone(), hv));
        }
        let has_content_type = self
            .headers
            .iter()
            .any(|(n, _)| n == reqwest::header::CONTENT_TYPE);
        // The body, and how it is shown in the step's recorded input.
        let (body, content_type, shown_body) = match &self.body {
            Body::None => (None, None, Value::Null),
            Body::Json(t) => {
                let v = t.eval(rt.ctx)?;
                (
                    Some(serde_json::to_vec(&v).expect("JSON serializes")),
                    Some("application/json"),
                    json!({ "json": v }),
                )
            }
            Body::Form(t) => {
                let mut form = url::form_urlencoded::Serializer::new(String::new());
                let v = t.eval(rt.ctx)?;
                if let Value::Object(m) = &v {
                    for (k, v) in m {
                        form.append_pair(k, &text_of(v));
                    }
                }
                (
                    Some(form.finish().into_bytes()),
                    Some("application/x-www-form-urlencoded"),
                    json!({ "form": v }),
                )
            }
            Body::Text(t) => {
                let text = text_of(&t.eval(rt.ctx)?);
                let shown = json!({ "text": text });
                (
                    Some(text.into_bytes()),
                    Some("text/plain; charset=utf-8"),
                    shown,
                )
            }
            Body::Bytes(t) => {
                let b64 = text_of(&t.eval(rt.ctx)?);
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(b64.trim())
                    .map_err(|e| invalid(format!("`bytes` is not standard base64: {e}")))?;
                let shown = json!({ "bytes": bytes.len() });
                (Some(bytes), Some("application/octet-stream"), shown)
            }
        };
        if let (Some(ct), false) = (content_type, has_content_type) {
            headers.push((
                reqwest::header::CONTENT_TYPE,
                reqwest::header::HeaderValue::from_static(ct),
            ));
        }
        rt.record_input(json!({
            "connection": self.connection,
            "method": self.method.as_str(),
            "url": url_text,
            "query": query,
            "headers": headers.iter().map(|(name, v)| {
                // Credentials in headers are not kept, whatever their value
                // or however it was encoded.
                let value = if SENSITIVE_HEADERS.contains(&name.as_str())
                    || self.secret_headers.contains(name)
                    || v.is_sensitive()
                {
                    "[redacted]".to_string()
                } else {
                    String::from_utf8_lossy(v.as_bytes()).into_owned()
                };
                (name.to_string(), Value::String(value))
            }).collect::<Map<_, _>>(),
            "body": shown_body,
        }));
        if let Some(name) = &self.connection {
            let shown = format!("{name}:{}", url_text.split('?').next().unwrap_or(""));
            let resp = rt
                .connector(name)?
                .passthrough(crate::connectors::RawRequest {
                    method: self.method.clone(),
                    path: url_text,
                    query,
                    headers,
                    body,
                })
                .await?;
            let max = max_response();
            if resp.body.len() > max {
                return Err(invalid(format!(
                    "{} {shown}: the response is larger than {max} bytes (SLUICE_HTTP_MAX_RESPONSE)",
                    self.method
                )));
            }
            return self.answer(&shown, resp.status, &resp.headers, &resp.body);
        }
        let (policy, client) = client().as_ref().map_err(|e| invalid(e.clone()))?;
        let mut url = policy
            .check_url(&url_text)
            .map_err(|e| invalid(e.for_any_url()))?;
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(&query);
        }
        let shown = {
            let mut u = url.clone();
            u.set_query(None);
            u.to_string()
        };
        let mut req = client.request(self.method.clone(), url);
        for (name, value) in headers {
            req = req.header(name, value);
        }
        if let Some(body) = body {
            req = req.body(body);
        }
        if let Some(limit) = self.deadline {
            req = req.timeout(limit);
        }
        let network = |e: reqwest::Error| {
            // A request that never connected was never sent; one that may
            // have reached the server is sent again only when repeating it
            // is harmless (RFC 9110 §9.2.2: GET, HEAD, PUT, DELETE...).
            let retryable = e.is_connect() || self.method.is_idempotent();
            // The message never carries request headers (credentials).
            let why = if e.is_timeout() {
                match self.deadline {
                    Some(limit) => format!(
                        "no answer within {} (SLUICE_HTTP_TIMEOUT; a step's `timeout` replaces it)",
                        humantime::format_duration(limit)
                    ),
                    None => "timed out".to_string(),
                }
            } else if e.is_connect() {
                format!(
                    "could not connect: {}",
                    std::error::Error::source(&e)
                        .map(|s| s.to_string())
                        .unwrap_or_else(|| e.to_string())
                )
            } else {
                e.without_url().to_string()
            };
            let again = if retryable {
                ""
            } else {
                " (not sent again: the server may have acted on it)"
            };
            StepError {
                retryable,
                ..StepError::new(
                    StepErrorKind::Connector,
                    format!("{} {shown}: {why}{again}", self.method),
                )
            }
        };
        let mut resp = req.send().await.map_err(network)?;
        let status = resp.status().as_u16();
        let resp_headers = resp.headers().clone();
        let max = max_response();
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(network)? {
            if body.len() + chunk.len() > max {
                return Err(invalid(format!(
                    "{} {shown}: the response is larger than {max} bytes (SLUICE_HTTP_MAX_RESPONSE)",
                    self.method
                )));
            }
            body.extend_from_slice(&chunk);
        }
        self.answer(&shown, status, &resp_headers, &body)
    }

    /// The step's result from a response: its output, or the error
    /// `on_status` (or the default rules) make of its status.
    fn answer(
        &self,
        shown: &str,
        status: u16,
        resp_headers: &reqwest::header::HeaderMap,
        body: &[u8],
    ) -> Result<Value, StepError> {
        let invalid = |m: String| StepError::new(StepErrorKind::Validation, m);
        let mut headers = Map::new();
        for (k, v) in resp_headers {
            if let Ok(v) = v.to_str() {
                headers
                    .entry(k.as_str().to_string())
                    .and_modify(|old| {
                        if let Value::String(s) = old {
                            s.push_str(", ");
                            s.push_str(v);
                        }
                    })
                    .or_insert_with(|| Value::String(v.to_string()));
            }
        }
        let retry_after = crate::connectors::http::retry_after(resp_headers);
        let is_json = resp_headers
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| {
                let ct = ct
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase();
                ct == "application/json" || ct.ends_with("+json")
            });
        let text = || String::from_utf8_lossy(body).into_owned();
        let parsed = match self.response {
            ResponseAs::Text => Value::String(text()),
            ResponseAs::Auto if !is_json => {
                if body.is_empty() {
                    Value::Null
                } else {
                    Value::String(text())
                }
            }
            ResponseAs::Auto | ResponseAs::Json => {
                if body.is_empty() {
                    Value::Null
                } else {
                    serde_json::from_slice(body).map_err(|e| {
                        invalid(format!(
                            "{} {shown}: answered {status} with a body that is not JSON: {e}",
                            self.method
                        ))
                    })?
                }
            }
        };
        let out = serde_json::json!({"status": status, "headers": headers, "body": parsed});
        if (200..300).contains(&status) {
            return Ok(out);
        }
        let action = self
            .on_status
            .iter()
            .find(|(ranges, _)| ranges.iter().any(|(a, b)| (*a..=*b).contains(&status)))
            .map(|(_, a)| *a)
            .unwrap_or(if status == 429 || status >= 500 {
                StatusAction::Retry
            } else {
                StatusAction::Fail
            });
        if action == StatusAction::Continue {
            return Ok(out);
        }
        let snippet: String = text().chars().take(300).collect();
        let mut err = StepError::new(
            StepErrorKind::Connector,
            format!("{} {shown} answered {status}: {snippet}", self.method),
        );
        err.details = Some(serde_json::json!({"upstream_status": status}));
        if action == StatusAction::Retry {
            err.retryable = true;
            err.retry_after = retry_after;
        }
        Err(err)
    }
}
