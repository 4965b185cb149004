//! `wait`: pause for a duration (a cooling-off period, a slow-down between
//! calls, or a long step in a demo of crash-resume).
//!
//! ```yaml
//! - id: settle
//!   wait: { duration: 5s }
//! ```

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::StepError;
use crate::flow::check::Checker;

/// Config of a `wait` step.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitStep {
    /// How long, e.g. `500ms`, `5s`, `2m`.
    pub duration: String,
}

/// A compiled `wait` step.
#[derive(Debug)]
pub struct CompiledWait {
    duration: Duration,
}

/// Checks the duration.
/// Only sleeps; but a repeat would sleep again, so attempts are logged.
pub const PURE: bool = false;

pub fn compile(
    step: &WaitStep,
    _: &super::CompileCtx<'_>,
    c: &mut Checker<'_>,
) -> Option<CompiledWait> {
    c.duration(&crate::path!["wait", "duration"], &step.duration)
        .map(|duration| CompiledWait { duration })
}

impl CompiledWait {
    /// Sleeps; the output is the waited time in milliseconds.
    /// The waited time in milliseconds.
    pub fn output_type(&self) -> crate::expr::types::Type {
        crate::expr::types::Type::Integer
    }

    pub async fn execute(&self, _: &super::StepRuntime<'_>) -> Result<Value, StepError> {
        tokio::time::sleep(self.duration).await;
        Ok(Value::from(self.duration.as_millis() as u64))
    }
}
