//! Templates on the server: list, show, build from a recipe (with the
//! build's progress as a stream of events), alias and delete. Airlock's own
//! `/templates` API; the wire types are airlock-proto's.

use airlock_proto::api::{AliasTemplate, BuildEvent, BuildTemplate, TemplateInfo};
use http::Method;

use crate::error::{Error, Result};
use crate::Client;

/// The template API of one server, from [`Client::templates`].
#[derive(Clone)]
pub struct Templates {
    client: Client,
}

/// Template names go into paths: only the characters template names may
/// have (letters, digits, `-_.:`), so nothing can change the path.
fn checked(name: &str) -> Result<&str> {
    if !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.:".contains(c)) {
        Ok(name)
    } else {
        Err(Error::Config(format!("invalid template name {name:?}")))
    }
}

impl Client {
    pub fn templates(&self) -> Templates {
        Templates { client: self.clone() }
    }
}

impl Templates {
    pub async fn list(&self) -> Result<Vec<TemplateInfo>> {
        Ok(self.client.api_json(Method::GET, "/templates", None).await?.2)
    }

    /// One page of the templates by name: `page` from 1, `page_size` 1 to
    /// 100. Also returns how many templates there are in all.
    pub async fn page(&self, page: u32, page_size: u32) -> Result<(Vec<TemplateInfo>, u64)> {
        let (_, headers, items) = self.client.api_json(Method::GET, &format!("/templates?page={page}&pageSize={page_size}"), None).await?;
        let total =
            headers.get("x-total-count").and_then(|v| v.to_str().ok()?.parse().ok()).ok_or_else(|| Error::protocol("GET /templates: no X-Total-Count in a paged answer"))?;
        Ok((items, total))
    }

    /// One template, by name or alias.
    pub async fn get(&self, name: &str) -> Result<TemplateInfo> {
        Ok(self.client.api_json(Method::GET, &format!("/templates/{}", checked(name)?), None).await?.2)
    }

    /// Gives `name` another name.
    pub async fn alias(&self, name: &str, alias: &str) -> Result<()> {
        let body = serde_json::to_value(AliasTemplate { alias: alias.to_string() }).map_err(|e| Error::Config(e.to_string()))?;
        self.client.api(Method::POST, &format!("/templates/{}/aliases", checked(name)?), Some(body)).await?;
        Ok(())
    }

    /// Deletes a template; the server refuses while sandboxes use it, unless `force`.
    pub async fn delete(&self, name: &str, force: bool) -> Result<()> {
        let q = if force { "?force=true" } else { "" };
        self.client.api(Method::DELETE, &format!("/templates/{}{q}", checked(name)?), None).await?;
        Ok(())
    }

    /// Starts a build; its progress arrives as events, ending with
    /// [`BuildEvent::Done`] or [`BuildEvent::Error`]. Dropping the stream
    /// stops watching; the build goes on (and is cached) on the server.
    pub async fn build(&self, req: &BuildTemplate) -> Result<BuildStream> {
        checked(&req.name)?;
        let body = self.client.api_stream(Method::POST, "/templates", req).await?;
        Ok(crate::ndjson::NdjsonStream::new(body, "template build"))
    }
}

/// A build's events, one per NDJSON line of the response.
pub type BuildStream = crate::ndjson::NdjsonStream<BuildEvent>;
