//! The route builder: each route is declared once, with its method, path,
//! scope, body type and limit and a summary; the builder adds it to the axum
//! router *and* records it, and [`Api::openapi`] turns the records into the
//! OpenAPI 3.1 document. A route cannot exist without being documented.

use std::sync::Arc;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::MethodRouter;
use serde_json::{Map, Value, json};

use super::auth::Scope;
use super::{AppState, method, request_id, require_scope};

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
}

/// Routes being declared.
pub struct Api {
    state: Arc<AppState>,
    router: Router<Arc<AppState>>,
    docs: Vec<RouteDoc>,
}

/// Request bodies of routes without one are refused above this size.
const NO_BODY_LIMIT: usize = 64 * 1024;

impl Api {
    /// No routes yet.
    pub fn new(state: Arc<AppState>) -> Api {
        Api {
            state,
            router: Router::new(),
            docs: Vec::new(),
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
        });
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
        let state = self.state.clone();
        self.router
            .layer(axum::middleware::from_fn_with_state(
                state.clone(),
                request_id,
            ))
            .with_state(state)
    }

    /// The OpenAPI 3.1 document of the declared routes.
    pub fn openapi(&self) -> Value {
        let mut paths = Map::new();
        for d in &self.docs {
            let path = d.path.replace("{*", "{");
            let mut params: Vec<Value> = path
                .split('/')
                .filter_map(|seg| seg.strip_prefix('{')?.strip_suffix('}'))
                .map(|name| {
                    json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}})
                })
                .collect();
            if d.method == "POST" && d.path == "/v1/runs" {
                params.push(json!({"name": "Idempotency-Key", "in": "header", "required": false, "schema": {"type": "string"}, "description": "At most one run per key (24 h)."}));
            }
            let mut op = json!({
                "summary": d.summary,
                "operationId": operation_id(d),
                "tags": [d.tag],
                "parameters": params,
                "responses": {
                    "2XX": {"description": "Success", "content": {"application/json": {"schema": {}}}},
                    "default": {"description": "Error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}},
                },
            });
            match d.scope {
                Some(scope) => {
                    op["security"] = json!([{"bearer": [scope.as_str()]}]);
                }
                None => {
                    op["security"] = json!([]);
                }
            }
            if let Some((ctype, limit)) = d.body {
                op["requestBody"] = json!({
                    "required": true,
                    "description": format!("At most {limit} bytes."),
                    "content": {ctype: {"schema": {}}},
                });
            }
            let entry = paths
                .entry(path)
                .or_insert_with(|| Value::Object(Map::new()));
            entry[d.method.to_ascii_lowercase()] = op;
        }
        json!({
            "openapi": "3.1.0",
            "info": {
                "title": "Sluice API",
                "version": env!("CARGO_PKG_VERSION"),
                "description": "Flows, runs, plugins, connections, unified records, webhooks and triggers. Errors are `{\"error\": {code, type, message, request_id}}`; every response carries `x-request-id`.",
            },
            "paths": paths,
            "components": {
                "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "`sluice token create --name NAME --scope admin|write|read`"}},
                "schemas": {
                    "Error": {
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
                    },
                },
            },
        })
    }
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
