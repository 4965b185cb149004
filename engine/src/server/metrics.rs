//! `/metrics` in the Prometheus text format: runs started and finished,
//! step latencies, queue depths (runs queued and running in the store, the
//! outbox backlog, busy run slots), webhook deliveries, plugin calls and
//! HTTP requests.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use tokio::sync::mpsc;

use super::AppState;
use crate::run::{RunError, RunEvent, RunOutcome};

/// Upper bounds (seconds) of the latency histogram buckets.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0,
];

#[derive(Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    sum: f64,
    total: u64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        for (i, b) in BUCKETS.iter().enumerate() {
            if secs <= *b {
                self.counts[i] += 1;
            }
        }
        self.sum += secs;
        self.total += 1;
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {}",
                self.counts[i]
            );
        }
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}",
            self.total
        );
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum);
        let _ = writeln!(out, "{name}_count{braces} {}", self.total);
    }
}

#[derive(Default)]
struct Counters {
    runs_started: BTreeMap<String, u64>,
    runs_finished: BTreeMap<&'static str, u64>,
    requests: BTreeMap<u16, u64>,
    request_latency: Histogram,
    step_latency: BTreeMap<&'static str, Histogram>,
}

/// The server's counters. Cheap to update from any task.
#[derive(Default)]
pub struct Metrics {
    counters: Arc<Mutex<Counters>>,
    steps: std::sync::OnceLock<mpsc::UnboundedSender<RunEvent>>,
}

impl Metrics {
    /// A run was started by a trigger of `kind` (manual, webhook, schedule, event).
    pub fn run_started(&self, kind: &str) {
        let mut c = self.counters.lock().expect("metrics lock");
        *c.runs_started.entry(kind.to_string()).or_default() += 1;
    }

    /// A run ended (or could not be executed).
    pub fn run_finished(&self, result: &Result<RunOutcome, RunError>) {
        let status = match result {
            Ok(o) => o.status.as_str(),
            Err(_) => "error",
        };
        let mut c = self.counters.lock().expect("metrics lock");
        *c.runs_finished.entry(status).or_default() += 1;
    }

    /// An HTTP request was answered.
    pub fn request(&self, status: u16, elapsed: Duration) {
        let mut c = self.counters.lock().expect("metrics lock");
        *c.requests.entry(status).or_default() += 1;
        c.request_latency.observe(elapsed.as_secs_f64());
    }

    /// The sender runs report step completions to (for step latencies).
    pub fn step_events(&self) -> mpsc::UnboundedSender<RunEvent> {
        self.steps
            .get_or_init(|| {
                let (tx, mut rx) = mpsc::unbounded_channel::<RunEvent>();
                let counters = self.counters.clone();
                tokio::spawn(async move {
                    while let Some(e) = rx.recv().await {
                        if let RunEvent::StepFinished {
                            status, elapsed_ms, ..
                        } = e
                        {
                            counters
                                .lock()
                                .expect("metrics lock")
                                .step_latency
                                .entry(status.as_str())
                                .or_default()
                                .observe(elapsed_ms as f64 / 1000.0);
                        }
                    }
                });
                tx
            })
            .clone()
    }
}

/// `GET /metrics`.
pub async fn render(State(state): State<Arc<AppState>>) -> impl IntoResponse {
    let mut out = String::new();
    let snapshot = {
        let c = state.metrics.counters.lock().expect("metrics lock");
        (
            c.runs_started.clone(),
            c.runs_finished.clone(),
            c.requests.clone(),
            c.request_latency.clone(),
            c.step_latency.clone(),
        )
    };
    let (started, finished, requests, req_latency, step_latency) = snapshot;
    out.push_str("# HELP sluice_runs_started_total Runs started by this process, by trigger.\n# TYPE sluice_runs_started_total counter\n");
    for (k, v) in &started {
        let _ = writeln!(out, "sluice_runs_started_total{{trigger=\"{k}\"}} {v}");
    }
    out.push_str("# HELP sluice_runs_finished_total Runs this process finished, by status.\n# TYPE sluice_runs_finished_total counter\n");
    for (k, v) in &finished {
        let _ = writeln!(out, "sluice_runs_finished_total{{status=\"{k}\"}} {v}");
    }
    out.push_str("# HELP sluice_step_duration_seconds Step durations, by final status.\n# TYPE sluice_step_duration_seconds histogram\n");
    for (status, h) in &step_latency {
        h.render(
            &mut out,
            "sluice_step_duration_seconds",
            &format!("status=\"{status}\""),
        );
    }
    out.push_str("# HELP sluice_runs Runs in the store, by status (queue depth: queued, running).\n# TYPE sluice_runs gauge\n");
    if let Ok(counts) = state.store.run_counts().await {
        for (status, n) in counts {
            let _ = writeln!(out, "sluice_runs{{status=\"{status}\"}} {n}");
        }
    }
    let busy = state.max_runs - state.run_slots.available_permits();
    let _ = writeln!(
        out,
        "# HELP sluice_run_slots_busy Runs executing in this process.\n# TYPE sluice_run_slots_busy gauge\nsluice_run_slots_busy {busy}\n# HELP sluice_run_slots Run slots of this process.\n# TYPE sluice_run_slots gauge\nsluice_run_slots {}",
        state.max_runs
    );
    out.push_str("# HELP sluice_webhook_messages Outbox messages, by status (pending: delivery queue depth).\n# TYPE sluice_webhook_messages gauge\n");
    if let Ok(counts) = state.store.message_counts().await {
        for (status, n) in counts {
            let _ = writeln!(out, "sluice_webhook_messages{{status=\"{status}\"}} {n}");
        }
    }
    if let Ok(n) = state.store.undispatched_events().await {
        let _ = writeln!(
            out,
            "# HELP sluice_events_undispatched Events in the log not yet dispatched to event triggers (their queue depth).\n# TYPE sluice_events_undispatched gauge\nsluice_events_undispatched {n}"
        );
    }
    let (calls, failed) = state.plugins.call_counts();
    let _ = writeln!(
        out,
        "# HELP sluice_plugin_calls_total Plugin calls.\n# TYPE sluice_plugin_calls_total counter\nsluice_plugin_calls_total {calls}\n# HELP sluice_plugin_call_failures_total Plugin calls that failed.\n# TYPE sluice_plugin_call_failures_total counter\nsluice_plugin_call_failures_total {failed}"
    );
    out.push_str("# HELP sluice_http_requests_total HTTP requests answered, by status.\n# TYPE sluice_http_requests_total counter\n");
    for (status, n) in &requests {
        let _ = writeln!(out, "sluice_http_requests_total{{status=\"{status}\"}} {n}");
    }
    out.push_str("# HELP sluice_http_request_duration_seconds HTTP request latency.\n# TYPE sluice_http_request_duration_seconds histogram\n");
    req_latency.render(&mut out, "sluice_http_request_duration_seconds", "");
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], out)
}
