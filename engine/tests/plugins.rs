//! WASM plugins: upload checks, the example plugins in flows, and hostile
//! plugins that each get their own clear error while the host stays healthy.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice::plugins::{CallError, Limits, PluginRegistry, RegistryError};
use sluice::store::RunStatus;

use common::{engine, run, sqlite_store};

fn wasm(name: &str) -> Vec<u8> {
    common::wasm::plugin_wasm(name)
}

async fn registry() -> (Arc<PluginRegistry>, sluice::store::Store, tempfile::TempDir) {
    let (store, dir) = sqlite_store().await;
    let reg = Arc::new(PluginRegistry::new(
        store.clone(),
        Some(dir.path().join("cache")),
    ));
    (reg, store, dir)
}

#[tokio::test(flavor = "multi_thread")]
async fn uploads_are_checked_and_versions_are_immutable() {
    let (reg, _store, _d) = registry().await;
    let po = wasm("po_risk");
    let rec = reg
        .push("po-risk", "1.0.0", &po, Some("PO risk"))
        .await
        .unwrap();
    assert_eq!(rec.size as usize, po.len());
    assert_eq!(
        reg.push("po-risk", "1.0.0", &po, None)
            .await
            .unwrap()
            .sha256,
        rec.sha256,
        "same bytes again: no-op"
    );
    let other = wasm("unit_convert");
    let e = reg
        .push("po-risk", "1.0.0", &other, None)
        .await
        .unwrap_err();
    assert!(matches!(e, RegistryError::Conflict { .. }), "{e}");
    assert!(e.to_string().contains("versions are immutable"));
    let e = reg
        .push("bad", "1.0.0", b"hello, not wasm", None)
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "plugin bad@1.0.0 refused: this is not WebAssembly (no component header)"
    );
    let core = b"\0asm\x01\0\0\0";
    let e = reg.push("core", "1.0.0", core, None).await.unwrap_err();
    assert!(
        e.to_string()
            .contains("a core WebAssembly module, not a component"),
        "{e}"
    );
    let e = reg
        .push("sockets", "1.0.0", &wasm("sockets"), None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("imports `wasi:sockets/"), "{e}");
    assert!(e.to_string().contains("not granted to plugins"), "{e}");
    let e = reg.push("Bad Name", "1.0.0", &po, None).await.unwrap_err();
    assert!(e.to_string().starts_with("invalid plugin name"), "{e}");
    let e = reg.push("po-risk", "one", &po, None).await.unwrap_err();
    assert!(e.to_string().starts_with("invalid version `one`"), "{e}");
    let e = reg
        .push("huge", "1.0.0", &vec![0u8; 17 << 20], None)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("the limit is 16777216"), "{e}");

    reg.push("po-risk", "1.2.0", &po, None).await.unwrap();
    reg.push("po-risk", "2.0.0", &po, None).await.unwrap();
    assert_eq!(
        reg.resolve("po-risk", "^1.0").await.unwrap().version,
        "1.2.0"
    );
    assert_eq!(reg.resolve("po-risk", "*").await.unwrap().version, "2.0.0");
    let e = reg.resolve("po-risk", "^3").await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "no version of `po-risk` matches `^3` (have 2.0.0, 1.2.0, 1.0.0)"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn example_plugins_run_in_flows() {
    let (reg, store, _d) = registry().await;
    reg.push("po-risk", "1.0.0", &wasm("po_risk"), None)
        .await
        .unwrap();
    reg.push("unit-convert", "1.0.0", &wasm("unit_convert"), None)
        .await
        .unwrap();
    reg.push("wo-priority", "1.0.0", &wasm("wo_priority"), None)
        .await
        .unwrap();
    let e = engine(store, vec![], vec![]).with_plugins(reg.clone());
    let out = run(&e, r#"
apiVersion: sluice/v1
id: plugin-flow
steps:
  - id: orders
    read: { connection: sandbox, entity: purchase_order, filter: { remote_id: ["4500000018", "4500000004"] } }
  - id: score
    needs: [orders]
    for_each: "${{ steps.orders.output.records }}"
    concurrency: 2
    plugin: { name: po-risk, version: "^1", config: { high_value: 10000 } }
    with: "${{ item }}"
  - id: convert
    plugin: { name: unit-convert, config: { to: { mass: LB } } }
    with: { lines: [{ quantity: 2, unit_of_measure: KG }, { quantity: 3, unit_of_measure: EA }] }
  - id: rank
    plugin: { name: wo-priority }
    with: { work_order: { number: WO-1, priority: high, status: open, due_date: "2026-01-01" }, asset: { status: down, criticality: urgent }, today: "2026-01-11" }
"#, json!({})).await;
    assert_eq!(out.status, RunStatus::Succeeded, "{:?}", out.error);
    let o = out.output.unwrap();
    let scores = o["score"].as_array().unwrap();
    let by_po: std::collections::HashMap<&str, &Value> = scores
        .iter()
        .map(|s| (s["po"].as_str().unwrap(), s))
        .collect();
    assert!(
        by_po["4500000018"]["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "vendor V-9999 is unknown"),
        "{scores:?}"
    );
    assert!(by_po["4500000004"]["risk"].as_f64().unwrap() > 0.2);
    assert_eq!(o["convert"]["lines"][0]["unit_of_measure"], "LB");
    assert!((o["convert"]["lines"][0]["quantity"].as_f64().unwrap() - 4.409245).abs() < 1e-5);
    assert_eq!(o["convert"]["converted"], 1);
    assert_eq!(o["rank"]["band"], "P1");
}

async fn misbehave(reg: &PluginRegistry, mode: &str, limits: &Limits) -> Result<Value, CallError> {
    reg.call("misbehave", "*", &json!(mode), &json!({}), limits)
        .await
        .unwrap()
        .map(|o| o.output)
}

#[tokio::test(flavor = "multi_thread")]
async fn hostile_plugins_get_their_own_errors_and_the_host_stays_healthy() {
    let (reg, _store, _d) = registry().await;
    reg.push("misbehave", "0.1.0", &wasm("misbehave"), None)
        .await
        .unwrap();
    let fast = Limits {
        timeout: Duration::from_millis(300),
        memory_bytes: 64 << 20,
        ..Limits::default()
    };
    assert_eq!(
        misbehave(&reg, "ok", &fast).await.unwrap(),
        json!({"ok": true})
    );

    let t0 = Instant::now();
    let e = misbehave(&reg, "spin", &fast).await.unwrap_err();
    assert_eq!(
        e,
        CallError::Timeout {
            plugin: "misbehave@0.1.0".into(),
            limit_ms: 300
        }
    );
    assert!(
        t0.elapsed() < Duration::from_secs(2),
        "the loop was interrupted promptly"
    );

    let e = misbehave(&reg, "memory", &fast).await.unwrap_err();
    assert!(
        matches!(e, CallError::MemoryLimitExceeded { limit_bytes, .. } if limit_bytes == 64 << 20),
        "{e}"
    );

    let e = misbehave(&reg, "recursion", &fast).await.unwrap_err();
    assert_eq!(
        e,
        CallError::StackOverflow {
            plugin: "misbehave@0.1.0".into()
        }
    );

    let e = misbehave(&reg, "panic", &fast).await.unwrap_err();
    match &e {
        CallError::PluginCrashed { trap, .. } => assert!(trap.contains("unreachable"), "{trap}"),
        other => panic!("expected a crash, got {other}"),
    }

    let e = misbehave(&reg, "not_json", &fast).await.unwrap_err();
    assert!(
        matches!(&e, CallError::InvalidOutput { reason, .. } if reason.starts_with("not JSON")),
        "{e}"
    );

    let big = Limits {
        memory_bytes: 512 << 20,
        timeout: Duration::from_secs(20),
        ..Limits::default()
    };
    let e = misbehave(&reg, "huge_output", &big).await.unwrap_err();
    assert!(
        matches!(&e, CallError::InvalidOutput { reason, .. } if reason.contains("the limit is 1048576")),
        "{e}"
    );

    let flood = reg
        .call("misbehave", "*", &json!("log_flood"), &json!({}), &big)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(flood.logs.len(), 100);
    assert_eq!(flood.logs_dropped, 99_900);
    assert!(flood.logs[0].1.len() <= 1024 + 3);

    let e = misbehave(&reg, "read_file", &fast).await.unwrap_err();
    assert!(
        matches!(&e, CallError::PluginError { code, .. } if code == "io"),
        "no filesystem is visible: {e}"
    );

    let e = misbehave(&reg, "error", &fast).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "plugin misbehave@0.1.0 failed: vendor_blocked: vendor V-1012 is blocked"
    );

    let budget = Limits {
        fuel: Some(1_000_000),
        ..fast.clone()
    };
    let e = misbehave(&reg, "spin", &budget).await.unwrap_err();
    assert_eq!(
        e,
        CallError::CpuBudgetExceeded {
            plugin: "misbehave@0.1.0".into(),
            fuel: 1_000_000
        }
    );

    let e = reg
        .call(
            "misbehave",
            "*",
            &json!("x".repeat(2 << 20)),
            &json!({}),
            &fast,
        )
        .await
        .unwrap()
        .unwrap_err();
    assert!(matches!(e, CallError::InputTooLarge { .. }), "{e}");

    // After all of that, a good call still works.
    assert_eq!(
        misbehave(&reg, "ok", &fast).await.unwrap(),
        json!({"ok": true})
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn no_call_sees_what_an_earlier_call_left_in_memory() {
    let (reg, _store, _d) = registry().await;
    reg.push("misbehave", "0.1.0", &wasm("misbehave"), None)
        .await
        .unwrap();
    let limits = Limits {
        memory_bytes: 64 << 20,
        ..Limits::default()
    };
    // Pooled slots are reused and reset between calls (only the pages a call
    // dirtied, where the kernel can tell): globals and heap start afresh,
    // also after a call that filled its memory.
    for mode in ["remember", "remember", "memory", "remember", "remember"] {
        let out = misbehave(&reg, mode, &limits).await;
        if mode == "remember" {
            assert_eq!(out.unwrap(), json!({"calls": 1, "seen_before": 0}));
        } else {
            assert!(
                matches!(out, Err(CallError::MemoryLimitExceeded { .. })),
                "{out:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_plugin_step_fails_the_run_with_the_plugin_error() {
    let (reg, store, _d) = registry().await;
    reg.push("misbehave", "0.1.0", &wasm("misbehave"), None)
        .await
        .unwrap();
    let e = engine(store, vec![], vec![]).with_plugins(reg.clone());
    let out = run(&e, "apiVersion: sluice/v1\nid: pf\nsteps:\n  - { id: p, plugin: { name: misbehave }, with: spin, timeout: 200ms }\n", json!({})).await;
    assert_eq!(out.status, RunStatus::Failed);
    assert_eq!(
        out.error.unwrap()["message"],
        "step `p`: plugin misbehave@0.1.0 timed out after 200 ms"
    );
    let catalog = e.catalog_with_plugins().await.unwrap();
    let err = sluice::flow::compile("x.yaml", "apiVersion: sluice/v1\nid: x\nsteps:\n  - { id: p, plugin: { name: misbehav, version: 'not-semver' } }\n  - { id: q, set: 1, with: 2 }\n", &catalog).unwrap_err();
    let codes: Vec<&str> = err.diagnostics.iter().map(|d| d.code).collect();
    assert!(
        codes.contains(&"invalid-version")
            && codes.contains(&"unknown-plugin")
            && codes.contains(&"misplaced-key"),
        "{codes:?}"
    );
    let unknown = err
        .diagnostics
        .iter()
        .find(|d| d.code == "unknown-plugin")
        .unwrap();
    assert_eq!(unknown.hint.as_deref(), Some("did you mean `misbehave`?"));
}
