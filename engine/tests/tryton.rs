//! The shipped `tryton` definition against a real Tryton server (trytond 8.2
//! with the `purchase` and `stock` modules from PyPI, on SQLite), which
//! `.ci/run` installs into `tests/tryton/.venv`. Nothing here is an emulator:
//! the database is made by `trytond-admin`, seeded by `tests/tryton/seed.py`
//! through Tryton's own client library (proteus), and served by `trytond`.
//!
//! Without the venv these tests print that they skipped; with `CI=true` they
//! fail instead.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};
use sluice::connectors::definition::Definitions;
use sluice::connectors::http::{ConnectionConfig, HttpConnector};
use sluice::connectors::resilience::{Health, Policy};
use sluice::connectors::{ConnectionStatus, Connector};
use sluice::store::RunStatus;
use sluice::sync::{self, Mode, SyncOptions};
use sluice::unified::Entity;

const DB: &str = "sluice";
/// The admin password `trytond-admin` is given.
const PASSWORD: &str = "admin-pw";

fn venv() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/tryton/.venv")
}

/// The seeded database file, made once per test process: `trytond-admin`
/// installs `purchase` and `stock` (about 20 s), then `seed.py` adds a
/// company, three suppliers, four goods and six purchases.
fn template_db() -> Option<&'static PathBuf> {
    static DB_FILE: OnceLock<Option<(tempfile::TempDir, PathBuf)>> = OnceLock::new();
    DB_FILE
        .get_or_init(|| {
            let bin = venv().join("bin");
            if !bin.join("trytond").exists() {
                let why = "skipped: trytond is not installed (`.ci/run` makes tests/tryton/.venv)";
                assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
                eprintln!("{why}");
                return None;
            }
            let dir = tempfile::tempdir().unwrap();
            let conf = write_config(dir.path(), 0, "");
            std::fs::write(dir.path().join(format!("{DB}.sqlite")), b"").unwrap();
            let pass = dir.path().join("pass");
            std::fs::write(&pass, PASSWORD).unwrap();
            let run = |cmd: &mut Command| {
                let o = cmd.output().unwrap();
                assert!(
                    o.status.success(),
                    "{cmd:?} failed:\n{}\n{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                );
            };
            run(Command::new(bin.join("trytond-admin"))
                .args([
                    "-c",
                    conf.to_str().unwrap(),
                    "-d",
                    DB,
                    "--all",
                    "-u",
                    "purchase",
                    "stock",
                ])
                .args(["--activate-dependencies", "--email", "admin@example.com"])
                .env("TRYTONPASSFILE", &pass));
            run(Command::new(bin.join("python")).args([
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../tests/tryton/seed.py")
                    .to_str()
                    .unwrap(),
                conf.to_str().unwrap(),
                DB,
            ]));
            let file = dir.path().join(format!("{DB}.sqlite"));
            Some((dir, file))
        })
        .as_ref()
        .map(|(_, f)| f)
}

/// `session` is more of trytond's `[session]` section.
fn write_config(dir: &Path, port: u16, session: &str) -> PathBuf {
    let conf = dir.join("trytond.conf");
    std::fs::write(
        &conf,
        format!(
            "[database]\nuri = sqlite://\npath = {}\n[web]\nlisten = 127.0.0.1:{port}\n[session]\nmax_attempt = 100\n{session}",
            dir.display()
        ),
    )
    .unwrap();
    conf
}

/// A trytond on a free port with its own copy of the seeded database.
struct Tryton {
    child: Child,
    base_url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Tryton {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start() -> Option<Tryton> {
    start_with("").await
}

/// [`start`], with more of trytond's `[session]` configuration.
async fn start_with(session: &str) -> Option<Tryton> {
    let template = template_db()?;
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(template, dir.path().join(format!("{DB}.sqlite"))).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let conf = write_config(dir.path(), port, session);
    // `-d` loads the database's modules at start (without it the first
    // login finds an empty pool).
    let child = Command::new(venv().join("bin/trytond"))
        .args(["-c", conf.to_str().unwrap(), "-d", DB])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Tryton {
        child,
        base_url: format!("http://127.0.0.1:{port}"),
        _dir: dir,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    while rpc_login(&t.base_url).await.is_none() {
        assert!(Instant::now() < deadline, "trytond did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Some(t)
}

/// Logs in as admin; the `Authorization` header value.
async fn rpc_login(base: &str) -> Option<String> {
    let r: Value = reqwest::Client::new()
        .post(format!("{base}/{DB}/rpc/"))
        .json(&json!({"id": 0, "method": "common.db.login", "params": ["admin", {"password": PASSWORD}]}))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()?;
    let session = r["result"].as_array()?;
    let raw = format!("admin:{}:{}", session[0], session[1].as_str()?);
    Some(format!(
        "Session {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    ))
}

/// Calls a Tryton method directly, as another user of the ERP would.
async fn rpc(t: &Tryton, method: &str, params: Value) -> Value {
    let auth = rpc_login(&t.base_url).await.unwrap();
    let r: Value = reqwest::Client::new()
        .post(format!("{}/{DB}/rpc/", t.base_url))
        .header("authorization", auth)
        .json(&json!({"id": 1, "method": method, "params": params}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(r.get("error").is_none(), "{method}: {r}");
    r["result"].clone()
}

fn connector(t: &Tryton, password: &str) -> Arc<HttpConnector> {
    connector_with(t, password, &[])
}

/// [`connector`] with more of the definition's parameters.
fn connector_with(t: &Tryton, password: &str, more: &[(&str, &str)]) -> Arc<HttpConnector> {
    let policy = Policy {
        base_delay_ms: 5,
        max_delay_ms: 20,
        ..Policy::default()
    };
    let config = ConnectionConfig {
        definition: "tryton".into(),
        params: [
            ("base_url".to_string(), t.base_url.clone()),
            ("database".to_string(), DB.to_string()),
        ]
        .into_iter()
        .chain(more.iter().map(|(k, v)| (k.to_string(), v.to_string())))
        .collect(),
        credentials: [
            ("username".to_string(), "TRY_USER".to_string()),
            ("password".to_string(), "TRY_PASSWORD".to_string()),
        ]
        .into(),
        policy,
        ..ConnectionConfig::default()
    };
    let password = password.to_string();
    Arc::new(
        HttpConnector::new(
            "erp",
            Definitions::built_in().get("tryton").unwrap().clone(),
            &config,
            &move |name| match name {
                "TRY_USER" => Some("admin".into()),
                "TRY_PASSWORD" => Some(password.clone()),
                _ => None,
            },
            Arc::new(Health::new("erp", policy, ConnectionStatus::Online, None)),
        )
        .unwrap_or_else(|e| panic!("{e}")),
    )
}

async fn run_flow(c: &Arc<HttpConnector>, flow: &str) -> (Value, sluice::store::Store) {
    let (store, dir) = common::sqlite_store().await;
    let engine = common::engine(
        store.clone(),
        vec![("erp", c.clone() as Arc<dyn Connector>)],
        vec![],
    );
    let out = common::run(&engine, flow, json!({})).await;
    assert_eq!(out.status, RunStatus::Succeeded, "{:?}", out.error);
    std::mem::forget(dir);
    (out.output.unwrap(), store)
}

fn read(entity: &str, extra: &str) -> String {
    format!(
        "apiVersion: sluice/v1\nid: r\nsteps:\n  - id: r\n    read: {{ connection: erp, entity: {entity}{extra} }}\noutput: \"${{{{ steps.r.output }}}}\"\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn purchases_vendors_and_goods_read_sync_and_create_against_a_real_trytond() {
    let Some(t) = start().await else {
        return;
    };
    let c = connector(&t, PASSWORD);

    // Reads: six purchases of two lines; decimals exact from Tryton's Decimal objects.
    let (out, _) = run_flow(&c, &read("purchase_order", "")).await;
    assert_eq!(out["count"], 6, "{out}");
    let po = &out["records"][0];
    assert_eq!(
        po["number"], "REF-1",
        "a draft has no number yet: its reference"
    );
    assert_eq!(po["vendor_name"], "Supplier 1");
    assert_eq!(po["status"], "draft");
    assert_eq!(po["currency"], "EUR");
    assert_eq!(po["order_date"], "2024-01-01");
    assert_eq!(po["buyer"], "admin");
    // 2 × 10.10 + 3 × 10.35 = 20.20 + 31.05
    assert_eq!(po["lines"][0]["unit_price"], 10.1);
    assert_eq!(po["lines"][1]["amount"], 31.05);
    assert_eq!(po["total"], 51.25);
    assert_eq!(po["total_excluding_tax"], 51.25);
    assert_eq!(po["tax_total"], 0);
    assert_eq!(po["lines"][0]["description"], "[ITM1] Pump seal kit");
    assert_eq!(po["lines"][0]["unit_of_measure"], "u");

    let (vendors, _) = run_flow(&c, &read("vendor", "")).await;
    let names: Vec<&str> = vendors["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"Supplier 3") && names.contains(&"Supplier 1"),
        "{names:?}"
    );
    assert_eq!(vendors["records"][1]["status"], "active");
    let (items, _) = run_flow(&c, &read("inventory_item", "")).await;
    assert_eq!(items["count"], 4, "{items}");
    assert_eq!(items["records"][0]["sku"], "ITM1");
    assert_eq!(items["records"][0]["name"], "[ITM1] Pump seal kit");
    // Stock on hand is per location: the warehouse's (an inventory of its
    // storage counted 25 seal kits and 120 bearings).
    let wh = rpc(
        &t,
        "model.stock.location.search",
        json!([[["type", "=", "warehouse"]], 0, 1, null, {}]),
    )
    .await;
    let wh = wh[0].as_i64().expect("trytond has a warehouse").to_string();
    let stocked = connector_with(&t, PASSWORD, &[("warehouse_id", &wh)]);
    let (items, _) = run_flow(&stocked, &read("inventory_item", "")).await;
    let on_hand: Vec<(&str, &Value)> = items["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["sku"].as_str().unwrap(), &r["quantity_on_hand"]))
        .collect();
    assert_eq!(
        on_hand,
        [
            ("ITM1", &json!(25)),
            ("ITM2", &json!(0)),
            ("ITM3", &json!(120)),
            ("ITM4", &json!(0))
        ],
        "{items}"
    );

    // Pages of 2 put offsets in the JSON-RPC body: every purchase, once.
    let mut opts = SyncOptions {
        mode: Mode::Full,
        page_size: 2,
        lookback: Duration::ZERO,
        ..SyncOptions::default()
    };
    let (store, _dir) = common::sqlite_store().await;
    let sync = |opts: &SyncOptions| {
        let (store, c, opts) = (store.clone(), c.clone(), opts.clone());
        async move {
            sync::run(
                &store,
                c.as_ref(),
                "erp",
                Entity::PurchaseOrder,
                &opts,
                None,
            )
            .await
            .unwrap()
        }
    };
    let r = sync(&opts).await;
    assert_eq!((r.added, r.deleted, r.pages), (6, 0, 4), "{r:?}");

    // Incremental on the write date: one purchase changed in Tryton.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let before = chrono::Utc::now();
    rpc(
        &t,
        "model.purchase.purchase.write",
        json!([[3], {"reference": "REF-3b"}, {}]),
    )
    .await;
    let since =
        (before - chrono::Duration::seconds(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let (changed, _) = run_flow(
        &c,
        &read("purchase_order", &format!(", modified_after: \"{since}\"")),
    )
    .await;
    assert_eq!(changed["count"], 1, "{changed}");
    assert_eq!(changed["records"][0]["number"], "REF-3b");
    assert_eq!(changed["records"][0]["remote_id"], "3");
    // Vendors too: one party renamed since (the company's own, which no
    // purchase names, so the purchases below stay as they were).
    let party = rpc(
        &t,
        "model.party.party.search",
        json!([[["name", "=", "Sluice Test Plant"]], 0, 1, null, {}]),
    )
    .await;
    rpc(
        &t,
        "model.party.party.write",
        json!([[party[0]], {"name": "Sluice Test Plant 2"}, {}]),
    )
    .await;
    let (renamed, _) = run_flow(
        &c,
        &read("vendor", &format!(", modified_after: \"{since}\"")),
    )
    .await;
    assert_eq!(renamed["count"], 1, "{renamed}");
    assert_eq!(renamed["records"][0]["name"], "Sluice Test Plant 2");
    opts.mode = Mode::Incremental;
    let r = sync(&opts).await;
    assert_eq!((r.added, r.updated, r.deleted), (0, 1, 0), "{r:?}");
    // The cursor is now purchase 3's write date: the next incremental sync
    // asks Tryton for that second only, and gets purchase 3 alone.
    let r = sync(&opts).await;
    assert_eq!(
        (r.added, r.updated, r.unchanged, r.deleted),
        (0, 0, 1, 0),
        "{r:?}"
    );

    // A purchase deleted in Tryton: a full sync marks it deleted, nothing else.
    rpc(&t, "model.purchase.purchase.delete", json!([[2], {}])).await;
    opts.mode = Mode::Full;
    let r = sync(&opts).await;
    assert_eq!(
        (r.added, r.updated, r.deleted, r.unchanged),
        (0, 0, 1, 5),
        "{r:?}"
    );
    let r = sync(&opts).await;
    assert_eq!((r.added, r.deleted, r.unchanged), (0, 0, 5), "{r:?}");
    let mut cached: Vec<(String, bool)> = store
        .cached_records("erp", "purchase_order")
        .await
        .unwrap()
        .into_iter()
        .map(|(data, deleted)| {
            let r: Value = serde_json::from_str(&data).unwrap();
            (r["remote_id"].as_str().unwrap().to_string(), deleted)
        })
        .collect();
    cached.sort();
    let deleted: Vec<&str> = cached
        .iter()
        .filter(|(_, d)| *d)
        .map(|(id, _)| id.as_str())
        .collect();
    assert_eq!(deleted, ["2"], "{cached:?}");
    assert_eq!(cached.len(), 6, "{cached:?}");

    // Create a draft purchase; it is read back from Tryton.
    let (created, _) = run_flow(
        &c,
        r#"
apiVersion: sluice/v1
id: create
steps:
  - id: c
    write:
      connection: erp
      entity: purchase_order
      op: create
      data:
        vendor_id: "4"
        currency: EUR
        order_date: "2024-03-01"
        expected_date: "2024-03-15"
        lines:
          - { line_number: 1, item_id: "3", description: Bearings for pump 7, quantity: 40, unit_of_measure: u, unit_price: 4.85, amount: 194 }
output: "${{ steps.c.output }}"
"#,
    )
    .await;
    assert_eq!(created["status"], "draft", "{created}");
    assert_eq!(created["vendor_name"], "Supplier 3");
    assert_eq!(created["order_date"], "2024-03-01");
    assert_eq!(created["expected_date"], "2024-03-15");
    assert_eq!(created["lines"][0]["received_quantity"], 0);
    assert_eq!(created["total"], 194);
    assert_eq!(created["lines"][0]["description"], "Bearings for pump 7");
    let id: i64 = created["remote_id"].as_str().unwrap().parse().unwrap();
    let stored = rpc(
        &t,
        "model.purchase.purchase.read",
        json!(
            [[id], ["state", "party", "total_amount", "delivery_date"], {
            }]
        ),
    )
    .await;
    assert_eq!(stored[0]["state"], "draft");
    assert_eq!(stored[0]["party"], 4);
    assert_eq!(stored[0]["total_amount"]["decimal"], "194.00");
    assert_eq!(
        stored[0]["delivery_date"],
        json!({"__class__": "date", "year": 2024, "month": 3, "day": 15})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_trytond_answers_inside_http_200_is_a_validation_failure_with_its_message() {
    let Some(t) = start().await else {
        return;
    };
    // Lines in kilograms of a product counted in units: the line's `unit`
    // domain (same category as the product's) refuses it, and trytond
    // answers HTTP 200 with `{"error": ["UserError", [message, description,
    // domain]]}` (trytond/protocols/jsonrpc.py `response`, trytond/exceptions.py).
    let kg = rpc(
        &t,
        "model.product.uom.search",
        json!([[["symbol", "=", "kg"]], 0, 1, null, {}]),
    )
    .await;
    let kg = kg[0]
        .as_i64()
        .expect("trytond has a kilogram unit")
        .to_string();
    let c = connector_with(&t, PASSWORD, &[("unit_id", &kg)]);
    let data = json!({"vendor_id": "4", "currency": "EUR", "lines": [
        {"line_number": 1, "item_id": "3", "description": "Bearings", "quantity": 40,
         "unit_of_measure": "kg", "unit_price": 4.85, "amount": 194}]});
    let e = c
        .create(sluice::connectors::WriteRequest {
            entity: Entity::PurchaseOrder,
            remote_id: None,
            data: &data,
            idempotency_key: "k1",
        })
        .await
        .unwrap_err();
    assert_eq!(e.code().as_str(), "VALIDATION_FAILED", "{e:?}");
    assert_eq!(e.upstream_status, Some(200), "{e:?}");
    assert!(!e.is_retryable(), "{e:?}");
    assert!(e.message.contains("Unit"), "{}", e.message);
    assert!(
        !e.message.contains("UserError"),
        "the message, not the class: {}",
        e.message
    );
    // The system answered: the connection stays online.
    assert_eq!(c.health().await, ConnectionStatus::Online);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_login_makes_the_connection_auth_required() {
    let Some(t) = start().await else {
        return;
    };
    let c = connector(&t, "not-the-password");
    let e = c.test().await.unwrap_err();
    assert_eq!(e.code().as_str(), "AUTHENTICATION_FAILED", "{e:?}");
    assert!(e.message.contains("refused the login"), "{}", e.message);
    assert!(!e.message.contains("not-the-password"), "{}", e.message);
    assert_eq!(c.health().await, ConnectionStatus::AuthRequired);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_tryton_session_is_renewed_by_one_login() {
    // trytond refuses a session older than `[session] max_age` seconds with
    // 401 (trytond/security.py `check`, trytond/wsgi.py `auth_required`).
    let Some(t) = start_with("max_age = 2\n").await else {
        return;
    };
    let c = connector(&t, PASSWORD);
    c.test().await.unwrap_or_else(|e| panic!("{e}"));
    let ours = rpc_login(&t.base_url).await.unwrap();
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let refused = reqwest::Client::new()
        .post(format!("{}/{DB}/rpc/", t.base_url))
        .header("authorization", ours)
        .json(&json!({"id": 1, "method": "model.party.party.search_count", "params": [[], {}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401, "an old session is refused");
    // The connector's cached session is as old: it logs in again and reads.
    let (vendors, _) = run_flow(&c, &read("vendor", "")).await;
    assert!(vendors["count"].as_u64().unwrap() >= 3, "{vendors}");
    assert_eq!(c.health().await, ConnectionStatus::Online);
}
