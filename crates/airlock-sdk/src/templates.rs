//! Templates on the server: list, show, build from a recipe (with the
//! build's progress as a stream of events), alias and delete. Airlock's own
//! `/templates` API; the wire types are airlock-proto's.

use std::pin::Pin;
use std::task::{Context, Poll};

use airlock_proto::api::{AliasTemplate, BuildEvent, BuildTemplate, TemplateInfo};
use futures_util::Stream;
use http::Method;
use http_body::Body;
use hyper::body::Incoming;

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
        Ok(BuildStream { body, buf: Vec::new(), done: false })
    }
}

/// A build's events, one per NDJSON line of the response.
pub struct BuildStream {
    body: Incoming,
    buf: Vec<u8>,
    done: bool,
}

impl Stream for BuildStream {
    type Item = Result<BuildEvent>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(pos) = this.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = this.buf.drain(..=pos).collect();
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return Poll::Ready(Some(serde_json::from_slice(&line).map_err(|e| Error::protocol(format!("build event {:?}: {e}", String::from_utf8_lossy(&line))))));
            }
            if this.done {
                return Poll::Ready(None);
            }
            match Pin::new(&mut this.body).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    this.done = true;
                    if !this.buf.is_empty() {
                        // A last line without its newline.
                        this.buf.push(b'\n');
                    }
                }
                Poll::Ready(Some(Err(e))) => {
                    this.done = true;
                    return Poll::Ready(Some(Err(Error::Connection { url: "template build".into(), source: Box::new(e) })));
                }
                Poll::Ready(Some(Ok(f))) => {
                    if let Ok(d) = f.into_data() {
                        this.buf.extend_from_slice(&d);
                    }
                }
            }
        }
    }
}
