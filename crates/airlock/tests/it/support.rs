//! Test support: one namespace backend per test binary (in a temporary
//! data directory) and sandboxes that destroy themselves, each with an
//! envd client (airlock-testkit's `envd::Envd`) on its agent's socket.
//!
//! These stay here rather than in airlock-testkit: they drive
//! airlock-runtime directly and start sandboxes with the `airlock` binary
//! Cargo builds for this package's tests (`CARGO_BIN_EXE_airlock`), and
//! no other test tree needs them, so airlock-testkit (and the SDK's tests
//! with it) need not compile the runtime.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use airlock_runtime::{Backend, NamespaceBackend, SandboxInfo, SandboxSpec};
use airlock_testkit::envd::{CmdResult, Envd};
use serde_json::Value;

pub(crate) struct Harness {
    pub backend: NamespaceBackend,
    pub root: PathBuf,
    /// The `base` template's root filesystem, which sandboxes start from.
    pub base: airlock_runtime::RootFs,
    _tmp: tempfile::TempDir,
}

/// The shared backend. Tests need root; they fail loudly without it.
pub(crate) fn harness() -> &'static Harness {
    static H: OnceLock<Harness> = OnceLock::new();
    H.get_or_init(|| {
        // SAFETY: geteuid has no preconditions.
        assert_eq!(unsafe { libc::geteuid() }, 0, "the integration tests create real sandboxes and must run as root");
        let tmp = tempfile::Builder::new().prefix("airlock-it-").tempdir().expect("temp dir");
        let root = tmp.path().to_path_buf();
        let backend = NamespaceBackend::new(airlock_runtime::namespace::Options { root: root.clone(), binary: PathBuf::from(env!("CARGO_BIN_EXE_airlock")), network: true })
            .expect("namespace backend");
        let base = airlock_template::Store::new(root.join("templates")).ensure_base().expect("base template").rootfs();
        Harness { backend, root, base, _tmp: tmp }
    })
}

pub(crate) fn new_id() -> String {
    let mut buf = [0u8; 12];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").expect("urandom"), &mut buf).expect("random");
    let a = b"abcdefghijklmnopqrstuvwxyz0123456789";
    format!("t{}", buf.iter().map(|b| a[*b as usize % a.len()] as char).collect::<String>())
}

/// A running sandbox, destroyed on drop.
pub(crate) struct Sandbox {
    pub info: SandboxInfo,
    pub envd: Envd,
}

impl Sandbox {
    pub(crate) fn new() -> Self {
        Self::with(|_| {})
    }

    pub(crate) fn with(f: impl FnOnce(&mut SandboxSpec)) -> Self {
        let mut spec = SandboxSpec::new(new_id(), harness().base.clone());
        f(&mut spec);
        let info = harness().backend.create(&spec).expect("create sandbox");
        let envd = Envd { token: spec.access_token.clone(), ..Envd::new(&info.socket) };
        Self { info, envd }
    }

    pub(crate) fn id(&self) -> &str {
        &self.info.id
    }

    /// Runs a shell command to completion as `user`.
    pub(crate) async fn sh(&self, cmd: &str) -> CmdResult {
        self.envd.run(cmd).await
    }

    pub(crate) async fn sh_as(&self, user: &str, cmd: &str) -> CmdResult {
        let mut e = self.envd.clone();
        e.user = Some(user.to_string());
        e.run(cmd).await
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = harness().backend.destroy(&self.info.id);
        // The rest of the teardown runs in the background: done before the
        // test (and maybe the process) ends, so nothing is left mounted.
        airlock_runtime::namespace::settle(std::time::Duration::from_secs(10));
    }
}

pub(crate) fn env_map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// The slot of a sandbox of the shared backend (its host id range, /30 and
/// interface name `alk<slot>`), from its launch configuration.
pub(crate) fn slot_of(id: &str) -> u32 {
    let v: Value = serde_json::from_slice(&std::fs::read(harness().root.join("sandboxes").join(id).join("launch.json")).expect("launch.json")).expect("json");
    let base = v["id_base"].as_u64().expect("id_base") as u32;
    (base - airlock_runtime::namespace::ID_BASE) / airlock_runtime::namespace::IDS_PER_SANDBOX
}
