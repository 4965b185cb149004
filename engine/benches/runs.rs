//! Issue 18's measurements (plain output, no criterion):
//!
//! - `store`: runs of the README's flow (`flows/po-high-value-alert.yaml`:
//!   a sandbox read of 23 purchase orders with their lines, a `select`, a
//!   `for_each` of `set`s; 41 KB of outputs a run) on a fresh SQLite file,
//!   16 at a time: runs/s, the file's bytes per run (after a WAL checkpoint),
//!   then `prune` of all of them: runs/s and the bytes given back.
//!   `SLUICE_BENCH_RUNS` (default 100000).
//! - `http`: the `http` step's overhead over the bare request: the same
//!   `GET` to a local axum server sent by a plain reqwest client and by a
//!   compiled `http` step (templates, the SSRF guard, headers, JSON body),
//!   one at a time, `SLUICE_BENCH_REQUESTS` each (default 20000).
//!
//! Run: `cargo bench -p sluice --bench runs` (`SLUICE_BENCH_ONLY=store|http`).

use std::sync::Arc;
use std::time::Instant;

use serde_json::{Map, Value, json};
use sluice::connectors::ConnectorRegistry;
use sluice::expr::secrets::Secrets;
use sluice::flow::{Catalog, compile};
use sluice::run::Engine;
use sluice::steps::StepRuntime;
use sluice::store::{Prune, Store};

// The allocator `sluice` itself runs with.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn file_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

async fn checkpoint(url: &str) {
    use sqlx::ConnectOptions;
    let opts: sqlx::sqlite::SqliteConnectOptions = url.parse().unwrap();
    let mut c = opts.connect().await.unwrap();
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&mut c)
        .await
        .unwrap();
}

async fn store_bench() {
    let runs = env_usize("SLUICE_BENCH_RUNS", 100_000);
    let tmp = tempfile::tempdir().unwrap();
    // `SLUICE_BENCH_DIR` keeps the database there (for a look with sqlite3).
    let keep = std::env::var("SLUICE_BENCH_DIR")
        .ok()
        .map(std::path::PathBuf::from);
    let dir_path = keep.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir_path).unwrap();
    let url = format!("sqlite://{}", dir_path.join("runs.db").display());
    let store = Store::connect(&url).await.unwrap();
    let engine = Engine::new(store.clone(), ConnectorRegistry::new(), Secrets::default());
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../flows/po-high-value-alert.yaml"),
    )
    .unwrap();
    let flow = Arc::new(compile("po-high-value-alert.yaml", &text, &Catalog::default()).unwrap());
    checkpoint(&url).await;
    let empty = file_bytes(&dir_path);

    let t0 = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    for _ in 0..16 {
        let (engine, flow, next) = (engine.clone(), flow.clone(), next.clone());
        set.spawn(async move {
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < runs {
                let o = engine
                    .run(flow.clone(), &Map::new(), json!({"type": "bench"}), None)
                    .await
                    .unwrap();
                assert_eq!(o.status, sluice::store::RunStatus::Succeeded);
            }
        });
    }
    while set.join_next().await.is_some() {}
    let took = t0.elapsed();
    checkpoint(&url).await;
    let full = file_bytes(&dir_path);
    println!(
        "store: {runs} runs of po-high-value-alert in {:.2} s = {:.0} runs/s",
        took.as_secs_f64(),
        runs as f64 / took.as_secs_f64()
    );
    println!(
        "store: file {:.1} MB = {:.0} bytes per run (empty store {} KB)",
        full as f64 / 1e6,
        (full - empty) as f64 / runs as f64,
        empty / 1024
    );

    if keep.is_some() && std::env::var("SLUICE_BENCH_NO_PRUNE").is_ok() {
        return;
    }
    let t0 = Instant::now();
    let report = store
        .prune_runs(
            &Prune {
                older_than_ms: Some(0),
                ..Prune::default()
            },
            false,
        )
        .await
        .unwrap();
    let took = t0.elapsed();
    checkpoint(&url).await;
    println!(
        "prune: {} runs ({} step results) in {:.2} s = {:.0} runs/s; {:.1} MB given back, file now {:.1} MB",
        report.runs,
        report.steps,
        took.as_secs_f64(),
        report.runs as f64 / took.as_secs_f64(),
        report.bytes_freed as f64 / 1e6,
        file_bytes(&dir_path) as f64 / 1e6
    );
}

async fn http_bench() {
    // SAFETY: set before the step's client (which reads it once) exists.
    unsafe { std::env::set_var("SLUICE_WEBHOOK_ALLOW", "127.0.0.1") };
    let n = env_usize("SLUICE_BENCH_REQUESTS", 20_000);
    let app = axum::Router::new().route(
        "/echo",
        axum::routing::get(|| async {
            axum::Json(json!({"ok": true, "po": "PO-1001", "lines": [1, 2, 3]}))
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    let url = format!("http://{addr}/echo");

    let bare = reqwest::Client::new();
    let flow = compile(
        "http.yaml",
        &format!(
            "apiVersion: sluice/v1\nid: h\ninputs:\n  po: {{ type: string }}\nsteps:\n  - id: call\n    http: {{ url: \"{url}\", headers: {{ x-po: \"${{{{ inputs.po }}}}\" }} }}\n"
        ),
        &Catalog::default(),
    )
    .unwrap();
    let connectors = ConnectorRegistry::new();
    let ctx = sluice::expr::from_json(&json!({"inputs": {"po": "PO-1001"}}));
    let step = &flow.steps[0];
    let mut bare_us = Vec::new();
    let mut step_us = Vec::new();
    // Alternate rounds, so both see the same machine.
    for _round in 0..5 {
        let t0 = Instant::now();
        for _ in 0..n / 5 {
            let r = bare
                .get(&url)
                .header("x-po", "PO-1001")
                .send()
                .await
                .unwrap();
            let body = r.bytes().await.unwrap();
            assert!(!body.is_empty());
        }
        bare_us.push(t0.elapsed().as_secs_f64() * 1e6 / (n / 5) as f64);
        let t0 = Instant::now();
        for _ in 0..n / 5 {
            let rt = StepRuntime {
                connectors: &connectors,
                ctx: &ctx,
                idempotency_key: "bench",
                store: None,
                plugins: None,
                plugin_outputs: None,
                children: None,
                input: None,
            };
            let out = step.kind.execute(&rt).await.unwrap();
            assert_eq!(out.value["status"], Value::from(200));
        }
        step_us.push(t0.elapsed().as_secs_f64() * 1e6 / (n / 5) as f64);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (b, s) = (median(&mut bare_us), median(&mut step_us));
    println!(
        "http: bare request {b:.1} us, http step {s:.1} us: overhead {:.1} us per request (median of 5 rounds of {})",
        s - b,
        n / 5
    );
}

fn main() {
    let only = std::env::var("SLUICE_BENCH_ONLY").unwrap_or_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    if only.is_empty() || only == "http" {
        rt.block_on(http_bench());
    }
    if only.is_empty() || only == "store" {
        rt.block_on(store_bench());
    }
}
