//! Egress policy: the `network` option at create
//! ([`SandboxBuilder::network`](crate::SandboxBuilder::network)) and
//! replacing it on a running sandbox ([`Sandbox::update_network`]), in
//! E2B's shape (`airlock_proto::api::NetworkOptions`): `allow_out` and
//! `deny_out` entries are IPv4 addresses, CIDRs and domain names (`*.`
//! for subdomains), an allow entry wins over a deny, `0.0.0.0/0` is all
//! traffic, and `rules` set headers (with `${e2b.secrets.<name>}`
//! placeholders) on requests to a host.

use airlock_proto::api::NetworkOptions;
use http::Method;

use crate::client::{encode, Client};
use crate::error::{Error, Result};
use crate::Sandbox;

/// E2B's all-traffic entry.
pub const ALL_TRAFFIC: &str = "0.0.0.0/0";

impl Sandbox {
    /// Replaces this sandbox's egress rules (what `network` leaves out is
    /// cleared: an update with no rules opens the sandbox again). New
    /// connections get the new rules; open ones keep theirs.
    pub async fn update_network(&self, network: &NetworkOptions) -> Result<()> {
        self.client().update_network(self.id(), network).await
    }
}

impl Client {
    /// `PUT /sandboxes/{id}/network`.
    pub async fn update_network(&self, id: &str, network: &NetworkOptions) -> Result<()> {
        let body = serde_json::to_value(network).map_err(|e| Error::Config(e.to_string()))?;
        self.api(Method::PUT, &format!("/sandboxes/{}/network", encode(id)), Some(body)).await?;
        Ok(())
    }
}
