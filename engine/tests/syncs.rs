//! Syncs against the Maximo and SAP emulators: first sync, incremental after changes,
//! full re-sync detecting a deletion, a 5xx burst resumed from its checkpoint,
//! a 429 storm, refused credentials, one sync at a time, and the events.

mod common;

use std::sync::Arc;

use serde_json::Value;
use sluice::connectors::ConnectionStatus;
use sluice::connectors::definition::Definitions;
use sluice::connectors::http::{ConnectionConfig, HttpConnector};
use sluice::connectors::resilience::{Health, Policy};
use sluice::store::{MessageFilter, Store};
use sluice::sync::{self, Mode, SyncError, SyncOptions};
use sluice::unified::Entity;
use sluice::webhooks::endpoints::{self, NewEndpoint};
use sluice::webhooks::ssrf::GuardPolicy;
use sluice_emulators::{Emulator, Fault, maximo, sap};

fn connector(emu: &Emulator, key: &str, policy: Policy) -> HttpConnector {
    let defs = Definitions::built_in();
    let config = ConnectionConfig {
        definition: "maximo".into(),
        params: [
            ("base_url".to_string(), emu.base_url.clone()),
            ("site".into(), "BEDFORD".into()),
        ]
        .into(),
        credentials: [("api_key".to_string(), "MX".to_string())].into(),
        rate_limit: None,
        policy,
        ..ConnectionConfig::default()
    };
    let health = Arc::new(Health::new("mx", policy, ConnectionStatus::Online, None));
    let key = key.to_string();
    HttpConnector::new(
        "mx",
        defs.get("maximo").unwrap().clone(),
        &config,
        &move |_| Some(key.clone()),
        health,
    )
    .unwrap()
}

fn fast() -> Policy {
    Policy {
        base_delay_ms: 5,
        max_delay_ms: 20,
        ..Policy::default()
    }
}

fn opts(mode: Mode) -> SyncOptions {
    SyncOptions {
        mode,
        page_size: 10,
        ..SyncOptions::default()
    }
}

async fn store_with_endpoint() -> (Store, tempfile::TempDir) {
    let (store, dir) = common::sqlite_store().await;
    endpoints::add(
        &store,
        &GuardPolicy::parse("127.0.0.1").unwrap(),
        NewEndpoint {
            url: "http://127.0.0.1:9/hooks".into(),
            secret: None,
            event_types: vec!["sync.*".into(), "record.*".into()],
            connection_id: None,
            description: None,
        },
    )
    .await
    .unwrap();
    (store, dir)
}

async fn events(store: &Store) -> Vec<(String, Value)> {
    let mut m = store
        .messages(&MessageFilter {
            endpoint_id: None,
            status: None,
            limit: 10_000,
        })
        .await
        .unwrap();
    m.reverse();
    m.into_iter()
        .map(|m| {
            let body: Value = serde_json::from_str(&m.body).unwrap();
            (m.event_type, body["data"].clone())
        })
        .collect()
}

#[tokio::test]
async fn incremental_and_full_syncs_track_changes_and_deletions() {
    let emu = maximo::start(30).await;
    emu.set_page_cap(10);
    let (store, _dir) = store_with_endpoint().await;
    let c = connector(&emu, maximo::API_KEY, fast());

    let r = sync::run(
        &store,
        &c,
        "mx",
        Entity::WorkOrder,
        &opts(Mode::Incremental),
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        (r.added, r.updated, r.unchanged, r.deleted, r.pages),
        (30, 0, 0, 0, 3)
    );
    assert_eq!(r.cursor.as_deref(), Some("2024-01-01T00:29:00.000Z"));
    assert!(
        emu.requests_to("/mxapiwo")[0].param("oslc.where").is_none(),
        "a first sync reads everything"
    );
    let state = store.sync_state("mx", "work_order").await.unwrap().unwrap();
    assert_eq!(state.state, "idle");
    assert_eq!(
        store
            .cached_records("mx", "work_order")
            .await
            .unwrap()
            .len(),
        30
    );

    // Three changes and one deletion upstream.
    for id in ["1003", "1010", "1020"] {
        assert!(emu.update(
            "mxapiwo",
            id,
            serde_json::json!({"description": format!("changed {id}")})
        ));
    }
    assert!(emu.delete("mxapiwo", "1007"));
    emu.clear_log();
    let r = sync::run(
        &store,
        &c,
        "mx",
        Entity::WorkOrder,
        &opts(Mode::Incremental),
        None,
    )
    .await
    .unwrap();
    assert_eq!((r.added, r.updated, r.deleted), (0, 3, 0), "{r:?}");
    assert_eq!(
        r.unchanged, 5,
        "only records changed after the cursor minus the lookback are read: 00:25..00:29 again"
    );
    let w = emu.requests_to("/mxapiwo")[0]
        .param("oslc.where")
        .unwrap()
        .to_string();
    assert_eq!(
        w, "changedate>\"2024-01-01T00:24:00Z\"",
        "cursor 00:29 minus the 5 min lookback"
    );

    let r = sync::run(&store, &c, "mx", Entity::WorkOrder, &opts(Mode::Full), None)
        .await
        .unwrap();
    assert_eq!(
        (r.added, r.updated, r.unchanged, r.deleted),
        (0, 0, 29, 1),
        "{r:?}"
    );
    let cached = store.cached_records("mx", "work_order").await.unwrap();
    let deleted: Vec<&String> = cached.iter().filter(|(_, d)| *d).map(|(r, _)| r).collect();
    assert_eq!(deleted.len(), 1);
    assert!(deleted[0].contains("\"remote_id\":\"1007\""));

    let ev = events(&store).await;
    let kinds = |k: &str| ev.iter().filter(|(t, _)| t == k).count();
    assert_eq!(kinds("record.created"), 30);
    assert_eq!(kinds("record.updated"), 3);
    assert_eq!(kinds("record.deleted"), 1);
    assert_eq!(kinds("sync.completed"), 3);
    let deleted_event = ev.iter().find(|(t, _)| t == "record.deleted").unwrap();
    assert_eq!(deleted_event.1["remote_id"], "1007");
    let updated = ev.iter().find(|(t, _)| t == "record.updated").unwrap();
    assert_eq!(updated.1["record"]["description"], "changed 1003");
    let completed = ev
        .iter()
        .rev()
        .find(|(t, _)| t == "sync.completed")
        .unwrap();
    assert_eq!(completed.1["mode"], "full");
    assert_eq!(completed.1["deleted"], 1);
    assert_eq!(completed.1["connection_id"], "mx");
    assert!(completed.1["duration_ms"].is_u64());
}

#[tokio::test]
async fn a_sync_cut_by_a_5xx_burst_resumes_from_its_checkpoint() {
    let emu = maximo::start(30).await;
    emu.set_page_cap(10);
    let (store, _dir) = store_with_endpoint().await;
    let c = connector(
        &emu,
        maximo::API_KEY,
        Policy {
            max_attempts: 2,
            failure_threshold: 100,
            ..fast()
        },
    );
    emu.inject([Fault::Pass, Fault::Status(503), Fault::Status(503)]);
    let e = sync::run(&store, &c, "mx", Entity::WorkOrder, &opts(Mode::Full), None)
        .await
        .unwrap_err();
    assert!(matches!(e, SyncError::Connector { pages: 1, .. }), "{e}");
    let state = store.sync_state("mx", "work_order").await.unwrap().unwrap();
    assert_eq!(state.state, "failed");
    assert!(state.last_error.unwrap().contains("503"));
    assert_eq!(state.cursor_ms, None, "the cursor advances only on success");
    assert_eq!(
        events(&store)
            .await
            .iter()
            .filter(|(t, _)| t == "sync.failed")
            .count(),
        1
    );

    emu.clear_log();
    let r = sync::run(&store, &c, "mx", Entity::WorkOrder, &opts(Mode::Full), None)
        .await
        .unwrap();
    assert!(r.resumed);
    assert_eq!(
        (r.added, r.pages),
        (30, 3),
        "counts carry over from the interrupted part"
    );
    let first = &emu.requests_to("/mxapiwo")[0];
    assert_eq!(
        first.param("pageno"),
        Some("2"),
        "resumed at page 2, not from zero"
    );
    let created = events(&store)
        .await
        .iter()
        .filter(|(t, _)| t == "record.created")
        .count();
    assert_eq!(created, 30, "no record announced twice");
}

#[tokio::test]
async fn a_429_storm_slows_a_sync_but_it_completes() {
    let emu = maximo::start(20).await;
    emu.set_page_cap(10);
    let (store, _dir) = store_with_endpoint().await;
    let c = connector(&emu, maximo::API_KEY, fast());
    emu.inject([
        Fault::Throttle("0".into()),
        Fault::Throttle("1".into()),
        Fault::Pass,
        Fault::Throttle("0".into()),
    ]);
    let t = std::time::Instant::now();
    let r = sync::run(
        &store,
        &c,
        "mx",
        Entity::WorkOrder,
        &opts(Mode::Incremental),
        None,
    )
    .await
    .unwrap();
    assert_eq!(r.added, 20);
    assert!(t.elapsed() >= std::time::Duration::from_secs(1));
    assert_eq!(emu.requests().len(), 5, "2 pages + 3 throttled attempts");
}

#[tokio::test]
async fn refused_credentials_fail_the_sync_cleanly_and_emit_sync_failed() {
    let emu = maximo::start(5).await;
    let (store, _dir) = store_with_endpoint().await;
    let c = connector(&emu, "revoked", fast());
    let e = sync::run(
        &store,
        &c,
        "mx",
        Entity::WorkOrder,
        &opts(Mode::Incremental),
        None,
    )
    .await
    .unwrap_err();
    let SyncError::Connector { source, pages } = &e else {
        panic!("{e}")
    };
    assert_eq!(*pages, 0);
    assert_eq!(source.code().as_str(), "AUTHENTICATION_FAILED");
    assert_eq!(c.health_state().status(), ConnectionStatus::AuthRequired);
    let ev = events(&store).await;
    let failed = ev
        .iter()
        .find(|(t, _)| t == "sync.failed")
        .expect("sync.failed");
    assert_eq!(failed.1["details"]["code"], "AUTHENTICATION_FAILED");
    assert!(
        store
            .cached_records("mx", "work_order")
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn one_sync_per_connection_and_entity_at_a_time() {
    let emu = maximo::start(5).await;
    emu.set_delay(std::time::Duration::from_millis(300));
    let (store, _dir) = common::sqlite_store().await;
    let c = Arc::new(connector(&emu, maximo::API_KEY, fast()));
    let (s2, c2) = (store.clone(), c.clone());
    let first = tokio::spawn(async move {
        sync::run(
            &s2,
            c2.as_ref(),
            "mx",
            Entity::WorkOrder,
            &opts(Mode::Incremental),
            None,
        )
        .await
    });
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let e = sync::run(
        &store,
        c.as_ref(),
        "mx",
        Entity::WorkOrder,
        &opts(Mode::Incremental),
        None,
    )
    .await
    .unwrap_err();
    assert!(matches!(e, SyncError::AlreadyRunning { .. }));
    assert!(e.to_string().contains("already running"), "{e}");
    assert_eq!(first.await.unwrap().unwrap().added, 5);
    // Another entity of the same connection is independent.
    assert!(
        sync::run(
            &store,
            c.as_ref(),
            "mx",
            Entity::Asset,
            &opts(Mode::Incremental),
            None
        )
        .await
        .is_ok()
    );
}

#[tokio::test]
async fn flows_read_synced_records_from_the_cache_while_the_system_is_offline() {
    let emu = maximo::start(24).await;
    let (store, _dir) = common::sqlite_store().await;
    let c: Arc<HttpConnector> = Arc::new(connector(&emu, maximo::API_KEY, fast()));
    sync::run(
        &store,
        c.as_ref(),
        "mx",
        Entity::WorkOrder,
        &opts(Mode::Full),
        None,
    )
    .await
    .unwrap();
    emu.delete("mxapiwo", "1005");
    sync::run(
        &store,
        c.as_ref(),
        "mx",
        Entity::WorkOrder,
        &opts(Mode::Full),
        None,
    )
    .await
    .unwrap();
    drop(emu); // the system goes away
    let engine = common::engine(
        store,
        vec![("mx", c as Arc<dyn sluice::connectors::Connector>)],
        vec![],
    );
    let flow = r#"
apiVersion: sluice/v1
id: done-work
steps:
  - id: done
    read:
      connection: mx
      entity: work_order
      from: cache
      filter: { status: completed }
  - id: page
    read:
      connection: mx
      entity: work_order
      from: cache
      limit: 10
      modified_after: "2024-01-01T00:03:00Z"
  - id: live
    needs: [done, page]
    on_error: continue
    read:
      connection: mx
      entity: work_order
output:
  completed: "${{ steps.done.output.records | map(attribute='remote_id') | list }}"
  page_count: "${{ steps.page.output.count }}"
  page_next: "${{ steps.page.output.next_cursor }}"
  first: "${{ steps.page.output.records[0].remote_id }}"
"#;
    let out = common::run(&engine, flow, serde_json::json!({})).await;
    assert_eq!(
        out.status,
        sluice::store::RunStatus::Succeeded,
        "{:?}",
        out.error
    );
    let o = out.output.unwrap();
    // COMP at i % 8 == 5, CLOSE at 6: 1005 was deleted upstream.
    assert_eq!(
        o["completed"],
        serde_json::json!(["1006", "1013", "1014", "1021", "1022"])
    );
    assert_eq!(o["page_count"], 10);
    assert_eq!(o["page_next"], "10");
    assert_eq!(o["first"], "1004");
}

#[tokio::test]
async fn a_flow_syncs_then_reads_the_cache() {
    let emu = maximo::start(12).await;
    let (store, _dir) = common::sqlite_store().await;
    let c: Arc<dyn sluice::connectors::Connector> =
        Arc::new(connector(&emu, maximo::API_KEY, fast()));
    let engine = common::engine(store.clone(), vec![("mx", c)], vec![]);
    let flow = r#"
apiVersion: sluice/v1
id: refresh-then-report
steps:
  - id: refresh
    sync: { connection: mx, entity: work_order, full: true }
  - id: urgent
    needs: [refresh]
    read: { connection: mx, entity: work_order, from: cache, filter: { priority: urgent } }
output:
  added: "${{ steps.refresh.output.added }}"
  mode: "${{ steps.refresh.output.mode }}"
  urgent: "${{ steps.urgent.output.count }}"
"#;
    let out = common::run(&engine, flow, serde_json::json!({})).await;
    assert_eq!(
        out.status,
        sluice::store::RunStatus::Succeeded,
        "{:?}",
        out.error
    );
    assert_eq!(
        out.output.unwrap(),
        serde_json::json!({"added": 12, "mode": "full", "urgent": 3})
    );
    let state = store.sync_state("mx", "work_order").await.unwrap().unwrap();
    assert_eq!(state.state, "idle");
    assert_eq!(state.mode.as_deref(), Some("full"));
}

#[tokio::test]
async fn syncs_and_connection_history_work_on_postgresql() {
    let Some(url) = common::postgres_url() else {
        eprintln!("skipped: SLUICE_TEST_POSTGRES_URL is not set");
        return;
    };
    let store = Store::connect(&url).await.unwrap();
    // The database is shared with other tests: a connection id of our own.
    let conn = format!("mx-{}", uuid::Uuid::now_v7().simple());
    let emu = maximo::start(25).await;
    emu.set_page_cap(10);
    let c = connector(&emu, maximo::API_KEY, fast());
    let r = sync::run(
        &store,
        &c,
        &conn,
        Entity::WorkOrder,
        &opts(Mode::Incremental),
        None,
    )
    .await
    .unwrap();
    assert_eq!((r.added, r.pages), (25, 3));
    emu.update("mxapiwo", "1001", serde_json::json!({"description": "pg"}));
    emu.delete("mxapiwo", "1002");
    let r = sync::run(
        &store,
        &c,
        &conn,
        Entity::WorkOrder,
        &opts(Mode::Full),
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        (r.added, r.updated, r.unchanged, r.deleted),
        (0, 1, 23, 1),
        "{r:?}"
    );
    let cached = store.cached_records(&conn, "work_order").await.unwrap();
    assert_eq!(cached.iter().filter(|(_, d)| *d).count(), 1);
    let state = store
        .sync_state(&conn, "work_order")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(state.state, "idle");

    // Connections and their status history.
    assert!(
        store
            .put_connection(&conn, "maximo", "{}", false)
            .await
            .unwrap()
    );
    assert!(
        !store
            .put_connection(&conn, "maximo", "{}", false)
            .await
            .unwrap()
    );
    store
        .record_status_change(&sluice::store::StatusEvent {
            connection_id: conn.clone(),
            from: "online".into(),
            to: "offline".into(),
            reason: "circuit open".into(),
            at: 1,
        })
        .await
        .unwrap();
    let h = store.status_history(&conn, 5).await.unwrap();
    assert_eq!(h.len(), 1);
    assert_eq!(
        store.connection(&conn).await.unwrap().unwrap().status,
        "offline"
    );
    assert!(store.remove_connection(&conn).await.unwrap());
}

#[tokio::test]
async fn sap_purchase_orders_sync_page_by_page_and_a_full_sync_finds_the_deleted_one() {
    let emu = sap::start(25, 3).await;
    // The service pages by ten (server-driven paging; no $top).
    emu.set_page_cap(10);
    let (store, _dir) = store_with_endpoint().await;
    let c = common::sap::connector("s4", &emu.base_url, fast());

    let r = sync::run(
        &store,
        &c,
        "s4",
        Entity::PurchaseOrder,
        &opts(Mode::Incremental),
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        (r.added, r.updated, r.unchanged, r.deleted, r.pages),
        (25, 0, 0, 0, 3),
        "{r:?}"
    );
    let first_pages = emu.requests_to("/A_PurchaseOrder");
    assert_eq!(first_pages.len(), 3, "three pages of ten, by $skiptoken");
    assert!(first_pages[0].param("$filter").is_none());
    let cached = store.cached_records("s4", "purchase_order").await.unwrap();
    assert_eq!(cached.len(), 25);
    let one: Value = cached
        .iter()
        .map(|(r, _)| serde_json::from_str::<Value>(r).unwrap())
        .find(|r| r["remote_id"] == "4500000004")
        .unwrap();
    assert_eq!(one["id"], "s4:4500000004");
    assert_eq!(one["lines"].as_array().unwrap().len(), 3);
    assert_eq!(one["custom_fields"]["YY1_ProjectCode_PDH"], "PRJ-004");

    // Two orders change and one is deleted upstream.
    for id in ["4500000003", "4500000017"] {
        assert!(emu.update(
            sap::POS,
            id,
            serde_json::json!({"YY1_ProjectCode_PDH": "CHANGED"})
        ));
    }
    assert!(emu.delete(sap::POS, "4500000009"));
    emu.clear_log();
    let r = sync::run(
        &store,
        &c,
        "s4",
        Entity::PurchaseOrder,
        &opts(Mode::Incremental),
        None,
    )
    .await
    .unwrap();
    assert_eq!((r.added, r.updated, r.deleted), (0, 2, 0), "{r:?}");
    let filter = emu.requests_to("/A_PurchaseOrder")[0]
        .param("$filter")
        .unwrap()
        .to_string();
    assert!(
        filter.starts_with("LastChangeDateTime gt datetimeoffset'"),
        "{filter}"
    );

    let r = sync::run(
        &store,
        &c,
        "s4",
        Entity::PurchaseOrder,
        &opts(Mode::Full),
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        (r.added, r.updated, r.unchanged, r.deleted),
        (0, 0, 24, 1),
        "{r:?}"
    );
    let cached = store.cached_records("s4", "purchase_order").await.unwrap();
    let deleted: Vec<&String> = cached.iter().filter(|(_, d)| *d).map(|(r, _)| r).collect();
    assert_eq!(deleted.len(), 1);
    assert!(deleted[0].contains("\"remote_id\":\"4500000009\""));
    let changed = cached
        .iter()
        .map(|(r, _)| serde_json::from_str::<Value>(r).unwrap())
        .find(|r| r["remote_id"] == "4500000017")
        .unwrap();
    assert_eq!(changed["custom_fields"]["YY1_ProjectCode_PDH"], "CHANGED");
}

#[tokio::test]
async fn a_sync_failing_three_times_in_a_row_raises_one_system_error() {
    let (store, _dir) = common::sqlite_store().await;
    endpoints::add(
        &store,
        &GuardPolicy::parse("127.0.0.1").unwrap(),
        NewEndpoint {
            url: "http://127.0.0.1:9/hooks".into(),
            event_types: vec!["system.error".into()],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    // An upstream that answers 503 to the next 5 lists.
    let c = common::FlakyConnector::new(5, sluice::connectors::ConnectorErrorKind::Transient);
    let errors = || async {
        events(&store)
            .await
            .into_iter()
            .filter(|(t, _)| t == "system.error")
            .map(|(_, d)| d)
            .collect::<Vec<_>>()
    };
    for n in 1..=4 {
        let r = sync::run(
            &store,
            c.as_ref(),
            "flaky",
            Entity::Vendor,
            &opts(Mode::Incremental),
            None,
        )
        .await;
        assert!(r.is_err(), "sync {n} fails");
        let seen = errors().await;
        match n {
            1 | 2 => assert!(seen.is_empty(), "after {n} failures: {seen:?}"),
            _ => assert_eq!(seen.len(), 1, "one alert per streak, after {n}: {seen:?}"),
        }
    }
    let e = &errors().await[0];
    assert_eq!(e["source"], "sync");
    assert_eq!(e["details"]["failures"], 3);
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .starts_with("the vendor sync of connection flaky failed 3 times in a row"),
        "{e}"
    );
    // A success resets the streak.
    sync::run(
        &store,
        c.as_ref(),
        "flaky",
        Entity::Vendor,
        &opts(Mode::Incremental),
        None,
    )
    .await
    .unwrap_err();
    sync::run(
        &store,
        c.as_ref(),
        "flaky",
        Entity::Vendor,
        &opts(Mode::Incremental),
        None,
    )
    .await
    .unwrap();
    assert_eq!(store.sync_failures("flaky", "vendor").await.unwrap(), 0);
}

#[tokio::test]
async fn a_flow_syncs_the_sandbox_and_reads_the_cache_with_no_system() {
    use sluice::connectors::sandbox::DATA;
    let (store, _dir) = store_with_endpoint().await;
    let engine = common::engine(store.clone(), vec![], vec![]);
    let flow = r#"
apiVersion: sluice/v1
id: sandbox-cache
steps:
  - id: first
    sync: { connection: sandbox, entity: work_order }
  - id: again
    needs: [first]
    sync: { connection: sandbox, entity: work_order }
  - id: cached
    needs: [again]
    read: { connection: sandbox, entity: work_order, from: cache, filter: { status: completed } }
output:
  first: "${{ steps.first.output }}"
  again: "${{ steps.again.output }}"
  cached: "${{ steps.cached.output.records }}"
"#;
    let out = common::run(&engine, flow, serde_json::json!({})).await;
    assert_eq!(
        out.status,
        sluice::store::RunStatus::Succeeded,
        "{:?}",
        out.error
    );
    let o = out.output.unwrap();
    let all = DATA.work_orders.len();
    assert_eq!(o["first"]["added"], all, "{o}");
    // The second sync is incremental from the newest record's timestamp:
    // it reads only what the lookback covers and changes nothing.
    assert_eq!(o["again"]["added"], 0, "{o}");
    assert_eq!(o["again"]["updated"], 0, "{o}");
    assert!(
        o["again"]["unchanged"].as_u64().unwrap() < all as u64,
        "{o}"
    );
    // The cache answers with the synced records, filtered.
    let completed: Vec<&str> = DATA
        .work_orders
        .iter()
        .filter(|w| w["status"] == "completed")
        .map(|w| w["remote_id"].as_str().unwrap())
        .collect();
    assert!(!completed.is_empty());
    let mut got: Vec<&str> = o["cached"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["remote_id"].as_str().unwrap())
        .collect();
    got.sort_unstable();
    let mut want = completed.clone();
    want.sort_unstable();
    assert_eq!(got, want);
    // Each sync announced itself with its counts.
    let done: Vec<Value> = events(&store)
        .await
        .into_iter()
        .filter(|(t, _)| t == "sync.completed")
        .map(|(_, d)| d)
        .collect();
    assert_eq!(done.len(), 2, "{done:?}");
    assert_eq!(done[0]["connection_id"], "sandbox");
    assert_eq!(done[0]["entity"], "work_order");
}
