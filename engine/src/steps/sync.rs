//! `sync`: sync one entity of a connection into the record cache, then carry on.
//!
//! ```yaml
//! - id: refresh
//!   sync: { connection: erp, entity: purchase_order, full: false }
//! ```
//! The output is the sync report (`added`, `updated`, `unchanged`, `deleted`,
//! `pages`, `cursor`...). A sync already running for that connection and
//! entity fails the step with a retryable error; a `retry:` policy waits it out.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{StepError, StepErrorKind, StepRuntime};
use crate::flow::check::Checker;
use crate::path;
use crate::sync::{Mode, SyncError, SyncOptions};
use crate::unified::Entity;

/// Config of a `sync` step.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SyncStep {
    /// Connection id.
    pub connection: String,
    /// Entity to sync.
    pub entity: String,
    /// Full re-sync (ignore the cursor, detect deletions).
    #[serde(default)]
    pub full: bool,
}

/// A compiled `sync` step.
#[derive(Debug)]
pub struct CompiledSync {
    connection: String,
    entity: Entity,
    full: bool,
}

/// Checks the connection and entity.
/// Reads a connected system and writes the record cache.
pub const PURE: bool = false;

pub fn compile(
    step: &SyncStep,
    _: &super::CompileCtx<'_>,
    c: &mut Checker<'_>,
) -> Option<CompiledSync> {
    let ok = c.connection(&path!["sync", "connection"], &step.connection);
    let entity = c.entity(&path!["sync", "entity"], &step.entity);
    if !ok {
        return None;
    }
    Some(CompiledSync {
        connection: step.connection.clone(),
        entity: entity?,
        full: step.full,
    })
}

impl CompiledSync {
    /// The sync report.
    pub fn output_type(&self) -> crate::expr::types::Type {
        use crate::expr::types::Type;
        let i = || Type::Integer;
        Type::object(
            [
                ("sync_id", Type::String),
                ("connection_id", Type::String),
                ("entity", Type::String),
                ("mode", Type::String),
                ("added", i()),
                ("updated", i()),
                ("unchanged", i()),
                ("deleted", i()),
                ("pages", i()),
                ("resumed", Type::Bool),
                ("duration_ms", i()),
                ("cursor", Type::String),
            ]
            .map(|(k, t)| (k.to_string(), t)),
            false,
        )
        .named("the sync report")
    }

    /// Runs the sync.
    pub async fn execute(&self, rt: &StepRuntime<'_>) -> Result<Value, StepError> {
        let store = rt.store.ok_or_else(|| {
            StepError::new(
                StepErrorKind::Validation,
                "`sync` writes the record cache of a durable run; there is no store here",
            )
        })?;
        rt.record_input(serde_json::json!({
            "connection": self.connection,
            "entity": self.entity,
            "mode": if self.full { "full" } else { "incremental" },
        }));
        let connector = rt.connector(&self.connection)?;
        let opts = SyncOptions {
            mode: if self.full {
                Mode::Full
            } else {
                Mode::Incremental
            },
            ..SyncOptions::default()
        };
        match crate::sync::run(
            store,
            connector.as_ref(),
            &self.connection,
            self.entity,
            &opts,
            None,
        )
        .await
        {
            Ok(r) => Ok(serde_json::to_value(r).expect("reports serialize")),
            Err(SyncError::Connector { source, .. }) => Err(source.into()),
            Err(e @ SyncError::AlreadyRunning { .. }) => Err(StepError {
                retryable: true,
                ..StepError::new(StepErrorKind::Connector, e.to_string())
            }),
            Err(SyncError::Store(e)) => Err(StepError::new(
                StepErrorKind::Connector,
                format!("record cache: {e}"),
            )),
        }
    }
}
