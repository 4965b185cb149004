//! Sluice: a self-hosted workflow-automation engine for integrations with
//! industrial business systems (ERP, CMMS/EAM, WMS).
//!
//! A flow (YAML, `apiVersion: sluice/v1`) is a DAG of steps. [`flow`] parses
//! and validates it into a [`flow::CompiledFlow`]; [`run`] executes it durably
//! on a [`store::Store`] (SQLite by default, PostgreSQL for scale-out); steps
//! read and write records of the [`unified`] model through [`connectors`].

pub mod cli;
pub mod connectors;
pub mod events;
pub mod expr;
pub mod flow;
pub mod plugins;
pub mod run;
pub mod schedule;
pub mod server;
pub mod steps;
pub mod store;
pub mod sync;
pub mod testing;
pub mod unified;
pub mod webhooks;
pub mod yaml;
