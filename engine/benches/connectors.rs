//! Connector benchmark: SAP-shaped OData pages of purchase orders with 5
//! items each mapped into unified records (the mapping alone, one thread),
//! then end to end from the SAP emulator over loopback (10k and 100k
//! orders), with the peak heap above the starting point.
//!
//! Run: `cargo bench -p sluice --bench connectors`. Prints figures; asserts
//! nothing about speed. `SLUICE_BENCH_ONLY=mapping` runs the mapping alone,
//! over `SLUICE_BENCH_PAGES` pages of 500 (default 100), for a profiler.

use std::time::Instant;

use serde_json::{Value, json};
use sluice::connectors::http::HttpConnector;
use sluice::connectors::resilience::Policy;
use sluice::connectors::{Connector, ListQuery};
use sluice::unified::Entity;
use sluice_emulators::sap;

#[path = "support/heap.rs"]
mod heap;

#[path = "../tests/common/sap.rs"]
mod sap_connection;

fn connector(base_url: &str) -> HttpConnector {
    sap_connection::connector("sap", base_url, Policy::default())
}

fn mapping_alone() {
    let c = connector("http://127.0.0.1:9");
    let page_size = 500;
    let page: Value = json!({"d": {"results": (0..page_size).map(|i| sap::purchase_order(i, 5)).collect::<Vec<_>>()}});
    // Warm up.
    assert_eq!(
        c.map_page(Entity::PurchaseOrder, &page).unwrap().len(),
        page_size
    );
    let pages: usize = std::env::var("SLUICE_BENCH_PAGES")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(100);
    let cpu0 = heap::cpu_seconds();
    let t = Instant::now();
    let mut n = 0;
    for _ in 0..pages {
        n += c.map_page(Entity::PurchaseOrder, &page).unwrap().len();
    }
    let secs = t.elapsed().as_secs_f64();
    // CPU time of the loop (one thread does the work): a figure that other
    // processes on the machine (builds) do not lower the way they lower wall time.
    let cpu = heap::cpu_seconds() - cpu0;
    // For scale: parsing the same page from its JSON text, which a live read adds.
    let text = serde_json::to_vec(&page).unwrap();
    let t2 = Instant::now();
    for _ in 0..pages {
        std::hint::black_box(serde_json::from_slice::<Value>(&text).unwrap());
    }
    let parse = t2.elapsed().as_secs_f64() * 1e6 / n as f64;
    println!(
        "  for scale: parsing the page's JSON ({} KiB) takes {parse:.2} us per record",
        text.len() / 1024
    );
    println!(
        "mapping alone (one thread): {n} purchase orders x 5 lines in {:.3} s = {:.0} records/s ({:.2} us per record)",
        secs,
        n as f64 / secs,
        secs * 1e6 / n as f64
    );
    if cpu > 0.0 {
        println!(
            "mapping alone by CPU time: {:.3} s of CPU = {:.0} records per CPU-second",
            cpu,
            n as f64 / cpu
        );
    }
}

async fn end_to_end(orders: usize) {
    let emu = sap::start(orders, 5).await;
    let c = connector(&emu.base_url);
    heap::start();
    let t = Instant::now();
    let mut q = ListQuery {
        limit: Some(500),
        ..ListQuery::default()
    };
    let mut n = 0;
    let mut pages = 0;
    loop {
        let page = c.list(Entity::PurchaseOrder, &q).await.unwrap();
        n += page.records.len();
        pages += 1;
        match page.next_cursor {
            Some(cur) => q.cursor = Some(cur),
            None => break,
        }
    }
    let secs = t.elapsed().as_secs_f64();
    let peak = heap::stop();
    assert_eq!(n, orders);
    println!(
        "end to end over loopback: {n} purchase orders in {pages} pages, {:.2} s = {:.0} records/s; peak heap above start {:.1} MiB (emulator's per-page JSON included)",
        secs,
        n as f64 / secs,
        heap::mib(peak)
    );
}

/// The emulator alone: the same pages fetched as bytes, neither parsed nor
/// mapped. It shares the machine's two cores with the connector, so this is
/// the ceiling of the end-to-end figures here.
async fn emulator_alone(orders: usize) {
    let emu = sap::start(orders, 5).await;
    let http = reqwest::Client::new();
    let t = Instant::now();
    let mut bytes = 0;
    for skip in (0..orders).step_by(500) {
        let body = http
            .get(format!(
                "{}{}/A_PurchaseOrder?$format=json&$expand=to_PurchaseOrderItem&$skiptoken={skip}",
                emu.base_url,
                sap::SERVICE
            ))
            .basic_auth(sap::USER, Some(sap::PASSWORD))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        bytes += body.len();
    }
    let secs = t.elapsed().as_secs_f64();
    println!(
        "the emulator alone (pages fetched as bytes, not parsed): {orders} purchase orders, {} MiB, {:.2} s = {:.0} records/s",
        bytes >> 20,
        secs,
        orders as f64 / secs
    );
}

fn main() {
    mapping_alone();
    // `SLUICE_BENCH_ONLY=mapping`: the mapping alone (for a profiler).
    if std::env::var("SLUICE_BENCH_ONLY").as_deref() == Ok("mapping") {
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(end_to_end(10_000));
    rt.block_on(end_to_end(100_000));
    rt.block_on(emulator_alone(100_000));
}
