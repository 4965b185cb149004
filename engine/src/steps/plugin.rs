//! `plugin`: run custom logic from a sandboxed WASM plugin.
//!
//! ```yaml
//! - id: score
//!   for_each: "${{ steps.big.output }}"
//!   plugin: { name: po-risk, version: "^1.0", config: { high_value: 20000 } }
//!   with: "${{ item }}"
//! ```
//! `with` is the plugin's input (JSON); `config` is what the plugin reads
//! with `config-get`. The output is the plugin's JSON output. Limits:
//! `memory_mb` (default 128), `fuel` (instructions, default unlimited), and
//! the step's `timeout` (default 10 s) as the wall-clock limit.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{StepError, StepErrorKind, StepRuntime};
use crate::expr::Template;
use crate::expr::types::{Type, conforms};
use crate::flow::check::Checker;
use crate::path;
use crate::plugins::{CallError, Limits};

/// Config of a `plugin` step.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PluginStep {
    /// Plugin name.
    pub name: String,
    /// Version requirement, e.g. `^1.0` (default `*`: the newest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Config the plugin reads (templates allowed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Value>,
    /// Memory cap in MiB (default 128).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub memory_mb: Option<u32>,
    /// Instruction budget per call (default unlimited).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fuel: Option<u64>,
    /// JSON Schema of the plugin's output. Validation then checks what
    /// downstream steps read of it, and an output that does not match fails
    /// the step; without it the output is untyped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_schema: Option<Value>,
}

/// A compiled `plugin` step.
#[derive(Debug)]
pub struct CompiledPlugin {
    /// The declared output type (`Any` without `output_schema`).
    pub output_type: Type,
    /// Secrets the config gives the plugin: their values are redacted from
    /// its output, the one way a secret could come back into the run.
    secret_names: Vec<String>,
    name: String,
    version: String,
    input: Template,
    config: Template,
    limits: Limits,
}

/// Checks the requirement, the plugin's existence when known, and compiles `with`/`config`.
/// Plugins run sandboxed with no access outside the run: pure.
pub const PURE: bool = true;

pub fn compile(
    step: &PluginStep,
    ctx: &super::CompileCtx<'_>,
    c: &mut Checker<'_>,
) -> Option<CompiledPlugin> {
    let (with, timeout) = (ctx.step.with.as_ref(), ctx.timeout);
    let version = step.version.clone().unwrap_or_else(|| "*".to_string());
    let mut ok = true;
    if let Err(e) = semver::VersionReq::parse(&version) {
        c.error(
            &path!["plugin", "version"],
            "invalid-version",
            format!("invalid version requirement `{version}`: {e}"),
        )
        .hint = Some("use semver requirements such as `^1.2`, `~1.2.3`, `=1.0.0` or `*`".into());
        ok = false;
    }
    ok &= c.plugin(&path!["plugin", "name"], &step.name);
    if let (true, Ok(req)) = (ok, semver::VersionReq::parse(&version)) {
        let at = if step.version.is_some() {
            path!["plugin", "version"].to_vec()
        } else {
            path!["plugin", "name"].to_vec()
        };
        ok &= c.plugin_version(&at, &step.name, &req);
    }
    let input = c.template(&path!["with"], with.unwrap_or(&Value::Null));
    // The config is where a plugin receives credentials (API keys).
    c.allow_secrets = true;
    let config = c.template(
        &path!["plugin", "config"],
        step.config
            .as_ref()
            .unwrap_or(&Value::Object(Default::default())),
    );
    c.allow_secrets = false;
    let output_type = match &step.output_schema {
        None => Type::Any,
        Some(schema @ Value::Object(_)) => Type::from_schema(schema, schema),
        Some(_) => {
            c.error(
                &path!["plugin", "output_schema"],
                "wrong-type",
                "`output_schema` is a JSON Schema (a mapping)",
            )
            .hint = Some(
                "e.g. `{ type: object, properties: { risk: { type: number } }, required: [risk] }`"
                    .into(),
            );
            ok = false;
            Type::Any
        }
    };
    let defaults = Limits::default();
    let limits = Limits {
        timeout: timeout.unwrap_or(defaults.timeout),
        memory_bytes: step
            .memory_mb
            .map(|m| (m as usize) << 20)
            .unwrap_or(defaults.memory_bytes),
        fuel: step.fuel,
        ..defaults
    };
    if !ok {
        return None;
    }
    let secret_names = config
        .as_ref()
        .map(|t| {
            t.references()
                .iter()
                .filter_map(|r| r.strip_prefix("secrets."))
                .map(|n| n.split('.').next().unwrap_or(n).to_string())
                .collect()
        })
        .unwrap_or_default();
    Some(CompiledPlugin {
        output_type,
        secret_names,
        name: step.name.clone(),
        version,
        input: input?,
        config: config?,
        limits,
    })
}

impl CompiledPlugin {
    /// The output with the values of the secrets its config holds redacted.
    fn redacted(&self, output: Value, rt: &StepRuntime<'_>) -> Value {
        if self.secret_names.is_empty() {
            return output;
        }
        let Ok(all) = rt.ctx.get_attr("secrets") else {
            return output;
        };
        let pairs = self.secret_names.iter().filter_map(|n| {
            let v = all.get_attr(n).ok()?;
            Some((n.clone(), v.as_str()?.to_string()))
        });
        crate::expr::secrets::Secrets::from_pairs(pairs).redact_json(&output)
    }

    /// The output, if it matches the declared `output_schema`.
    fn checked(&self, output: Value) -> Result<Value, StepError> {
        conforms(&output, &self.output_type, "output").map_err(|why| {
            StepError::new(
                StepErrorKind::Plugin,
                format!(
                    "plugin `{}` returned an output that does not match its `output_schema`: {why}",
                    self.name
                ),
            )
        })?;
        Ok(output)
    }

    /// Calls the plugin.
    /// The type its `output_schema` declares (else any).
    pub fn output_type(&self) -> Type {
        self.output_type.clone()
    }

    pub async fn execute(&self, rt: &StepRuntime<'_>) -> Result<Value, StepError> {
        if let Some(pinned) = rt.plugin_outputs {
            // The input is still evaluated: its expressions must hold.
            rt.record_input(self.input.eval(rt.ctx)?);
            return match pinned.get(&self.name) {
                Some(Ok(v)) => self.checked(self.redacted(v.clone(), rt)),
                Some(Err(e)) => Err(StepError::new(StepErrorKind::Plugin, e.clone())),
                None => Err(StepError::new(
                    StepErrorKind::Plugin,
                    format!(
                        "the test pins no output for plugin `{}`; add `plugins.{}`",
                        self.name, self.name
                    ),
                )),
            };
        }
        let registry = rt.plugins.ok_or_else(|| {
            StepError::new(
                StepErrorKind::Plugin,
                "plugins are not available in this engine",
            )
        })?;
        let input = self.input.eval(rt.ctx)?;
        // The config is not recorded: it is where a plugin's credentials go.
        rt.record_input(input.clone());
        let config = self.config.eval(rt.ctx)?;
        let outcome = registry
            .call(&self.name, &self.version, &input, &config, &self.limits)
            .await
            .map_err(|e| StepError::new(StepErrorKind::Plugin, e.to_string()))?;
        match outcome {
            Ok(out) => {
                for (level, line) in &out.logs {
                    tracing::info!(plugin = %self.name, level = %level, "{line}");
                }
                self.checked(self.redacted(out.output, rt))
            }
            Err(e) => {
                let retryable = matches!(e, CallError::Timeout { .. });
                Err(StepError {
                    retryable,
                    ..StepError::new(StepErrorKind::Plugin, e.to_string())
                })
            }
        }
    }
}
