//! Control-plane REST types (E2B's `api` surface, plus Airlock extensions),
//! with the exact JSON names the official SDKs send and require.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `NewSandbox` (`POST /sandboxes`) and `NewSandboxV2` (`POST /v2/sandboxes`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct NewSandbox {
    #[serde(rename = "templateID", default)]
    pub template_id: String,
    /// Seconds to live from now.
    #[serde(default)]
    pub timeout: Option<i64>,
    #[serde(default)]
    pub auto_pause: Option<bool>,
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub env_vars: Option<BTreeMap<String, String>>,
    /// v1 only; v2 sandboxes are always secured.
    #[serde(default)]
    pub secure: Option<bool>,
    /// snake_case on the wire, as E2B's spec has it.
    #[serde(rename = "allow_internet_access", alias = "allowInternetAccess", default)]
    pub allow_internet_access: Option<bool>,
    /// Airlock extension: CPU cores.
    #[serde(default, alias = "cpu_count")]
    pub cpu_count: Option<f64>,
    /// Airlock extension: memory limit in MiB.
    #[serde(rename = "memoryMB", alias = "memory_mb", default)]
    pub memory_mb: Option<u64>,
    /// Airlock extension: size limit of the writable layer in MiB.
    #[serde(rename = "diskMB", alias = "disk_mb", default)]
    pub disk_mb: Option<u64>,
    /// Resource alert thresholds (Airlock's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerts: Option<AlertThresholds>,
    /// E2B's auto-resume: traffic to the sandbox while it is paused wakes it.
    #[serde(default, rename = "autoResume", skip_serializing_if = "Option::is_none")]
    pub auto_resume: Option<AutoResume>,
    /// With `autoPause`: what the timeout's pause keeps. `false` stops
    /// the processes and keeps only the files (memory released); unset or
    /// `true` freezes them, memory held.
    #[serde(default)]
    pub auto_pause_memory: Option<bool>,
    /// Airlock extension: packages installed before create returns.
    #[serde(default, alias = "install_packages")]
    pub install_packages: Option<InstallPackages>,
    /// Airlock extension: a shell script run as root before create returns.
    #[serde(default, alias = "startup_script")]
    pub startup_script: Option<String>,
    /// E2B: volumes to mount, by name (or id), at absolute paths.
    #[serde(default, alias = "volume_mounts")]
    pub volume_mounts: Option<Vec<crate::volume::VolumeMount>>,
    /// Moru: one volume by id (note the lowercase `d`), at `volumeMountPath`.
    #[serde(default, rename = "volumeId", alias = "volumeID")]
    pub volume_id: Option<String>,
    #[serde(default)]
    pub volume_mount_path: Option<String>,
    /// Fields the SDKs may send that Airlock accepts and ignores
    /// (`mcp`, `network`, `autoResume`, ...).
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// Packages to install at create time, by package manager.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InstallPackages {
    #[serde(default)]
    pub pip: Vec<String>,
    #[serde(default)]
    pub npm: Vec<String>,
    #[serde(default)]
    pub apt: Vec<String>,
}

/// One line of a sandbox's set-up log (`GET /sandboxes/{id}/logs`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LogLine {
    /// RFC 3339.
    pub timestamp: String,
    pub line: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SandboxLogs {
    pub logs: Vec<LogLine>,
}

/// Response of create and connect.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Sandbox {
    #[serde(rename = "templateID")]
    pub template_id: String,
    #[serde(rename = "sandboxID")]
    pub sandbox_id: String,
    #[serde(rename = "clientID")]
    pub client_id: String,
    pub envd_version: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub envd_access_token: Option<String>,
    pub traffic_access_token: Option<String>,
    pub domain: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Lifecycle {
    pub auto_resume: bool,
    /// `kill` or `pause`.
    pub on_timeout: String,
}

/// `SandboxDetail` (GET one) and `ListedSandbox` (list) share these fields.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct SandboxDetail {
    #[serde(rename = "templateID")]
    pub template_id: String,
    #[serde(rename = "sandboxID")]
    pub sandbox_id: String,
    #[serde(rename = "clientID")]
    pub client_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    /// RFC 3339.
    pub started_at: String,
    pub end_at: String,
    pub envd_version: String,
    pub cpu_count: u32,
    #[serde(rename = "memoryMB")]
    pub memory_mb: u64,
    #[serde(rename = "diskSizeMB")]
    pub disk_size_mb: u64,
    /// `running` or `paused`.
    pub state: String,
    pub metadata: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub envd_access_token: Option<String>,
    pub allow_internet_access: Option<bool>,
    pub lifecycle: Lifecycle,
    pub domain: Option<String>,
    /// Airlock extension, state `dead` only: why the sandbox died.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub death: Option<String>,
    /// Resource alert thresholds, when any are set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alerts: Option<AlertThresholds>,
    /// E2B's `SandboxNetworkConfig`: the egress policy and port traffic
    /// settings (single-sandbox reads only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub network: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct SandboxMetric {
    /// RFC 3339 (deprecated by E2B but required by older SDKs).
    pub timestamp: String,
    pub timestamp_unix: i64,
    pub cpu_count: u32,
    pub cpu_used_pct: f64,
    pub mem_used: u64,
    pub mem_total: u64,
    pub mem_cache: u64,
    pub disk_used: u64,
    pub disk_total: u64,
    /// Bytes the sandbox received and sent on its network interface since
    /// it started (Airlock's; the E2B SDKs keep unknown fields aside).
    #[serde(default, rename = "netRxBytes")]
    pub net_rx_bytes: u64,
    #[serde(default, rename = "netTxBytes")]
    pub net_tx_bytes: u64,
}

/// Moru's `GET /v2/sandbox-runs`: one run of a sandbox, live or ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct SandboxRun {
    pub created_at: String,
    #[serde(rename = "sandboxID")]
    pub sandbox_id: String,
    /// running, paused, stopped or error.
    pub status: String,
    #[serde(rename = "templateID")]
    pub template_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    /// killed, shutdown, timeout or error (ended runs only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<String>,
}

/// The `network` create option of E2B's and Moru's SDKs.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NetworkOptions {
    /// Whether the sandbox's ports take requests without its traffic
    /// access token (`e2b-traffic-access-token`); default true.
    #[serde(default, alias = "allowPublicTraffic")]
    pub allow_public_traffic: Option<bool>,
    #[serde(default, alias = "allowOut")]
    pub allow_out: Vec<String>,
    #[serde(default, alias = "denyOut")]
    pub deny_out: Vec<String>,
    #[serde(default, alias = "dnsServers")]
    pub dns_servers: Option<Vec<String>>,
    #[serde(default, alias = "egressProxy")]
    pub egress_proxy: Option<serde_json::Value>,
    /// The `Host` requests to the sandbox's ports carry (`${PORT}` is the port).
    #[serde(default, alias = "maskRequestHost")]
    pub mask_request_host: Option<String>,
    #[serde(default, alias = "httpsPorts")]
    pub https_ports: Vec<u16>,
    /// Per-host request transforms (secret injection).
    #[serde(default)]
    pub rules: Option<serde_json::Value>,
}

/// `POST /networks`: a named private network for sandboxes.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NewNetwork {
    /// A DNS label: lower-case letters, digits and `-`, at most 63.
    pub name: String,
}

/// A sandbox on a network, and the name the others reach it by
/// (`<name>` or `<name>.<network>`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NetworkMember {
    #[serde(rename = "sandboxID")]
    pub sandbox_id: String,
    pub name: String,
    /// Its address on the network.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
}

/// A network and its members.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct SandboxNetwork {
    pub name: String,
    pub created_at: String,
    pub members: Vec<NetworkMember>,
}

/// `POST /networks/{name}/members`: a running sandbox joins (the network
/// is made if it does not exist).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JoinNetwork {
    #[serde(rename = "sandboxID", alias = "sandboxId", alias = "sandbox_id")]
    pub sandbox_id: String,
    /// The name it is reached by (a DNS label); default: its id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// `POST /sandboxes/broadcast`: one command in every sandbox of a group.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Broadcast {
    /// Run as `bash -c cmd`.
    pub cmd: String,
    /// Every member of this network...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    /// ...and/or every running sandbox whose metadata has all these pairs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
    /// Seconds each run may take (default 60, at most 3600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
    /// Default `user`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
}

/// One sandbox's outcome of a broadcast.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct BroadcastResult {
    #[serde(rename = "sandboxID")]
    pub sandbox_id: String,
    /// Absent when the command could not run (see `error`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub duration_ms: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BroadcastResults {
    pub results: Vec<BroadcastResult>,
}

/// `POST /sandboxes/{id}/batch`: code jobs run one after another in one
/// sandbox, highest `priority` first (ties in the order given). Each job
/// has its own timeout; a job that fails or times out does not stop the
/// rest.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct BatchRequest {
    pub jobs: Vec<BatchJob>,
}

/// One job of a batch.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct BatchJob {
    /// Unique within the batch; results carry it as `jobId`.
    pub id: String,
    pub code: String,
    /// A code-interpreter language (python, javascript, typescript, bash,
    /// r, java); default python. Jobs of one language share one context
    /// made for the batch (and removed after it), in the order they run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    /// Milliseconds the job may run (default 60,000, at most 3,600,000).
    /// A job that runs out is interrupted and its context restarted, so
    /// later jobs of its language start from a fresh kernel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
    /// Higher runs first (default 0).
    #[serde(default)]
    pub priority: i64,
    /// Environment variables for this job only.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub envs: BTreeMap<String, String>,
}

/// One job's outcome, in the order the jobs ran.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct BatchJobResult {
    pub job_id: String,
    /// The job ran to the end without an error.
    pub success: bool,
    /// What the job wrote to stdout.
    pub output: String,
    pub stderr: String,
    /// The job's results as the code interpreter reports them (the value
    /// of the last expression, display data), each a JSON object.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub results: Vec<serde_json::Value>,
    /// Why it failed: the language's error (`NameError: ...`), a timeout,
    /// or the sandbox going away.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub timed_out: bool,
    /// Milliseconds from the job's start to its end.
    pub duration: u64,
}

/// A batch's outcome; with `Accept: application/x-ndjson` the server sends
/// each `BatchJobResult` as a line when its job ends, then this summary
/// without `results`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct BatchResults {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub results: Vec<BatchJobResult>,
    pub succeeded: u32,
    pub failed: u32,
    /// Milliseconds for the whole batch.
    pub duration: u64,
}

/// `{"enabled": true}`: as E2B's SDKs send it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AutoResume {
    #[serde(default)]
    pub enabled: bool,
}

/// `GET /sandboxes/metrics?sandbox_ids=a,b`: each sandbox's latest sample.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SandboxesWithMetrics {
    pub sandboxes: BTreeMap<String, SandboxMetric>,
}

/// Resource alert thresholds, in percent of the sandbox's limit: crossing
/// one upwards records one `resource_alert` event; falling back below it
/// arms it again. Unset: no alert.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct AlertThresholds {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_pct: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_pct: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_pct: Option<f64>,
}

impl AlertThresholds {
    pub fn is_empty(&self) -> bool {
        self.cpu_pct.is_none() && self.memory_pct.is_none() && self.disk_pct.is_none()
    }
}

/// `PATCH /sandboxes/{id}/resources`: new limits for a running sandbox;
/// what is left out stays.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ResourceChange {
    #[serde(default, rename = "cpuCount", alias = "cpu_count")]
    pub cpu_count: Option<f64>,
    #[serde(default, rename = "memoryMB", alias = "memory_mb")]
    pub memory_mb: Option<u64>,
    /// Grows the disk limit (it cannot shrink while the sandbox runs).
    #[serde(default, rename = "diskSizeMB", alias = "diskMB", alias = "disk_mb")]
    pub disk_mb: Option<u64>,
}

/// A warm pool: `size` ready sandboxes of one template and resource shape,
/// kept by the server; a create that matches takes one.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct PoolSpec {
    #[serde(rename = "templateID", alias = "template")]
    pub template_id: String,
    pub size: u32,
    /// The shape a create must ask for (left out: the server's defaults).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_count: Option<f64>,
    #[serde(default, rename = "memoryMB", skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    #[serde(default, rename = "diskMB", skip_serializing_if = "Option::is_none")]
    pub disk_mb: Option<u64>,
    #[serde(default, rename = "allow_internet_access", alias = "allowInternetAccess", skip_serializing_if = "Option::is_none")]
    pub allow_internet_access: Option<bool>,
}

/// A pool as `GET /pools` shows it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct PoolInfo {
    pub name: String,
    #[serde(flatten)]
    pub spec: PoolSpec,
    /// Sandboxes ready to be claimed now.
    pub ready: u32,
    /// Being started for the pool.
    pub filling: u32,
    /// Creates served from the pool, and creates of its shape that found it empty.
    pub claims: u64,
    pub misses: u64,
    /// Why the last refill failed, if it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// `{"timeout": seconds}` of set-timeout, and the optional bodies of
/// connect and resume.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TimeoutBody {
    #[serde(default)]
    pub timeout: Option<i64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RefreshBody {
    #[serde(default)]
    pub duration: Option<i64>,
}

/// The error body of every control-plane failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiError {
    pub code: u16,
    pub message: String,
}

/// Body of a 502 for sandbox traffic to an unknown or stopped sandbox; the
/// SDKs look for "was not found" in the message.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct SandboxNotFound {
    #[serde(rename = "sandboxId")]
    pub sandbox_id: String,
    pub message: String,
    pub code: u16,
}

// ------------------------------------------------------------ templates
// Airlock's own template API (`/templates`); E2B's v2/v3 build API is a
// separate, later surface.

/// A template as `GET /templates` and `GET /templates/{name}` show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct TemplateInfo {
    #[serde(rename = "templateID")]
    pub template_id: String,
    pub name: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    #[serde(default)]
    pub digest: String,
    #[serde(default)]
    pub size_bytes: u64,
    /// Root and `/usr` layers together.
    #[serde(default)]
    pub layers: usize,
    pub created_at: String,
    pub default_user: String,
    #[serde(default)]
    pub workdir: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    #[serde(default)]
    pub start_cmd: Option<String>,
    #[serde(default)]
    pub ready_cmd: Option<String>,
}

/// `POST /templates`: build (or rebuild from cache) a template.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct BuildTemplate {
    #[serde(default)]
    pub name: String,
    /// The recipe text (`FROM`, `RUN`, ..., `START`, `READY`).
    #[serde(default)]
    pub recipe: String,
    #[serde(default)]
    pub build_args: BTreeMap<String, String>,
    /// The build context for `COPY`: a base64 tar.gz.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    /// A SandboxSDK template spec instead of `recipe`: the server writes
    /// the recipe (`name` defaults to the spec's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<TemplateSpec>,
}

/// SandboxSDK's template spec: a base for the language (`python`, `node`,
/// or `base` for bash) or `dockerImage`, the `version` checked in the
/// first step, the `dependencies` installed (pip, npm, apt), one
/// `installCommand` line, and `defaultEnvVars`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct TemplateSpec {
    #[serde(default)]
    pub name: String,
    /// python, javascript or typescript (node), bash.
    pub language: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub docker_image: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dependencies: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub install_command: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub default_env_vars: BTreeMap<String, String>,
}

/// `POST /templates/{name}/aliases`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AliasTemplate {
    #[serde(default)]
    pub alias: String,
}

/// One line of a build's NDJSON response; the last is `done` or `error`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BuildEvent {
    Step { step: usize, total: usize, text: String, cached: bool },
    Log { text: String, stderr: bool },
    Done { name: String, digest: String, size_bytes: u64, elapsed_ms: u64 },
    Error { message: String },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_sandbox_from_python_sdk_body() {
        let b: NewSandbox =
            serde_json::from_str(r#"{"templateID":"base","timeout":120,"metadata":{"a":"b"},"envVars":{"X":"1"},"allow_internet_access":false,"mcp":null,"autoPause":true}"#)
                .expect("parse");
        assert_eq!(b.template_id, "base");
        assert_eq!(b.timeout, Some(120));
        assert_eq!(b.allow_internet_access, Some(false));
        assert_eq!(b.auto_pause, Some(true));
        assert_eq!(b.env_vars.expect("env")["X"], "1");
        assert!(b.other.contains_key("mcp"));
    }

    #[test]
    fn sandbox_has_required_names() {
        let s = Sandbox {
            template_id: "base".into(),
            sandbox_id: "abc".into(),
            client_id: "airlock".into(),
            envd_version: "0.6.13".into(),
            alias: None,
            envd_access_token: Some("t".into()),
            traffic_access_token: None,
            domain: None,
        };
        let v = serde_json::to_value(&s).expect("ser");
        for k in ["templateID", "sandboxID", "clientID", "envdVersion", "envdAccessToken"] {
            assert!(v.get(k).is_some(), "{k}");
        }
    }
}

// ------------------------------------------------- snapshots, fork, pause

/// `SandboxPauseRequest` (`POST /sandboxes/{id}/pause`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct PauseRequest {
    /// `false`: filesystem-only pause (processes stop, memory is
    /// released, resume boots afresh over the files). Unset or `true`:
    /// the sandbox is frozen with its memory held.
    #[serde(default)]
    pub memory: Option<bool>,
    /// Refuse (503) instead of pausing when the agent does not answer.
    #[serde(default)]
    pub require_healthy_guest: Option<bool>,
}

/// `SandboxSnapshotRequest` (`POST /sandboxes/{id}/snapshots`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SnapshotRequest {
    /// A name for the snapshot; taking another with the same name moves
    /// the name to the new one.
    #[serde(default)]
    pub name: Option<String>,
    /// Ignored beyond being read: this host cannot checkpoint processes,
    /// so every snapshot holds the filesystem only (`mode` in the reply).
    #[serde(default)]
    pub memory: Option<bool>,
}

/// `SnapshotInfo`: what taking or listing a snapshot returns.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct SnapshotInfo {
    /// `<id>:default`, or `<name>:default` for a named snapshot; what
    /// `Sandbox.create` and `DELETE /templates/{id}` take.
    #[serde(rename = "snapshotID")]
    pub snapshot_id: String,
    /// `<name>:default` for a named snapshot.
    pub names: Vec<String>,
    /// Airlock extension: always `filesystem` (see `SnapshotRequest::memory`).
    #[serde(default)]
    pub mode: String,
    /// Airlock extension: the sandbox it was taken from.
    #[serde(rename = "sandboxID", default)]
    pub sandbox_id: Option<String>,
    /// Airlock extension: bytes the snapshot's own layer holds.
    #[serde(default)]
    pub size_bytes: u64,
    #[serde(default)]
    pub created_at: String,
}

/// `SandboxForkRequest` (`POST /sandboxes/{id}/fork`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ForkRequest {
    /// Seconds the forks live; default 15, as E2B's.
    #[serde(default)]
    pub timeout: Option<i64>,
    /// 1 to 20; default 1.
    #[serde(default)]
    pub count: Option<i64>,
}

/// `SandboxForkResult`: one per requested fork, exactly one field set.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ForkResult {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<Sandbox>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiError>,
}

/// Airlock's `POST /sandboxes/{id}/reset`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ResetRequest {
    /// `false` (default): soft reset, every process but the agent is
    /// killed and files stay. `true`: back to the template or snapshot the
    /// sandbox came from, same id and token.
    #[serde(default)]
    pub hard: bool,
}

/// Airlock's `POST /sandboxes/{id}/restart`: a fresh agent over the same
/// files, optionally with more environment variables or new resources.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct RestartRequest {
    /// Merged over the sandbox's own.
    #[serde(default)]
    pub env_vars: Option<BTreeMap<String, String>>,
    #[serde(default, alias = "cpu_count")]
    pub cpu_count: Option<f64>,
    #[serde(rename = "memoryMB", alias = "memory_mb", default)]
    pub memory_mb: Option<u64>,
}

/// What an export archive (`GET /sandboxes/{id}/export`, tar + zstd)
/// carries first, as `airlock-export.json`: what the state sits on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ExportManifest {
    /// Format version (1).
    pub version: u32,
    /// The template (or snapshot) the sandbox was created from.
    pub template: String,
    /// That template's digest when it was exported: an import onto a
    /// template that changed since is refused unless forced.
    pub template_digest: String,
    #[serde(rename = "sandboxID")]
    pub sandbox_id: String,
    pub exported_at: String,
    #[serde(default)]
    pub env_vars: BTreeMap<String, String>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Whether the archive has a `usr/` part (templates with a `/usr` layer).
    pub has_usr: bool,
}

// --------------------------------------------------------------- events

/// A lifecycle event, as `GET /events` streams it (the SSE `data`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// Sequence number, increasing: the SSE `id`, what `Last-Event-ID` takes.
    pub id: i64,
    /// `created`, `error`, `paused`, `resumed`, `timeout`,
    /// `timeout_changed`, `snapshot`, `reset`, `restarted`, `configured`, `oom`, `died`,
    /// `killed`, `destroyed`.
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(rename = "sandboxID")]
    pub sandbox_id: String,
    /// RFC 3339.
    pub timestamp: String,
    /// The sandbox's metadata when it happened (streams filter on it).
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// What else there is to say (a cause, a deadline, a snapshot id).
    #[serde(default)]
    pub data: serde_json::Value,
    /// The template the sandbox was made from (empty for events recorded
    /// before servers kept it).
    #[serde(rename = "templateID", default, skip_serializing_if = "String::is_empty")]
    pub template_id: String,
}

/// E2B's `SandboxEvent`: an event as `GET /events/sandboxes` lists it and
/// as a webhook delivery's body carries it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct SandboxEvent {
    /// `v2`: the format with `type` (E2B's `v1` had a category and a label).
    pub version: String,
    /// The event's Airlock id (its sequence number) as a string: the same
    /// event always has the same id, so receivers can drop repeats.
    pub id: String,
    /// E2B's type (`sandbox.lifecycle.created` for Airlock's `ready`,
    /// `.killed`, `.paused`, `.resumed`, `.updated`, `.checkpointed`), or
    /// `airlock.<type>` for events E2B has no name for.
    #[serde(rename = "type")]
    pub kind: String,
    /// The event's data, with `sandbox_metadata` (and `set_timeout` on a
    /// timeout change) as E2B puts them.
    pub event_data: Option<serde_json::Value>,
    /// The template (Airlock has no separate builds).
    pub sandbox_build_id: String,
    /// Derived from the sandbox id: one per sandbox on Airlock.
    pub sandbox_execution_id: String,
    pub sandbox_id: String,
    /// Airlock has one team: the nil UUID.
    pub sandbox_team_id: String,
    pub sandbox_template_id: String,
    /// RFC 3339.
    pub timestamp: String,
    /// Airlock's own type of the event (`killed`, `timeout`, `oom`, ...).
    pub airlock_type: String,
}

// ------------------------------------------------------------- webhooks

/// `POST /webhooks` and E2B's `POST /events/webhooks`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct NewWebhook {
    /// `http://host[:port]/path` that each delivery is POSTed to.
    #[serde(default)]
    pub url: String,
    /// Event types in either style (`killed`, `sandbox.lifecycle.killed`);
    /// absent or empty: every event.
    #[serde(default)]
    pub events: Option<Vec<String>>,
    /// Signs every delivery (`e2b-signature`, `X-Airlock-Signature`); never
    /// shown again. E2B's name for it is `signatureSecret`.
    #[serde(default, alias = "signatureSecret")]
    pub secret: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    /// Default true.
    #[serde(default)]
    pub enabled: Option<bool>,
}

/// `PATCH /webhooks/{id}`: the fields given replace the stored ones.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct WebhookPatch {
    #[serde(default)]
    pub url: Option<String>,
    #[serde(default)]
    pub events: Option<Vec<String>>,
    /// A new secret; an empty string stops signing.
    #[serde(default, alias = "signatureSecret")]
    pub secret: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub enabled: Option<bool>,
}

/// A registered webhook (its secret is never shown).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Webhook {
    pub id: String,
    /// E2B's field; Airlock has one team, the nil UUID.
    #[serde(rename = "teamID")]
    pub team_id: String,
    pub name: String,
    pub url: String,
    /// As registered; empty: every event.
    pub events: Vec<String>,
    pub enabled: bool,
    /// Whether deliveries are signed (a secret was given).
    pub signed: bool,
    /// RFC 3339.
    pub created_at: String,
    pub delivery: WebhookDelivery,
}

/// Where a webhook's deliveries stand.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct WebhookDelivery {
    /// The last event handled (delivered, given up on, or not wanted):
    /// after a restart, deliveries resume after it.
    pub last_event_id: i64,
    /// The HTTP status of the last attempt (absent: none yet, or no answer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_status: Option<u16>,
    /// Why the last attempt failed (absent when it succeeded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_attempt_at: Option<String>,
    /// Attempts made for the latest event delivered or being delivered.
    pub attempts: u32,
    /// Events delivered (a 2xx answer).
    pub delivered: u64,
    /// Events given up on after every attempt failed.
    pub failed: u64,
}

// -------------------------------------------------------------- secrets

/// `POST /secrets` (E2B's `NewSecret`). Its `Debug` never shows the value.
#[derive(Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NewSecret {
    /// Unique; stored lower-cased. Not empty, no `{`, `}` or control
    /// characters (it goes into `${e2b.secrets.<name>}`), not `sec_…`.
    #[serde(default)]
    pub name: String,
    /// Write-only: no response ever carries it.
    #[serde(default)]
    pub value: String,
    /// At most 32 entries, keys up to 128 bytes, values up to 1024, 8192 in all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
}

/// `POST /secrets/{id}` (E2B's `SecretUpdate`): a new value (the next
/// version) and, when given, metadata replacing the stored one.
#[derive(Clone, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SecretUpdate {
    #[serde(default)]
    pub value: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<BTreeMap<String, String>>,
}

impl std::fmt::Debug for NewSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewSecret").field("name", &self.name).field("value", &"<redacted>").field("metadata", &self.metadata).finish()
    }
}

impl std::fmt::Debug for SecretUpdate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretUpdate").field("value", &"<redacted>").field("metadata", &self.metadata).finish()
    }
}

/// A secret's metadata (E2B's `Secret`); never its value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct Secret {
    /// `sec_` and 20 lowercase alphanumerics.
    #[serde(rename = "secretID")]
    pub secret_id: String,
    pub name: String,
    /// 1 when created, one more with each update.
    pub current_version: i64,
    pub metadata: BTreeMap<String, String>,
    /// RFC 3339.
    pub created_at: String,
    /// RFC 3339.
    pub updated_at: String,
}

/// `GET /sandboxes/{id}/health`: whether the sandbox works, and why not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SandboxHealth {
    /// Every check passed.
    pub healthy: bool,
    /// `running` or `paused` (a paused sandbox is not healthy: it runs nothing).
    pub state: String,
    pub checks: Vec<HealthCheck>,
}

/// One health check: `agent` (a command runs), `disk` (below 95% full),
/// `memory` (below 95% of the limit), or a caller's `check` command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HealthCheck {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

/// A node of a cluster as it describes itself in the cluster's store,
/// renewed every heartbeat (`GET /nodes`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct NodeInfo {
    pub name: String,
    /// Where the other nodes reach it (`--advertise`).
    pub url: String,
    pub version: String,
    /// The host's CPUs and memory.
    pub cpus: f64,
    #[serde(rename = "memoryMB")]
    pub memory_mb: u64,
    /// Sandboxes it holds (running and paused), and at most.
    pub sandboxes: usize,
    pub max_sandboxes: usize,
    /// What its running sandboxes were given.
    pub committed_cpus: f64,
    #[serde(rename = "committedMemoryMB")]
    pub committed_memory_mb: u64,
    /// Templates and snapshots it has (names and aliases): creates go to a node
    /// that has theirs.
    #[serde(default)]
    pub templates: Vec<String>,
    /// What its `base` template is made of (its host's packages): a
    /// template built on another node's `base` runs here only when the two
    /// are the same.
    #[serde(default)]
    pub base_digest: String,
    pub started_at: String,
    pub updated_at: String,
}

/// A node as `GET /nodes` lists it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "camelCase")]
pub struct ClusterNode {
    #[serde(flatten)]
    pub info: NodeInfo,
    /// `ready`, or `drained` (it takes no new sandboxes).
    pub state: String,
    /// The node that answered.
    #[serde(rename = "self")]
    pub this: bool,
}
