//! Volumes on the wire: E2B's control API (`/volumes`) and its content API
//! (`/volumecontent/{id}/...`), Moru's volume and volume-file API, and the
//! volume fields of a sandbox create. One `Volume` body serves both SDKs:
//! E2B reads `volumeID`, `name` and `token`, Moru `volumeID`, `name`,
//! `createdAt` and `updatedAt`; each ignores the other's keys.

use serde::{Deserialize, Serialize};

/// `POST /volumes`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NewVolume {
    #[serde(default)]
    pub name: String,
    /// Airlock extension: the volume's size limit in MiB (server default
    /// when absent).
    #[serde(rename = "sizeMB", alias = "size_mb", default, skip_serializing_if = "Option::is_none")]
    pub size_mb: Option<u64>,
}

/// A volume, as create, get and list return it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Volume {
    #[serde(rename = "volumeID")]
    pub volume_id: String,
    pub name: String,
    /// E2B's per-volume bearer token for `/volumecontent`; left out of lists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// RFC 3339 with at most 6 fractional digits (Python < 3.11 parses no more).
    pub created_at: String,
    pub updated_at: String,
    /// The size limit in MiB (Airlock extension).
    #[serde(rename = "sizeMB", default)]
    pub size_mb: u64,
    /// Whether the limit is enforced (its own filesystem) on this host.
    #[serde(default)]
    pub limit_enforced: bool,
    #[serde(default)]
    pub total_size_bytes: u64,
    #[serde(default)]
    pub total_file_count: u64,
}

/// E2B's `volumeMounts` entry on a sandbox create: a volume by name (an
/// id is accepted too) at an absolute path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VolumeMount {
    pub name: String,
    pub path: String,
}

/// E2B content API: one entry (`VolumeEntryStat`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EntryStat {
    pub name: String,
    /// `file`, `directory`, `symlink` or `unknown`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Absolute inside the volume.
    pub path: String,
    pub size: u64,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub atime: String,
    pub mtime: String,
    pub ctime: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// E2B content API: `PATCH /volumecontent/{id}/path` body.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MetadataPatch {
    #[serde(default)]
    pub uid: Option<u32>,
    #[serde(default)]
    pub gid: Option<u32>,
    #[serde(default)]
    pub mode: Option<u32>,
}

/// Moru's `FileInfo`: `type` is only ever `file` or `directory` (the SDK
/// refuses anything else; a symlink shows as what it is, `file`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct FileInfo {
    pub name: String,
    pub path: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub modified_at: Option<String>,
}

/// `GET /volumes/{id}/files`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct FileList {
    pub files: Vec<FileInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_token: Option<String>,
}

/// `PUT /volumes/{id}/files/upload` answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Uploaded {
    pub path: String,
    pub size: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_has_both_sdks_keys() {
        let v = Volume {
            volume_id: "vol_x".into(),
            name: "n".into(),
            token: Some("t".into()),
            created_at: "2024-01-01T00:00:00Z".into(),
            updated_at: "2024-01-01T00:00:00Z".into(),
            size_mb: 1024,
            limit_enforced: true,
            total_size_bytes: 0,
            total_file_count: 0,
        };
        let j = serde_json::to_value(&v).expect("ser");
        for k in ["volumeID", "name", "token", "createdAt", "updatedAt", "totalSizeBytes", "totalFileCount"] {
            assert!(j.get(k).is_some(), "{k}");
        }
        let n: NewVolume = serde_json::from_str(r#"{"name":"a","sizeMB":64}"#).expect("parse");
        assert_eq!((n.name.as_str(), n.size_mb), ("a", Some(64)));
    }
}
