//! Compact storage of finished runs. A run whose step outputs and output
//! add up to [`ARCHIVE_MIN`] bytes or more keeps its step results, once it
//! ends, in one zstd-compressed archive (`runs.archive`) instead of one row
//! per step (`step_runs`, whose rows are deleted): the outputs of one run
//! repeat each other (a `select` of a `read`, a `for_each` over it, the
//! run's output built from them), and one compressed stream stores each
//! repeat once. Deleting the rows (not only emptying their outputs) matters
//! as much: a row that held a large output keeps its b-tree page, so an
//! emptied row still costs most of a page. Nothing is lost: reading a run
//! or its steps ([`super::Store::get_run`], [`super::Store::steps`]) reads
//! the archive, so `runs show`, the API and exports see them as before, and
//! a re-run puts the rows back first ([`super::Store::unarchive`]). Small
//! runs (a webhook's few hundred bytes) are left as they are: compressing
//! them would cost more than it saves.

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
    /// Step outputs by step id (archives whose step rows were kept).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub steps: BTreeMap<String, Value>,
    /// The run's step results, whose rows were deleted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub records: Vec<StepRecord>,
    /// The run's output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
}

/// The statements that archive a finished run's outputs (after the one
/// that ends it, without its output), or `None` when the run is small.
pub fn encode(run_id: &str, steps: &[StepRecord], output: Option<&Value>) -> Option<Vec<Stmt>> {
    let size: usize = steps
        .iter()
        .filter_map(|s| s.output.as_ref())
        .map(approx_len)
        .sum::<usize>()
        + output.map(approx_len).unwrap_or(0);
    if size < ARCHIVE_MIN {
        return None;
    }
    // Serialized as an [`Archive`], without copying the outputs.
    #[derive(Serialize)]
    struct Borrowed<'a> {
        records: &'a [StepRecord],
        #[serde(skip_serializing_if = "Option::is_none")]
        output: Option<&'a Value>,
    }
    let json = serde_json::to_vec(&Borrowed {
        records: steps,
        output,
    })
    .ok()?;
    if json.len() < ARCHIVE_MIN {
        return None;
    }
    let packed = zstd::bulk::compress(&json, LEVEL).ok()?;
    Some(vec![
        (
            "UPDATE runs SET archive = $1, output = NULL, archived_steps = $3 WHERE id = $2",
            vec![
                Arg::Blob(Some(packed)),
                Arg::Text(Some(run_id.to_string())),
                Arg::Int(Some(steps.len() as i64)),
            ],
        ),
        (
            "DELETE FROM step_runs WHERE run_id = $1",
            vec![Arg::Text(Some(run_id.to_string()))],
        ),
    ])
}

/// A cheap upper estimate of a value's JSON length (to skip small runs
/// without serializing them).
fn approx_len(v: &Value) -> usize {
    match v {
        Value::Null | Value::Bool(_) => 5,
        Value::Number(_) => 12,
        Value::String(s) => s.len() + 2,
        Value::Array(a) => 2 + a.iter().map(approx_len).sum::<usize>() + a.len(),
        Value::Object(m) => {
            2 + m
                .iter()
                .map(|(k, v)| k.len() + 4 + approx_len(v))
                .sum::<usize>()
        }
    }
}

/// Reads an archive.
pub fn decode(bytes: &[u8]) -> Result<Archive, StoreError> {
    let json = zstd::stream::decode_all(bytes)
        .map_err(|e| StoreError::Write(format!("a run archive does not decompress: {e}")))?;
    Ok(serde_json::from_slice(&json)?)
}

impl super::Store {
    /// Puts an archived run's step rows back (and forgets the archive), so
    /// a re-run can forget its failed steps and store new results. Nothing
    /// when the run has no archive.
    pub async fn unarchive(&self, run_id: &str) -> Result<(), StoreError> {
        use sqlx::Row;
        let row = sqlx::query("SELECT archive FROM runs WHERE id = $1")
            .bind(run_id)
            .fetch_optional(&self.pool)
            .await?;
        let Some(bytes) = row
            .map(|r| r.try_get::<Option<Vec<u8>>, _>(0))
            .transpose()?
            .flatten()
        else {
            return Ok(());
        };
        let archive = decode(&bytes)?;
        let mut stmts: Vec<Stmt> = archive
            .records
            .iter()
            .map(|s| super::save_step_stmt(run_id, s))
            .collect();
        stmts.push((
            "UPDATE runs SET archive = NULL, archived_steps = NULL WHERE id = $1",
            vec![Arg::Text(Some(run_id.to_string()))],
        ));
        self.write_all(stmts).await?;
        Ok(())
    }

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
