//! Plugin benchmarks: per-call overhead of a trivial plugin (instantiate +
//! call + return, ~1 KB of JSON in and out) single-threaded and on two
//! threads, and a compute-bound function run as a plugin vs natively (epoch
//! interruption on).
//!
//! Run: `cargo bench -p sluice --bench plugins` (builds the plugins first if
//! needed, which needs `rustup target add wasm32-wasip2`). Prints figures.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use sluice::plugins::{Limits, LoadedPlugin, PluginHost};

/// The `sluice` binary's allocator, so host-side figures are the binary's.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "../../plugins/score-lines/src/score.rs"]
mod score;

#[path = "../tests/common/wasm.rs"]
mod wasm;

fn percentiles(mut v: Vec<Duration>) -> (f64, f64, f64) {
    v.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    (
        us(v[v.len() / 2]),
        us(v[v.len() * 99 / 100]),
        us(v[v.len() - 1]),
    )
}

async fn calls(host: Arc<PluginHost>, p: LoadedPlugin, input: Value, n: usize) -> Vec<Duration> {
    let limits = Limits::default();
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let r = host
            .call(&p, &input, &json!({}), &limits)
            .await
            .expect("call succeeds");
        std::hint::black_box(r);
        out.push(t.elapsed());
    }
    out
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let host = Arc::new(PluginHost::new(None).expect("host starts"));
    println!("pooling allocator: {}", host.pooling);
    let echo = host
        .load("echo@1.0.0", "echo", &wasm::plugin_wasm("echo"))
        .expect("echo loads");
    let score_plugin = host
        .load(
            "score-lines@1.0.0",
            "score",
            &wasm::plugin_wasm("score_lines"),
        )
        .expect("score loads");
    // ~1 KB of JSON.
    let input = json!({"po": "4500000001", "lines": (0..26).map(|i| json!({"item": format!("ITM-{i}"), "qty": i, "price": 12.5})).collect::<Vec<_>>()});
    println!("input size: {} bytes", input.to_string().len());

    let single = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    single.block_on(calls(host.clone(), echo.clone(), input.clone(), 2_000)); // warm up
    let t = Instant::now();
    let lat = single.block_on(calls(host.clone(), echo.clone(), input.clone(), 20_000));
    let secs = t.elapsed().as_secs_f64();
    let (p50, p99, max) = percentiles(lat);
    println!(
        "echo, 1 thread: p50 {p50:.1} µs, p99 {p99:.1} µs, max {max:.0} µs, {:.0} calls/s",
        20_000.0 / secs
    );

    let multi = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let t = Instant::now();
    let lat: Vec<Duration> = multi.block_on(async {
        let a = tokio::spawn(calls(host.clone(), echo.clone(), input.clone(), 20_000));
        let b = tokio::spawn(calls(host.clone(), echo.clone(), input.clone(), 20_000));
        let mut v = a.await.unwrap();
        v.extend(b.await.unwrap());
        v
    });
    let secs = t.elapsed().as_secs_f64();
    let (p50, p99, max) = percentiles(lat);
    println!(
        "echo, 2 threads: p50 {p50:.1} µs, p99 {p99:.1} µs, max {max:.0} µs, {:.0} calls/s",
        40_000.0 / secs
    );

    let lines = 10_000_000u64;
    let mut best = (f64::MAX, f64::MAX);
    for (name, int_choice, native_fn) in [
        (
            "score (risk chosen between floats)",
            false,
            score::score as fn(u64, u64) -> f64,
        ),
        (
            "score_int_choice (risk chosen between integers)",
            true,
            score::score_int_choice,
        ),
    ] {
        let t = Instant::now();
        let native = std::hint::black_box(native_fn(std::hint::black_box(lines), 42));
        let native_t = t.elapsed().as_secs_f64();
        let (output, plugin_t) = single.block_on(async {
            let t = Instant::now();
            let r = host
                .call(
                    &score_plugin,
                    &json!({"lines": lines, "seed": 42, "int_choice": int_choice}),
                    &json!({}),
                    &Limits {
                        timeout: Duration::from_secs(60),
                        ..Limits::default()
                    },
                )
                .await
                .expect("score runs");
            (r.output, t.elapsed().as_secs_f64())
        });
        let plugin_score = output["score"].as_f64().unwrap();
        assert!(
            (plugin_score - native).abs() < 1e-6 * native.abs(),
            "same result natively and as a plugin"
        );
        best = (best.0.min(native_t), best.1.min(plugin_t));
        println!(
            "{name}, {lines} lines: native {:.1} ms, plugin {:.1} ms, ratio {:.2}x",
            native_t * 1e3,
            plugin_t * 1e3,
            plugin_t / native_t
        );
    }
    println!(
        "fastest plugin formulation vs fastest native one: {:.1} ms vs {:.1} ms, ratio {:.2}x",
        best.1 * 1e3,
        best.0 * 1e3,
        best.1 / best.0
    );
}
