//! Resuming a failed run on its flow's latest revision (`sluice runs resume
//! --revision latest`, `POST /v1/runs/{id}/rerun?revision=latest`): taken
//! when the steps that already ran are unchanged, refused naming the ones
//! that differ; the default stays the run's own revision.

#[path = "common/serve.rs"]
mod serve;

use reqwest::StatusCode;
use serde_json::{Value, json};
use serve::{Server, client, json_of, sluice};

/// Revision 1: `convert` divides by zero, so runs fail there after `fetch`.
const V1: &str = r#"apiVersion: sluice/v1
id: invoice-total
triggers:
  - manual: {}
steps:
  - { id: fetch, set: { amount: 40 } }
  - { id: convert, needs: [fetch], set: "${{ steps.fetch.output.amount // 0 }}" }
  - { id: report, needs: [convert], set: { total: "${{ steps.convert.output }}" } }
"#;

/// The failing step fixed and the step after it changed; `fetch` as it was.
const V2_FIXED: &str = r#"apiVersion: sluice/v1
id: invoice-total
triggers:
  - manual: {}
steps:
  - { id: fetch, set: { amount: 40 } }
  - { id: convert, needs: [fetch], set: "${{ steps.fetch.output.amount // 2 }}" }
  - { id: report, needs: [convert], set: { total: "${{ steps.convert.output }}", currency: EUR } }
"#;

/// Fixed too, but `fetch`, which already ran, changed.
const V3_FETCH_CHANGED: &str = r#"apiVersion: sluice/v1
id: invoice-total
triggers:
  - manual: {}
steps:
  - { id: fetch, set: { amount: 50 } }
  - { id: convert, needs: [fetch], set: "${{ steps.fetch.output.amount // 2 }}" }
  - { id: report, needs: [convert], set: { total: "${{ steps.convert.output }}" } }
"#;

/// Starts a run and waits for it; returns it.
async fn failed_run(s: &Server) -> Value {
    let (status, run, _) = json_of(
        client()
            .post(s.url("/v1/runs"))
            .bearer_auth(&s.admin)
            .json(&json!({"flow": "invoice-total", "wait": true}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{run}");
    let run = s.wait_run(run["id"].as_str().unwrap()).await;
    assert_eq!(run["status"], "failed", "{run}");
    assert_eq!(run["error"]["step"], "convert");
    run
}

fn step<'a>(run: &'a Value, id: &str) -> &'a Value {
    run["steps"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["step_id"] == id))
        .unwrap_or_else(|| panic!("no step `{id}` in {run}"))
}

async fn rerun(s: &Server, id: &str, query: &str) -> (StatusCode, Value) {
    let (status, v, _) = json_of(
        client()
            .post(s.url(&format!("/v1/runs/{id}/rerun{query}")))
            .bearer_auth(&s.admin)
            .send()
            .await
            .unwrap(),
    )
    .await;
    (status, v)
}

#[tokio::test]
async fn resume_on_latest_revision_takes_a_fixed_failing_step() {
    let s = Server::start(&[]);
    assert_eq!(s.upload(V1).await, 1);
    let first = failed_run(&s).await;
    let second = failed_run(&s).await;
    let (first_id, second_id) = (
        first["id"].as_str().unwrap(),
        second["id"].as_str().unwrap(),
    );
    assert_eq!(s.upload(V2_FIXED).await, 2);

    // The default stays the run's own revision: it fails the same way.
    let (code, _, err) = sluice(&s.db, &["runs", "resume", first_id, "--json"]);
    assert_eq!(code, 1, "{err}");
    assert_eq!(s.run(first_id).await["status"], "failed");

    let (code, out, err) = sluice(
        &s.db,
        &["runs", "resume", first_id, "--revision", "latest", "--json"],
    );
    assert_eq!(code, 0, "{out}{err}");
    let outcome: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(outcome["status"], "succeeded");
    assert_eq!(outcome["output"], json!({"total": 20, "currency": "EUR"}));
    let run = s.run(first_id).await;
    assert_eq!(run["flow_revision"], 2);
    // The step that had run is kept, not run again.
    assert_eq!(
        step(&run, "fetch")["finished_at"],
        step(&first, "fetch")["finished_at"]
    );

    // The API does the same.
    let (status, answer) = rerun(&s, second_id, "?revision=latest").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert_eq!(answer["revision"], 2);
    let run = s.wait_run(second_id).await;
    assert_eq!(run["status"], "succeeded", "{run}");
    assert_eq!(run["output"], json!({"total": 20, "currency": "EUR"}));
    assert_eq!(run["flow_revision"], 2);
}

#[tokio::test]
async fn resume_on_latest_revision_refuses_a_changed_completed_step_naming_it() {
    let s = Server::start(&[]);
    s.upload(V1).await;
    let run = failed_run(&s).await;
    let id = run["id"].as_str().unwrap();
    assert_eq!(s.upload(V3_FETCH_CHANGED).await, 2);

    let (code, out, err) = sluice(&s.db, &["runs", "resume", id, "--revision", "latest"]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("these steps already ran and differ in it: fetch;"),
        "{err}"
    );
    assert!(err.contains("revision 2 of flow `invoice-total`"), "{err}");

    let (status, body) = rerun(&s, id, "?revision=latest").await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("differ in it: fetch;"), "{message}");
    assert!(!message.contains("convert"), "{message}");
    let (status, body) = rerun(&s, id, "?revision=newest").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // Refused means untouched: still failed, on its own revision.
    let after = s.run(id).await;
    assert_eq!(
        (&after["status"], &after["flow_revision"]),
        (&json!("failed"), &json!(1))
    );
}

/// Revision 1 waits long enough to be cancelled in `pause`.
const SLOW_V1: &str = r#"apiVersion: sluice/v1
id: nightly
triggers:
  - manual: {}
steps:
  - { id: start, set: { batch: 7 } }
  - { id: pause, needs: [start], wait: { duration: 20s } }
  - { id: finish, needs: [pause], set: "${{ steps.start.output.batch }}" }
"#;

#[tokio::test]
async fn a_cancelled_run_resumes_on_the_latest_revision() {
    let s = Server::start(&[]);
    s.upload(SLOW_V1).await;
    let (status, run, _) = json_of(
        client()
            .post(s.url("/v1/runs"))
            .bearer_auth(&s.admin)
            .json(&json!({"flow": "nightly"}))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{run}");
    let id = run["id"].as_str().unwrap().to_string();
    // Cancelled once `start` is done, inside `pause`.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while s.run(&id).await["steps"]
        .as_array()
        .is_none_or(|a| a.is_empty())
    {
        assert!(
            std::time::Instant::now() < deadline,
            "`start` never finished"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let (status, v, _) = json_of(
        client()
            .post(s.url(&format!("/v1/runs/{id}/cancel")))
            .bearer_auth(&s.admin)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{v}");
    assert_eq!(s.wait_run(&id).await["status"], "cancelled");

    // The pause that was cancelled is shortened; `start` ran and is unchanged.
    // A short lease renews (and reads the cancel flag) several times during
    // the pause: the old cancel request must not stop the resumed run.
    s.upload(&SLOW_V1.replace("20s", "800ms")).await;
    let o = std::process::Command::new(serve::BIN)
        .args(["runs", "resume", &id, "--revision", "latest", "--json"])
        .env("SLUICE_DB", &s.db)
        .env("SLUICE_RUN_LEASE", "300ms")
        .output()
        .unwrap();
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "{out}{err}");
    let outcome: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (&outcome["status"], &outcome["output"]),
        (&json!("succeeded"), &json!(7))
    );
    assert_eq!(s.run(&id).await["flow_revision"], 2);
}
