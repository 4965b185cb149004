//! Engine benchmarks.
//!
//! - `step_in_memory`: a 10-step `set`/`select` flow evaluated without a
//!   store; reports time per flow (divide by 10 for µs per step).
//! - `durable_run/sqlite` and `durable_run/postgres`: the same flow as a
//!   durable run (run row, ten stored step results, final status), one run
//!   at a time; and `durable_runs_concurrent/*`: 16 runs at once.
//!   PostgreSQL is measured when `SLUICE_TEST_POSTGRES_URL` is set.
//!
//! - `validate/200_steps`: validating (parsing, shape checks, type checks of
//!   every expression, DAG compile) a 200-step flow of reads, selects,
//!   `for_each` sets and writes, as `sluice validate` does.
//!
//! Run: `cargo bench -p sluice --bench engine`.

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::{Map, Value, json};
use sluice::connectors::ConnectorRegistry;
use sluice::expr::secrets::Secrets;
use sluice::flow::{Catalog, CompiledFlow, compile};
use sluice::run::{Engine, memory};
use sluice::store::Store;

const FLOW: &str = r#"
apiVersion: sluice/v1
id: bench-ten-steps
inputs:
  threshold: { type: number, default: 500 }
steps:
  - id: s1
    set:
      orders:
        - { number: A1, total: 120, vendor: acme }
        - { number: A2, total: 980, vendor: nordic }
        - { number: A3, total: 640, vendor: acme }
        - { number: A4, total: 75, vendor: tata }
        - { number: A5, total: 1500, vendor: gulf }
  - { id: s2, needs: [s1], select: { from: "${{ steps.s1.output.orders }}", where: "$[?@.total > 500]" } }
  - { id: s3, needs: [s2], set: { count: "${{ steps.s2.output | length }}", first: "${{ steps.s2.output[0].number }}" } }
  - { id: s4, needs: [s1], select: { from: "${{ steps.s1.output.orders }}", where: "$[*].vendor" } }
  - { id: s5, needs: [s4], set: "${{ steps.s4.output | unique | list }}" }
  - { id: s6, needs: [s3, s5], set: { big: "${{ steps.s3.output.count }}", vendors: "${{ steps.s5.output | length }}" } }
  - { id: s7, needs: [s6], set: "${{ steps.s6.output.big * inputs.threshold }}" }
  - { id: s8, needs: [s2], select: { from: "${{ steps.s2.output }}", where: "$[0].number" } }
  - { id: s9, needs: [s7, s8], set: "Alert: ${{ steps.s8.output[0] }} over ${{ inputs.threshold }}" }
  - { id: s10, needs: [s9], set: { message: "${{ steps.s9.output }}", value: "${{ steps.s7.output }}" } }
"#;

fn flow() -> Arc<CompiledFlow> {
    Arc::new(compile("bench.yaml", FLOW, &Catalog::default()).expect("bench flow compiles"))
}

fn step_in_memory(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let f = flow();
    let connectors = ConnectorRegistry::new();
    let inputs = json!({"threshold": 500});
    let mut g = c.benchmark_group("step_in_memory");
    g.throughput(Throughput::Elements(10));
    g.bench_function("ten_step_flow", |b| {
        b.iter(|| {
            rt.block_on(memory::evaluate(&f, &inputs, &connectors))
                .expect("flow evaluates")
        })
    });
    g.finish();
}

fn durable(c: &mut Criterion, name: &str, url: &str) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let store = rt.block_on(Store::connect(url)).expect("store");
    // As under `sluice serve` with no `event` trigger: `run.succeeded` is not
    // logged (a process that does not say logs every event, see `sluice::events`).
    sluice::events::set_interest(&store, Some(Default::default()));
    let engine = Engine::new(store, ConnectorRegistry::new(), Secrets::default());
    let f = flow();
    let inputs = Map::new();
    let mut g = c.benchmark_group("durable_run");
    g.throughput(Throughput::Elements(1));
    g.measurement_time(Duration::from_secs(8));
    g.bench_function(name, |b| {
        b.iter(|| {
            let out = rt
                .block_on(engine.run(f.clone(), &inputs, Value::Null, None))
                .expect("run");
            assert_eq!(out.status, sluice::store::RunStatus::Succeeded);
        })
    });
    g.finish();
    let mut g = c.benchmark_group("durable_runs_concurrent");
    g.throughput(Throughput::Elements(16));
    g.measurement_time(Duration::from_secs(8));
    g.bench_function(name, |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut set = tokio::task::JoinSet::new();
                for _ in 0..16 {
                    let (e, f, i) = (engine.clone(), f.clone(), inputs.clone());
                    set.spawn(async move { e.run(f, &i, Value::Null, None).await });
                }
                while let Some(r) = set.join_next().await {
                    assert_eq!(
                        r.expect("task").expect("run").status,
                        sluice::store::RunStatus::Succeeded
                    );
                }
            })
        })
    });
    g.finish();
}

fn durable_runs(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("temp dir");
    durable(
        c,
        "sqlite",
        &format!("sqlite://{}", dir.path().join("bench.db").display()),
    );
    match std::env::var("SLUICE_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => durable(c, "postgres", &url),
        _ => eprintln!("durable_run/postgres skipped: SLUICE_TEST_POSTGRES_URL is not set"),
    }
}

/// A flow of `n` steps in groups of four: read, select, `for_each` set, write.
pub fn big_flow(n: usize) -> String {
    let mut y = String::from(
        "apiVersion: sluice/v1\nid: big\ninputs:\n  threshold: { type: number, default: 1000 }\nsteps:\n",
    );
    for g in 0..n / 4 {
        let needs = if g == 0 {
            String::new()
        } else {
            format!("    needs: [w{}]\n", g - 1)
        };
        let lines = [
            format!(
                "  - id: r{g}\n{needs}    read: {{ connection: sandbox, entity: purchase_order, filter: {{ status: approved }} }}"
            ),
            format!("  - id: s{g}\n    needs: [r{g}]\n    select:"),
            format!("      from: \"${{{{ steps.r{g}.output.records }}}}\""),
            "      where: \"$[?@.total > ${{ inputs.threshold }}]\"".to_string(),
            format!(
                "  - id: f{g}\n    needs: [s{g}]\n    for_each: \"${{{{ steps.s{g}.output }}}}\""
            ),
            "    if: \"${{ item.total * 2 > inputs.threshold and item.lines | length > 0 }}\""
                .to_string(),
            "    set:\n      po: \"${{ item.number }}\"".to_string(),
            "      vendor: \"${{ item.vendor_name or item.vendor_id }}\"".to_string(),
            "      text: \"PO ${{ item.number }} is ${{ item.total }} ${{ item.currency }}\""
                .to_string(),
            format!(
                "  - id: w{g}\n    needs: [f{g}, s{g}]\n    for_each: \"${{{{ steps.s{g}.output }}}}\""
            ),
            "    write:\n      connection: sandbox\n      entity: purchase_order\n      op: update"
                .to_string(),
            "      id: \"${{ item.remote_id }}\"".to_string(),
            format!(
                "      data: {{ buyer: \"${{{{ steps.f{g}.output[index].vendor }}}}\", custom_fields: {{ flagged: true }} }}"
            ),
        ];
        for l in lines {
            y.push_str(&l);
            y.push('\n');
        }
    }
    y
}

fn validate(c: &mut Criterion) {
    let text = big_flow(200);
    let catalog = Catalog::default();
    let compiled = compile("big.yaml", &text, &catalog).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(compiled.steps.len(), 200);
    let mut g = c.benchmark_group("validate");
    g.bench_function("200_steps", |b| {
        b.iter(|| compile("big.yaml", &text, &catalog).expect("valid"))
    });
    g.finish();
}

criterion_group!(benches, validate, step_in_memory, durable_runs);
criterion_main!(benches);
