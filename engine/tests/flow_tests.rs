//! `sluice test`: flows tested like code with pinned connections and
//! plugins, in memory; `sluice runs export --as-test` turns a run into one.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(p)
}

fn sluice(args: &[&str], dir: &Path) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env(
            "SLUICE_DB",
            format!("sqlite://{}", dir.join("s.db").display()),
        )
        .env("NO_COLOR", "1")
        .env_remove("SLUICE_LOG")
        .output()
        .expect("sluice runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).to_string()
}

#[test]
fn shipped_flow_tests_pass() {
    let o = sluice(&["test", repo("flows").to_str().unwrap()], &repo("."));
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}{}",
        stdout(&o),
        String::from_utf8_lossy(&o.stderr)
    );
    let out = stdout(&o);
    assert!(out.contains("3 passed, 0 failed"), "{out}");
    assert!(out.contains("ok: ") && out.contains("only approved orders above the threshold alert"));
}

const FLOW: &str = r#"apiVersion: sluice/v1
id: tagger
inputs:
  threshold: { type: number, default: 100 }
steps:
  - id: orders
    read: { connection: erp, entity: purchase_order, filter: { status: approved } }
  - id: risky
    needs: [orders]
    for_each: "${{ steps.orders.output.records }}"
    plugin: { name: po-risk, version: "^1" }
    with: { po: "${{ item.number }}" }
  - id: tag
    needs: [orders, risky]
    for_each: "${{ steps.orders.output.records }}"
    if: "${{ item.total > inputs.threshold }}"
    write:
      connection: erp
      entity: purchase_order
      op: update
      id: "${{ item.remote_id }}"
      data: { custom_fields: { risk: "${{ steps.risky.output[index].risk }}" } }
  - id: tell
    needs: [tag]
    webhook: { event: po.tagged, payload: { count: "${{ steps.tag.output | select | list | length }}" } }
"#;

const TESTS: &str = r#"tests:
  - name: big orders are tagged with the plugin's risk and announced
    connections:
      erp:
        purchase_order:
          records:
            - { remote_id: "7", number: PO-7, vendor_id: V, status: approved, currency: EUR, total: 500, order_date: "2026-01-01" }
            - { remote_id: "8", number: PO-8, vendor_id: V, status: approved, currency: EUR, total: 50, order_date: "2026-01-01" }
            - { remote_id: "9", number: PO-9, vendor_id: V, status: draft, currency: EUR, total: 900, order_date: "2026-01-01" }
    plugins:
      po-risk: { output: { risk: 0.9 } }
    expect:
      steps: { orders: succeeded, risky: succeeded, tag: succeeded, tell: succeeded }
      writes:
        - { connection: erp, entity: purchase_order, op: update, id: "7", data: { custom_fields: { risk: 0.9 } } }
      events:
        - { type: po.tagged, data: { count: 1 } }
  - name: a wrong expectation fails with a diff
    connections:
      erp:
        purchase_order:
          records:
            - { remote_id: "7", number: PO-7, vendor_id: V, status: approved, currency: EUR, total: 500, order_date: "2026-01-01" }
    plugins:
      po-risk: { output: { risk: 0.5 } }
    expect:
      writes:
        - { connection: erp, entity: purchase_order, op: update, id: "7", data: { custom_fields: { risk: 0.9 } } }
      events:
        - { type: po.tagged, data: { count: 2 } }
"#;

#[test]
fn pinned_connections_and_plugins_check_writes_and_events_and_diff_failures() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tagger.yaml"), FLOW).unwrap();
    std::fs::write(dir.path().join("tagger.test.yaml"), TESTS).unwrap();
    let o = sluice(&["test"], dir.path());
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(
        out.contains("ok: ./tagger.test.yaml › big orders are tagged"),
        "{out}"
    );
    assert!(
        out.contains("FAIL: ./tagger.test.yaml › a wrong expectation fails with a diff"),
        "{out}"
    );
    assert!(
        out.contains(
            r#"writes: expected {"connection":"erp","entity":"purchase_order","op":"update","id":"7","data":{"custom_fields":{"risk":0.9}}}, not made"#
        ),
        "{out}"
    );
    assert!(out.contains(r#"writes: not expected, made {"connection":"erp","entity":"purchase_order","op":"update","id":"7","data":{"custom_fields":{"risk":0.5}}}"#), "{out}");
    assert!(
        out.contains(r#"events: expected {"type":"po.tagged","data":{"count":2}}, not made"#),
        "{out}"
    );
    assert!(out.trim_end().ends_with("1 passed, 1 failed"), "{out}");
    // No connection was touched: `erp` exists only as pinned data, and no
    // store was left behind.
    assert!(!dir.path().join("s.db").exists());
}

#[test]
fn a_test_naming_an_unpinned_connection_or_a_bad_record_says_so() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tagger.yaml"), FLOW).unwrap();
    std::fs::write(
        dir.path().join("tagger.test.yaml"),
        "tests:\n  - name: nothing pinned\n  - name: bad record\n    connections: { erp: { purchase_order: { records: [ { remote_id: \"1\", total: lots } ] } } }\n",
    )
    .unwrap();
    let o = sluice(&["test", "tagger.test.yaml"], dir.path());
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("the flow does not validate"), "{out}");
    assert!(out.contains("unknown connection `erp`"), "{out}");
    assert!(
        out.contains("connections.erp.purchase_order.records[0]: not a valid purchase_order"),
        "{out}"
    );
    let o = sluice(&["test", "nowhere"], dir.path());
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn a_run_exported_as_a_test_replays_green() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        repo("flows/overdue-work-orders.yaml"),
        dir.path().join("overdue-work-orders.yaml"),
    )
    .unwrap();
    let o = sluice(&["run", "overdue-work-orders.yaml", "--json"], dir.path());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let run: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let id = run["run_id"].as_str().unwrap();
    let o = sluice(
        &[
            "runs",
            "export",
            id,
            "--as-test",
            "-o",
            "overdue-work-orders.test.yaml",
        ],
        dir.path(),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = sluice(&["test", "overdue-work-orders.test.yaml"], dir.path());
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}");
    assert!(out.contains("1 passed, 0 failed"), "{out}");
    // The replay pins what the sandbox returned, so changing the data the
    // flow reads changes the outcome: the test is not a tautology.
    let text = std::fs::read_to_string(dir.path().join("overdue-work-orders.test.yaml")).unwrap();
    let edited = text.replacen("status: open", "status: completed", 1);
    assert_ne!(text, edited, "the export pins the records read");
    std::fs::write(dir.path().join("overdue-work-orders.test.yaml"), edited).unwrap();
    let o = sluice(&["test", "overdue-work-orders.test.yaml"], dir.path());
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
}
