//! Local emulators of the systems Sluice's connector definitions speak to.
//!
//! Each emulator is an axum server on 127.0.0.1 serving its system's
//! documented JSON shape from generated fixture data, with paging, the
//! system's incremental filter, its auth scheme, and faults on demand: `429`
//! with `Retry-After`, `5xx` bursts, slow responses, non-JSON pages, next
//! links to another host, endless paging. Every request is logged so tests
//! can assert what a connector sent.
//!
//! - [`sap`]: S/4HANA `API_PURCHASEORDER_PROCESS_SRV` (OData v2, basic auth, CSRF).
//! - [`netsuite`]: REST record API `purchaseOrder`, `vendor` (OAuth 2.0, ids + detail).
//! - [`business_central`]: API v2.0 `purchaseOrders`, `vendors` (OData v4, OAuth 2.0).
//! - [`maximo`]: OSLC `mxapiwo`, `mxapiasset` (apikey header).

pub mod business_central;
pub mod common;
pub mod maximo;
pub mod netsuite;
pub mod sap;

pub use common::{Emulator, Fault, Logged};
