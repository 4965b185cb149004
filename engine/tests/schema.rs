//! The published JSON Schema (`schema/flow.schema.json`, for editor
//! completion) is what `sluice schema` prints, and it matches the parser.

use sluice::flow::{self, Catalog};

fn repo(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(path)
}

#[test]
fn published_schema_matches_the_parser() {
    let published = std::fs::read_to_string(repo("schema/flow.schema.json"))
        .expect("schema/flow.schema.json exists");
    let published: serde_json::Value =
        serde_json::from_str(&published).expect("published schema is JSON");
    assert!(
        published == flow::json_schema(),
        "schema/flow.schema.json is stale: run `cargo run -q -- schema > schema/flow.schema.json`"
    );
}

#[test]
fn every_example_flow_validates() {
    let mut count = 0;
    for entry in std::fs::read_dir(repo("flows")).expect("flows/ exists") {
        let path = entry.expect("dir entry").path();
        if sluice::flow::is_flow_file(&path) {
            flow::compile_file(&path, &Catalog::default()).unwrap_or_else(|e| panic!("{e}"));
            count += 1;
        }
    }
    assert!(
        count >= 3,
        "expected at least three example flows, found {count}"
    );
}

/// A flow using every key of the format: the schema-driven shape check and
/// the serde parser must both accept it, and nothing may be lost on the way.
#[test]
fn a_flow_using_every_key_round_trips() {
    let yaml = r#"
apiVersion: sluice/v1
id: everything
description: uses every key
inputs:
  since: { type: string, default: "2026-01-01", required: false, description: start }
concurrency: { limit: 2, on_limit: cancel_oldest }
triggers:
  - schedule: "0 6 * * 1-5"
    timezone: Europe/Berlin
  - event: sync.completed
    connection: sandbox
    entity: purchase_order
  - webhook: { path: po/alerts, secret: "${{ secrets.HOOK }}" }
  - manual: {}
steps:
  - id: r
    description: read
    read:
      connection: sandbox
      entity: purchase_order
      filter: { status: approved }
      modified_after: "${{ inputs.since }}"
      limit: 10
      cursor: ""
  - id: s
    needs: [r]
    if: "${{ steps.r.output.count > 0 }}"
    for_each: "${{ steps.r.output.records }}"
    concurrency: 2
    retry: { max_attempts: 2, backoff: constant, initial: 1s, max: 2s, jitter: false }
    timeout: 5s
    on_error: continue
    select: { from: "${{ item }}", where: "$.lines[*]" }
  - id: w
    needs: [s]
    write: { connection: sandbox, entity: vendor, op: update, id: V-1001, data: { email: a@b.example } }
  - id: z
    needs: [w]
    wait: { duration: 1ms }
  - id: t
    needs: [z]
    set: { done: true }
  - id: child
    needs: [t]
    flow: { id: other, inputs: { done: "${{ steps.t.output.done }}" } }
output: "${{ steps.t.output }}"
on_failure: { flow: alert }
"#;
    let f = flow::compile("everything.yaml", yaml, &Catalog::default())
        .unwrap_or_else(|e| panic!("{e}"));
    let back = serde_json::to_value(&f.flow).expect("flow serializes");
    for key in [
        "apiVersion",
        "id",
        "description",
        "inputs",
        "concurrency",
        "triggers",
        "steps",
        "output",
        "on_failure",
    ] {
        assert!(back.get(key).is_some(), "`{key}` was lost");
    }
    let s = &back["steps"][1];
    for key in [
        "needs",
        "if",
        "for_each",
        "concurrency",
        "retry",
        "timeout",
        "on_error",
        "select",
    ] {
        assert!(s.get(key).is_some(), "step key `{key}` was lost");
    }
    assert_eq!(back["triggers"][0]["timezone"], "Europe/Berlin");
    assert_eq!(back["steps"][5]["flow"]["id"], "other");
    assert_eq!(back["on_failure"]["flow"], "alert");
}
