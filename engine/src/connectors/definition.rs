//! Declarative connector definitions: how to talk to one kind of system,
//! written in YAML (`engine/connectors/*.yaml`), without Rust.
//!
//! A definition names its connection parameters and credentials, its auth
//! scheme, and per entity the requests for each operation, the JSONPath that
//! selects records in a response, the paginator, the incremental filter and
//! the field mapping into the unified model. It is checked like a flow: the
//! YAML tree against the JSON Schema of these types (every unknown key, wrong
//! type or bad enum value at its line and column), then the meaning (JSONPaths
//! parse, templates compile, mapped fields exist in the unified model).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::ErrorCode;
use super::mapping::{self, Mapping};
use crate::expr::Template;
use crate::expr::jsonpath::Query;
use crate::path;
use crate::unified::Entity;
use crate::yaml::diagnostic::{Diagnostic, FlowErrors};
use crate::yaml::shape;
use crate::yaml::source::{Node, NodeValue, Seg, parse_yaml};

/// The definitions that ship with Sluice.
pub const BUILT_IN: &[(&str, &str)] = &[
    (
        "sap_s4hana.yaml",
        include_str!("../../connectors/sap_s4hana.yaml"),
    ),
    (
        "netsuite.yaml",
        include_str!("../../connectors/netsuite.yaml"),
    ),
    (
        "business_central.yaml",
        include_str!("../../connectors/business_central.yaml"),
    ),
    ("tryton.yaml", include_str!("../../connectors/tryton.yaml")),
    ("maximo.yaml", include_str!("../../connectors/maximo.yaml")),
];

/// Format version of a definition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum DefinitionVersion {
    /// The first version.
    #[serde(rename = "sluice/connector/v1")]
    V1,
}

/// A connector definition as written.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Definition {
    /// Always `sluice/connector/v1`.
    #[serde(rename = "apiVersion")]
    pub api_version: DefinitionVersion,
    /// Identifier used by `sluice connection add --definition`.
    pub id: String,
    /// Human name of the system.
    pub name: String,
    /// What the definition covers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Connection parameters (`base_url` is always required), usable in templates as `params.NAME`.
    #[serde(default)]
    pub parameters: BTreeMap<String, ParamSpec>,
    /// Names of the credentials a connection supplies from secrets, usable as `credentials.NAME`.
    #[serde(default)]
    pub credentials: Vec<String>,
    /// How requests authenticate.
    pub auth: Auth,
    /// Fetch a CSRF token before writes (SAP OData).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub csrf: Option<Csrf>,
    /// Headers sent with every request (templates).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Default rate limit of connections made from this definition.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// One cheap authenticated request used by `sluice connection test`.
    pub test: RequestSpec,
    /// Error mapping: the first rule that matches a failed response decides the unified code.
    #[serde(default)]
    pub errors: Vec<ErrorRule>,
    /// Per unified entity (`purchase_order`, `work_order`...), the operations and the mapping.
    pub entities: BTreeMap<String, EntitySpec>,
}

/// A connection parameter.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ParamSpec {
    /// What it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Used when the connection does not set it; without a default the parameter is required.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<String>,
}

/// Where an API key goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum KeyPlacement {
    /// A request header.
    Header,
    /// A query parameter.
    Query,
}

/// How requests authenticate. Values are templates over `params` and `credentials`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Auth {
    /// No authentication.
    None,
    /// HTTP basic.
    Basic {
        /// User name.
        username: String,
        /// Password.
        password: String,
    },
    /// A static bearer token.
    Bearer {
        /// The token.
        token: String,
    },
    /// An API key in a header or query parameter.
    ApiKey {
        /// Header or parameter name.
        name: String,
        /// The key.
        value: String,
        /// `header` (default) or `query`.
        #[serde(default = "default_placement", rename = "in")]
        placement: KeyPlacement,
    },
    /// OAuth 2.0 client credentials; the token is cached and refreshed before it expires.
    Oauth2ClientCredentials {
        /// Token endpoint (absolute URL, template).
        token_url: String,
        /// Client id.
        client_id: String,
        /// Client secret.
        client_secret: String,
        /// Requested scope.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        scope: Option<String>,
        /// Refresh this long before the token expires (default `60s`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        refresh_before: Option<String>,
    },
    /// A login call whose answer becomes the session for later calls (JSON-RPC
    /// ERPs such as Tryton and Odoo, session APIs). The session is cached; a
    /// `401` logs in again once, and a refused login is `auth_required`.
    Login {
        /// The login request (templates over `params` and `credentials`).
        request: RequestSpec,
        /// JSONPath of the session in the login answer, e.g. `$.result`
        /// (a list or object is kept whole for `value`).
        token: String,
        /// The header that carries the session (default `Authorization`).
        #[serde(default = "default_login_header")]
        header: String,
        /// The header's value: a template that can read `token` (default
        /// `Bearer ${{ token }}`), e.g. `Session ${{ (credentials.username ~ ':' ~ token[0] ~ ':' ~ token[1]) | b64encode }}`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        value: Option<String>,
        /// Log in again after this long (default: only when a call answers `401`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        expires_after: Option<String>,
    },
}

fn default_login_header() -> String {
    "Authorization".into()
}

fn default_placement() -> KeyPlacement {
    KeyPlacement::Header
}

/// CSRF token pre-fetch (SAP): a `GET` with `header: Fetch` returns the token
/// (and session cookies) to send with every write.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Csrf {
    /// Path fetched for the token (template).
    pub path: String,
    /// Header name (default `x-csrf-token`).
    #[serde(default = "default_csrf_header")]
    pub header: String,
}

fn default_csrf_header() -> String {
    "x-csrf-token".into()
}

/// A token-bucket rate limit.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Sustained requests per second.
    pub requests_per_second: f64,
    /// Requests allowed at once after a quiet period (default: 1 second's worth).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
}

/// HTTP methods a request may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema, Default)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    /// GET
    #[default]
    Get,
    /// POST
    Post,
    /// PUT
    Put,
    /// PATCH
    Patch,
    /// DELETE
    Delete,
}

/// A request template. `path`, `query`, `headers` and `body` may use `${{ }}`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestSpec {
    /// Method (default GET).
    #[serde(default)]
    pub method: Method,
    /// Path below the connection's `base_url`.
    pub path: String,
    /// Query parameters.
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    /// Headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// JSON body. An object `{"$for": "${{ list }}", "$do": {...}}` repeats `$do` for each
    /// element of the list, bound to `item`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
}

/// How a list response continues.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Paginator {
    /// A single page.
    None,
    /// The body holds the URL of the next page.
    NextLink {
        /// JSONPath of the URL.
        path: String,
    },
    /// OData: follows `d.__next` (v2) or `@odata.nextLink` (v4), which carry `$skiptoken`.
    Odata,
    /// The body holds a token sent back as a query parameter, or (without
    /// `param`) wherever the list request's template puts `${{ cursor }}`,
    /// e.g. in a JSON body.
    Cursor {
        /// JSONPath of the token.
        path: String,
        /// Query parameter that carries it; without it, the request template
        /// places `cursor` (null on the first page).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        param: Option<String>,
    },
    /// Offset and limit as query parameters, or (without the `_param`s)
    /// wherever the list request's template puts `${{ offset }}` and
    /// `${{ page_size }}`, e.g. in a JSON-RPC body.
    Offset {
        /// Offset parameter (e.g. `offset`, `$skip`); without it, the request
        /// template places `offset`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        offset_param: Option<String>,
        /// Page size parameter (e.g. `limit`); without it, the request
        /// template places `page_size`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit_param: Option<String>,
        /// JSONPath of a boolean "more pages" flag; without it, a short page ends the listing.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        has_more: Option<String>,
    },
    /// Page numbers.
    PageNumber {
        /// Page parameter; without it, the request template places `page`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        param: Option<String>,
        /// Page size parameter.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        size_param: Option<String>,
        /// Number of the first page (default 1).
        #[serde(default = "one")]
        start: u64,
    },
}

fn one() -> u64 {
    1
}

/// Listing records of an entity.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ListSpec {
    /// The first page's request. Templates see `page_size`.
    pub request: RequestSpec,
    /// JSONPath selecting the records of a page (e.g. `$.d.results[*]`).
    pub records: String,
    /// How pages continue.
    pub paginator: Paginator,
    /// Records per page asked for (default 100).
    #[serde(default = "default_page_size")]
    pub page_size: u64,
    /// Pages followed at most in one listing before it is refused (default 10000).
    #[serde(default = "default_max_pages")]
    pub max_pages: u64,
    /// Extra query parameters when only changes are wanted; templates see `modified_after`
    /// (RFC 3339, UTC, e.g. `2024-05-01T00:00:00Z`) and `modified_after_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub incremental: Option<Incremental>,
    /// When a listing returns only ids: a request per record, templates see `id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<Detail>,
}

fn default_page_size() -> u64 {
    100
}

fn default_max_pages() -> u64 {
    10_000
}

/// The incremental filter.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Incremental {
    /// Query parameters added (merged with the request's).
    pub query: BTreeMap<String, String>,
}

/// Fetching each listed record in full.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Detail {
    /// JSONPath of the id in a listed item.
    pub id: String,
    /// The request per record.
    pub request: RequestSpec,
    /// Requests in flight at once (default 4).
    #[serde(default = "default_detail_concurrency")]
    pub concurrency: usize,
}

fn default_detail_concurrency() -> usize {
    4
}

/// A single-record operation (get, create, update, delete).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct OpSpec {
    /// The request. Templates see `remote_id`, `record` (the unified data written) and
    /// `idempotency_key`.
    pub request: RequestSpec,
    /// JSONPath of the record in the response (default `$`). Without a record in the
    /// response (e.g. `204`), a write re-reads the record with `get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub record: Option<String>,
    /// For systems that answer a create or update with ids only (JSON-RPC
    /// `create` returns `[id]`): JSONPath of the record's id in the answer;
    /// the record is then read with `get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
}

/// One entity of a definition.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct EntitySpec {
    /// Listing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list: Option<ListSpec>,
    /// Reading one record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub get: Option<OpSpec>,
    /// Creating a record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create: Option<OpSpec>,
    /// Updating a record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<OpSpec>,
    /// Deleting a record.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete: Option<OpSpec>,
    /// Unified field → where its value comes from in the system's record.
    pub mapping: BTreeMap<String, mapping::FieldSource>,
}

/// A rule mapping a failed response to a unified error code.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorRule {
    /// Status codes matched: `404`, `4xx`, `500-599`, or several separated by `|`.
    pub status: String,
    /// Matches only when the body contains this text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_contains: Option<String>,
    /// Matches only when this JSONPath selects something in the (JSON) body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body_path: Option<String>,
    /// The unified code.
    pub code: ErrorCode,
    /// Whether a retry may help (default: by code).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retryable: Option<bool>,
    /// JSONPath of the system's own message in the body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The JSON Schema of a definition.
pub fn json_schema() -> Value {
    serde_json::to_value(schemars::schema_for!(Definition)).expect("schemas serialize")
}

/// A checked definition, ready to make connectors from.
#[derive(Debug)]
pub struct CompiledDefinition {
    /// The definition as written.
    pub def: Definition,
    /// Where it came from (file name).
    pub file: String,
    /// Per entity.
    pub entities: BTreeMap<Entity, CompiledEntity>,
    /// Error rules, compiled.
    pub errors: Vec<CompiledErrorRule>,
}

/// One entity, compiled.
#[derive(Debug)]
pub struct CompiledEntity {
    /// The spec as written.
    pub spec: EntitySpec,
    /// Record selector of `list`.
    pub records: Option<Query>,
    /// The same selector, for direct lookups when it is a plain path.
    pub records_path: Option<mapping::FastPath>,
    /// Paginator path, compiled.
    pub next: Option<Query>,
    /// `has_more` of an offset paginator.
    pub has_more: Option<Query>,
    /// Detail id path.
    pub detail_id: Option<Query>,
    /// The field mapping.
    pub mapping: Mapping,
    /// Record paths of get/create/update/delete.
    pub record_paths: BTreeMap<&'static str, Query>,
    /// `id` paths of create/update (the record is then read with `get`).
    pub id_paths: BTreeMap<&'static str, Query>,
}

impl CompiledEntity {
    /// The op spec by name.
    pub fn op(&self, name: &str) -> Option<&OpSpec> {
        match name {
            "get" => self.spec.get.as_ref(),
            "create" => self.spec.create.as_ref(),
            "update" => self.spec.update.as_ref(),
            "delete" => self.spec.delete.as_ref(),
            _ => None,
        }
    }
}

/// An error rule, compiled.
#[derive(Debug)]
pub struct CompiledErrorRule {
    /// Inclusive status ranges.
    pub status: Vec<(u16, u16)>,
    /// Body text predicate.
    pub body_contains: Option<String>,
    /// Body JSONPath predicate.
    pub body_path: Option<Query>,
    /// Code.
    pub code: ErrorCode,
    /// Retryable override.
    pub retryable: Option<bool>,
    /// Message path.
    pub message: Option<Query>,
}

impl CompiledErrorRule {
    /// Whether the rule matches a response.
    pub fn matches(&self, status: u16, body: &str, json: Option<&Value>) -> bool {
        self.status.iter().any(|(a, b)| (*a..=*b).contains(&status))
            && self.body_contains.as_ref().is_none_or(|t| body.contains(t))
            && self
                .body_path
                .as_ref()
                .is_none_or(|q| json.is_some_and(|j| !q.select(j).is_empty()))
    }
}

/// Parses `404`, `4xx`, `500-599`, `401|403`.
pub fn parse_status_pattern(s: &str) -> Result<Vec<(u16, u16)>, String> {
    s.split('|')
        .map(|part| {
            let p = part.trim();
            let bad = || format!("`{p}` is not a status: use `404`, `4xx` or `500-599`");
            if let Some(class) = p.strip_suffix("xx") {
                let c: u16 = class.parse().map_err(|_| bad())?;
                if !(1..=5).contains(&c) {
                    return Err(bad());
                }
                return Ok((c * 100, c * 100 + 99));
            }
            if let Some((a, b)) = p.split_once('-') {
                let a: u16 = a.trim().parse().map_err(|_| bad())?;
                let b: u16 = b.trim().parse().map_err(|_| bad())?;
                if a > b || !(100..=599).contains(&a) || !(100..=599).contains(&b) {
                    return Err(bad());
                }
                return Ok((a, b));
            }
            let n: u16 = p.parse().map_err(|_| bad())?;
            if !(100..=599).contains(&n) {
                return Err(bad());
            }
            Ok((n, n))
        })
        .collect()
}

/// Reads and checks a definition file.
pub fn load_file(path: &Path) -> Result<CompiledDefinition, FlowErrors> {
    let file = path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => compile(&file, &text),
        Err(e) => Err(FlowErrors {
            file: file.clone(),
            source: String::new(),
            diagnostics: vec![Diagnostic::at(
                "io",
                Default::default(),
                format!("cannot read {file}: {e}"),
            )],
        }),
    }
}

/// Checks definition text. `file` names it in diagnostics.
pub fn compile(file: &str, text: &str) -> Result<CompiledDefinition, FlowErrors> {
    let fail = |diagnostics: Vec<Diagnostic>| FlowErrors {
        file: file.to_string(),
        source: text.to_string(),
        diagnostics,
    };
    let root = match parse_yaml(text) {
        Ok(n) => n,
        Err((message, loc)) => {
            return Err(fail(vec![Diagnostic::at(
                "yaml-syntax",
                loc.unwrap_or_default(),
                format!("invalid YAML: {message}"),
            )]));
        }
    };
    if !matches!(root.value, NodeValue::Map(_)) {
        return Err(fail(vec![
            Diagnostic::at(
                "wrong-type",
                root.loc,
                format!(
                    "a connector definition is a mapping, found {}",
                    root.type_name()
                ),
            )
            .with_hint("start with `apiVersion: sluice/connector/v1`"),
        ]));
    }
    let schema = json_schema();
    let mut diags = Vec::new();
    shape::check(&root, &schema, &schema, &mut diags);
    if !diags.is_empty() {
        diags.sort_by_key(|d| (d.line, d.column));
        return Err(fail(diags));
    }
    let def: Definition = match serde_json::from_value(root.to_json()) {
        Ok(d) => d,
        Err(e) => {
            return Err(fail(vec![Diagnostic::at(
                "invalid-definition",
                root.loc,
                format!("the definition does not match the format: {e}"),
            )]));
        }
    };
    let mut c = DefChecker {
        root: &root,
        text,
        diags: Vec::new(),
        roots: BTreeMap::new(),
    };
    let compiled = c.check(def, file);
    let mut diags = c.diags;
    if !diags.is_empty() {
        diags.sort_by_key(|d| (d.line.unwrap_or(0), d.column.unwrap_or(0)));
        diags.dedup();
        return Err(fail(diags));
    }
    Ok(compiled.expect("no diagnostics means it compiled"))
}

/// Whether any template of `r` reads variable `var`.
fn request_reads(r: &RequestSpec, var: &str) -> bool {
    fn reads(text: &str, var: &str) -> bool {
        Template::compile_str(text).is_ok_and(|t| {
            t.references()
                .iter()
                .any(|r| r == var || r.starts_with(&format!("{var}.")))
        })
    }
    fn in_value(v: &Value, var: &str) -> bool {
        match v {
            Value::String(s) => reads(s, var),
            Value::Array(a) => a.iter().any(|v| in_value(v, var)),
            Value::Object(m) => m.values().any(|v| in_value(v, var)),
            _ => false,
        }
    }
    reads(&r.path, var)
        || r.query.values().any(|v| reads(v, var))
        || r.headers.values().any(|v| reads(v, var))
        || r.body.as_ref().is_some_and(|b| in_value(b, var))
}

/// The byte offset of the first use of variable `name` inside an
/// expression of `text` (a whole word, not a field after a dot).
fn name_offset(text: &str, name: &str) -> Option<usize> {
    let word = |c: char| c.is_alphanumeric() || c == '_';
    crate::expr::embedded_expressions(text)
        .into_iter()
        .find_map(|(base, expr)| {
            expr.match_indices(name).find_map(|(i, _)| {
                let before = expr[..i].chars().next_back();
                let after = expr[i + name.len()..].chars().next();
                let whole =
                    !before.is_some_and(|c| word(c) || c == '.') && !after.is_some_and(word);
                whole.then_some(base + i)
            })
        })
}

/// What a list request (and its `incremental.query`) can read beside
/// `params` and `credentials`: the page size, the incremental bound, and the
/// position of the page for the paginator that has one (`offset`, `page` or
/// `cursor`; a next-link paginator has none, so `${{ offset }}` there would
/// be the first page every time).
fn list_vars(p: &Paginator) -> Vec<(&'static str, crate::expr::types::Type)> {
    use crate::expr::types::Type;
    let mut v = vec![
        ("page_size", Type::Integer),
        ("modified_after", Type::String),
        ("modified_after_ms", Type::Integer),
    ];
    match p {
        Paginator::Offset { .. } => v.push(("offset", Type::Integer)),
        Paginator::PageNumber { .. } => v.push(("page", Type::Integer)),
        Paginator::Cursor { .. } => v.push(("cursor", Type::Any)),
        _ => {}
    }
    v
}

/// What a `get`, `create`, `update` or `delete` request can read beside
/// `params` and `credentials`, as the connector fills it in.
fn single_vars(op: &str) -> Vec<(&'static str, crate::expr::types::Type)> {
    use crate::expr::types::Type;
    let remote_id = ("remote_id", Type::String);
    let record = ("record", Type::any_object());
    let key = ("idempotency_key", Type::String);
    match op {
        "get" => vec![remote_id],
        "create" => vec![record, key],
        "update" => vec![remote_id, record, key],
        _ => vec![remote_id, key],
    }
}

struct DefChecker<'a> {
    root: &'a Node,
    /// The definition's text, to point inside template strings.
    text: &'a str,
    diags: Vec<Diagnostic>,
    /// What request templates can read, typed: the declared `params` and
    /// `credentials` (closed, so a typo is caught), and what the engine
    /// adds per request.
    roots: BTreeMap<String, crate::expr::types::Type>,
}

impl DefChecker<'_> {
    /// Runs `f` with `vars` readable by templates besides the definition's
    /// own `params` and `credentials`.
    fn with_vars<R>(
        &mut self,
        vars: &[(&str, crate::expr::types::Type)],
        f: impl FnOnce(&mut Self) -> R,
    ) -> R {
        let saved = self.roots.clone();
        for (k, t) in vars {
            self.roots.insert((*k).to_string(), t.clone());
        }
        let r = f(self);
        self.roots = saved;
        r
    }

    fn error(&mut self, at: &[Seg], code: &'static str, message: impl Into<String>) {
        let loc = self.root.locate(at);
        self.diags.push(Diagnostic::at(code, loc, message));
    }

    fn query(&mut self, at: &[Seg], text: &str) -> Option<Query> {
        match Query::parse(text) {
            Ok(q) => Some(q),
            Err(e) => {
                self.error(at, "invalid-jsonpath", e.to_string());
                None
            }
        }
    }

    fn template(&mut self, at: &[Seg], text: &str) {
        if let Err(e) = Template::compile_str(text) {
            self.error(at, "invalid-expression", e.to_string());
            return;
        }
        self.check_names(at, text, None);
    }

    /// Reports variables, fields of `params`/`credentials`, filters and
    /// functions that do not exist in the expressions of `text` (a template
    /// naming `${{ offset }}` would otherwise send `null`), each at its own
    /// line:column inside the string, with a hint.
    fn check_names(&mut self, at: &[Seg], text: &str, item: Option<()>) {
        use crate::expr::types::Type;
        let mut roots = self.roots.clone();
        if item.is_some() {
            roots.insert("item".into(), Type::Any);
        }
        if let Ok(t) = Template::compile_str(text) {
            let globals = crate::expr::global_names();
            let mut seen = std::collections::BTreeSet::new();
            for r in t.references() {
                let name = r.split('.').next().unwrap_or(&r).to_string();
                if roots.contains_key(&name)
                    || globals.contains(&name)
                    || !seen.insert(name.clone())
                {
                    continue;
                }
                let known: Vec<&str> = roots.keys().map(String::as_str).collect();
                let hint = crate::yaml::diagnostic::did_you_mean(&name, known.iter().copied())
                    .map(|s| format!("did you mean `{s}`? "))
                    .unwrap_or_default();
                let offset = name_offset(text, &name).unwrap_or(0);
                self.error_in(
                    at,
                    text,
                    offset,
                    name.len(),
                    "unknown-variable",
                    format!("unknown variable `{name}`: it would be sent as null"),
                    Some(format!("{hint}this request can read: {}", known.join(", "))),
                );
            }
        }
        for (offset, expr) in crate::expr::embedded_expressions(text) {
            if let Ok((_, issues)) = crate::expr::types::check_expression(expr, &roots) {
                for i in issues {
                    self.error_in(
                        at,
                        text,
                        offset + i.offset,
                        i.len,
                        i.code,
                        format!("in `${{{{ {} }}}}`: {}", expr.trim(), i.message),
                        i.hint,
                    );
                }
            }
        }
    }

    /// Reports a problem at bytes `offset..offset+len` of the template
    /// string `value` at `at`.
    #[allow(clippy::too_many_arguments)]
    fn error_in(
        &mut self,
        at: &[Seg],
        value: &str,
        offset: usize,
        len: usize,
        code: &'static str,
        message: String,
        hint: Option<String>,
    ) {
        let start = self.root.locate(at);
        let loc = crate::flow::check::locate_in_scalar(self.text, start, value, offset, len);
        let mut d = Diagnostic::at(code, loc, message);
        d.hint = hint;
        d.length = Some(
            value
                .get(offset.min(value.len())..)
                .unwrap_or("")
                .chars()
                .take(len)
                .count()
                .max(1),
        );
        self.diags.push(d);
    }

    /// Checks the expressions of a body template (`$for`/`$do` add `item`).
    fn body_names(&mut self, at: &[Seg], v: &Value, item: Option<()>) {
        match v {
            Value::String(s) => self.check_names(at, s, item),
            Value::Object(m) if m.contains_key("$for") => {
                if let Some(Value::String(items)) = m.get("$for") {
                    let mut p = at.to_vec();
                    p.push("$for".into());
                    self.check_names(&p, items, item);
                }
                if let Some(body) = m.get("$do") {
                    let mut p = at.to_vec();
                    p.push("$do".into());
                    self.body_names(&p, body, Some(()));
                }
            }
            Value::Object(m) => {
                for (k, v) in m {
                    let mut p = at.to_vec();
                    p.push(k.as_str().into());
                    self.body_names(&p, v, item);
                }
            }
            Value::Array(a) => {
                for (i, v) in a.iter().enumerate() {
                    let mut p = at.to_vec();
                    p.push(i.into());
                    self.body_names(&p, v, item);
                }
            }
            _ => {}
        }
    }

    fn request(&mut self, at: &[Seg], r: &RequestSpec) {
        let with = |s: Seg| -> Vec<Seg> {
            let mut v = at.to_vec();
            v.push(s);
            v
        };
        self.template(&with("path".into()), &r.path);
        for (k, v) in &r.query {
            let mut p = with("query".into());
            p.push(k.as_str().into());
            self.template(&p, v);
        }
        for (k, v) in &r.headers {
            let mut p = with("headers".into());
            p.push(k.as_str().into());
            self.template(&p, v);
        }
        if let Some(b) = &r.body {
            match super::http::BodyTemplate::compile(b) {
                Err(e) => self.error(&with("body".into()), "invalid-expression", e),
                Ok(_) => self.body_names(&with("body".into()), b, None),
            }
        }
    }

    fn check(&mut self, def: Definition, file: &str) -> Option<CompiledDefinition> {
        if def.id.is_empty()
            || !def
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        {
            self.error(
                &path!["id"],
                "invalid-id",
                format!("invalid definition id `{}`", def.id),
            );
        }
        if !def.parameters.contains_key("base_url") {
            self.error(
                &path!["parameters"],
                "missing-parameter",
                "a definition must declare the `base_url` parameter",
            );
        }
        {
            use crate::expr::types::Type;
            let names = |ns: Vec<&String>, what: &str| {
                Type::object(ns.into_iter().map(|n| (n.clone(), Type::String)), false).named(what)
            };
            self.roots = [
                (
                    "params",
                    names(
                        def.parameters.keys().collect(),
                        "the definition's parameters",
                    ),
                ),
                (
                    "credentials",
                    names(
                        def.credentials.iter().collect(),
                        "the definition's credentials",
                    ),
                ),
            ]
            .into_iter()
            .map(|(k, t)| (k.to_string(), t))
            .collect();
        }
        for (name, v) in &def.headers {
            self.template(&path!["headers", name.as_str()], v);
        }
        self.request(&path!["test"], &def.test);
        if let Auth::Login {
            request,
            token,
            value,
            expires_after,
            ..
        } = &def.auth
        {
            self.request(&path!["auth", "request"], request);
            self.query(&path!["auth", "token"], token);
            if let Some(v) = value {
                self.with_vars(&[("token", crate::expr::types::Type::Any)], |c| {
                    c.template(&path!["auth", "value"], v)
                });
            }
            if let Some(d) = expires_after
                && let Err(e) = humantime::parse_duration(d)
            {
                self.error(
                    &path!["auth", "expires_after"],
                    "invalid-duration",
                    format!("invalid duration `{d}`: {e}"),
                );
            }
        }
        if let Some(c) = &def.csrf {
            self.template(&path!["csrf", "path"], &c.path);
        }
        let mut errors = Vec::new();
        for (i, rule) in def.errors.iter().enumerate() {
            let status = match parse_status_pattern(&rule.status) {
                Ok(s) => s,
                Err(m) => {
                    self.error(&path!["errors", i, "status"], "invalid-status", m);
                    continue;
                }
            };
            let body_path = rule
                .body_path
                .as_ref()
                .and_then(|p| self.query(&path!["errors", i, "body_path"], p));
            let message = rule
                .message
                .as_ref()
                .and_then(|p| self.query(&path!["errors", i, "message"], p));
            // A rule for successes (an error inside a 200 body, as JSON-RPC
            // and some ERPs answer) must say what in the body is the error.
            let covers_success = status.iter().any(|(a, b)| *a < 300 && *b >= 200);
            if covers_success && rule.body_path.is_none() && rule.body_contains.is_none() {
                self.error(
                    &path!["errors", i, "status"],
                    "success-rule-without-body",
                    format!(
                        "a rule for `{}` would turn every success into an error: add `body_path` (e.g. `$.error`) or `body_contains` saying what in the body is the error",
                        rule.status
                    ),
                );
                continue;
            }
            errors.push(CompiledErrorRule {
                status,
                body_contains: rule.body_contains.clone(),
                body_path,
                code: rule.code,
                retryable: rule.retryable,
                message,
            });
        }
        let mut entities = BTreeMap::new();
        for (name, spec) in &def.entities {
            let at = path!["entities", name.as_str()];
            let entity = match name.parse::<Entity>() {
                Ok(e) => e,
                Err(_) => {
                    let names: Vec<&str> = Entity::ALL.iter().map(|e| e.name()).collect();
                    self.error(
                        &at,
                        "unknown-entity",
                        format!(
                            "unknown entity `{name}`; the unified model has {}",
                            names.join(", ")
                        ),
                    );
                    continue;
                }
            };
            if let Some(c) = self.entity(entity, spec) {
                entities.insert(entity, c);
            }
        }
        if !self.diags.is_empty() {
            return None;
        }
        Some(CompiledDefinition {
            def,
            file: file.to_string(),
            entities,
            errors,
        })
    }

    fn entity(&mut self, entity: Entity, spec: &EntitySpec) -> Option<CompiledEntity> {
        use crate::expr::types::Type;
        let name = entity.name();
        let mut records = None;
        let mut next = None;
        let mut has_more = None;
        let mut detail_id = None;
        if let Some(list) = &spec.list {
            let at = |k: &str| path!["entities", name, "list", k];
            let vars = list_vars(&list.paginator);
            self.with_vars(&vars, |c| c.request(&at("request"), &list.request));
            let placed_by_template = match &list.paginator {
                Paginator::Offset {
                    offset_param: None, ..
                } => Some("offset"),
                Paginator::PageNumber { param: None, .. } => Some("page"),
                Paginator::Cursor { param: None, .. } => Some("cursor"),
                _ => None,
            };
            if let Some(var) = placed_by_template
                && !request_reads(&list.request, var)
            {
                self.error(
                    &path!["entities", name, "list", "paginator"],
                    "page-position-unused",
                    format!(
                        "the paginator has no query parameter, and the list request never reads `{var}`: every page would be the first; put `${{{{ {var} }}}}` in the request (e.g. its body) or give the paginator its parameter"
                    ),
                );
            }
            records = self.query(&at("records"), &list.records);
            match &list.paginator {
                Paginator::NextLink { path } | Paginator::Cursor { path, .. } => {
                    next = self.query(&path!["entities", name, "list", "paginator", "path"], path);
                }
                Paginator::Offset {
                    has_more: Some(p), ..
                } => {
                    has_more =
                        self.query(&path!["entities", name, "list", "paginator", "has_more"], p);
                }
                _ => {}
            }
            if list.page_size == 0 {
                self.error(
                    &at("page_size"),
                    "invalid-value",
                    "page_size must be positive",
                );
            }
            if let Some(inc) = &list.incremental {
                self.with_vars(&vars, |c| {
                    for (k, v) in &inc.query {
                        c.template(
                            &path!["entities", name, "list", "incremental", "query", k.as_str()],
                            v,
                        );
                    }
                });
            }
            if let Some(d) = &list.detail {
                detail_id = self.query(&path!["entities", name, "list", "detail", "id"], &d.id);
                // A detail request reads the listed record's `id`, nothing of the page.
                self.with_vars(&[("id", Type::String)], |c| {
                    c.request(
                        &path!["entities", name, "list", "detail", "request"],
                        &d.request,
                    )
                });
            }
        }
        let mut record_paths = BTreeMap::new();
        let mut id_paths = BTreeMap::new();
        for (op, spec) in [
            ("get", &spec.get),
            ("create", &spec.create),
            ("update", &spec.update),
            ("delete", &spec.delete),
        ] {
            if let Some(s) = spec {
                let vars = single_vars(op);
                self.with_vars(&vars, |c| {
                    c.request(&path!["entities", name, op, "request"], &s.request)
                });
                let p = s.record.as_deref().unwrap_or("$");
                if let Some(q) = self.query(&path!["entities", name, op, "record"], p) {
                    record_paths.insert(op, q);
                }
                if let Some(p) = &s.id
                    && let Some(q) = self.query(&path!["entities", name, op, "id"], p)
                {
                    id_paths.insert(op, q);
                }
            }
        }
        let mut problems = Vec::new();
        let mapping = Mapping::compile(entity, &spec.mapping, &mut problems);
        for (at, code, message) in problems {
            let mut p = path!["entities", name, "mapping"].to_vec();
            p.extend(at);
            self.error(&p, code, message);
        }
        Some(CompiledEntity {
            spec: spec.clone(),
            records_path: records
                .as_ref()
                .and_then(|q| mapping::FastPath::parse(q.as_str()).ok()),
            records,
            next,
            has_more,
            detail_id,
            mapping: mapping?,
            record_paths,
            id_paths,
        })
    }
}

/// The definitions a process knows: the built-in ones, then `*.yaml` files
/// from the directories given (a file may replace a built-in of the same id).
#[derive(Debug, Clone, Default)]
pub struct Definitions {
    by_id: BTreeMap<String, Arc<CompiledDefinition>>,
}

impl Definitions {
    /// The built-in definitions.
    pub fn built_in() -> Definitions {
        let mut d = Definitions::default();
        for (file, text) in BUILT_IN {
            let c = compile(&format!("engine/connectors/{file}"), text)
                .unwrap_or_else(|e| panic!("built-in definition {file} is invalid:\n{e}"));
            d.by_id.insert(c.def.id.clone(), Arc::new(c));
        }
        d
    }

    /// Built-ins plus the definitions in `dir` (when it exists), and the
    /// files that are not valid definitions, each with its problems: a
    /// broken file is skipped, so the commands and flows that do not use it
    /// still work. Only an unreadable directory is an error.
    pub fn load(dir: Option<&Path>) -> Result<(Definitions, Vec<FlowErrors>), FlowErrors> {
        let mut d = Definitions::built_in();
        if let Some(dir) = dir.filter(|d| d.is_dir()) {
            let mut files: Vec<_> = std::fs::read_dir(dir)
                .map_err(|e| FlowErrors {
                    file: dir.display().to_string(),
                    source: String::new(),
                    diagnostics: vec![Diagnostic::at(
                        "io",
                        Default::default(),
                        format!("cannot read {}: {e}", dir.display()),
                    )],
                })?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
                .collect();
            files.sort();
            let mut broken = Vec::new();
            for f in files {
                match load_file(&f) {
                    Ok(def) => d.insert(def),
                    Err(e) => broken.push(e),
                }
            }
            return Ok((d, broken));
        }
        Ok((d, Vec::new()))
    }

    /// Adds or replaces a definition.
    pub fn insert(&mut self, def: CompiledDefinition) {
        self.by_id.insert(def.def.id.clone(), Arc::new(def));
    }

    /// A definition by id.
    pub fn get(&self, id: &str) -> Option<&Arc<CompiledDefinition>> {
        self.by_id.get(id)
    }

    /// All definitions, by id.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<CompiledDefinition>> {
        self.by_id.values()
    }

    /// Ids of all definitions.
    pub fn ids(&self) -> Vec<String> {
        self.by_id.keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_patterns_parse_and_refuse_nonsense() {
        assert_eq!(parse_status_pattern("404").unwrap(), vec![(404, 404)]);
        assert_eq!(
            parse_status_pattern("4xx|503").unwrap(),
            vec![(400, 499), (503, 503)]
        );
        assert_eq!(parse_status_pattern("500-599").unwrap(), vec![(500, 599)]);
        assert!(parse_status_pattern("9xx").is_err());
        assert!(parse_status_pattern("abc").is_err());
        assert!(parse_status_pattern("600").is_err());
    }

    #[test]
    fn every_built_in_definition_is_valid() {
        let d = Definitions::built_in();
        assert_eq!(
            d.ids(),
            vec![
                "business_central",
                "maximo",
                "netsuite",
                "sap_s4hana",
                "tryton"
            ]
        );
    }
}
