//! Declarative connectors against the emulators in `tests/emulators`: each
//! built-in definition read (and written) through the engine, field by field,
//! with the requests it made; resilience (429, 5xx, circuit breaker, rate
//! limit, timeouts, credentials); and bad input (definitions and pages).

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice::connectors::connection::{self, StoreSink};
use sluice::connectors::definition::{self, Definitions};
use sluice::connectors::http::{ConnectionConfig, HttpConnector};
use sluice::connectors::resilience::{Health, Policy, StatusChange, StatusSink};
use sluice::connectors::{ConnectionStatus, Connector, ListQuery};
use sluice::run::Engine;
use sluice::store::RunStatus;
use sluice::unified::Entity;
use sluice_emulators::{Emulator, Fault, business_central as bc, maximo, netsuite, sap};

/// Remembers status changes.
#[derive(Default)]
struct Changes(Mutex<Vec<StatusChange>>);

impl StatusSink for Changes {
    fn changed(&self, change: StatusChange) {
        self.0.lock().unwrap().push(change);
    }
}

impl Changes {
    fn statuses(&self) -> Vec<ConnectionStatus> {
        self.0.lock().unwrap().iter().map(|c| c.to).collect()
    }
}

fn fast_policy() -> Policy {
    Policy {
        base_delay_ms: 5,
        max_delay_ms: 20,
        ..Policy::default()
    }
}

struct Conn {
    connector: Arc<HttpConnector>,
    changes: Arc<Changes>,
}

fn connect_with(
    id: &str,
    defs: &Definitions,
    def: &str,
    params: &[(&str, &str)],
    creds: &[(&str, &str)],
    policy: Policy,
) -> Conn {
    let config = ConnectionConfig {
        definition: def.into(),
        params: params
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        credentials: creds
            .iter()
            .map(|(k, _)| {
                (
                    k.to_string(),
                    format!("{}_{}", id.to_uppercase(), k.to_uppercase()),
                )
            })
            .collect(),
        rate_limit: None,
        policy,
        ..ConnectionConfig::default()
    };
    let values: Vec<(String, String)> = creds
        .iter()
        .map(|(k, v)| {
            (
                format!("{}_{}", id.to_uppercase(), k.to_uppercase()),
                v.to_string(),
            )
        })
        .collect();
    let changes = Arc::new(Changes::default());
    let health = Arc::new(Health::new(
        id,
        policy,
        ConnectionStatus::Online,
        Some(changes.clone() as Arc<dyn StatusSink>),
    ));
    let connector = HttpConnector::new(
        id,
        defs.get(def).expect("definition").clone(),
        &config,
        &|name| {
            values
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        },
        health,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    Conn {
        connector: Arc::new(connector),
        changes,
    }
}

fn sap_conn(emu: &Emulator, password: &str, policy: Policy) -> Conn {
    connect_with(
        "sap",
        &Definitions::built_in(),
        "sap_s4hana",
        &[("base_url", &emu.base_url)],
        &[("username", sap::USER), ("password", password)],
        policy,
    )
}

async fn engine_with(conns: &[(&str, &Conn)]) -> (Engine, tempfile::TempDir) {
    let (store, dir) = common::sqlite_store().await;
    let extra = conns
        .iter()
        .map(|(n, c)| (*n, c.connector.clone() as Arc<dyn Connector>))
        .collect();
    (common::engine(store, extra, vec![]), dir)
}

fn read_flow(connection: &str, entity: &str, extra: &str) -> String {
    format!(
        r#"
apiVersion: sluice/v1
id: read-{entity}
steps:
  - id: read
    read:
      connection: {connection}
      entity: {entity}
{extra}
output: "${{{{ steps.read.output }}}}"
"#
    )
}

async fn read_all(engine: &Engine, connection: &str, entity: &str, extra: &str) -> Value {
    let out = common::run(engine, &read_flow(connection, entity, extra), json!({})).await;
    assert_eq!(out.status, RunStatus::Succeeded, "{:?}", out.error);
    out.output.expect("output")
}

async fn read_error(engine: &Engine, connection: &str, entity: &str, extra: &str) -> Value {
    let out = common::run(engine, &read_flow(connection, entity, extra), json!({})).await;
    assert_eq!(out.status, RunStatus::Failed, "{:?}", out.output);
    out.error.expect("error")
}

#[tokio::test]
async fn sap_purchase_orders_map_field_by_field_across_server_driven_pages() {
    let emu = sap::start(25, 2).await;
    emu.set_page_cap(10);
    let c = sap_conn(&emu, sap::PASSWORD, fast_policy());
    let (engine, _dir) = engine_with(&[("sap", &c)]).await;

    let out = read_all(&engine, "sap", "purchase_order", "").await;
    assert_eq!(out["count"], 25);
    let reqs = emu.requests_to("/A_PurchaseOrder");
    assert_eq!(reqs.len(), 3, "25 records at 10 per page");
    assert_eq!(reqs[0].param("$expand"), Some("to_PurchaseOrderItem"));
    assert_eq!(reqs[0].param("$format"), Some("json"));
    assert_eq!(
        reqs[0].param("$top"),
        None,
        "$top caps the whole result in OData; the service pages by itself"
    );
    assert_eq!(reqs[0].param("$skiptoken"), None);
    assert_eq!(reqs[1].param("$skiptoken"), Some("10"));
    assert_eq!(reqs[2].param("$skiptoken"), Some("20"));
    assert_eq!(reqs[0].header("sap-client"), Some("100"));
    assert!(
        reqs[0]
            .header("authorization")
            .unwrap()
            .starts_with("Basic ")
    );

    let po = &out["records"][0];
    assert_eq!(po["id"], "sap:4500000000");
    assert_eq!(po["connection_id"], "sap");
    assert_eq!(po["remote_id"], "4500000000");
    assert_eq!(po["number"], "4500000000");
    assert_eq!(po["vendor_id"], "100001");
    assert_eq!(po["status"], "draft");
    assert_eq!(po["remote_status"], "01");
    assert_eq!(po["currency"], "USD");
    assert_eq!(po["order_date"], "2024-01-01");
    assert_eq!(po["buyer"], "JSMITH");
    assert_eq!(po["remote_created_at"], "2024-01-01T00:00:00Z");
    assert_eq!(po["remote_updated_at"], "2024-01-01T00:00:00Z");
    assert_eq!(po["remote_was_deleted"], false);
    assert_eq!(
        po["lines"],
        json!([
            {"line_number": 10, "item_id": "MAT-1001", "description": "Ball bearing 6204-2RS",
             "quantity": 5, "unit_of_measure": "EA", "unit_price": 4.85, "amount": 24.25, "received_quantity": 0},
            {"line_number": 20, "item_id": "MAT-1002", "description": "Hydraulic hose 1/2in",
             "quantity": 10, "unit_of_measure": "M", "unit_price": 12.4, "amount": 124, "received_quantity": 0},
        ])
    );
    assert_eq!(po["total"], 148.25);
    assert_eq!(
        po["custom_fields"],
        json!({"YY1_ProjectCode_PDH": "PRJ-000", "YY1_Urgent_PDH": true})
    );
    assert!(po.get("raw").is_none(), "raw only when asked for");
    let statuses: Vec<&str> = out["records"]
        .as_array()
        .unwrap()
        .iter()
        .take(6)
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        [
            "draft",
            "pending_approval",
            "pending_approval",
            "approved",
            "approved",
            "cancelled"
        ]
    );

    // Incremental: only records changed after the instant, with SAP's filter syntax.
    emu.clear_log();
    let out = read_all(
        &engine,
        "sap",
        "purchase_order",
        "      modified_after: \"2024-01-01T00:10:00Z\"\n      raw: true",
    )
    .await;
    assert_eq!(out["count"], 14, "records 11..24 changed after minute 10");
    let reqs = emu.requests_to("/A_PurchaseOrder");
    assert_eq!(
        reqs[0].param("$filter"),
        Some("LastChangeDateTime gt datetimeoffset'2024-01-01T00:10:00Z'")
    );
    assert_eq!(
        reqs[1].param("$filter"),
        reqs[0].param("$filter"),
        "the next link keeps the filter"
    );
    assert_eq!(out["records"][0]["raw"]["PurchaseOrder"], "4500000011");

    // Filters on unified fields apply to what the system returns.
    let out = read_all(
        &engine,
        "sap",
        "purchase_order",
        "      filter: { status: approved }",
    )
    .await;
    assert_eq!(out["count"], 8);

    // get by id
    let one = c
        .connector
        .get(Entity::PurchaseOrder, "4500000003")
        .await
        .unwrap();
    assert_eq!(one["status"], "approved");
    assert_eq!(one["lines"].as_array().unwrap().len(), 2);
    let missing = c
        .connector
        .get(Entity::PurchaseOrder, "4599999999")
        .await
        .unwrap_err();
    assert_eq!(missing.code().as_str(), "NOT_FOUND");
    assert!(
        missing
            .message
            .contains("Purchase order 4599999999 does not exist"),
        "{}",
        missing.message
    );
}

#[tokio::test]
async fn sap_create_fetches_a_csrf_token_and_sends_decimals_as_strings() {
    let emu = sap::start(3, 1).await;
    let c = sap_conn(&emu, sap::PASSWORD, fast_policy());
    let (engine, _dir) = engine_with(&[("sap", &c)]).await;
    let flow = r#"
apiVersion: sluice/v1
id: create-po
steps:
  - id: create
    write:
      connection: sap
      entity: purchase_order
      op: create
      data:
        vendor_id: "100002"
        currency: EUR
        lines:
          - { line_number: 1, item_id: MAT-1005, description: Pump seal kit, quantity: 2, unit_of_measure: EA, unit_price: 142.5, amount: 285 }
output: "${{ steps.create.output }}"
"#;
    let out = common::run(&engine, flow, json!({})).await;
    assert_eq!(out.status, RunStatus::Succeeded, "{:?}", out.error);
    let rec = out.output.unwrap();
    assert!(rec["remote_id"].as_str().unwrap().starts_with("46"));
    assert_eq!(rec["status"], "draft");
    assert_eq!(rec["vendor_id"], "100002");
    assert_eq!(rec["lines"][0]["unit_price"], 142.5);
    assert_eq!(rec["total"], 285.0);

    let log = emu.requests();
    let fetch = log
        .iter()
        .find(|r| r.header("x-csrf-token") == Some("Fetch"))
        .expect("a CSRF fetch");
    assert_eq!(fetch.method, "GET");
    assert_eq!(
        fetch.header("sap-client"),
        Some("100"),
        "the CSRF fetch logs on to the same client as the POST"
    );
    let post = log.iter().find(|r| r.method == "POST").expect("the create");
    assert!(post.header("x-csrf-token").unwrap().starts_with("csrf-"));
    assert!(
        post.header("cookie")
            .unwrap()
            .contains("SAP_SESSIONID_S4H_100=")
    );
    let body: Value = serde_json::from_str(&post.body).unwrap();
    let item = &body["to_PurchaseOrderItem"]["results"][0];
    assert_eq!(
        item["NetPriceAmount"], "142.5",
        "Edm.Decimal sent as a string"
    );
    assert_eq!(item["OrderQuantity"], "2");
    assert_eq!(
        item["PurchaseOrderItem"], "1",
        "line 1 is item 1: read back as line 1"
    );
    assert_eq!(item["NetPriceQuantity"], "1", "unit_price is per one unit");
    assert_eq!(body["CompanyCode"], "1010");

    // A supplier SAP does not know: VALIDATION_FAILED with SAP's own message.
    let bad = flow
        .replace("\"100002\"", "\"999999\"")
        .replace("create-po", "bad-po");
    let out = common::run(&engine, &bad, json!({})).await;
    assert_eq!(out.status, RunStatus::Failed);
    let err = out.error.unwrap();
    assert_eq!(err["details"]["code"], "VALIDATION_FAILED", "{err}");
    assert_eq!(err["details"]["upstream_status"], 400);
    assert_eq!(err["details"]["operation"], "create");
    assert!(
        err["message"]
            .as_str()
            .unwrap()
            .contains("Supplier 999999 does not exist"),
        "{err}"
    );
}

fn netsuite_conn(emu: &Emulator, secret: &str) -> Conn {
    connect_with(
        "ns",
        &Definitions::built_in(),
        "netsuite",
        &[("base_url", &emu.base_url)],
        &[
            ("client_id", netsuite::CLIENT_ID),
            ("client_secret", secret),
        ],
        fast_policy(),
    )
}

#[tokio::test]
async fn netsuite_lists_ids_then_fetches_each_record_with_one_cached_token() {
    let emu = netsuite::start(7, 2).await;
    emu.set_page_cap(3);
    let c = netsuite_conn(&emu, netsuite::CLIENT_SECRET);
    let (engine, _dir) = engine_with(&[("ns", &c)]).await;
    let out = read_all(&engine, "ns", "purchase_order", "").await;
    assert_eq!(out["count"], 7);
    let lists = emu.requests_to("/record/v1/purchaseOrder");
    assert_eq!(lists.len(), 3, "offset paging: 3 + 3 + 1");
    assert_eq!(
        lists
            .iter()
            .map(|r| r.param("offset").unwrap())
            .collect::<Vec<_>>(),
        ["0", "3", "6"]
    );
    let details: Vec<_> = emu
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("/purchaseOrder/"))
        .collect();
    assert_eq!(details.len(), 7, "one detail fetch per record");
    assert_eq!(details[0].param("expandSubResources"), Some("true"));
    assert_eq!(emu.token_requests(), 1);
    assert!(
        details[0]
            .header("authorization")
            .unwrap()
            .starts_with("Bearer tok-")
    );

    let po = &out["records"][0];
    assert_eq!(po["remote_id"], "9000");
    assert_eq!(po["number"], "PO001000");
    assert_eq!(po["vendor_id"], "100001");
    assert_eq!(po["vendor_name"], "Acme Industrial Supply");
    assert_eq!(po["status"], "pending_approval");
    assert_eq!(po["remote_status"], "Pending Supervisor Approval");
    assert_eq!(po["currency"], "USD");
    assert_eq!(po["order_date"], "2024-01-01");
    assert_eq!(po["expected_date"], "2024-01-15");
    assert_eq!(po["buyer"], "Dana Buyer");
    assert_eq!(po["remote_created_at"], "2023-12-31T23:00:00Z");
    assert_eq!(po["total"], 59.3);
    assert_eq!(po["lines"][1]["quantity"], 4.0);
    assert_eq!(po["lines"][1]["unit_price"], 12.4);
    assert_eq!(po["lines"][1]["amount"], 49.6);
    assert_eq!(
        po["custom_fields"],
        json!({"custbody_approval_route": "standard", "custbody_plant": "PL00"})
    );
    assert_eq!(out["records"][2]["status"], "partially_received");
    assert_eq!(out["records"][2]["lines"][0]["received_quantity"], 2.0);

    // Vendors, with the same token; incremental query in NetSuite's syntax.
    emu.clear_log();
    let v = read_all(
        &engine,
        "ns",
        "vendor",
        "      modified_after: \"2024-01-01T00:00:30Z\"",
    )
    .await;
    assert_eq!(v["count"], 5);
    assert_eq!(
        emu.requests_to("/record/v1/vendor")[0].param("q"),
        Some("lastModifiedDate AFTER \"2024-01-01T00:00:30Z\"")
    );
    assert_eq!(v["records"][4]["status"], "inactive");
    assert_eq!(v["records"][0]["payment_terms"], "Net 30");
    assert_eq!(
        v["records"][0]["custom_fields"],
        json!({"custentity_supplier_tier": "B"})
    );
    assert_eq!(emu.token_requests(), 1, "the token is cached");
}

#[tokio::test]
async fn an_oauth_token_is_refreshed_before_it_expires() {
    let emu = netsuite::start(2, 1).await;
    // 61 s tokens refreshed 60 s early: each is good for one second.
    emu.set_token_ttl(61);
    let c = netsuite_conn(&emu, netsuite::CLIENT_SECRET);
    let q = ListQuery::default();
    c.connector.list(Entity::Vendor, &q).await.unwrap();
    c.connector.list(Entity::Vendor, &q).await.unwrap();
    assert_eq!(emu.token_requests(), 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    c.connector.list(Entity::Vendor, &q).await.unwrap();
    assert_eq!(
        emu.token_requests(),
        2,
        "refreshed before expiry, no 401 seen"
    );
    assert!(
        emu.requests()
            .iter()
            .all(|r| !r.path.contains("record") || r.header("authorization").is_some())
    );
}

#[tokio::test]
async fn rejected_client_credentials_fail_cleanly_and_mark_the_connection_auth_required() {
    let emu = netsuite::start(2, 1).await;
    let c = netsuite_conn(&emu, "wrong-secret");
    let (engine, _dir) = engine_with(&[("ns", &c)]).await;
    let err = read_error(&engine, "ns", "purchase_order", "").await;
    assert_eq!(err["details"]["code"], "AUTHENTICATION_FAILED", "{err}");
    assert_eq!(err["details"]["connection_id"], "ns");
    assert_eq!(err["retryable"], false);
    assert!(
        !err.to_string().contains("wrong-secret"),
        "credentials never appear in errors: {err}"
    );
    assert_eq!(c.connector.health().await, ConnectionStatus::AuthRequired);
    assert_eq!(c.changes.statuses(), [ConnectionStatus::AuthRequired]);
    assert!(emu.requests_to("/record/v1/purchaseOrder").is_empty());
}

fn bc_conn(emu: &Emulator) -> Conn {
    connect_with(
        "bc",
        &Definitions::built_in(),
        "business_central",
        &[
            ("base_url", &emu.base_url),
            ("tenant", bc::TENANT),
            ("company_id", bc::COMPANY),
            ("login_url", &emu.base_url),
        ],
        &[
            ("client_id", bc::CLIENT_ID),
            ("client_secret", bc::CLIENT_SECRET),
        ],
        fast_policy(),
    )
}

#[tokio::test]
async fn business_central_reads_creates_and_updates_purchase_orders() {
    let emu = bc::start(9, 2).await;
    emu.set_page_cap(4);
    let c = bc_conn(&emu);
    let (engine, _dir) = engine_with(&[("bc", &c)]).await;

    let out = read_all(&engine, "bc", "purchase_order", "").await;
    assert_eq!(out["count"], 9);
    let reqs = emu.requests_to("/purchaseOrders");
    assert_eq!(reqs.len(), 3, "@odata.nextLink followed: 4 + 4 + 1");
    assert_eq!(reqs[0].param("$expand"), Some("purchaseOrderLines"));
    assert_eq!(reqs[1].param("$skiptoken"), Some("4"));
    let po = &out["records"][1];
    assert_eq!(po["remote_id"], "000000a0-0000-4000-8000-000000000001");
    assert_eq!(po["number"], "106001");
    assert_eq!(po["vendor_id"], bc::vendor_id(1));
    assert_eq!(po["vendor_name"], "Nordic Bearings AB");
    assert_eq!(po["status"], "pending_approval");
    assert_eq!(po["remote_status"], "In Review");
    assert_eq!(po["currency"], "USD");
    assert_eq!(po["lines"][0]["line_number"], 10000);
    assert_eq!(po["lines"][0]["item_id"], "MAT-1002");
    assert_eq!(po["lines"][0]["quantity"], 3.0);
    assert_eq!(po["remote_updated_at"], "2024-01-01T00:01:00Z");

    let vendors = read_all(&engine, "bc", "vendor", "").await;
    assert_eq!(vendors["count"], 6);
    assert_eq!(vendors["records"][4]["status"], "blocked");
    assert_eq!(vendors["records"][4]["remote_status"], "Payment");
    assert_eq!(vendors["records"][0]["status"], "active");
    assert_eq!(vendors["records"][0]["tax_id"], "DE100001");

    // Create with lines (deep insert), then update one field.
    let flow = format!(
        r#"
apiVersion: sluice/v1
id: bc-write
steps:
  - id: create
    write:
      connection: bc
      entity: purchase_order
      op: create
      data:
        vendor_id: "{vendor}"
        currency: EUR
        order_date: "2024-06-03"
        lines:
          - {{ line_number: 1, item_id: MAT-1003, description: Gear oil, quantity: 20, unit_of_measure: L, unit_price: 7.9, amount: 158 }}
  - id: update
    needs: [create]
    write:
      connection: bc
      entity: purchase_order
      op: update
      id: "${{{{ steps.create.output.remote_id }}}}"
      data:
        expected_date: "2024-06-20"
output:
  created: "${{{{ steps.create.output }}}}"
  updated: "${{{{ steps.update.output }}}}"
"#,
        vendor = bc::vendor_id(2)
    );
    emu.clear_log();
    let out = common::run(&engine, &flow, json!({})).await;
    assert_eq!(out.status, RunStatus::Succeeded, "{:?}", out.error);
    let o = out.output.unwrap();
    assert_eq!(o["created"]["status"], "draft");
    assert_eq!(o["created"]["vendor_name"], "Rhein Hydraulik GmbH");
    assert_eq!(o["created"]["lines"][0]["amount"], 158.0);
    assert_eq!(o["updated"]["expected_date"], "2024-06-20");
    assert_eq!(o["updated"]["remote_id"], o["created"]["remote_id"]);
    let post = emu
        .requests()
        .into_iter()
        .find(|r| r.method == "POST" && r.path.ends_with("/purchaseOrders"))
        .unwrap();
    let body: Value = serde_json::from_str(&post.body).unwrap();
    assert_eq!(body["purchaseOrderLines"][0]["directUnitCost"], 7.9);
    assert_eq!(body["purchaseOrderLines"][0]["lineType"], "Item");
    assert!(
        body.get("purchaser").is_none(),
        "unset fields are not sent: {body}"
    );
    let patch = emu
        .requests()
        .into_iter()
        .find(|r| r.method == "PATCH")
        .unwrap();
    assert_eq!(patch.header("if-match"), Some("*"));
    assert_eq!(
        serde_json::from_str::<Value>(&patch.body).unwrap(),
        json!({"requestedReceiptDate": "2024-06-20"}),
        "an update sends only the changed fields"
    );
}

fn maximo_conn(emu: &Emulator, key: &str, policy: Policy) -> Conn {
    connect_with(
        "mx",
        &Definitions::built_in(),
        "maximo",
        &[("base_url", &emu.base_url), ("site", "BEDFORD")],
        &[("api_key", key)],
        policy,
    )
}

#[tokio::test]
async fn maximo_reads_work_orders_and_assets_and_writes_work_orders() {
    let emu = maximo::start(12).await;
    emu.set_page_cap(5);
    let c = maximo_conn(&emu, maximo::API_KEY, fast_policy());
    let (engine, _dir) = engine_with(&[("mx", &c)]).await;
    let out = read_all(&engine, "mx", "work_order", "").await;
    assert_eq!(out["count"], 12);
    let reqs = emu.requests_to("/mxapiwo");
    assert_eq!(reqs.len(), 3, "responseInfo.nextPage followed: 5 + 5 + 2");
    assert_eq!(reqs[0].header("apikey"), Some(maximo::API_KEY));
    assert_eq!(reqs[0].param("lean"), Some("1"));
    assert_eq!(reqs[2].param("pageno"), Some("3"));
    let wo = &out["records"][5];
    assert_eq!(wo["remote_id"], "1005");
    assert_eq!(wo["number"], "WO01005");
    assert_eq!(wo["status"], "completed");
    assert_eq!(wo["remote_status"], "COMP");
    assert_eq!(wo["priority"], "urgent");
    assert_eq!(wo["work_type"], "preventive");
    assert_eq!(wo["asset_id"], "P-005");
    assert_eq!(wo["assigned_to"], "WILSON");
    assert_eq!(wo["due_date"], "2024-01-06");
    assert_eq!(wo["completed_at"], "2024-01-01T00:05:00Z");
    assert_eq!(wo["estimated_hours"], 2.5);
    assert_eq!(
        wo["custom_fields"],
        json!({"siteid": "BEDFORD", "orgid": "EAGLENA"})
    );
    assert!(
        out["records"][0]["assigned_to"].is_null(),
        "a null lead stays null"
    );

    let inc = read_all(
        &engine,
        "mx",
        "work_order",
        "      modified_after: \"2024-01-01T00:09:00Z\"",
    )
    .await;
    assert_eq!(inc["count"], 2);
    assert_eq!(
        emu.requests_to("/mxapiwo")
            .last()
            .unwrap()
            .param("oslc.where"),
        Some("changedate>\"2024-01-01T00:09:00Z\"")
    );

    let assets = read_all(&engine, "mx", "asset", "      limit: 4").await;
    assert_eq!(assets["count"], 4);
    assert_eq!(assets["records"][2]["status"], "down");
    assert_eq!(assets["records"][2]["category"], "pump");
    assert_eq!(assets["records"][0]["criticality"], "urgent");

    let flow = r#"
apiVersion: sluice/v1
id: mx-write
steps:
  - id: create
    write:
      connection: mx
      entity: work_order
      op: create
      data:
        description: Replace seal on P-007
        priority: urgent
        work_type: corrective
        asset_id: P-007
        due_date: "2024-02-01"
  - id: update
    needs: [create]
    write:
      connection: mx
      entity: work_order
      op: update
      id: "${{ steps.create.output.remote_id }}"
      data:
        assigned_to: JONES
output:
  created: "${{ steps.create.output }}"
  updated: "${{ steps.update.output }}"
"#;
    emu.clear_log();
    let out = common::run(&engine, flow, json!({})).await;
    assert_eq!(out.status, RunStatus::Succeeded, "{:?}", out.error);
    let o = out.output.unwrap();
    assert_eq!(o["created"]["status"], "open");
    assert_eq!(o["created"]["priority"], "urgent");
    assert_eq!(o["created"]["due_date"], "2024-02-01");
    assert_eq!(o["updated"]["assigned_to"], "JONES");
    let log = emu.requests();
    let create: Value = serde_json::from_str(&log[0].body).unwrap();
    assert_eq!(
        create,
        json!({"siteid": "BEDFORD", "description": "Replace seal on P-007", "assetnum": "P-007",
               "worktype": "CM", "wopriority": 1, "targcompdate": "2024-02-01T00:00:00+00:00"})
    );
    assert_eq!(log[1].header("x-method-override"), Some("PATCH"));
    assert_eq!(log[1].method, "POST");
}

#[tokio::test]
async fn a_429_is_waited_out_per_retry_after_and_marks_the_connection_degraded() {
    let emu = maximo::start(3).await;
    let c = maximo_conn(&emu, maximo::API_KEY, fast_policy());
    emu.inject([Fault::Throttle("1".into())]);
    let t = Instant::now();
    let page = c
        .connector
        .list(Entity::WorkOrder, &ListQuery::default())
        .await
        .unwrap();
    assert_eq!(page.records.len(), 3);
    assert!(t.elapsed() >= Duration::from_secs(1), "{:?}", t.elapsed());
    assert_eq!(emu.requests().len(), 2);
    assert_eq!(c.connector.health().await, ConnectionStatus::Degraded);
    c.connector
        .list(Entity::WorkOrder, &ListQuery::default())
        .await
        .unwrap();
    assert_eq!(c.connector.health().await, ConnectionStatus::Online);

    // A Retry-After longer than the connection will hold a step: the step fails
    // retryably with RATE_LIMIT_EXCEEDED and the wait, so its retry policy decides.
    let date = (chrono::Utc::now() + chrono::Duration::seconds(600)).to_rfc2822();
    emu.inject([Fault::Throttle(date)]);
    let e = c
        .connector
        .list(Entity::WorkOrder, &ListQuery::default())
        .await
        .unwrap_err();
    assert_eq!(e.code().as_str(), "RATE_LIMIT_EXCEEDED");
    assert!(e.is_retryable());
    let wait = e.retry_after.expect("retry_after");
    assert!(
        wait > Duration::from_secs(590) && wait <= Duration::from_secs(600),
        "{wait:?}"
    );
}

#[tokio::test]
async fn a_5xx_burst_is_retried_and_an_outage_opens_the_circuit_until_a_probe_succeeds() {
    let emu = maximo::start(3).await;
    let policy = Policy {
        max_attempts: 3,
        failure_threshold: 4,
        cooldown_ms: 300,
        ..fast_policy()
    };
    let c = maximo_conn(&emu, maximo::API_KEY, policy);
    let q = ListQuery::default();

    emu.inject([Fault::Status(503), Fault::Status(502)]);
    assert_eq!(
        c.connector
            .list(Entity::WorkOrder, &q)
            .await
            .unwrap()
            .records
            .len(),
        3
    );
    assert_eq!(emu.requests().len(), 3, "two failures, then success");

    // An outage: 3 attempts fail (UPSTREAM_ERROR), the 4th consecutive failure opens the circuit.
    emu.clear_log();
    emu.inject(std::iter::repeat_n(Fault::Status(503), 6));
    let e = c.connector.list(Entity::WorkOrder, &q).await.unwrap_err();
    assert_eq!(e.code().as_str(), "UPSTREAM_ERROR");
    assert_eq!(e.upstream_status, Some(503));
    assert!(e.is_retryable());
    let e = c.connector.list(Entity::WorkOrder, &q).await.unwrap_err();
    assert_eq!(e.code().as_str(), "CONNECTION_UNAVAILABLE", "{e}");
    assert!(e.message.contains("circuit open"), "{}", e.message);
    assert_eq!(c.connector.health().await, ConnectionStatus::Offline);
    let sent = emu.requests().len();
    assert_eq!(sent, 4, "the circuit opened at the threshold");
    let e = c.connector.list(Entity::WorkOrder, &q).await.unwrap_err();
    assert_eq!(e.code().as_str(), "CONNECTION_UNAVAILABLE");
    assert_eq!(emu.requests().len(), sent, "an open circuit sends nothing");

    // After the cooldown one probe goes out; the system is back, the circuit closes.
    emu.shared.faults.lock().unwrap().clear();
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(
        c.connector
            .list(Entity::WorkOrder, &q)
            .await
            .unwrap()
            .records
            .len(),
        3
    );
    assert_eq!(c.connector.health().await, ConnectionStatus::Online);
    assert_eq!(
        c.changes.statuses(),
        [
            ConnectionStatus::Degraded,
            ConnectionStatus::Offline,
            ConnectionStatus::Online
        ],
        "a burst that recovered with retries leaves the connection degraded until a clean call"
    );
    let reason = c.changes.0.lock().unwrap()[1].reason.clone();
    assert!(
        reason.contains("circuit open after 4 consecutive failures"),
        "{reason}"
    );
}

#[tokio::test]
async fn slow_answers_time_out_as_connection_unavailable() {
    let emu = maximo::start(1).await;
    let policy = Policy {
        max_attempts: 2,
        timeout_ms: 200,
        ..fast_policy()
    };
    let c = maximo_conn(&emu, maximo::API_KEY, policy);
    emu.set_delay(Duration::from_millis(600));
    let t = Instant::now();
    let e = c
        .connector
        .list(Entity::WorkOrder, &ListQuery::default())
        .await
        .unwrap_err();
    assert!(
        t.elapsed() < Duration::from_millis(1000),
        "{:?}",
        t.elapsed()
    );
    assert_eq!(e.code().as_str(), "CONNECTION_UNAVAILABLE");
    assert!(
        e.message.contains("no answer within 200ms"),
        "{}",
        e.message
    );
    emu.set_delay(Duration::ZERO);
    assert!(
        c.connector
            .list(Entity::WorkOrder, &ListQuery::default())
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn the_rate_limit_spaces_requests() {
    let emu = maximo::start(1).await;
    let defs = Definitions::built_in();
    let config = ConnectionConfig {
        definition: "maximo".into(),
        params: [
            ("base_url".to_string(), emu.base_url.clone()),
            ("site".into(), "X".into()),
        ]
        .into(),
        credentials: [("api_key".to_string(), "K".to_string())].into(),
        rate_limit: Some(definition::RateLimit {
            requests_per_second: 10.0,
            burst: Some(1),
        }),
        policy: fast_policy(),
        ..ConnectionConfig::default()
    };
    let health = Arc::new(Health::new(
        "mx",
        fast_policy(),
        ConnectionStatus::Online,
        None,
    ));
    let c = HttpConnector::new(
        "mx",
        defs.get("maximo").unwrap().clone(),
        &config,
        &|_| Some(maximo::API_KEY.to_string()),
        health,
    )
    .unwrap();
    let t = Instant::now();
    for _ in 0..6 {
        c.test().await.unwrap();
    }
    assert!(
        t.elapsed() >= Duration::from_millis(490),
        "{:?}",
        t.elapsed()
    );
}

#[tokio::test]
async fn a_wrong_password_is_not_retried_and_needs_new_credentials() {
    let emu = sap::start(2, 1).await;
    let c = sap_conn(&emu, "not-the-password", fast_policy());
    let e = c
        .connector
        .list(Entity::PurchaseOrder, &ListQuery::default())
        .await
        .unwrap_err();
    assert_eq!(e.code().as_str(), "AUTHENTICATION_FAILED");
    assert_eq!(e.upstream_status, Some(401));
    assert_eq!(e.entity, Some(Entity::PurchaseOrder));
    assert_eq!(e.operation, Some("list"));
    assert!(!e.is_retryable());
    assert_eq!(emu.requests().len(), 1);
    assert_eq!(c.connector.health().await, ConnectionStatus::AuthRequired);
}

#[tokio::test]
async fn bad_pages_get_clear_errors() {
    let emu = sap::start(5, 1).await;
    let c = sap_conn(&emu, sap::PASSWORD, fast_policy());
    let (engine, _dir) = engine_with(&[("sap", &c)]).await;

    emu.inject([Fault::NotJson]);
    let e = read_error(&engine, "sap", "purchase_order", "").await;
    let m = e["message"].as_str().unwrap();
    assert!(m.contains("page 1 of purchase_order is not JSON"), "{m}");
    assert!(m.contains("Maintenance in progress"), "{m}");
    assert_eq!(e["details"]["code"], "UPSTREAM_ERROR");

    emu.set_no_records_key(true);
    let e = read_error(&engine, "sap", "purchase_order", "").await;
    let m = e["message"].as_str().unwrap();
    assert!(m.contains("lacks the records path `$.d.results[*]`"), "{m}");
    emu.set_no_records_key(false);

    emu.set_page_cap(2);
    emu.set_foreign_next_link(true);
    let e = read_error(&engine, "sap", "purchase_order", "").await;
    let m = e["message"].as_str().unwrap();
    assert!(m.contains("points at another host"), "{m}");
    assert!(m.contains("evil.example"), "{m}");
    assert_eq!(
        emu.requests_to("/A_PurchaseOrder").len(),
        3,
        "one request per read: the foreign next link was not followed"
    );
}

#[tokio::test]
async fn an_upstream_that_never_stops_paging_is_bounded() {
    let text = definition::BUILT_IN
        .iter()
        .find(|(f, _)| *f == "sap_s4hana.yaml")
        .unwrap()
        .1
        .replace(
            "      page_size: 500\n",
            "      page_size: 500\n      max_pages: 4\n",
        );
    let mut defs = Definitions::built_in();
    defs.insert(definition::compile("sap-bounded.yaml", &text).unwrap());
    let emu = sap::start(3, 1).await;
    emu.set_page_cap(1);
    emu.set_endless(true);
    let c = connect_with(
        "sap",
        &defs,
        "sap_s4hana",
        &[("base_url", &emu.base_url)],
        &[("username", sap::USER), ("password", sap::PASSWORD)],
        fast_policy(),
    );
    let (engine, _dir) = engine_with(&[("sap", &c)]).await;
    let e = read_error(&engine, "sap", "purchase_order", "").await;
    let m = e["message"].as_str().unwrap();
    assert!(m.contains("went past 4 pages"), "{m}");
    assert_eq!(emu.requests_to("/A_PurchaseOrder").len(), 4);
}

fn definition_errors(text: &str) -> Vec<String> {
    match definition::compile("bad.yaml", text) {
        Ok(_) => panic!("accepted a bad definition"),
        Err(e) => e.diagnostics.iter().map(|d| d.to_string()).collect(),
    }
}

const MINIMAL: &str = r#"apiVersion: sluice/connector/v1
id: tiny
name: Tiny
parameters:
  base_url: {}
auth: { type: none }
test: { path: /ping }
entities:
  vendor:
    list:
      request: { path: /vendors }
      records: $.items[*]
      paginator: { type: next_link, path: $.next }
    mapping:
      remote_id: $.id
      name: $.name
      status: { path: $.state, map: { A: active } }
      remote_created_at: { path: $.created, convert: datetime }
      remote_updated_at: { path: $.changed, convert: datetime }
"#;

#[test]
fn a_minimal_definition_compiles() {
    let d = definition::compile("tiny.yaml", MINIMAL).unwrap_or_else(|e| panic!("{e}"));
    assert!(d.entities.contains_key(&Entity::Vendor));
}

#[test]
fn bad_definitions_are_refused_with_line_and_column() {
    let e = definition_errors(
        &MINIMAL.replace("type: next_link, path: $.next", "type: infinite_scroll"),
    );
    assert!(
        e.iter().any(|m| m.starts_with("13:")
            && m.contains("unknown value `infinite_scroll`")
            && m.contains("next_link")),
        "{e:?}"
    );

    let e = definition_errors(&MINIMAL.replace("records: $.items[*]", "records: $.items[?"));
    assert!(
        e.iter()
            .any(|m| m.starts_with("12:") && m.contains("invalid JSONPath `$.items[?`")),
        "{e:?}"
    );

    let e = definition_errors(&MINIMAL.replace(
        "      name: $.name\n",
        "      name: $.name\n      colour: $.colour\n",
    ));
    assert!(
        e.iter()
            .any(|m| m.starts_with("17:") && m.contains("vendor has no field `colour`")),
        "{e:?}"
    );

    let e = definition_errors(&MINIMAL.replace("      name: $.name\n", ""));
    assert!(e.iter().any(|m| m.contains("lacks `name`")), "{e:?}");

    let e = definition_errors(&MINIMAL.replace("entities:\n  vendor:", "entities:\n  vendors:"));
    assert!(
        e.iter().any(|m| m.contains("unknown entity `vendors`")),
        "{e:?}"
    );

    let e = definition_errors(&MINIMAL.replace("auth: { type: none }", "auth: { type: kerberos }"));
    assert!(
        e.iter().any(|m| m.starts_with("6:")
            && m.contains("kerberos")
            && m.contains("oauth2_client_credentials")),
        "{e:?}"
    );
}

#[tokio::test]
async fn connections_are_stored_without_secret_values_and_record_their_status_history() {
    let emu = sap::start(2, 1).await;
    let (store, _dir) = common::sqlite_store().await;
    let defs = Definitions::built_in();
    let config = ConnectionConfig {
        definition: "sap_s4hana".into(),
        params: [("base_url".to_string(), emu.base_url.clone())].into(),
        credentials: [
            ("username".to_string(), "SAP_USER".to_string()),
            ("password".to_string(), "SAP_PASSWORD".to_string()),
        ]
        .into(),
        rate_limit: None,
        policy: fast_policy(),
        ..ConnectionConfig::default()
    };
    connection::add(&store, &defs, "erp", &config, false)
        .await
        .unwrap();
    let again = connection::add(&store, &defs, "erp", &config, false)
        .await
        .unwrap_err();
    assert!(again.contains("already exists"), "{again}");
    let mut bad = config.clone();
    bad.params.insert("colour".into(), "red".into());
    let e = connection::add(&store, &defs, "erp2", &bad, false)
        .await
        .unwrap_err();
    assert!(e.contains("has no parameter `colour`"), "{e}");
    let row = store.connection("erp").await.unwrap().unwrap();
    assert!(row.config.contains("SAP_PASSWORD") && !row.config.contains(sap::PASSWORD));

    // An endpoint that wants to know when credentials stop working.
    let ep = sluice::webhooks::endpoints::add(
        &store,
        &sluice::webhooks::ssrf::GuardPolicy::parse("127.0.0.1").unwrap(),
        sluice::webhooks::endpoints::NewEndpoint {
            url: "http://127.0.0.1:9/hooks".into(),
            event_types: vec!["connection.auth_required".into()],
            ..Default::default()
        },
    )
    .await
    .unwrap();
    // Wrong password → auth_required, recorded with a reason and emitted as an event.
    let secrets = sluice::expr::secrets::Secrets::from_pairs([
        ("SAP_USER".to_string(), sap::USER.to_string()),
        ("SAP_PASSWORD".to_string(), "nope".to_string()),
    ]);
    let sink: Arc<dyn StatusSink> = StoreSink::start(store.clone());
    let c = connection::build(&row, &defs, &secrets, Some(sink)).unwrap();
    let e = c.test().await.unwrap_err();
    assert_eq!(e.code().as_str(), "AUTHENTICATION_FAILED");
    let mut history = Vec::new();
    for _ in 0..50 {
        history = store.status_history("erp", 10).await.unwrap();
        if !history.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].to, "auth_required");
    assert!(history[0].reason.contains("401"), "{}", history[0].reason);
    assert!(!history[0].reason.contains("nope"));
    let row = store.connection("erp").await.unwrap().unwrap();
    assert_eq!(row.status, "auth_required");
    // `connection.auth_required` went to the endpoint, with the reason (no password).
    let mut messages = Vec::new();
    for _ in 0..50 {
        messages = store
            .messages(&sluice::store::MessageFilter {
                endpoint_id: Some(ep.id.clone()),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        if !messages.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(messages[0].event_type, "connection.auth_required");
    let body: Value =
        serde_json::from_str(&store.message(&messages[0].id).await.unwrap().unwrap().body).unwrap();
    assert_eq!(body["data"]["connection_id"], "erp", "{body}");
    assert!(
        body["data"]["reason"].as_str().unwrap().contains("401"),
        "{body}"
    );
    assert!(!body.to_string().contains("nope"));

    // The registry made from the store serves the connection to flows.
    let secrets = sluice::expr::secrets::Secrets::from_pairs([
        ("SAP_USER".to_string(), sap::USER.to_string()),
        ("SAP_PASSWORD".to_string(), sap::PASSWORD.to_string()),
    ]);
    let reg = connection::registry(&store, &defs, &secrets).await.unwrap();
    assert!(reg.names().contains(&"erp".to_string()));
    let page = reg
        .get("erp")
        .unwrap()
        .list(Entity::PurchaseOrder, &ListQuery::default())
        .await
        .unwrap();
    assert_eq!(page.records.len(), 2);
    for _ in 0..50 {
        if store.connection("erp").await.unwrap().unwrap().status == "online" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        store.connection("erp").await.unwrap().unwrap().status,
        "online"
    );
}

#[test]
fn an_auth_template_that_cannot_be_evaluated_is_refused_when_the_connection_is_made() {
    let text = MINIMAL.replace(
        "auth: { type: none }",
        "auth: { type: bearer, token: \"${{ credentials.tokn }}\" }\ncredentials: [token]",
    );
    let mut defs = Definitions::built_in();
    defs.insert(definition::compile("tiny.yaml", &text).unwrap_or_else(|e| panic!("{e}")));
    let config = ConnectionConfig {
        definition: "tiny".into(),
        params: [("base_url".to_string(), "http://127.0.0.1:9".to_string())].into(),
        credentials: [("token".to_string(), "T".to_string())].into(),
        rate_limit: None,
        policy: Policy::default(),
        ..ConnectionConfig::default()
    };
    let health = Arc::new(Health::new(
        "t",
        Policy::default(),
        ConnectionStatus::Online,
        None,
    ));
    let e = HttpConnector::new(
        "t",
        defs.get("tiny").unwrap().clone(),
        &config,
        &|_| Some("x".into()),
        health,
    )
    .unwrap_err();
    assert!(
        e.message.contains("auth token of definition `tiny`"),
        "{}",
        e.message
    );
    assert!(e.message.contains("tokn"), "{}", e.message);
}

/// Business Central's definition with a probe value in the vendor list query.
fn bc_with_probe(probe: &str) -> Definitions {
    let text = definition::BUILT_IN
        .iter()
        .find(|(f, _)| *f == "business_central.yaml")
        .unwrap()
        .1;
    let needle = "/vendors\"\n        headers:\n";
    assert!(text.contains(needle), "the vendor list request moved");
    let text = text.replace(
        needle,
        &format!("/vendors\"\n        query:\n          probe: {probe:?}\n        headers:\n"),
    );
    let mut defs = Definitions::built_in();
    defs.insert(definition::compile("bc-probe.yaml", &text).unwrap());
    defs
}

#[tokio::test]
async fn query_values_are_percent_encoded_with_spaces_as_pct20_and_option_names_literal() {
    // OData URL conventions: a space in a query value is `%20` (a `+` is a
    // plus sign, not HTML form encoding's space); `$filter` is not `%24filter`.
    let probe = "a b 'q' & c #d ü+e% =";
    let emu = bc::start(3, 1).await;
    let c = connect_with(
        "bc",
        &bc_with_probe(probe),
        "business_central",
        &[
            ("base_url", &emu.base_url),
            ("tenant", bc::TENANT),
            ("company_id", bc::COMPANY),
            ("login_url", &emu.base_url),
        ],
        &[
            ("client_id", bc::CLIENT_ID),
            ("client_secret", bc::CLIENT_SECRET),
        ],
        fast_policy(),
    );
    let (engine, _dir) = engine_with(&[("bc", &c)]).await;
    let all = read_all(&engine, "bc", "vendor", "").await;
    let v = read_all(
        &engine,
        "bc",
        "vendor",
        "      modified_after: \"2024-01-01T00:00:30Z\"",
    )
    .await;
    assert!(v["count"].as_u64().unwrap() > 0, "{v}");
    assert!(v["count"].as_u64() < all["count"].as_u64(), "{v} {all}");
    let reqs = emu.requests_to("/vendors");
    let raw = reqs[1].raw_query.clone().unwrap();
    assert!(
        raw.contains("$filter=lastModifiedDateTime%20gt%202024-01-01T00:00:30Z"),
        "{raw}"
    );
    assert!(
        // (`'` goes out as `%27`: the URL standard's query set for http.)
        raw.contains("probe=a%20b%20%27q%27%20%26%20c%20%23d%20%C3%BC%2Be%25%20%3D"),
        "{raw}"
    );
    assert!(!raw.contains("%24"), "option names stay literal: {raw}");
    assert_eq!(reqs[1].param("probe"), Some(probe));
    assert_eq!(
        reqs[1].param("$filter"),
        Some("lastModifiedDateTime gt 2024-01-01T00:00:30Z")
    );
}

#[tokio::test]
async fn business_central_asks_for_a_page_size_and_never_sends_top() {
    let emu = bc::start(9, 2).await;
    let c = bc_conn(&emu);
    let (engine, _dir) = engine_with(&[("bc", &c)]).await;

    let first = read_all(&engine, "bc", "purchase_order", "      limit: 4").await;
    assert_eq!(first["count"], 4);
    assert!(first["next_cursor"].is_string(), "{first}");
    let reqs = emu.requests_to("/purchaseOrders");
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].param("$top"), None);
    assert_eq!(reqs[0].header("prefer"), Some("odata.maxpagesize=4"));

    emu.clear_log();
    let all = read_all(&engine, "bc", "purchase_order", "").await;
    assert_eq!(all["count"], 9);
    let reqs = emu.requests_to("/purchaseOrders");
    assert_eq!(reqs.len(), 1, "9 records fit one page of 500");
    assert_eq!(reqs[0].param("$top"), None);
    assert_eq!(reqs[0].header("prefer"), Some("odata.maxpagesize=500"));
}

#[tokio::test]
async fn a_limit_below_the_servers_own_page_size_loses_no_records() {
    // SAP pages by itself (10 here, whatever the client wants): a caller
    // asking for 4 at a time gets 4, then the rest of the same page.
    let emu = sap::start(25, 1).await;
    emu.set_page_cap(10);
    let c = sap_conn(&emu, sap::PASSWORD, fast_policy());
    let mut ids = Vec::new();
    let mut sizes = Vec::new();
    let mut cursor = None;
    loop {
        let page = c
            .connector
            .list(
                Entity::PurchaseOrder,
                &ListQuery {
                    limit: Some(4),
                    cursor: cursor.take(),
                    ..ListQuery::default()
                },
            )
            .await
            .unwrap();
        sizes.push(page.records.len());
        ids.extend(
            page.records
                .iter()
                .map(|r| r["remote_id"].as_str().unwrap().to_string()),
        );
        cursor = page.next_cursor;
        if cursor.is_none() {
            break;
        }
        assert!(sizes.len() < 50, "the listing does not end");
    }
    assert_eq!(sizes, [4, 4, 2, 4, 4, 2, 4, 1]);
    let expected: Vec<String> = (0..25)
        .map(|i| (4_500_000_000u64 + i).to_string())
        .collect();
    assert_eq!(ids, expected, "every record once, in order");
    let reqs = emu.requests_to("/A_PurchaseOrder");
    assert_eq!(reqs.len(), 3, "each page of the service fetched once");
    for r in reqs {
        assert_eq!(r.param("$top"), None);
    }
}

#[tokio::test]
async fn a_full_sync_larger_than_a_page_counts_every_record_and_deletes_none() {
    // Was: `$top=20` as the page size made the service stop after 20 orders
    // (no `__next`), and a full sync marked the other 60 deleted.
    use sluice::sync::{self, Mode, SyncOptions};
    let emu = sap::start(80, 1).await;
    let c = sap_conn(&emu, sap::PASSWORD, fast_policy());
    let (store, _dir) = common::sqlite_store().await;
    let opts = SyncOptions {
        mode: Mode::Full,
        page_size: 20,
        ..SyncOptions::default()
    };
    let run = || {
        sync::run(
            &store,
            c.connector.as_ref(),
            "sap",
            Entity::PurchaseOrder,
            &opts,
            None,
        )
    };
    let r = run().await.unwrap();
    assert_eq!((r.added, r.deleted), (80, 0));
    let r = run().await.unwrap();
    assert_eq!((r.added, r.unchanged, r.deleted), (0, 80, 0));
}

#[tokio::test]
async fn a_relative_next_link_is_resolved_against_the_context_url() {
    // OData JSON Format v4.01 §4.6: relative URLs are relative to the
    // context URL of the payload (`"@odata.context": "../$metadata#..."`
    // here, the service root), not to the connection's base URL.
    let emu = bc::start(9, 1).await;
    emu.set_page_cap(4);
    emu.set_relative_next_link(true);
    let c = bc_conn(&emu);
    let (engine, _dir) = engine_with(&[("bc", &c)]).await;
    let out = read_all(&engine, "bc", "purchase_order", "").await;
    assert_eq!(out["count"], 9);
    let reqs = emu.requests_to("/purchaseOrders");
    assert_eq!(reqs.len(), 3);
    for r in &reqs {
        assert_eq!(r.path, format!("{}/purchaseOrders", bc::api_root()));
    }
    assert_eq!(reqs[2].param("$skiptoken"), Some("8"));
}

#[tokio::test]
async fn a_status_missing_from_the_value_map_reads_as_other_with_the_systems_value() {
    let emu = maximo::start(2).await;
    // `HISTEDIT` is a real Maximo status the shipped definition's map does
    // not name: the read keeps going, the record says `other` and keeps the
    // system's value.
    let mut wo = maximo::work_order(7);
    wo["status"] = json!("HISTEDIT");
    emu.shared.push("mxapiwo", 1_767_225_600_000, wo);
    let c = maximo_conn(&emu, maximo::API_KEY, fast_policy());
    let (engine, _dir) = engine_with(&[("mx", &c)]).await;
    let before = sluice::connectors::mapping::unmapped_values();
    let out = read_all(&engine, "mx", "work_order", "").await;
    assert_eq!(out["count"], 3);
    let odd = out["records"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["remote_status"] == "HISTEDIT")
        .expect("the record with the unmapped status is read");
    assert_eq!(odd["status"], "other");
    assert!(
        sluice::connectors::mapping::unmapped_values() > before,
        "counted"
    );
}

/// A system that accepts creates but answers them in ways the definition's
/// mapping cannot read: first a record missing required fields, then `201`
/// with an empty body and a `Location` header.
async fn accepting_system() -> (String, Arc<Mutex<u32>>) {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    let posts: Arc<Mutex<u32>> = Arc::default();
    let p = posts.clone();
    let app = axum::Router::new().route(
        "/vendors",
        axum::routing::post(move || {
            let p = p.clone();
            async move {
                let n = {
                    let mut n = p.lock().unwrap();
                    *n += 1;
                    *n
                };
                if n == 1 {
                    axum::Json(json!({"id": "V-77", "name": "Acme"})).into_response()
                } else {
                    (
                        StatusCode::CREATED,
                        [("location", "/api/vendors('V-88')")],
                        "",
                    )
                        .into_response()
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), posts)
}

#[tokio::test]
async fn an_accepted_create_whose_answer_does_not_map_returns_its_id_not_an_orphan() {
    let (base, posts) = accepting_system().await;
    let text = MINIMAL.replace(
        "    mapping:\n",
        "    create:\n      request: { method: POST, path: /vendors, body: { name: \"${{ record.name }}\" } }\n      record: $\n    mapping:\n",
    );
    let mut defs = Definitions::built_in();
    defs.insert(definition::compile("tiny.yaml", &text).unwrap_or_else(|e| panic!("{e}")));
    let c = connect_with(
        "tiny",
        &defs,
        "tiny",
        &[("base_url", &base)],
        &[],
        fast_policy(),
    );
    let (engine, _dir) = engine_with(&[("tiny", &c)]).await;
    let flow = r#"
apiVersion: sluice/v1
id: create-vendor
steps:
  - id: create
    write: { connection: tiny, entity: vendor, op: create, data: { name: Acme } }
output: "${{ steps.create.output }}"
"#;
    // The record came back without the fields the mapping needs: the step
    // succeeds with the remote id, the raw answer and a warning.
    let out = common::run(&engine, flow, json!({})).await;
    assert_eq!(out.status, RunStatus::Succeeded, "{:?}", out.error);
    let o = out.output.unwrap();
    assert_eq!(o["remote_id"], "V-77", "{o}");
    assert_eq!(o["id"], "tiny:V-77");
    assert_eq!(o["mapped"], false);
    assert_eq!(o["raw"], json!({"id": "V-77", "name": "Acme"}));
    let w = o["warning"].as_str().unwrap();
    assert!(
        w.starts_with(
            "tiny accepted the create of vendor (HTTP 200) but its response could not be mapped"
        ),
        "{w}"
    );
    assert!(
        w.contains("missing field `remote_created_at`"),
        "names what did not map: {w}"
    );

    // 201 with no body: the id comes from the Location header.
    let out = common::run(&engine, flow, json!({})).await;
    assert_eq!(out.status, RunStatus::Succeeded, "{:?}", out.error);
    let o = out.output.unwrap();
    assert_eq!(o["remote_id"], "V-88", "{o}");
    assert!(
        o["warning"]
            .as_str()
            .unwrap()
            .contains("the create response is empty"),
        "{o}"
    );
    assert_eq!(
        *posts.lock().unwrap(),
        2,
        "each create was sent once, never retried"
    );
}

/// A system that reports errors inside HTTP 200 bodies (as JSON-RPC and some
/// ERPs do): the first list answers `{"error": ...}` with 200, later ones the
/// records. Records the headers it got.
async fn errors_in_200() -> (String, Arc<Mutex<Vec<axum::http::HeaderMap>>>) {
    let seen: Arc<Mutex<Vec<axum::http::HeaderMap>>> = Arc::default();
    let s = seen.clone();
    let app = axum::Router::new().route(
        "/vendors",
        axum::routing::get(move |headers: axum::http::HeaderMap| {
            let s = s.clone();
            async move {
                let n = {
                    let mut s = s.lock().unwrap();
                    s.push(headers);
                    s.len()
                };
                axum::Json(if n == 1 {
                    json!({"error": {"code": 2, "message": "Supplier 99 is blocked"}})
                } else {
                    json!({"items": [{"id": "V-1", "name": "Acme", "state": "A",
                                      "created": "2024-01-01T00:00:00Z", "changed": "2024-01-02T00:00:00Z"}]})
                })
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), seen)
}

#[tokio::test]
async fn an_error_inside_a_2xx_body_is_mapped_by_an_errors_rule() {
    let (base, seen) = errors_in_200().await;
    // Request templates have the flow expression functions: base64 for a
    // session header, coalesce for a fallback parameter.
    let text = MINIMAL
        .replace(
            "parameters:\n  base_url: {}\n",
            "parameters:\n  base_url: {}\n  region: { default: \"\" }\ncredentials: [user, key]\nheaders:\n  Authorization: \"Session ${{ (credentials.user ~ ':' ~ credentials.key) | b64encode }}\"\n  X-Region: \"${{ coalesce(params.region, 'eu-1') }}\"\nerrors:\n  - { status: \"2xx\", body_path: $.error, code: VALIDATION_FAILED, message: $.error.message }\n",
        );
    let mut defs = Definitions::built_in();
    defs.insert(definition::compile("tiny.yaml", &text).unwrap_or_else(|e| panic!("{e}")));
    let c = connect_with(
        "tiny",
        &defs,
        "tiny",
        &[("base_url", &base)],
        &[("user", "admin"), ("key", "s3cret")],
        fast_policy(),
    );
    let (engine, _dir) = engine_with(&[("tiny", &c)]).await;
    let e = read_error(&engine, "tiny", "vendor", "").await;
    assert_eq!(e["details"]["code"], "VALIDATION_FAILED", "{e}");
    assert_eq!(e["details"]["upstream_status"], 200, "{e}");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .contains("Supplier 99 is blocked"),
        "{e}"
    );
    // The next answer is a real page: a 2xx without the error reads fine.
    let out = common::run(&engine, &read_flow("tiny", "vendor", ""), json!({})).await;
    assert_eq!(out.status, RunStatus::Succeeded, "{:?}", out.error);
    assert_eq!(out.output.unwrap()["count"], 1);
    let h = seen.lock().unwrap()[0].clone();
    assert_eq!(
        h["authorization"], "Session YWRtaW46czNjcmV0",
        "base64 of admin:s3cret"
    );
    assert_eq!(h["x-region"], "eu-1");
}

#[test]
fn a_2xx_rule_must_say_what_in_the_body_is_the_error() {
    let e = definition_errors(&MINIMAL.replace(
        "test: { path: /ping }\n",
        "test: { path: /ping }\nerrors:\n  - { status: \"200\", code: VALIDATION_FAILED }\n",
    ));
    assert!(
        e.iter().any(
            |m| m.contains("would turn every success into an error") && m.contains("body_path")
        ),
        "{e:?}"
    );
}

#[test]
fn templates_naming_what_does_not_exist_are_refused() {
    let with_query = |q: &str| {
        MINIMAL.replace(
            "request: { path: /vendors }",
            &format!("request: {{ path: /vendors, query: {{ q: \"{q}\" }} }}"),
        )
    };
    let e = definition_errors(&with_query("${{ start_at }}"));
    assert!(
        e.iter().any(|m| m.starts_with("11:")
            && m.contains("unknown variable `start_at`: it would be sent as null")),
        "{e:?}"
    );
    // `offset` exists only in list requests.
    let e = definition_errors(&MINIMAL.replace(
        "test: { path: /ping }",
        "test: { path: \"/ping/${{ offset }}\" }",
    ));
    assert!(
        e.iter().any(|m| m.contains("unknown variable `offset`")),
        "{e:?}"
    );
    // A next-link paginator has no position: `offset` would be 0 on every page.
    let e = definition_errors(&with_query("${{ offset }}"));
    assert!(
        e.iter().any(|m| m.starts_with("11:")
            && m.contains("unknown variable `offset`: it would be sent as null")),
        "{e:?}"
    );
    // Each request reads what the connector fills in for it, nothing else:
    // a list has no `remote_id`, a get no `page_size`, a detail no `offset`.
    let e = definition_errors(&with_query("${{ remote_id }}"));
    assert!(
        e.iter().any(|m| m.contains("unknown variable `remote_id`")),
        "{e:?}"
    );
    let e = definition_errors(&MINIMAL.replace(
        "    mapping:\n",
        "    get: { request: { path: \"/vendors/${{ remote_id }}?n=${{ page_size }}\" } }\n    mapping:\n",
    ));
    assert!(
        e.iter().any(|m| m.contains("unknown variable `page_size`")),
        "{e:?}"
    );
    let e = definition_errors(&MINIMAL.replace(
        "      paginator: { type: next_link, path: $.next }\n",
        "      paginator: { type: offset, offset_param: o }\n      detail: { id: $.id, request: { path: \"/vendors/${{ id }}/${{ offset }}\" } }\n",
    ));
    assert!(
        e.iter().any(|m| m.contains("unknown variable `offset`")),
        "{e:?}"
    );
    let e = definition_errors(&with_query("${{ parms.base_url }}"));
    assert!(
        e.iter().any(|m| m.contains("did you mean `params`?")),
        "{e:?}"
    );
    let e = definition_errors(&with_query("${{ params.base_ur }}"));
    assert!(e.iter().any(|m| m.contains("base_url")), "{e:?}");
    // Each problem at its own column inside the template string:
    // `      request: { path: /vendors, query: { q: "${{ page_size | frobnicate }}" } }`
    let e = definition_errors(&with_query("${{ page_size | frobnicate }}"));
    assert!(
        e.iter()
            .any(|m| m.starts_with("11:63:") && m.contains("unknown filter `frobnicate`")),
        "{e:?}"
    );
    let e = definition_errors(&with_query("${{ page_size + ofset }}"));
    assert!(
        e.iter()
            .any(|m| m.starts_with("11:63:") && m.contains("unknown variable `ofset`")),
        "{e:?}"
    );
    // What a request can read is accepted, `item` inside `$for` too.
    let ok = MINIMAL.replace(
        "request: { path: /vendors }",
        "request: { path: /vendors, method: POST, body: { n: \"${{ page_size }}\", after: \"${{ modified_after | default('') }}\", xs: { $for: \"${{ [1, 2] }}\", $do: { v: \"${{ item }}\" } } } }",
    );
    definition::compile("ok.yaml", &ok).unwrap_or_else(|e| panic!("{e}"));
}

/// A JSON-RPC system in the style of Tryton: `POST /db/` with `{method,
/// params}`; `common.db.login` answers `[user_id, session]` (or an `error`
/// inside HTTP 200); other calls need `Authorization: Session
/// base64(login:user_id:session)` and answer 401 without it. The first
/// session expires after one call, so the connector must log in again.
#[derive(Default)]
struct Rpc {
    logins: u32,
    session: Option<String>,
    calls_on_session: u32,
    /// (method, offset, limit) of each search_read.
    reads: Vec<(String, Value, Value)>,
    /// Every session is refused (401), also a fresh one.
    refuse_sessions: bool,
    /// The password changed in the system (the login refuses `s3cret`).
    password_changed: bool,
    /// Non-login calls answered 401.
    unauthorized: u32,
    /// Logins answered 429 with `Retry-After: 30`.
    throttle_logins: bool,
    /// 401s after the first are answered 300 ms late.
    slow_refusals: bool,
    /// Sessions never expire (the first one otherwise lasts one call).
    keep_sessions: bool,
}

async fn json_rpc_system() -> (String, Arc<Mutex<Rpc>>) {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use base64::Engine as _;
    let state: Arc<Mutex<Rpc>> = Arc::default();
    let s = state.clone();
    let app = axum::Router::new().route(
        "/db/",
        axum::routing::post(move |headers: axum::http::HeaderMap, axum::Json(req): axum::Json<Value>| {
            let s = s.clone();
            async move {
                let answer = || {
                let mut st = s.lock().unwrap();
                let method = req["method"].as_str().unwrap_or_default().to_string();
                if method == "common.db.login" {
                    if st.throttle_logins {
                        return (StatusCode::TOO_MANY_REQUESTS, [("retry-after", "30")], "slow down")
                            .into_response();
                    }
                    if req["params"][0] == "admin"
                        && req["params"][1]["password"] == "s3cret"
                        && !st.password_changed
                    {
                        st.logins += 1;
                        let session = format!("sess{}", st.logins);
                        st.session = Some(session.clone());
                        st.calls_on_session = 0;
                        return axum::Json(json!({"id": 1, "result": [7, session]})).into_response();
                    }
                    return axum::Json(json!({"id": 1, "error": ["LoginException", "wrong password"]}))
                        .into_response();
                }
                let want = st.session.as_ref().map(|sess| {
                    format!(
                        "Session {}",
                        base64::engine::general_purpose::STANDARD.encode(format!("admin:7:{sess}"))
                    )
                });
                let got = headers.get("authorization").and_then(|v| v.to_str().ok());
                // The first session expires after one call.
                let expired = st.logins == 1 && st.calls_on_session >= 1 && !st.keep_sessions;
                if want.is_none() || got != want.as_deref() || expired || st.refuse_sessions {
                    st.unauthorized += 1;
                    return StatusCode::UNAUTHORIZED.into_response();
                }
                st.calls_on_session += 1;
                let (offset, limit) = (req["params"][1].clone(), req["params"][2].clone());
                st.reads.push((method, offset.clone(), limit.clone()));
                let (o, l) = (offset.as_u64().unwrap_or(0), limit.as_u64().unwrap_or(100));
                let rows: Vec<Value> = (o..(o + l).min(5))
                    .map(|i| json!({"id": i + 1, "name": format!("Supplier {}", i + 1),
                                    "create_date": {"__class__": "datetime", "iso": "2024-01-01T00:00:00"},
                                    "write_date": "2024-01-02T00:00:00"}))
                    .collect();
                axum::Json(json!({"id": 2, "result": rows})).into_response()
                };
                let resp = answer();
                // Refusals after the first come late (a slow system), so a
                // fresh session is in place when they arrive.
                let slow = resp.status() == StatusCode::UNAUTHORIZED && {
                    let st = s.lock().unwrap();
                    st.slow_refusals && st.unauthorized > 1
                };
                if slow {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                resp
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), state)
}

const RPC: &str = r#"apiVersion: sluice/connector/v1
id: rpc
name: JSON-RPC ERP
parameters:
  base_url: {}
  database: { default: db }
credentials: [username, password]
auth:
  type: login
  request:
    method: POST
    path: "/${{ params.database }}/"
    body: { method: common.db.login, params: ["${{ credentials.username }}", { password: "${{ credentials.password }}" }] }
  token: $.result
  value: "Session ${{ (credentials.username ~ ':' ~ token[0] ~ ':' ~ token[1]) | b64encode }}"
errors:
  - { status: "2xx", body_path: $.error, code: VALIDATION_FAILED, message: "$.error[1]" }
test:
  method: POST
  path: "/${{ params.database }}/"
  body: { method: model.party.party.search_read, params: [[], 0, 1, null, [name], {}] }
entities:
  vendor:
    list:
      request:
        method: POST
        path: "/${{ params.database }}/"
        body: { method: model.party.party.search_read, params: [[], "${{ offset }}", "${{ page_size }}", null, [name, create_date, write_date], {}] }
      records: $.result[*]
      paginator: { type: offset }
      page_size: 2
    mapping:
      remote_id: { path: $.id, convert: string }
      name: $.name
      status: { const: active }
      remote_created_at: { path: $.create_date.iso, convert: datetime }
      remote_updated_at: { path: $.write_date, convert: datetime }
"#;

#[tokio::test]
async fn a_login_session_and_offsets_in_the_json_body_page_through_a_json_rpc_system() {
    let (base, state) = json_rpc_system().await;
    let mut defs = Definitions::built_in();
    defs.insert(definition::compile("rpc.yaml", RPC).unwrap_or_else(|e| panic!("{e}")));
    let c = connect_with(
        "rpc",
        &defs,
        "rpc",
        &[("base_url", &base)],
        &[("username", "admin"), ("password", "s3cret")],
        fast_policy(),
    );
    let (engine, _dir) = engine_with(&[("rpc", &c)]).await;
    let out = common::run(&engine, &read_flow("rpc", "vendor", ""), json!({})).await;
    assert_eq!(out.status, RunStatus::Succeeded, "{:?}", out.error);
    let o = out.output.unwrap();
    assert_eq!(o["count"], 5, "{o}");
    assert_eq!(o["records"][4]["name"], "Supplier 5");
    let st = state.lock().unwrap();
    // Offsets went in the body, page by page (not the first page over and over).
    let offsets: Vec<Value> = st.reads.iter().map(|r| r.1.clone()).collect();
    assert_eq!(
        offsets,
        vec![json!(0), json!(2), json!(4)],
        "{:?}",
        st.reads
    );
    assert!(
        st.reads.iter().all(|r| r.2 == json!(2)),
        "page_size in the body"
    );
    // The first session expired after one call: a 401 logged in again once.
    assert_eq!(st.logins, 2);
}

#[tokio::test]
async fn a_refused_login_is_auth_required_with_the_systems_reason() {
    let (base, state) = json_rpc_system().await;
    let mut defs = Definitions::built_in();
    defs.insert(definition::compile("rpc.yaml", RPC).unwrap_or_else(|e| panic!("{e}")));
    let c = connect_with(
        "rpc",
        &defs,
        "rpc",
        &[("base_url", &base)],
        &[("username", "admin"), ("password", "hunter2-bad")],
        fast_policy(),
    );
    let (engine, _dir) = engine_with(&[("rpc", &c)]).await;
    let e = read_error(&engine, "rpc", "vendor", "").await;
    assert_eq!(e["details"]["code"], "AUTHENTICATION_FAILED", "{e}");
    let m = e["message"].as_str().unwrap();
    assert!(
        m.contains("refused the login") && m.contains("wrong password"),
        "{m}"
    );
    assert!(
        !m.contains("hunter2-bad"),
        "the password is not in the message: {m}"
    );
    assert_eq!(c.connector.health().await, ConnectionStatus::AuthRequired);
    assert!(state.lock().unwrap().reads.is_empty());
}

fn rpc_conn(base: &str) -> Conn {
    let mut defs = Definitions::built_in();
    defs.insert(definition::compile("rpc.yaml", RPC).unwrap_or_else(|e| panic!("{e}")));
    connect_with(
        "rpc",
        &defs,
        "rpc",
        &[("base_url", base)],
        &[("username", "admin"), ("password", "s3cret")],
        fast_policy(),
    )
}

#[tokio::test]
async fn a_session_still_refused_after_one_fresh_login_is_auth_required() {
    let (base, state) = json_rpc_system().await;
    state.lock().unwrap().refuse_sessions = true;
    let c = rpc_conn(&base);
    let (engine, _dir) = engine_with(&[("rpc", &c)]).await;
    let e = read_error(&engine, "rpc", "vendor", "").await;
    assert_eq!(e["details"]["code"], "AUTHENTICATION_FAILED", "{e}");
    assert_eq!(c.connector.health().await, ConnectionStatus::AuthRequired);
    let st = state.lock().unwrap();
    // One login, one 401, one fresh login, one more 401: then it stops.
    assert_eq!((st.logins, st.unauthorized), (2, 2));
    assert!(st.reads.is_empty());
}

#[tokio::test]
async fn a_session_that_expires_after_the_password_changed_is_auth_required() {
    let (base, state) = json_rpc_system().await;
    let c = rpc_conn(&base);
    c.connector.test().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(state.lock().unwrap().logins, 1);
    // The session expires (after its one call) and the password changes.
    state.lock().unwrap().password_changed = true;
    let (engine, _dir) = engine_with(&[("rpc", &c)]).await;
    let e = read_error(&engine, "rpc", "vendor", "").await;
    assert_eq!(e["details"]["code"], "AUTHENTICATION_FAILED", "{e}");
    let m = e["message"].as_str().unwrap();
    assert!(
        m.contains("refused the login") && m.contains("wrong password"),
        "{m}"
    );
    assert_eq!(c.connector.health().await, ConnectionStatus::AuthRequired);
    let st = state.lock().unwrap();
    assert_eq!((st.logins, st.unauthorized), (1, 1), "no second try");
}

#[tokio::test]
async fn a_throttled_login_is_rate_limited_not_refused_credentials() {
    let (base, state) = json_rpc_system().await;
    state.lock().unwrap().throttle_logins = true;
    let c = rpc_conn(&base);
    let e = c.connector.test().await.unwrap_err();
    assert_eq!(e.code().as_str(), "RATE_LIMIT_EXCEEDED", "{e:?}");
    assert_eq!(e.retry_after, Some(Duration::from_secs(30)), "{e:?}");
    assert_eq!(c.connector.health().await, ConnectionStatus::Degraded);
    // Once the system lets logins through, the same credentials work.
    state.lock().unwrap().throttle_logins = false;
    c.connector.test().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.connector.health().await, ConnectionStatus::Online);
}

#[tokio::test]
async fn calls_refused_together_with_the_same_expired_session_log_in_once() {
    let (base, state) = json_rpc_system().await;
    let c = rpc_conn(&base);
    c.connector.test().await.unwrap_or_else(|e| panic!("{e}"));
    // The session expires; four calls sent with it are refused, three of
    // them after the first has logged in again: they use its new session
    // instead of throwing it away.
    state.lock().unwrap().slow_refusals = true;
    let calls = (0..4).map(|_| c.connector.test());
    for r in futures::future::join_all(calls).await {
        r.unwrap_or_else(|e| panic!("{e}"));
    }
    let st = state.lock().unwrap();
    assert_eq!((st.logins, st.unauthorized), (2, 4));
}

/// A search API that pages with a numeric cursor inside the JSON body
/// (`{"after": null}` first, then the `next` it answered), five records in
/// pages of two. Records the `after` of each request.
async fn body_cursor_system() -> (String, Arc<Mutex<Vec<Value>>>) {
    let seen: Arc<Mutex<Vec<Value>>> = Arc::default();
    let s = seen.clone();
    let app = axum::Router::new().route(
        "/search",
        axum::routing::post(move |axum::Json(req): axum::Json<Value>| {
            let s = s.clone();
            async move {
                s.lock().unwrap().push(req["after"].clone());
                let after = req["after"].as_u64().unwrap_or(0);
                let ids: Vec<u64> = (after + 1..=5).take(2).collect();
                let items: Vec<Value> = ids
                    .iter()
                    .map(|i| json!({"id": format!("V-{i}"), "name": format!("Vendor {i}"), "state": "A",
                                    "created": "2024-01-01T00:00:00Z", "changed": "2024-01-02T00:00:00Z"}))
                    .collect();
                let next = ids.last().filter(|l| **l < 5);
                axum::Json(json!({"items": items, "next": next}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}"), seen)
}

#[tokio::test]
async fn a_numeric_cursor_in_the_json_body_pages_to_the_end() {
    let (base, seen) = body_cursor_system().await;
    let text = MINIMAL
        .replace(
            "request: { path: /vendors }",
            "request: { method: POST, path: /search, body: { after: \"${{ cursor }}\", size: \"${{ page_size }}\" } }",
        )
        .replace(
            "paginator: { type: next_link, path: $.next }",
            "paginator: { type: cursor, path: $.next }\n      page_size: 2",
        );
    let mut defs = Definitions::built_in();
    defs.insert(definition::compile("tiny.yaml", &text).unwrap_or_else(|e| panic!("{e}")));
    let c = connect_with(
        "tiny",
        &defs,
        "tiny",
        &[("base_url", &base)],
        &[],
        fast_policy(),
    );
    let (engine, _dir) = engine_with(&[("tiny", &c)]).await;
    let o = read_all(&engine, "tiny", "vendor", "").await;
    assert_eq!(o["count"], 5, "{o}");
    assert_eq!(o["records"][4]["name"], "Vendor 5");
    // The cursor went back as the number it was, null on the first page.
    assert_eq!(*seen.lock().unwrap(), vec![Value::Null, json!(2), json!(4)]);
}

#[tokio::test]
async fn a_session_is_cached_per_connection_and_renewed_before_expires_after() {
    let (base, state) = json_rpc_system().await;
    state.lock().unwrap().keep_sessions = true;
    let c = rpc_conn(&base);
    let (engine, _dir) = engine_with(&[("rpc", &c)]).await;
    for _ in 0..3 {
        let o = read_all(&engine, "rpc", "vendor", "").await;
        assert_eq!(o["count"], 5, "{o}");
    }
    assert_eq!(
        state.lock().unwrap().logins,
        1,
        "nine calls in three runs on one connection, one login"
    );

    // `expires_after`: the session is renewed before it is used again, so
    // no call is refused first.
    let mut defs = Definitions::built_in();
    let text = RPC.replace(
        "  token: $.result\n",
        "  token: $.result\n  expires_after: 300ms\n",
    );
    defs.insert(definition::compile("rpc.yaml", &text).unwrap_or_else(|e| panic!("{e}")));
    let c = connect_with(
        "rpc",
        &defs,
        "rpc",
        &[("base_url", &base)],
        &[("username", "admin"), ("password", "s3cret")],
        fast_policy(),
    );
    c.connector.test().await.unwrap_or_else(|e| panic!("{e}"));
    c.connector.test().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        state.lock().unwrap().logins,
        2,
        "still within expires_after"
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    c.connector.test().await.unwrap_or_else(|e| panic!("{e}"));
    let st = state.lock().unwrap();
    assert_eq!((st.logins, st.unauthorized), (3, 0));
}

#[tokio::test]
async fn request_templates_parse_compose_and_encode_dates_and_secrets() {
    // A system that wants its date as `dd.mm.yyyy HH:MM` an hour early, the
    // day of the week as a number, and a key it hands out base64-encoded.
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let s = seen.clone();
    let app = axum::Router::new().route(
        "/vendors",
        axum::routing::get(move |uri: axum::http::Uri| {
            let s = s.clone();
            async move {
                s.lock()
                    .unwrap()
                    .push(uri.query().unwrap_or_default().to_string());
                axum::Json(json!({"items": []}))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let text = MINIMAL
        .replace(
            "parameters:\n  base_url: {}\n",
            "parameters:\n  base_url: {}\n  fallback_since: { default: \"2024-02-29 23:30:00\" }\ncredentials: [key_b64]\n",
        )
        .replace(
            "request: { path: /vendors }",
            "request: { path: /vendors, query: { since: \"${{ coalesce(modified_after, params.fallback_since | parse_datetime) | sub_duration('1h') | format_datetime('%d.%m.%Y %H:%M') }}\", dow: \"${{ coalesce(modified_after, params.fallback_since | parse_datetime) | format_datetime('%u') }}\", key: \"${{ credentials.key_b64 | b64decode }}\" } }",
        );
    let mut defs = Definitions::built_in();
    defs.insert(definition::compile("tiny.yaml", &text).unwrap_or_else(|e| panic!("{e}")));
    let c = connect_with(
        "tiny",
        &defs,
        "tiny",
        &[("base_url", &format!("http://{addr}"))],
        &[("key_b64", "czNjcmV0LWtleQ==")],
        fast_policy(),
    );
    let (engine, _dir) = engine_with(&[("tiny", &c)]).await;
    read_all(&engine, "tiny", "vendor", "").await;
    read_all(
        &engine,
        "tiny",
        "vendor",
        "      filter: { modified_after: \"2026-01-01T00:15:00+01:00\" }",
    )
    .await;
    assert_eq!(
        *seen.lock().unwrap(),
        [
            // No bound: the parameter's text, parsed, an hour early (Thursday).
            "dow=4&key=s3cret-key&since=29.02.2024%2022:30",
            // 2025-12-31T23:15Z, an hour early (Wednesday).
            "dow=3&key=s3cret-key&since=31.12.2025%2022:15",
        ]
    );
}

#[test]
fn a_paginator_without_a_parameter_needs_the_request_to_place_the_position() {
    let e = definition_errors(&RPC.replace("\"${{ offset }}\"", "0"));
    assert!(
        e.iter()
            .any(|m| m.contains("never reads `offset`: every page would be the first")),
        "{e:?}"
    );
}

const NETSUITE_CREATE: &str = r#"
apiVersion: sluice/v1
id: ns-create
steps:
  - id: create
    write:
      connection: ns
      entity: purchase_order
      op: create
      data:
        vendor_id: "100002"
        order_date: "2026-02-02"
        expected_date: "2026-02-16"
        lines:
          - { line_number: 1, item_id: MAT-1003, description: Gear oil, quantity: 20, unit_of_measure: L, unit_price: 7.9, amount: 158 }
  - id: update
    needs: [create]
    write:
      connection: ns
      entity: purchase_order
      op: update
      id: "${{ steps.create.output.remote_id }}"
      data: { expected_date: "2026-03-01" }
output: { created: "${{ steps.create.output }}", updated: "${{ steps.update.output }}" }
"#;

#[tokio::test]
async fn a_netsuite_create_answered_204_with_location_is_read_back_and_carries_a_uuid_idempotency_key()
 {
    let emu = netsuite::start(2, 1).await;
    let c = netsuite_conn(&emu, netsuite::CLIENT_SECRET);
    let (engine, _dir) = engine_with(&[("ns", &c)]).await;
    let out = common::run(&engine, NETSUITE_CREATE, json!({})).await;
    assert_eq!(out.status, RunStatus::Succeeded, "{:?}", out.error);
    let o = out.output.unwrap();
    // 204 + Location: the record was read back and mapped.
    let created = &o["created"];
    let id = created["remote_id"].as_str().unwrap();
    assert_eq!(
        emu.record("purchaseOrder", id).unwrap()["tranId"],
        created["number"],
        "the record NetSuite made: {o}"
    );
    assert_eq!(created["vendor_name"], "Nordic Bearings AB");
    assert_eq!(created["status"], "pending_approval");
    assert_eq!(created["lines"][0]["item_id"], "MAT-1003");
    assert_eq!(created["total"].as_f64(), Some(158.0), "{created}");
    assert!(created.get("mapped").is_none(), "{created}");
    assert_eq!(o["updated"]["expected_date"], "2026-03-01", "{o}");

    let writes: Vec<_> = emu
        .requests()
        .into_iter()
        .filter(|r| {
            (r.method == "POST" && r.path.ends_with("/purchaseOrder")) || r.method == "PATCH"
        })
        .collect();
    assert_eq!(writes.len(), 2, "{writes:?}");
    let keys: Vec<&str> = writes
        .iter()
        .map(|r| {
            r.header(netsuite::IDEMPOTENCY_HEADER)
                .expect("each write carries a key")
        })
        .collect();
    assert_ne!(keys[0], keys[1], "create and update are different writes");
    for k in &keys {
        assert!(
            uuid::Uuid::parse_str(k).is_ok(),
            "a UUID, as NetSuite wants: {k}"
        );
    }
    let body: Value = serde_json::from_str(&writes[0].body).unwrap();
    assert_eq!(body["entity"]["id"], "100002");
    assert_eq!(body["item"]["items"][0]["rate"], 7.9);
}

#[tokio::test]
async fn a_netsuite_create_whose_answer_was_lost_is_retried_with_the_same_key_and_made_once() {
    let emu = netsuite::start(2, 1).await;
    let c = netsuite_conn(&emu, netsuite::CLIENT_SECRET);
    let (engine, _dir) = engine_with(&[("ns", &c)]).await;
    // A token first, so the fault below hits the create.
    c.connector
        .list(Entity::Vendor, &ListQuery::default())
        .await
        .unwrap();
    let before = emu.count("purchaseOrder");
    // NetSuite creates the order, then the gateway answers 504.
    emu.inject([Fault::LostAnswer(504)]);
    let out = common::run(&engine, NETSUITE_CREATE, json!({})).await;
    assert_eq!(out.status, RunStatus::Succeeded, "{:?}", out.error);
    let o = out.output.unwrap();
    let posts: Vec<_> = emu
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/purchaseOrder"))
        .collect();
    assert_eq!(posts.len(), 2, "the create was retried after the 504");
    assert_eq!(
        posts[0].header(netsuite::IDEMPOTENCY_HEADER),
        posts[1].header(netsuite::IDEMPOTENCY_HEADER),
        "with the same key"
    );
    assert_eq!(
        emu.count("purchaseOrder"),
        before + 1,
        "one order, not two: the retry was recognised by its key"
    );
    let id = o["created"]["remote_id"].as_str().unwrap();
    assert!(emu.record("purchaseOrder", id).is_some(), "{o}");
    assert!(o["created"].get("mapped").is_none(), "{o}");
}

#[tokio::test]
async fn a_netsuite_update_applied_but_not_read_back_succeeds_with_its_id_and_a_warning() {
    let emu = netsuite::start(2, 1).await;
    let c = netsuite_conn(&emu, netsuite::CLIENT_SECRET);
    let (engine, _dir) = engine_with(&[("ns", &c)]).await;
    // Token, create, its read-back, the update (204): then reading the
    // updated order back fails.
    emu.inject([
        Fault::Pass,
        Fault::Pass,
        Fault::Pass,
        Fault::Pass,
        Fault::Status(404),
    ]);
    let out = common::run(&engine, NETSUITE_CREATE, json!({})).await;
    assert_eq!(out.status, RunStatus::Succeeded, "{:?}", out.error);
    let o = out.output.unwrap();
    let id = o["created"]["remote_id"].as_str().unwrap();
    let updated = &o["updated"];
    assert_eq!(updated["mapped"], false, "{o}");
    assert_eq!(updated["remote_id"], id, "{o}");
    assert_eq!(updated["id"], format!("ns:{id}"));
    let w = updated["warning"].as_str().unwrap();
    assert!(
        w.starts_with("ns accepted the update of purchase_order (HTTP 204)")
            && w.contains("reading the record back failed"),
        "{w}"
    );
    // The update was applied in NetSuite.
    assert_eq!(
        emu.record("purchaseOrder", id).unwrap()["dueDate"],
        "2026-03-01"
    );
}

#[tokio::test]
async fn a_create_without_an_idempotency_key_whose_answer_was_lost_is_not_sent_again() {
    let emu = bc::start(2, 1).await;
    let c = bc_conn(&emu);
    let (engine, _dir) = engine_with(&[("bc", &c)]).await;
    // A token first, so the faults below hit the creates.
    c.connector
        .list(Entity::Vendor, &ListQuery::default())
        .await
        .unwrap();
    let flow = format!(
        r#"
apiVersion: sluice/v1
id: bc-create
steps:
  - id: create
    write:
      connection: bc
      entity: purchase_order
      op: create
      data:
        vendor_id: "{vendor}"
        currency: EUR
        lines:
          - {{ line_number: 1, item_id: MAT-1003, description: Gear oil, quantity: 20, unit_of_measure: L, unit_price: 7.9, amount: 158 }}
    retry: {{ max_attempts: 3, backoff: constant, initial: 10ms }}
output: "${{{{ steps.create.output }}}}"
"#,
        vendor = bc::vendor_id(2)
    );
    let before = emu.count("purchaseOrders");
    // Business Central makes the order, then the gateway answers 504.
    emu.inject([Fault::LostAnswer(504)]);
    let out = common::run(&engine, &flow, json!({})).await;
    assert_eq!(out.status, RunStatus::Failed, "{:?}", out.output);
    let err = out.error.unwrap();
    let message = err["message"].as_str().unwrap();
    assert!(
        message.contains("504")
            && message
                .contains("the create was not sent again: the system may have made the record")
            && message.contains("`business_central` sends no idempotency key"),
        "{message}"
    );
    assert_eq!(err["retryable"], false, "{err}");
    assert_eq!(
        emu.count("purchaseOrders"),
        before + 1,
        "one order, not one per retry"
    );
    // A 503 (not done, by definition) is still retried.
    emu.inject([Fault::Status(503)]);
    let out = common::run(&engine, &flow, json!({})).await;
    assert_eq!(out.status, RunStatus::Succeeded, "{:?}", out.error);
    assert_eq!(emu.count("purchaseOrders"), before + 2);
}

/// A connection test passes only when the system answers as an API: a 2xx
/// page from something else at the base URL (a web server's index, a proxy's
/// sign-in form) is refused, saying what answered.
#[tokio::test]
async fn a_connection_test_answered_by_a_web_page_fails_naming_what_answered() {
    let app = axum::Router::new().fallback(|| async {
        (
            [(axum::http::header::CONTENT_TYPE, "text/html; charset=utf-8")],
            "<html><body>Welcome to nginx!</body></html>",
        )
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let c = connect_with(
        "mx",
        &Definitions::built_in(),
        "maximo",
        &[("base_url", &base), ("site", "BEDFORD")],
        &[("api_key", maximo::API_KEY)],
        fast_policy(),
    );
    let e = c.connector.test().await.unwrap_err();
    assert_eq!(e.code().as_str(), "NOT_FOUND");
    assert_eq!(e.upstream_status, Some(200));
    assert_eq!(
        e.message,
        "GET /maximo/api/os/mxapiwo answered 200 with text/html; charset=utf-8 (43 bytes), \
         where IBM Maximo Manage (REST API, mxapiwo / mxapiasset) answers with JSON: check the base URL"
    );
    // The real system passes.
    let emu = maximo::start(1).await;
    let c = maximo_conn(&emu, maximo::API_KEY, fast_policy());
    c.connector.test().await.unwrap_or_else(|e| panic!("{e}"));
}

/// A connection made through a connect link (`guarded`) reaches no internal
/// address: an IP in its URL parameters is refused when it is built, and a
/// host name is checked each time it connects, by every address it resolves
/// to, so a name that resolves inward (or is re-pointed inward after the
/// link's check: DNS rebinding) is refused before any request is sent.
#[tokio::test]
async fn a_connection_made_through_a_link_reaches_no_internal_address_even_by_name() {
    let emu = maximo::start(1).await;
    let port = url::Url::parse(&emu.base_url).unwrap().port().unwrap();
    let def = Definitions::built_in().get("maximo").unwrap().clone();
    let config = |base: &str, guarded: bool| ConnectionConfig {
        definition: "maximo".into(),
        params: [("base_url", base), ("site", "BEDFORD")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        credentials: [("api_key".to_string(), "MX_KEY".to_string())].into(),
        policy: fast_policy(),
        guarded,
        ..ConnectionConfig::default()
    };
    let build = |c: &ConnectionConfig| {
        HttpConnector::new(
            "mx",
            def.clone(),
            c,
            &|_| Some(maximo::API_KEY.to_string()),
            Arc::new(Health::new(
                "mx",
                fast_policy(),
                ConnectionStatus::Online,
                None,
            )),
        )
    };
    let Err(e) = build(&config(&emu.base_url, true)) else {
        panic!("a guarded connection to a loopback IP was built");
    };
    assert!(
        e.message.contains("parameter `base_url`") && e.message.contains("must use https"),
        "{}",
        e.message
    );
    // However the URL is spelled, as the URL parser reads it.
    for spelled in [
        "HTTPS://10.1.2.3",
        "https:10.1.2.3",
        "https:/169.254.169.254/x",
    ] {
        let Err(e) = build(&config(spelled, true)) else {
            panic!("a guarded connection to {spelled} was built");
        };
        assert!(
            e.message.contains("parameter `base_url`")
                && e.message.contains("addresses are blocked"),
            "{spelled}: {}",
            e.message
        );
    }
    // Any parameter that is a URL (here Business Central's OAuth `login_url`).
    let bc_config = ConnectionConfig {
        definition: "business_central".into(),
        params: [
            ("base_url", "https://api.example.com"),
            ("login_url", "Https:169.254.169.254"),
            ("tenant", "t"),
            ("company_id", "c"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect(),
        credentials: [
            ("client_id".to_string(), "ID".to_string()),
            ("client_secret".to_string(), "SECRET".to_string()),
        ]
        .into(),
        guarded: true,
        ..ConnectionConfig::default()
    };
    let Err(e) = HttpConnector::new(
        "bc",
        Definitions::built_in()
            .get("business_central")
            .unwrap()
            .clone(),
        &bc_config,
        &|_| Some("x".to_string()),
        Arc::new(Health::new(
            "bc",
            fast_policy(),
            ConnectionStatus::Online,
            None,
        )),
    ) else {
        panic!("a guarded connection with a metadata login_url was built");
    };
    assert!(
        e.message.contains("parameter `login_url`") && e.message.contains("169.254.169.254"),
        "{}",
        e.message
    );
    let by_name = build(&config(&format!("https://localhost:{port}"), true)).unwrap();
    let e = by_name.test().await.unwrap_err();
    assert_eq!(e.code().as_str(), "CONNECTION_UNAVAILABLE");
    assert!(
        e.message.contains("refused to connect to localhost")
            && e.message.contains("loopback addresses are blocked"),
        "{}",
        e.message
    );
    assert!(emu.requests().is_empty(), "no request left this process");
    // The same connection made by an operator (not guarded) reaches it.
    build(&config(&emu.base_url, false))
        .unwrap()
        .test()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // Stored, the mark stays with the connection.
    let stored = serde_json::to_value(config(&emu.base_url, true)).unwrap();
    assert_eq!(stored["guarded"], true);
    let plain = serde_json::to_value(config(&emu.base_url, false)).unwrap();
    assert!(plain.get("guarded").is_none(), "{plain}");
}
