//! `read`: list records of a unified entity from a connection.
//!
//! ```yaml
//! - id: approved
//!   read:
//!     connection: sandbox
//!     entity: purchase_order
//!     filter: { status: approved }
//!     modified_after: "${{ inputs.since }}"
//! ```
//! Pages are followed until the end or until `limit` records. The output is
//! `{records, count, next_cursor}`; `next_cursor` is set when `limit` cut the
//! listing short, so a later step can continue from it.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{StepError, StepErrorKind, StepRuntime};
use crate::connectors::ListQuery;
use crate::expr::Template;
use crate::flow::check::Checker;
use crate::path;
use crate::unified::Entity;

/// Largest number of records one read returns without a `limit`.
pub const MAX_RECORDS: usize = 100_000;

/// Where a `read` gets its records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ReadFrom {
    /// From the connected system (default).
    #[default]
    Live,
    /// From the local record cache that syncs keep (works while the system is offline).
    Cache,
}

/// Config of a `read` step.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadStep {
    /// Connection name (`sandbox` always exists).
    pub connection: String,
    /// `purchase_order`, `work_order`, `vendor`, `inventory_item` or `asset`.
    pub entity: String,
    /// Field equality filters; a list matches any of its values; `modified_after` is also accepted here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<BTreeMap<String, Value>>,
    /// Only records changed after this instant (RFC 3339 or a date).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modified_after: Option<String>,
    /// At most this many records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<Value>,
    /// Continue from a previous read's `next_cursor`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// Include each record's source payload as `raw` (live reads).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub raw: bool,
    /// `live` (default) or `cache`: the records the last syncs stored, same filters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<ReadFrom>,
}

/// A compiled `read` step.
#[derive(Debug)]
pub struct CompiledRead {
    connection: String,
    entity: Entity,
    filters: Vec<(String, Template)>,
    modified_after: Option<Template>,
    limit: Option<Template>,
    cursor: Option<Template>,
    raw: bool,
    from: ReadFrom,
}

/// Checks connection, entity, filter fields and expressions.
impl CompiledRead {
    /// `{records: [entity], count, next_cursor}`.
    pub fn output_type(&self) -> crate::expr::types::Type {
        use crate::expr::types::Type;
        Type::object(
            [
                ("records".to_string(), Type::list(self.entity.value_type())),
                ("count".to_string(), Type::Integer),
                ("next_cursor".to_string(), Type::Any),
            ],
            false,
        )
    }
}

/// Compiles a `read` step.
/// Reads a connected system: logged like every call outside the run.
pub const PURE: bool = false;

pub fn compile(
    step: &ReadStep,
    _: &super::CompileCtx<'_>,
    c: &mut Checker<'_>,
) -> Option<CompiledRead> {
    let connection_ok = c.connection(&path!["read", "connection"], &step.connection);
    let entity = c.entity(&path!["read", "entity"], &step.entity);
    let mut ok = connection_ok && entity.is_some();
    if let (true, Some(e), false) = (connection_ok, entity, step.from == Some(ReadFrom::Cache)) {
        ok &= c.operation(&path!["read", "entity"], &step.connection, e, "list");
    }
    let mut filters = Vec::new();
    let mut modified_after = step
        .modified_after
        .as_ref()
        .and_then(|m| c.template(&path!["read", "modified_after"], &Value::String(m.clone())));
    for (k, v) in step.filter.iter().flatten() {
        let at = path!["read", "filter", k.as_str()];
        if k == "modified_after" {
            modified_after = c.template(&at, v);
            continue;
        }
        if let Some(e) = entity {
            c.entity_field(&at, e, k);
        }
        match c.template(&at, v) {
            Some(t) => filters.push((k.clone(), t)),
            None => ok = false,
        }
    }
    let limit = step
        .limit
        .as_ref()
        .and_then(|l| c.template(&path!["read", "limit"], l));
    let cursor = step
        .cursor
        .as_ref()
        .and_then(|cur| c.template(&path!["read", "cursor"], &Value::String(cur.clone())));
    if !ok {
        return None;
    }
    Some(CompiledRead {
        connection: step.connection.clone(),
        entity: entity?,
        filters,
        modified_after,
        limit,
        cursor,
        raw: step.raw,
        from: step.from.unwrap_or_default(),
    })
}

/// Parses an instant given as RFC 3339 or as a plain date (midnight UTC).
pub fn parse_instant(v: &Value) -> Result<Option<DateTime<Utc>>, String> {
    match v {
        Value::Null => Ok(None),
        Value::String(s) if s.is_empty() => Ok(None),
        Value::String(s) => DateTime::parse_from_rfc3339(s)
            .map(|d| Some(d.with_timezone(&Utc)))
            .or_else(|_| {
                NaiveDate::parse_from_str(s, "%Y-%m-%d")
                    .map(|d| Some(d.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc()))
            })
            .map_err(|_| format!("`{s}` is not an RFC 3339 timestamp or a YYYY-MM-DD date")),
        other => Err(format!("expected a timestamp string, got {other}")),
    }
}

impl CompiledRead {
    /// Lists records, following pages.
    pub async fn execute(&self, rt: &StepRuntime<'_>) -> Result<Value, StepError> {
        let connector = rt.connector(&self.connection)?;
        let mut filters = BTreeMap::new();
        for (k, t) in &self.filters {
            filters.insert(k.clone(), t.eval(rt.ctx)?);
        }
        let modified_after = match &self.modified_after {
            Some(t) => parse_instant(&t.eval(rt.ctx)?).map_err(|m| {
                StepError::new(StepErrorKind::Validation, format!("modified_after: {m}"))
            })?,
            None => None,
        };
        let limit = match &self.limit {
            Some(t) => match t.eval(rt.ctx)? {
                Value::Null => None,
                v => Some(v.as_u64().filter(|n| *n > 0).ok_or_else(|| {
                    StepError::new(
                        StepErrorKind::Validation,
                        format!("limit must be a positive integer, got {v}"),
                    )
                })? as usize),
            },
            None => None,
        };
        let mut cursor = match &self.cursor {
            Some(t) => t.eval(rt.ctx)?.as_str().map(str::to_string),
            None => None,
        };
        rt.record_input(serde_json::json!({
            "connection": self.connection,
            "entity": self.entity,
            "filter": filters,
            "modified_after": modified_after.map(|t| t.to_rfc3339()),
            "limit": limit,
            "cursor": cursor,
        }));
        let cap = limit.unwrap_or(MAX_RECORDS);
        if self.from == ReadFrom::Cache {
            return self
                .read_cache(rt, &filters, modified_after, limit, cursor)
                .await;
        }
        let mut records: Vec<Value> = Vec::new();
        loop {
            let query = ListQuery {
                filters: filters.clone(),
                modified_after,
                limit: Some((cap - records.len()).min(crate::connectors::sandbox::MAX_LIMIT)),
                cursor: cursor.take(),
                raw: self.raw,
            };
            let page = connector.list(self.entity, &query).await?;
            records.extend(page.records);
            cursor = page.next_cursor;
            if cursor.is_none() || records.len() >= cap {
                break;
            }
        }
        if limit.is_none() && cursor.is_some() {
            return Err(StepError::new(
                StepErrorKind::Validation,
                format!(
                    "read of {} matched more than {MAX_RECORDS} records; add a filter or a limit",
                    self.entity
                ),
            ));
        }
        Ok(json!({"count": records.len(), "records": records, "next_cursor": cursor}))
    }
}

impl CompiledRead {
    /// Reads synced records from the cache: not deleted, filtered like a live
    /// read, oldest change first; `next_cursor` is an offset.
    async fn read_cache(
        &self,
        rt: &StepRuntime<'_>,
        filters: &BTreeMap<String, Value>,
        modified_after: Option<DateTime<Utc>>,
        limit: Option<usize>,
        cursor: Option<String>,
    ) -> Result<Value, StepError> {
        let store = rt.store.ok_or_else(|| {
            StepError::new(
                StepErrorKind::Validation,
                "`from: cache` reads the record cache of a durable run; there is no store here",
            )
        })?;
        let skip: usize = match &cursor {
            Some(c) => c.parse().map_err(|_| {
                StepError::new(
                    StepErrorKind::Validation,
                    format!("cursor `{c}` was not made by a cache read"),
                )
            })?,
            None => 0,
        };
        let rows = store
            .cached_records(&self.connection, self.entity.name())
            .await
            .map_err(|e| StepError::new(StepErrorKind::Connector, format!("record cache: {e}")))?;
        let after = modified_after.map(|m| m.timestamp_millis());
        let cap = limit.unwrap_or(MAX_RECORDS);
        let mut matched = 0usize;
        let mut records = Vec::new();
        let mut more = false;
        for (data, deleted) in rows {
            if deleted {
                continue;
            }
            let Ok(rec) = serde_json::from_str::<Value>(&data) else {
                continue;
            };
            if let Some(a) = after {
                let t = rec["remote_updated_at"]
                    .as_str()
                    .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                    .map(|d| d.timestamp_millis())
                    .unwrap_or(0);
                if t <= a {
                    continue;
                }
            }
            if !crate::connectors::record_matches(&rec, filters) {
                continue;
            }
            matched += 1;
            if matched <= skip {
                continue;
            }
            if records.len() == cap {
                more = true;
                break;
            }
            records.push(rec);
        }
        if limit.is_none() && more {
            return Err(StepError::new(
                StepErrorKind::Validation,
                format!(
                    "read of {} from the cache matched more than {MAX_RECORDS} records; add a filter or a limit",
                    self.entity
                ),
            ));
        }
        let next = more.then(|| (skip + records.len()).to_string());
        Ok(json!({"count": records.len(), "records": records, "next_cursor": next}))
    }
}
