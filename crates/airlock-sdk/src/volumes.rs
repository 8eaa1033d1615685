//! Volumes on the server: create, list, show and delete, and their files
//! through the file API (`/volumes/{id}/files...`, the one Moru's SDK
//! uses): list, upload and download (both streamed), delete. A volume is
//! named by its id (`vol_...`) or its name everywhere. Mounting one in a
//! sandbox is [`crate::SandboxBuilder::volume`].

use airlock_proto::volume::{FileInfo, FileList, NewVolume, Uploaded, Volume};
use bytes::Bytes;
use futures_util::Stream;
use http::Method;
use http_body_util::BodyExt;

use crate::client::{encode, ReqBody};
use crate::error::{BoxError, Error, Result};
use crate::Client;

/// The volume API of one server, from [`Client::volumes`].
#[derive(Clone)]
pub struct Volumes {
    client: Client,
}

/// Volume ids and names go into paths: only the characters they may have.
fn checked(key: &str) -> Result<&str> {
    if !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        Ok(key)
    } else {
        Err(Error::Config(format!("invalid volume id or name {key:?}")))
    }
}

impl Client {
    pub fn volumes(&self) -> Volumes {
        Volumes { client: self.clone() }
    }
}

impl Volumes {
    /// Creates a volume; `size_mb` is its limit (the server's default when `None`).
    pub async fn create(&self, name: &str, size_mb: Option<u64>) -> Result<Volume> {
        let body = serde_json::to_value(NewVolume { name: name.to_string(), size_mb }).map_err(|e| Error::Config(e.to_string()))?;
        Ok(self.client.api_json(Method::POST, "/volumes", Some(body)).await?.2)
    }

    pub async fn list(&self) -> Result<Vec<Volume>> {
        Ok(self.client.api_json(Method::GET, "/volumes", None).await?.2)
    }

    /// One volume by id or name.
    pub async fn get(&self, key: &str) -> Result<Volume> {
        Ok(self.client.api_json(Method::GET, &format!("/volumes/{}", checked(key)?), None).await?.2)
    }

    /// Deletes a volume and its files; refused while a sandbox mounts it.
    pub async fn delete(&self, key: &str) -> Result<()> {
        self.client.api(Method::DELETE, &format!("/volumes/{}", checked(key)?), None).await?;
        Ok(())
    }

    /// The entries of a directory in the volume.
    pub async fn list_files(&self, key: &str, path: &str) -> Result<Vec<FileInfo>> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut p = format!("/volumes/{}/files?path={}", checked(key)?, encode(path));
            if let Some(t) = &token {
                p.push_str(&format!("&nextToken={}", encode(t)));
            }
            let page: FileList = self.client.api_json(Method::GET, &p, None).await?.2;
            out.extend(page.files);
            match page.next_token {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => return Ok(out),
            }
        }
    }

    /// Writes `path` (parents created, replacing what is there) from bytes.
    pub async fn upload(&self, key: &str, path: &str, data: impl Into<Bytes>) -> Result<Uploaded> {
        let data: Bytes = data.into();
        let len = data.len() as u64;
        self.upload_stream(key, path, crate::client::full(data), Some(len)).await
    }

    /// Writes `path` from a stream of chunks (a file of any size), with its
    /// length when known.
    pub async fn upload_from<S>(&self, key: &str, path: &str, chunks: S, len: Option<u64>) -> Result<Uploaded>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send + 'static,
    {
        use futures_util::StreamExt;
        let body = http_body_util::StreamBody::new(chunks.map(|c| c.map(http_body::Frame::data).map_err(|e| Box::new(e) as BoxError)));
        self.upload_stream(key, path, BodyExt::boxed_unsync(body), len).await
    }

    async fn upload_stream(&self, key: &str, path: &str, body: ReqBody, len: Option<u64>) -> Result<Uploaded> {
        let p = format!("/volumes/{}/files/upload?path={}", checked(key)?, encode(path));
        let resp = self.client.api_raw(Method::PUT, &p, body, "application/octet-stream", len).await?;
        let bytes = self.client.read_body(resp.into_body(), &p).await?;
        serde_json::from_slice(&bytes).map_err(|e| Error::protocol(format!("{p}: {e}")))
    }

    /// Reads `path` as a stream of chunks.
    pub async fn download(&self, key: &str, path: &str) -> Result<impl Stream<Item = Result<Bytes>>> {
        let p = format!("/volumes/{}/files/download?path={}", checked(key)?, encode(path));
        let body = self.client.api_raw(Method::GET, &p, crate::client::full(Bytes::new()), "application/octet-stream", None).await?.into_body();
        Ok(futures_util::stream::unfold(Some(body), move |state| {
            let url = p.clone();
            async move {
                let mut body = state?;
                loop {
                    match body.frame().await {
                        None => return None,
                        Some(Err(e)) => return Some((Err(Error::Connection { url, source: Box::new(e) }), None)),
                        Some(Ok(f)) => {
                            if let Ok(d) = f.into_data() {
                                return Some((Ok(d), Some(body)));
                            }
                        }
                    }
                }
            }
        }))
    }

    /// Removes a file, or a directory (a non-empty one only with `recursive`).
    pub async fn delete_file(&self, key: &str, path: &str, recursive: bool) -> Result<()> {
        let p = format!("/volumes/{}/files?path={}&recursive={recursive}", checked(key)?, encode(path));
        self.client.api(Method::DELETE, &p, None).await?;
        Ok(())
    }
}
