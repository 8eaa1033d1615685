//! The Airlock control plane behind `airlock serve`.
//!
//! One HTTP listener (`server`): requests carrying `E2b-Sandbox-Id` (or a
//! `{port}-{id}.{domain}` host) are sandbox traffic, streamed to the
//! sandbox's agent (`proxy`); everything else is the E2B-compatible REST API
//! (`api`), authenticated by `X-API-KEY`, parsed into typed routes and
//! served by the service layer (`service`), which owns the lifecycle rules
//! and persists sandboxes and keys in SQLite (`store`). The runtime backend
//! does the isolation; this crate never touches namespaces itself.
//! Lifecycle events are recorded (`events`) and delivered to registered
//! URLs (`webhooks`). The web dashboard's files are served beside the API
//! (`dashboard`). Secrets are sealed at rest and resolved only for the
//! egress proxy (`secrets`); its TLS interception CA is `egress_tls`.

pub mod agent_client;
pub mod api;
pub mod builder;
pub mod cluster;
pub mod config;
pub mod dashboard;
pub mod egress;
pub mod egress_tls;
pub mod events;
pub mod http;
pub mod ids;
pub mod pools;
pub mod proxy;
pub mod samples;
pub mod secrets;
pub mod server;
pub mod service;
pub mod store;
pub mod telemetry;
mod template_spec;
pub mod tls;
pub mod volumes;
pub mod webhooks;

pub use config::Config;
pub use server::Server;
