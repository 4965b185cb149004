//! Executor behaviour: concurrency, ordering, skips, for_each, retries,
//! timeouts, on_error, concurrency limits, cancellation, secrets, resume.

mod common;

use std::time::Duration;

use serde_json::{Value, json};
use sluice::connectors::ConnectorErrorKind;
use sluice::connectors::sandbox::DATA;
use sluice::run::{Engine, RunError};
use sluice::store::{RunStatus, StepRecord, StepStatus};

use common::{FlakyConnector, compile, engine, run, sqlite_store};

async fn steps_by_id(
    engine: &Engine,
    run_id: &str,
) -> std::collections::BTreeMap<String, StepRecord> {
    engine
        .store()
        .steps(run_id)
        .await
        .unwrap()
        .into_iter()
        .map(|s| (s.step_id.clone(), s))
        .collect()
}

#[tokio::test]
async fn ready_steps_run_concurrently_and_dependents_wait_for_stored_results() {
    let (store, _dir) = sqlite_store().await;
    let e = engine(store, vec![], vec![]);
    let out = run(
        &e,
        r#"
apiVersion: sluice/v1
id: parallel
steps:
  - { id: a, wait: { duration: 300ms } }
  - { id: b, wait: { duration: 300ms } }
  - { id: c, needs: [a, b], set: done }
"#,
        json!({}),
    )
    .await;
    assert_eq!(out.status, RunStatus::Succeeded);
    assert_eq!(out.output, Some(json!("done")));
    let s = steps_by_id(&e, &out.run_id).await;
    let (a, b, c) = (&s["a"], &s["b"], &s["c"]);
    assert!(
        a.started_at < b.finished_at && b.started_at < a.finished_at,
        "a and b overlapped: {a:?} {b:?}"
    );
    assert!(
        c.started_at >= a.finished_at && c.started_at >= b.finished_at,
        "c started after both were stored"
    );
}

#[tokio::test]
async fn false_condition_skips_the_step_and_its_dependents() {
    let (store, _dir) = sqlite_store().await;
    let e = engine(store, vec![], vec![]);
    let out = run(
        &e,
        r#"
apiVersion: sluice/v1
id: skips
inputs:
  go: { type: boolean, default: false }
steps:
  - { id: a, set: 1 }
  - { id: b, needs: [a], if: "${{ inputs.go }}", set: 2 }
  - { id: c, needs: [b], set: 3 }
  - { id: d, needs: [a], set: "${{ steps.a.output + 1 }}" }
"#,
        json!({}),
    )
    .await;
    assert_eq!(out.status, RunStatus::Succeeded);
    let s = steps_by_id(&e, &out.run_id).await;
    assert_eq!(s["b"].status, StepStatus::Skipped);
    assert_eq!(s["c"].status, StepStatus::Skipped);
    assert_eq!(
        s["c"].error.as_ref().unwrap()["message"],
        "skipped because `b` was skipped"
    );
    assert_eq!(s["d"].output, Some(json!(2)));
    assert_eq!(out.output, Some(json!({"c": null, "d": 2})));
}

#[tokio::test]
async fn for_each_keeps_item_order_and_filters_with_if() {
    let (store, _dir) = sqlite_store().await;
    let e = engine(store, vec![], vec![]);
    let out = run(
        &e,
        r#"
apiVersion: sluice/v1
id: fanout
steps:
  - id: each
    for_each: "${{ range(20) | list }}"
    concurrency: 5
    if: "${{ item % 3 != 0 }}"
    set: { n: "${{ item * 10 }}", i: "${{ index }}" }
"#,
        json!({}),
    )
    .await;
    assert_eq!(out.status, RunStatus::Succeeded);
    let got: Vec<i64> = out
        .output
        .unwrap()
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["n"].as_i64().unwrap())
        .collect();
    let want: Vec<i64> = (0..20).filter(|i| i % 3 != 0).map(|i| i * 10).collect();
    assert_eq!(got, want);
}

#[tokio::test]
async fn transient_failures_are_retried_with_backoff_until_success() {
    let (store, _dir) = sqlite_store().await;
    let flaky = FlakyConnector::new(2, ConnectorErrorKind::Transient);
    let e = engine(store, vec![("flaky", flaky.clone())], vec![]);
    let out = run(
        &e,
        r#"
apiVersion: sluice/v1
id: retrying
steps:
  - id: r
    read: { connection: flaky, entity: vendor }
    retry: { max_attempts: 3, initial: 10ms, max: 50ms }
"#,
        json!({}),
    )
    .await;
    assert_eq!(out.status, RunStatus::Succeeded);
    let s = steps_by_id(&e, &out.run_id).await;
    assert_eq!(s["r"].attempts, 3);
    assert_eq!(flaky.calls.load(std::sync::atomic::Ordering::SeqCst), 3);
    let log = e.store().attempts(&out.run_id).await.unwrap();
    assert_eq!(
        log.iter().map(|a| a.attempt).collect::<Vec<_>>(),
        vec![1, 2, 3]
    );
}

#[tokio::test]
async fn exhausted_retries_fail_the_run_with_a_clear_error() {
    let (store, _dir) = sqlite_store().await;
    let flaky = FlakyConnector::new(10, ConnectorErrorKind::Transient);
    let e = engine(store, vec![("flaky", flaky)], vec![]);
    let out = run(
        &e,
        r#"
apiVersion: sluice/v1
id: exhausted
steps:
  - id: r
    read: { connection: flaky, entity: vendor }
    retry: { max_attempts: 3, backoff: constant, initial: 5ms }
  - { id: after, needs: [r], set: 1 }
"#,
        json!({}),
    )
    .await;
    assert_eq!(out.status, RunStatus::Failed);
    let err = out.error.unwrap();
    assert_eq!(err["step"], "r");
    assert_eq!(
        err["message"],
        "step `r`: UPSTREAM_ERROR: flaky: HTTP 503 from upstream (gave up after 3 attempts)"
    );
    let s = steps_by_id(&e, &out.run_id).await;
    assert!(
        !s.contains_key("after"),
        "dependents of a failed step do not run"
    );
}

#[tokio::test]
async fn a_write_the_model_rejects_fails_without_retry() {
    let (store, _dir) = sqlite_store().await;
    let e = engine(store, vec![], vec![]);
    let out = run(&e, r#"
apiVersion: sluice/v1
id: bad-write
steps:
  - id: create
    retry: { max_attempts: 4, initial: 5ms }
    write:
      connection: sandbox
      entity: purchase_order
      op: create
      data: { number: PO-NEW, vendor_id: V-9999, status: draft, currency: USD, total: 10, order_date: "2026-02-01" }
"#, json!({})).await;
    assert_eq!(out.status, RunStatus::Failed);
    let err = out.error.unwrap();
    assert_eq!(err["kind"], "validation");
    assert_eq!(
        err["message"],
        "step `create`: VALIDATION_FAILED: sandbox: invalid record: vendor `V-9999` does not exist (field `vendor_id`)"
    );
    let create = &steps_by_id(&e, &out.run_id).await["create"];
    assert_eq!(create.attempts, 1);
    // The refused record is kept as the step's input, for whoever fixes it.
    let input = create
        .input
        .as_ref()
        .expect("a failed write keeps its input");
    assert_eq!(input["op"], "create");
    assert_eq!(input["entity"], "purchase_order");
    assert_eq!(input["data"]["vendor_id"], "V-9999");

    let out = run(&e, r#"
apiVersion: sluice/v1
id: bad-write-shape
steps:
  - id: update
    write: { connection: sandbox, entity: work_order, op: update, id: WO-5001, data: { priority: "whenever" } }
"#, json!({})).await;
    let msg = out.error.unwrap()["message"].as_str().unwrap().to_string();
    assert!(
        msg.contains("invalid record: unknown variant `whenever`"),
        "{msg}"
    );
}

#[tokio::test]
async fn sandbox_writes_return_the_would_be_record_and_change_nothing() {
    let (store, _dir) = sqlite_store().await;
    let e = engine(store, vec![], vec![]);
    let before = serde_json::to_string(&DATA.purchase_orders).unwrap();
    let out = run(
        &e,
        r#"
apiVersion: sluice/v1
id: sandbox-write
steps:
  - id: approve
    write:
      connection: sandbox
      entity: purchase_order
      op: update
      id: "4500000001"
      data: { status: approved, custom_fields: { risk: 0.4 } }
  - id: reread
    needs: [approve]
    read: { connection: sandbox, entity: purchase_order, filter: { remote_id: "4500000001" } }
"#,
        json!({}),
    )
    .await;
    assert_eq!(out.status, RunStatus::Succeeded, "{:?}", out.error);
    let s = steps_by_id(&e, &out.run_id).await;
    let written = s["approve"].output.as_ref().unwrap();
    assert_eq!(written["status"], "approved");
    assert_eq!(written["custom_fields"]["risk"], 0.4);
    let reread = &s["reread"].output.as_ref().unwrap()["records"][0];
    assert_eq!(reread["status"], "draft");
    // Each step's input is its config with the values its expressions took.
    assert_eq!(
        s["approve"].input,
        Some(json!({
            "connection": "sandbox", "entity": "purchase_order", "op": "update",
            "id": "4500000001", "data": {"status": "approved", "custom_fields": {"risk": 0.4}}
        }))
    );
    assert_eq!(
        s["reread"].input.as_ref().unwrap()["filter"],
        json!({"remote_id": "4500000001"})
    );
    assert_eq!(
        serde_json::to_string(&DATA.purchase_orders).unwrap(),
        before
    );
}

#[tokio::test]
async fn a_step_past_its_timeout_fails_with_a_timeout_error() {
    let (store, _dir) = sqlite_store().await;
    let e = engine(store, vec![], vec![]);
    let out = run(
        &e,
        r#"
apiVersion: sluice/v1
id: slow
steps:
  - { id: sleepy, wait: { duration: 10s }, timeout: 100ms }
"#,
        json!({}),
    )
    .await;
    assert_eq!(out.status, RunStatus::Failed);
    let err = out.error.unwrap();
    assert_eq!(err["kind"], "timeout");
    assert_eq!(err["message"], "step `sleepy`: timed out after 100ms");
}

#[tokio::test]
async fn on_error_continue_records_the_error_and_runs_dependents() {
    let (store, _dir) = sqlite_store().await;
    let e = engine(
        store,
        vec![(
            "flaky",
            FlakyConnector::new(99, ConnectorErrorKind::Permanent),
        )],
        vec![],
    );
    let out = run(&e, r#"
apiVersion: sluice/v1
id: tolerant
steps:
  - { id: r, read: { connection: flaky, entity: asset }, on_error: continue }
  - { id: next, needs: [r], set: { upstream: "${{ steps.r.status }}", why: "${{ steps.r.error }}" } }
"#, json!({})).await;
    assert_eq!(out.status, RunStatus::Succeeded);
    assert_eq!(
        out.output,
        Some(
            json!({"upstream": "failed", "why": "step `r`: UPSTREAM_ERROR: flaky: HTTP 503 from upstream"})
        )
    );
}

#[tokio::test]
async fn runtime_expression_errors_name_the_step_and_the_expression() {
    let (store, _dir) = sqlite_store().await;
    let e = engine(store, vec![], vec![]);
    let out = run(
        &e,
        r#"
apiVersion: sluice/v1
id: bad-expr
inputs:
  order: { type: object }
steps:
  - { id: a, set: "${{ inputs.order }}" }
  - { id: b, needs: [a], set: "${{ steps.a.output.totl * 2 }}" }
"#,
        json!({"order": {"number": "PO-1", "total": 12.5}}),
    )
    .await;
    // An object input has no declared fields, so only the run can tell the
    // typo: it fails, naming the path, the keys there are and the likely
    // one, instead of computing with `null`.
    assert_eq!(out.status, RunStatus::Failed);
    let msg = out.error.unwrap()["message"].as_str().unwrap().to_string();
    assert!(
        msg.starts_with(
            "step `b`: expression `steps.a.output.totl * 2` failed: `steps.a.output.totl` is not there: `steps.a.output` has no key `totl`; did you mean `total`? (its keys: number, total)"
        ),
        "{msg}"
    );
}

#[tokio::test]
async fn missing_or_mistyped_inputs_are_refused_before_the_run() {
    let (store, _dir) = sqlite_store().await;
    let e = engine(store, vec![], vec![]);
    let flow = compile(
        &e,
        r#"
apiVersion: sluice/v1
id: typed
inputs:
  plant: { type: string, required: true }
  limit: { type: integer, default: 5 }
steps:
  - { id: a, set: "${{ inputs.plant }}" }
"#,
    );
    let err = Engine::resolve_inputs(
        &flow,
        &json!({"limit": "x", "extra": 1})
            .as_object()
            .unwrap()
            .clone(),
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("unknown input `extra`"), "{text}");
    assert!(
        text.contains("input `limit` must be integer, got \"x\""),
        "{text}"
    );
    assert!(
        text.contains("missing required input `plant` (string)"),
        "{text}"
    );
    let r = e.run(flow, &serde_json::Map::new(), json!({}), None).await;
    assert!(matches!(r, Err(RunError::Inputs(_))));
}

#[tokio::test]
async fn secrets_stay_out_of_data_and_credentials_are_not_redacted_out_of_records() {
    let (store, _dir) = sqlite_store().await;
    // A connection's user name is a credential, and it is also the buyer of
    // orders that user created: records must keep it.
    let e = engine(
        store,
        vec![],
        vec![
            ("API_TOKEN", "tok-3f9a7c2e-very-secret"),
            ("SAP_USER", "s.okafor"),
        ],
    );
    let out = run(
        &e,
        r#"
apiVersion: sluice/v1
id: buyers
steps:
  - id: po
    read: { connection: sandbox, entity: purchase_order, filter: { buyer: s.okafor } }
output: "${{ steps.po.output.records | map(attribute='buyer') | unique | list }}"
"#,
        json!({}),
    )
    .await;
    assert_eq!(out.status, RunStatus::Succeeded, "{:?}", out.error);
    assert_eq!(out.output, Some(json!(["s.okafor"])));
    let steps = e.store().steps(&out.run_id).await.unwrap();
    assert!(format!("{:?}", steps[0].output).contains("s.okafor"));
    // A flow that would move a secret into data does not validate.
    let err = sluice::flow::compile(
        "leak.yaml",
        "apiVersion: sluice/v1\nid: leak\nsteps:\n  - { id: header, set: { auth: \"Bearer ${{ secrets.API_TOKEN }}\" } }\n",
        &e.catalog(),
    )
    .unwrap_err();
    assert_eq!(err.diagnostics[0].code, "secret-leak");
    assert!(!err.to_string().contains("tok-3f9a7c2e"));
}

const LIMITED: &str = r#"
apiVersion: sluice/v1
id: limited-ON_LIMIT
concurrency: { limit: 1, on_limit: ON_LIMIT }
steps:
  - { id: slow, wait: { duration: 300ms } }
"#;

#[tokio::test]
async fn concurrency_limit_skip_cancels_the_extra_runs() {
    let (store, _dir) = sqlite_store().await;
    let e = engine(store, vec![], vec![]);
    let yaml = LIMITED.replace("ON_LIMIT", "skip");
    let (a, b, c) = tokio::join!(
        run(&e, &yaml, json!({})),
        run(&e, &yaml, json!({})),
        run(&e, &yaml, json!({}))
    );
    let statuses: Vec<RunStatus> = vec![a.status, b.status, c.status];
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == RunStatus::Succeeded)
            .count(),
        1,
        "{statuses:?}"
    );
    assert_eq!(
        statuses
            .iter()
            .filter(|s| **s == RunStatus::Cancelled)
            .count(),
        2,
        "{statuses:?}"
    );
    let skipped = [a, b, c]
        .into_iter()
        .find(|o| o.status == RunStatus::Cancelled)
        .unwrap();
    assert!(
        skipped.error.unwrap()["message"]
            .as_str()
            .unwrap()
            .starts_with("skipped: flow `limited-skip` already has 1 active run")
    );
}

#[tokio::test]
async fn concurrency_limit_queue_runs_one_at_a_time() {
    let (store, _dir) = sqlite_store().await;
    let e = engine(store, vec![], vec![]);
    let yaml = LIMITED.replace("ON_LIMIT", "queue");
    let (a, b, c) = tokio::join!(
        run(&e, &yaml, json!({})),
        run(&e, &yaml, json!({})),
        run(&e, &yaml, json!({}))
    );
    let mut spans = Vec::new();
    for o in [a, b, c] {
        assert_eq!(o.status, RunStatus::Succeeded);
        let s = steps_by_id(&e, &o.run_id).await;
        spans.push((
            s["slow"].started_at.unwrap(),
            s["slow"].finished_at.unwrap(),
        ));
    }
    spans.sort();
    assert!(
        spans[0].1 <= spans[1].0 && spans[1].1 <= spans[2].0,
        "runs overlapped: {spans:?}"
    );
}

#[tokio::test]
async fn concurrency_limit_cancel_oldest_cancels_the_running_run() {
    let (store, _dir) = sqlite_store().await;
    let e = engine(store, vec![], vec![]);
    let yaml = LIMITED
        .replace("ON_LIMIT", "cancel_oldest")
        .replace("300ms", "2s");
    let first = {
        let e = e.clone();
        let yaml = yaml.clone();
        tokio::spawn(async move { run(&e, &yaml, json!({})).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let second = run(&e, &yaml, json!({})).await;
    let first = first.await.unwrap();
    assert_eq!(first.status, RunStatus::Cancelled);
    assert_eq!(second.status, RunStatus::Succeeded);
}

#[tokio::test]
async fn cancel_stops_a_running_run() {
    let (store, _dir) = sqlite_store().await;
    let e = engine(store, vec![], vec![]);
    let flow = compile(
        &e,
        "apiVersion: sluice/v1\nid: long\nsteps:\n  - { id: w, wait: { duration: 30s } }\n",
    );
    let handle = {
        let e = e.clone();
        tokio::spawn(async move { e.run(flow, &serde_json::Map::new(), json!({}), None).await })
    };
    let run_id = loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Some(r) = e
            .store()
            .list_runs(&Default::default())
            .await
            .unwrap()
            .into_iter()
            .find(|r| r.flow_id == "long")
        {
            break r.id;
        }
    };
    assert!(e.cancel(&run_id).await.unwrap());
    let out = tokio::time::timeout(Duration::from_secs(10), handle)
        .await
        .expect("cancel is prompt")
        .unwrap()
        .unwrap();
    assert_eq!(out.status, RunStatus::Cancelled);
}

#[tokio::test]
async fn a_failed_run_resumes_from_the_failed_step() {
    let (store, _dir) = sqlite_store().await;
    let flaky = FlakyConnector::new(1, ConnectorErrorKind::Transient);
    let e = engine(store, vec![("flaky", flaky)], vec![]);
    let out = run(&e, r#"
apiVersion: sluice/v1
id: resumable
steps:
  - { id: first, read: { connection: sandbox, entity: vendor, limit: 1 } }
  - { id: second, needs: [first], read: { connection: flaky, entity: vendor } }
  - { id: third, needs: [second], set: "${{ steps.first.output.count + steps.second.output.count }}" }
"#, json!({})).await;
    assert_eq!(out.status, RunStatus::Failed);
    let resumed = e.resume(&out.run_id, None).await.unwrap();
    assert_eq!(resumed.status, RunStatus::Succeeded);
    assert_eq!(resumed.output, Some(json!(2)));
    let log = e.store().attempts(&out.run_id).await.unwrap();
    let first: Vec<_> = log.iter().filter(|a| a.step_id == "first").collect();
    assert_eq!(first.len(), 1, "completed steps are not executed again");
    assert_eq!(log.iter().filter(|a| a.step_id == "second").count(), 2);
    let again = e.resume(&out.run_id, None).await;
    assert!(matches!(again, Err(RunError::AlreadyFinished(..))));
}

#[tokio::test]
async fn default_output_is_the_sink_steps_outputs() {
    let (store, _dir) = sqlite_store().await;
    let e = engine(store, vec![], vec![]);
    let out = run(&e, "apiVersion: sluice/v1\nid: sinks\nsteps:\n  - { id: a, set: 1 }\n  - { id: b, set: [2] }\n", json!({})).await;
    assert_eq!(out.output, Some(json!({"a": 1, "b": [2]})));
    let _: Value = out.output.unwrap();
}

/// Runs of `yaml` started on each engine at once (several "processes" on
/// one store), with an orphan sweep racing them; returns the slow step's
/// spans, which must not overlap under `limit: 1`.
async fn limited_spans(engines: &[Engine], yaml: &str, runs_each: usize) -> Vec<(i64, i64)> {
    let flow = common::compile(&engines[0], yaml);
    let mut set = tokio::task::JoinSet::new();
    for e in engines {
        for _ in 0..runs_each {
            let (e, f) = (e.clone(), flow.clone());
            set.spawn(async move { e.run(f, &Default::default(), json!({}), None).await });
        }
        // A sweeper that resumes whatever looks orphaned, as `serve` does.
        let e = e.clone();
        set.spawn(async move {
            for _ in 0..30 {
                let _ = e.resume_orphaned(None).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(sluice::run::RunError::NotFound("sweeper".into()))
        });
    }
    let mut ids = Vec::new();
    while let Some(r) = set.join_next().await {
        if let Ok(out) = r.unwrap() {
            assert_eq!(out.status, RunStatus::Succeeded, "{:?}", out.error);
            ids.push(out.run_id);
        }
    }
    assert_eq!(ids.len(), engines.len() * runs_each, "every run finished");
    let mut spans = Vec::new();
    for id in ids {
        let s = steps_by_id(&engines[0], &id).await;
        spans.push((
            s["slow"].started_at.unwrap(),
            s["slow"].finished_at.unwrap(),
        ));
    }
    spans.sort();
    spans
}

fn assert_no_overlap(spans: &[(i64, i64)]) {
    for w in spans.windows(2) {
        assert!(
            w[0].1 <= w[1].0,
            "two runs of a limit-1 flow overlapped: {spans:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrency_limit_holds_with_a_short_lease_and_an_orphan_sweep() {
    let (store, _dir) = sqlite_store().await;
    // A lease shorter than the runs: queued runs and renewals race the sweep.
    let e = engine(store, vec![], vec![]).with_lease(Duration::from_millis(300));
    let yaml = LIMITED
        .replace("ON_LIMIT", "queue")
        .replace("300ms", "150ms");
    let spans = limited_spans(&[e], &yaml, 6).await;
    assert_no_overlap(&spans);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrency_limit_holds_across_two_processes_on_postgres() {
    let Some(url) = common::postgres_url() else {
        eprintln!("skipped: SLUICE_TEST_POSTGRES_URL is not set");
        return;
    };
    let store_a = sluice::store::Store::connect(&url).await.unwrap();
    let store_b = sluice::store::Store::connect(&url).await.unwrap();
    // Two engines with their own owners and admission locks: two processes.
    let a = engine(store_a, vec![], vec![]);
    let b = engine(store_b, vec![], vec![]);
    let id = format!("limited-pg-{}", uuid::Uuid::now_v7().simple());
    let yaml = LIMITED
        .replace("ON_LIMIT", "queue")
        .replace("300ms", "150ms")
        .replace("id: limited-queue", &format!("id: {id}"));
    let spans = limited_spans(&[a, b], &yaml, 4).await;
    assert_no_overlap(&spans);
}

#[tokio::test]
async fn for_each_with_on_error_continue_keeps_every_items_result() {
    let (store, _dir) = sqlite_store().await;
    let e = engine(store, vec![], vec![]);
    let out = run(
        &e,
        r#"
apiVersion: sluice/v1
id: partial
steps:
  - id: each
    for_each: [1, 0, 4, 0]
    on_error: continue
    set: "${{ 8 // item }}"
  - id: after
    needs: [each]
    set: { got: "${{ steps.each.output }}", status: "${{ steps.each.status }}" }
"#,
        json!({}),
    )
    .await;
    assert_eq!(out.status, RunStatus::Succeeded, "{:?}", out.error);
    assert_eq!(
        out.output.unwrap(),
        json!({"got": [8, null, 2, null], "status": "failed"})
    );
    let steps = steps_by_id(&e, &out.run_id).await;
    let err = steps["each"].error.clone().unwrap();
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .starts_with("step `each`: 2 of 4 items failed; first: item 1:"),
        "{err}"
    );
    let failed: Vec<u64> = err["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["index"].as_u64().unwrap())
        .collect();
    assert_eq!(failed, [1, 3]);
}

/// A caller that goes away while its run is being stored (an HTTP client
/// that disconnects while its hook is answered) does not leave a stored run
/// that nothing executes until its lease expires.
#[tokio::test]
async fn a_run_whose_caller_goes_away_while_it_is_stored_still_runs() {
    let (store, _dir) = sqlite_store().await;
    let e = engine(store, vec![], vec![]);
    let yaml = "apiVersion: sluice/v1\nid: abandoned\nsteps:\n  - { id: a, set: { x: 1 } }\n";
    let flow = compile(&e, yaml);
    // Stores the flow's revision: the next starts' first wait is their run's insert.
    assert_eq!(run(&e, yaml, json!({})).await.status, RunStatus::Succeeded);
    let no_inputs = serde_json::Map::new();
    for _ in 0..20 {
        let mut start = Box::pin(e.start(
            flow.clone(),
            &no_inputs,
            json!({"type": "test"}),
            None,
            None,
            |_| {},
        ));
        // Polled once (the insert is on its way), then dropped.
        assert!(futures::poll!(&mut start).is_pending());
        drop(start);
    }
    let filter = sluice::store::RunFilter {
        flow_id: Some("abandoned".into()),
        limit: 100,
        ..Default::default()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let runs = e.store().list_runs(&filter).await.unwrap();
        let done = runs
            .iter()
            .filter(|r| r.status == RunStatus::Succeeded)
            .count();
        if runs.len() == 21 && done == 21 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {} stored runs succeeded; the others were left {:?}",
            done,
            runs.len(),
            runs.iter()
                .filter(|r| r.status != RunStatus::Succeeded)
                .map(|r| r.status)
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_for_each_steps_input_is_each_items_in_order() {
    let (store, _dir) = sqlite_store().await;
    let e = engine(store, vec![], vec![]);
    let out = run(
        &e,
        r#"
apiVersion: sluice/v1
id: each-input
steps:
  - id: tag
    for_each: ["4500000001", "skip", "4500000002"]
    if: "${{ item != 'skip' }}"
    write:
      connection: sandbox
      entity: purchase_order
      op: update
      id: "${{ item }}"
      data: { custom_fields: { checked: "${{ index }}" } }
"#,
        json!({}),
    )
    .await;
    assert_eq!(out.status, RunStatus::Succeeded, "{:?}", out.error);
    let s = steps_by_id(&e, &out.run_id).await;
    let inputs = s["tag"].input.clone().expect("inputs recorded");
    assert_eq!(inputs[0]["id"], "4500000001");
    assert_eq!(inputs[0]["data"], json!({"custom_fields": {"checked": 0}}));
    assert_eq!(
        inputs[1],
        Value::Null,
        "the item `if` left out sent nothing"
    );
    assert_eq!(inputs[2]["id"], "4500000002");
    assert_eq!(inputs[2]["data"], json!({"custom_fields": {"checked": 2}}));
}
