//! `wait_for`: a run parks (status `waiting`, no lease, no run slot) until
//! a signal with typed data, a matching event or its timeout, and survives
//! a restart of the server in between. Bad input: wrong-typed data, a signal
//! to a finished run, the same signal twice, a signal nobody waits for.

mod common;
#[path = "common/serve.rs"]
mod serve;

use std::time::Duration;

use serde_json::{Value, json};
use sluice::events::Envelope;
use sluice::run::RunError;
use sluice::store::{RunStatus, StepStatus};

const APPROVAL: &str = r#"apiVersion: sluice/v1
id: po-approval
inputs:
  po: { type: string, required: true }
steps:
  - id: approval
    wait_for:
      signal: approve
      data:
        approved: { type: boolean, required: true }
        comment: { type: string, default: "none" }
      timeout: 1h
  - id: decide
    needs: [approval]
    set:
      po: "${{ inputs.po }}"
      approved: "${{ steps.approval.output.data.approved }}"
      comment: "${{ steps.approval.output.data.comment }}"
"#;

#[tokio::test]
async fn a_signal_with_typed_data_resumes_the_parked_run_once() {
    let (store, _dir) = common::sqlite_store().await;
    let engine = common::engine(store.clone(), vec![], vec![]);
    let parked = common::run(&engine, APPROVAL, json!({"po": "PO-7"})).await;
    assert_eq!(parked.status, RunStatus::Waiting);
    let id = parked.run_id.clone();

    // Parked: no lease is held, and the step says what it waits for.
    let run = store.get_run(&id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Waiting);
    assert_eq!(run.lease_owner, None);
    let steps = store.steps(&id).await.unwrap();
    assert_eq!(steps.len(), 1, "{steps:?}");
    assert_eq!(steps[0].status, StepStatus::Waiting);

    // Wrong-typed and unknown data is refused, naming each field; the run
    // keeps waiting.
    match engine
        .signal(&id, "approve", &json!({"approved": "yes", "colour": 1}))
        .await
    {
        Err(RunError::Signal(m)) => {
            assert!(m.contains("field `approved` must be boolean"), "{m}");
            assert!(m.contains("unknown field `colour`"), "{m}");
        }
        other => panic!("wrong data was taken: {other:?}"),
    }
    match engine.signal(&id, "reject", &json!({})).await {
        Err(RunError::NotWaiting(m)) => {
            assert!(
                m.contains("waits for signal `approve`, not signal `reject`"),
                "{m}"
            )
        }
        other => panic!("an unknown signal was taken: {other:?}"),
    }
    assert_eq!(
        store.get_run(&id).await.unwrap().unwrap().status,
        RunStatus::Waiting
    );

    let done = engine
        .signal(&id, "approve", &json!({"approved": true}))
        .await
        .unwrap();
    assert_eq!(done.step_id, "approval");
    assert_eq!(done.data, json!({"approved": true, "comment": "none"}));
    // Twice: refused, nothing changes.
    match engine
        .signal(&id, "approve", &json!({"approved": false}))
        .await
    {
        Err(RunError::NotWaiting(m)) => assert!(m.contains("already received"), "{m}"),
        other => panic!("a second signal was taken: {other:?}"),
    }
    let outcome = engine.resume(&id, None).await.unwrap();
    assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");
    assert_eq!(
        outcome.output.unwrap(),
        json!({"po": "PO-7", "approved": true, "comment": "none"})
    );
    // To a finished run.
    match engine
        .signal(&id, "approve", &json!({"approved": true}))
        .await
    {
        Err(RunError::NotWaiting(m)) => assert!(m.contains("already succeeded"), "{m}"),
        other => panic!("a signal to a finished run was taken: {other:?}"),
    }
}

#[tokio::test]
async fn a_parked_run_holds_no_slot_of_its_flows_concurrency_limit() {
    let (store, _dir) = common::sqlite_store().await;
    let engine = common::engine(store.clone(), vec![], vec![]);
    let limited = APPROVAL.replace(
        "inputs:\n",
        "concurrency: { limit: 1, on_limit: skip }\ninputs:\n",
    );
    // With the limit at 1 and `skip`, a second run would be cancelled if
    // the first still held its slot.
    for po in ["A", "B", "C"] {
        let o = common::run(&engine, &limited, json!({"po": po})).await;
        assert_eq!(o.status, RunStatus::Waiting, "{o:?}");
    }
    assert_eq!(store.waiting_runs().await.unwrap(), 3);
}

#[tokio::test]
async fn a_timeout_fails_the_step_or_continues_as_configured() {
    let (store, _dir) = common::sqlite_store().await;
    let engine = common::engine(store.clone(), vec![], vec![]);
    let flow = |on_timeout: &str| {
        format!(
            r#"apiVersion: sluice/v1
id: timeout-{on_timeout}
steps:
  - id: callback
    wait_for: {{ signal: callback, timeout: 200ms, on_timeout: {on_timeout} }}
  - id: after
    needs: [callback]
    set: "${{{{ steps.callback.output.timed_out }}}}"
"#
        )
    };
    let fails = common::run(&engine, &flow("fail"), json!({})).await;
    let goes_on = common::run(&engine, &flow("continue"), json!({})).await;
    assert_eq!(fails.status, RunStatus::Waiting);
    assert_eq!(engine.expire_waits().await.unwrap(), Vec::<String>::new());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut queued = engine.expire_waits().await.unwrap();
    queued.sort();
    let mut want = vec![fails.run_id.clone(), goes_on.run_id.clone()];
    want.sort();
    assert_eq!(queued, want);

    let failed = engine.resume(&fails.run_id, None).await.unwrap();
    assert_eq!(failed.status, RunStatus::Failed);
    let error = failed.error.unwrap();
    assert_eq!(error["step"], "callback");
    assert_eq!(error["kind"], "timeout");
    assert_eq!(
        error["message"],
        "step `callback`: no signal `callback` within 200ms"
    );
    let ok = engine.resume(&goes_on.run_id, None).await.unwrap();
    assert_eq!(ok.status, RunStatus::Succeeded, "{ok:?}");
    assert_eq!(ok.output.unwrap(), json!(true));
}

#[tokio::test]
async fn an_event_resumes_only_the_runs_whose_match_holds() {
    let (store, _dir) = common::sqlite_store().await;
    let engine = common::engine(store.clone(), vec![], vec![]);
    let flow = r#"apiVersion: sluice/v1
id: await-shipment
inputs:
  po: { type: string, required: true }
steps:
  - id: shipped
    wait_for:
      event: po.shipped
      match: "${{ event.data.po == inputs.po }}"
  - id: report
    needs: [shipped]
    set: "${{ steps.shipped.output.event.data.carrier }}"
"#;
    let a = common::run(&engine, flow, json!({"po": "PO-A"})).await;
    let b = common::run(&engine, flow, json!({"po": "PO-B"})).await;
    let event = |po: &str, t: &str| {
        Envelope::new(
            &format!("test:{po}:{t}"),
            t,
            None,
            json!({"po": po, "carrier": "DHL"}),
        )
    };
    // Another type, or another PO: nobody moves.
    assert!(
        engine
            .offer_event(&event("PO-A", "po.delayed"))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(
        engine
            .offer_event(&event("PO-C", "po.shipped"))
            .await
            .unwrap()
            .is_empty()
    );
    let queued = engine
        .offer_event(&event("PO-A", "po.shipped"))
        .await
        .unwrap();
    assert_eq!(queued, vec![a.run_id.clone()]);
    let done = engine.resume(&a.run_id, None).await.unwrap();
    assert_eq!(done.status, RunStatus::Succeeded, "{done:?}");
    assert_eq!(done.output.unwrap(), json!("DHL"));
    assert_eq!(
        store.get_run(&b.run_id).await.unwrap().unwrap().status,
        RunStatus::Waiting
    );
}

#[tokio::test]
async fn cancelling_a_parked_run_ends_it_cancelled() {
    let (store, _dir) = common::sqlite_store().await;
    let engine = common::engine(store.clone(), vec![], vec![]);
    let o = common::run(&engine, APPROVAL, json!({"po": "PO-9"})).await;
    assert!(engine.cancel(&o.run_id).await.unwrap());
    let run = store.get_run(&o.run_id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Cancelled);
    assert!(store.waits(&o.run_id).await.unwrap().is_empty());
    match engine
        .signal(&o.run_id, "approve", &json!({"approved": true}))
        .await
    {
        Err(RunError::NotWaiting(m)) => assert!(m.contains("already cancelled"), "{m}"),
        other => panic!("a cancelled run took a signal: {other:?}"),
    }
}

#[test]
fn wrong_wait_for_steps_are_refused_at_validation() {
    let check = |steps: &str| -> String {
        let yaml = format!("apiVersion: sluice/v1\nid: bad\nsteps:\n{steps}");
        let catalog = sluice::flow::Catalog::default();
        match sluice::flow::compile("bad.yaml", &yaml, &catalog) {
            Ok(_) => panic!("accepted:\n{yaml}"),
            Err(e) => e.to_string(),
        }
    };
    let both = check("  - id: w\n    wait_for: { signal: a, event: b }\n");
    assert!(
        both.contains("`wait_for` takes `signal` or `event`, not both"),
        "{both}"
    );
    let none = check("  - id: w\n    wait_for: { timeout: 1h }\n");
    assert!(
        none.contains("needs `signal: NAME` or `event: TYPE`"),
        "{none}"
    );
    let per_item = check("  - id: w\n    for_each: [1, 2]\n    wait_for: { signal: a }\n");
    assert!(per_item.contains("cannot run per item"), "{per_item}");
    let typo = check(
        "  - id: w\n    wait_for: { event: po.shipped, match: \"${{ evnt.data.po == 1 }}\" }\n",
    );
    assert!(typo.contains("evnt"), "{typo}");
    let duration = check("  - id: w\n    wait_for: { signal: a, timeout: soon }\n");
    assert!(duration.contains("invalid duration `soon`"), "{duration}");
}

/// Through a real server: the signal route, its errors, and a restart
/// while the run is parked.
#[tokio::test]
async fn the_signal_route_resumes_a_run_parked_across_a_restart() {
    let mut s = serve::Server::start(&[("approval.yaml", APPROVAL)]);
    let (status, run) = s
        .send(
            serve::client()
                .post(s.url("/v1/runs"))
                .json(&json!({"flow": "po-approval", "inputs": {"po": "PO-42"}})),
        )
        .await;
    assert!((200..300).contains(&status), "{status} {run}");
    let id = run["id"]
        .as_str()
        .unwrap_or_else(|| panic!("no id in {run}"))
        .to_string();
    let mut parked = Value::Null;
    for _ in 0..100 {
        parked = s.run(&id).await;
        if parked["status"] == "waiting" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(parked["status"], "waiting", "{parked}");
    assert_eq!(parked["waits"][0]["signal"], "approve");
    assert_eq!(parked["waits"][0]["data"]["approved"]["type"], "boolean");

    s.restart();

    let signal = |body: Value| {
        serve::client()
            .post(s.url(&format!("/v1/runs/{id}/signal")))
            .json(&body)
    };
    let (status, err) = s
        .send(signal(
            json!({"signal": "approve", "data": {"approved": 1}}),
        ))
        .await;
    assert_eq!(status, 422, "{err}");
    assert!(
        err.to_string().contains("field `approved` must be boolean"),
        "{err}"
    );
    let (status, ok) = s
        .send(signal(
            json!({"signal": "approve", "data": {"approved": true, "comment": "fine"}}),
        ))
        .await;
    assert_eq!(status, 202, "{ok}");
    assert_eq!(ok["step_id"], "approval");
    let (status, again) = s
        .send(signal(
            json!({"signal": "approve", "data": {"approved": true}}),
        ))
        .await;
    assert_eq!(status, 409, "{again}");
    let done = s.wait_run(&id).await;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(
        done["output"],
        json!({"po": "PO-42", "approved": true, "comment": "fine"})
    );
    let (status, _) = s
        .send(
            serve::client()
                .post(s.url("/v1/runs/no-such-run/signal"))
                .json(&json!({"signal": "approve"})),
        )
        .await;
    assert_eq!(status, 404);
}
