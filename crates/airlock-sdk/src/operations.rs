//! Operating sandboxes: live resource changes, alert thresholds, the
//! latest metrics of many sandboxes and a live metrics stream, warm pools,
//! and the server's health.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use airlock_proto::api::{AlertThresholds, PoolInfo, PoolSpec, ResourceChange, SandboxDetail, SandboxMetric, SandboxesWithMetrics};
use futures_util::Stream;
use http::Method;

use crate::client::{encode, Client};
use crate::error::{Error, Result};
use crate::Sandbox;

impl Sandbox {
    /// Changes this sandbox's limits while it runs (see [`Client::set_resources`]).
    pub async fn set_resources(&self, change: ResourceChange) -> Result<SandboxDetail> {
        self.client().set_resources(self.id(), change).await
    }

    /// Replaces this sandbox's alert thresholds (empty: none).
    pub async fn set_alerts(&self, alerts: AlertThresholds) -> Result<SandboxDetail> {
        self.client().set_alerts(self.id(), alerts).await
    }

    /// Follows this sandbox's usage, one fresh reading per `interval`.
    pub async fn metrics_stream(&self, interval: Duration) -> Result<MetricStream> {
        self.client().metrics_stream(self.id(), interval).await
    }
}

impl Client {
    /// Changes a running sandbox's CPU, memory and disk limits in place;
    /// what `change` leaves out stays. Memory below what the sandbox's
    /// processes hold is refused (409), and a disk limit only grows.
    pub async fn set_resources(&self, id: &str, change: ResourceChange) -> Result<SandboxDetail> {
        let body = serde_json::to_value(change).map_err(|e| Error::Config(e.to_string()))?;
        Ok(self.api_json(Method::PATCH, &format!("/sandboxes/{}/resources", encode(id)), Some(body)).await?.2)
    }

    /// Replaces a sandbox's alert thresholds.
    pub async fn set_alerts(&self, id: &str, alerts: AlertThresholds) -> Result<SandboxDetail> {
        let body = serde_json::to_value(alerts).map_err(|e| Error::Config(e.to_string()))?;
        Ok(self.api_json(Method::PUT, &format!("/sandboxes/{}/alerts", encode(id)), Some(body)).await?.2)
    }

    /// The newest reading of each sandbox in `ids` (at most 100); ones
    /// that do not exist are left out.
    pub async fn latest_metrics(&self, ids: &[&str]) -> Result<BTreeMap<String, SandboxMetric>> {
        let list = ids.iter().map(|i| encode(i)).collect::<Vec<_>>().join(",");
        let r: SandboxesWithMetrics = self.api_json(Method::GET, &format!("/sandboxes/metrics?sandbox_ids={list}"), None).await?.2;
        Ok(r.sandboxes)
    }

    /// Follows a sandbox's usage: one fresh reading per `interval` (0.5 to
    /// 60 s) until it stops running or the stream is dropped.
    pub async fn metrics_stream(&self, id: &str, interval: Duration) -> Result<MetricStream> {
        let path = format!("/sandboxes/{}/metrics/stream?interval={}", encode(id), interval.as_secs_f64());
        let body = self.api_raw(Method::GET, &path, crate::client::full(bytes::Bytes::new()), "application/json", Some(0)).await?.into_body();
        Ok(MetricStream { sse: crate::sse::SseReader::new(body, "metrics stream"), done: false })
    }

    /// The nodes of the server's cluster (a 404 from a single host).
    pub async fn nodes(&self) -> Result<Vec<airlock_proto::api::ClusterNode>> {
        Ok(self.api_json(Method::GET, "/nodes", None).await?.2)
    }

    /// Drains a node (no new sandboxes on it), or undoes that.
    pub async fn drain_node(&self, name: &str, drained: bool) -> Result<()> {
        let verb = if drained { "drain" } else { "undrain" };
        self.api(Method::POST, &format!("/nodes/{}/{verb}", encode(name)), Some(serde_json::json!({}))).await?;
        Ok(())
    }

    /// Every warm pool with its level and counters.
    pub async fn pools(&self) -> Result<Vec<PoolInfo>> {
        Ok(self.api_json(Method::GET, "/pools", None).await?.2)
    }

    pub async fn pool(&self, name: &str) -> Result<PoolInfo> {
        Ok(self.api_json(Method::GET, &format!("/pools/{}", encode(name)), None).await?.2)
    }

    /// Creates or changes a warm pool.
    pub async fn put_pool(&self, name: &str, spec: &PoolSpec) -> Result<PoolInfo> {
        let body = serde_json::to_value(spec).map_err(|e| Error::Config(e.to_string()))?;
        Ok(self.api_json(Method::PUT, &format!("/pools/{}", encode(name)), Some(body)).await?.2)
    }

    /// Deletes a pool made through the API (its ready sandboxes go).
    pub async fn delete_pool(&self, name: &str) -> Result<()> {
        self.api(Method::DELETE, &format!("/pools/{}", encode(name)), None).await.map(|_| ())
    }

    /// The server's health with the figures behind it (`/health/details`).
    pub async fn server_health(&self) -> Result<serde_json::Value> {
        Ok(self.api_json(Method::GET, "/health/details", None).await?.2)
    }
}

/// Readings as they come; ends when the sandbox stops running.
pub struct MetricStream {
    sse: crate::sse::SseReader,
    done: bool,
}

impl Stream for MetricStream {
    type Item = Result<SandboxMetric>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if this.done {
                return Poll::Ready(None);
            }
            match this.sse.poll_message(cx) {
                Poll::Ready(Some(Ok(m))) if m.event == "end" => this.done = true,
                Poll::Ready(Some(Ok(m))) if m.event == "metrics" => {
                    return Poll::Ready(Some(serde_json::from_str(&m.data).map_err(|e| Error::protocol(format!("metrics {:?}: {e}", m.data)))));
                }
                Poll::Ready(Some(Ok(_))) => {}
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(None) => return Poll::Ready(None),
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}
