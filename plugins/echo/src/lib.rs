//! `echo`: returns its input unchanged. The smallest useful plugin: the
//! benchmark uses it to measure the host's per-call overhead.

use sluice_plugin_sdk::{Guest, StepError};

struct Echo;

impl Guest for Echo {
    fn run(input: String) -> Result<String, StepError> {
        Ok(input)
    }
}

sluice_plugin_sdk::bindings::__export_plugin_world!(Echo with_types_in sluice_plugin_sdk::bindings);
