//! The durable event log (issue 17): an event fired anywhere (a server, a
//! second server, `sluice run`) starts exactly one run per matching `event`
//! trigger, across processes, kill -9 and bursts. Real `sluice serve`
//! processes on one database; the counts are read from the store.
//!
//! PostgreSQL cases read `SLUICE_TEST_POSTGRES_URL`; without it they print
//! that they skipped.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use serde_json::json;
use sluice::store::{RunFilter, RunStatus, Store};

#[path = "common/serve.rs"]
mod serve;
use serve::BIN;

/// A `sluice serve` child process; killed on drop.
struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// `sluice serve` on `db` with the flows in `flows`, a run lease of `lease`.
    fn start(db: &str, flows: &Path, lease: &str) -> Server {
        Self::start_with(db, flows, lease, &[])
    }

    /// Like [`Server::start`], with more `sluice serve` arguments.
    fn start_with(db: &str, flows: &Path, lease: &str, extra: &[&str]) -> Server {
        let mut serve = Command::new(BIN);
        serve
            .args(["serve", "--listen", "127.0.0.1:0", "--flows"])
            .arg(flows)
            .args(extra)
            .env("SLUICE_DB", db)
            .env("SLUICE_RUN_LEASE", lease);
        let (child, base, _) = serve::spawn(serve);
        let addr = base.trim_start_matches("http://").to_string();
        Server { child, addr }
    }

    /// Starts the `burst` flow through its hook: it fires `n` events.
    /// A busy server answers 503 (its run slots are full): try again, as a client would.
    async fn burst(&self, path: &str, n: u32) {
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let res = reqwest::Client::new()
                .post(format!("http://{}/v1/hooks/{path}", self.addr))
                .json(&json!({ "n": n }))
                .send()
                .await
                .unwrap();
            let status = res.status().as_u16();
            if status == 503 && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            assert_eq!(status, 202, "{}", res.text().await.unwrap());
            return;
        }
    }

    /// SIGKILL: no shutdown, no lease released.
    fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A flow that fires `n` events of `event_type` from one step (one
/// transaction), and one started by each such event.
fn write_flows(dir: &Path, tag: &str, event_type: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(
        dir.join("burst.yaml"),
        format!(
            r#"apiVersion: sluice/v1
id: burst-{tag}
inputs:
  n: {{ type: number, default: 10 }}
triggers:
  - webhook: {{ path: burst-{tag} }}
steps:
  - id: fire
    for_each: "${{{{ range(inputs.n) }}}}"
    webhook:
      event: {event_type}
      payload: {{ i: "${{{{ item }}}}" }}
"#
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("on-burst.yaml"),
        format!(
            r#"apiVersion: sluice/v1
id: on-burst-{tag}
triggers:
  - event: {event_type}
steps:
  - id: seen
    set: {{ at: "${{{{ now }}}}" }}
"#
        ),
    )
    .unwrap();
}

/// The runs of a flow: how many, and how many distinct events started them.
async fn runs_of(store: &Store, flow: &str) -> (usize, usize, usize) {
    let runs = store
        .list_runs(&RunFilter {
            flow_id: Some(flow.to_string()),
            limit: 1_000_000,
            ..RunFilter::default()
        })
        .await
        .unwrap();
    let events: HashSet<String> = runs
        .iter()
        .filter_map(|r| r.trigger["event"]["id"].as_str().map(str::to_string))
        .collect();
    let succeeded = runs
        .iter()
        .filter(|r| r.status == RunStatus::Succeeded)
        .count();
    (runs.len(), events.len(), succeeded)
}

/// Waits (generously: a slow machine is not a failure) until `want` runs of
/// `flow` succeeded, then checks no event started a second run.
async fn expect_one_run_per_event(store: &Store, flow: &str, want: usize) {
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut last = (0, 0, 0);
    while Instant::now() < deadline {
        last = runs_of(store, flow).await;
        if last.2 >= want {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert_eq!(
        last.2, want,
        "{flow}: {} runs, {} distinct events, {} succeeded; wanted {want} succeeded",
        last.0, last.1, last.2
    );
    // Late duplicates would come from redispatched events: give them time.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (runs, events, _) = runs_of(store, flow).await;
    assert_eq!(
        (runs, events),
        (want, want),
        "{flow}: every event starts exactly one run"
    );
}

fn sqlite_db(dir: &Path) -> String {
    format!("sqlite://{}/sluice.db", dir.display())
}

#[tokio::test]
async fn events_fired_by_sluice_run_start_their_flows_in_the_next_serve() {
    let dir = tempfile::tempdir().unwrap();
    let db = sqlite_db(dir.path());
    let flows = dir.path().join("flows");
    write_flows(&flows, "cli", "cli.burst");
    // No server yet: the CLI run's events wait in the log.
    let out = Command::new(BIN)
        .args(["run", "--json", "-i", "n=40"])
        .arg(flows.join("burst.yaml"))
        .env("SLUICE_DB", &db)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let store = Store::connect(&db).await.unwrap();
    assert_eq!(store.undispatched_events().await.unwrap(), 41); // 40 + run.succeeded
    let server = Server::start(&db, &flows, "30s");
    expect_one_run_per_event(&store, "on-burst-cli", 40).await;
    // The log's queue depth is a metric; it drains to 0.
    let token = Command::new(BIN)
        .args(["token", "create", "--name", "t", "--scope", "admin"])
        .env("SLUICE_DB", &db)
        .output()
        .unwrap();
    let token = String::from_utf8(token.stdout).unwrap().trim().to_string();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let metrics = reqwest::Client::new()
            .get(format!("http://{}/metrics", server.addr))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if metrics.contains("\nsluice_events_undispatched 0\n") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the event log did not drain: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn two_servers_on_one_sqlite_file_start_one_run_per_event() {
    let dir = tempfile::tempdir().unwrap();
    let db = sqlite_db(dir.path());
    let flows = dir.path().join("flows");
    write_flows(&flows, "two", "two.burst");
    let a = Server::start(&db, &flows, "30s");
    let b = Server::start(&db, &flows, "30s");
    // Both consume the log, each fires half of the events.
    for _ in 0..3 {
        a.burst("burst-two", 200).await;
        b.burst("burst-two", 200).await;
    }
    let store = Store::connect(&db).await.unwrap();
    expect_one_run_per_event(&store, "on-burst-two", 1_200).await;
}

#[tokio::test]
async fn a_server_killed_mid_burst_leaves_no_event_without_its_one_run() {
    let dir = tempfile::tempdir().unwrap();
    let db = sqlite_db(dir.path());
    let flows = dir.path().join("flows");
    write_flows(&flows, "kill", "kill.burst");
    let store = Store::connect(&db).await.unwrap();
    let a = Server::start(&db, &flows, "3s");
    a.burst("burst-kill", 2_000).await;
    // Kill it once the burst is logged and its runs are starting.
    let deadline = Instant::now() + Duration::from_secs(300);
    while runs_of(&store, "on-burst-kill").await.0 < 50 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.kill9();
    let (started, _, done) = runs_of(&store, "on-burst-kill").await;
    let pending = store.undispatched_events().await.unwrap();
    eprintln!(
        "killed with {started} runs started ({done} succeeded), {pending} events undispatched"
    );
    assert!(started > 0, "the burst never started a run before the kill");
    let _b = Server::start(&db, &flows, "3s");
    expect_one_run_per_event(&store, "on-burst-kill", 2_000).await;
    // And the log knows it: every event ends up dispatched.
    let deadline = Instant::now() + Duration::from_secs(300);
    while store.undispatched_events().await.unwrap() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(store.undispatched_events().await.unwrap(), 0);
}

#[tokio::test]
async fn a_burst_of_6000_events_starts_6000_runs() {
    let dir = tempfile::tempdir().unwrap();
    let db = sqlite_db(dir.path());
    let flows = dir.path().join("flows");
    write_flows(&flows, "six", "six.burst");
    let s = Server::start(&db, &flows, "30s");
    for _ in 0..6 {
        s.burst("burst-six", 1_000).await;
    }
    let store = Store::connect(&db).await.unwrap();
    expect_one_run_per_event(&store, "on-burst-six", 6_000).await;
}

#[tokio::test]
async fn two_servers_on_postgres_start_one_run_per_event_and_survive_a_kill() {
    let Some(url) = common::postgres_url() else {
        eprintln!(
            "skipped: SLUICE_TEST_POSTGRES_URL is not set, so the two-process PostgreSQL event test did not run"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let flows = dir.path().join("flows");
    // Unique names: the database is shared with other tests and earlier runs.
    let tag = uuid::Uuid::now_v7().simple().to_string();
    let tag = &tag[tag.len() - 10..];
    write_flows(&flows, tag, &format!("pg.burst_{tag}"));
    let store = Store::connect(&url).await.unwrap();
    // 64 run slots: the default 512 runs in flight share 8 pool connections,
    // and on a loaded machine an API request then waits out the pool's 30 s.
    let a = Server::start_with(&url, &flows, "5s", &["--max-runs", "64"]);
    let b = Server::start_with(&url, &flows, "5s", &["--max-runs", "64"]);
    let hook = format!("burst-{tag}");
    let flow = format!("on-burst-{tag}");
    // Events fired in A start runs in B and the other way round; then A dies mid-burst.
    a.burst(&hook, 500).await;
    b.burst(&hook, 500).await;
    a.burst(&hook, 1_000).await;
    let deadline = Instant::now() + Duration::from_secs(300);
    while runs_of(&store, &flow).await.0 < 600 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.kill9();
    expect_one_run_per_event(&store, &flow, 2_000).await;
    drop(b);
}

#[tokio::test]
async fn an_idle_consumer_is_woken_by_events_logged_in_its_process() {
    use sluice::events::{Wakeup, Woken};
    let (store, _dir) = common::sqlite_store().await;
    let mut wakeup = Wakeup::new(&store).await;
    let waiter = tokio::spawn(async move { wakeup.wait().await });
    tokio::time::sleep(Duration::from_millis(20)).await;
    sluice::webhooks::emit(&store, "k", "system.error", None, json!({}))
        .await
        .unwrap();
    // Either the emit woke it, or (on a machine slower than the poll) the poll did.
    let woken = waiter.await.unwrap();
    assert!(matches!(woken, Woken::InProcess | Woken::Poll), "{woken:?}");
    // Without a waiter the wake-up is kept for the next wait, not lost.
    let mut wakeup = Wakeup::new(&store).await;
    sluice::webhooks::emit(&store, "k2", "system.error", None, json!({}))
        .await
        .unwrap();
    assert_eq!(wakeup.wait().await, Woken::InProcess);
}

#[tokio::test]
async fn a_postgres_consumer_is_woken_by_a_notification_from_another_connection() {
    use sluice::events::{Wakeup, Woken};
    let Some(url) = common::postgres_url() else {
        eprintln!("skipped: SLUICE_TEST_POSTGRES_URL is not set, so LISTEN/NOTIFY was not tested");
        return;
    };
    let listening = Store::connect(&url).await.unwrap();
    let firing = Store::connect(&url).await.unwrap(); // another pool: like another process
    let mut wakeup = Wakeup::new(&listening).await;
    let key = format!("notify-{}", uuid::Uuid::now_v7());
    // Notifications before this are other tests'; wait for ours (polls say nothing).
    let waiter = tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            if wakeup.wait().await == Woken::Notified {
                return true;
            }
        }
        false
    });
    sluice::webhooks::emit(&firing, &key, "system.error", None, json!({}))
        .await
        .unwrap();
    assert!(waiter.await.unwrap(), "no notification arrived");
}

const FIRES_TWO: &str = r#"apiVersion: sluice/v1
id: fires-two
steps:
  - id: fire
    for_each: "${{ [1, 2] }}"
    webhook:
      event: po.checked
      payload: { i: "${{ item }}" }
"#;

#[tokio::test]
async fn events_nobody_listens_to_are_not_logged_and_listened_ones_are_logged_once() {
    let (store, _dir) = common::sqlite_store().await;
    let engine = common::engine(store.clone(), vec![], vec![]);
    // A server whose triggers listen to nothing: neither the custom events
    // nor the run's `run.succeeded` cost a row.
    sluice::events::set_interest(&store, Some(HashSet::new()));
    let out = common::run(&engine, FIRES_TWO, json!({})).await;
    assert_eq!(out.status, RunStatus::Succeeded);
    assert_eq!(store.undispatched_events().await.unwrap(), 0);
    // Listening to the custom type: its two events, not `run.succeeded`.
    sluice::events::set_interest(&store, Some(HashSet::from(["po.checked".to_string()])));
    common::run(&engine, FIRES_TWO, json!({})).await;
    let claimed = store
        .claim_events("t", Duration::from_secs(30), 100)
        .await
        .unwrap();
    let types: Vec<&str> = claimed.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types, ["po.checked", "po.checked"]);
    // Claimed events are not claimed again by another consumer while leased,
    // and dispatched ones never again.
    assert!(
        store
            .claim_events("u", Duration::from_secs(30), 100)
            .await
            .unwrap()
            .is_empty()
    );
    let ids: Vec<String> = claimed.iter().map(|e| e.id.clone()).collect();
    store.mark_events_dispatched(&ids).await.unwrap();
    assert_eq!(store.undispatched_events().await.unwrap(), 0);
    // Nobody said (a CLI process): every event is logged, `run.succeeded` too.
    sluice::events::set_interest(&store, None);
    common::run(&engine, FIRES_TWO, json!({})).await;
    assert_eq!(store.undispatched_events().await.unwrap(), 3);
}

#[tokio::test]
async fn a_killed_consumers_claims_are_taken_over_once_its_lease_expires() {
    let (store, _dir) = common::sqlite_store().await;
    for i in 0..5 {
        sluice::webhooks::emit(&store, &format!("k{i}"), "system.error", None, json!({}))
            .await
            .unwrap();
    }
    let dead = store
        .claim_events("dead", Duration::from_millis(200), 100)
        .await
        .unwrap();
    assert_eq!(dead.len(), 5);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut taken = Vec::new();
    while taken.is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        taken = store
            .claim_events("alive", Duration::from_secs(30), 100)
            .await
            .unwrap();
    }
    assert_eq!(taken.len(), 5);
}

#[tokio::test]
async fn pruning_deletes_events_older_than_the_retention() {
    let (store, _dir) = common::sqlite_store().await;
    sluice::webhooks::emit(&store, "old", "system.error", None, json!({}))
        .await
        .unwrap();
    let cutoff = sluice::store::now_ms() + 1;
    tokio::time::sleep(Duration::from_millis(5)).await;
    sluice::webhooks::emit(&store, "new", "system.error", None, json!({}))
        .await
        .unwrap();
    assert_eq!(store.prune_events(cutoff).await.unwrap(), (1, 1));
    assert_eq!(store.undispatched_events().await.unwrap(), 1);
}

#[tokio::test]
async fn an_event_fired_twice_with_one_key_is_logged_once() {
    let (store, _dir) = common::sqlite_store().await;
    for _ in 0..2 {
        sluice::webhooks::emit(&store, "same", "system.error", None, json!({}))
            .await
            .unwrap();
    }
    assert_eq!(store.undispatched_events().await.unwrap(), 1);
}

#[tokio::test]
async fn a_flow_uploaded_to_one_server_gets_the_events_another_server_dispatches() {
    let dir = tempfile::tempdir().unwrap();
    let db = sqlite_db(dir.path());
    let flows = dir.path().join("flows");
    write_flows(&flows, "up", "up.burst");
    // The servers start without the event-triggered flow...
    let on_burst = std::fs::read_to_string(flows.join("on-burst.yaml")).unwrap();
    std::fs::remove_file(flows.join("on-burst.yaml")).unwrap();
    let token = Command::new(BIN)
        .args(["token", "create", "--name", "t", "--scope", "admin"])
        .env("SLUICE_DB", &db)
        .output()
        .unwrap();
    let token = String::from_utf8(token.stdout).unwrap().trim().to_string();
    let _a = Server::start(&db, &flows, "30s");
    let b = Server::start(&db, &flows, "30s");
    // ...which is uploaded to B; A has not reloaded its flows (it does every
    // 5 s) when the 2,000 events come, and dispatches batches of them too.
    let res = reqwest::Client::new()
        .post(format!("http://{}/v1/flows", b.addr))
        .bearer_auth(&token)
        .header("content-type", "application/yaml")
        .body(on_burst)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 201, "{}", res.text().await.unwrap());
    let out = Command::new(BIN)
        .args(["run", "--json", "-i", "n=2000"])
        .arg(flows.join("burst.yaml"))
        .env("SLUICE_DB", &db)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let store = Store::connect(&db).await.unwrap();
    expect_one_run_per_event(&store, "on-burst-up", 2_000).await;
}
