//! The store suite, run against SQLite and PostgreSQL alike. PostgreSQL
//! tests read `SLUICE_TEST_POSTGRES_URL`; without it they say they skipped.

mod common;

use std::time::Duration;

use serde_json::json;
use sluice::run::Engine;
use sluice::store::{NewRun, RunFilter, RunStatus, StepRecord, StepStatus, Store};

use common::{engine, postgres_url, run, sqlite_store};

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::now_v7().simple())
}

async fn flows_get_revisions_only_when_they_change(store: &Store) {
    let id = unique("rev");
    assert_eq!(store.save_flow(&id, "a: 1", "h1").await.unwrap(), 1);
    assert_eq!(store.save_flow(&id, "a: 1", "h1").await.unwrap(), 1);
    assert_eq!(store.save_flow(&id, "a: 2", "h2").await.unwrap(), 2);
    let revs = store.flow_revisions(&id).await.unwrap();
    assert_eq!(
        revs.iter().map(|r| r.revision).collect::<Vec<_>>(),
        vec![1, 2]
    );
    assert_eq!(
        store.flow_revision(&id, 2).await.unwrap().unwrap().source,
        "a: 2"
    );
    assert!(store.flow_revision(&id, 3).await.unwrap().is_none());
}

async fn leases_keep_other_processes_out_until_they_expire(store: &Store) {
    let flow = unique("lease");
    let id = uuid::Uuid::now_v7().to_string();
    store
        .create_run(NewRun {
            id: &id,
            flow_id: &flow,
            flow_revision: 1,
            inputs: &json!({"a": 1}),
            trigger: &json!({}),
            lease: Some(("p1", Duration::from_millis(300))),
            parent: None,
        })
        .await
        .unwrap();
    assert!(
        !store
            .claim_run(&id, "p2", Duration::from_secs(5), false)
            .await
            .unwrap(),
        "lease held by p1"
    );
    assert_eq!(
        store
            .renew_lease(&id, "p1", Duration::from_millis(300))
            .await
            .unwrap(),
        Some(false)
    );
    assert_eq!(
        store
            .renew_lease(&id, "p2", Duration::from_secs(1))
            .await
            .unwrap(),
        None
    );
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert!(store.orphaned_runs().await.unwrap().contains(&id));
    assert!(
        store
            .claim_run(&id, "p2", Duration::from_secs(5), false)
            .await
            .unwrap(),
        "expired lease is taken over"
    );
    assert_eq!(
        store
            .renew_lease(&id, "p1", Duration::from_secs(1))
            .await
            .unwrap(),
        None,
        "p1 lost it"
    );
    let run = store.get_run(&id).await.unwrap().unwrap();
    assert_eq!(run.lease_owner.as_deref(), Some("p2"));
    assert_eq!(run.resumes, 1);
    assert!(store.request_cancel(&id).await.unwrap());
    assert_eq!(
        store
            .renew_lease(&id, "p2", Duration::from_secs(1))
            .await
            .unwrap(),
        Some(true)
    );
    store
        .finish_run(
            &id,
            RunStatus::Cancelled,
            None,
            Some(&json!({"kind": "cancelled"})),
        )
        .await
        .unwrap();
    let run = store.get_run(&id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Cancelled);
    assert!(run.lease_owner.is_none() && run.finished_at.is_some());
    assert!(!store.orphaned_runs().await.unwrap().contains(&id));
}

async fn step_results_upsert_and_reset(store: &Store) {
    let id = uuid::Uuid::now_v7().to_string();
    let flow = unique("steps");
    store
        .create_run(NewRun {
            id: &id,
            flow_id: &flow,
            flow_revision: 1,
            inputs: &json!({}),
            trigger: &json!({}),
            lease: None,
            parent: None,
        })
        .await
        .unwrap();
    let mut rec = StepRecord {
        step_id: "a".into(),
        status: StepStatus::Failed,
        attempts: 1,
        input: Some(json!({"entity": "vendor", "data": {"name": "Acme"}})),
        output: None,
        error: Some(json!({"message": "x"})),
        started_at: Some(1),
        finished_at: Some(2),
    };
    store.save_step(&id, &rec).await.unwrap();
    rec.status = StepStatus::Succeeded;
    rec.attempts = 2;
    rec.output = Some(json!({"n": [1, 2]}));
    rec.error = None;
    store.save_step(&id, &rec).await.unwrap();
    let b = StepRecord {
        step_id: "b".into(),
        status: StepStatus::Skipped,
        attempts: 0,
        input: None,
        output: None,
        error: None,
        started_at: Some(3),
        finished_at: Some(3),
    };
    store.save_step(&id, &b).await.unwrap();
    assert_eq!(store.steps(&id).await.unwrap(), vec![rec.clone(), b]);
    store.reset_unfinished_steps(&id).await.unwrap();
    assert_eq!(store.steps(&id).await.unwrap(), vec![rec]);
    store
        .record_attempt(&id, "a", &format!("{id}:a"), 1)
        .await
        .unwrap();
    store
        .record_attempt(&id, "a", &format!("{id}:a"), 2)
        .await
        .unwrap();
    let attempts = store.attempts(&id).await.unwrap();
    assert_eq!(attempts.len(), 2);
    assert_eq!(attempts[1].idempotency_key, format!("{id}:a"));
}

async fn runs_list_by_flow_and_status_newest_first(store: &Store) {
    let flow = unique("list");
    let mut ids = Vec::new();
    for _ in 0..3 {
        let id = uuid::Uuid::now_v7().to_string();
        store
            .create_run(NewRun {
                id: &id,
                flow_id: &flow,
                flow_revision: 1,
                inputs: &json!({}),
                trigger: &json!({}),
                lease: None,
                parent: None,
            })
            .await
            .unwrap();
        ids.push(id);
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    store
        .finish_run(&ids[0], RunStatus::Succeeded, Some(&json!(1)), None)
        .await
        .unwrap();
    let all = store
        .list_runs(&RunFilter {
            flow_id: Some(flow.clone()),
            status: None,
            limit: 10,
            before: None,
            ..RunFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(
        all.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
        vec![ids[2].clone(), ids[1].clone(), ids[0].clone()]
    );
    let done = store
        .list_runs(&RunFilter {
            flow_id: Some(flow.clone()),
            status: Some(RunStatus::Succeeded),
            limit: 10,
            before: None,
            ..RunFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].output, Some(json!(1)));
    let two = store
        .list_runs(&RunFilter {
            flow_id: Some(flow.clone()),
            status: None,
            limit: 2,
            before: None,
            ..RunFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(two.len(), 2);
    // The next page starts after the last run of this one.
    let last = &two[1];
    let rest = store
        .list_runs(&RunFilter {
            flow_id: Some(flow),
            status: None,
            limit: 2,
            before: Some((last.created_at, last.id.clone())),
            ..RunFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(
        rest.iter().map(|r| r.id.clone()).collect::<Vec<_>>(),
        vec![ids[0].clone()]
    );
}

async fn a_flow_runs_and_an_interrupted_run_resumes(store: Store) {
    let e = engine(store.clone(), vec![], vec![]).with_lease(Duration::from_millis(300));
    let id = unique("e2e");
    let yaml = format!(
        "apiVersion: sluice/v1\nid: {id}\nsteps:\n  - {{ id: a, read: {{ connection: sandbox, entity: asset, filter: {{ status: down }} }} }}\n  - {{ id: b, needs: [a], set: \"${{{{ steps.a.output.records | map(attribute='tag') | list }}}}\" }}\n"
    );
    let out = run(&e, &yaml, json!({})).await;
    assert_eq!(out.status, RunStatus::Succeeded, "{:?}", out.error);
    assert_eq!(out.output, Some(json!(["A-3005", "A-3012"])));

    // A run left `running` by a process that died: resumable once its lease expires.
    let flow = common::compile(&e, &yaml);
    let rev = store
        .save_flow(&id, &flow.source, &flow.hash)
        .await
        .unwrap();
    let run_id = uuid::Uuid::now_v7().to_string();
    store
        .create_run(NewRun {
            id: &run_id,
            flow_id: &id,
            flow_revision: rev,
            inputs: &json!({}),
            trigger: &json!({}),
            lease: Some(("dead-process", Duration::from_millis(100))),
            parent: None,
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let resumed = e.resume(&run_id, None).await.unwrap();
    assert_eq!(resumed.status, RunStatus::Succeeded);
    assert_eq!(resumed.output, Some(json!(["A-3005", "A-3012"])));
    let _: &Engine = &e;
}

async fn a_request_key_starts_one_run_and_a_tick_is_claimed_once(store: &Store) {
    let flow = unique("keyed");
    let key = unique("hook:orders:msg");
    let new = |id: &'static str| NewRun {
        id,
        flow_id: "",
        flow_revision: 1,
        inputs: &serde_json::Value::Null,
        trigger: &serde_json::Value::Null,
        lease: None,
        parent: None,
    };
    let first = uuid::Uuid::now_v7().to_string();
    let second = uuid::Uuid::now_v7().to_string();
    let day = Duration::from_secs(86_400);
    let a = NewRun {
        id: &first,
        flow_id: &flow,
        ..new("")
    };
    assert_eq!(store.create_run_once(a, &key, day).await.unwrap(), None);
    let b = NewRun {
        id: &second,
        flow_id: &flow,
        ..new("")
    };
    assert_eq!(
        store.create_run_once(b, &key, day).await.unwrap(),
        Some(first.clone()),
        "the same key returns the first run"
    );
    assert!(
        store.get_run(&second).await.unwrap().is_none(),
        "no second run"
    );
    assert_eq!(
        store.request_key_run(&key, 86_400_000).await.unwrap(),
        Some(first.clone())
    );
    // After the window the key starts a new run.
    let third = uuid::Uuid::now_v7().to_string();
    let c = NewRun {
        id: &third,
        flow_id: &flow,
        ..new("")
    };
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(
        store
            .create_run_once(c, &key, Duration::from_millis(1))
            .await
            .unwrap(),
        None
    );
    assert!(store.get_run(&third).await.unwrap().is_some());
    // Schedule ticks: claimed once; the last one is remembered.
    assert!(
        store
            .claim_tick(&flow, "0:* * * * *", 60_000, &first)
            .await
            .unwrap()
    );
    assert!(
        !store
            .claim_tick(&flow, "0:* * * * *", 60_000, &second)
            .await
            .unwrap()
    );
    assert!(
        store
            .claim_tick(&flow, "0:* * * * *", 120_000, &second)
            .await
            .unwrap()
    );
    assert_eq!(
        store.last_tick(&flow, "0:* * * * *").await.unwrap(),
        Some(120_000)
    );
    assert_eq!(store.last_tick(&flow, "other").await.unwrap(), None);
}

/// Outbox claims per endpoint (a window function, on both backends) and
/// releases, and run pruning, on the backend under test.
async fn outbox_claims_per_endpoint_and_runs_prune(store: &Store) {
    use sluice::webhooks::endpoints::{self, NewEndpoint};
    let policy = sluice::webhooks::ssrf::GuardPolicy::parse("127.0.0.1").unwrap();
    let tag = uuid::Uuid::now_v7().simple().to_string();
    for n in 0..2 {
        endpoints::add(
            store,
            &policy,
            NewEndpoint {
                url: format!("http://127.0.0.1:9/{tag}/{n}"),
                event_types: vec![format!("t{tag}.*")],
                ..Default::default()
            },
        )
        .await
        .unwrap();
    }
    for i in 0..10 {
        sluice::webhooks::emit(
            store,
            &format!("{tag}-{i}"),
            &format!("t{tag}.x"),
            None,
            json!({}),
        )
        .await
        .unwrap();
    }
    let owner = format!("w-{tag}");
    let claimed = store
        .claim_messages_per_endpoint(&owner, std::time::Duration::from_secs(60), 1000, 3)
        .await
        .unwrap();
    let mine: Vec<_> = claimed.iter().filter(|m| m.body.contains(&tag)).collect();
    assert_eq!(mine.len(), 6, "3 for each of the 2 endpoints: {mine:?}");
    let again = store
        .claim_messages_per_endpoint(
            &format!("{owner}-2"),
            std::time::Duration::from_secs(60),
            1000,
            3,
        )
        .await
        .unwrap();
    assert!(
        again.iter().all(|m| !mine.iter().any(|c| c.id == m.id)),
        "a claimed message is never claimed twice"
    );
    let ids: Vec<String> = mine.iter().map(|m| m.id.clone()).collect();
    store.release_messages(&owner, &ids, 0).await.unwrap();
    let third = store
        .claim_messages_per_endpoint(
            &format!("{owner}-3"),
            std::time::Duration::from_secs(60),
            1000,
            100,
        )
        .await
        .unwrap();
    assert!(
        ids.iter().all(|id| third.iter().any(|m| &m.id == id)),
        "released ones are claimable"
    );

    let r = store
        .prune_runs(
            &sluice::store::Prune {
                flow_id: Some(format!("no-such-flow-{tag}")),
                keep_last: Some(0),
                ..Default::default()
            },
            false,
        )
        .await
        .unwrap();
    assert_eq!(r.runs, 0);
}

/// Writes made at once share commits (SQLite's group-commit writer); one
/// that fails (a run id taken) fails alone, with the database's reason, and
/// every other one is stored, the keyed ones once per key.
async fn concurrent_writes_share_commits_and_a_failing_one_fails_alone(store: &Store) {
    let flow = unique("burst");
    let taken = uuid::Uuid::now_v7().to_string();
    let ids: Vec<String> = (0..120).map(|_| uuid::Uuid::now_v7().to_string()).collect();
    let null = serde_json::Value::Null;
    let run = |id: &'static str| NewRun {
        id,
        flow_id: "",
        flow_revision: 1,
        inputs: &null,
        trigger: &null,
        lease: None,
        parent: None,
    };
    store
        .create_run(NewRun {
            id: &taken,
            flow_id: &flow,
            ..run("")
        })
        .await
        .unwrap();
    let day = Duration::from_secs(86_400);
    let key = unique("burst-key");
    let writes = ids.iter().enumerate().map(|(i, id)| {
        let r = NewRun {
            // The same id again for write 7: refused.
            id: if i == 7 { &taken } else { id },
            flow_id: &flow,
            ..run("")
        };
        let key = &key;
        async move {
            if i != 7 && i % 12 == 0 {
                // Ten writers race for one request key: one run starts.
                store.create_run_once(r, key, day).await
            } else {
                store.create_run(r).await.map(|()| None)
            }
        }
    });
    let results = futures::future::join_all(writes).await;
    let err = results[7].as_ref().unwrap_err().to_string();
    assert!(
        err.to_lowercase().contains("unique") || err.contains("duplicate"),
        "the failing write says why: {err}"
    );
    let mut started = Vec::new();
    for (i, r) in results.iter().enumerate().filter(|(i, _)| *i != 7) {
        let first = r
            .as_ref()
            .unwrap_or_else(|e| panic!("write {i} failed: {e}"));
        if i % 12 == 0 && first.is_none() {
            started.push(ids[i].clone());
        }
    }
    assert_eq!(started.len(), 1, "one run per request key: {started:?}");
    for (i, id) in ids.iter().enumerate() {
        let stored = store.get_run(id).await.unwrap();
        let expected = i != 7 && (i % 12 != 0 || started.contains(id));
        assert_eq!(stored.is_some(), expected, "run {i}");
    }
}

async fn suite(store: Store) {
    concurrent_writes_share_commits_and_a_failing_one_fails_alone(&store).await;
    outbox_claims_per_endpoint_and_runs_prune(&store).await;
    a_request_key_starts_one_run_and_a_tick_is_claimed_once(&store).await;
    flows_get_revisions_only_when_they_change(&store).await;
    leases_keep_other_processes_out_until_they_expire(&store).await;
    step_results_upsert_and_reset(&store).await;
    runs_list_by_flow_and_status_newest_first(&store).await;
    a_flow_runs_and_an_interrupted_run_resumes(store).await;
}

#[tokio::test]
async fn store_suite_on_sqlite() {
    let (store, _dir) = sqlite_store().await;
    suite(store).await;
}

#[tokio::test]
async fn store_suite_on_postgres() {
    let Some(url) = postgres_url() else {
        eprintln!(
            "skipped: SLUICE_TEST_POSTGRES_URL is not set, so the PostgreSQL store suite did not run"
        );
        return;
    };
    let store = Store::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
    suite(store).await;
}

#[tokio::test]
async fn unknown_database_scheme_is_a_clear_error() {
    let err = Store::connect("mysql://localhost/x").await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "unsupported database URL `mysql://localhost/x`: use sqlite://PATH or postgres://USER@HOST/DB"
    );
    // An in-memory SQLite database cannot be shared by the writer's connection.
    let err = Store::connect("sqlite::memory:").await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "unsupported database URL `sqlite::memory:`: use sqlite://PATH or postgres://USER@HOST/DB"
    );
}

#[tokio::test]
async fn many_stores_opening_a_new_sqlite_file_at_once_all_succeed() {
    for _ in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("race.db").display());
        let opens = futures::future::join_all((0..6).map(|_| Store::connect(&url))).await;
        for o in opens {
            let store = o.unwrap_or_else(|e| panic!("concurrent open failed: {e}"));
            assert!(
                store
                    .list_runs(&RunFilter::default())
                    .await
                    .unwrap()
                    .is_empty()
            );
        }
    }
}
