//! Cgroup limits, freezing and killing, on cgroup v2 or v1.
//!
//! Hosts differ: pure v2 is the norm, but hybrids (v1 controllers with an
//! empty v2 tree) are still common. `Cgroups::detect` picks whichever
//! hierarchy actually carries the controllers. Every sandbox gets a group
//! named by its id under `airlock/` in each hierarchy used.
//!
//! Files are written directly rather than through a crate: the handful of
//! files involved differ between v1 and v2 in ways the crates paper over
//! only partially (freezer waiting, `cgroup.kill` fallbacks), and keeping the
//! logic here lets it be read in one place.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::{Resources, Usage};

const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;
const BASE: &str = "airlock";
/// CFS period used for CPU limits: 100 ms, the kernel default.
const CPU_PERIOD_US: u64 = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no usable cgroup hierarchy: {0}")]
    Unavailable(String),
    #[error("writing {value:?} to {path}")]
    Write {
        path: PathBuf,
        value: String,
        #[source]
        source: std::io::Error,
    },
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("creating {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("removing {path}: processes still running")]
    Busy { path: PathBuf },
    #[error("freezing {path} timed out")]
    FreezeTimeout { path: PathBuf },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flavor {
    /// One unified hierarchy at `root`.
    V2 { root: PathBuf },
    /// One hierarchy per controller, each mounted at `root/<controller>`.
    V1 { root: PathBuf },
}

/// A sandbox's group, relative to each hierarchy's root.
pub fn group_of(id: &str) -> String {
    format!("{BASE}/{id}")
}

/// The controllers Airlock uses on v1, and the mount each lives under.
const V1_CONTROLLERS: &[&str] = &["memory", "pids", "cpu", "cpuacct", "freezer"];

#[derive(Debug, Clone)]
pub struct Cgroups {
    flavor: Flavor,
    /// `MAJ:MIN` of the disk that I/O limits apply to, when there is one
    /// and the I/O controller (v2 `io`, v1 `blkio`) is available.
    io_device: Option<String>,
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(|source| CgroupError::Write { path: path.to_path_buf(), value: value.to_string(), source })
}

fn read(path: &Path) -> Result<String, CgroupError> {
    fs::read_to_string(path).map_err(|source| CgroupError::Read { path: path.to_path_buf(), source })
}

fn is_cgroup2(path: &Path) -> bool {
    nix::sys::statfs::statfs(path).map(|s| s.filesystem_type().0 == CGROUP2_SUPER_MAGIC).unwrap_or(false)
}

impl Cgroups {
    /// Chooses v2 when `/sys/fs/cgroup` is a cgroup2 mount with the memory,
    /// pids and cpu controllers available; v1 when those controllers are
    /// mounted separately (hybrid or legacy hosts).
    pub fn detect() -> Result<Self, CgroupError> {
        Self::detect_at(Path::new("/sys/fs/cgroup"))
    }

    pub fn detect_at(root: &Path) -> Result<Self, CgroupError> {
        if is_cgroup2(root) {
            let avail = read(&root.join("cgroup.controllers"))?;
            for c in ["memory", "pids", "cpu"] {
                if !avail.split_whitespace().any(|a| a == c) {
                    return Err(CgroupError::Unavailable(format!("cgroup v2 controller '{c}' is not available")));
                }
            }
            let cg = Self { flavor: Flavor::V2 { root: root.to_path_buf() }, io_device: None };
            cg.prepare_v2()?;
            return Ok(cg);
        }
        for c in V1_CONTROLLERS {
            if !root.join(c).join("cgroup.procs").exists() {
                return Err(CgroupError::Unavailable(format!("cgroup v1 controller '{c}' is not mounted at {}", root.join(c).display())));
            }
        }
        Ok(Self { flavor: Flavor::V1 { root: root.to_path_buf() }, io_device: None })
    }

    /// Applies sandboxes' I/O limits to the disk holding `path`, if the
    /// I/O controller is there and `path` is on a block device (not tmpfs,
    /// overlay or btrfs, whose device numbers name no disk). Returns the
    /// device used, if any.
    pub fn limit_io_on(&mut self, path: &Path) -> Option<String> {
        let available = match &self.flavor {
            Flavor::V2 { root } => {
                let avail = fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
                avail.split_whitespace().any(|c| c == "io") && self.enable_v2("io").is_ok()
            }
            Flavor::V1 { root } => root.join("blkio").join("cgroup.procs").exists(),
        };
        self.io_device = if available { disk_of(path) } else { None };
        self.io_device.clone()
    }

    /// Caps the pids of all sandboxes together, so that they can never take
    /// the host's last pids however many there are (1024 each, 32 of them
    /// reached `pid_max` here).
    pub fn limit_total_pids(&self, max: u64) -> Result<(), CgroupError> {
        let base = match &self.flavor {
            Flavor::V2 { root } => root.join(BASE),
            Flavor::V1 { root } => root.join("pids").join(BASE),
        };
        fs::create_dir_all(&base).map_err(|source| CgroupError::Create { path: base.clone(), source })?;
        write(&base.join("pids.max"), &max.to_string())
    }

    pub fn flavor(&self) -> &Flavor {
        &self.flavor
    }

    /// On v2, controllers must be enabled in every ancestor's
    /// `subtree_control` before a child group can use them.
    fn prepare_v2(&self) -> Result<(), CgroupError> {
        for c in ["memory", "pids", "cpu"] {
            self.enable_v2(c)?;
        }
        Ok(())
    }

    fn enable_v2(&self, c: &str) -> Result<(), CgroupError> {
        let Flavor::V2 { root } = &self.flavor else { return Ok(()) };
        let base = root.join(BASE);
        fs::create_dir_all(&base).map_err(|source| CgroupError::Create { path: base.clone(), source })?;
        for dir in [root.as_path(), base.as_path()] {
            let ctl = dir.join("cgroup.subtree_control");
            let enabled = read(&ctl)?;
            if !enabled.split_whitespace().any(|e| e == c) {
                write(&ctl, &format!("+{c}"))?;
            }
        }
        Ok(())
    }

    fn paths(&self, id: &str) -> Vec<PathBuf> {
        match &self.flavor {
            Flavor::V2 { root } => vec![root.join(BASE).join(id)],
            Flavor::V1 { root } => {
                let mut v: Vec<PathBuf> = V1_CONTROLLERS.iter().map(|c| root.join(c).join(BASE).join(id)).collect();
                // The launcher detects the hierarchy afresh and knows no
                // device: a blkio group the backend made is joined all the same.
                let blkio = root.join("blkio").join(BASE).join(id);
                if self.io_device.is_some() || blkio.exists() {
                    v.push(blkio);
                }
                v
            }
        }
    }

    /// Creates the sandbox's groups and applies its limits.
    pub fn create(&self, id: &str, r: &Resources) -> Result<SandboxCgroup, CgroupError> {
        let mut cg = self.open(id);
        if matches!(self.flavor, Flavor::V1 { .. }) && r.io_bps == 0 && r.io_iops == 0 && cg.paths.len() > V1_CONTROLLERS.len() {
            // No limits, no blkio group: on v1 each hierarchy joined costs
            // the launcher an RCU grace period.
            cg.paths.truncate(V1_CONTROLLERS.len());
        }
        for p in &cg.paths {
            fs::create_dir_all(p).map_err(|source| CgroupError::Create { path: p.clone(), source })?;
        }
        if let Err(e) = cg.set_limits(r) {
            let _ = cg.remove();
            return Err(e);
        }
        Ok(cg)
    }

    /// The groups of an existing sandbox (they may not exist).
    pub fn open(&self, id: &str) -> SandboxCgroup {
        SandboxCgroup { flavor: self.flavor.clone(), paths: self.paths(id), io_device: self.io_device.clone() }
    }
}

/// `MAJ:MIN` of the whole disk holding `path` (a partition's parent: the
/// throttles work on disks), or None when `path` is on no block device.
fn disk_of(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let dev = fs::metadata(path).ok()?.dev();
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    let sys = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
    if !sys.exists() {
        return None;
    }
    if sys.join("partition").exists() {
        let parent = fs::read_to_string(sys.join("../dev")).ok()?;
        return Some(parent.trim().to_string());
    }
    Some(format!("{major}:{minor}"))
}

/// One `key value` line of a cgroup stat file (0 when absent).
fn stat_value(file: &Path, key: &str) -> u64 {
    fs::read_to_string(file).ok().and_then(|s| s.lines().find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix(' ')).and_then(|v| v.trim().parse().ok()))).unwrap_or(0)
}

#[derive(Debug, Clone)]
pub struct SandboxCgroup {
    flavor: Flavor,
    paths: Vec<PathBuf>,
    io_device: Option<String>,
}

impl SandboxCgroup {
    fn v1(&self, controller: &str) -> PathBuf {
        let idx = V1_CONTROLLERS.iter().position(|c| *c == controller).unwrap_or(0);
        self.paths[idx].clone()
    }

    fn main(&self) -> &Path {
        &self.paths[0]
    }

    pub fn exists(&self) -> bool {
        self.main().exists()
    }

    pub fn set_limits(&self, r: &Resources) -> Result<(), CgroupError> {
        let mem = r.memory_mb.max(16) * 1024 * 1024;
        let quota = ((r.cpus.max(0.01)) * CPU_PERIOD_US as f64) as u64;
        match &self.flavor {
            Flavor::V2 { .. } => {
                let p = self.main();
                write(&p.join("memory.max"), &mem.to_string())?;
                // Swap would let a memory bomb push the host into swapping.
                let swap = p.join("memory.swap.max");
                if swap.exists() {
                    write(&swap, "0")?;
                }
                write(&p.join("pids.max"), &r.pids.to_string())?;
                write(&p.join("cpu.max"), &format!("{quota} {CPU_PERIOD_US}"))?;
                if let Some(dev) = &self.io_device {
                    let v = |n: u64| if n == 0 { "max".to_string() } else { n.to_string() };
                    let line = format!("{dev} rbps={} wbps={} riops={} wiops={}", v(r.io_bps), v(r.io_bps), v(r.io_iops), v(r.io_iops));
                    write(&p.join("io.max"), &line)?;
                }
            }
            Flavor::V1 { .. } => {
                let m = self.v1("memory");
                // memsw must stay >= limit, so order the writes by direction.
                let memsw = m.join("memory.memsw.limit_in_bytes");
                let current: u64 = read(&m.join("memory.limit_in_bytes"))?.trim().parse().unwrap_or(u64::MAX);
                if memsw.exists() && mem > current {
                    write(&memsw, &mem.to_string())?;
                }
                write(&m.join("memory.limit_in_bytes"), &mem.to_string())?;
                if memsw.exists() {
                    write(&memsw, &mem.to_string())?;
                } else {
                    let _ = fs::write(m.join("memory.swappiness"), "0");
                }
                write(&self.v1("pids").join("pids.max"), &r.pids.to_string())?;
                let c = self.v1("cpu");
                write(&c.join("cpu.cfs_period_us"), &CPU_PERIOD_US.to_string())?;
                write(&c.join("cpu.cfs_quota_us"), &quota.to_string())?;
                // A sandbox made without I/O limits has no blkio group
                // (see `create`): nothing to change then.
                if let (Some(dev), Some(b)) = (&self.io_device, self.paths.get(V1_CONTROLLERS.len()).filter(|b| b.exists())) {
                    // v1 throttles only direct I/O (buffered writeback is not
                    // attributed to cgroups there); 0 removes a limit.
                    for (f, n) in [
                        ("blkio.throttle.read_bps_device", r.io_bps),
                        ("blkio.throttle.write_bps_device", r.io_bps),
                        ("blkio.throttle.read_iops_device", r.io_iops),
                        ("blkio.throttle.write_iops_device", r.io_iops),
                    ] {
                        write(&b.join(f), &format!("{dev} {n}"))?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Moves a process (and so its future children) into every group.
    pub fn add_pid(&self, pid: u32) -> Result<(), CgroupError> {
        for p in &self.paths {
            write(&p.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    pub fn procs(&self) -> Vec<u32> {
        let file = match &self.flavor {
            Flavor::V2 { .. } => self.main().join("cgroup.procs"),
            Flavor::V1 { .. } => self.v1("freezer").join("cgroup.procs"),
        };
        fs::read_to_string(file).map(|s| s.lines().filter_map(|l| l.trim().parse().ok()).collect()).unwrap_or_default()
    }

    pub fn freeze(&self) -> Result<(), CgroupError> {
        self.set_frozen(true)
    }

    pub fn thaw(&self) -> Result<(), CgroupError> {
        self.set_frozen(false)
    }

    fn set_frozen(&self, frozen: bool) -> Result<(), CgroupError> {
        let deadline = Instant::now() + Duration::from_secs(5);
        match &self.flavor {
            Flavor::V2 { .. } => {
                let p = self.main();
                write(&p.join("cgroup.freeze"), if frozen { "1" } else { "0" })?;
                // The write only starts freezing; `cgroup.events` says when it is done.
                let want = if frozen { "frozen 1" } else { "frozen 0" };
                while !read(&p.join("cgroup.events"))?.lines().any(|l| l.trim() == want) {
                    if Instant::now() > deadline {
                        return Err(CgroupError::FreezeTimeout { path: p.to_path_buf() });
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
            Flavor::V1 { .. } => {
                let f = self.v1("freezer").join("freezer.state");
                let want = if frozen { "FROZEN" } else { "THAWED" };
                loop {
                    write(&f, want)?;
                    if read(&f)?.trim() == want {
                        break;
                    }
                    if Instant::now() > deadline {
                        return Err(CgroupError::FreezeTimeout { path: f });
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        }
        Ok(())
    }

    pub fn is_frozen(&self) -> bool {
        match &self.flavor {
            Flavor::V2 { .. } => fs::read_to_string(self.main().join("cgroup.events")).map(|s| s.lines().any(|l| l.trim() == "frozen 1")).unwrap_or(false),
            Flavor::V1 { .. } => fs::read_to_string(self.v1("freezer").join("freezer.state")).map(|s| s.trim() == "FROZEN").unwrap_or(false),
        }
    }

    /// Kills every process in the sandbox. Frozen first, so nothing can fork
    /// between reading the list and signalling it; `cgroup.kill` does the
    /// same in one write where the kernel has it.
    pub fn kill_all(&self) -> Result<(), CgroupError> {
        if !self.exists() {
            return Ok(());
        }
        if let Flavor::V2 { .. } = &self.flavor {
            let k = self.main().join("cgroup.kill");
            if k.exists() {
                return write(&k, "1");
            }
        }
        let _ = self.freeze();
        for pid in self.procs() {
            // SAFETY: kill(2) on pids read from the sandbox's own cgroup.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        // SIGKILL is delivered to frozen tasks only once they thaw. A create
        // cut short may have made some v1 groups and not the freezer's:
        // nothing was frozen there, nothing to thaw.
        match (&self.flavor, self.thaw()) {
            (Flavor::V1 { .. }, Err(_)) if !self.v1("freezer").exists() => Ok(()),
            (_, r) => r,
        }
    }

    /// Removes the groups, waiting briefly for killed processes to go.
    pub fn remove(&self) -> Result<(), CgroupError> {
        let deadline = Instant::now() + Duration::from_secs(5);
        for p in &self.paths {
            loop {
                match fs::remove_dir(p) {
                    Ok(()) => break,
                    Err(e) if e.kind() == ErrorKind::NotFound => break,
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(_) => return Err(CgroupError::Busy { path: p.clone() }),
                }
            }
        }
        Ok(())
    }

    /// Processes the OOM killer killed in this group (v2 `memory.events`,
    /// v1 `memory.oom_control`); 0 when the group is gone.
    pub fn oom_kills(&self) -> u64 {
        let (file, key) = match &self.flavor {
            Flavor::V2 { .. } => (self.main().join("memory.events"), "oom_kill "),
            Flavor::V1 { .. } => (self.v1("memory").join("memory.oom_control"), "oom_kill "),
        };
        fs::read_to_string(file).ok().and_then(|s| s.lines().find_map(|l| l.strip_prefix(key).and_then(|v| v.trim().parse().ok()))).unwrap_or(0)
    }

    pub fn usage(&self) -> Usage {
        let num = |p: PathBuf| fs::read_to_string(p).ok().and_then(|s| s.trim().parse::<u64>().ok()).unwrap_or(0);
        match &self.flavor {
            Flavor::V2 { .. } => {
                let p = self.main();
                let cpu = fs::read_to_string(p.join("cpu.stat"))
                    .ok()
                    .and_then(|s| s.lines().find_map(|l| l.strip_prefix("usage_usec ").and_then(|v| v.trim().parse::<u64>().ok())))
                    .unwrap_or(0);
                let memory_bytes = num(p.join("memory.current"));
                Usage {
                    cpu_usage_ns: cpu * 1000,
                    memory_bytes,
                    memory_limit_bytes: num(p.join("memory.max")),
                    memory_working_bytes: memory_bytes.saturating_sub(stat_value(&p.join("memory.stat"), "inactive_file")),
                    pids: num(p.join("pids.current")),
                    ..Usage::default()
                }
            }
            Flavor::V1 { .. } => {
                let m = self.v1("memory");
                let memory_bytes = num(m.join("memory.usage_in_bytes"));
                Usage {
                    cpu_usage_ns: num(self.v1("cpuacct").join("cpuacct.usage")),
                    memory_bytes,
                    memory_limit_bytes: num(m.join("memory.limit_in_bytes")),
                    memory_working_bytes: memory_bytes.saturating_sub(stat_value(&m.join("memory.stat"), "total_inactive_file")),
                    pids: num(self.v1("pids").join("pids.current")),
                    ..Usage::default()
                }
            }
        }
    }
}
