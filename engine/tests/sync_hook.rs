//! Synchronous inbound webhooks (`respond: output`) through a real
//! `sluice serve`: the partner gets the flow's answer (200, or 422 with
//! reasons), a failing flow answers 500 naming the run and step, a slow one
//! 202 with its run id, a replayed `webhook-id` the same answer without a
//! second run; a wrong `respond` config is refused at validation.

#[path = "common/serve.rs"]
mod serve;

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::{Value, json};
use serve::{Server, client, json_of, sluice};

/// Checks a posted purchase order and answers 200 or 422 with reasons.
const PO_INTAKE: &str = r#"apiVersion: sluice/v1
id: po-intake
triggers:
  - webhook:
      path: po
      respond: output
      respond_timeout: 10s
      body_schema:
        type: object
        required: [number, lines]
        properties:
          number: { type: string }
          lines:
            type: array
            items:
              type: object
              required: [qty, price]
              properties: { qty: { type: number }, price: { type: number } }
steps:
  - id: check
    set:
      reasons: "${{ (['the order has no lines'] if trigger.body.lines | length == 0 else []) + (['a line has a quantity of 0 or less'] if trigger.body.lines | selectattr('qty', 'le', 0) | list | length > 0 else []) }}"
      quantity: "${{ trigger.body.lines | map(attribute='qty') | sum }}"
output:
  status: "${{ 422 if steps.check.output.reasons else 200 }}"
  body: "${{ {'po': trigger.body.number, 'reasons': steps.check.output.reasons} if steps.check.output.reasons else {'po': trigger.body.number, 'accepted': true, 'quantity': steps.check.output.quantity} }}"
  headers: { x-po-number: "${{ trigger.body.number }}" }
"#;

/// Fails in its second step, answering `failure_status` (`{status}`).
fn failing(id: &str, failure_status: &str) -> String {
    format!(
        r#"apiVersion: sluice/v1
id: {id}
triggers:
  - webhook: {{ path: {id}, respond: output{failure_status} }}
steps:
  - {{ id: receive, set: "${{{{ trigger.body }}}}" }}
  - {{ id: divide, needs: [receive], set: "${{{{ 1 // 0 }}}}" }}
output:
  body: "${{{{ steps.divide.output }}}}"
"#
    )
}

/// Takes 1.5 s, and waits `timeout` for it.
fn slow(id: &str, timeout: &str) -> String {
    format!(
        r#"apiVersion: sluice/v1
id: {id}
triggers:
  - webhook: {{ path: {id}, respond: output, respond_timeout: {timeout} }}
steps:
  - {{ id: pause, wait: {{ duration: 1500ms }} }}
  - {{ id: done, needs: [pause], set: {{ ok: true, path: "${{{{ trigger.path }}}}" }} }}
output:
  status: 201
  body: "${{{{ steps.done.output }}}}"
"#
    )
}

async fn post_hook(
    s: &Server,
    path: &str,
    body: Value,
    webhook_id: Option<&str>,
) -> reqwest::Response {
    let mut req = client()
        .post(s.url(&format!("/v1/hooks/{path}")))
        .json(&body);
    if let Some(id) = webhook_id {
        req = req.header("webhook-id", id);
    }
    req.send().await.unwrap()
}

fn run_id_header(h: &reqwest::header::HeaderMap) -> String {
    h.get("sluice-run-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("no sluice-run-id header in {h:?}"))
        .to_string()
}

#[tokio::test]
async fn sync_hook_answers_200_with_the_computed_body_and_422_with_reasons() {
    let s = Server::start(&[("po.yaml", PO_INTAKE)]);
    let good =
        json!({"number": "PO-1001", "lines": [{"qty": 2, "price": 9.5}, {"qty": 3, "price": 1}]});
    let (status, body, headers) = json_of(post_hook(&s, "po", good, None).await).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({"po": "PO-1001", "accepted": true, "quantity": 5})
    );
    assert_eq!(headers["x-po-number"], "PO-1001");
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    // The run is durable, stored like any other.
    let run = s.run(&run_id_header(&headers)).await;
    assert_eq!(run["status"], "succeeded");
    assert_eq!(run["output"]["body"]["quantity"], 5);

    let bad = json!({"number": "PO-1002", "lines": [{"qty": 0, "price": 4}]});
    let (status, body, _) = json_of(post_hook(&s, "po", bad, None).await).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(
        body,
        json!({"po": "PO-1002", "reasons": ["a line has a quantity of 0 or less"]})
    );
    let empty = json!({"number": "PO-1003", "lines": []});
    let (status, body, _) = json_of(post_hook(&s, "po", empty, None).await).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["reasons"], json!(["the order has no lines"]));
    // A body that breaks the hook's schema is still refused before any run.
    let (status, body, _) = json_of(post_hook(&s, "po", json!({"number": 7}), None).await).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["error"]["code"], "VALIDATION_FAILED", "{body}");
    assert_eq!(s.runs_of("po-intake").await.len(), 3);
}

#[tokio::test]
async fn sync_hook_whose_flow_fails_answers_500_naming_run_and_step() {
    let s = Server::start(&[
        ("fragile.yaml", &failing("fragile", "")),
        (
            "fragile-502.yaml",
            &failing("fragile-502", ", failure_status: 502"),
        ),
    ]);
    let (status, body, headers) =
        json_of(post_hook(&s, "fragile", json!({"po": "PO-9"}), None).await).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    let error = &body["error"];
    assert_eq!(error["code"], "RUN_FAILED");
    let run_id = error["details"]["run_id"].as_str().unwrap().to_string();
    assert_eq!(run_id, run_id_header(&headers));
    assert_eq!(error["details"]["step"], "divide");
    assert_eq!(error["details"]["run_status"], "failed");
    assert_eq!(
        error["message"],
        format!("run {run_id} failed at step `divide`")
    );
    assert_eq!(
        error["request_id"].as_str(),
        headers["x-request-id"].to_str().ok()
    );
    // The step's own error text stays in the run, not in the partner's answer.
    let run = s.run(&run_id).await;
    assert_eq!(run["status"], "failed");
    let stored = run["error"]["message"].as_str().unwrap();
    assert!(!body.to_string().contains(stored), "{body} quotes {stored}");

    let (status, body, _) =
        json_of(post_hook(&s, "fragile-502", json!({"po": "PO-10"}), None).await).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(body["error"]["details"]["step"], "divide");
}

#[tokio::test]
async fn sync_hook_slower_than_respond_timeout_answers_202_and_the_run_succeeds_later() {
    let s = Server::start(&[("slow.yaml", &slow("slow", "1s"))]);
    let t0 = Instant::now();
    let (status, body, _) = json_of(post_hook(&s, "slow", json!({}), None).await).await;
    let waited = t0.elapsed();
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_millis(1450),
        "answered after {waited:?}, not at the 1 s respond_timeout"
    );
    let run_id = body["run_id"].as_str().unwrap().to_string();
    assert_eq!(body["duplicate"], false);
    assert_eq!(s.run(&run_id).await["status"], "running");
    let run = s.wait_run(&run_id).await;
    assert_eq!(run["status"], "succeeded");
    assert_eq!(run["output"]["body"], json!({"ok": true, "path": "slow"}));
}

#[tokio::test]
async fn replayed_webhook_id_gets_the_same_answer_and_starts_no_second_run() {
    let s = Server::start(&[
        ("po.yaml", PO_INTAKE),
        ("slow.yaml", &slow("slow", "1s")),
        ("slow-patient.yaml", &slow("slow-patient", "10s")),
        ("fragile.yaml", &failing("fragile", "")),
    ]);
    let po = json!({"number": "PO-2001", "lines": [{"qty": 4, "price": 2}]});
    let first = json_of(post_hook(&s, "po", po.clone(), Some("msg_po_1")).await).await;
    let again = json_of(post_hook(&s, "po", po, Some("msg_po_1")).await).await;
    assert_eq!(
        (first.0, &first.1),
        (
            StatusCode::OK,
            &json!({"po": "PO-2001", "accepted": true, "quantity": 4})
        )
    );
    assert_eq!((again.0, &again.1), (first.0, &first.1));
    assert_eq!(run_id_header(&again.2), run_id_header(&first.2));
    assert_eq!(s.runs_of("po-intake").await.len(), 1);

    // A failed run's replay answers the same failure.
    let first = json_of(post_hook(&s, "fragile", json!({}), Some("msg_f_1")).await).await;
    let again = json_of(post_hook(&s, "fragile", json!({}), Some("msg_f_1")).await).await;
    assert_eq!(first.0, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(again.0, first.0);
    assert_eq!(again.1["error"]["details"], first.1["error"]["details"]);
    assert_eq!(s.runs_of("fragile").await.len(), 1);

    // A replay while the first delivery still waits: woken by the run's end,
    // both get the flow's answer.
    let (a, b) = tokio::join!(
        async {
            let r = json_of(post_hook(&s, "slow-patient", json!({}), Some("msg_s_1")).await).await;
            (r, Instant::now())
        },
        async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let r = json_of(post_hook(&s, "slow-patient", json!({}), Some("msg_s_1")).await).await;
            (r, Instant::now())
        }
    );
    let ((a, a_end), (b, b_end)) = (a, b);
    assert_eq!(a.0, StatusCode::CREATED, "{}", a.1);
    assert_eq!((b.0, &b.1), (a.0, &a.1));
    assert_eq!(a.1, json!({"ok": true, "path": "slow-patient"}));
    // Woken by the run's end, not by the once-a-second re-read of the store.
    let apart = b_end.max(a_end) - b_end.min(a_end);
    assert!(
        apart < Duration::from_millis(500),
        "the replay answered {apart:?} after the first"
    );
    assert_eq!(run_id_header(&b.2), run_id_header(&a.2));

    // A replay after a 202 (the run went on) gets the finished run's answer.
    let (status, accepted, _) =
        json_of(post_hook(&s, "slow", json!({}), Some("msg_s_2")).await).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    s.wait_run(accepted["run_id"].as_str().unwrap()).await;
    let (status, body, headers) =
        json_of(post_hook(&s, "slow", json!({}), Some("msg_s_2")).await).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body, json!({"ok": true, "path": "slow"}));
    assert_eq!(
        run_id_header(&headers),
        accepted["run_id"].as_str().unwrap()
    );
    assert_eq!(s.runs_of("slow").await.len(), 1);
}

/// `sluice validate` on one flow; returns (exit code, stdout + stderr).
fn validate(yaml: &str) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hook.yaml");
    std::fs::write(&file, yaml).unwrap();
    let db = format!("sqlite://{}/sluice.db", dir.path().display());
    let (code, out, err) = sluice(&db, &["validate", file.to_str().unwrap()]);
    (code, format!("{out}{err}"))
}

#[test]
fn invalid_respond_config_fails_validation_with_the_place_named() {
    let flow = |webhook: &str, output: &str| {
        format!(
            "apiVersion: sluice/v1\nid: hook\ntriggers:\n  - webhook: {webhook}\nsteps:\n  - {{ id: a, set: 1 }}\n{output}"
        )
    };
    let cases = [
        // An unknown mode.
        (
            flow("{ path: h, respond: sync }", "output: { body: 1 }\n"),
            "hook.yaml:4:34",
            "unknown value `sync`",
        ),
        // Longer than the cap.
        (
            flow(
                "{ path: h, respond: output, respond_timeout: 10m }",
                "output: { body: 1 }\n",
            ),
            "hook.yaml:4:59",
            "at most 5m",
        ),
        // Not a duration.
        (
            flow(
                "{ path: h, respond: output, respond_timeout: soon }",
                "output: { body: 1 }\n",
            ),
            "hook.yaml:4:59",
            "invalid duration `soon`",
        ),
        // A timeout without waiting.
        (
            flow("{ path: h, respond_timeout: 5s }", ""),
            "hook.yaml:4:42",
            "applies only to `respond: output`",
        ),
        (
            flow(
                "{ path: h, respond: output, failure_status: 200 }",
                "output: { body: 1 }\n",
            ),
            "hook.yaml:4:58",
            "the minimum is 400",
        ),
        // Nothing to answer with.
        (
            flow("{ path: h, respond: output }", ""),
            "hook.yaml:4:34",
            "this flow has none",
        ),
        // An output that is not a response.
        (
            flow(
                "{ path: h, respond: output }",
                "output: { status: 200, result: 1 }\n",
            ),
            "hook.yaml:7:32",
            "unknown key `result` in a webhook response",
        ),
        (
            flow("{ path: h, respond: output }", "output: { status: 700 }\n"),
            "hook.yaml:7:19",
            "integer 100 to 599",
        ),
    ];
    for (yaml, place, says) in cases {
        let (code, out) = validate(&yaml);
        assert_eq!(code, 2, "{yaml}\n{out}");
        assert!(out.contains(place), "{yaml}\nexpected {place} in:\n{out}");
        assert!(out.contains(says), "{yaml}\nexpected `{says}` in:\n{out}");
    }
    let (code, out) = validate(&flow(
        "{ path: h, respond: output, respond_timeout: 5s, failure_status: 503 }",
        "output: { status: 201, body: \"${{ steps.a.output }}\" }\n",
    ));
    assert_eq!(code, 0, "{out}");
}
