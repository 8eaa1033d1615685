//! Integration tests: real sandboxes on this host, driven through the
//! agent's socket. They need root (CI runs them as root).

mod probe;
mod support;

mod batch;
mod cli;

mod connections;
mod dashboard;
mod events;
mod execlog;
mod faults;
mod files;
mod lifecycle;
mod mcp;
mod operations;
mod process;
mod seccomp;
mod secrets;
mod security;
mod server;
mod state;
mod templates;
mod volumes;
mod webhooks;
