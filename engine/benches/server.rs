//! Server benchmark: inbound webhook → 3-step flow (condition, set, custom
//! webhook to a local receiver), durable on SQLite, through a real
//! `sluice serve` process. A load generator in this process keeps
//! `CONNECTIONS` requests in flight over loopback for `SECONDS` and reports
//! sustained durable starts per second (202s: the run is stored), runs
//! finished per second, and the latency from sending the request to the
//! receiver's 200 (p50/p99).
//!
//! Then events through the durable event log: a flow fires
//! `SLUICE_BENCH_EVENTS` events (default 6,000; from steps of 1,000 events
//! each) that an `event` trigger listens to; reported as events/s from the
//! first hook to the last event-triggered run started (claimed from the log,
//! run stored), and to every one of those runs finished.
//!
//! Run: `cargo bench -p sluice --bench server`. Prints figures; asserts
//! nothing about speed. `SLUICE_BENCH_SECONDS` / `SLUICE_BENCH_CONNECTIONS`
//! / `SLUICE_BENCH_EVENTS` change the load.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_sluice");

const FLOW: &str = r#"apiVersion: sluice/v1
id: bench-intake
triggers:
  - webhook: { path: bench/po }
steps:
  - id: check
    if: "${{ trigger.body.total > 1000 }}"
    set: { po: "${{ trigger.body.po }}", seq: "${{ trigger.body.seq }}", total: "${{ trigger.body.total }}" }
  - id: notify
    needs: [check]
    webhook:
      event: po.large
      payload: "${{ steps.check.output }}"
"#;

/// Fires `n` events of type `bench.tick` from one step.
const BURST_FLOW: &str = r#"apiVersion: sluice/v1
id: bench-burst
inputs:
  n: { type: number, default: 1000 }
triggers:
  - webhook: { path: bench/burst }
steps:
  - id: fire
    for_each: "${{ range(inputs.n) }}"
    webhook:
      event: bench.tick
      payload: { i: "${{ item }}" }
"#;

/// One run per `bench.tick` event.
const ON_EVENT_FLOW: &str = r#"apiVersion: sluice/v1
id: bench-on-event
triggers:
  - event: bench.tick
steps:
  - id: seen
    set: { i: "${{ trigger.event.data.i }}" }
"#;

type Seen = Arc<Mutex<HashMap<u64, Instant>>>;

async fn receiver() -> (String, Seen) {
    let seen: Seen = Arc::default();
    let s = seen.clone();
    let app = axum::Router::new().fallback(move |body: axum::body::Bytes| {
        let s = s.clone();
        async move {
            if let Ok(v) = serde_json::from_slice::<Value>(&body)
                && let Some(seq) = v["data"]["seq"].as_u64()
            {
                s.lock().unwrap().entry(seq).or_insert_with(Instant::now);
            }
            "ok"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, seen)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    let seconds = env_or("SLUICE_BENCH_SECONDS", 10);
    let connections = env_or("SLUICE_BENCH_CONNECTIONS", 64) as usize;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(run(seconds, connections));
}

async fn run(seconds: u64, connections: usize) {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}/bench.db", dir.path().display());
    let flows = dir.path().join("flows");
    std::fs::create_dir(&flows).unwrap();
    std::fs::write(flows.join("bench.yaml"), FLOW).unwrap();
    std::fs::write(flows.join("bench-burst.yaml"), BURST_FLOW).unwrap();
    std::fs::write(flows.join("bench-on-event.yaml"), ON_EVENT_FLOW).unwrap();
    let o = Command::new(BIN)
        .args(["token", "create", "--name", "bench", "--scope", "admin"])
        .env("SLUICE_DB", &db)
        .output()
        .unwrap();
    let token = String::from_utf8(o.stdout).unwrap().trim().to_string();
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--flows"])
        .arg(&flows)
        .args(["--max-runs", "1024"])
        .env("SLUICE_DB", &db)
        .env("SLUICE_LOG", "warn")
        .env("SLUICE_WEBHOOK_ALLOW", "127.0.0.1/32")
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addr) = line.split("listening on ").nth(1) {
                let _ = tx.send(addr.split_whitespace().next().unwrap_or("").to_string());
            } else if !line.trim().is_empty() {
                eprintln!("server: {line}");
            }
        }
    });
    let base = rx.recv_timeout(Duration::from_secs(60)).unwrap();
    let (hook_url, seen) = receiver().await;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(connections)
        .build()
        .unwrap();
    let r = http
        .post(format!("{base}/v1/webhooks/endpoints"))
        .bearer_auth(&token)
        .json(&json!({"url": hook_url, "event_types": ["po.large"]}))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap());

    let seq = Arc::new(AtomicU64::new(0));
    let sent: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let refused = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let until = start + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (http, seq, sent, refused, url) = (
            http.clone(),
            seq.clone(),
            sent.clone(),
            refused.clone(),
            format!("{base}/v1/hooks/bench/po"),
        );
        tasks.push(tokio::spawn(async move {
            let mut accepted = 0u64;
            while Instant::now() < until {
                let n = seq.fetch_add(1, Ordering::Relaxed);
                let body = json!({"po": format!("PO-{n}"), "seq": n, "total": 5000 + n});
                let t = Instant::now();
                let res = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.to_string())
                    .send()
                    .await;
                match res {
                    Ok(r) if r.status().as_u16() == 202 => {
                        sent.lock().unwrap().insert(n, t);
                        accepted += 1;
                    }
                    _ => {
                        refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            accepted
        }));
    }
    let mut accepted = 0;
    for t in tasks {
        accepted += t.await.unwrap();
    }
    let load_time = start.elapsed();
    // Wait for every accepted start to reach the receiver.
    let drain_deadline = Instant::now() + Duration::from_secs(120);
    while seen.lock().unwrap().len() < accepted as usize && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let all_done = start.elapsed();
    {
        let delivered = seen.lock().unwrap().len();
        let sent = sent.lock().unwrap();
        let seen = seen.lock().unwrap();
        let mut lat: Vec<Duration> = sent
            .iter()
            .filter_map(|(n, t)| seen.get(n).map(|r| r.duration_since(*t)))
            .collect();
        lat.sort();
        println!(
            "server: webhook -> 3-step flow -> receiver, SQLite, {connections} connections, {seconds} s of load"
        );
        println!(
            "  durable starts: {accepted} accepted (202) in {:.2} s = {:.0} starts/s; {} refused or failed",
            load_time.as_secs_f64(),
            accepted as f64 / load_time.as_secs_f64(),
            refused.load(Ordering::Relaxed)
        );
        println!(
            "  end to end: {delivered} events at the receiver after {:.2} s = {:.0} runs/s through to the receiver",
            all_done.as_secs_f64(),
            delivered as f64 / all_done.as_secs_f64()
        );
        println!(
            "  request sent -> receiver's 200: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
            percentile(&lat, 0.5).as_secs_f64() * 1000.0,
            percentile(&lat, 0.99).as_secs_f64() * 1000.0,
            lat.last().copied().unwrap_or_default().as_secs_f64() * 1000.0
        );
    }
    events_phase(&http, &base, &token).await;
    let _ = child.kill();
    let _ = child.wait();
}

/// A counter of `/metrics`, e.g. `sluice_runs_started_total{trigger="event"}`.
async fn metric(http: &reqwest::Client, base: &str, token: &str, name: &str) -> u64 {
    let Ok(r) = http
        .get(format!("{base}/metrics"))
        .bearer_auth(token)
        .send()
        .await
    else {
        return 0;
    };
    let text = r.text().await.unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(name).map(str::trim))
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or(0)
}

/// Events/s through the durable log (see the module docs).
async fn events_phase(http: &reqwest::Client, base: &str, token: &str) {
    let events = env_or("SLUICE_BENCH_EVENTS", 6_000);
    const STARTED: &str = "sluice_runs_started_total{trigger=\"event\"}";
    let before = metric(http, base, token, STARTED).await;
    let finished_before = metric(
        http,
        base,
        token,
        "sluice_runs_finished_total{status=\"succeeded\"}",
    )
    .await;
    let start = Instant::now();
    let mut left = events;
    while left > 0 {
        let n = left.min(1_000);
        let r = http
            .post(format!("{base}/v1/hooks/bench/burst"))
            .json(&json!({ "n": n }))
            .send()
            .await
            .unwrap();
        if r.status().as_u16() == 503 {
            // Run slots full: the previous bursts' runs; try again shortly.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        assert_eq!(r.status().as_u16(), 202, "{}", r.text().await.unwrap());
        left -= n;
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut started_at = None;
    while Instant::now() < deadline {
        let started = metric(http, base, token, STARTED).await - before;
        if started >= events && started_at.is_none() {
            started_at = Some(start.elapsed());
        }
        // The bursts' own runs finish too: `events / 1000` more.
        let finished = metric(
            http,
            base,
            token,
            "sluice_runs_finished_total{status=\"succeeded\"}",
        )
        .await
            - finished_before;
        if started_at.is_some() && finished >= events + events.div_ceil(1_000) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let all = start.elapsed();
    let started = metric(http, base, token, STARTED).await - before;
    println!("events: {events} events fired by steps -> event-triggered runs, SQLite, one process");
    match started_at {
        Some(t) => println!(
            "  durable event log: {started} runs started in {:.2} s = {:.0} events/s; all finished after {:.2} s = {:.0} events/s",
            t.as_secs_f64(),
            events as f64 / t.as_secs_f64(),
            all.as_secs_f64(),
            events as f64 / all.as_secs_f64()
        ),
        None => println!(
            "  durable event log: only {started} of {events} runs started within {:.0} s",
            all.as_secs_f64()
        ),
    }
}
