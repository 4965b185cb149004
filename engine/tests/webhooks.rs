//! Outbound webhooks end to end: flows fire events, the outbox delivers them
//! signed to local receivers that misbehave in every documented way.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};
use sluice::store::{MessageFilter, MessageStatus, RunStatus, Store};
use sluice::webhooks::delivery::{DeliveryConfig, DeliveryWorker};
use sluice::webhooks::endpoints::{self, Endpoint, NewEndpoint};
use sluice::webhooks::ssrf::{GuardError, GuardPolicy};

use common::{engine, run, sqlite_store};

/// What the receiver does for one request.
#[derive(Clone)]
enum Reply {
    Status(u16),
    RetryAfter(u16, &'static str),
    Sleep(Duration),
    Drip(Duration),
    Redirect(&'static str),
}

#[derive(Clone, Debug)]
struct Received {
    headers: HeaderMap,
    body: String,
    at: Instant,
}

#[derive(Clone)]
struct Receiver {
    addr: SocketAddr,
    got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    /// A receiver answering per `script` (then 200 forever).
    async fn start(script: Vec<Reply>) -> Receiver {
        let script = Arc::new(Mutex::new(script));
        let got = Arc::new(Mutex::new(Vec::new()));
        let (s, g) = (script.clone(), got.clone());
        let app = axum::Router::new().fallback(move |headers: HeaderMap, body: Bytes| {
            let (s, g) = (s.clone(), g.clone());
            async move {
                g.lock().unwrap().push(Received {
                    headers,
                    body: String::from_utf8_lossy(&body).into_owned(),
                    at: Instant::now(),
                });
                let reply = {
                    let mut s = s.lock().unwrap();
                    if s.is_empty() {
                        Reply::Status(200)
                    } else {
                        s.remove(0)
                    }
                };
                respond(reply).await
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { addr, got }
    }

    fn url(&self) -> String {
        format!("http://{}/hooks", self.addr)
    }

    fn received(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }
}

async fn respond(reply: Reply) -> Response {
    match reply {
        Reply::Status(code) => Response::builder()
            .status(code)
            .body(Body::from(format!("status {code}")))
            .unwrap(),
        Reply::RetryAfter(code, after) => Response::builder()
            .status(code)
            .header("retry-after", after)
            .body(Body::empty())
            .unwrap(),
        Reply::Sleep(d) => {
            tokio::time::sleep(d).await;
            Response::builder().status(200).body(Body::empty()).unwrap()
        }
        Reply::Drip(gap) => {
            let chunks = futures::stream::unfold(0, move |i| async move {
                if i == 20 {
                    return None;
                }
                tokio::time::sleep(gap).await;
                Some((Ok::<_, std::io::Error>(Bytes::from_static(b"drip ")), i + 1))
            });
            Response::builder()
                .status(200)
                .body(Body::from_stream(chunks))
                .unwrap()
        }
        Reply::Redirect(to) => Response::builder()
            .status(StatusCode::FOUND)
            .header("location", to)
            .body(Body::empty())
            .unwrap(),
    }
}

fn local_policy() -> GuardPolicy {
    GuardPolicy::parse("127.0.0.1").unwrap()
}

fn test_config() -> DeliveryConfig {
    DeliveryConfig {
        schedule: vec![
            Duration::from_millis(100),
            Duration::from_millis(200),
            Duration::from_millis(300),
        ],
        jitter: 0.0,
        attempt_timeout: Duration::from_secs(1),
        policy: local_policy(),
        ..DeliveryConfig::default()
    }
}

async fn add_endpoint(store: &Store, url: &str, events: &[&str]) -> Endpoint {
    endpoints::add(
        store,
        &local_policy(),
        NewEndpoint {
            url: url.to_string(),
            event_types: events.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        },
    )
    .await
    .unwrap()
}

/// Messages delivered to endpoints other than `except`.
async fn delivered_except(store: &Store, except: &[String]) -> usize {
    store
        .messages(&MessageFilter {
            limit: 10_000,
            ..MessageFilter::default()
        })
        .await
        .unwrap()
        .iter()
        .filter(|m| !except.contains(&m.endpoint_id) && m.status == MessageStatus::Delivered)
        .count()
}

/// Delivers until every message is delivered or failed (or 40 s pass).
async fn deliver_all(store: &Store, config: DeliveryConfig) {
    let worker = DeliveryWorker::new(store.clone(), config).unwrap();
    let deadline = Instant::now() + Duration::from_secs(40);
    while store.undelivered_count().await.unwrap() > 0 {
        assert!(Instant::now() < deadline, "messages still undelivered");
        if worker.run_once().await.unwrap() == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

const ALERT_FLOW: &str = r#"
apiVersion: sluice/v1
id: po-alerts
steps:
  - id: approved
    read: { connection: sandbox, entity: purchase_order, filter: { status: approved }, limit: 3 }
  - id: alert
    needs: [approved]
    for_each: "${{ steps.approved.output.records }}"
    webhook:
      event: po.high_value
      payload: { po: "${{ item.number }}", total: "${{ item.total }}" }
"#;

async fn one_message(store: &Store) -> sluice::store::MessageRecord {
    let all = store.messages(&MessageFilter::default()).await.unwrap();
    assert_eq!(all.len(), 1, "{all:?}");
    all.into_iter().next().unwrap()
}

#[tokio::test]
async fn flow_events_arrive_signed_and_an_independent_library_accepts_them() {
    let (store, _d) = sqlite_store().await;
    let rx = Receiver::start(vec![]).await;
    let ep = add_endpoint(&store, &rx.url(), &["po.*"]).await;
    let _other = add_endpoint(&store, &rx.url(), &["sync.*"]).await;
    let e = engine(store.clone(), vec![], vec![]);
    let out = run(&e, ALERT_FLOW, json!({})).await;
    assert_eq!(out.status, RunStatus::Succeeded, "{:?}", out.error);
    let envelopes = out.output.unwrap();
    assert_eq!(envelopes.as_array().unwrap().len(), 3);
    deliver_all(&store, test_config()).await;

    let got = rx.received();
    assert_eq!(
        got.len(),
        3,
        "one delivery per event, only to the po.* endpoint"
    );
    let verifier = standardwebhooks::Webhook::new(&ep.secret.to_text()).unwrap();
    for (r, env) in got.iter().zip(envelopes.as_array().unwrap()) {
        verifier
            .verify(r.body.as_bytes(), &r.headers)
            .expect("independent verifier accepts the delivery");
        let body: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(body["type"], "po.high_value");
        assert_eq!(body["id"], env["id"]);
        assert_eq!(r.headers["webhook-id"], env["id"].as_str().unwrap());
        assert_eq!(body["data"]["po"], env["data"]["po"]);
        assert!(body["timestamp"].as_str().unwrap().ends_with('Z'));
        assert_eq!(
            body.as_object()
                .unwrap()
                .keys()
                .cloned()
                .collect::<Vec<_>>(),
            ["id", "type", "timestamp", "connection_id", "data"]
        );
    }
    let tampered = got[0].body.replace("po.high_value", "po.low_value");
    assert!(
        verifier
            .verify(tampered.as_bytes(), &got[0].headers)
            .is_err(),
        "a tampered body fails verification"
    );
    let wrong =
        standardwebhooks::Webhook::new(&sluice::webhooks::signing::Secret::generate().to_text())
            .unwrap();
    assert!(
        wrong
            .verify(got[0].body.as_bytes(), &got[0].headers)
            .is_err(),
        "a wrong secret fails verification"
    );
}

#[tokio::test]
async fn a_500_then_200_is_retried_and_delivered_once() {
    let (store, _d) = sqlite_store().await;
    let rx = Receiver::start(vec![Reply::Status(500)]).await;
    add_endpoint(&store, &rx.url(), &[]).await;
    sluice::webhooks::emit(
        &store,
        "k1",
        "system.error",
        None,
        json!({"message": "disk full"}),
    )
    .await
    .unwrap();
    deliver_all(&store, test_config()).await;
    let got = rx.received();
    assert_eq!(got.len(), 2);
    assert_eq!(
        got[0].headers["webhook-id"], got[1].headers["webhook-id"],
        "same id on every attempt"
    );
    let m = one_message(&store).await;
    assert_eq!(m.status, MessageStatus::Delivered);
    let attempts = store.message_attempts(&m.id).await.unwrap();
    assert_eq!(
        attempts.iter().map(|a| a.status_code).collect::<Vec<_>>(),
        vec![Some(500), Some(200)]
    );
    assert_eq!(
        attempts[0].error.as_deref(),
        Some("receiver answered 500 Internal Server Error")
    );
    assert_eq!(attempts[0].response_body.as_deref(), Some("status 500"));
}

#[tokio::test]
async fn a_receiver_that_sleeps_past_the_deadline_times_out_and_is_retried() {
    let (store, _d) = sqlite_store().await;
    let rx = Receiver::start(vec![Reply::Sleep(Duration::from_secs(3))]).await;
    add_endpoint(&store, &rx.url(), &[]).await;
    sluice::webhooks::emit(&store, "k2", "system.error", None, json!({}))
        .await
        .unwrap();
    deliver_all(&store, test_config()).await;
    let m = one_message(&store).await;
    assert_eq!(m.status, MessageStatus::Delivered);
    let attempts = store.message_attempts(&m.id).await.unwrap();
    assert_eq!(attempts.len(), 2);
    assert_eq!(
        attempts[0].error.as_deref(),
        Some("timed out after 1s (connect, headers and body)")
    );
    assert!(
        attempts[0].latency_ms >= 1000 && attempts[0].latency_ms < 2500,
        "{}",
        attempts[0].latency_ms
    );
}

#[tokio::test]
async fn a_body_dripped_slowly_is_cut_at_the_deadline() {
    let (store, _d) = sqlite_store().await;
    let rx = Receiver::start(vec![Reply::Drip(Duration::from_millis(200))]).await;
    add_endpoint(&store, &rx.url(), &[]).await;
    sluice::webhooks::emit(&store, "k3", "system.error", None, json!({}))
        .await
        .unwrap();
    deliver_all(&store, test_config()).await;
    let m = one_message(&store).await;
    let attempts = store.message_attempts(&m.id).await.unwrap();
    assert!(
        attempts[0]
            .error
            .as_deref()
            .unwrap()
            .starts_with("timed out after 1s"),
        "{:?}",
        attempts[0]
    );
    assert!(attempts[0].latency_ms < 2000);
    assert_eq!(
        m.status,
        MessageStatus::Delivered,
        "the retry got a normal answer"
    );
}

#[tokio::test]
async fn a_410_disables_the_endpoint() {
    let (store, _d) = sqlite_store().await;
    let rx = Receiver::start(vec![Reply::Status(410)]).await;
    let ep = add_endpoint(&store, &rx.url(), &[]).await;
    sluice::webhooks::emit(&store, "k4", "system.error", None, json!({}))
        .await
        .unwrap();
    deliver_all(&store, test_config()).await;
    let m = one_message(&store).await;
    assert_eq!(m.status, MessageStatus::Failed);
    assert_eq!(m.last_error.as_deref(), Some("410 Gone: endpoint disabled"));
    let ep = store.endpoint(&ep.id).await.unwrap().unwrap();
    assert!(!ep.enabled);
    assert!(
        ep.disabled_reason
            .unwrap()
            .starts_with("the receiver answered 410 Gone")
    );
    sluice::webhooks::emit(&store, "k5", "system.error", None, json!({}))
        .await
        .unwrap();
    assert_eq!(
        store
            .messages(&MessageFilter::default())
            .await
            .unwrap()
            .len(),
        1,
        "a disabled endpoint gets nothing new"
    );
}

#[tokio::test]
async fn a_429_retry_after_is_honoured() {
    let (store, _d) = sqlite_store().await;
    let rx = Receiver::start(vec![Reply::RetryAfter(429, "1")]).await;
    add_endpoint(&store, &rx.url(), &[]).await;
    sluice::webhooks::emit(&store, "k6", "system.error", None, json!({}))
        .await
        .unwrap();
    deliver_all(&store, test_config()).await;
    let got = rx.received();
    assert_eq!(got.len(), 2);
    let gap = got[1].at - got[0].at;
    assert!(
        gap >= Duration::from_millis(950),
        "waited {gap:?}, not the 100 ms schedule"
    );
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let (store, _d) = sqlite_store().await;
    let rx = Receiver::start(vec![Reply::Redirect("http://10.0.0.1/steal")]).await;
    add_endpoint(&store, &rx.url(), &[]).await;
    sluice::webhooks::emit(&store, "k7", "system.error", None, json!({}))
        .await
        .unwrap();
    deliver_all(&store, test_config()).await;
    let m = one_message(&store).await;
    let attempts = store.message_attempts(&m.id).await.unwrap();
    assert_eq!(attempts[0].status_code, Some(302));
    assert_eq!(
        attempts[0].error.as_deref(),
        Some("receiver answered 302 Found (redirects are not followed)")
    );
    assert_eq!(
        rx.received().len(),
        2,
        "the retry went to the endpoint again, never to the redirect target"
    );
}

#[tokio::test]
async fn the_ssrf_guard_refuses_internal_addresses_unless_allow_listed() {
    let (store, _d) = sqlite_store().await;
    let none = GuardPolicy::default();
    let add = |url: &str| NewEndpoint {
        url: url.to_string(),
        ..Default::default()
    };
    let e = endpoints::add(&store, &none, add("http://127.0.0.1:9/h"))
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "webhook URL `http://127.0.0.1:9/h` must use https (plain http is allowed only for allow-listed hosts)"
    );
    let e = endpoints::add(&store, &none, add("https://169.254.169.254/latest"))
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("metadata addresses are blocked"),
        "{e}"
    );
    let e = endpoints::add(&store, &none, add("not a url"))
        .await
        .unwrap_err();
    assert!(
        e.to_string().starts_with("invalid webhook URL `not a url`"),
        "{e}"
    );

    // Allowed when added, but the worker runs with the guard on: refused at delivery.
    let rx = Receiver::start(vec![]).await;
    add_endpoint(&store, &rx.url(), &[]).await;
    let via_name = endpoints::add(
        &store,
        &GuardPolicy::parse("localhost").unwrap(),
        add(&format!("https://localhost:{}/h", rx.addr.port())),
    )
    .await
    .unwrap();
    sluice::webhooks::emit(&store, "k8", "system.error", None, json!({}))
        .await
        .unwrap();
    deliver_all(
        &store,
        DeliveryConfig {
            policy: GuardPolicy::default(),
            ..test_config()
        },
    )
    .await;
    assert!(
        rx.received().is_empty(),
        "nothing reached the loopback receiver"
    );
    for m in store.messages(&MessageFilter::default()).await.unwrap() {
        assert_eq!(m.status, MessageStatus::Failed);
        let err = m.last_error.unwrap();
        if m.endpoint_id == via_name.id {
            assert_eq!(
                err,
                "refused to connect to localhost (127.0.0.1): loopback addresses are blocked (allow-list it to permit)"
            );
        } else {
            assert!(
                err.contains("must use https") || err.contains("loopback"),
                "{err}"
            );
        }
    }
    assert!(matches!(
        none.check_ip("x", "::ffff:10.1.1.1".parse().unwrap()),
        Err(GuardError::Blocked { .. })
    ));
}

#[tokio::test]
async fn exhausted_messages_are_kept_failed_and_can_be_resent() {
    let (store, _d) = sqlite_store().await;
    let rx = Receiver::start(vec![
        Reply::Status(503),
        Reply::Status(503),
        Reply::Status(503),
        Reply::Status(503),
    ])
    .await;
    add_endpoint(&store, &rx.url(), &[]).await;
    sluice::webhooks::emit(&store, "k9", "system.error", None, json!({}))
        .await
        .unwrap();
    deliver_all(&store, test_config()).await;
    let m = one_message(&store).await;
    assert_eq!(m.status, MessageStatus::Failed);
    assert_eq!(
        m.last_error.as_deref(),
        Some("receiver answered 503 Service Unavailable; gave up after 4 attempts")
    );
    assert!(store.resend_message(&m.id).await.unwrap());
    deliver_all(&store, test_config()).await;
    let m = one_message(&store).await;
    assert_eq!(m.status, MessageStatus::Delivered);
    assert_eq!(store.message_attempts(&m.id).await.unwrap().len(), 5);
}

#[tokio::test]
async fn a_worker_that_dies_mid_delivery_loses_nothing() {
    let (store, _d) = sqlite_store().await;
    let rx = Receiver::start(vec![]).await;
    add_endpoint(&store, &rx.url(), &[]).await;
    sluice::webhooks::emit(&store, "k10", "system.error", None, json!({}))
        .await
        .unwrap();
    // A worker claims the message and dies before finishing it.
    let claimed = store
        .claim_messages("dead-worker", Duration::from_millis(200), 10)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    let worker = DeliveryWorker::new(store.clone(), test_config()).unwrap();
    assert_eq!(
        worker.run_once().await.unwrap(),
        0,
        "the lease keeps others off"
    );
    tokio::time::sleep(Duration::from_millis(250)).await;
    deliver_all(&store, test_config()).await;
    assert_eq!(rx.received().len(), 1);
    assert_eq!(one_message(&store).await.status, MessageStatus::Delivered);
}

#[tokio::test]
async fn rotation_sends_both_signatures_and_each_secret_verifies() {
    let (store, _d) = sqlite_store().await;
    let rx = Receiver::start(vec![]).await;
    let ep = add_endpoint(&store, &rx.url(), &[]).await;
    let new = endpoints::rotate(&store, &ep.id, None).await.unwrap();
    sluice::webhooks::emit(&store, "k11", "system.error", None, json!({}))
        .await
        .unwrap();
    deliver_all(&store, test_config()).await;
    let r = &rx.received()[0];
    assert_eq!(
        r.headers["webhook-signature"]
            .to_str()
            .unwrap()
            .split(' ')
            .count(),
        2
    );
    for secret in [ep.secret.to_text(), new.to_text()] {
        standardwebhooks::Webhook::new(&secret)
            .unwrap()
            .verify(r.body.as_bytes(), &r.headers)
            .expect("both secrets verify");
    }
}

#[tokio::test]
async fn a_resumed_run_does_not_fire_twice_and_oversized_payloads_fail() {
    let (store, _d) = sqlite_store().await;
    let rx = Receiver::start(vec![]).await;
    // Not `run.*`: the runs' own announcements are not what is counted here.
    add_endpoint(&store, &rx.url(), &["order.*", "system.*", "blob.*"]).await;
    let flaky = common::FlakyConnector::new(1, sluice::connectors::ConnectorErrorKind::Transient);
    let e = engine(store.clone(), vec![("flaky", flaky)], vec![]);
    let out = run(
        &e,
        r#"
apiVersion: sluice/v1
id: fire-then-fail
steps:
  - { id: fire, webhook: { event: order.seen, payload: { n: 1 } } }
  - { id: after, needs: [fire], read: { connection: flaky, entity: vendor } }
"#,
        json!({}),
    )
    .await;
    assert_eq!(out.status, RunStatus::Failed);
    // Resuming re-runs only the failed step: `fire` committed with its message, so it does not fire again.
    let resumed = e.resume(&out.run_id, None).await.unwrap();
    assert_eq!(resumed.status, RunStatus::Succeeded);
    assert_eq!(
        store
            .messages(&MessageFilter::default())
            .await
            .unwrap()
            .len(),
        1
    );
    sluice::webhooks::emit(&store, "same-key", "system.error", None, json!({}))
        .await
        .unwrap();
    sluice::webhooks::emit(&store, "same-key", "system.error", None, json!({}))
        .await
        .unwrap();
    assert_eq!(
        store
            .messages(&MessageFilter::default())
            .await
            .unwrap()
            .len(),
        2,
        "the same key enqueues once"
    );

    let out = run(
        &e,
        r#"
apiVersion: sluice/v1
id: too-big
steps:
  - { id: big, webhook: { event: blob.made, payload: "${{ 'x' * 300000 }}" } }
"#,
        json!({}),
    )
    .await;
    assert_eq!(out.status, RunStatus::Failed);
    let msg = out.error.unwrap()["message"].as_str().unwrap().to_string();
    assert!(
        msg.contains("payload is 300") && msg.contains("the limit is 262144 bytes"),
        "{msg}"
    );
}

#[tokio::test]
async fn invalid_webhook_steps_are_caught_by_validation() {
    let err = sluice::flow::compile(
        "w.yaml",
        "apiVersion: sluice/v1\nid: w\nsteps:\n  - { id: a, webhook: { event: sync.completed } }\n  - { id: b, webhook: { event: 'Bad Event' } }\n",
        &Default::default(),
    )
    .unwrap_err();
    let msgs: Vec<String> = err
        .diagnostics
        .iter()
        .map(|d| format!("{}:{}", d.line.unwrap(), d.message))
        .collect();
    assert_eq!(
        msgs[0],
        "4:event type `sync.completed` is in the engine's reserved `sync.*` namespace; choose another"
    );
    assert!(
        msgs[1].starts_with("5:event type `Bad Event` must be lowercase"),
        "{msgs:?}"
    );
}

#[tokio::test]
async fn webhooks_deliver_on_postgres_too() {
    let Some(url) = common::postgres_url() else {
        eprintln!("skipped: SLUICE_TEST_POSTGRES_URL is not set");
        return;
    };
    let store = Store::connect(&url).await.unwrap();
    let rx = Receiver::start(vec![Reply::Status(500)]).await;
    let ep = add_endpoint(&store, &rx.url(), &[]).await;
    let key = uuid::Uuid::now_v7().to_string();
    let env = sluice::webhooks::emit(&store, &key, "system.error", None, json!({"pg": true}))
        .await
        .unwrap();
    let worker = DeliveryWorker::new(store.clone(), test_config()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ms = store.messages_of_event(&env.id).await.unwrap();
        if ms.iter().all(|m| m.status == MessageStatus::Delivered) {
            break;
        }
        assert!(Instant::now() < deadline, "not delivered: {ms:?}");
        worker.run_once().await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(rx.received().len(), 2);
    endpoints::set_enabled(&store, &ep.id, false).await.unwrap();
}

#[tokio::test]
async fn a_step_can_name_its_endpoint_directly() {
    let (store, _d) = sqlite_store().await;
    let rx = Receiver::start(vec![]).await;
    let direct = add_endpoint(&store, &rx.url(), &["sync.*"]).await;
    let _subscribed = add_endpoint(&store, &rx.url(), &["order.*"]).await;
    let e = engine(store.clone(), vec![], vec![]);
    let yaml = format!(
        "apiVersion: sluice/v1\nid: direct\nsteps:\n  - {{ id: w, webhook: {{ event: order.direct, endpoint: {}, payload: {{ ok: true }} }} }}\n",
        direct.id
    );
    let out = run(&e, &yaml, json!({})).await;
    assert_eq!(out.status, RunStatus::Succeeded, "{:?}", out.error);
    let msgs = store.messages(&MessageFilter::default()).await.unwrap();
    assert_eq!(
        msgs.len(),
        1,
        "only the named endpoint, whatever the filters"
    );
    assert_eq!(msgs[0].endpoint_id, direct.id);

    let out = run(&e, "apiVersion: sluice/v1\nid: ghost\nsteps:\n  - { id: w, webhook: { event: order.x, endpoint: ep_ghost } }\n", json!({})).await;
    assert_eq!(out.status, RunStatus::Failed);
    assert_eq!(
        out.error.unwrap()["message"],
        "step `w`: webhook endpoint `ep_ghost` does not exist"
    );
}

/// The production deadline: a receiver that sleeps 11 s is cut at 10 s and retried.
#[tokio::test]
async fn a_receiver_sleeping_11_s_hits_the_10_s_deadline() {
    let (store, _d) = sqlite_store().await;
    let rx = Receiver::start(vec![Reply::Sleep(Duration::from_secs(11))]).await;
    add_endpoint(&store, &rx.url(), &[]).await;
    sluice::webhooks::emit(&store, "k-11s", "system.error", None, json!({}))
        .await
        .unwrap();
    let config = DeliveryConfig {
        attempt_timeout: DeliveryConfig::default().attempt_timeout,
        ..test_config()
    };
    assert_eq!(config.attempt_timeout, Duration::from_secs(10));
    deliver_all(&store, config).await;
    let m = one_message(&store).await;
    assert_eq!(m.status, MessageStatus::Delivered);
    let attempts = store.message_attempts(&m.id).await.unwrap();
    assert_eq!(
        attempts[0].error.as_deref(),
        Some("timed out after 10s (connect, headers and body)")
    );
    assert!(
        (10_000..11_000).contains(&attempts[0].latency_ms),
        "{}",
        attempts[0].latency_ms
    );
}

#[tokio::test]
async fn a_finished_run_is_announced_as_a_run_event_to_subscribed_endpoints() {
    let (store, _dir) = sqlite_store().await;
    let ep = add_endpoint(&store, "http://127.0.0.1:9/hooks", &["run.failed"]).await;
    let e = engine(store.clone(), vec![], vec![]);
    let ok = run(
        &e,
        "apiVersion: sluice/v1\nid: fine\nsteps:\n  - { id: a, set: 1 }\n",
        json!({}),
    )
    .await;
    assert_eq!(ok.status, RunStatus::Succeeded);
    let bad = run(
        &e,
        "apiVersion: sluice/v1\nid: broken\nsteps:\n  - { id: a, set: \"${{ 1 // 0 }}\" }\n",
        json!({}),
    )
    .await;
    assert_eq!(bad.status, RunStatus::Failed);
    // Only the failure reaches the endpoint subscribed to `run.failed`.
    let messages = store.messages(&MessageFilter::default()).await.unwrap();
    assert_eq!(messages.len(), 1, "{messages:?}");
    let m = &messages[0];
    assert_eq!(
        (m.event_type.as_str(), m.endpoint_id.as_str()),
        ("run.failed", ep.id.as_str())
    );
    let body: Value = serde_json::from_str(&m.body).unwrap();
    assert_eq!(body["data"]["flow_id"], "broken");
    assert_eq!(body["data"]["run_id"], bad.run_id.as_str());
    assert_eq!(body["data"]["step"], "a");
    assert!(
        body["data"]["error"].as_str().unwrap().contains("step `a`"),
        "{body}"
    );
}

/// A receiver behind a listen backlog of 1 that accepts one connection per
/// 100 ms (so a burst of new connections overflows the backlog and the
/// kernel drops their SYNs), takes 20 ms per request and records the most
/// requests it ever had in flight and every `webhook-id`.
async fn slow_small_backlog_receiver() -> (String, Arc<Mutex<(usize, usize, Vec<String>)>>) {
    // (in flight now, most in flight, ids received)
    let state: Arc<Mutex<(usize, usize, Vec<String>)>> = Arc::default();
    let s = state.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap| {
            let s = s.clone();
            async move {
                {
                    let mut g = s.lock().unwrap();
                    g.0 += 1;
                    g.1 = g.1.max(g.0);
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
                let mut g = s.lock().unwrap();
                g.0 -= 1;
                g.2.push(headers["webhook-id"].to_str().unwrap().to_string());
                StatusCode::OK
            }
        }),
    );
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let service = hyper_util::service::TowerToHyperService::new(app.clone());
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    (format!("http://{addr}/hook"), state)
}

#[tokio::test]
async fn a_slow_receiver_with_a_small_backlog_gets_every_message_once_without_a_flood() {
    let (store, _d) = sqlite_store().await;
    let (url, state) = slow_small_backlog_receiver().await;
    add_endpoint(&store, &url, &[]).await;
    for i in 0..300 {
        sluice::webhooks::emit(&store, &format!("k-{i}"), "po.burst", None, json!({"i": i}))
            .await
            .unwrap();
    }
    // The defaults a server runs with (8 in flight per endpoint, 10 s per
    // attempt): a retry here would be one our own burst of connections
    // caused. With 128 in flight (the worker's overall concurrency, as
    // before the cap), 40 of the 300 needed a retry.
    let defaults = DeliveryConfig::default();
    let cap = defaults.per_endpoint;
    let config = DeliveryConfig {
        per_endpoint: cap,
        attempt_timeout: defaults.attempt_timeout,
        ..test_config()
    };
    // The server's loop.
    let worker = DeliveryWorker::new(store.clone(), config).unwrap();
    let all_delivered = async {
        while store.undelivered_count().await.unwrap() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), worker.run_until(all_delivered))
        .await
        .expect("messages still undelivered");
    let (_, most, ids) = state.lock().unwrap().clone();
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    let messages = store
        .messages(&MessageFilter {
            limit: 1000,
            ..MessageFilter::default()
        })
        .await
        .unwrap();
    let retried: Vec<_> = messages.iter().filter(|m| m.attempts != 1).collect();
    assert_eq!(
        (ids.len() - unique.len(), retried.len(), unique.len()),
        (0, 0, 300),
        "(duplicate deliveries, messages that needed a retry, messages delivered); \
         most in flight at once: {most}"
    );
    assert!(
        messages
            .iter()
            .all(|m| m.status == MessageStatus::Delivered)
    );
    assert!(
        most <= cap,
        "{most} requests in flight at once to one endpoint (cap {cap})"
    );
}

#[tokio::test]
async fn an_unreachable_endpoint_backs_off_instead_of_burning_every_messages_attempts() {
    let (store, _d) = sqlite_store().await;
    // A port that was just free: nothing listens there, connections are refused.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    add_endpoint(&store, &format!("http://127.0.0.1:{port}/hook"), &[]).await;
    for i in 0..40 {
        sluice::webhooks::emit(&store, &format!("k-{i}"), "po.burst", None, json!({"i": i}))
            .await
            .unwrap();
    }
    let worker = DeliveryWorker::new(
        store.clone(),
        DeliveryConfig {
            per_endpoint: 1,
            ..test_config()
        },
    )
    .unwrap();
    for _ in 0..3 {
        worker.run_once().await.unwrap();
    }
    let messages = store
        .messages(&MessageFilter {
            limit: 1000,
            ..MessageFilter::default()
        })
        .await
        .unwrap();
    let attempted = messages.iter().filter(|m| m.attempts > 0).count();
    assert!(
        (1..=2).contains(&attempted),
        "{attempted} of 40 messages spent an attempt on a refused connection"
    );
    assert!(
        messages.iter().all(|m| m.status == MessageStatus::Pending),
        "none given up"
    );
}

#[tokio::test]
async fn an_endpoint_disabled_by_410_is_reported_as_a_system_error_to_another() {
    let (store, _d) = sqlite_store().await;
    let gone = Receiver::start(vec![Reply::Status(410)]).await;
    let ops = Receiver::start(vec![]).await;
    let gone_ep = add_endpoint(&store, &gone.url(), &["po.*"]).await;
    add_endpoint(&store, &ops.url(), &["system.error"]).await;
    sluice::webhooks::emit(&store, "k-gone", "po.created", None, json!({}))
        .await
        .unwrap();
    deliver_all(&store, test_config()).await;
    let got = ops.received();
    assert_eq!(got.len(), 1, "{got:?}");
    let body: Value = serde_json::from_str(&got[0].body).unwrap();
    assert_eq!(body["type"], "system.error");
    assert_eq!(body["data"]["source"], "webhooks");
    assert_eq!(body["data"]["details"]["endpoint_id"], gone_ep.id.as_str());
    assert!(
        body["data"]["message"]
            .as_str()
            .unwrap()
            .contains("answered 410 Gone"),
        "{body}"
    );
}

#[tokio::test]
async fn an_endpoint_whose_connections_time_out_backs_off_too() {
    let (store, _d) = sqlite_store().await;
    // A listener that never accepts, its queue (backlog 1) filled by two
    // connections of ours: the kernel drops further SYNs, so connecting
    // hangs until the connect timeout.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..2 {
        fillers.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    add_endpoint(&store, &format!("http://{addr}/hook"), &[]).await;
    for i in 0..20 {
        sluice::webhooks::emit(&store, &format!("k-{i}"), "po.burst", None, json!({"i": i}))
            .await
            .unwrap();
    }
    let worker = DeliveryWorker::new(
        store.clone(),
        DeliveryConfig {
            per_endpoint: 1,
            attempt_timeout: Duration::from_secs(2),
            ..test_config()
        },
    )
    .unwrap();
    for _ in 0..3 {
        worker.run_once().await.unwrap();
    }
    let messages = store
        .messages(&MessageFilter {
            limit: 1000,
            ..MessageFilter::default()
        })
        .await
        .unwrap();
    let attempted = messages.iter().filter(|m| m.attempts > 0).count();
    assert!(
        (1..=2).contains(&attempted),
        "{attempted} of 20 messages spent an attempt on a connection that timed out"
    );
    assert!(
        messages.iter().all(|m| m.status == MessageStatus::Pending),
        "none given up"
    );
    // The attempt failed connecting (before the attempt's own deadline),
    // which is what backs the endpoint off.
    let first = messages.iter().find(|m| m.attempts > 0).unwrap();
    let error = first.last_error.clone().unwrap_or_default();
    assert!(
        error.starts_with("request failed") && !error.contains("(connect, headers and body)"),
        "{error}"
    );
    drop((fillers, listener));
}

#[tokio::test]
async fn an_endpoint_that_times_out_does_not_hold_back_another_endpoints_deliveries() {
    let (store, _d) = sqlite_store().await;
    // Endpoint A never answers; its attempts run until the 60 s deadline.
    let app = axum::Router::new().fallback(|| async {
        tokio::time::sleep(Duration::from_secs(600)).await;
        StatusCode::OK
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let silent = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let a = add_endpoint(&store, &format!("http://{silent}/hook"), &["slow.*"]).await;
    let b = Receiver::start(vec![]).await;
    add_endpoint(&store, &b.url(), &["fast.*"]).await;
    // A's messages are older, so they are claimed first.
    for i in 0..60 {
        sluice::webhooks::emit(&store, &format!("a-{i}"), "slow.e", None, json!({"i": i}))
            .await
            .unwrap();
    }
    for i in 0..200 {
        sluice::webhooks::emit(&store, &format!("b-{i}"), "fast.e", None, json!({"i": i}))
            .await
            .unwrap();
    }
    let worker = DeliveryWorker::new(
        store.clone(),
        DeliveryConfig {
            attempt_timeout: Duration::from_secs(60),
            ..test_config()
        },
    )
    .unwrap();
    // Done when the store has every B message delivered: the receiver
    // counting 200 is not enough, as the worker stops with the last
    // attempt's answer not yet recorded.
    let b_done = async {
        while delivered_except(&store, std::slice::from_ref(&a.id)).await < 200 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    // With a batch that waits for its slowest delivery, B would get 32
    // messages and then wait for A's 60 s deadlines.
    tokio::time::timeout(Duration::from_secs(45), worker.run_until(b_done))
        .await
        .unwrap_or_else(|_| panic!("B got {} of 200 while A hung", b.received().len()));
    let messages = store
        .messages(&MessageFilter {
            limit: 1000,
            ..MessageFilter::default()
        })
        .await
        .unwrap();
    let (a_msgs, b_msgs): (Vec<_>, Vec<_>) = messages.iter().partition(|m| m.endpoint_id == a.id);
    assert_eq!(b_msgs.len(), 200);
    assert!(b_msgs.iter().all(|m| m.status == MessageStatus::Delivered));
    // None of A's finished an attempt: B was never waiting behind them.
    assert!(a_msgs.iter().all(|m| m.attempts == 0), "{a_msgs:?}");
}

#[tokio::test]
async fn claims_on_postgres_leave_out_the_endpoints_asked_to_skip() {
    let Some(url) = common::postgres_url() else {
        eprintln!("skipped: SLUICE_TEST_POSTGRES_URL is not set");
        return;
    };
    // A database of its own: claims take every due message, so other tests'
    // workers on the shared one would take these too.
    let unique = uuid::Uuid::now_v7().simple().to_string();
    let admin = sqlx::postgres::PgPool::connect(&url).await.unwrap();
    let name = format!("sluice_claims_{unique}");
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&admin)
        .await
        .unwrap();
    let own = match url.rfind('/') {
        Some(i) => format!("{}/{name}", &url[..i]),
        None => panic!("no database in {url}"),
    };
    let store = Store::connect(&own).await.unwrap();
    let a = add_endpoint(
        &store,
        "http://127.0.0.1:1/a",
        &[&format!("skip{unique}.a")],
    )
    .await;
    let b = add_endpoint(
        &store,
        "http://127.0.0.1:1/b",
        &[&format!("skip{unique}.b")],
    )
    .await;
    // Messages for these two endpoints only.
    for ty in ["a", "b"] {
        for i in 0..3 {
            let env = sluice::webhooks::Envelope::new(
                &format!("{unique}-{ty}-{i}"),
                &format!("skip{unique}.{ty}"),
                None,
                json!({"i": i}),
            );
            let messages = sluice::webhooks::route(&[a.clone(), b.clone()], &env, None);
            store.enqueue_messages(&messages).await.unwrap();
        }
    }
    let claimed = store
        .claim_messages_except(
            "skip-test",
            Duration::from_secs(60),
            100_000,
            2,
            std::slice::from_ref(&a.id),
        )
        .await
        .unwrap();
    let of = |id: &str| claimed.iter().filter(|m| m.endpoint_id == id).count();
    assert_eq!((of(&a.id), of(&b.id)), (0, 2), "(A, B) claimed");
    drop(store);
    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
    )))
    .execute(&admin)
    .await;
}

#[tokio::test]
async fn a_message_whose_lease_could_run_out_mid_attempt_goes_back_unattempted() {
    let (store, _d) = sqlite_store().await;
    // 700 ms per request.
    let rx = Receiver::start(vec![Reply::Sleep(Duration::from_millis(700)); 8]).await;
    add_endpoint(&store, &rx.url(), &[]).await;
    for i in 0..4 {
        sluice::webhooks::emit(&store, &format!("k-{i}"), "po.lease", None, json!({"i": i}))
            .await
            .unwrap();
    }
    // One at a time, 1 s per attempt, a 4 s lease: an attempt may start only
    // within 1 s of the claim, so that it ends within half the lease. One
    // claim takes all four, which would need 2.8 s one after another.
    let worker = DeliveryWorker::new(
        store.clone(),
        DeliveryConfig {
            per_endpoint: 1,
            attempt_timeout: Duration::from_secs(1),
            lease: Duration::from_secs(4),
            ..test_config()
        },
    )
    .unwrap();
    assert_eq!(worker.run_once().await.unwrap(), 4, "claimed");
    let messages = store
        .messages(&MessageFilter {
            limit: 100,
            ..MessageFilter::default()
        })
        .await
        .unwrap();
    let attempted = messages.iter().filter(|m| m.attempts > 0).count();
    assert!(
        (1..=2).contains(&attempted),
        "{attempted} of 4 attempted within one claim"
    );
    // The others went back without spending an attempt, due at once.
    assert!(
        messages
            .iter()
            .filter(|m| m.attempts == 0)
            .all(|m| m.status == MessageStatus::Pending)
    );
    // Later claims deliver them, each once.
    deliver_all(&store, test_config()).await;
    let mut ids: Vec<String> = rx
        .received()
        .iter()
        .map(|r| r.headers["webhook-id"].to_str().unwrap().to_string())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!((rx.received().len(), ids.len()), (4, 4));
}

/// Delivers (as `sluice serve`'s worker does) until `receiver` got `n`
/// requests or 20 s pass; events emitted from a background task arrive
/// while it runs.
async fn deliver_until_received(store: &Store, receiver: &Receiver, n: usize) -> Vec<Received> {
    let worker = DeliveryWorker::new(store.clone(), test_config()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while receiver.received().len() < n {
        assert!(Instant::now() < deadline, "got {:?}", receiver.received());
        if worker.run_once().await.unwrap() == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    receiver.received()
}

/// A stored NetSuite connection on `emu` whose status changes go through
/// the store (as under `sluice serve`).
async fn stored_netsuite(
    store: &Store,
    emu: &sluice_emulators::Emulator,
) -> sluice::connectors::http::HttpConnector {
    use sluice::connectors::connection::{self, StoreSink};
    use sluice::connectors::definition::Definitions;
    use sluice::connectors::http::ConnectionConfig;
    use sluice::connectors::resilience::StatusSink;
    let defs = Definitions::built_in();
    let config = ConnectionConfig {
        definition: "netsuite".into(),
        params: [("base_url".to_string(), emu.base_url.clone())].into(),
        credentials: [
            ("client_id".to_string(), "NS_CLIENT_ID".to_string()),
            ("client_secret".to_string(), "NS_CLIENT_SECRET".to_string()),
        ]
        .into(),
        policy: sluice::connectors::resilience::Policy {
            base_delay_ms: 5,
            max_delay_ms: 20,
            ..Default::default()
        },
        ..ConnectionConfig::default()
    };
    connection::add(store, &defs, "ns", &config, false)
        .await
        .unwrap();
    let secrets = sluice::expr::secrets::Secrets::from_pairs([
        (
            "NS_CLIENT_ID".to_string(),
            sluice_emulators::netsuite::CLIENT_ID.to_string(),
        ),
        (
            "NS_CLIENT_SECRET".to_string(),
            sluice_emulators::netsuite::CLIENT_SECRET.to_string(),
        ),
    ]);
    let row = store.connection("ns").await.unwrap().unwrap();
    let sink: Arc<dyn StatusSink> = StoreSink::start(store.clone());
    connection::build(&row, &defs, &secrets, Some(sink)).unwrap()
}

#[tokio::test]
async fn a_refused_token_refresh_reaches_an_endpoint_as_connection_auth_required() {
    use sluice::connectors::{Connector, ListQuery};
    let (store, _d) = sqlite_store().await;
    let ops = Receiver::start(vec![]).await;
    add_endpoint(&store, &ops.url(), &["connection.*"]).await;
    let emu = sluice_emulators::netsuite::start(2, 1).await;
    // Tokens good for one second (61 s, refreshed 60 s early).
    emu.set_token_ttl(61);
    let c = stored_netsuite(&store, &emu).await;
    c.list(sluice::unified::Entity::Vendor, &ListQuery::default())
        .await
        .unwrap();
    // The client secret is rotated in NetSuite; the next token refresh is
    // refused.
    emu.set_secret("rotated-secret");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let e = c
        .list(sluice::unified::Entity::Vendor, &ListQuery::default())
        .await
        .unwrap_err();
    assert_eq!(e.code().as_str(), "AUTHENTICATION_FAILED", "{e:?}");
    assert_eq!(emu.token_requests(), 2, "the refresh was asked for");

    // Both events of the change reach an endpoint that takes both.
    let got = deliver_until_received(&store, &ops, 2).await;
    let bodies: Vec<Value> = got
        .iter()
        .map(|r| serde_json::from_str(&r.body).unwrap())
        .collect();
    let mut types: Vec<&str> = bodies.iter().map(|b| b["type"].as_str().unwrap()).collect();
    types.sort_unstable();
    assert_eq!(
        types,
        ["connection.auth_required", "connection.status_changed"],
        "{bodies:?}"
    );
    let body = bodies
        .iter()
        .find(|b| b["type"] == "connection.auth_required")
        .unwrap();
    assert_eq!(body["connection_id"], "ns", "{body}");
    assert_eq!(body["data"]["connection_id"], "ns", "{body}");
    let reason = body["data"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("refused the client credentials"),
        "{reason}"
    );
    assert!(
        !got[0]
            .body
            .contains(sluice_emulators::netsuite::CLIENT_SECRET),
        "no secret in the event"
    );
    assert_eq!(
        store.connection("ns").await.unwrap().unwrap().status,
        "auth_required"
    );
    // Refused again: the connection is already auth_required, no second event.
    c.list(sluice::unified::Entity::Vendor, &ListQuery::default())
        .await
        .unwrap_err();
    tokio::time::sleep(Duration::from_millis(200)).await;
    deliver_all(&store, test_config()).await;
    assert_eq!(ops.received().len(), 2, "{:?}", ops.received());
}

#[tokio::test]
async fn a_system_that_stays_down_raises_system_error_after_the_configured_failed_syncs() {
    use sluice::sync::{self, Mode, SyncOptions};
    let (store, _d) = sqlite_store().await;
    let ops = Receiver::start(vec![]).await;
    add_endpoint(&store, &ops.url(), &["system.error"]).await;
    let emu = sluice_emulators::netsuite::start(2, 1).await;
    let c = stored_netsuite(&store, &emu).await;
    let opts = SyncOptions {
        mode: Mode::Incremental,
        alert_after_failures: 2,
        ..SyncOptions::default()
    };
    let vendor = sluice::unified::Entity::Vendor;
    sync::run(&store, &c, "ns", vendor, &opts, None)
        .await
        .unwrap();
    // NetSuite goes away: nothing listens on its port any more.
    drop(emu);
    for n in 1..=3 {
        let e = sync::run(&store, &c, "ns", vendor, &opts, None)
            .await
            .unwrap_err();
        assert!(!e.to_string().is_empty(), "sync {n} fails");
    }
    // One alert for the streak, after the second failure.
    let got = deliver_until_received(&store, &ops, 1).await;
    deliver_all(&store, test_config()).await;
    assert_eq!(ops.received().len(), 1, "{got:?}");
    let body: Value = serde_json::from_str(&got[0].body).unwrap();
    assert_eq!(body["type"], "system.error", "{body}");
    assert_eq!(body["data"]["source"], "sync");
    assert_eq!(body["data"]["details"]["connection_id"], "ns");
    assert_eq!(body["data"]["details"]["failures"], 2);
    let message = body["data"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("the vendor sync of connection ns failed 2 times in a row"),
        "{message}"
    );
}

/// Runs the delivery worker's loop through a store outage made by a second
/// connection to the database: it refuses claims (which mark messages
/// `delivering`) and, with `refuse_new_messages`, any new message, as a full
/// disk would. Returns the bodies the `system.error` endpoint received once
/// the store works again and the order's message was delivered.
async fn alerts_after_a_store_outage(refuse_new_messages: bool) -> Vec<Value> {
    let (store, dir) = sqlite_store().await;
    let ops = Receiver::start(vec![]).await;
    add_endpoint(&store, &ops.url(), &["system.error"]).await;
    // A message to deliver: claiming it is what the store refuses.
    let orders = Receiver::start(vec![]).await;
    add_endpoint(&store, &orders.url(), &["po.*"]).await;
    sluice::webhooks::emit(&store, "k-po", "po.created", None, json!({}))
        .await
        .unwrap();
    let url = format!("sqlite://{}", dir.path().join("sluice.db").display());
    let raw = sqlx::SqlitePool::connect(&url).await.unwrap();
    let mut triggers = vec![(
        "DROP TRIGGER refuse_claims",
        "CREATE TRIGGER refuse_claims BEFORE UPDATE OF status ON webhook_messages \
         WHEN NEW.status = 'delivering' BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END",
    )];
    if refuse_new_messages {
        triggers.push((
            "DROP TRIGGER refuse_messages",
            "CREATE TRIGGER refuse_messages BEFORE INSERT ON webhook_messages \
             BEGIN SELECT RAISE(ABORT, 'database or disk is full'); END",
        ));
    }
    for (_, create) in &triggers {
        sqlx::query(*create).execute(&raw).await.unwrap();
    }
    let worker = DeliveryWorker::new(store.clone(), test_config()).unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        worker
            .run_until(async {
                let _ = stop_rx.await;
            })
            .await;
    });
    // The worker retries every second while the store refuses.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(ops.received().is_empty() && orders.received().is_empty());
    let alerts_stored = store
        .messages(&MessageFilter::default())
        .await
        .unwrap()
        .into_iter()
        .filter(|m| m.event_type == "system.error")
        .count();
    if refuse_new_messages {
        assert_eq!(alerts_stored, 0, "the store took no alert");
    } else {
        assert!(
            alerts_stored >= 1,
            "the failure's alert waits in the outbox"
        );
    }
    // The disk is fixed (every trigger at once).
    let mut tx = raw.begin().await.unwrap();
    for (drop, _) in &triggers {
        sqlx::query(*drop).execute(&mut *tx).await.unwrap();
    }
    tx.commit().await.unwrap();
    let want = if refuse_new_messages { 1 } else { 2 };
    let deadline = Instant::now() + Duration::from_secs(10);
    while ops.received().len() < want || orders.received().is_empty() {
        assert!(
            Instant::now() < deadline,
            "not delivered after the store recovered: {:?}",
            ops.received()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = stop_tx.send(());
    task.await.unwrap();
    ops.received()
        .iter()
        .map(|r| serde_json::from_str(&r.body).unwrap())
        .collect()
}

fn alert_message(body: &Value) -> &str {
    assert_eq!(body["type"], "system.error", "{body}");
    assert_eq!(body["data"]["source"], "store", "{body}");
    body["data"]["message"].as_str().unwrap()
}

#[tokio::test]
async fn a_store_that_refuses_the_delivery_workers_claims_is_reported_then_reported_recovered() {
    let got = alerts_after_a_store_outage(false).await;
    // One alert a minute at most while it fails, not one per retry (two
    // when the outage straddles a minute), then one when it works again.
    assert!((2..=3).contains(&got.len()), "{got:?}");
    let messages: Vec<&str> = got.iter().map(alert_message).collect();
    assert!(
        messages[..messages.len() - 1].iter().all(|m| m
            .starts_with("webhook delivery cannot read or write the store")
            && m.contains("database or disk is full")),
        "{messages:?}"
    );
    assert!(
        messages[messages.len() - 1].ends_with("it works again"),
        "{messages:?}"
    );
}

#[tokio::test]
async fn a_store_too_broken_to_take_the_alert_is_reported_once_it_works_again() {
    let got = alerts_after_a_store_outage(true).await;
    assert_eq!(got.len(), 1, "{got:?}");
    let message = alert_message(&got[0]);
    assert!(
        message.starts_with("webhook delivery could not use the store for ")
            && message.contains("database or disk is full")
            && message.ends_with("it works again"),
        "{message}"
    );
    assert!(
        got[0]["data"]["details"]["failed_claims"].as_u64().unwrap() >= 2,
        "{}",
        got[0]
    );
}

#[tokio::test]
async fn a_store_failure_in_sluice_serves_maintenance_loop_reaches_an_endpoint_as_system_error() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("serve.db").display());
    let store = Store::connect(&url).await.unwrap();
    let ops = Receiver::start(vec![]).await;
    add_endpoint(&store, &ops.url(), &["system.error"]).await;
    // A request key older than a day, which the maintenance loop deletes;
    // the database refuses that delete, as a damaged one would.
    let raw = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::query("INSERT INTO request_keys (request_key, run_id, created_at) VALUES ('idem:old', 'r-old', 0)")
        .execute(&raw)
        .await
        .unwrap();
    sqlx::query(
        "CREATE TRIGGER refuse_prune BEFORE DELETE ON request_keys \
         BEGIN SELECT RAISE(ABORT, 'database disk image is malformed'); END",
    )
    .execute(&raw)
    .await
    .unwrap();
    let flows = dir.path().join("flows");
    std::fs::create_dir(&flows).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", "--listen", "127.0.0.1:0", "--flows"])
        .arg(&flows)
        .env("SLUICE_DB", &url)
        .env("SLUICE_WEBHOOK_ALLOW", "127.0.0.1")
        .env("SLUICE_RUN_LEASE", "2s")
        .env_remove("RUST_LOG")
        .env_remove("SLUICE_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while ops.received().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The loop runs every second: a few more rounds, still one alert.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _ = child.kill();
    let _ = child.wait();
    let got = ops.received();
    // At most one a minute (two when the test straddles a minute).
    assert!((1..=2).contains(&got.len()), "{got:?}");
    let body: Value = serde_json::from_str(&got[0].body).unwrap();
    assert_eq!(body["type"], "system.error", "{body}");
    assert_eq!(body["data"]["source"], "store", "{body}");
    assert_eq!(body["data"]["details"]["task"], "maintenance", "{body}");
    let message = body["data"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("maintenance: request keys not pruned")
            && message.contains("database disk image is malformed"),
        "{message}"
    );
}

#[tokio::test]
async fn a_scheduled_sync_whose_connection_cannot_be_opened_reaches_an_endpoint_as_system_error() {
    let bin = env!("CARGO_BIN_EXE_sluice");
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("serve.db").display());
    let store = Store::connect(&url).await.unwrap();
    let ops = Receiver::start(vec![]).await;
    add_endpoint(&store, &ops.url(), &["system.error"]).await;
    // A connection added with a definition from the CLI's ./connectors,
    // synced every second...
    let added_in = dir.path().join("laptop");
    std::fs::create_dir_all(added_in.join("connectors")).unwrap();
    std::fs::write(
        added_in.join("connectors/tiny.yaml"),
        "apiVersion: sluice/connector/v1\nid: tiny\nname: Tiny\nparameters:\n  base_url: {}\nauth: { type: none }\ntest: { path: /ping }\nentities:\n  vendor:\n    list:\n      request: { path: /vendors }\n      records: $.items[*]\n      paginator: { type: next_link, path: $.next }\n    mapping:\n      remote_id: $.id\n      name: $.name\n      status: { const: active }\n      remote_created_at: { path: $.created, convert: datetime }\n      remote_updated_at: { path: $.changed, convert: datetime }\n",
    )
    .unwrap();
    let o = std::process::Command::new(bin)
        .current_dir(&added_in)
        .args([
            "connection",
            "add",
            "shop",
            "--definition",
            "tiny",
            "-p",
            "base_url=http://127.0.0.1:9",
            "--sync",
            "vendor=* * * * * *",
        ])
        .env("SLUICE_DB", &url)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // ... served from a directory without that definition.
    let served_in = dir.path().join("server");
    std::fs::create_dir_all(served_in.join("flows")).unwrap();
    let mut child = std::process::Command::new(bin)
        .current_dir(&served_in)
        .args(["serve", "--listen", "127.0.0.1:0", "--flows", "flows"])
        .env("SLUICE_DB", &url)
        .env("SLUICE_WEBHOOK_ALLOW", "127.0.0.1")
        .env_remove("RUST_LOG")
        .env_remove("SLUICE_LOG")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while ops.received().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Ticks every second fail the same way: still one alert.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _ = child.kill();
    let _ = child.wait();
    let got = ops.received();
    // Once an hour (twice when the test straddles an hour).
    assert!((1..=2).contains(&got.len()), "{got:?}");
    let body: Value = serde_json::from_str(&got[0].body).unwrap();
    assert_eq!(body["type"], "system.error", "{body}");
    assert_eq!(body["data"]["source"], "sync", "{body}");
    assert_eq!(body["data"]["details"]["connection_id"], "shop", "{body}");
    let message = body["data"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("the scheduled vendor sync of connection shop cannot run")
            && message.contains("tiny"),
        "{message}"
    );
}

/// Found by the API fuzz: deliveries to endpoints that refuse connections
/// back off and hand their messages back, each through one of the store's
/// pool connections. The worker used to await its next claim without
/// polling those deliveries; the pool handed every freed connection to one
/// of them, nobody polled it, and the claim and the whole server waited out
/// the pool's 30 s acquire timeout. A healthy endpoint's messages must keep
/// flowing, well inside that timeout.
#[tokio::test]
async fn deliveries_handing_messages_back_do_not_starve_the_workers_claims() {
    let (store, _d) = sqlite_store().await;
    let mut refusing = Vec::new();
    for _ in 0..12 {
        // Ports that were just free: nothing listens, connections are refused.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        refusing.push(
            add_endpoint(
                &store,
                &format!("http://127.0.0.1:{port}/hook"),
                &["down.*"],
            )
            .await
            .id,
        );
    }
    let b = Receiver::start(vec![]).await;
    add_endpoint(&store, &b.url(), &["up.*"]).await;
    for i in 0..40 {
        sluice::webhooks::emit(
            &store,
            &format!("down-{i}"),
            "down.e",
            None,
            json!({"i": i}),
        )
        .await
        .unwrap();
    }
    for i in 0..150 {
        sluice::webhooks::emit(&store, &format!("up-{i}"), "up.e", None, json!({"i": i}))
            .await
            .unwrap();
    }
    let worker = DeliveryWorker::new(store.clone(), test_config()).unwrap();
    let up_done = async {
        while delivered_except(&store, &refusing).await < 150 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(25), worker.run_until(up_done))
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the healthy endpoint got {} of 150 in 25 s while 12 others refused connections",
                b.received().len()
            )
        });
    eprintln!("150 delivered in {:?}", started.elapsed());
}
