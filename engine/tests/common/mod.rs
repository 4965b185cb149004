//! Helpers shared by the integration tests.
#![allow(dead_code)]

pub mod sap;
pub mod wasm;

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use async_trait::async_trait;
use serde_json::{Map, Value};
use sluice::connectors::{
    ConnectionStatus, Connector, ConnectorError, ConnectorErrorKind, ConnectorRegistry, ListQuery,
    Page, WriteRequest,
};
use sluice::expr::secrets::Secrets;
use sluice::flow::{self, CompiledFlow};
use sluice::run::{Engine, RunOutcome};
use sluice::store::Store;
use sluice::unified::Entity;

/// A fresh SQLite store in a temporary directory (kept alive by the returned guard).
pub async fn sqlite_store() -> (Store, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("sqlite://{}", dir.path().join("sluice.db").display());
    (Store::connect(&url).await.expect("sqlite store"), dir)
}

/// The PostgreSQL URL for tests, or `None` (the caller prints that it skipped).
pub fn postgres_url() -> Option<String> {
    std::env::var("SLUICE_TEST_POSTGRES_URL")
        .ok()
        .filter(|u| !u.is_empty())
}

/// A connector whose `list` fails with `kind` the first `failures` times.
pub struct FlakyConnector {
    pub failures: AtomicU32,
    pub kind: ConnectorErrorKind,
    pub calls: AtomicU32,
}

impl FlakyConnector {
    pub fn new(failures: u32, kind: ConnectorErrorKind) -> Arc<Self> {
        Arc::new(FlakyConnector {
            failures: AtomicU32::new(failures),
            kind,
            calls: AtomicU32::new(0),
        })
    }
}

#[async_trait]
impl Connector for FlakyConnector {
    async fn list(&self, _entity: Entity, _query: &ListQuery) -> Result<Page, ConnectorError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let left = self.failures.load(Ordering::SeqCst);
        if left > 0 {
            self.failures.store(left - 1, Ordering::SeqCst);
            return Err(ConnectorError::new(
                "flaky",
                self.kind,
                "HTTP 503 from upstream",
            ));
        }
        Ok(Page {
            records: vec![serde_json::json!({"remote_id": "1"})],
            next_cursor: None,
        })
    }
    async fn get(&self, _: Entity, id: &str) -> Result<Value, ConnectorError> {
        Err(ConnectorError::new(
            "flaky",
            ConnectorErrorKind::NotFound,
            format!("no {id}"),
        ))
    }
    async fn create(&self, r: WriteRequest<'_>) -> Result<Value, ConnectorError> {
        Ok(r.data.clone())
    }
    async fn update(&self, r: WriteRequest<'_>) -> Result<Value, ConnectorError> {
        Ok(r.data.clone())
    }
    async fn delete(&self, r: WriteRequest<'_>) -> Result<Value, ConnectorError> {
        Ok(r.data.clone())
    }
    async fn health(&self) -> ConnectionStatus {
        ConnectionStatus::Online
    }
    fn entities(&self) -> Vec<Entity> {
        Entity::ALL.to_vec()
    }
}

/// An engine on `store` with the sandbox plus extra connections and secrets.
pub fn engine(
    store: Store,
    extra: Vec<(&str, Arc<dyn Connector>)>,
    secrets: Vec<(&str, &str)>,
) -> Engine {
    let mut reg = ConnectorRegistry::new();
    for (name, c) in extra {
        reg.insert(name, c);
    }
    Engine::new(
        store,
        reg,
        Secrets::from_pairs(
            secrets
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        ),
    )
}

/// Compiles YAML against the engine's connections, panicking with the diagnostics.
pub fn compile(engine: &Engine, yaml: &str) -> Arc<CompiledFlow> {
    Arc::new(flow::compile("test.yaml", yaml, &engine.catalog()).unwrap_or_else(|e| panic!("{e}")))
}

/// Runs YAML with inputs.
pub async fn run(engine: &Engine, yaml: &str, inputs: Value) -> RunOutcome {
    let flow = compile(engine, yaml);
    let inputs: Map<String, Value> = inputs.as_object().cloned().unwrap_or_default();
    engine
        .run(flow, &inputs, serde_json::json!({"type": "test"}), None)
        .await
        .expect("run starts")
}
