//! The `sluice` binary as a user runs it: example flows, exit codes,
//! validate/schema/graph, runs list/show, and crash-resume after SIGKILL.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice::connectors::sandbox::DATA;
use sluice::store::{RunStatus, Store};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(p)
}

fn sluice(args: &[&str], db: &str) -> Output {
    Command::new(BIN)
        .args(args)
        .env("SLUICE_DB", db)
        .env_remove("RUST_LOG")
        .env_remove("SLUICE_LOG")
        .output()
        .expect("sluice runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json_out(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&o.stdout),
            stderr(o)
        )
    })
}

fn temp_db() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("cli.db").display());
    (dir, db)
}

#[test]
fn po_high_value_alert_example_lists_every_approved_order_over_the_threshold() {
    let (_d, db) = temp_db();
    let flow = repo("flows/po-high-value-alert.yaml");
    for threshold in [10000.0, 50000.0] {
        let o = sluice(
            &[
                "run",
                flow.to_str().unwrap(),
                "--json",
                "--input",
                &format!("threshold={threshold}"),
            ],
            &db,
        );
        assert!(o.status.success(), "{}", stderr(&o));
        let out = json_out(&o);
        assert_eq!(out["status"], "succeeded");
        let got: Vec<String> = out["output"]["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["po"].as_str().unwrap().to_string())
            .collect();
        let want: Vec<String> = DATA
            .purchase_orders
            .iter()
            .filter(|p| p["status"] == "approved" && p["total"].as_f64().unwrap() > threshold)
            .map(|p| p["number"].as_str().unwrap().to_string())
            .collect();
        assert!(!want.is_empty());
        assert_eq!(got, want, "threshold {threshold}");
        assert!(
            out["output"]["alerts"][0]["message"]
                .as_str()
                .unwrap()
                .starts_with(&format!("PO {} from ", want[0]))
        );
    }
}

#[test]
fn overdue_work_orders_example_reports_open_orders_past_due() {
    let (_d, db) = temp_db();
    let o = sluice(
        &[
            "run",
            repo("flows/overdue-work-orders.yaml").to_str().unwrap(),
            "--json",
            "-i",
            "as_of=2026-04-01",
        ],
        &db,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = json_out(&o)["output"].clone();
    let want: Vec<&str> = DATA
        .work_orders
        .iter()
        .filter(|w| {
            ["open", "scheduled", "in_progress", "on_hold"].contains(&w["status"].as_str().unwrap())
        })
        .filter(|w| w["due_date"].as_str().unwrap() < "2026-04-01")
        .map(|w| w["number"].as_str().unwrap())
        .collect();
    assert_eq!(out["count"], want.len());
    assert_eq!(out["work_orders"], serde_json::json!(want));
    assert_eq!(out["as_of"], "2026-04-01");
}

#[test]
fn out_of_stock_example_finds_open_orders_for_unavailable_items() {
    let (_d, db) = temp_db();
    let o = sluice(
        &[
            "run",
            repo("flows/out-of-stock-open-pos.yaml").to_str().unwrap(),
            "--json",
        ],
        &db,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = json_out(&o)["output"].clone();
    let oos: Vec<&str> = DATA
        .inventory_items
        .iter()
        .filter(|i| i["quantity_available"] == 0.0)
        .map(|i| i["remote_id"].as_str().unwrap())
        .collect();
    assert_eq!(out["out_of_stock_items"], serde_json::json!(oos));
    let want: Vec<&str> = DATA
        .purchase_orders
        .iter()
        .filter(|p| {
            ["pending_approval", "approved", "partially_received"]
                .contains(&p["status"].as_str().unwrap())
        })
        .filter(|p| {
            p["lines"]
                .as_array()
                .unwrap()
                .iter()
                .any(|l| oos.contains(&l["item_id"].as_str().unwrap()))
        })
        .map(|p| p["number"].as_str().unwrap())
        .collect();
    let got: Vec<&str> = out["affected_orders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["po"].as_str().unwrap())
        .collect();
    assert!(!want.is_empty());
    assert_eq!(got, want);
}

#[test]
fn plain_run_shows_step_progress_on_stderr_and_output_on_stdout() {
    let (_d, db) = temp_db();
    let o = sluice(
        &[
            "run",
            repo("flows/overdue-work-orders.yaml").to_str().unwrap(),
        ],
        &db,
    );
    assert!(o.status.success());
    let err = stderr(&o);
    assert!(
        err.contains("ok   open (") && err.contains("ok   report ("),
        "{err}"
    );
    assert!(err.contains("succeeded"), "{err}");
    let out: Value = serde_json::from_slice(&o.stdout).expect("stdout is the output JSON");
    assert!(out["count"].as_u64().unwrap() > 0);
}

#[test]
fn exit_codes_tell_success_failure_and_invalid_input_apart() {
    let (dir, db) = temp_db();
    let failing = dir.path().join("fail.yaml");
    std::fs::write(
        &failing,
        "apiVersion: sluice/v1\nid: fails\nsteps:\n  - { id: a, set: \"${{ 1 / 0 }}\" }\n",
    )
    .unwrap();
    let o = sluice(&["run", failing.to_str().unwrap()], &db);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("failed: step `a`: expression `1 / 0` failed"),
        "{}",
        stderr(&o)
    );

    let invalid = dir.path().join("invalid.yaml");
    std::fs::write(
        &invalid,
        "apiVersion: sluice/v1\nid: bad\nsteps:\n  - id: a\n    needs: [ghost]\n    sett: 1\n",
    )
    .unwrap();
    let o = sluice(&["run", invalid.to_str().unwrap()], &db);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains("invalid.yaml:6:5: error[unknown-key]: unknown key `sett`"),
        "{err}"
    );
    assert!(
        err.contains("invalid.yaml:5:13: error[unknown-step]: `needs` names `ghost`"),
        "{err}"
    );

    let o = sluice(
        &["run", invalid.to_str().unwrap(), "--input", "nonsense"],
        &db,
    );
    assert_eq!(o.status.code(), Some(2));
    let o = sluice(&["run", "--no-such-flag"], &db);
    assert_eq!(o.status.code(), Some(2));
    let o = sluice(
        &[
            "run",
            repo("flows/overdue-work-orders.yaml").to_str().unwrap(),
            "--db",
            "mysql://x/y",
        ],
        &db,
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("unsupported database URL `mysql://x/y`"),
        "{}",
        stderr(&o)
    );
    let o = sluice(
        &[
            "run",
            repo("flows/overdue-work-orders.yaml").to_str().unwrap(),
            "-i",
            "nope=1",
        ],
        &db,
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("unknown input `nope`"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn validate_schema_and_graph_commands() {
    let o = sluice(
        &["validate", repo("flows").to_str().unwrap()],
        "sqlite://unused.db",
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    assert_eq!(
        out.matches("ok: ").count(),
        3,
        "ok lines go to stdout: {out}"
    );
    assert!(
        out.contains("checked 3 flow file(s): 3 ok, 0 with problems"),
        "{out}"
    );

    // Directories are walked recursively; flow ids must be unique across
    // files; a path that holds no flow file is an error, not a silent pass.
    let tree = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tree.path().join("a/b")).unwrap();
    std::fs::create_dir_all(tree.path().join("empty")).unwrap();
    let flow = std::fs::read_to_string(repo("flows/po-high-value-alert.yaml")).unwrap();
    std::fs::write(tree.path().join("a/one.yaml"), &flow).unwrap();
    std::fs::write(tree.path().join("a/b/two.yml"), &flow).unwrap();
    let o = sluice(
        &["validate", tree.path().join("a").to_str().unwrap()],
        "sqlite://unused.db",
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains(
            "one.yaml:2:5: error[duplicate-flow-id]: flow id `po-high-value-alert` is also the id of"
        ),
        "{}",
        stderr(&o)
    );
    assert!(
        stderr(&o).contains("checked 2 flow file(s): 1 ok, 1 with problems"),
        "{}",
        stderr(&o)
    );
    let o = sluice(
        &["validate", tree.path().join("empty").to_str().unwrap()],
        "sqlite://unused.db",
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("holds no flow file"), "{}", stderr(&o));

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, "apiVersion: sluice/v1\nid: x\nsteps:\n  - { id: a, needs: [b], set: 1 }\n  - { id: b, needs: [a], set: 2 }\n").unwrap();
    let o = sluice(
        &[
            "validate",
            "--json",
            bad.to_str().unwrap(),
            repo("flows/overdue-work-orders.yaml").to_str().unwrap(),
        ],
        "sqlite://unused.db",
    );
    assert_eq!(o.status.code(), Some(2));
    let report = json_out(&o);
    assert_eq!(report[0]["ok"], false);
    assert_eq!(
        report[0]["diagnostics"][0]["message"],
        "steps form a cycle: a → b → a"
    );
    assert_eq!(report[1]["ok"], true);

    let o = sluice(&["schema"], "sqlite://unused.db");
    assert_eq!(json_out(&o), sluice::flow::json_schema());

    let flow = repo("flows/po-high-value-alert.yaml");
    let o = sluice(&["graph", flow.to_str().unwrap()], "sqlite://unused.db");
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.starts_with("flowchart TD"), "{text}");
    assert!(
        text.contains("approved --> big") && text.contains("big --> alerts"),
        "{text}"
    );
    assert!(
        text.contains("alerts[\"alerts (set · for_each)\"]"),
        "{text}"
    );
    let o = sluice(
        &["graph", "--dot", flow.to_str().unwrap()],
        "sqlite://unused.db",
    );
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("\"approved\" -> \"big\";"), "{text}");
}

#[test]
fn runs_list_and_show_report_stored_runs() {
    let (_d, db) = temp_db();
    let o = sluice(
        &[
            "run",
            repo("flows/overdue-work-orders.yaml").to_str().unwrap(),
            "--json",
        ],
        &db,
    );
    let run_id = json_out(&o)["run_id"].as_str().unwrap().to_string();
    let o = sluice(&["runs", "list"], &db);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains(&run_id)
            && text.contains("overdue-work-orders")
            && text.contains("succeeded"),
        "{text}"
    );
    let o = sluice(&["runs", "show", &run_id, "--json"], &db);
    let shown = json_out(&o);
    assert_eq!(shown["run"]["status"], "succeeded");
    assert_eq!(shown["steps"].as_array().unwrap().len(), 3);
    assert_eq!(
        shown["attempts"].as_array().unwrap().len(),
        1,
        "only the read step has external effects"
    );
    let o = sluice(&["runs", "show", "no-such-run"], &db);
    assert_eq!(o.status.code(), Some(2));
    let o = sluice(&["runs", "resume", &run_id], &db);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("already succeeded"), "{}", stderr(&o));
}

#[test]
fn secrets_never_reach_log_lines() {
    let (dir, db) = temp_db();
    let flow = dir.path().join("secret.yaml");
    std::fs::write(&flow, "apiVersion: sluice/v1\nid: secret\nsteps:\n  - id: w\n    retry: { max_attempts: 2, initial: 1ms }\n    write: { connection: sandbox, entity: vendor, op: update, id: \"${{ secrets.VENDOR_KEY }}\", data: { name: x } }\n").unwrap();
    let o = Command::new(BIN)
        .args(["run", flow.to_str().unwrap(), "--db", &db])
        .env("SLUICE_SECRET_VENDOR_KEY", "VK-9d8e7f-hidden")
        .env("SLUICE_LOG", "debug")
        .output()
        .unwrap();
    // A secret used as a record id would reach the system and the run's
    // history: the flow is refused before it runs, naming the place.
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains("error[secret-leak]: `secrets.VENDOR_KEY` would flow into `steps.0.write.id`"),
        "{err}"
    );
    assert!(
        !err.contains("VK-9d8e7f-hidden")
            && !String::from_utf8_lossy(&o.stdout).contains("VK-9d8e7f-hidden"),
        "{err}"
    );
}

/// Kills a real `sluice run` with SIGKILL in the middle of a slow step,
/// resumes the run, and checks that completed steps ran exactly once.
#[tokio::test(flavor = "multi_thread")]
async fn a_run_killed_mid_step_resumes_without_repeating_completed_steps() {
    let (dir, db) = temp_db();
    let flow = dir.path().join("slow.yaml");
    std::fs::write(
        &flow,
        r#"apiVersion: sluice/v1
id: crash-resume
steps:
  - id: record
    write: { connection: sandbox, entity: vendor, op: update, id: V-1002, data: { email: resumed@example.com } }
  - { id: slow, needs: [record], wait: { duration: 3s } }
  - { id: done, needs: [slow], set: "${{ steps.record.output.email }}" }
"#,
    )
    .unwrap();
    let log = dir.path().join("first-process.log");
    let mut child = Command::new(BIN)
        .args(["run", flow.to_str().unwrap(), "--db", &db])
        .env("SLUICE_RUN_LEASE", "1s")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let store = Store::connect(&db).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    let run_id = loop {
        if Instant::now() > deadline || child.try_wait().unwrap().is_some() {
            panic!(
                "the slow step never started; the process said:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        if let Some(run) = store.list_runs(&Default::default()).await.unwrap().first()
            && store
                .attempts(&run.id)
                .await
                .unwrap()
                .iter()
                .any(|a| a.step_id == "slow")
        {
            break run.id.clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let run = store.get_run(&run_id).await.unwrap().unwrap();
    assert_eq!(
        run.status,
        RunStatus::Running,
        "the killed process left the run running"
    );

    let deadline = Instant::now() + Duration::from_secs(10);
    while !store.orphaned_runs().await.unwrap().contains(&run_id) {
        assert!(Instant::now() < deadline, "lease never expired");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let o = Command::new(BIN)
        .args(["runs", "resume", "--json", "--db", &db])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let out = json_out(&o);
    assert_eq!(out["run_id"], run_id.as_str());
    assert_eq!(out["status"], "succeeded");
    assert_eq!(out["output"], "resumed@example.com");

    let attempts = store.attempts(&run_id).await.unwrap();
    let count = |key: &str| attempts.iter().filter(|a| a.idempotency_key == key).count();
    assert_eq!(
        count(&format!("{run_id}:record")),
        1,
        "the completed write ran once"
    );
    assert_eq!(
        count(&format!("{run_id}:slow")),
        2,
        "the in-flight step ran again with the same key"
    );
    let run = store.get_run(&run_id).await.unwrap().unwrap();
    assert_eq!(run.resumes, 1);
}

/// A tiny receiver for CLI tests: answers 200 after `delay`, counting requests.
async fn counting_receiver(
    delay: Duration,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let count = std::sync::Arc::new(AtomicUsize::new(0));
    let c = count.clone();
    let app = axum::Router::new().fallback(move || {
        let c = c.clone();
        async move {
            tokio::time::sleep(delay).await;
            c.fetch_add(1, Ordering::SeqCst);
            "ok"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, count)
}

#[tokio::test(flavor = "multi_thread")]
async fn webhook_commands_manage_endpoints_and_deliver() {
    use std::sync::atomic::Ordering;
    let (dir, db) = temp_db();
    let (url, count) = counting_receiver(Duration::ZERO).await;
    let cmd = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .env("SLUICE_DB", &db)
            .env("SLUICE_WEBHOOK_ALLOW", "127.0.0.1")
            .output()
            .unwrap()
    };
    let o = cmd(&["webhook", "endpoint", "add", "http://10.1.2.3/x"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("must use https"), "{}", stderr(&o));
    let o = cmd(&[
        "webhook", "endpoint", "add", &url, "--events", "po.*", "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ep = json_out(&o);
    let id = ep["id"].as_str().unwrap().to_string();
    assert!(ep["secret"].as_str().unwrap().starts_with("whsec_"));
    let o = cmd(&["webhook", "endpoint", "list"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains(&id));
    let o = cmd(&["webhook", "endpoint", "rotate", &id]);
    assert!(
        String::from_utf8_lossy(&o.stdout)
            .trim()
            .starts_with("whsec_")
    );

    let flow = dir.path().join("fire.yaml");
    std::fs::write(&flow, "apiVersion: sluice/v1\nid: fire\nsteps:\n  - { id: f, for_each: [1, 2], webhook: { event: po.seen, payload: { n: \"${{ item }}\" } } }\n").unwrap();
    let o = cmd(&["run", flow.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("webhooks: 2 delivery attempt(s); 0 message(s) waiting"),
        "{}",
        stderr(&o)
    );
    assert_eq!(count.load(Ordering::SeqCst), 2);

    let o = cmd(&["webhook", "messages", "--json"]);
    let messages = json_out(&o);
    assert_eq!(messages.as_array().unwrap().len(), 2);
    let mid = messages[0]["id"].as_str().unwrap().to_string();
    assert_eq!(messages[0]["status"], "delivered");
    let o = cmd(&["webhook", "attempts", &mid, "--json"]);
    assert_eq!(json_out(&o)[0]["status_code"], 200);
    let o = cmd(&["webhook", "resend", &mid]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = cmd(&["webhook", "deliver", "--once"]);
    assert!(
        stderr(&o).contains("1 delivery attempt(s)"),
        "{}",
        stderr(&o)
    );
    assert_eq!(count.load(Ordering::SeqCst), 3);
    let o = cmd(&["webhook", "endpoint", "disable", &id]);
    assert!(o.status.success());
    let o = cmd(&["webhook", "endpoint", "disable", "ep_nope"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("no webhook endpoint with id `ep_nope`"));
}

/// Kills a delivering process mid-request; after a restart the message is delivered.
#[tokio::test(flavor = "multi_thread")]
async fn a_delivery_process_killed_mid_request_delivers_after_restart() {
    use std::sync::atomic::Ordering;
    let (_dir, db) = temp_db();
    let (url, count) = counting_receiver(Duration::from_secs(3)).await;
    let store = Store::connect(&db).await.unwrap();
    sluice::webhooks::endpoints::add(
        &store,
        &sluice::webhooks::ssrf::GuardPolicy::parse("127.0.0.1").unwrap(),
        sluice::webhooks::endpoints::NewEndpoint {
            url,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    sluice::webhooks::emit(
        &store,
        "crash-key",
        "system.error",
        None,
        serde_json::json!({"n": 1}),
    )
    .await
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["webhook", "deliver", "--db", &db])
        .env("SLUICE_WEBHOOK_ALLOW", "127.0.0.1")
        .env("SLUICE_WEBHOOK_LEASE", "1s")
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let m = &store.messages(&Default::default()).await.unwrap()[0];
        if m.status == sluice::store::MessageStatus::Delivering {
            break;
        }
        assert!(Instant::now() < deadline, "never claimed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await; // the request is in flight
    child.kill().unwrap();
    child.wait().unwrap();
    tokio::time::sleep(Duration::from_millis(1200)).await; // the lease expires
    let o = Command::new(BIN)
        .args(["webhook", "deliver", "--once", "--db", &db])
        .env("SLUICE_WEBHOOK_ALLOW", "127.0.0.1")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let m = &store.messages(&Default::default()).await.unwrap()[0];
    assert_eq!(m.status, sluice::store::MessageStatus::Delivered);
    assert!(count.load(Ordering::SeqCst) >= 1);
}

#[test]
fn plugin_commands_push_list_show_and_remove() {
    let (dir, db) = temp_db();
    let wasm = common::wasm::plugin_path("po_risk");
    let cache = dir.path().join("cache");
    let cmd = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .env("SLUICE_DB", &db)
            .env("SLUICE_PLUGIN_CACHE", &cache)
            .output()
            .unwrap()
    };
    let o = cmd(&[
        "plugin",
        "push",
        wasm.to_str().unwrap(),
        "--name",
        "po-risk",
        "--version",
        "1.0.0",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).starts_with("po-risk@1.0.0 sha256:"));
    let o = cmd(&[
        "plugin",
        "push",
        wasm.to_str().unwrap(),
        "--name",
        "po-risk",
        "--version",
        "1.0.0",
    ]);
    assert!(o.status.success(), "pushing the same bytes again is fine");
    let other = common::wasm::plugin_path("echo");
    let o = cmd(&[
        "plugin",
        "push",
        other.to_str().unwrap(),
        "--name",
        "po-risk",
        "--version",
        "1.0.0",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("already exists with other content"),
        "{}",
        stderr(&o)
    );
    let bogus = dir.path().join("bogus.wasm");
    std::fs::write(&bogus, b"not wasm at all").unwrap();
    let o = cmd(&[
        "plugin",
        "push",
        bogus.to_str().unwrap(),
        "--name",
        "bogus",
        "--version",
        "1.0.0",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("this is not WebAssembly"),
        "{}",
        stderr(&o)
    );
    let o = cmd(&["plugin", "list"]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("po-risk"));
    let o = cmd(&["plugin", "show", "po-risk@1.0.0"]);
    assert_eq!(json_out(&o)[0]["version"], "1.0.0");

    let flow = dir.path().join("risk.yaml");
    std::fs::write(&flow, "apiVersion: sluice/v1\nid: risk\nsteps:\n  - id: po\n    read: { connection: sandbox, entity: purchase_order, filter: { remote_id: \"4500000018\" } }\n  - id: score\n    needs: [po]\n    plugin: { name: po-risk, version: \"^1\" }\n    with: \"${{ steps.po.output.records[0] }}\"\n").unwrap();
    let o = cmd(&["run", flow.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = json_out(&o);
    assert_eq!(out["output"]["po"], "4500000018");
    assert!(
        out["output"]["reasons"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r == "vendor V-9999 is unknown")
    );

    std::fs::write(
        &flow,
        "apiVersion: sluice/v1\nid: typo\nsteps:\n  - { id: s, plugin: { name: po-rsik } }\n",
    )
    .unwrap();
    let o = cmd(&["run", flow.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("unknown plugin `po-rsik`")
            && stderr(&o).contains("did you mean `po-risk`?"),
        "{}",
        stderr(&o)
    );
    // `validate` knows the registry's versions too.
    std::fs::write(
        &flow,
        "apiVersion: sluice/v1\nid: v2\nsteps:\n  - { id: s, plugin: { name: po-risk, version: \"^2\" } }\n",
    )
    .unwrap();
    let o = cmd(&["validate", flow.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("no registered version of plugin `po-risk` meets `^2`")
            && stderr(&o).contains("registered: 1.0.0"),
        "{}",
        stderr(&o)
    );

    let o = cmd(&["plugin", "remove", "po-risk@1.0.0"]);
    assert!(o.status.success());
    let o = cmd(&["plugin", "remove", "po-risk@1.0.0"]);
    assert_eq!(o.status.code(), Some(2));
}

fn sluice_env(args: &[&str], db: &str, env: &[(&str, &str)]) -> Output {
    Command::new(BIN)
        .args(args)
        .env("SLUICE_DB", db)
        .envs(env.iter().copied())
        .env_remove("RUST_LOG")
        .env_remove("SLUICE_LOG")
        .output()
        .expect("sluice runs")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_commands_add_test_and_read_through_a_stored_connection() {
    let emu = sluice_emulators::maximo::start(8).await;
    let (dir, db) = temp_db();
    let base = emu.base_url.clone();
    let flow_path = dir.path().join("urgent.yaml");
    std::fs::write(
        &flow_path,
        r#"apiVersion: sluice/v1
id: urgent-work
steps:
  - id: orders
    read:
      connection: plant-maximo
      entity: work_order
      filter: { priority: urgent }
output:
  numbers: "${{ steps.orders.output.records | map(attribute='number') | list }}"
"#,
    )
    .unwrap();
    let flow = flow_path.to_str().unwrap().to_string();
    let run = move |args: Vec<String>, key: &'static str| {
        let db = db.clone();
        tokio::task::spawn_blocking(move || {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            sluice_env(&a, &db, &[("SLUICE_SECRET_MAXIMO_KEY", key)])
        })
    };
    let args = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();

    let o = run(
        args(&[
            "connection",
            "add",
            "plant-maximo",
            "--definition",
            "maximo",
            "-p",
            &format!("base_url={base}"),
            "-p",
            "site=BEDFORD",
            "-c",
            "api_key=MAXIMO_KEY",
        ]),
        sluice_emulators::maximo::API_KEY,
    )
    .await
    .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    // `validate` reads the same store as `run`: the stored connection is known.
    let o = run(args(&["validate", &flow]), "").await.unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    // ... and what its definition can do: Maximo deletes no work order and
    // lists no vendor.
    let unsupported = dir.path().join("unsupported.yaml");
    std::fs::write(
        &unsupported,
        "apiVersion: sluice/v1\nid: u\nsteps:\n  - id: gone\n    write: { connection: plant-maximo, entity: work_order, op: delete, id: \"1\" }\n  - id: vendors\n    read: { connection: plant-maximo, entity: vendor }\n",
    )
    .unwrap();
    let o = run(args(&["validate", unsupported.to_str().unwrap()]), "")
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains("unsupported.yaml:5:64: error[unsupported-operation]: connection `plant-maximo` cannot delete work_order"),
        "{err}"
    );
    assert!(
        err.contains("for work_order it can: list, get, create, update"),
        "{err}"
    );
    assert!(
        err.contains("connection `plant-maximo` cannot list vendor"),
        "{err}"
    );
    let o = run(
        args(&[
            "connection",
            "add",
            "bad",
            "--definition",
            "maximo",
            "-p",
            "site=X",
            "-c",
            "api_key=K",
        ]),
        "",
    )
    .await
    .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("parameter `base_url` is required"),
        "{}",
        stderr(&o)
    );
    // Sync schedules are checked when the connection is added.
    for (schedule, says) in [
        ("asset=*/15 * * * *", ""),
        (
            "vendor=*/15 * * * *",
            "definition `maximo` cannot list vendor (it lists: work_order, asset)",
        ),
        ("work_order=often", "invalid cron expression `often`"),
        ("work_order", "is not ENTITY=CRON"),
    ] {
        let o = run(
            args(&[
                "connection",
                "add",
                "scheduled",
                "--replace",
                "--definition",
                "maximo",
                "-p",
                &format!("base_url={base}"),
                "-p",
                "site=BEDFORD",
                "-c",
                "api_key=MAXIMO_KEY",
                "--sync",
                schedule,
            ]),
            "",
        )
        .await
        .unwrap();
        if says.is_empty() {
            assert!(o.status.success(), "{}", stderr(&o));
            assert!(
                stderr(&o).contains("incremental sync of asset on `*/15 * * * *` (UTC)"),
                "{}",
                stderr(&o)
            );
        } else {
            assert_eq!(o.status.code(), Some(2), "{schedule}: {}", stderr(&o));
            assert!(stderr(&o).contains(says), "{schedule}: {}", stderr(&o));
        }
    }
    let o = run(args(&["sync", "status"]), "").await.unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let listed = String::from_utf8_lossy(&o.stdout).to_string();
    let row = listed
        .lines()
        .find(|l| l.starts_with("scheduled "))
        .unwrap_or_else(|| panic!("no schedule listed: {listed}"));
    assert!(
        row.contains("asset") && row.contains("incremental") && row.contains("*/15 * * * *"),
        "{row}"
    );

    let o = run(
        args(&["connection", "test", "plant-maximo"]),
        sluice_emulators::maximo::API_KEY,
    )
    .await
    .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("ok: plant-maximo answered"));

    let o = run(
        args(&["run", &flow, "--json"]),
        sluice_emulators::maximo::API_KEY,
    )
    .await
    .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let out = json_out(&o);
    assert_eq!(
        out["output"]["numbers"],
        serde_json::json!(["WO01000", "WO01005"]),
        "{out}"
    );

    // Sync the work orders into the cache, then see the state.
    let o = run(
        args(&["sync", "start", "plant-maximo", "work_order", "--json"]),
        sluice_emulators::maximo::API_KEY,
    )
    .await
    .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let r = json_out(&o);
    assert_eq!(
        (r["added"].as_u64(), r["mode"].as_str()),
        (Some(8), Some("incremental")),
        "{r}"
    );
    let o = run(
        args(&["sync", "start", "plant-maximo", "work_order", "--full"]),
        sluice_emulators::maximo::API_KEY,
    )
    .await
    .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        text.contains(
            "full sync of plant-maximo/work_order done: 0 added, 0 updated, 8 unchanged, 0 deleted"
        ),
        "{text}"
    );
    let o = run(args(&["sync", "status"]), "").await.unwrap();
    let text = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        text.contains("plant-maximo") && text.contains("idle") && text.contains("full"),
        "{text}"
    );

    // A revoked key: `test` says what failed, the status is recorded with its history.
    let o = run(
        args(&["connection", "test", "plant-maximo", "--json"]),
        "revoked",
    )
    .await
    .unwrap();
    assert_eq!(o.status.code(), Some(1));
    let t = json_out(&o);
    assert_eq!(t["error"]["code"], "AUTHENTICATION_FAILED");
    assert_eq!(t["status"], "auth_required");
    assert!(t["message"].as_str().unwrap().contains("BMXAA0021E"), "{t}");
    let o = run(
        args(&["connection", "status", "plant-maximo", "--json"]),
        "",
    )
    .await
    .unwrap();
    let s = json_out(&o);
    assert_eq!(s["status"], "auth_required", "{s}");
    assert_eq!(s["history"][0]["to"], "auth_required");
    let o = run(args(&["connection", "list"]), "").await.unwrap();
    let listing = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        listing.contains("plant-maximo") && listing.contains("auth_required"),
        "{listing}"
    );
    assert!(!listing.contains(sluice_emulators::maximo::API_KEY));

    // Validate knows the stored connection; without the database it does not.
    let o = run(args(&["validate", &flow]), "").await.unwrap();
    assert!(o.status.success(), "{}", stderr(&o));

    let o = run(args(&["connector", "list"]), "").await.unwrap();
    let defs = String::from_utf8_lossy(&o.stdout).to_string();
    for id in ["sap_s4hana", "netsuite", "business_central", "maximo"] {
        assert!(defs.contains(id), "{defs}");
    }
    let bad = dir.path().join("bad-connector.yaml");
    std::fs::write(
        &bad,
        "apiVersion: sluice/connector/v1\nid: x\nname: X\nparameters: { base_url: {} }\nauth: { type: none }\ntest: { path: / }\nentities:\n  vendor:\n    list:\n      request: { path: /v }\n      records: $.v[*]\n      paginator: { type: endless }\n    mapping: {}\n",
    )
    .unwrap();
    let o = run(args(&["connector", "validate", bad.to_str().unwrap()]), "")
        .await
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("unknown value `endless`"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn ctrl_c_cancels_the_run_and_says_so() {
    let (dir, db) = temp_db();
    let flow = dir.path().join("slow.yaml");
    std::fs::write(
        &flow,
        "apiVersion: sluice/v1\nid: slow-cli\nsteps:\n  - { id: pause, wait: { duration: 20s } }\n",
    )
    .unwrap();
    let interrupt = |child: &std::process::Child| {
        let ok = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    };
    // One Ctrl-C: the run is cancelled and says so.
    let child = Command::new(BIN)
        .args(["run", flow.to_str().unwrap(), "--db", &db])
        .stderr(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    interrupt(&child);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cancelling run"), "{err}");
    let o = sluice(&["runs", "list", "--json"], &db);
    assert_eq!(json_out(&o)[0]["status"], "cancelled");
    // (A second Ctrl-C, while a cancellation hangs in a step, exits at once
    // and leaves the run to `runs resume`; a `wait` step cancels too fast to
    // show that here.)
}

#[test]
fn the_sandbox_syncs_full_and_incremental_and_feeds_cache_reads() {
    let (dir, db) = temp_db();
    let o = sluice(
        &["sync", "start", "sandbox", "purchase_order", "--json"],
        &db,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let r = json_out(&o);
    assert_eq!(r["added"], DATA.purchase_orders.len(), "{r}");
    assert_eq!(r["mode"], "incremental");
    // The cursor is the newest record's timestamp.
    let newest = DATA
        .purchase_orders
        .iter()
        .filter_map(|p| p["remote_updated_at"].as_str())
        .filter_map(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .max()
        .unwrap();
    let cursor = chrono::DateTime::parse_from_rfc3339(r["cursor"].as_str().unwrap()).unwrap();
    assert_eq!(cursor, newest, "{r}");
    // Nothing changed: the incremental sync asks only for what changed
    // since the cursor (less the 5-minute lookback), so it sees the newest
    // record(s) again, not all of them, and adds and updates nothing.
    let within_lookback = DATA
        .purchase_orders
        .iter()
        .filter_map(|p| p["remote_updated_at"].as_str())
        .filter_map(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .filter(|t| *t > newest - chrono::Duration::minutes(5))
        .count();
    let r = json_out(&sluice(
        &["sync", "start", "sandbox", "purchase_order", "--json"],
        &db,
    ));
    assert_eq!(
        (r["added"].as_u64(), r["updated"].as_u64()),
        (Some(0), Some(0)),
        "{r}"
    );
    assert_eq!(r["unchanged"], within_lookback, "{r}");
    assert!(within_lookback < DATA.purchase_orders.len());
    // A full sync pages through all of them (the sandbox's own cursor) and
    // deletes none.
    let r = json_out(&sluice(
        &[
            "sync",
            "start",
            "sandbox",
            "purchase_order",
            "--full",
            "--page-size",
            "7",
            "--json",
        ],
        &db,
    ));
    assert_eq!(r["unchanged"], DATA.purchase_orders.len(), "{r}");
    assert_eq!(r["deleted"], 0, "{r}");
    assert_eq!(r["pages"], DATA.purchase_orders.len().div_ceil(7), "{r}");
    // `sync status` shows the sandbox's state.
    let o = sluice(&["sync", "status"], &db);
    assert!(o.status.success(), "{}", stderr(&o));
    let status = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(
        status.lines().any(|l| l.starts_with("sandbox")
            && l.contains("purchase_order")
            && l.contains("idle")),
        "{status}"
    );

    let flow = dir.path().join("cache.yaml");
    std::fs::write(
        &flow,
        "apiVersion: sluice/v1\nid: cache-read\nsteps:\n  - id: r\n    read: { connection: sandbox, entity: purchase_order, from: cache, filter: { status: approved } }\noutput: \"${{ steps.r.output.count }}\"\n",
    )
    .unwrap();
    let out = json_out(&sluice(&["run", flow.to_str().unwrap(), "--json"], &db));
    let approved = DATA
        .purchase_orders
        .iter()
        .filter(|p| p["status"] == "approved")
        .count();
    assert_eq!(out["output"], approved, "{out}");

    // The other connection commands know the sandbox too.
    let o = sluice(&["connection", "test", "sandbox", "--json"], &db);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(json_out(&o)["ok"], true);
    let o = sluice(&["connection", "status", "sandbox", "--json"], &db);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(json_out(&o)["status"], "online");
    let o = sluice(&["connection", "remove", "sandbox"], &db);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("built-in connection"), "{}", stderr(&o));
}

#[test]
fn a_broken_connector_definition_is_reported_and_skipped() {
    let (dir, db) = temp_db();
    let connectors = dir.path().join("connectors");
    std::fs::create_dir(&connectors).unwrap();
    std::fs::write(
        connectors.join("broken.yaml"),
        "apiVersion: sluice/connector/v1\nid: broken\nname: x\n",
    )
    .unwrap();
    std::fs::write(
        connectors.join("tiny.yaml"),
        "apiVersion: sluice/connector/v1\nid: tiny\nname: Tiny\nparameters:\n  base_url: {}\nauth: { type: none }\ntest: { path: /ping }\nentities:\n  vendor:\n    list:\n      request: { path: /vendors }\n      records: $.items[*]\n      paginator: { type: next_link, path: $.next }\n    mapping:\n      remote_id: $.id\n      name: $.name\n      status: { path: $.state, map: { A: active } }\n      remote_created_at: { path: $.created, convert: datetime }\n      remote_updated_at: { path: $.changed, convert: datetime }\n",
    )
    .unwrap();
    let run = |args: &[&str]| {
        Command::new(BIN)
            .args(args)
            .env("SLUICE_DB", &db)
            .env("SLUICE_CONNECTORS_DIR", &connectors)
            .env_remove("RUST_LOG")
            .env_remove("SLUICE_LOG")
            .output()
            .unwrap()
    };
    // A sandbox flow still runs; the broken file is named once on stderr.
    let flow = repo("flows/po-high-value-alert.yaml");
    let o = run(&["run", flow.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    assert_eq!(err.matches("warning: skipped").count(), 1, "{err}");
    assert!(
        err.contains("broken.yaml: not a valid connector definition"),
        "{err}"
    );
    assert!(err.contains("missing required key `auth`"), "{err}");
    // The good definition beside it is there; the broken one is not.
    let o = run(&["connector", "list"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("tiny"), "{out}");
    assert!(!out.contains("broken"), "{out}");
}

#[test]
fn connector_validate_points_at_a_template_variable_that_does_not_exist() {
    let (dir, db) = temp_db();
    let file = dir.path().join("paged.yaml");
    // An offset paginator places `offset`; `ofset` is a typo, and a
    // next-link paginator has no `offset` at all (it would be 0 on every
    // page, the first page over and over).
    let def = |position: &str, paginator: &str| {
        format!(
            "apiVersion: sluice/connector/v1\nid: paged\nname: Paged\nparameters:\n  base_url: {{}}\nauth: {{ type: none }}\ntest: {{ path: /ping }}\nentities:\n  vendor:\n    list:\n      request:\n        method: POST\n        path: /search\n        body: {{ from: \"${{{{ {position} }}}}\", size: \"${{{{ page_size }}}}\" }}\n      records: $.items[*]\n      paginator: {paginator}\n    mapping:\n      remote_id: $.id\n      name: $.name\n      status: {{ const: active }}\n      remote_created_at: {{ path: $.created, convert: datetime }}\n      remote_updated_at: {{ path: $.changed, convert: datetime }}\n"
        )
    };
    let validate = |text: &str| {
        std::fs::write(&file, text).unwrap();
        sluice(&["connector", "validate", file.to_str().unwrap()], &db)
    };
    let o = validate(&def("ofset", "{ type: offset }"));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    // file:line:column of the name inside the template, the line itself,
    // and a hint.
    assert!(
        err.contains("paged.yaml:14:28: error[unknown-variable]"),
        "{err}"
    );
    assert!(
        err.contains("unknown variable `ofset`") && err.contains("did you mean `offset`?"),
        "{err}"
    );
    assert!(err.contains("body: { from: \"${{ ofset }}\""), "{err}");

    let o = validate(&def("offset", "{ type: next_link, path: $.next }"));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(
        err.contains("paged.yaml:14:") && err.contains("unknown variable `offset`"),
        "{err}"
    );

    let o = validate(&def("offset", "{ type: offset }"));
    assert!(o.status.success(), "{}", stderr(&o));

    // A directory is every definition in it: the broken one beside good
    // ones is named, the good ones pass, and the exit code says it failed.
    let connectors = dir.path().join("connectors");
    std::fs::create_dir(&connectors).unwrap();
    std::fs::copy(&file, connectors.join("paged.yaml")).unwrap();
    std::fs::copy(
        repo("engine/connectors/tryton.yaml"),
        connectors.join("tryton.yaml"),
    )
    .unwrap();
    std::fs::write(
        connectors.join("broken.yml"),
        def("offset", "{ type: next_link, path: $.next }").replace("id: paged", "id: broken"),
    )
    .unwrap();
    let o = sluice(
        &["connector", "validate", connectors.to_str().unwrap()],
        &db,
    );
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let err = stderr(&o);
    assert!(err.contains("broken.yml:14:"), "{err}");
    assert!(
        err.contains("ok: ") && err.contains("(tryton: 3 entities)"),
        "{err}"
    );
    assert!(err.contains("(paged: 1 entities)"), "{err}");
    std::fs::remove_file(connectors.join("broken.yml")).unwrap();
    let o = sluice(
        &["connector", "validate", connectors.to_str().unwrap()],
        &db,
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let o = sluice(&["connector", "validate", empty.to_str().unwrap()], &db);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("no connector definitions"),
        "{}",
        stderr(&o)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_the_system_made_but_that_could_not_be_read_back_is_a_warning_of_the_run() {
    let emu = sluice_emulators::netsuite::start(1, 1).await;
    let (dir, db) = temp_db();
    let secrets = [
        ("SLUICE_SECRET_NS_ID", sluice_emulators::netsuite::CLIENT_ID),
        (
            "SLUICE_SECRET_NS_SECRET",
            sluice_emulators::netsuite::CLIENT_SECRET,
        ),
    ];
    let flow = dir.path().join("create.yaml");
    std::fs::write(
        &flow,
        r#"apiVersion: sluice/v1
id: ns-create
steps:
  - id: create
    write:
      connection: ns
      entity: purchase_order
      op: create
      data:
        vendor_id: "100001"
        lines:
          - { line_number: 1, item_id: MAT-1001, description: Bearing, quantity: 4, unit_of_measure: EA, unit_price: 4.85, amount: 19.4 }
output: "${{ steps.create.output }}"
"#,
    )
    .unwrap();
    let base = emu.base_url.clone();
    let (db2, flow2) = (db.clone(), flow.to_str().unwrap().to_string());
    let run = move |args: Vec<String>| {
        let db = db2.clone();
        tokio::task::spawn_blocking(move || {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            sluice_env(&a, &db, &secrets)
        })
    };
    let o = run([
        "connection",
        "add",
        "ns",
        "--definition",
        "netsuite",
        "-p",
        &format!("base_url={base}"),
        "-c",
        "client_id=NS_ID",
        "-c",
        "client_secret=NS_SECRET",
    ]
    .map(String::from)
    .to_vec())
    .await
    .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    // Token, create (NetSuite makes the order), then the read-back fails.
    emu.inject([
        sluice_emulators::Fault::Pass,
        sluice_emulators::Fault::Pass,
        sluice_emulators::Fault::Status(404),
    ]);
    let o = run(["run", &flow2, "--json"].map(String::from).to_vec())
        .await
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let out = json_out(&o);
    assert_eq!(out["status"], "succeeded", "{out}");
    let rec = &out["output"];
    assert_eq!(rec["mapped"], false, "{out}");
    let id = rec["remote_id"].as_str().unwrap();
    assert!(
        emu.record("purchaseOrder", id).is_some(),
        "the id of the order NetSuite made: {out}"
    );
    // The run says so on stderr, naming the step.
    let err = stderr(&o);
    let line = err
        .lines()
        .find(|l| l.starts_with("warning: step `create`: "))
        .unwrap_or_else(|| panic!("no warning line: {err}"));
    assert!(
        line.contains("ns accepted the create of purchase_order (HTTP 204)")
            && line.contains("reading the record back failed"),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sluice_run_announces_a_connection_whose_credentials_were_refused_before_it_exits() {
    let emu = sluice_emulators::netsuite::start(1, 1).await;
    // The endpoint's receiver.
    let got: std::sync::Arc<std::sync::Mutex<Vec<Value>>> = Default::default();
    let g = got.clone();
    let app = axum::Router::new().fallback(move |body: axum::body::Bytes| {
        let g = g.clone();
        async move {
            g.lock()
                .unwrap()
                .push(serde_json::from_slice(&body).unwrap_or(Value::Null));
            "ok"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hook = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let (dir, db) = temp_db();
    let flow = dir.path().join("read.yaml");
    std::fs::write(
        &flow,
        "apiVersion: sluice/v1\nid: ns-read\nsteps:\n  - id: r\n    read: { connection: ns, entity: vendor }\n",
    )
    .unwrap();
    let base = emu.base_url.clone();
    let flow = flow.to_str().unwrap().to_string();
    let cmds: Vec<Vec<String>> = vec![
        vec![
            "connection".into(),
            "add".into(),
            "ns".into(),
            "--definition".into(),
            "netsuite".into(),
            "-p".into(),
            format!("base_url={base}"),
            "-c".into(),
            "client_id=NS_ID".into(),
            "-c".into(),
            "client_secret=NS_SECRET".into(),
        ],
        vec![
            "webhook".into(),
            "endpoint".into(),
            "add".into(),
            hook,
            "--events".into(),
            "connection.*".into(),
        ],
        vec!["run".into(), flow, "--json".into()],
    ];
    let outs = tokio::task::spawn_blocking(move || {
        cmds.iter()
            .map(|c| {
                let a: Vec<&str> = c.iter().map(String::as_str).collect();
                sluice_env(
                    &a,
                    &db,
                    &[
                        ("SLUICE_WEBHOOK_ALLOW", "127.0.0.1"),
                        ("SLUICE_SECRET_NS_ID", sluice_emulators::netsuite::CLIENT_ID),
                        ("SLUICE_SECRET_NS_SECRET", "rotated-away"),
                    ],
                )
            })
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    assert!(outs[0].status.success(), "{}", stderr(&outs[0]));
    assert!(outs[1].status.success(), "{}", stderr(&outs[1]));
    let run = &outs[2];
    assert_eq!(run.status.code(), Some(1), "{}", stderr(run));
    assert!(
        stderr(run).contains("AUTHENTICATION_FAILED"),
        "{}",
        stderr(run)
    );
    // Written and delivered by the command itself, before it exited.
    let got = got.lock().unwrap().clone();
    let types: Vec<&str> = got.iter().filter_map(|b| b["type"].as_str()).collect();
    assert!(
        types.contains(&"connection.auth_required") && types.contains(&"connection.status_changed"),
        "{got:?}"
    );
    let auth = got
        .iter()
        .find(|b| b["type"] == "connection.auth_required")
        .unwrap();
    assert_eq!(auth["data"]["connection_id"], "ns");
    assert!(!auth.to_string().contains("rotated-away"), "{auth}");
}
