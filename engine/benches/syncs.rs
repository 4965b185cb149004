//! Sync benchmark: a full sync of purchase orders (5 lines each) from the SAP
//! emulator over loopback into SQLite, then an incremental sync after 1 % of
//! them changed; records/s and peak heap above the starting point (the
//! emulator's stored data excluded, its per-page JSON included).
//!
//! Run: `cargo bench -p sluice --bench syncs` (`SLUICE_BENCH_ORDERS` sets the
//! count, default 100000). Prints figures; asserts nothing about speed.

use std::time::Instant;

use sluice::connectors::resilience::Policy;
use sluice::store::Store;
use sluice::sync::{self, Mode, SyncOptions};
use sluice::unified::Entity;
use sluice_emulators::sap;

#[path = "../tests/common/sap.rs"]
mod sap_connection;

#[path = "support/heap.rs"]
mod heap;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let orders: usize = std::env::var("SLUICE_BENCH_ORDERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let emu = sap::start(orders, 5).await;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::connect(&format!(
        "sqlite://{}",
        dir.path().join("sync.db").display()
    ))
    .await
    .unwrap();
    let c = sap_connection::connector("sap", &emu.base_url, Policy::default());
    let opts = |mode| SyncOptions {
        mode,
        page_size: 500,
        ..SyncOptions::default()
    };

    heap::start();
    let cpu = heap::cpu_seconds();
    let t = Instant::now();
    let full = sync::run(
        &store,
        &c,
        "sap",
        Entity::PurchaseOrder,
        &opts(Mode::Full),
        None,
    )
    .await
    .unwrap();
    let full_secs = t.elapsed().as_secs_f64();
    let full_cpu = heap::cpu_seconds() - cpu;
    let full_peak = heap::stop();
    println!(
        "full sync: {} purchase orders in {} pages, {:.2} s = {:.0} records/s; peak heap above start {:.1} MiB; CPU {:.2} s ({:.0} % of one core, emulator included)",
        full.added,
        full.pages,
        full_secs,
        full.added as f64 / full_secs,
        heap::mib(full_peak),
        full_cpu,
        100.0 * full_cpu / full_secs
    );

    let changed = (orders / 100).max(1);
    for i in 0..changed {
        let id = format!("{}", 4_500_000_000u64 + (i * 100) as u64);
        emu.update(
            "purchase_orders",
            &id,
            serde_json::json!({"YY1_ProjectCode_PDH": "CHANGED"}),
        );
    }
    heap::start();
    let t = Instant::now();
    let inc = sync::run(
        &store,
        &c,
        "sap",
        Entity::PurchaseOrder,
        &opts(Mode::Incremental),
        None,
    )
    .await
    .unwrap();
    let inc_secs = t.elapsed().as_secs_f64();
    let inc_peak = heap::stop();
    println!(
        "incremental sync after {changed} changes: {} updated, {} unchanged (lookback), {} pages, {:.3} s = {:.1} % of the full sync; peak heap above start {:.1} MiB",
        inc.updated,
        inc.unchanged,
        inc.pages,
        inc_secs,
        100.0 * inc_secs / full_secs,
        heap::mib(inc_peak)
    );
}
