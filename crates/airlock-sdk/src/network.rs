//! Egress policy: the `network` option at create
//! ([`SandboxBuilder::network`](crate::SandboxBuilder::network)) and
//! replacing it on a running sandbox ([`Sandbox::update_network`]), in
//! E2B's shape (`airlock_proto::api::NetworkOptions`): `allow_out` and
//! `deny_out` entries are IPv4 addresses, CIDRs and domain names (`*.`
//! for subdomains), an allow entry wins over a deny, `0.0.0.0/0` is all
//! traffic, and `rules` set headers (with `${e2b.secrets.<name>}`
//! placeholders) on requests to a host.

use airlock_proto::api::{Broadcast, BroadcastResult, BroadcastResults, JoinNetwork, NetworkOptions, NewNetwork, SandboxNetwork};
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

/// Sandbox networks (an Airlock extension): named private networks whose
/// members reach each other on any port as `<name>` or `<name>.<network>`,
/// and broadcast commands.
impl Client {
    /// Makes an empty network (409 if it exists; joining makes one too).
    pub async fn create_network(&self, name: &str) -> Result<SandboxNetwork> {
        let body = serde_json::to_value(NewNetwork { name: name.to_string() }).map_err(|e| Error::Config(e.to_string()))?;
        Ok(self.api_json(Method::POST, "/networks", Some(body)).await?.2)
    }

    pub async fn networks(&self) -> Result<Vec<SandboxNetwork>> {
        Ok(self.api_json(Method::GET, "/networks", None).await?.2)
    }

    pub async fn network(&self, name: &str) -> Result<SandboxNetwork> {
        Ok(self.api_json(Method::GET, &format!("/networks/{}", encode(name)), None).await?.2)
    }

    /// Removes an empty network (409 while it has members).
    pub async fn delete_network(&self, name: &str) -> Result<()> {
        self.api(Method::DELETE, &format!("/networks/{}", encode(name)), None).await?;
        Ok(())
    }

    /// Sandbox `id` joins `network` as `name` (default: its id).
    pub async fn join_network(&self, network: &str, id: &str, name: Option<&str>) -> Result<SandboxNetwork> {
        let body = serde_json::to_value(JoinNetwork { sandbox_id: id.to_string(), name: name.map(str::to_string) }).map_err(|e| Error::Config(e.to_string()))?;
        Ok(self.api_json(Method::POST, &format!("/networks/{}/members", encode(network)), Some(body)).await?.2)
    }

    pub async fn leave_network(&self, network: &str, id: &str) -> Result<()> {
        self.api(Method::DELETE, &format!("/networks/{}/members/{}", encode(network), encode(id)), None).await?;
        Ok(())
    }

    /// Runs one command in every running sandbox of `b.network` and/or with
    /// `b.metadata`; each one's outcome.
    pub async fn broadcast(&self, b: &Broadcast) -> Result<Vec<BroadcastResult>> {
        let body = serde_json::to_value(b).map_err(|e| Error::Config(e.to_string()))?;
        let r: BroadcastResults = self.api_json(Method::POST, "/sandboxes/broadcast", Some(body)).await?.2;
        Ok(r.results)
    }
}

impl Sandbox {
    /// Joins `network` as `name` (default: this sandbox's id).
    pub async fn join_network(&self, network: &str, name: Option<&str>) -> Result<SandboxNetwork> {
        self.client().join_network(network, self.id(), name).await
    }

    pub async fn leave_network(&self, network: &str) -> Result<()> {
        self.client().leave_network(network, self.id()).await
    }
}
