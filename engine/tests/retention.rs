//! Retention: `sluice runs prune` and flows' `retention:` delete finished runs
//! with their step results, keep what they are told to keep, and give the
//! SQLite file's space back.

mod common;

use std::path::Path;
use std::process::{Command, Output};

use serde_json::{Value, json};
use sluice::flow;
use sluice::store::{Prune, RunFilter};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

fn sluice(args: &[&str], db: &str) -> Output {
    Command::new(BIN)
        .args(args)
        .env("SLUICE_DB", db)
        .env_remove("RUST_LOG")
        .env_remove("SLUICE_LOG")
        .output()
        .expect("sluice runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A flow that reads every sandbox purchase order (a sizeable stored output)
/// and fails when `fail` is true.
fn write_flow(dir: &Path, retention: &str) -> String {
    let path = dir.join("keep.yaml");
    std::fs::write(
        &path,
        format!(
            r#"apiVersion: sluice/v1
id: keep-some
{retention}
inputs:
  fail: {{ type: boolean, default: false }}
steps:
  - id: read
    read: {{ connection: sandbox, entity: purchase_order }}
  - id: check
    needs: [read]
    if: "${{{{ inputs.fail }}}}"
    set: "${{{{ steps.read.output.records[999].number }}}}"
"#
        ),
    )
    .unwrap();
    path.to_str().unwrap().to_string()
}

fn runs(db: &str) -> Vec<Value> {
    let o = sluice(&["runs", "list", "--json", "--limit", "1000"], db);
    serde_json::from_slice(&o.stdout).unwrap()
}

#[test]
fn prune_keeps_the_newest_runs_and_failed_ones_longer() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("r.db").display());
    let flow = write_flow(dir.path(), "");
    for fail in ["false", "true", "false", "false"] {
        sluice(
            &["run", &flow, "--json", "-i", &format!("fail={fail}")],
            &db,
        );
    }
    assert_eq!(runs(&db).len(), 4);

    // Nothing to go by: a clear error, nothing deleted.
    let o = sluice(&["runs", "prune"], &db);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&o.stderr)
            .contains("give --older-than, --failed-older-than or --keep"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(runs(&db).len(), 4);

    // Older than 0s, but failed runs kept an hour: only the failed one stays.
    let o = sluice(
        &[
            "runs",
            "prune",
            "--older-than",
            "0s",
            "--failed-older-than",
            "1h",
            "--keep",
            "3",
            "--json",
        ],
        &db,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["runs"], 3, "{report}");
    assert_eq!(
        report["steps"], 6,
        "the read and the skipped check of 3 runs: {report}"
    );
    let left = runs(&db);
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["status"], "failed");
    // Its steps are still there for `runs show`.
    let id = left[0]["id"].as_str().unwrap();
    let o = sluice(&["runs", "show", id, "--json"], &db);
    assert!(stdout(&o).contains("\"read\""), "{}", stdout(&o));
}

#[test]
fn a_flows_retention_is_applied_by_prune_and_gives_space_back() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("r.db").display());
    // Each run stores 40 KB that nothing else repeats (runs that read the
    // same records again share one compressed base and take little room).
    let flow = dir.path().join("noise.yaml");
    std::fs::write(
        &flow,
        "apiVersion: sluice/v1\nid: noise\nretention: { max_runs: 2 }\ninputs:\n  noise: { type: string }\nsteps:\n  - id: keep\n    set: \"${{ inputs.noise }}\"\n",
    )
    .unwrap();
    let flow = flow.to_str().unwrap();
    for _ in 0..12 {
        let mut noise = String::new();
        while noise.len() < 40_000 {
            noise.push_str(&uuid::Uuid::now_v7().simple().to_string());
        }
        let input = format!("noise={noise}");
        let o = sluice(&["run", flow, "--json", "--input", &input], &db);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
    let file = dir.path().join("r.db");
    let o = sluice(&["runs", "prune", "--json"], &db);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(report["runs"], 10, "{report}");
    assert!(
        report["bytes_freed"].as_u64().unwrap() > 100_000,
        "ten runs of 40 KB each (about 20 KB compressed) free their pages: {report}"
    );
    assert_eq!(runs(&db).len(), 2);
    // The file itself shrank by what was freed (incremental vacuum).
    assert!(std::fs::metadata(&file).unwrap().len() > 0);

    let o = sluice(&["runs", "prune", "--keep", "0", "--vacuum"], &db);
    assert!(stdout(&o).starts_with("deleted 2 run(s)"), "{}", stdout(&o));
    assert_eq!(runs(&db).len(), 0);
}

#[test]
fn retention_is_validated() {
    let catalog = flow::Catalog::default();
    let errors = |retention: &str| {
        let yaml = format!(
            "apiVersion: sluice/v1\nid: r\nretention: {retention}\nsteps:\n  - id: a\n    set: 1\n"
        );
        match flow::compile("r.yaml", &yaml, &catalog) {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        }
    };
    let e = errors("{ max_age: 30 days please }");
    assert!(
        e.contains("r.yaml:3:") && e.contains("invalid duration `30 days please`"),
        "{e}"
    );
    let e = errors("{}");
    assert!(e.contains("`retention` names no limit"), "{e}");
    assert_eq!(
        errors("{ max_age: 30d, failed_max_age: 90d, max_runs: 1000 }"),
        ""
    );
}

#[tokio::test]
async fn only_finished_runs_are_pruned_and_other_flows_are_spared() {
    let (store, _dir) = common::sqlite_store().await;
    let engine = common::engine(store.clone(), vec![], vec![]);
    let flow_a = "apiVersion: sluice/v1\nid: a\nsteps:\n  - id: s\n    set: 1\n";
    let flow_b = "apiVersion: sluice/v1\nid: b\nsteps:\n  - id: s\n    set: 2\n";
    for _ in 0..3 {
        common::run(&engine, flow_a, json!({})).await;
        common::run(&engine, flow_b, json!({})).await;
    }
    // A run still queued (never finished) is never deleted.
    let queued = sluice::store::NewRun {
        id: "queued-run",
        flow_id: "a",
        flow_revision: 1,
        inputs: &json!({}),
        trigger: &json!({}),
        lease: None,
        parent: None,
    };
    store.create_run(queued).await.unwrap();
    let r = store
        .prune_runs(
            &Prune {
                keep_last: Some(0),
                except_flows: vec!["b".into()],
                ..Prune::default()
            },
            false,
        )
        .await
        .unwrap();
    assert_eq!(r.runs, 3, "{r:?}");
    let left = store
        .list_runs(&RunFilter {
            limit: 100,
            ..RunFilter::default()
        })
        .await
        .unwrap();
    let mut ids: Vec<(&str, &str)> = left
        .iter()
        .map(|r| (r.flow_id.as_str(), r.status.as_str()))
        .collect();
    ids.sort();
    assert_eq!(
        ids,
        vec![
            ("a", "queued"),
            ("b", "succeeded"),
            ("b", "succeeded"),
            ("b", "succeeded")
        ]
    );
}

#[test]
fn the_server_applies_its_default_and_each_flows_retention() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("r.db").display());
    // Runs of a flow with its own policy (keep 2) and of one without (the default: keep 1).
    let own = write_flow(dir.path(), "retention: { max_runs: 2 }");
    let other = dir.path().join("other.yaml");
    std::fs::write(
        &other,
        "apiVersion: sluice/v1\nid: other\nsteps:\n  - id: s\n    set: 1\n",
    )
    .unwrap();
    for _ in 0..4 {
        sluice(&["run", &own, "--json"], &db);
        sluice(&["run", other.to_str().unwrap(), "--json"], &db);
    }
    let flows = dir.path().join("flows");
    std::fs::create_dir(&flows).unwrap();
    std::fs::copy(&own, flows.join("keep.yaml")).unwrap();
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--flows"])
        .arg(&flows)
        .env("SLUICE_DB", &db)
        .env("SLUICE_RETENTION_MAX_RUNS", "1")
        .env("SLUICE_RETENTION_EVERY", "100ms")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let counts = loop {
        let mut by_flow = std::collections::BTreeMap::new();
        for r in runs(&db) {
            *by_flow
                .entry(r["flow_id"].as_str().unwrap().to_string())
                .or_insert(0) += 1;
        }
        if by_flow.values().sum::<i32>() == 3 || std::time::Instant::now() > deadline {
            break by_flow;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(
        counts,
        [("keep-some".to_string(), 2), ("other".to_string(), 1)].into(),
        "the flow keeps its own 2, the flow without a policy the default 1"
    );

    // A bad default stops the start with the variable named.
    let o = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("SLUICE_DB", &db)
        .env("SLUICE_RETENTION", "forever")
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("SLUICE_RETENTION=`forever`"), "{err}");
}

/// A run with large outputs is stored compact (its outputs in one
/// compressed archive, the per-step texts emptied) and reads back whole:
/// the run's output, every step's output, and a re-run of a failed run
/// that needs its completed steps' outputs. On SQLite and PostgreSQL.
#[tokio::test]
async fn large_runs_are_archived_compactly_and_read_back_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mut urls = vec![(
        "sqlite",
        format!("sqlite://{}", dir.path().join("sluice.db").display()),
    )];
    match common::postgres_url() {
        Some(url) => urls.push(("postgres", url)),
        None => eprintln!("postgres: skipped, SLUICE_TEST_POSTGRES_URL is not set"),
    }
    for (name, url) in urls {
        let store = sluice::store::Store::connect(&url).await.unwrap();
        let engine = common::engine(store.clone(), vec![], vec![]);
        let flow_id = format!("archived-{}", uuid::Uuid::now_v7().simple());
        let yaml = format!(
            r#"apiVersion: sluice/v1
id: {flow_id}
inputs:
  fail: {{ type: boolean, default: false }}
steps:
  - id: read
    read: {{ connection: sandbox, entity: purchase_order }}
  - id: numbers
    needs: [read]
    set: "${{{{ steps.read.output.records | map(attribute='number') | list }}}}"
  - id: check
    needs: [numbers]
    set: "${{{{ 1 // 0 if inputs.fail else steps.numbers.output | length }}}}"
"#
        );
        let ok = common::run(&engine, &yaml, json!({})).await;
        assert_eq!(ok.status, sluice::store::RunStatus::Succeeded, "{name}");
        let raw: Vec<Option<String>> = store.raw_step_outputs(&ok.run_id).await.unwrap();
        assert!(raw.is_empty(), "{name}: step rows kept: {raw:?}");
        let steps = store.steps(&ok.run_id).await.unwrap();
        let read = steps.iter().find(|s| s.step_id == "read").unwrap();
        let count = read.output.as_ref().unwrap()["count"].as_u64().unwrap();
        assert!(count > 20, "{name}: {read:?}");
        let numbers = steps.iter().find(|s| s.step_id == "numbers").unwrap();
        assert_eq!(
            numbers.output.as_ref().unwrap().as_array().unwrap().len() as u64,
            count,
            "{name}"
        );
        let run = store.get_run(&ok.run_id).await.unwrap().unwrap();
        assert_eq!(run.output, Some(json!(count)), "{name}");
        // The read's attempt log moved into the archive too.
        let first = store.raw_archive(&ok.run_id).await.unwrap();
        assert_eq!(first.attempt_rows, 0, "{name}: {first:?}");
        let attempts = store.attempts(&ok.run_id).await.unwrap();
        assert!(
            attempts.iter().any(|a| a.step_id == "read"),
            "{name}: {attempts:?}"
        );

        // The next run reads the same orders again: its archive is
        // compressed against the first run's (the flow's base), so it
        // stores little more than a reference to it.
        let again = common::run(&engine, &yaml, json!({})).await;
        let second = store.raw_archive(&again.run_id).await.unwrap();
        assert_eq!(second.base, first.base, "{name}: one base for both runs");
        assert!(
            second.archive_bytes * 4 < first.base_bytes,
            "{name}: the second run's archive is not small: {second:?} (base {first:?})"
        );
        // A store opened afresh (nothing cached) reads both back whole.
        let fresh = sluice::store::Store::connect(&url).await.unwrap();
        for id in [&ok.run_id, &again.run_id] {
            let steps = fresh.steps(id).await.unwrap();
            let numbers = steps.iter().find(|s| s.step_id == "numbers").unwrap();
            assert_eq!(
                numbers.output.as_ref().unwrap().as_array().unwrap().len() as u64,
                count,
                "{name}"
            );
            let run = fresh.get_run(id).await.unwrap().unwrap();
            assert_eq!(run.output, Some(json!(count)), "{name}");
        }

        // A failed run's completed steps come back for the re-run.
        let failed = common::run(&engine, &yaml, json!({"fail": true})).await;
        assert_eq!(failed.status, sluice::store::RunStatus::Failed, "{name}");
        let rerun = engine.resume(&failed.run_id, None).await.unwrap();
        // It fails again at `check` (the input is the same), having read
        // `numbers` from the archive: the error is the division, not a
        // missing output.
        let err = rerun.error.unwrap()["message"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(err.contains("unable to calculate 1 // 0"), "{name}: {err}");
        let steps = store.steps(&failed.run_id).await.unwrap();
        let numbers = steps.iter().find(|s| s.step_id == "numbers").unwrap();
        assert_eq!(
            numbers.output.as_ref().unwrap().as_array().unwrap().len() as u64,
            count,
            "{name}"
        );
    }
}
