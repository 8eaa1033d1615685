//! The namespace backend: sandboxes as Linux namespaces + cgroups + an
//! overlay root, one directory each under `<root>/sandboxes/<id>/`.
//!
//! Creation writes `launch.json` and executes `airlock __init` (see `init`);
//! the returned sandbox is found again later from its `state.json` and the
//! kernel (the pid and its start time), so a restarted server loses nothing.
//! Each sandbox holds a slot, reserved by creating `<root>/slots/<n>`
//! exclusively; the slot fixes its host id range and its /30 subnet.

use std::collections::BTreeMap;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::cgroup::Cgroups;
use crate::state::{self, BootError, LaunchConfig, RunState};
use crate::{Backend, Error, SandboxInfo, SandboxSpec, Usage};

/// Number of slots; bounded by the /16 of sandbox subnets (4 addresses each).
pub const MAX_SLOTS: u32 = 16384;
/// Slot reservations of every Airlock backend on the host (on tmpfs: slots
/// are host state and die with a reboot; `reclaim_slots` restores them).
pub const SLOTS_DIR: &str = "/run/airlock/slots";

/// A slot file whose sandbox directory no longer exists.
fn slot_is_stale(p: &Path) -> bool {
    let Ok(s) = fs::read_to_string(p) else { return false };
    let Some((root, id)) = s.split_once('\n') else {
        // Half-written by a creator that is writing it right now, or left
        // so by one killed between creating and writing it: after a minute,
        // nobody is writing it.
        let old = fs::metadata(p).and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok()).is_some_and(|a| a > Duration::from_secs(60));
        return old;
    };
    // A destroyed sandbox's directory waits in the trash while its
    // interface goes (see `network::retire`).
    !Path::new(root).join("sandboxes").join(id).exists() && !Path::new(root).join(TRASH_DIR).join(id).exists()
}
/// Removes host-wide slot files whose sandbox is gone (its data
/// directory's sandbox directory no longer exists, or a half-written file
/// older than a minute); returns their names. For `airlock cleanup`.
pub fn remove_stale_slots() -> Vec<String> {
    let mut gone = Vec::new();
    for e in fs::read_dir(SLOTS_DIR).into_iter().flatten().flatten() {
        if slot_is_stale(&e.path()) && fs::remove_file(e.path()).is_ok() {
            gone.push(e.file_name().to_string_lossy().into_owned());
        }
    }
    gone.sort();
    gone
}

/// First host id used for sandboxes: far above any real user's uid.
pub const ID_BASE: u32 = 1 << 20;
pub const IDS_PER_SANDBOX: u32 = 65536;

#[derive(Debug, Clone)]
pub struct Options {
    /// Where sandboxes and templates live.
    pub root: PathBuf,
    /// The `airlock` binary to execute as `__init`.
    pub binary: PathBuf,
    /// Whether to install the host firewall and NAT (needed for sandboxes with internet).
    pub network: bool,
}

pub struct NamespaceBackend {
    opts: Options,
    cgroups: Cgroups,
    network_ready: bool,
    disk_ready: bool,
    /// The host-wide slot directory, and this data directory as slot
    /// files name it.
    slots: PathBuf,
    root_canon: PathBuf,
    /// The `sudo` shim's layer, handed to every sandbox it launches.
    shim: Option<PathBuf>,
    /// The mount namespace new sandboxes are made from (see `crate::mntns`);
    /// without it, the server's own.
    base_mntns: Option<std::os::fd::OwnedFd>,
}

/// Where destroyed sandboxes' directories wait to be removed (see
/// `discard`), under the data directory.
const TRASH_DIR: &str = "trash";

static DISCARD: std::sync::Mutex<Option<std::sync::mpsc::Sender<PathBuf>>> = std::sync::Mutex::new(None);
/// Discards queued or running, for `settle`.
static DISCARDING: state::Pending = state::Pending::new();

/// Waits (at most `timeout`) for the teardown that destroys leave to
/// background threads: removing directories and freeing slots. A process
/// about to exit (the CLI, a stopping server) calls it so that nothing is
/// left half done; the next start would finish it, but may never come.
pub fn settle(timeout: Duration) {
    let deadline = Instant::now() + timeout;
    DISCARDING.wait(deadline);
    crate::network::settle(deadline);
}

/// Unmounts a destroyed sandbox's disk and removes its directory, on a
/// thread of its own, one at a time, in order. What a stopped server
/// leaves in the trash is removed at the next start.
fn discard(dir: PathBuf) {
    DISCARDING.add();
    let mut tx = DISCARD.lock().unwrap_or_else(|p| p.into_inner());
    let sender = tx.get_or_insert_with(|| {
        let (s, r) = std::sync::mpsc::channel::<PathBuf>();
        let _ = std::thread::Builder::new().name("airlock-discard".into()).spawn(move || {
            for d in r {
                remove_discarded(&d);
            }
        });
        s
    });
    if let Err(std::sync::mpsc::SendError(d)) = sender.send(dir) {
        *tx = None;
        drop(tx);
        remove_discarded(&d);
    }
}

fn remove_discarded(d: &Path) {
    crate::disk::unmount(d);
    // Another process of the same data directory (the CLI, at its start)
    // may have removed it first.
    if let Err(e) = fs::remove_dir_all(d).or_else(|e| if e.kind() == ErrorKind::NotFound { Ok(()) } else { Err(e) }) {
        tracing::warn!(dir = %d.display(), error = %e, "removing a destroyed sandbox's files");
    }
    DISCARDING.finish();
}

pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

impl NamespaceBackend {
    /// Probes the host (root, cgroups, user namespaces), prepares the data
    /// directory and the `base` template, and installs the host firewall.
    pub fn new(opts: Options) -> Result<Self, Error> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(Error::Unsupported("the namespace backend must run as root".into()));
        }
        if !opts.binary.exists() {
            return Err(Error::Unsupported(format!("agent binary {} does not exist", opts.binary.display())));
        }
        let mut cgroups = Cgroups::detect()?;
        let io_device = cgroups.limit_io_on(&opts.root);
        // A quarter of the host's pids stay the host's, however many
        // sandboxes run.
        let pid_max: u64 = fs::read_to_string("/proc/sys/kernel/pid_max").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(32768);
        if let Err(e) = cgroups.limit_total_pids(pid_max / 4 * 3) {
            tracing::warn!(error = %e, "cannot cap the pids of all sandboxes together");
        }
        state::private_dir(&opts.root).map_err(|e| Error::io(format!("securing {}", opts.root.display()), e))?;
        for d in ["sandboxes", "templates"] {
            fs::create_dir_all(opts.root.join(d)).map_err(|e| Error::io(format!("creating {}", opts.root.join(d).display()), e))?;
        }
        // Layers and sandbox roots are idmapped mounts: a data directory
        // that cannot take them would fail every create with a bare mount
        // error, so say so now.
        let templates = opts.root.join("templates");
        if let Err(e) = crate::rootfs::probe_idmap(&templates) {
            return Err(Error::Unsupported(format!(
                "the data directory {} is on a filesystem ({}) that this kernel ({}) cannot idmap, and every template layer is an idmapped mount: put --data-dir on ext4, xfs or btrfs (tmpfs works from Linux 6.3): {e}: {}",
                opts.root.display(),
                crate::disk::fs_name(&templates),
                crate::disk::kernel_release(),
                e.source
            )));
        }
        if let Err(e) = crate::rootfs::probe_idmap(Path::new("/usr")) {
            tracing::warn!(error = %e, source = %e.source, fs = crate::disk::fs_name(Path::new("/usr")), "the host's /usr cannot be idmapped: the built-in `base` template (the host's /usr) will not start; imported and debootstrapped templates still work");
        }
        let network_ready = if opts.network {
            match crate::network::install_host_rules() {
                Ok(()) => true,
                Err(e) => {
                    tracing::warn!(
                        error = %e,
                        "host firewall unavailable: sandboxes get loopback only (no internet). Install iptables (Debian/Ubuntu: apt install iptables) and restart the server, or start it with --no-network to say this is intended"
                    );
                    false
                }
            }
        } else {
            false
        };
        let shim = match crate::shim::prepare(&opts.root.join("shim"), &opts.binary) {
            Ok(p) => Some(p),
            Err(e) => {
                tracing::warn!(error = %e, "no sudo in sandboxes: cannot prepare its layer");
                None
            }
        };
        let disk_ready = crate::disk::available();
        if !disk_ready {
            tracing::warn!("no loop devices or mkfs.ext4: sandboxes cannot have disk limits");
        }
        tracing::info!(root = %opts.root.display(), cgroup = ?cgroups.flavor(), network = network_ready, disk_limits = disk_ready, io_device = ?io_device, "namespace backend ready");
        let slots = PathBuf::from(SLOTS_DIR);
        fs::create_dir_all(&slots).map_err(|e| Error::io(format!("creating {SLOTS_DIR}"), e))?;
        let root_canon = opts.root.canonicalize().unwrap_or_else(|_| opts.root.clone());
        let base_mntns = match crate::mntns::create(&opts.root) {
            Ok(fd) => Some(fd),
            Err(e) => {
                tracing::warn!(error = %e, "no base mount namespace: each create copies every mount on the host, so creates slow down as sandboxes accumulate");
                None
            }
        };
        // Destroyed sandboxes a stopped server had not finished removing.
        if let Ok(rd) = fs::read_dir(opts.root.join(TRASH_DIR)) {
            for e in rd.flatten() {
                discard(e.path());
            }
        }
        let b = Self { opts, cgroups, network_ready, disk_ready, slots, root_canon, shim, base_mntns };
        b.reclaim_slots();
        Ok(b)
    }

    /// Whether the host's cgroups are the unified (v2) hierarchy.
    pub fn cgroup_v2(&self) -> bool {
        matches!(self.cgroups.flavor(), crate::cgroup::Flavor::V2 { .. })
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.opts.root.join("sandboxes").join(id)
    }

    /// What a host-wide slot file holds: which sandbox of which data
    /// directory owns it.
    fn slot_owner(&self, id: &str) -> String {
        format!("{}\n{id}", self.root_canon.display())
    }

    /// Reserves a slot (a host uid range, a /30, an interface name) for
    /// `id`. Slots are host-wide, in `SLOTS_DIR`, so two servers with
    /// different data directories never share them. A slot whose owner's
    /// sandbox directory is gone (its data directory deleted without
    /// destroying it) is stale and taken over.
    fn reserve_slot(&self, id: &str) -> Result<u32, Error> {
        // Start where the id hashes to, so concurrent creators rarely race
        // for the same file; `create_new` settles the races that remain.
        let start = id.bytes().fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(b as u32)) % MAX_SLOTS;
        let owner = self.slot_owner(id);
        for i in 0..MAX_SLOTS {
            let n = (start + i) % MAX_SLOTS;
            let p = self.slots.join(n.to_string());
            for _ in 0..2 {
                match fs::OpenOptions::new().write(true).create_new(true).open(&p) {
                    Ok(mut f) => {
                        std::io::Write::write_all(&mut f, owner.as_bytes()).map_err(|e| Error::io("writing slot", e))?;
                        return Ok(n);
                    }
                    Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                        if slot_is_stale(&p) {
                            let _ = fs::remove_file(&p);
                            continue;
                        }
                        break;
                    }
                    Err(e) => return Err(Error::io("reserving slot", e)),
                }
            }
        }
        Err(Error::Unsupported(format!("all {MAX_SLOTS} sandbox slots are in use")))
    }

    fn release_slot(&self, id: &str) {
        let owner = self.slot_owner(id);
        if let Ok(cfg) = state::read_json::<LaunchConfig>(&self.dir(id).join(state::LAUNCH_FILE)) {
            let n = (cfg.id_base - ID_BASE) / IDS_PER_SANDBOX;
            let p = self.slots.join(n.to_string());
            if fs::read_to_string(&p).map(|s| s == owner).unwrap_or(false) {
                let _ = fs::remove_file(p);
            }
            return;
        }
        // A create cut short between reserving its slot and writing
        // launch.json (a crash): find the slot by its owner. Only on this
        // path, and the directory holds one file per live sandbox.
        for e in fs::read_dir(&self.slots).into_iter().flatten().flatten() {
            if fs::read_to_string(e.path()).map(|s| s == owner).unwrap_or(false) {
                let _ = fs::remove_file(e.path());
            }
        }
    }

    /// After a reboot (`/run` is empty) the slots of this data directory's
    /// sandboxes, which restart over their files, are claimed again
    /// before anything new is created.
    fn reclaim_slots(&self) {
        let Ok(rd) = fs::read_dir(self.opts.root.join("sandboxes")) else { return };
        for e in rd.flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            let Ok(cfg) = state::read_json::<LaunchConfig>(&e.path().join(state::LAUNCH_FILE)) else { continue };
            let n = (cfg.id_base - ID_BASE) / IDS_PER_SANDBOX;
            let p = self.slots.join(n.to_string());
            match fs::OpenOptions::new().write(true).create_new(true).open(&p) {
                Ok(mut f) => {
                    let _ = std::io::Write::write_all(&mut f, self.slot_owner(&id).as_bytes());
                }
                Err(_) => {
                    if fs::read_to_string(&p).map(|s| s != self.slot_owner(&id)).unwrap_or(false) {
                        tracing::warn!(sandbox_id = %id, slot = n, "another data directory's sandbox holds this sandbox's slot");
                    }
                }
            }
        }
    }

    fn run_state(&self, id: &str) -> Option<RunState> {
        state::read_json(&self.dir(id).join(state::STATE_FILE)).ok()
    }

    fn info(&self, id: &str, rs: &RunState) -> SandboxInfo {
        SandboxInfo { id: id.to_string(), pid: rs.pid, socket: self.dir(id).join(state::SOCKET_FILE), frozen: self.cgroups.open(id).is_frozen(), ip: rs.ip }
    }

    fn write_identity_files(&self, upper_etc: &Path, hostname: &str, internet: bool, id_base: u32) -> Result<(), Error> {
        fs::create_dir_all(upper_etc).map_err(|e| Error::io("creating etc", e))?;
        let ns = if internet { crate::network::nameservers().iter().map(|n| format!("nameserver {n}\n")).collect::<String>() } else { String::new() };
        let files = [
            ("hostname", format!("{hostname}\n")),
            ("hosts", format!("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n")),
            ("resolv.conf", ns),
        ];
        for (name, content) in files {
            let p = upper_etc.join(name);
            fs::write(&p, content).map_err(|e| Error::io(format!("writing /etc/{name}"), e))?;
            std::os::unix::fs::lchown(&p, Some(id_base), Some(id_base)).map_err(|e| Error::io("chown", e))?;
        }
        std::os::unix::fs::lchown(upper_etc, Some(id_base), Some(id_base)).map_err(|e| Error::io("chown", e))?;
        Ok(())
    }

    fn try_create(&self, spec: &SandboxSpec, dir: &Path) -> Result<SandboxInfo, Error> {
        let tpl = &spec.rootfs;
        let mut env = tpl.env.clone();
        env.extend(spec.env.clone());
        let slot = self.reserve_slot(&spec.id)?;
        let id_base = ID_BASE + slot * IDS_PER_SANDBOX;
        let internet = spec.internet && self.network_ready;
        if internet {
            crate::network::refresh_host_rules()?;
        }
        let net = internet.then(|| crate::network::assign(slot));
        if let Some(mb) = spec.disk_mb {
            if !self.disk_ready {
                return Err(Error::InvalidSpec("this host cannot give sandboxes disk limits (no loop devices or mkfs.ext4)".into()));
            }
            crate::disk::create_and_mount(&self.opts.root.join("disk-cache"), dir, mb)?;
        }
        init_dirs(dir, tpl.root_layers.len(), tpl.usr_layers.len(), id_base)?;
        let hostname = spec.hostname.clone().unwrap_or_else(|| "sandbox".to_string());
        self.write_identity_files(&dir.join("upper/root/etc"), &hostname, internet, id_base)?;
        let cfg = LaunchConfig {
            id: spec.id.clone(),
            dir: dir.to_path_buf(),
            root_layers: tpl.root_layers.clone(),
            usr_layers: tpl.usr_layers.clone(),
            id_base,
            hostname,
            net,
            resources: spec.resources,
            default_user: tpl.default_user.clone(),
            workdir: tpl.workdir.clone(),
            env,
            access_token: spec.access_token.clone(),
            volumes: spec.volumes.clone(),
            sudo_layer: self.shim.clone(),
            top_layers: spec.top_layers.clone(),
        };
        state::write_json(&dir.join(state::LAUNCH_FILE), &cfg).map_err(|e| Error::io("writing launch.json", e))?;
        self.launch(&cfg)
    }

    /// Creates the cgroups and executes `__init` for a prepared directory.
    fn launch(&self, cfg: &LaunchConfig) -> Result<SandboxInfo, Error> {
        let dir = cfg.dir.as_path();
        let _ = fs::remove_file(dir.join(state::STATE_FILE));
        let _ = fs::remove_file(dir.join(state::BOOT_ERROR_FILE));
        self.cgroups.create(&cfg.id, &cfg.resources)?;
        let log = {
            use std::os::unix::fs::OpenOptionsExt;
            fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(dir.join(state::LOG_FILE))
        }
        .map_err(|e| Error::io("creating agent log", e))?;
        let log2 = log.try_clone().map_err(|e| Error::io("creating agent log", e))?;
        // The launch path goes through the environment, not argv: PID 1's
        // command line is readable inside the sandbox and must not show host
        // paths, while its environment is not (the agent is non-dumpable).
        let parent = std::process::id();
        let base = self.base_mntns.as_ref().map(std::os::fd::AsRawFd::as_raw_fd);
        let mut cmd = Command::new(&self.opts.binary);
        // The launcher dies with its caller: a server killed mid-create must
        // not leave a launcher building a sandbox behind the back of the
        // next server, which undoes that create at start. (PID 1, once
        // forked, does not inherit this and outlives everyone, by design.)
        // SAFETY: prctl and getppid are async-signal-safe; nothing else runs
        // between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::getppid() as u32 != parent {
                    return Err(std::io::Error::other("the caller exited before the launcher started"));
                }
                // The base mount namespace on fd 3, open across exec.
                if let Some(fd) = base {
                    let r = if fd == crate::mntns::BASE_FD { libc::fcntl(fd, libc::F_SETFD, 0) } else { libc::dup2(fd, crate::mntns::BASE_FD) };
                    if r < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        cmd.arg0("/sbin/airlock-agent")
            .arg("__init")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .env_clear()
            .env(crate::init::CONFIG_ENV, dir.join(state::LAUNCH_FILE))
            .env("RUST_LOG", std::env::var("AIRLOCK_AGENT_LOG").unwrap_or_else(|_| "warn".into()));
        if base.is_some() {
            cmd.env(crate::mntns::BASE_ENV, crate::mntns::BASE_FD.to_string());
        }
        let status = cmd.status().map_err(|e| Error::io(format!("executing {}", self.opts.binary.display()), e))?;
        if !status.success() {
            let b: Option<BootError> = state::read_json(&dir.join(state::BOOT_ERROR_FILE)).ok();
            return Err(match b {
                Some(b) => Error::Boot { stage: b.stage, message: b.message, errno: b.errno },
                None => Error::Boot { stage: "init".into(), message: format!("init exited with {status}; see {}", dir.join(state::LOG_FILE).display()), errno: None },
            });
        }
        let rs = self.run_state(&cfg.id).ok_or_else(|| Error::Boot { stage: "init".into(), message: "no state written".into(), errno: None })?;
        Ok(self.info(&cfg.id, &rs))
    }

    fn launch_config(&self, id: &str) -> Result<LaunchConfig, Error> {
        if !valid_id(id) {
            return Err(Error::NotFound(id.to_string()));
        }
        state::read_json(&self.dir(id).join(state::LAUNCH_FILE)).map_err(|_| Error::NotFound(id.to_string()))
    }

    /// Kills PID 1 and everything in the sandbox's cgroup and waits until
    /// they are gone.
    fn kill_all(&self, id: &str) -> Result<(), Error> {
        let rs = self.run_state(id);
        let cg = self.cgroups.open(id);
        // Killing PID 1 tears down the whole pid namespace: the kernel kills
        // every process in it, and PID 1 exits only once they all have.
        let pid1 = rs.as_ref().and_then(state::pidfd);
        if let Some(fd) = &pid1 {
            // Through the pidfd, which names PID 1 even if its number were
            // reused meanwhile.
            // SAFETY: pidfd_send_signal on a pidfd we own, no siginfo.
            unsafe { libc::syscall(libc::SYS_pidfd_send_signal, std::os::fd::AsRawFd::as_raw_fd(fd), libc::SIGKILL, std::ptr::null::<libc::siginfo_t>(), 0u32) };
        }
        // A frozen sandbox only dies once thawed.
        if cg.is_frozen() {
            cg.thaw()?;
        }
        let ended = pid1.as_ref().is_none_or(|fd| state::wait_exit(fd, Duration::from_secs(10)));
        // What the cgroup can hold besides: processes of a create cut short
        // before PID 1 existed, or PID 1 stuck past the wait. v1's kill
        // freezes the group to list and kill it, a few milliseconds that a
        // normal kill does not need.
        if !ended || !cg.procs().is_empty() {
            cg.kill_all()?;
            if let Some(rs) = &rs {
                Self::wait_gone(rs, Duration::from_secs(10));
            }
        }
        Ok(())
    }

    /// The snapshot copy proper, of a quiescent writable layer.
    fn copy_upper(&self, cfg: &LaunchConfig, dir: &Path, dest: &Path) -> Result<crate::Snapshot, Error> {
        use airlock_template::copy::{copy_tree, is_empty_dir, IdShift};
        let parent = dest.parent().ok_or_else(|| Error::InvalidSpec("layer destination has no parent".into()))?;
        fs::create_dir_all(parent).map_err(|e| Error::io("creating layer directory", e))?;
        let tmp = parent.join(format!(".snap-{}-{}", cfg.id, std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        let shift = IdShift { base: cfg.id_base, count: IDS_PER_SANDBOX };
        // The identity files are written into every sandbox's own layer.
        let skip = [Path::new("etc/hostname"), Path::new("etc/hosts"), Path::new("etc/resolv.conf")];
        let r = (|| -> std::io::Result<u64> {
            fs::create_dir(&tmp)?;
            let mut bytes = copy_tree(&dir.join("upper/root"), &tmp.join("root"), shift, &skip)?.bytes;
            if !cfg.usr_layers.is_empty() {
                bytes += copy_tree(&dir.join("upper/usr"), &tmp.join("usr"), shift, &[])?.bytes;
            }
            Ok(bytes)
        })();
        let bytes = match r {
            Ok(b) => b,
            Err(e) => {
                let _ = fs::remove_dir_all(&tmp);
                return Err(Error::io(format!("copying the writable layer of {}", cfg.id), e));
            }
        };
        airlock_template::layer::install(&tmp, dest).map_err(|e| Error::io("installing the snapshot layer", std::io::Error::other(e)))?;
        // Empty parts add nothing but overlay depth.
        let etc_only = |p: &Path| fs::read_dir(p).map(|rd| rd.flatten().all(|e| e.file_name() == "etc" && is_empty_dir(&e.path()))).unwrap_or(true);
        let mut root_layers = cfg.root_layers.clone();
        if !etc_only(&dest.join("root")) {
            root_layers.insert(0, dest.join("root"));
        }
        let mut usr_layers = cfg.usr_layers.clone();
        if !cfg.usr_layers.is_empty() && !is_empty_dir(&dest.join("usr")) {
            usr_layers.insert(0, dest.join("usr"));
        }
        let rootfs = crate::RootFs { root_layers, usr_layers, default_user: cfg.default_user.clone(), workdir: cfg.workdir.clone(), env: cfg.env.clone() };
        Ok(crate::Snapshot { rootfs, bytes })
    }

    /// Waits until PID 1 is gone (its pid namespace with it).
    fn wait_gone(rs: &RunState, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while state::is_alive(rs) {
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }
}

fn init_dirs(dir: &Path, layers: usize, usr_layers: usize, id_base: u32) -> Result<(), Error> {
    crate::init::prepare_dirs(dir, layers, usr_layers).map_err(|e| Error::io("creating sandbox directories", e))?;
    // The overlay's root directories take their owner from the upper
    // directory: make it the sandbox's root so `/` and `/usr` are writable inside.
    for d in ["upper/root", "upper/usr"] {
        std::os::unix::fs::lchown(dir.join(d), Some(id_base), Some(id_base)).map_err(|e| Error::io("chown upper", e))?;
    }
    Ok(())
}

impl Backend for NamespaceBackend {
    fn create(&self, spec: &SandboxSpec) -> Result<SandboxInfo, Error> {
        if !valid_id(&spec.id) {
            return Err(Error::InvalidSpec(format!("id {:?} must be 1-64 lowercase letters and digits", spec.id)));
        }
        spec.resources.validate()?;
        if spec.rootfs.root_layers.is_empty() {
            return Err(Error::InvalidSpec("a sandbox needs at least one root layer".into()));
        }
        let dir = self.dir(&spec.id);
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => return Err(Error::AlreadyExists(spec.id.clone())),
            Err(e) => return Err(Error::io("creating sandbox directory", e)),
        }
        let t0 = Instant::now();
        match self.try_create(spec, &dir) {
            Ok(info) => {
                tracing::debug!(sandbox_id = %spec.id, pid = info.pid, elapsed_us = t0.elapsed().as_micros() as u64, "sandbox created");
                Ok(info)
            }
            Err(e) => {
                tracing::warn!(sandbox_id = %spec.id, error = %e, "sandbox creation failed");
                let _ = self.destroy(&spec.id);
                Err(e)
            }
        }
    }

    fn get(&self, id: &str) -> Result<SandboxInfo, Error> {
        if !valid_id(id) {
            return Err(Error::NotFound(id.to_string()));
        }
        match self.run_state(id) {
            Some(rs) if state::is_alive(&rs) => Ok(self.info(id, &rs)),
            _ => Err(Error::NotFound(id.to_string())),
        }
    }

    fn list(&self) -> Result<Vec<SandboxInfo>, Error> {
        let rd = fs::read_dir(self.opts.root.join("sandboxes")).map_err(|e| Error::io("listing sandboxes", e))?;
        let mut v = Vec::new();
        for e in rd.flatten() {
            let id = e.file_name().to_string_lossy().to_string();
            if let Ok(info) = self.get(&id) {
                v.push(info);
            }
        }
        v.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(v)
    }

    fn freeze(&self, id: &str) -> Result<(), Error> {
        self.get(id)?;
        Ok(self.cgroups.open(id).freeze()?)
    }

    fn thaw(&self, id: &str) -> Result<(), Error> {
        self.get(id)?;
        Ok(self.cgroups.open(id).thaw()?)
    }

    fn destroy(&self, id: &str) -> Result<(), Error> {
        if !valid_id(id) {
            return Err(Error::NotFound(id.to_string()));
        }
        let dir = self.dir(id);
        if !dir.exists() {
            return Err(Error::NotFound(id.to_string()));
        }
        self.kill_all(id)?;
        self.cgroups.open(id).remove()?;
        match state::read_json::<LaunchConfig>(&dir.join(state::LAUNCH_FILE)) {
            // The veth dies with the netns, which the kernel removes in the
            // background; its slot is freed once it has (see `retire`).
            Ok(LaunchConfig { net: Some(net), id_base, .. }) => {
                let slot = self.slots.join(((id_base - ID_BASE) / IDS_PER_SANDBOX).to_string());
                crate::network::retire(&net.host_if, slot, self.slot_owner(id));
            }
            _ => self.release_slot(id),
        }
        // Gone from its place at once (a rename); its disk is unmounted and
        // its files removed in the background: for a sandbox with a disk
        // image that is most of a kill's time. A rename that fails (another
        // filesystem under `sandboxes/`) removes them here.
        let trash = self.opts.root.join(TRASH_DIR).join(id);
        if fs::create_dir_all(self.opts.root.join(TRASH_DIR)).and_then(|()| fs::rename(&dir, &trash)).is_ok() {
            discard(trash);
        } else {
            crate::disk::unmount(&dir);
            fs::remove_dir_all(&dir).map_err(|e| Error::io(format!("removing {}", dir.display()), e))?;
        }
        tracing::debug!(sandbox_id = %id, "sandbox destroyed");
        Ok(())
    }

    fn restart(&self, id: &str) -> Result<SandboxInfo, Error> {
        if !valid_id(id) {
            return Err(Error::NotFound(id.to_string()));
        }
        if let Ok(info) = self.get(id) {
            return Ok(info);
        }
        let dir = self.dir(id);
        let cfg: LaunchConfig = state::read_json(&dir.join(state::LAUNCH_FILE)).map_err(|_| Error::NotFound(id.to_string()))?;
        // Leftovers of the previous life: a stale cgroup (no processes) and
        // overlay work directories that must be empty for a new mount.
        let cg = self.cgroups.open(id);
        let _ = cg.kill_all();
        let _ = cg.remove();
        crate::disk::mount_existing(&dir)?;
        for w in ["upper/root-work", "upper/usr-work"] {
            let _ = fs::remove_dir_all(dir.join(w));
        }
        crate::init::prepare_dirs(&dir, cfg.root_layers.len(), cfg.usr_layers.len()).map_err(|e| Error::io("preparing sandbox directories", e))?;
        if let Some(net) = &cfg.net {
            crate::network::delete_veth(&net.host_if);
        }
        self.launch(&cfg)
    }

    fn capture(&self, id: &str, dest: &Path) -> Result<(), Error> {
        let dir = self.dir(id);
        let cfg: LaunchConfig = state::read_json(&dir.join(state::LAUNCH_FILE)).map_err(|_| Error::NotFound(id.to_string()))?;
        // Stop everything first: the writable layer must be quiescent.
        if let Some(rs) = self.run_state(id) {
            if state::is_alive(&rs) {
                // SAFETY: kill(2) of the sandbox's PID 1, verified by start time.
                unsafe { libc::kill(rs.pid as i32, libc::SIGKILL) };
            }
            self.cgroups.open(id).kill_all()?;
            Self::wait_gone(&rs, Duration::from_secs(10));
        }
        let parent = dest.parent().ok_or_else(|| Error::InvalidSpec("layer destination has no parent".into()))?;
        fs::create_dir_all(parent).map_err(|e| Error::io("creating layer directory", e))?;
        let tmp = parent.join(format!(".tmp-{id}"));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp).map_err(|e| Error::io("creating layer directory", e))?;
        for part in ["root", "usr"] {
            fs::rename(dir.join("upper").join(part), tmp.join(part)).map_err(|e| Error::io(format!("moving the {part} layer"), e))?;
        }
        // The per-sandbox identity files are written into every sandbox's
        // own layer; they do not belong to the template.
        for f in ["hostname", "hosts", "resolv.conf"] {
            let _ = fs::remove_file(tmp.join("root/etc").join(f));
        }
        let _ = fs::remove_dir(tmp.join("root/etc"));
        airlock_template::layer::shift_ids(&tmp, cfg.id_base, IDS_PER_SANDBOX).map_err(|e| Error::io("shifting layer ownership to canonical ids", e))?;
        match fs::rename(&tmp, dest) {
            Ok(()) => {}
            // A concurrent identical build got there first: theirs is as good.
            Err(_) if dest.exists() => {
                let _ = fs::remove_dir_all(&tmp);
            }
            Err(e) => return Err(Error::io("installing layer", e)),
        }
        self.destroy(id)
    }

    fn snapshot(&self, id: &str, dest: &Path) -> Result<crate::Snapshot, Error> {
        let cfg = self.launch_config(id)?;
        let dir = self.dir(id);
        let alive = self.run_state(id).is_some_and(|rs| state::is_alive(&rs));
        let cg = self.cgroups.open(id);
        // Freeze unless it already is (a paused sandbox stays paused).
        let thaw_after = alive && !cg.is_frozen();
        if thaw_after {
            cg.freeze()?;
        }
        // A stopped sandbox's disk is not mounted: mount it for the copy.
        let mounted_here = !alive && crate::disk::has_image(&dir) && !crate::disk::is_mounted(&dir.join("upper"));
        let r = (|| {
            if mounted_here {
                crate::disk::mount_existing(&dir)?;
            }
            self.copy_upper(&cfg, &dir, dest)
        })();
        if mounted_here {
            crate::disk::unmount(&dir);
        }
        if thaw_after {
            if let Err(e) = cg.thaw() {
                tracing::error!(sandbox_id = %id, error = %e, "thawing a sandbox after its snapshot failed");
            }
        }
        r
    }

    fn stop(&self, id: &str) -> Result<(), Error> {
        let cfg = self.launch_config(id)?;
        let dir = self.dir(id);
        self.kill_all(id)?;
        self.cgroups.open(id).remove()?;
        if let Some(net) = &cfg.net {
            crate::network::delete_veth(&net.host_if);
        }
        crate::disk::unmount(&dir);
        let _ = fs::remove_file(dir.join(state::STATE_FILE));
        tracing::debug!(sandbox_id = %id, "sandbox stopped");
        Ok(())
    }

    fn kill_processes(&self, id: &str) -> Result<(), Error> {
        let info = self.get(id)?;
        let cg = self.cgroups.open(id);
        let was_frozen = cg.is_frozen();
        // Frozen, nothing can fork while its processes are listed and killed.
        cg.freeze()?;
        let victims: Vec<u32> = cg.procs().into_iter().filter(|p| *p != info.pid).collect();
        for p in &victims {
            // SAFETY: kill(2) of a process in the sandbox's cgroup.
            unsafe { libc::kill(*p as i32, libc::SIGKILL) };
        }
        if !was_frozen {
            cg.thaw()?;
            // Killed processes leave once thawed; the agent reaps them.
            let deadline = Instant::now() + Duration::from_secs(10);
            while cg.procs().iter().any(|p| victims.contains(p)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        tracing::debug!(sandbox_id = %id, killed = victims.len(), "sandbox processes killed");
        Ok(())
    }

    fn reset(&self, id: &str) -> Result<SandboxInfo, Error> {
        let cfg = self.launch_config(id)?;
        let dir = self.dir(id);
        self.stop(id)?;
        // A fresh writable layer: a new image of the same size, or an
        // emptied directory.
        match crate::disk::image_mb(&dir) {
            Some(mb) => {
                let _ = fs::remove_file(dir.join(crate::disk::IMAGE));
                crate::disk::create_and_mount(&self.opts.root.join("disk-cache"), &dir, mb)?;
            }
            None => {
                let upper = dir.join("upper");
                fs::remove_dir_all(&upper).map_err(|e| Error::io("emptying the writable layer", e))?;
            }
        }
        init_dirs(&dir, cfg.root_layers.len(), cfg.usr_layers.len(), cfg.id_base)?;
        self.write_identity_files(&dir.join("upper/root/etc"), &cfg.hostname, cfg.net.is_some(), cfg.id_base)?;
        self.launch(&cfg)
    }

    fn reconfigure(&self, id: &str, env: &BTreeMap<String, String>, resources: Option<crate::Resources>) -> Result<(), Error> {
        if let Some(r) = &resources {
            r.validate()?;
        }
        let mut cfg = self.launch_config(id)?;
        if self.get(id).is_ok() {
            return Err(Error::InvalidSpec(format!("sandbox {id} is running; stop it before changing what it starts with")));
        }
        cfg.env.extend(env.iter().map(|(k, v)| (k.clone(), v.clone())));
        if let Some(r) = resources {
            cfg.resources = r;
        }
        state::write_json(&self.dir(id).join(state::LAUNCH_FILE), &cfg).map_err(|e| Error::io("writing launch.json", e))
    }

    fn resize(&self, id: &str, resources: &crate::Resources, disk_mb: Option<u64>) -> Result<(), Error> {
        resources.validate()?;
        let mut cfg = self.launch_config(id)?;
        self.get(id)?;
        if let Some(mb) = disk_mb {
            if !crate::disk::has_image(&self.dir(id)) {
                return Err(Error::InvalidSpec("the sandbox was created without a disk limit; one cannot be added while it runs".into()));
            }
            crate::disk::grow(&self.dir(id), mb)?;
        }
        self.cgroups.open(id).set_limits(resources)?;
        cfg.resources = *resources;
        state::write_json(&self.dir(id).join(state::LAUNCH_FILE), &cfg).map_err(|e| Error::io("writing launch.json", e))
    }

    fn rekey(&self, id: &str, env: &BTreeMap<String, String>, access_token: Option<&str>) -> Result<(), Error> {
        let mut cfg = self.launch_config(id)?;
        cfg.env = env.clone();
        cfg.access_token = access_token.map(str::to_string);
        state::write_json(&self.dir(id).join(state::LAUNCH_FILE), &cfg).map_err(|e| Error::io("writing launch.json", e))
    }

    fn network_available(&self) -> bool {
        self.network_ready
    }

    fn disk_limits_available(&self) -> bool {
        self.disk_ready
    }

    fn oom_kills(&self, id: &str) -> u64 {
        if !valid_id(id) {
            return 0;
        }
        self.cgroups.open(id).oom_kills()
    }

    fn usage(&self, id: &str) -> Result<Usage, Error> {
        self.get(id)?;
        let mut u = self.cgroups.open(id).usage();
        let upper = self.dir(id).join("upper");
        match crate::disk::limit(&self.dir(id)) {
            Some((used, total)) => {
                u.disk_bytes = used;
                u.disk_limit_bytes = total;
            }
            None => {
                u.disk_bytes = airlock_template::layer::dir_size(&upper);
                // Unlimited: the sandbox can use what the data directory's filesystem has.
                u.disk_limit_bytes = nix::sys::statvfs::statvfs(&upper).map(|s| s.blocks() * s.fragment_size()).unwrap_or(0);
            }
        }
        if let Some(net) = self.launch_config(id).ok().and_then(|c| c.net) {
            // The host end's counters, turned round: what the host end
            // received, the sandbox sent.
            let stat = |f: &str| fs::read_to_string(format!("/sys/class/net/{}/statistics/{f}", net.host_if)).ok().and_then(|s| s.trim().parse::<u64>().ok()).unwrap_or(0);
            u.net_rx_bytes = stat("tx_bytes");
            u.net_tx_bytes = stat("rx_bytes");
        }
        Ok(u)
    }
}
