//! The route builder: each route is declared once, with its method, path,
//! scope, body type and limit and a summary; the builder adds it to the axum
//! router *and* records it, and [`Api::openapi`] turns the records into the
//! OpenAPI 3.1 document. A route cannot exist without being documented.
//!
//! The types a route (de)serializes are recorded with it right after it is
//! declared: [`Api::query`] (the query string's struct, one parameter per
//! field), [`Api::body`] (the JSON request body), [`Api::reply`] (a response
//! status and its body type), [`Api::no_content`], [`Api::text`] and
//! [`Api::errors`]. Their JSON Schemas come from `schemars`, from the same
//! types the handlers use, so the document and the wire cannot drift apart
//! unnoticed: the server tests validate real answers against it, and
//! `tests/api-fuzz/run` fuzzes a real server from it.

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::MethodRouter;
use schemars::JsonSchema;
use schemars::generate::{SchemaGenerator, SchemaSettings};
use serde_json::{Map, Value, json};

use super::auth::Scope;
use super::{AppState, method, request_id, require_scope};

/// One documented response.
#[derive(Debug, Clone)]
pub struct ReplyDoc {
    /// HTTP status.
    pub status: u16,
    /// What it means.
    pub description: &'static str,
    /// Content type and schema of the body; `None`: no body.
    pub content: Option<(&'static str, Value)>,
}

/// One documented route.
#[derive(Debug, Clone)]
pub struct RouteDoc {
    /// HTTP method.
    pub method: &'static str,
    /// Path as routed (`{id}`, `{*path}`).
    pub path: &'static str,
    /// Scope needed; `None` for public routes.
    pub scope: Option<Scope>,
    /// OpenAPI tag.
    pub tag: &'static str,
    /// What it does.
    pub summary: &'static str,
    /// Request body content type and size limit.
    pub body: Option<(&'static str, usize)>,
    /// Schema of the request body (for the content type of `body`).
    pub body_schema: Option<Value>,
    /// Query parameters: (name, required, schema, description).
    pub query: Vec<(String, bool, Value, Option<String>)>,
    /// Path parameters whose schema is not the default id schema.
    pub path_schemas: Vec<(&'static str, Value)>,
    /// Successful responses.
    pub replies: Vec<ReplyDoc>,
    /// Error statuses this route answers besides the ones every route of
    /// its kind has (see [`RouteDoc::error_statuses`]).
    pub errors: Vec<u16>,
}

impl RouteDoc {
    /// Names of the path parameters, in order (`{*path}` is `path`).
    pub fn path_params(&self) -> impl Iterator<Item = &str> {
        self.path.split('/').filter_map(|seg| {
            seg.strip_prefix('{')?
                .strip_suffix('}')
                .map(|s| s.trim_start_matches('*'))
        })
    }

    /// Every error status the route can answer: the declared ones, plus
    /// 401/403/429 for a route with a scope, 400/404 for one with path
    /// parameters, 400 for one with a query, 400/413/415 for one with a
    /// body (422 too when the body is JSON).
    pub fn error_statuses(&self) -> Vec<u16> {
        let mut s = self.errors.clone();
        if self.scope.is_some() {
            s.extend([401, 403, 429]);
        }
        if self.path_params().next().is_some() {
            s.extend([400, 404]);
        }
        if !self.query.is_empty() {
            s.push(400);
        }
        match self.body {
            Some(("*/*", _)) => s.push(413),
            Some((ctype, _)) => {
                s.extend([400, 413, 415]);
                if ctype == "application/json" {
                    s.push(422);
                }
            }
            None => {}
        }
        s.sort_unstable();
        s.dedup();
        s
    }
}

/// Routes being declared.
pub struct Api {
    state: Arc<AppState>,
    router: Router<Arc<AppState>>,
    docs: Vec<RouteDoc>,
    /// Schemas of what clients send (request bodies), as deserialized.
    requests: SchemaGenerator,
    /// Schemas of what the server answers, as serialized.
    responses: SchemaGenerator,
}

/// Request bodies of routes without one are refused above this size.
const NO_BODY_LIMIT: usize = 64 * 1024;

/// Where named schemas live in the document.
const SCHEMAS: &str = "/components/schemas";

/// What ids in paths look like ([`super::check_id`] refuses the rest).
const ID_PATTERN: &str = r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$";

fn generator(serialize: bool) -> SchemaGenerator {
    let settings = SchemaSettings::draft2020_12().with(|s| {
        s.definitions_path = SCHEMAS.into();
        s.meta_schema = None;
    });
    if serialize {
        settings.for_serialize().into_generator()
    } else {
        settings.for_deserialize().into_generator()
    }
}

impl Api {
    /// No routes yet.
    pub fn new(state: Arc<AppState>) -> Api {
        Api {
            state,
            router: Router::new(),
            docs: Vec::new(),
            requests: generator(false),
            responses: generator(true),
        }
    }

    /// A route that needs a token with `scope` (or none, when `None`).
    #[allow(clippy::too_many_arguments)]
    pub fn route(
        mut self,
        method_name: &'static str,
        path: &'static str,
        scope: Option<Scope>,
        tag: &'static str,
        summary: &'static str,
        body: Option<(&'static str, usize)>,
        handler: MethodRouter<Arc<AppState>>,
    ) -> Api {
        debug_assert_eq!(method(method_name).as_str(), method_name);
        let limit = body.map(|b| b.1).unwrap_or(NO_BODY_LIMIT);
        let mut handler = handler.layer(DefaultBodyLimit::max(limit));
        if let Some(scope) = scope {
            handler = handler.route_layer(axum::middleware::from_fn_with_state(
                (self.state.clone(), scope),
                require_scope,
            ));
        }
        self.router = self.router.route(path, handler);
        self.docs.push(RouteDoc {
            method: method_name,
            path,
            scope,
            tag,
            summary,
            body,
            body_schema: None,
            query: Vec::new(),
            path_schemas: Vec::new(),
            replies: Vec::new(),
            errors: Vec::new(),
        });
        self
    }

    fn last(&mut self) -> &mut RouteDoc {
        self.docs
            .last_mut()
            .expect("types are recorded after the route they belong to")
    }

    /// The last route's query string is `Q`: one parameter per field.
    pub fn query<Q: JsonSchema>(mut self) -> Api {
        let mut inline = SchemaSettings::draft2020_12()
            .with(|s| {
                s.inline_subschemas = true;
                s.meta_schema = None;
            })
            .for_deserialize()
            .into_generator();
        let schema = inline.root_schema_for::<Q>().to_value();
        let required: Vec<&str> = schema["required"]
            .as_array()
            .map(|r| r.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let mut params = Vec::new();
        if let Some(props) = schema["properties"].as_object() {
            for (name, prop) in props {
                let mut prop = prop.clone();
                let description = prop
                    .as_object_mut()
                    .and_then(|p| p.remove("description"))
                    .and_then(|d| d.as_str().map(str::to_string));
                params.push((
                    name.clone(),
                    required.contains(&name.as_str()),
                    without_null(prop),
                    description,
                ));
            }
        }
        self.last().query = params;
        self
    }

    /// The last route's request body (of its declared content type) is `B`.
    pub fn body<B: JsonSchema>(mut self) -> Api {
        let schema = self.requests.subschema_for::<B>().to_value();
        let d = self.last();
        debug_assert!(d.body.is_some(), "{} {} takes no body", d.method, d.path);
        d.body_schema = Some(schema);
        self
    }

    /// The last route's path parameter `name` is a `P` (not just an id).
    pub fn path<P: JsonSchema>(mut self, name: &'static str) -> Api {
        let schema = self.requests.subschema_for::<P>().to_value();
        self.last().path_schemas.push((name, schema));
        self
    }

    /// The last route answers `status` with a JSON `T`.
    pub fn reply<T: JsonSchema>(mut self, status: u16, description: &'static str) -> Api {
        let schema = self.responses.subschema_for::<T>().to_value();
        self.last().replies.push(ReplyDoc {
            status,
            description,
            content: Some(("application/json", schema)),
        });
        self
    }

    /// The last route answers `status` with no body.
    pub fn no_content(mut self, status: u16, description: &'static str) -> Api {
        self.last().replies.push(ReplyDoc {
            status,
            description,
            content: None,
        });
        self
    }

    /// The last route answers `status` with text of `content_type`.
    pub fn text(
        mut self,
        status: u16,
        content_type: &'static str,
        description: &'static str,
    ) -> Api {
        self.last().replies.push(ReplyDoc {
            status,
            description,
            content: Some((content_type, json!({"type": "string"}))),
        });
        self
    }

    /// The last route may also fail with these statuses (the error body).
    pub fn errors(mut self, statuses: &[u16]) -> Api {
        self.last().errors.extend_from_slice(statuses);
        self
    }

    /// A public route without a body.
    pub fn public(
        self,
        method_name: &'static str,
        path: &'static str,
        tag: &'static str,
        summary: &'static str,
        handler: MethodRouter<Arc<AppState>>,
    ) -> Api {
        self.route(method_name, path, None, tag, summary, None, handler)
    }

    /// A public route that takes any body up to `limit`.
    pub fn public_with_body(
        self,
        method_name: &'static str,
        path: &'static str,
        tag: &'static str,
        summary: &'static str,
        limit: usize,
        handler: MethodRouter<Arc<AppState>>,
    ) -> Api {
        self.route(
            method_name,
            path,
            None,
            tag,
            summary,
            Some(("*/*", limit)),
            handler,
        )
    }

    /// The declared routes.
    pub fn docs(&self) -> &[RouteDoc] {
        &self.docs
    }

    /// The axum router with the request-id middleware around everything
    /// (unknown routes included).
    pub fn into_router(self) -> Router {
        self.into_router_with(Router::new())
    }

    /// [`Api::into_router`] with `pages` (the console) beside the API,
    /// under the same request-id middleware.
    pub fn into_router_with(self, pages: Router) -> Router {
        let state = self.state.clone();
        self.router
            .with_state(state.clone())
            .merge(pages)
            .layer(axum::middleware::from_fn_with_state(state, request_id))
    }

    /// The OpenAPI 3.1 document of the declared routes.
    pub fn openapi(&self) -> Value {
        let mut paths = Map::new();
        for d in &self.docs {
            let path = d.path.replace("{*", "{");
            let entry = paths
                .entry(path)
                .or_insert_with(|| Value::Object(Map::new()));
            entry[d.method.to_ascii_lowercase()] = operation(d);
        }
        let mut schemas = self.responses.definitions().clone();
        for (name, schema) in self.requests.definitions() {
            // A type read and written under one name must look the same
            // both ways, or one of its two uses would be documented wrong.
            if let Some(other) = schemas.get(name) {
                debug_assert_eq!(
                    other, schema,
                    "schema `{name}` differs as request and response"
                );
            }
            schemas.insert(name.clone(), schema.clone());
        }
        schemas.insert("Error".into(), error_schema());
        schemas.insert(
            "Id".into(),
            json!({"type": "string", "minLength": 1, "maxLength": 128, "pattern": ID_PATTERN}),
        );
        json!({
            "openapi": "3.1.0",
            "info": {
                "title": "Sluice API",
                "version": env!("CARGO_PKG_VERSION"),
                "description": "Flows, runs, plugins, connections, unified records, webhooks and triggers. Errors are `{\"error\": {code, type, message, request_id}}`; every response carries `x-request-id`. Times are milliseconds since the Unix epoch unless a field says otherwise.",
            },
            "paths": paths,
            "components": {
                "securitySchemes": {"bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "An API token (`sluice token create --name NAME --scope admin|write|read`). Scopes nest: `admin` ⊃ `write` ⊃ `read`; each operation's security requirement names the least scope it needs.",
                }},
                "headers": {
                    "RequestId": {"description": "The request's id: the client's `x-request-id` when it is short and plain, else a new UUID v7; also in error bodies and the server log.", "schema": {"type": "string"}},
                    "RetryAfter": {"description": "Seconds to wait before retrying.", "schema": {"type": "integer", "minimum": 0}},
                },
                "schemas": schemas,
            },
        })
    }
}

/// The operation object of one route.
fn operation(d: &RouteDoc) -> Value {
    let mut params: Vec<Value> = d
        .path_params()
        .map(|name| {
            let schema = d
                .path_schemas
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, s)| s.clone())
                .unwrap_or_else(|| json!({"$ref": "#/components/schemas/Id"}));
            json!({"name": name, "in": "path", "required": true, "schema": schema})
        })
        .collect();
    for (name, required, schema, description) in &d.query {
        let mut p = json!({"name": name, "in": "query", "required": required, "schema": schema});
        if let Some(text) = description {
            p["description"] = Value::String(text.clone());
        }
        params.push(p);
    }
    if d.method == "POST" && d.path == "/v1/runs" {
        params.push(json!({"name": "Idempotency-Key", "in": "header", "required": false, "schema": {"type": "string", "minLength": 1, "maxLength": 200, "pattern": "^[\\x21-\\x7e]+$"}, "description": "At most one run per key and token (24 h)."}));
    }
    let request_id = json!({"x-request-id": {"$ref": "#/components/headers/RequestId"}});
    let mut responses = Map::new();
    for r in &d.replies {
        let mut res = json!({"description": r.description, "headers": request_id});
        if let Some((ctype, schema)) = &r.content {
            res["content"] = json!({ *ctype: {"schema": schema} });
        }
        responses.insert(r.status.to_string(), res);
    }
    for status in d.error_statuses() {
        let mut headers = request_id.clone();
        if matches!(status, 429 | 503) {
            headers["retry-after"] = json!({"$ref": "#/components/headers/RetryAfter"});
        }
        responses.insert(
            status.to_string(),
            json!({
                "description": error_description(status),
                "headers": headers,
                "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
            }),
        );
    }
    let mut op = json!({
        "summary": d.summary,
        "operationId": operation_id(d),
        "tags": [d.tag],
        "parameters": params,
        "responses": responses,
        "security": match d.scope {
            Some(scope) => json!([{"bearer": [scope.as_str()]}]),
            None => json!([]),
        },
    });
    if let Some((ctype, limit)) = d.body {
        let schema = d.body_schema.clone().unwrap_or_else(|| match ctype {
            "application/json" => json!({"type": "object"}),
            "application/yaml" => json!({"type": "string"}),
            _ => json!({}),
        });
        op["requestBody"] = json!({
            "required": ctype != "*/*",
            "description": format!("At most {limit} bytes."),
            "content": {ctype: {"schema": schema}},
        });
    }
    op
}

/// A query parameter's schema without `null`: an absent parameter is the
/// `None` of an `Option` field; there is no way to send a null.
fn without_null(mut schema: Value) -> Value {
    if let Some(types) = schema.get_mut("type").and_then(Value::as_array_mut) {
        types.retain(|t| t != "null");
        if types.len() == 1 {
            schema["type"] = types[0].clone();
        }
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(alts) = schema.get_mut(key).and_then(Value::as_array_mut) {
            alts.retain(|a| a.get("type").and_then(Value::as_str) != Some("null"));
            if alts.len() == 1 {
                let only = alts[0].clone();
                if let Some(obj) = schema.as_object_mut() {
                    obj.remove(key);
                    if let Some(o) = only.as_object() {
                        obj.extend(o.clone());
                    }
                }
            }
        }
    }
    schema
}

fn error_description(status: u16) -> &'static str {
    match status {
        400 => "INVALID_REQUEST: a malformed id, query, header or body",
        401 => "AUTHENTICATION_FAILED: no token, an unknown or revoked one, or a bad signature",
        403 => "PERMISSION_DENIED: the token's scope is too small",
        404 => "NOT_FOUND",
        409 => "CONFLICT: the resource's state does not allow it",
        413 => "PAYLOAD_TOO_LARGE: the body is over the route's limit",
        415 => "UNSUPPORTED_MEDIA_TYPE: the body's Content-Type is not the route's",
        422 => "VALIDATION_FAILED: well-formed, but not valid",
        429 => "RATE_LIMIT_EXCEEDED: wait `Retry-After` seconds",
        503 => {
            "SERVICE_UNAVAILABLE: busy, shutting down or an upstream system failed; retry after `Retry-After` seconds"
        }
        _ => "Error",
    }
}

fn error_schema() -> Value {
    json!({
        "type": "object",
        "required": ["error"],
        "properties": {"error": {
            "type": "object",
            "required": ["code", "type", "message", "request_id"],
            "properties": {
                "code": {"type": "string", "enum": ["INVALID_REQUEST", "AUTHENTICATION_FAILED", "PERMISSION_DENIED", "NOT_FOUND", "METHOD_NOT_ALLOWED", "CONFLICT", "PAYLOAD_TOO_LARGE", "UNSUPPORTED_MEDIA_TYPE", "VALIDATION_FAILED", "RATE_LIMIT_EXCEEDED", "INTERNAL_ERROR", "SERVICE_UNAVAILABLE"]},
                "type": {"type": "string"},
                "message": {"type": "string"},
                "request_id": {"type": "string"},
                "details": {},
            },
        }},
    })
}

fn operation_id(d: &RouteDoc) -> String {
    let mut id = d.method.to_ascii_lowercase();
    for seg in d.path.split('/').filter(|s| !s.is_empty() && *s != "v1") {
        let seg = seg.trim_start_matches("{*").trim_start_matches('{');
        let seg = seg.trim_end_matches('}');
        id.push('_');
        id.push_str(&seg.replace(['-', '.'], "_"));
    }
    id
}
