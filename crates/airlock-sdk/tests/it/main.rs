//! The SDK against a real `airlock serve`: every test starts its own server
//! (a fresh data directory, a random port, one API key) and drives it only
//! through the SDK.
//!
//! The server is the workspace's `airlock` binary, which this crate cannot
//! depend on: build it first (`cargo build --workspace --bins`, as
//! `scripts/test` does). It is looked up in `$AIRLOCK_BIN`, else
//! `$CARGO_TARGET_DIR/debug/airlock`, else `target/debug/airlock` at the
//! workspace root. Like the server, the tests need root.

mod support;

mod commands;
mod files;
mod sandbox;
mod state;
mod templates;
