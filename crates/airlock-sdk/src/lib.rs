//! The Rust SDK for Airlock, and for any server that speaks the E2B
//! protocol: create sandboxes, run commands in them, move files in and out,
//! pause and resume them, and throw them away.
//!
//! ```no_run
//! use airlock_sdk::Sandbox;
//!
//! # async fn demo() -> airlock_sdk::Result<()> {
//! // AIRLOCK_URL / AIRLOCK_API_KEY (or E2B_API_URL / E2B_API_KEY) say where.
//! let sbx = Sandbox::builder().template("base").create().await?;
//! let out = sbx.commands().run("echo hello").await?;
//! assert_eq!(out.stdout, "hello\n");
//! sbx.files().write("/tmp/a.txt", "data").await?;
//! sbx.kill().await?;
//! # Ok(()) }
//! ```
//!
//! The wire types are airlock-proto's, re-exported here where they appear
//! in the API ([`SandboxDetail`], [`EntryInfo`], ...). The SDK talks
//! HTTP/1.1 over plain `http://` with one pooled client per [`Client`];
//! every handle is cheap to clone and dropping one never blocks. It manages
//! templates ([`Client::templates`]), webhooks
//! ([`Client::create_webhook`]) and secrets ([`Client::create_secret`])
//! but not API keys, and has no TLS of its own.

pub mod batch;
mod client;
pub mod code;
pub mod commands;
mod config;
mod error;
pub mod events;
pub mod execlog;
pub mod files;
mod ndjson;
pub mod network;
pub mod operations;
mod sandbox;
pub mod secrets;
mod sse;
mod state;
mod stream;
pub mod templates;
pub mod volumes;
pub mod webhooks;

pub use batch::{BatchEvent, BatchStream};
pub use client::Client;
pub use code::{CodeContext, Execution, ExecutionEvent, ExecutionStream, Interpreter, RunCode};
pub use commands::{CommandBuilder, CommandEvent, CommandHandle, CommandResult, CommandStream, Commands, Process, Pty};
pub use config::{Config, DEFAULT_URL};
pub use error::{Error, Result};
pub use events::{EventQuery, EventStream};
pub use execlog::{LogQuery, LogStream};
pub use files::{FileStream, Files, WatchBuilder, WatchStream};
pub use sandbox::{BoxStream, Sandbox, SandboxBuilder, SandboxList, SandboxPage, SandboxState, DEFAULT_TEMPLATE};
pub use state::RestartOptions;

pub use airlock_proto::api::{
    AlertThresholds, Broadcast, BroadcastResult, Event, HealthCheck, NetworkMember, NetworkOptions, PoolInfo, PoolSpec, ResourceChange, SandboxHealth, SandboxNetwork,
};
pub use airlock_proto::api::{BuildEvent, BuildTemplate, InstallPackages, LogLine, SandboxDetail, SandboxMetric, SnapshotInfo, TemplateInfo, TemplateSpec};
pub use airlock_proto::api::{NewSecret, Secret, SecretUpdate};
pub use airlock_proto::api::{NewWebhook, SandboxEvent, Webhook, WebhookDelivery, WebhookPatch};
pub use airlock_proto::connect::{Code, ConnectError};
pub use airlock_proto::envd::{EndEvent, EntryInfo, EventType, FileType, FilesystemEvent, ProcessInfo, PtySize, Signal, WrittenFile};
pub use airlock_proto::execlog::{CommandOutcome, ConfigureResult, ConfigureSandbox, ExecutionLog, ExecutionStats, LogEntry, LogLevel, LogSource};
pub use airlock_proto::volume::{FileInfo as VolumeFile, Uploaded, Volume, VolumeMount};
pub use operations::MetricStream;
pub use templates::{BuildStream, Templates};
pub use volumes::Volumes;

/// The examples in `docs/rust-sdk.md`, compiled as doctests so the guide
/// cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/rust-sdk.md")]
pub struct RustSdkGuide;
