//! Webhook delivery benchmark: sustained deliveries per second from the
//! durable outbox to a local receiver, and latency from the commit that
//! enqueued a message to the receiver's 200, on SQLite and PostgreSQL
//! (when `SLUICE_TEST_POSTGRES_URL` is set).
//!
//! Run: `cargo bench -p sluice --bench webhooks`. Prints figures; asserts
//! nothing about speed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use serde_json::json;
use sluice::store::{NewMessage, Store};
use sluice::webhooks::delivery::{DeliveryConfig, DeliveryWorker};
use sluice::webhooks::endpoints::{self, NewEndpoint};
use sluice::webhooks::ssrf::GuardPolicy;
use sluice::webhooks::{Envelope, route};

type Seen = Arc<Mutex<HashMap<String, Instant>>>;

async fn receiver() -> (String, Seen) {
    let seen: Seen = Arc::default();
    let s = seen.clone();
    let app = axum::Router::new().fallback(move |headers: HeaderMap| {
        let s = s.clone();
        async move {
            if let Some(id) = headers.get("webhook-id").and_then(|v| v.to_str().ok()) {
                s.lock().unwrap().insert(id.to_string(), Instant::now());
            }
            "ok"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hooks", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

fn config() -> DeliveryConfig {
    DeliveryConfig {
        policy: GuardPolicy::parse("127.0.0.1").unwrap(),
        ..DeliveryConfig::default()
    }
}

fn messages(
    store_endpoints: &[endpoints::Endpoint],
    prefix: &str,
    n: usize,
) -> Vec<(String, NewMessage)> {
    (0..n)
        .flat_map(|i| {
            let env = Envelope::new(
                &format!("{prefix}:{i}"),
                "po.high_value",
                None,
                json!({"po": i, "total": 12345.5}),
            );
            route(store_endpoints, &env, None)
                .into_iter()
                .map(move |m| (env.id.clone(), m))
        })
        .collect()
}

async fn bench(name: &str, url: &str) {
    let store = Store::connect(url).await.expect("store");
    let (rx_url, seen) = receiver().await;
    let ep = endpoints::add(
        &store,
        &GuardPolicy::parse("127.0.0.1").unwrap(),
        NewEndpoint {
            url: rx_url,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let eps = vec![ep.clone()];
    let run = uuid::Uuid::now_v7().to_string();

    // Throughput: a backlog of N messages, then one worker drains it.
    let n = 20_000;
    for chunk in messages(&eps, &format!("{run}:t"), n).chunks(500) {
        let batch: Vec<NewMessage> = chunk.iter().map(|(_, m)| m.clone()).collect();
        store.enqueue_messages(&batch).await.unwrap();
    }
    let worker = DeliveryWorker::new(store.clone(), config()).unwrap();
    let t0 = Instant::now();
    let mut delivered = 0;
    while delivered < n {
        delivered += worker.run_once().await.unwrap();
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "{name}: backlog of {n} delivered in {secs:.2} s = {:.0} deliveries/s",
        n as f64 / secs
    );

    // Latency: a steady 500 messages/s for 6 s while a worker runs.
    let worker = Arc::new(DeliveryWorker::new(store.clone(), config()).unwrap());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let w = worker.clone();
    let handle = tokio::spawn(async move {
        w.run_until(async {
            let _ = stop_rx.await;
        })
        .await
    });
    let mut committed: HashMap<String, Instant> = HashMap::new();
    let all = messages(&eps, &format!("{run}:l"), 3000);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    for chunk in all.chunks(5) {
        tick.tick().await;
        let batch: Vec<NewMessage> = chunk.iter().map(|(_, m)| m.clone()).collect();
        store.enqueue_messages(&batch).await.unwrap();
        let now = Instant::now();
        for (id, _) in chunk {
            committed.insert(id.clone(), now);
        }
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while committed
        .keys()
        .any(|id| !seen.lock().unwrap().contains_key(id))
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop_tx.send(());
    let _ = handle.await;
    let seen = seen.lock().unwrap().clone();
    let mut lat: Vec<f64> = committed
        .iter()
        .filter_map(|(id, c)| {
            seen.get(id)
                .map(|r| r.saturating_duration_since(*c).as_secs_f64() * 1000.0)
        })
        .collect();
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| lat[((lat.len() as f64 - 1.0) * p) as usize];
    println!(
        "{name}: 500 msg/s for 6 s: {} delivered; commit→200 latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        lat.len(),
        pct(0.5),
        pct(0.99),
        lat.last().copied().unwrap_or(0.0)
    );
    endpoints::set_enabled(&store, &ep.id, false).await.unwrap();
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` asks benches to list; there is nothing to list.
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        bench(
            "sqlite",
            &format!("sqlite://{}", dir.path().join("wh.db").display()),
        )
        .await;
        match std::env::var("SLUICE_TEST_POSTGRES_URL") {
            Ok(url) if !url.is_empty() => bench("postgres", &url).await,
            _ => println!("postgres: skipped (SLUICE_TEST_POSTGRES_URL is not set)"),
        }
    });
}
