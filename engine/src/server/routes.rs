//! Every route of the API, declared once: method, path, scope, tag, summary,
//! body limit and handler, then the types it reads and answers, which the
//! OpenAPI document at `/v1/openapi.json` is made from (see [`super::api`]).

use std::sync::Arc;

use axum::routing::{delete, get, patch, post};

use super::api::Api;
use super::auth::Scope;
use super::{AppState, Status, flows, metrics, resources as res, retention, runs, triggers};
use crate::store::{MessageRecord, PluginRecord, PruneReport, SyncStateRow, TokenRow};
use crate::sync::SyncReport;
use crate::unified::Entity;
use crate::webhooks::endpoints::Endpoint;

/// `{"items": [...]}`, the shape of every list.
#[derive(serde::Serialize, schemars::JsonSchema)]
#[schemars(rename = "{T}List")]
pub struct Items<T> {
    /// The items.
    pub items: Vec<T>,
}

/// An OpenAPI 3.1 document.
pub struct OpenApiDocument;

impl schemars::JsonSchema for OpenApiDocument {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "OpenApiDocument".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "object",
            "required": ["openapi", "info", "paths"],
            "properties": {"openapi": {"const": "3.1.0"}},
        })
    }
}

/// Every route of the API.
pub fn routes(state: Arc<AppState>) -> Api {
    const JSON: &str = "application/json";
    const JSON_LIMIT: usize = 1 << 20;
    const FLOW_LIMIT: usize = 1 << 20;
    const HOOK_LIMIT: usize = 1 << 20;
    let plugin_limit = crate::plugins::MAX_PLUGIN_BYTES + 4096;
    let read = Some(Scope::Read);
    let write = Some(Scope::Write);
    let admin = Some(Scope::Admin);
    let json = Some((JSON, JSON_LIMIT));
    Api::new(state)
        .public(
            "GET",
            "/healthz",
            "system",
            "Liveness: the process answers",
            get(super::health),
        )
        .reply::<Status>(200, "The process answers")
        .public(
            "GET",
            "/readyz",
            "system",
            "Readiness: the database answers and runs are accepted",
            get(super::ready),
        )
        .reply::<Status>(200, "Ready")
        .errors(&[503])
        .public(
            "GET",
            "/metrics",
            "system",
            "Prometheus metrics",
            get(metrics::render),
        )
        .text(200, "text/plain", "Prometheus text exposition format")
        .public(
            "GET",
            "/v1/openapi.json",
            "system",
            "This OpenAPI 3.1 document",
            get(super::openapi),
        )
        .reply::<OpenApiDocument>(200, "The document")
        // Flows.
        .route(
            "POST",
            "/v1/flows",
            write,
            "flows",
            "Upload a flow (YAML); it is validated and stored as a new revision",
            Some(("application/yaml", FLOW_LIMIT)),
            post(flows::upload),
        )
        .body::<flows::FlowYaml>()
        .reply::<flows::FlowSummary>(201, "Stored as a new revision")
        .reply::<flows::FlowSummary>(200, "Unchanged: the latest revision has this source")
        .errors(&[409, 422])
        .route(
            "GET",
            "/v1/flows",
            read,
            "flows",
            "List flows",
            None,
            get(flows::list),
        )
        .reply::<Items<flows::FlowSummary>>(200, "The flows, by id")
        .route(
            "GET",
            "/v1/flows/{id}",
            read,
            "flows",
            "Get a flow with its revisions",
            None,
            get(flows::get_one),
        )
        .query::<flows::FlowQuery>()
        .reply::<flows::FlowDetail>(200, "The flow, its source and revisions")
        .errors(&[400])
        .route(
            "DELETE",
            "/v1/flows/{id}",
            write,
            "flows",
            "Delete a flow (its revisions stay for its runs)",
            None,
            delete(flows::remove),
        )
        .no_content(204, "Deleted")
        .route(
            "POST",
            "/v1/flows/{id}/enable",
            write,
            "flows",
            "Enable a flow's triggers",
            None,
            post(flows::enable),
        )
        .reply::<flows::FlowSummary>(200, "The flow, enabled")
        .route(
            "POST",
            "/v1/flows/{id}/disable",
            write,
            "flows",
            "Disable a flow's triggers",
            None,
            post(flows::disable),
        )
        .reply::<flows::FlowSummary>(200, "The flow, disabled")
        // Runs.
        .route(
            "POST",
            "/v1/runs",
            write,
            "runs",
            "Start a run: {flow, inputs, wait}; `Idempotency-Key` starts at most one run per key",
            json,
            post(runs::start),
        )
        .body::<runs::StartBody>()
        .reply::<runs::RunDetail>(
            201,
            "Started (finished, with `wait`, unless it timed out); `Location` names it",
        )
        .reply::<runs::RunDetail>(200, "The run this `Idempotency-Key` already started")
        .errors(&[404, 409, 503])
        .route(
            "GET",
            "/v1/runs",
            read,
            "runs",
            "List runs, newest first (filters flow, status; cursor, limit)",
            None,
            get(runs::list),
        )
        .query::<runs::ListQuery>()
        .reply::<runs::RunPage>(200, "A page of runs")
        .route(
            "GET",
            "/v1/runs/{id}",
            read,
            "runs",
            "Get a run with its steps",
            None,
            get(runs::get_one),
        )
        .reply::<runs::RunDetail>(200, "The run and its steps")
        .route(
            "POST",
            "/v1/runs/prune",
            admin,
            "runs",
            "Delete finished runs by age and/or count: {older_than, failed_older_than, keep, flow}",
            json,
            post(retention::prune),
        )
        .body::<retention::PruneBody>()
        .reply::<PruneReport>(200, "What was deleted")
        .route(
            "POST",
            "/v1/runs/{id}/cancel",
            write,
            "runs",
            "Cancel a queued or running run",
            None,
            post(runs::cancel),
        )
        .reply::<runs::CancelAnswer>(202, "Cancellation requested")
        .errors(&[409])
        .route(
            "POST",
            "/v1/runs/{id}/signal",
            write,
            "runs",
            "Send a signal to a run parked by a `wait_for` step: {signal, data}; the data is checked against the step's declaration",
            json,
            post(runs::signal),
        )
        .body::<runs::SignalBody>()
        .reply::<crate::run::Signalled>(202, "Signal taken; the run goes on")
        .errors(&[409, 422])
        .route(
            "POST",
            "/v1/runs/{id}/rerun",
            write,
            "runs",
            "Re-run a failed run from its failed step, or a cancelled one (?revision=latest: on the flow's latest revision, if the steps that ran are unchanged in it)",
            None,
            post(runs::rerun),
        )
        .query::<runs::RerunQuery>()
        .reply::<runs::RerunAnswer>(202, "Resumed from the failed step")
        .errors(&[409, 503])
        // Plugins.
        .route(
            "POST",
            "/v1/plugins",
            write,
            "plugins",
            "Upload a WASM component (?name=&version=)",
            Some(("application/wasm", plugin_limit)),
            post(res::plugin_upload),
        )
        .query::<res::PluginQuery>()
        .body::<res::WasmBytes>()
        .reply::<PluginRecord>(201, "Registered")
        .reply::<PluginRecord>(200, "This version already holds these bytes")
        .errors(&[409, 422, 503])
        .route(
            "GET",
            "/v1/plugins",
            read,
            "plugins",
            "List plugins (all versions)",
            None,
            get(res::plugin_list),
        )
        .reply::<Items<PluginRecord>>(200, "Every version of every plugin")
        .route(
            "GET",
            "/v1/plugins/{name}",
            read,
            "plugins",
            "Get a plugin's versions",
            None,
            get(res::plugin_get),
        )
        .reply::<res::PluginVersions>(200, "The plugin's versions")
        // Connections, syncs, unified records.
        .route(
            "POST",
            "/v1/connections",
            write,
            "connections",
            "Create a connection: {id, definition, params, credentials}",
            json,
            post(res::connection_create),
        )
        .body::<res::NewConnection>()
        .reply::<res::ConnectionOut>(201, "Created (or replaced)")
        .errors(&[409])
        .route(
            "GET",
            "/v1/connections",
            read,
            "connections",
            "List connections with their status",
            None,
            get(res::connection_list),
        )
        .reply::<Items<res::ConnectionOut>>(200, "The sandbox and every stored connection")
        .route(
            "GET",
            "/v1/connections/{id}",
            read,
            "connections",
            "Get a connection's status and status history",
            None,
            get(res::connection_get),
        )
        .query::<res::HistoryQuery>()
        .reply::<res::ConnectionDetail>(200, "The connection and its latest status changes")
        .route(
            "POST",
            "/v1/connections/{id}/test",
            write,
            "connections",
            "Make one cheap authenticated call",
            None,
            post(res::connection_test),
        )
        .reply::<res::ConnectionTest>(
            200,
            "The call's outcome (`ok: false` with the connector's error when it failed)",
        )
        .route(
            "POST",
            "/v1/connections/{id}/syncs",
            write,
            "syncs",
            "Start a sync: {entity, full}; waits for it to end",
            json,
            post(res::sync_start),
        )
        .body::<res::SyncBody>()
        .reply::<SyncReport>(200, "The finished sync")
        .errors(&[409, 422, 503])
        .route(
            "GET",
            "/v1/connections/{id}/syncs",
            read,
            "syncs",
            "Sync state per entity",
            None,
            get(res::sync_status),
        )
        .reply::<Items<SyncStateRow>>(200, "One row per synced entity")
        .route(
            "GET",
            "/v1/connections/{id}/{entity}",
            read,
            "records",
            "List unified records (modified_after, filters, cursor, limit; from=cache)",
            None,
            get(res::records_list),
        )
        .path::<Entity>("entity")
        .query::<res::RecordsQuery>()
        .reply::<res::RecordPage>(200, "A page of unified records")
        .errors(&[422, 503])
        .route(
            "GET",
            "/v1/connections/{id}/{entity}/{remote_id}",
            read,
            "records",
            "Get one unified record",
            None,
            get(res::record_get),
        )
        .path::<Entity>("entity")
        .path::<res::RemoteId>("remote_id")
        .reply::<res::UnifiedRecord>(200, "The unified record (its entity's schema)")
        .errors(&[422, 503])
        // Outbound webhooks.
        .route(
            "POST",
            "/v1/webhooks/endpoints",
            write,
            "webhooks",
            "Create an endpoint: {url, event_types, connection_id, description}",
            json,
            post(res::endpoint_create),
        )
        .body::<res::EndpointBody>()
        .reply::<res::EndpointWithSecret>(
            201,
            "Created; the only answer holding the signing secret",
        )
        .route(
            "GET",
            "/v1/webhooks/endpoints",
            read,
            "webhooks",
            "List endpoints",
            None,
            get(res::endpoint_list),
        )
        .reply::<Items<Endpoint>>(200, "Every endpoint")
        .route(
            "GET",
            "/v1/webhooks/endpoints/{id}",
            read,
            "webhooks",
            "Get an endpoint",
            None,
            get(res::endpoint_get),
        )
        .reply::<Endpoint>(200, "The endpoint")
        .route(
            "PATCH",
            "/v1/webhooks/endpoints/{id}",
            write,
            "webhooks",
            "Enable or disable an endpoint: {enabled}",
            json,
            patch(res::endpoint_update),
        )
        .body::<res::EndpointPatch>()
        .reply::<Endpoint>(200, "The endpoint, changed")
        .route(
            "DELETE",
            "/v1/webhooks/endpoints/{id}",
            write,
            "webhooks",
            "Disable an endpoint for good (its messages stay)",
            None,
            delete(res::endpoint_delete),
        )
        .no_content(204, "Disabled")
        .route(
            "POST",
            "/v1/webhooks/endpoints/{id}/rotate-secret",
            write,
            "webhooks",
            "Rotate the signing secret (the old one signs too for 24 h)",
            None,
            post(res::endpoint_rotate),
        )
        .reply::<res::RotatedSecret>(200, "The new secret")
        .errors(&[422])
        .route(
            "GET",
            "/v1/webhooks/messages",
            read,
            "webhooks",
            "List outbox messages (endpoint, status, limit)",
            None,
            get(res::message_list),
        )
        .query::<res::MessageQuery>()
        .reply::<Items<MessageRecord>>(200, "Messages, newest first")
        .route(
            "GET",
            "/v1/webhooks/messages/{id}",
            read,
            "webhooks",
            "Get a message with its delivery attempts",
            None,
            get(res::message_get),
        )
        .reply::<res::MessageDetail>(200, "The message and its attempts")
        .route(
            "POST",
            "/v1/webhooks/messages/{id}/resend",
            write,
            "webhooks",
            "Deliver a message again",
            None,
            post(res::message_resend),
        )
        .reply::<res::Resent>(202, "Queued for delivery")
        // Tokens.
        .route(
            "POST",
            "/v1/tokens",
            admin,
            "tokens",
            "Create an API token: {name, scope, rate_per_sec}",
            json,
            post(res::token_create),
        )
        .body::<res::TokenBody>()
        .reply::<res::NewTokenOut>(201, "Created; the only answer holding the token")
        .route(
            "GET",
            "/v1/tokens",
            admin,
            "tokens",
            "List API tokens (never their secrets)",
            None,
            get(res::token_list),
        )
        .reply::<Items<TokenRow>>(200, "Every token, revoked ones too")
        .route(
            "DELETE",
            "/v1/tokens/{id}",
            admin,
            "tokens",
            "Revoke an API token",
            None,
            delete(res::token_revoke),
        )
        .no_content(204, "Revoked")
        // Inbound webhooks (authenticated by their signature, if the trigger has a secret).
        .public_with_body(
            "POST",
            "/v1/hooks/{*path}",
            "triggers",
            "Inbound webhook: starts the flow whose webhook trigger has this path; 202 + run id, or with `respond: output` the flow's output as the answer (its `status`, `body`, `headers`)",
            HOOK_LIMIT,
            post(triggers::inbound_hook),
        )
        .path::<triggers::HookPath>("path")
        .reply::<triggers::HookAnswer>(202, "A run started")
        .reply::<triggers::HookAnswer>(200, "This `webhook-id` already started a run")
        .errors(&[400, 401, 409, 422, 503])
}
