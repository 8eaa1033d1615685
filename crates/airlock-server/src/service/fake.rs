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
    /// Soft and hard resets it went through.
    resets: (u32, u32),
    /// What its memory group's OOM counter would say.
    oom_kills: u64,
    spec: SandboxSpec,
}

#[derive(Default)]
pub(super) struct FakeBackend {
    sandboxes: Mutex<BTreeMap<String, Sandbox>>,
    /// Creates fail (as a boot failure would) while set.
    failing: std::sync::atomic::AtomicBool,
    /// A host without a firewall tool while set.
    no_firewall: std::sync::atomic::AtomicBool,
}

impl FakeBackend {
    fn with<T>(&self, f: impl FnOnce(&mut BTreeMap<String, Sandbox>) -> T) -> T {
        f(&mut self.sandboxes.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn info(id: &str, s: &Sandbox) -> SandboxInfo {
        SandboxInfo { id: id.to_string(), pid: 4242, socket: PathBuf::from(format!("/nonexistent/{id}.sock")), frozen: s.frozen, ip: None }
    }

    /// What the OOM killer taking PID 1 does.
    pub(super) fn oom_kill(&self, id: &str) {
        self.with(|m| {
            if let Some(s) = m.get_mut(id) {
                s.alive = false;
                s.oom_kills += 1;
            }
        });
    }

    /// What a host reboot does: every process gone, files kept.
    pub(super) fn lose_processes(&self, id: &str) {
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
        self.with(|m| m.insert(id.to_string(), Sandbox { frozen: false, alive: true, restarts: 0, resets: (0, 0), oom_kills: 0, spec }));
    }

    pub(super) fn lose_firewall(&self) {
        self.no_firewall.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub(super) fn fail_creates(&self, on: bool) {
        self.failing.store(on, std::sync::atomic::Ordering::SeqCst);
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

    pub(super) fn alive(&self, id: &str) -> bool {
        self.with(|m| m.get(id).is_some_and(|s| s.alive))
    }

    pub(super) fn resets(&self, id: &str) -> (u32, u32) {
        self.with(|m| m.get(id).map_or((0, 0), |s| s.resets))
    }

    pub(super) fn spec(&self, id: &str) -> Option<SandboxSpec> {
        self.with(|m| m.get(id).map(|s| s.spec.clone()))
    }
}

impl Backend for FakeBackend {
    fn create(&self, spec: &SandboxSpec) -> Result<SandboxInfo, Error> {
        spec.resources.validate()?;
        if self.failing.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(Error::Boot { stage: "fake".into(), message: "creates fail in this test".into(), errno: None });
        }
        if spec.rootfs.root_layers.is_empty() {
            return Err(Error::InvalidSpec("a sandbox needs at least one root layer".into()));
        }
        self.with(|m| {
            if m.contains_key(&spec.id) {
                return Err(Error::AlreadyExists(spec.id.clone()));
            }
            let s = Sandbox { frozen: false, alive: true, restarts: 0, resets: (0, 0), oom_kills: 0, spec: spec.clone() };
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

    fn oom_kills(&self, id: &str) -> u64 {
        self.with(|m| m.get(id).map_or(0, |s| s.oom_kills))
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

    fn snapshot(&self, id: &str, dest: &Path) -> Result<airlock_runtime::Snapshot, Error> {
        self.with(|m| {
            let s = m.get(id).ok_or_else(|| Error::NotFound(id.to_string()))?;
            let mut rootfs = s.spec.rootfs.clone();
            rootfs.root_layers.insert(0, dest.join("root"));
            rootfs.env.extend(s.spec.env.clone());
            Ok(airlock_runtime::Snapshot { rootfs, bytes: 0 })
        })
    }

    fn stop(&self, id: &str) -> Result<(), Error> {
        self.with(|m| {
            let s = m.get_mut(id).ok_or_else(|| Error::NotFound(id.to_string()))?;
            s.alive = false;
            s.frozen = false;
            Ok(())
        })
    }

    fn kill_processes(&self, id: &str) -> Result<(), Error> {
        self.with(|m| match m.get_mut(id) {
            Some(s) if s.alive => {
                s.resets.0 += 1;
                Ok(())
            }
            _ => Err(Error::NotFound(id.to_string())),
        })
    }

    fn reset(&self, id: &str) -> Result<SandboxInfo, Error> {
        self.with(|m| {
            let s = m.get_mut(id).ok_or_else(|| Error::NotFound(id.to_string()))?;
            s.resets.1 += 1;
            s.alive = true;
            s.frozen = false;
            Ok(Self::info(id, s))
        })
    }

    fn resize(&self, id: &str, resources: &airlock_runtime::Resources, _disk_mb: Option<u64>) -> Result<(), Error> {
        self.with(|m| {
            let s = m.get_mut(id).filter(|s| s.alive).ok_or_else(|| Error::NotFound(id.to_string()))?;
            s.spec.resources = *resources;
            Ok(())
        })
    }

    fn rekey(&self, id: &str, env: &BTreeMap<String, String>, access_token: Option<&str>) -> Result<(), Error> {
        self.with(|m| {
            let s = m.get_mut(id).ok_or_else(|| Error::NotFound(id.to_string()))?;
            s.spec.env = env.clone();
            s.spec.access_token = access_token.map(str::to_string);
            Ok(())
        })
    }

    fn reconfigure(&self, id: &str, env: &BTreeMap<String, String>, resources: Option<airlock_runtime::Resources>) -> Result<(), Error> {
        self.with(|m| {
            let s = m.get_mut(id).ok_or_else(|| Error::NotFound(id.to_string()))?;
            if s.alive {
                return Err(Error::InvalidSpec(format!("sandbox {id} is running")));
            }
            s.spec.env.extend(env.clone());
            if let Some(r) = resources {
                s.spec.resources = r;
            }
            Ok(())
        })
    }

    fn network_available(&self) -> bool {
        !self.no_firewall.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn disk_limits_available(&self) -> bool {
        false
    }
}
