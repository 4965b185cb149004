//! `score-lines`: scores `lines` synthetic order lines (compute-bound). The
//! benchmark runs the same `score` natively to compare.

mod score;

use serde::{Deserialize, Serialize};
use sluice_plugin_sdk::{PluginError, plugin};

#[derive(Deserialize)]
struct Input {
    lines: u64,
    seed: u64,
    /// `true`: [`score::score_int_choice`].
    #[serde(default)]
    int_choice: bool,
}

#[derive(Deserialize, Default)]
struct Config {}

#[derive(Serialize)]
struct Output {
    score: f64,
}

fn run(input: Input, _config: Config) -> Result<Output, PluginError> {
    Ok(Output {
        score: if input.int_choice {
            score::score_int_choice(input.lines, input.seed)
        } else {
            score::score(input.lines, input.seed)
        },
    })
}

plugin!(run);
