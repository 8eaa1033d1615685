//! Batch execution: code jobs run one after another in one sandbox's code
//! interpreter, highest priority first, each with its own timeout; a job
//! that fails or times out does not stop the rest.

use futures_util::StreamExt;
use http::Method;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::{Client, Sandbox};
pub use airlock_proto::api::{BatchJob, BatchJobResult, BatchRequest, BatchResults};

/// One line of a batch's stream: a job's result as the job ends, then the
/// summary (without the results, which came before it).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum BatchEvent {
    Job(BatchJobResult),
    Done(BatchResults),
}

/// A batch's events, one per NDJSON line of the response. Dropping it
/// stops the batch on the server (the running job is interrupted).
pub type BatchStream = crate::ndjson::NdjsonStream<BatchEvent>;

impl Client {
    /// Starts a batch in sandbox `id`; results arrive as their jobs end.
    /// A batch that cannot run (duplicate or empty ids, an unknown
    /// language, oversized code, a sandbox that is not running) is refused
    /// before any job runs.
    pub async fn batch_stream(&self, id: &str, jobs: Vec<BatchJob>) -> Result<BatchStream> {
        let body = self.api_stream(Method::POST, &format!("/sandboxes/{}/batch", crate::client::encode(id)), &BatchRequest { jobs }).await?;
        Ok(crate::ndjson::NdjsonStream::new(body, "batch"))
    }

    /// Runs a batch in sandbox `id` to the end: every job's result, in the
    /// order the jobs ran, and the counts.
    pub async fn batch(&self, id: &str, jobs: Vec<BatchJob>) -> Result<BatchResults> {
        let mut s = self.batch_stream(id, jobs).await?;
        let mut results = Vec::new();
        while let Some(ev) = s.next().await {
            match ev? {
                BatchEvent::Job(r) => results.push(r),
                BatchEvent::Done(mut d) => {
                    d.results = results;
                    return Ok(d);
                }
            }
        }
        Err(Error::protocol(format!("the batch's stream ended after {} results without its summary", results.len())))
    }
}

impl Sandbox {
    /// [`Client::batch_stream`] for this sandbox.
    pub async fn batch_stream(&self, jobs: Vec<BatchJob>) -> Result<BatchStream> {
        self.client().batch_stream(self.id(), jobs).await
    }

    /// [`Client::batch`] for this sandbox.
    pub async fn batch(&self, jobs: Vec<BatchJob>) -> Result<BatchResults> {
        self.client().batch(self.id(), jobs).await
    }
}
