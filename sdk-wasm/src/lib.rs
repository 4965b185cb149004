//! Write Sluice plugins as plain Rust functions.
//!
//! A plugin is a function from a serde input and a serde config to a serde
//! output or a [`PluginError`]; [`plugin!`] exports it as the component
//! Sluice runs (world `sluice:plugin/plugin@0.1.0`, see `plugins/wit`).
//!
//! ```ignore
//! use serde::{Deserialize, Serialize};
//! use sluice_plugin_sdk::{PluginError, log, plugin};
//!
//! #[derive(Deserialize)]
//! struct In { total: f64 }
//! #[derive(Deserialize, Default)]
//! #[serde(default)]
//! struct Cfg { limit: f64 }
//! #[derive(Serialize)]
//! struct Out { over: bool }
//!
//! fn run(input: In, config: Cfg) -> Result<Out, PluginError> {
//!     log::info(&format!("checking {}", input.total));
//!     Ok(Out { over: input.total > config.limit })
//! }
//!
//! plugin!(run);
//! ```
//!
//! Build with `cargo build --target wasm32-wasip2 --release`; the crate must be
//! a `cdylib`. Upload with `sluice plugin push target/wasm32-wasip2/release/NAME.wasm
//! --name NAME --version 1.0.0`.

use serde::Serialize;
use serde::de::DeserializeOwned;

/// The wit-bindgen bindings of the `sluice:plugin` world.
#[doc(hidden)]
pub mod bindings {
    wit_bindgen::generate!({
        world: "plugin",
        path: "../plugins/wit",
        pub_export_macro: true,
        export_macro_name: "__export_plugin_world",
        default_bindings_module: "sluice_plugin_sdk::bindings",
    });
}

pub use bindings::{Guest, StepError};
pub use serde;
pub use serde_json;

#[doc(hidden)]
pub use bindings::sluice::plugin::host as __host;

/// An error a plugin returns on purpose.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginError {
    /// A code machines can match, e.g. `invalid_input`.
    pub code: String,
    /// A message for people.
    pub message: String,
}

impl PluginError {
    /// A new error.
    pub fn new(code: impl Into<String>, message: impl Into<String>) -> Self {
        PluginError {
            code: code.into(),
            message: message.into(),
        }
    }
}

/// Logging through the host (lines are capped by the host).
pub mod log {
    use super::__host::{Level, log};

    /// Logs at debug level.
    pub fn debug(message: &str) {
        log(Level::Debug, message);
    }
    /// Logs at info level.
    pub fn info(message: &str) {
        log(Level::Info, message);
    }
    /// Logs at warn level.
    pub fn warn(message: &str) {
        log(Level::Warn, message);
    }
    /// Logs at error level.
    pub fn error(message: &str) {
        log(Level::Error, message);
    }
}

/// Runs a typed plugin function on the JSON the host passed. Used by [`plugin!`].
#[doc(hidden)]
pub fn __run<I, C, O>(
    input: &str,
    f: fn(I, C) -> Result<O, PluginError>,
) -> Result<String, StepError>
where
    I: DeserializeOwned,
    C: DeserializeOwned,
    O: Serialize,
{
    let input: I = serde_json::from_str(input).map_err(|e| StepError {
        code: "invalid_input".into(),
        message: format!("input does not match what the plugin expects: {e}"),
    })?;
    let config_text = __host::config_get("").unwrap_or_else(|| "{}".to_string());
    let config: C = serde_json::from_str(&config_text).map_err(|e| StepError {
        code: "invalid_config".into(),
        message: format!("config does not match what the plugin expects: {e}"),
    })?;
    let out = f(input, config).map_err(|e| StepError {
        code: e.code,
        message: e.message,
    })?;
    serde_json::to_string(&out).map_err(|e| StepError {
        code: "invalid_output".into(),
        message: e.to_string(),
    })
}

/// Exports `fn(Input, Config) -> Result<Output, PluginError>` as the plugin.
#[macro_export]
macro_rules! plugin {
    ($f:path) => {
        struct __SluicePlugin;
        impl $crate::Guest for __SluicePlugin {
            fn run(input: ::std::string::String) -> ::std::result::Result<::std::string::String, $crate::StepError> {
                $crate::__run(&input, $f)
            }
        }
        $crate::bindings::__export_plugin_world!(__SluicePlugin with_types_in $crate::bindings);
    };
}
