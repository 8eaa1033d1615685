//! An in-memory `Backend` for unit tests of the lifecycle rules: no root,
//! no namespaces. It keeps what a real backend would know (which
//! sandboxes exist, whether they are frozen, whether their processes are
//! alive) and lets a test play the kernel: a host reboot kills processes,
//! a crash leaves a sandbox the store never heard of.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use airlock_runtime::{Backend, Error, SandboxInfo, SandboxSpec, Usage};

#[derive(Debug, Clone)]
struct Sandbox {
    frozen: bool,
    alive: bool,
    restarts: u32,
    spec: SandboxSpec,
}

#[derive(Default)]
pub(super) struct FakeBackend {
    sandboxes: Mutex<BTreeMap<String, Sandbox>>,
}

impl FakeBackend {
    fn with<T>(&self, f: impl FnOnce(&mut BTreeMap<String, Sandbox>) -> T) -> T {
        f(&mut self.sandboxes.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn info(id: &str, s: &Sandbox) -> SandboxInfo {
        SandboxInfo { id: id.to_string(), pid: 4242, socket: PathBuf::from(format!("/nonexistent/{id}.sock")), frozen: s.frozen, ip: None }
    }

    /// What a host reboot does: every process gone, files kept.
    pub(super) fn kill_processes(&self, id: &str) {
        self.with(|m| {
            if let Some(s) = m.get_mut(id) {
                s.alive = false;
                s.frozen = false;
            }
        });
    }

    /// A sandbox that outlived the store's record of it (a crash between
    /// create and insert).
    pub(super) fn adopt(&self, id: &str, spec: SandboxSpec) {
        self.with(|m| m.insert(id.to_string(), Sandbox { frozen: false, alive: true, restarts: 0, spec }));
    }

    pub(super) fn exists(&self, id: &str) -> bool {
        self.with(|m| m.contains_key(id))
    }

    pub(super) fn frozen(&self, id: &str) -> bool {
        self.with(|m| m.get(id).is_some_and(|s| s.frozen))
    }

    pub(super) fn restarts(&self, id: &str) -> u32 {
        self.with(|m| m.get(id).map_or(0, |s| s.restarts))
    }

    pub(super) fn spec(&self, id: &str) -> Option<SandboxSpec> {
        self.with(|m| m.get(id).map(|s| s.spec.clone()))
    }
}

impl Backend for FakeBackend {
    fn create(&self, spec: &SandboxSpec) -> Result<SandboxInfo, Error> {
        spec.resources.validate()?;
        if spec.rootfs.root_layers.is_empty() {
            return Err(Error::InvalidSpec("a sandbox needs at least one root layer".into()));
        }
        self.with(|m| {
            if m.contains_key(&spec.id) {
                return Err(Error::AlreadyExists(spec.id.clone()));
            }
            let s = Sandbox { frozen: false, alive: true, restarts: 0, spec: spec.clone() };
            let info = Self::info(&spec.id, &s);
            m.insert(spec.id.clone(), s);
            Ok(info)
        })
    }

    fn get(&self, id: &str) -> Result<SandboxInfo, Error> {
        self.with(|m| match m.get(id) {
            Some(s) if s.alive => Ok(Self::info(id, s)),
            _ => Err(Error::NotFound(id.to_string())),
        })
    }

    fn list(&self) -> Result<Vec<SandboxInfo>, Error> {
        Ok(self.with(|m| m.iter().filter(|(_, s)| s.alive).map(|(id, s)| Self::info(id, s)).collect()))
    }

    fn freeze(&self, id: &str) -> Result<(), Error> {
        self.with(|m| match m.get_mut(id) {
            Some(s) if s.alive => {
                s.frozen = true;
                Ok(())
            }
            _ => Err(Error::NotFound(id.to_string())),
        })
    }

    fn thaw(&self, id: &str) -> Result<(), Error> {
        self.with(|m| match m.get_mut(id) {
            Some(s) if s.alive => {
                s.frozen = false;
                Ok(())
            }
            _ => Err(Error::NotFound(id.to_string())),
        })
    }

    fn destroy(&self, id: &str) -> Result<(), Error> {
        self.with(|m| m.remove(id).map(|_| ()).ok_or_else(|| Error::NotFound(id.to_string())))
    }

    fn usage(&self, id: &str) -> Result<Usage, Error> {
        self.get(id).map(|_| Usage { memory_limit_bytes: 512 << 20, ..Usage::default() })
    }

    fn restart(&self, id: &str) -> Result<SandboxInfo, Error> {
        self.with(|m| match m.get_mut(id) {
            Some(s) => {
                if !s.alive {
                    s.alive = true;
                    s.restarts += 1;
                }
                Ok(Self::info(id, s))
            }
            None => Err(Error::NotFound(id.to_string())),
        })
    }

    fn capture(&self, id: &str, _dest: &Path) -> Result<(), Error> {
        Err(Error::Unsupported(format!("the fake backend cannot capture {id}")))
    }

    fn network_available(&self) -> bool {
        true
    }

    fn disk_limits_available(&self) -> bool {
        false
    }
}
