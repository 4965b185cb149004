//! Compact storage of finished runs. A run whose step outputs and output
//! add up to [`ARCHIVE_MIN`] bytes or more keeps them, once it ends, in one
//! zstd-compressed archive (`runs.archive`) instead of one JSON text per
//! step: the outputs of one run repeat each other (a `select` of a `read`,
//! a `for_each` over it, the run's output built from them), and one
//! compressed stream stores each repeat once. Nothing is lost: reading a
//! run or its steps ([`super::Store::get_run`], [`super::Store::steps`])
//! fills the outputs back in, so `runs show`, the API, exports and a
//! re-run see them as before. Small runs (a webhook's few hundred bytes)
//! are left as they are: compressing them would cost more than it saves.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{Arg, StepRecord, Stmt, StoreError};

/// Runs whose outputs are smaller than this (bytes of JSON) are not archived.
pub const ARCHIVE_MIN: usize = 1024;

/// The zstd level: level 9 stores the README's flow in about 3 KB where
/// level 3 needs 3.4 KB, at about 1 ms per 40 KB run.
const LEVEL: i32 = 9;

/// What an archive holds.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Archive {
    /// Step outputs by step id.
    #[serde(default)]
    pub steps: BTreeMap<String, Value>,
    /// The run's output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
}

/// The statements that archive a finished run's outputs (after the one
/// that ends it, without its output), or `None` when the run is small.
pub fn encode(run_id: &str, steps: &[StepRecord], output: Option<&Value>) -> Option<Vec<Stmt>> {
    let mut archive = Archive {
        output: output.cloned(),
        ..Archive::default()
    };
    for s in steps {
        if let Some(o) = &s.output {
            archive.steps.insert(s.step_id.clone(), o.clone());
        }
    }
    let json = serde_json::to_vec(&archive).ok()?;
    if json.len() < ARCHIVE_MIN {
        return None;
    }
    let packed = zstd::bulk::compress(&json, LEVEL).ok()?;
    Some(vec![
        (
            "UPDATE runs SET archive = $1, output = NULL WHERE id = $2",
            vec![Arg::Blob(Some(packed)), Arg::Text(Some(run_id.to_string()))],
        ),
        (
            "UPDATE step_runs SET output = NULL WHERE run_id = $1 AND output IS NOT NULL",
            vec![Arg::Text(Some(run_id.to_string()))],
        ),
    ])
}

/// Reads an archive.
pub fn decode(bytes: &[u8]) -> Result<Archive, StoreError> {
    let json = zstd::stream::decode_all(bytes)
        .map_err(|e| StoreError::Write(format!("a run archive does not decompress: {e}")))?;
    Ok(serde_json::from_slice(&json)?)
}

impl super::Store {
    /// The step output texts as stored (`None` where archived), for tests.
    #[doc(hidden)]
    pub async fn raw_step_outputs(&self, run_id: &str) -> Result<Vec<Option<String>>, StoreError> {
        use sqlx::Row;
        let rows = sqlx::query("SELECT output FROM step_runs WHERE run_id = $1 ORDER BY step_id")
            .bind(run_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| r.try_get(0).map_err(StoreError::from))
            .collect()
    }
}
