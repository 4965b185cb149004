//! `set`: build a value from templates. The value is the step's output.
//!
//! ```yaml
//! - id: alert
//!   set: { po: "${{ item.number }}", total: "${{ item.total }}" }
//! ```

use serde_json::Value;

use super::{StepError, StepRuntime};
use crate::expr::Template;
use crate::flow::check::Checker;

/// A compiled `set` step.
#[derive(Debug)]
pub struct CompiledSet {
    value: Template,
    /// The static type of the value.
    pub output_type: crate::expr::types::Type,
}

/// Compiles the value of `set:`.
/// Builds a value from the run's own values.
pub const PURE: bool = true;

pub fn compile(
    value: &Value,
    _: &super::CompileCtx<'_>,
    c: &mut Checker<'_>,
) -> Option<CompiledSet> {
    let (value, output_type) = c.template_typed(&crate::path!["set"], value);
    value.map(|value| CompiledSet { value, output_type })
}

impl CompiledSet {
    /// Renders the value.
    /// The type of the built value.
    pub fn output_type(&self) -> crate::expr::types::Type {
        self.output_type.clone()
    }

    pub async fn execute(&self, rt: &StepRuntime<'_>) -> Result<Value, StepError> {
        Ok(self.value.eval(rt.ctx)?)
    }
}
