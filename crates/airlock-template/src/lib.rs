//! Templates: what a sandbox's root filesystem is made of.
//!
//! A template is read-only layers (a root tree and, unless it shares the
//! host's, a `/usr` tree) plus defaults (user, working directory,
//! environment, start and ready commands). This crate owns all of it on
//! disk: the store and the built-in `base` (`store`), layers and their cache
//! keys (`layer`), the sources a `FROM` can name (a directory, an OCI or
//! `docker save` archive, a debootstrapped Debian or Ubuntu: `source`), and
//! the recipe language (`recipe`).
//!
//! It never runs anything inside a sandbox (the server's builder does,
//! through a backend) and never sets up isolation. What a backend needs
//! from a template is a `RootFs`: layers, never a name.

pub mod archive;
pub mod copy;
pub mod digest;
pub mod layer;
pub mod recipe;
pub mod source;
pub mod store;
pub mod tags;

use std::collections::BTreeMap;
use std::path::PathBuf;

pub use store::{ClusterCopy, SnapshotOrigin, Store, Template, TemplateError};

/// A sandbox's root filesystem and defaults, resolved by the caller (from
/// a template, a build step or, later, a snapshot): backends take layers,
/// never names.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RootFs {
    /// Read-only root layers, topmost first.
    pub root_layers: Vec<PathBuf>,
    /// Read-only `/usr` layers, topmost first.
    pub usr_layers: Vec<PathBuf>,
    /// User for requests that name none.
    pub default_user: String,
    /// Working directory of commands that give none.
    pub workdir: Option<String>,
    /// Environment of every command (the spec's own `env` wins).
    pub env: BTreeMap<String, String>,
}
