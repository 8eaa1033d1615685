//! Integration tests: real sandboxes on this host, driven through the
//! agent's socket. They need root (CI runs them as root).

mod probe;
mod support;

mod cli;

mod lifecycle;
mod process;
mod server;
mod templates;
mod files;
mod security;
mod seccomp;
