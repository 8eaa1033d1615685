//! Wire types shared by the Airlock server, the in-sandbox agent and the SDKs.
//!
//! This crate owns everything that has a fixed shape on the wire: the envd
//! messages of the `process` and `filesystem` Connect services in their proto3
//! canonical JSON form (`envd`), the Connect protocol's envelope framing and
//! error codes (`connect`), and the small JSON encodings proto3 requires
//! (`json`). It deliberately holds no I/O and no behaviour: a type here changes
//! only when the protocol does.

pub mod api;
pub mod connect;
pub mod envd;
pub mod execlog;
pub mod json;
pub mod query;
pub mod time;
pub mod volume;
pub mod wire;
