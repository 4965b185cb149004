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

//! Compressing each run on its own still stores, in every run, what runs
//! of a flow read again and again (the same purchase orders polled every
//! few minutes). So an archive is compressed against a *base*: the
//! uncompressed archive of an earlier run of the same flow, used as a zstd
//! raw-content dictionary. What repeats the base is stored as references
//! into it; the base is stored once (`archive_bases`), and a run records
//! which base it needs (`runs.archive_base`). A flow's base is replaced
//! when it stops paying: when a run compressed against it takes more than
//! half of what the base took on its own (the data drifted), that run's
//! archive becomes the new base. The attempt log (`step_attempts`) moves
//! into the archive too.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::Row;

use super::{Arg, AttemptRecord, StepRecord, Stmt, StoreError, now_ms};

/// Runs whose outputs are smaller than this (bytes of JSON) are not archived.
pub const ARCHIVE_MIN: usize = 1024;

/// The zstd level: level 9 stores the README's flow in about 3 KB where
/// level 3 needs 3.4 KB, at about 1 ms per 40 KB run.
const LEVEL: i32 = 9;

/// How long a flow's current base is trusted before it is read again (so a
/// base made by another process is taken up). Prune keeps a superseded
/// base far longer than this ([`BASE_GRACE_MS`]), so a base still cached
/// somewhere is never deleted under a run about to refer to it.
const CURRENT_TTL: Duration = Duration::from_secs(60);

/// How long a superseded base is kept, even when no run refers to it.
pub const BASE_GRACE_MS: i64 = 24 * 3600 * 1000;

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
    /// The run's attempt log, whose rows were deleted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<AttemptRecord>,
}

/// How a run is stored (see [`super::Store::raw_archive`]).
#[doc(hidden)]
#[derive(Debug)]
pub struct RawArchive {
    /// The archive's size (0: none).
    pub archive_bytes: usize,
    /// The base it is compressed against.
    pub base: Option<String>,
    /// The base's size compressed on its own.
    pub base_bytes: usize,
    /// Attempt log rows left in `step_attempts`.
    pub attempt_rows: i64,
}

/// A base: an earlier run's uncompressed archive.
struct Base {
    id: String,
    json: Arc<Vec<u8>>,
    /// Its size compressed on its own.
    packed_len: usize,
}

/// The bases this store has read (by id; they never change) and each
/// flow's current one.
#[derive(Default)]
pub(crate) struct Bases {
    by_id: Mutex<HashMap<String, Arc<Vec<u8>>>>,
    current: Mutex<HashMap<String, CurrentBase>>,
}

/// A flow's current base (none yet) and when it was read.
type CurrentBase = (Option<Arc<Base>>, Instant);

/// A base made by an archive, to remember once its run is committed.
pub(super) struct NewBase {
    flow_id: String,
    base: Arc<Base>,
}

fn compress(json: &[u8], dict: Option<&[u8]>) -> Result<Vec<u8>, StoreError> {
    let packed = match dict {
        Some(dict) => {
            zstd::bulk::Compressor::with_dictionary(LEVEL, dict).and_then(|mut c| c.compress(json))
        }
        None => zstd::bulk::compress(json, LEVEL),
    };
    packed.map_err(|e| StoreError::Write(format!("a run archive does not compress: {e}")))
}

fn decompress(bytes: &[u8], dict: Option<&[u8]>) -> Result<Vec<u8>, StoreError> {
    use std::io::Read;
    let fail =
        |e: std::io::Error| StoreError::Write(format!("a run archive does not decompress: {e}"));
    let mut out = Vec::new();
    match dict {
        Some(dict) => {
            zstd::stream::read::Decoder::with_dictionary(bytes, dict)
                .and_then(|mut d| d.read_to_end(&mut out))
                .map_err(fail)?;
        }
        None => {
            zstd::stream::read::Decoder::new(bytes)
                .and_then(|mut d| d.read_to_end(&mut out))
                .map_err(fail)?;
        }
    }
    Ok(out)
}

/// The mark of an archive in two frames: the run's output, then the rest.
const TWO_FRAMES: &[u8; 4] = b"SLA2";

/// An archive in two frames: `SLA2`, the first frame's length (u32 LE),
/// the output's frame, the frame of the rest.
fn pack(output: &[u8], rest: &[u8], dict: Option<&[u8]>) -> Result<Vec<u8>, StoreError> {
    let first = compress(output, dict)?;
    let second = compress(rest, dict)?;
    let mut packed = Vec::with_capacity(8 + first.len() + second.len());
    packed.extend_from_slice(TWO_FRAMES);
    packed.extend_from_slice(&(first.len() as u32).to_le_bytes());
    packed.extend_from_slice(&first);
    packed.extend_from_slice(&second);
    Ok(packed)
}

/// The output's frame and the rest's, or `None` for an archive in one frame.
fn unpack(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let rest = bytes.strip_prefix(TWO_FRAMES)?;
    let len = u32::from_le_bytes(rest.get(..4)?.try_into().ok()?) as usize;
    let frames = &rest[4..];
    (len <= frames.len()).then(|| frames.split_at(len))
}

/// Reads an archive compressed on its own or against `base`.
pub fn decode(bytes: &[u8], base: Option<&[u8]>) -> Result<Archive, StoreError> {
    match unpack(bytes) {
        Some((output, rest)) => {
            let mut archive: Archive = serde_json::from_slice(&decompress(rest, base)?)?;
            archive.output = serde_json::from_slice(&decompress(output, base)?)?;
            Ok(archive)
        }
        None => Ok(serde_json::from_slice(&decompress(bytes, base)?)?),
    }
}

/// Reads only an archive's output.
fn decode_output(bytes: &[u8], base: Option<&[u8]>) -> Result<Option<Value>, StoreError> {
    #[derive(Deserialize)]
    struct OutputOnly {
        #[serde(default)]
        output: Option<Value>,
    }
    match unpack(bytes) {
        Some((output, _)) => Ok(serde_json::from_slice(&decompress(output, base)?)?),
        None => Ok(serde_json::from_slice::<OutputOnly>(&decompress(bytes, base)?)?.output),
    }
}

impl super::Store {
    /// The statements that archive a finished run (after the one that
    /// ends it, without its output), or `None` when the run is small; and
    /// the base they make, to remember with [`Store::remember_base`] once
    /// they are committed.
    pub(super) async fn archive_stmts(
        &self,
        run_id: &str,
        flow_id: &str,
        steps: &[StepRecord],
        output: Option<&Value>,
    ) -> Result<Option<(Vec<Stmt>, Option<NewBase>)>, StoreError> {
        let size: usize = steps
            .iter()
            .flat_map(|s| [s.output.as_ref(), s.input.as_ref()])
            .flatten()
            .map(approx_len)
            .sum::<usize>()
            + output.map(approx_len).unwrap_or(0);
        if size < ARCHIVE_MIN {
            return Ok(None);
        }
        let attempts = self.attempt_rows(run_id).await?;
        // Serialized as an [`Archive`] without its output, without copying
        // the outputs; the output goes into a frame of its own, so a list
        // of runs reads only that.
        #[derive(Serialize)]
        struct Borrowed<'a> {
            records: &'a [StepRecord],
            #[serde(skip_serializing_if = "<[AttemptRecord]>::is_empty")]
            attempts: &'a [AttemptRecord],
        }
        let rest = serde_json::to_vec(&Borrowed {
            records: steps,
            attempts: &attempts,
        })?;
        let out = serde_json::to_vec(&output)?;
        if rest.len() + out.len() < ARCHIVE_MIN {
            return Ok(None);
        }
        let mut stmts = Vec::new();
        let mut made = None;
        let current = self.current_base(flow_id).await?;
        let against_current = match &current {
            Some(base) => {
                let packed = pack(&out, &rest, Some(&base.json))?;
                (packed.len() * 2 <= base.packed_len).then(|| (packed, base.id.clone()))
            }
            None => None,
        };
        let (packed, base_id) = match against_current {
            Some(found) => found,
            None => {
                // This run's archive becomes the flow's base, and the run
                // is stored as (almost) nothing but a reference to it.
                let mut json = out;
                json.extend_from_slice(&rest);
                let own = compress(&json, None)?;
                let base = Arc::new(Base {
                    id: uuid::Uuid::now_v7().to_string(),
                    packed_len: own.len(),
                    json: Arc::new(json),
                });
                let now = now_ms();
                stmts.push((
                    "UPDATE archive_bases SET superseded_at = $2 WHERE flow_id = $1 AND superseded_at IS NULL",
                    vec![Arg::Text(Some(flow_id.to_string())), Arg::Int(Some(now))],
                ));
                stmts.push((
                    "INSERT INTO archive_bases (id, flow_id, base, created_at) VALUES ($1, $2, $3, $4)",
                    vec![
                        Arg::Text(Some(base.id.clone())),
                        Arg::Text(Some(flow_id.to_string())),
                        Arg::Blob(Some(own)),
                        Arg::Int(Some(now)),
                    ],
                ));
                let (out, rest) = base.json.split_at(base.json.len() - rest.len());
                let packed = pack(out, rest, Some(&base.json))?;
                let id = base.id.clone();
                made = Some(NewBase {
                    flow_id: flow_id.to_string(),
                    base,
                });
                (packed, id)
            }
        };
        let run = || Arg::Text(Some(run_id.to_string()));
        stmts.push((
            "UPDATE runs SET archive = $1, archive_base = $4, output = NULL, archived_steps = $3 WHERE id = $2",
            vec![
                Arg::Blob(Some(packed)),
                run(),
                Arg::Int(Some(steps.len() as i64)),
                Arg::Text(Some(base_id)),
            ],
        ));
        stmts.push(("DELETE FROM step_runs WHERE run_id = $1", vec![run()]));
        stmts.push(("DELETE FROM step_attempts WHERE run_id = $1", vec![run()]));
        Ok(Some((stmts, made)))
    }

    /// Remembers a base made by a committed archive as its flow's current one.
    pub(super) fn remember_base(&self, made: NewBase) {
        let bases = self.attached::<Bases>();
        bases
            .by_id
            .lock()
            .expect("bases lock")
            .insert(made.base.id.clone(), made.base.json.clone());
        bases
            .current
            .lock()
            .expect("bases lock")
            .insert(made.flow_id, (Some(made.base), Instant::now()));
    }

    /// The flow's current base, if it has one.
    async fn current_base(&self, flow_id: &str) -> Result<Option<Arc<Base>>, StoreError> {
        let bases = self.attached::<Bases>();
        if let Some((base, at)) = bases.current.lock().expect("bases lock").get(flow_id)
            && at.elapsed() < CURRENT_TTL
        {
            return Ok(base.clone());
        }
        let row = sqlx::query(
            "SELECT id, base FROM archive_bases WHERE flow_id = $1 AND superseded_at IS NULL ORDER BY created_at DESC, id DESC LIMIT 1",
        )
        .bind(flow_id)
        .fetch_optional(&self.pool)
        .await?;
        let base = match row {
            Some(r) => {
                let id: String = r.try_get(0)?;
                let packed: Vec<u8> = r.try_get(1)?;
                let json = Arc::new(decompress(&packed, None)?);
                bases
                    .by_id
                    .lock()
                    .expect("bases lock")
                    .insert(id.clone(), json.clone());
                Some(Arc::new(Base {
                    id,
                    json,
                    packed_len: packed.len(),
                }))
            }
            None => None,
        };
        let mut current = bases.current.lock().expect("bases lock");
        if current.len() > 10_000 {
            current.clear(); // bounded by flows, but never unbounded
        }
        current.insert(flow_id.to_string(), (base.clone(), Instant::now()));
        Ok(base)
    }

    /// A base by id (uncompressed).
    async fn base(&self, id: &str) -> Result<Arc<Vec<u8>>, StoreError> {
        let bases = self.attached::<Bases>();
        if let Some(json) = bases.by_id.lock().expect("bases lock").get(id) {
            return Ok(json.clone());
        }
        let packed: Option<Vec<u8>> = sqlx::query("SELECT base FROM archive_bases WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .map(|r| r.try_get(0))
            .transpose()?;
        let packed = packed.ok_or_else(|| {
            StoreError::Write(format!(
                "a run archive refers to base `{id}`, which is not in the store"
            ))
        })?;
        let json = Arc::new(decompress(&packed, None)?);
        let mut by_id = bases.by_id.lock().expect("bases lock");
        if by_id.len() > 256 {
            by_id.clear(); // a cache: read again when needed
        }
        by_id.insert(id.to_string(), json.clone());
        Ok(json)
    }

    /// Reads a run's archive (compressed against `base`, if any).
    pub(crate) async fn read_archive(
        &self,
        bytes: &[u8],
        base: Option<&str>,
    ) -> Result<Archive, StoreError> {
        match base {
            Some(id) => {
                let json = self.base(id).await?;
                decode(bytes, Some(&json))
            }
            None => decode(bytes, None),
        }
    }

    /// Only the run's output from its archive (run lists show outputs,
    /// not steps): its own small frame.
    pub(crate) async fn read_archive_output(
        &self,
        bytes: &[u8],
        base: Option<&str>,
    ) -> Result<Option<Value>, StoreError> {
        match base {
            Some(id) => decode_output(bytes, Some(&self.base(id).await?)),
            None => decode_output(bytes, None),
        }
    }

    /// A run's archive, if it has one.
    pub(crate) async fn run_archive(&self, run_id: &str) -> Result<Option<Archive>, StoreError> {
        let row = sqlx::query("SELECT archive, archive_base FROM runs WHERE id = $1")
            .bind(run_id)
            .fetch_optional(&self.pool)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let Some(bytes) = row.try_get::<Option<Vec<u8>>, _>(0)? else {
            return Ok(None);
        };
        let base: Option<String> = row.try_get(1)?;
        Ok(Some(self.read_archive(&bytes, base.as_deref()).await?))
    }

    /// Deletes the superseded bases no run refers to, once their grace
    /// time is over. Returns how many.
    pub(crate) async fn prune_bases(&self) -> Result<u64, StoreError> {
        let counts = self
            .write_all(vec![(
                "DELETE FROM archive_bases WHERE superseded_at IS NOT NULL AND superseded_at < $1 \
                 AND id NOT IN (SELECT archive_base FROM runs WHERE archive_base IS NOT NULL)",
                vec![Arg::Int(Some(now_ms() - BASE_GRACE_MS))],
            )])
            .await?;
        Ok(counts.first().copied().unwrap_or(0))
    }
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

impl super::Store {
    /// Puts an archived run's step rows back (and forgets the archive), so
    /// a re-run can forget its failed steps and store new results. Nothing
    /// when the run has no archive.
    pub async fn unarchive(&self, run_id: &str) -> Result<(), StoreError> {
        let Some(archive) = self.run_archive(run_id).await? else {
            return Ok(());
        };
        let mut stmts: Vec<Stmt> = archive
            .records
            .iter()
            .map(|s| super::save_step_stmt(run_id, s))
            .collect();
        stmts.extend(
            archive
                .attempts
                .iter()
                .map(|a| super::attempt_stmt(run_id, a)),
        );
        stmts.push((
            "UPDATE runs SET archive = NULL, archive_base = NULL, archived_steps = NULL WHERE id = $1",
            vec![Arg::Text(Some(run_id.to_string()))],
        ));
        self.write_all(stmts).await?;
        Ok(())
    }

    /// How a run is stored, for tests.
    #[doc(hidden)]
    pub async fn raw_archive(&self, run_id: &str) -> Result<RawArchive, StoreError> {
        let row = sqlx::query(
            "SELECT runs.archive, runs.archive_base, archive_bases.base, \
             (SELECT COUNT(*) FROM step_attempts WHERE run_id = runs.id) \
             FROM runs LEFT JOIN archive_bases ON archive_bases.id = runs.archive_base WHERE runs.id = $1",
        )
        .bind(run_id)
        .fetch_one(&self.pool)
        .await?;
        let len = |i: usize| -> Result<usize, StoreError> {
            Ok(row.try_get::<Option<Vec<u8>>, _>(i)?.map_or(0, |b| b.len()))
        };
        Ok(RawArchive {
            archive_bytes: len(0)?,
            base: row.try_get(1)?,
            base_bytes: len(2)?,
            attempt_rows: row.try_get(3)?,
        })
    }

    /// The step output texts as stored (`None` where archived), for tests.
    #[doc(hidden)]
    pub async fn raw_step_outputs(&self, run_id: &str) -> Result<Vec<Option<String>>, StoreError> {
        let rows = sqlx::query("SELECT output FROM step_runs WHERE run_id = $1 ORDER BY step_id")
            .bind(run_id)
            .fetch_all(&self.pool)
            .await?;
        rows.iter()
            .map(|r| r.try_get(0).map_err(StoreError::from))
            .collect()
    }
}
