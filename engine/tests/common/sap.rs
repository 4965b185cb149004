//! A connector to the SAP emulator (`sap_s4hana` definition, the emulator's
//! basic-auth user), for tests and benchmarks.

use std::sync::Arc;

use sluice::connectors::ConnectionStatus;
use sluice::connectors::definition::Definitions;
use sluice::connectors::http::{ConnectionConfig, HttpConnector};
use sluice::connectors::resilience::{Health, Policy};
use sluice_emulators::sap;

/// Connection `id` to the SAP emulator at `base_url`.
pub fn connector(id: &str, base_url: &str, policy: Policy) -> HttpConnector {
    let config = ConnectionConfig {
        definition: "sap_s4hana".into(),
        params: [("base_url".to_string(), base_url.to_string())].into(),
        credentials: [
            ("username".to_string(), "U".to_string()),
            ("password".to_string(), "P".to_string()),
        ]
        .into(),
        policy,
        ..ConnectionConfig::default()
    };
    HttpConnector::new(
        id,
        Definitions::built_in()
            .get("sap_s4hana")
            .expect("built-in definition")
            .clone(),
        &config,
        &|n| Some(if n == "U" { sap::USER } else { sap::PASSWORD }.to_string()),
        Arc::new(Health::new(id, policy, ConnectionStatus::Online, None)),
    )
    .expect("the SAP definition makes a connection")
}
