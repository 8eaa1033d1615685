//! Hostile code inside a sandbox: every escape attempt must fail.
//!
//! Each test plays the attacker from inside a real sandbox, as `user` and
//! as root inside (the interesting attacker: it holds the capabilities a
//! container keeps), and asserts on the specific evidence of the refusal
//! (errno names, exit codes, what a listener saw). Every attempt is paired
//! with a positive control where one makes sense (the host file or port
//! really exists, the same technique works on something the sandbox owns),
//! so a test cannot pass because the probe itself is broken.
//!
//! Raw system calls go through Python's ctypes; their numbers come from the
//! `libc` crate, so the probes follow the architecture the tests run on.
//! Nothing here sends traffic anywhere but this machine.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use airlock_testkit::envd::*;
use bytes::Bytes;

use crate::probe::{expect_results, kv, numbers, run, run_ok, WHO};
use crate::support::*;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// System call numbers for this architecture, as a Python dict literal.
fn syscall_numbers() -> String {
    #[allow(unused_mut)]
    let mut nr: Vec<(&str, libc::c_long)> = vec![
        ("getpid", libc::SYS_getpid),
        ("ptrace", libc::SYS_ptrace),
        ("syslog", libc::SYS_syslog),
        ("personality", libc::SYS_personality),
        ("pivot_root", libc::SYS_pivot_root),
        ("acct", libc::SYS_acct),
        ("mount", libc::SYS_mount),
        ("umount2", libc::SYS_umount2),
        ("swapon", libc::SYS_swapon),
        ("reboot", libc::SYS_reboot),
        ("sethostname", libc::SYS_sethostname),
        ("init_module", libc::SYS_init_module),
        ("finit_module", libc::SYS_finit_module),
        ("delete_module", libc::SYS_delete_module),
        ("clock_settime", libc::SYS_clock_settime),
        ("kexec_load", libc::SYS_kexec_load),
        ("kexec_file_load", libc::SYS_kexec_file_load),
        ("add_key", libc::SYS_add_key),
        ("keyctl", libc::SYS_keyctl),
        ("unshare", libc::SYS_unshare),
        ("perf_event_open", libc::SYS_perf_event_open),
        ("fanotify_init", libc::SYS_fanotify_init),
        ("name_to_handle_at", libc::SYS_name_to_handle_at),
        ("open_by_handle_at", libc::SYS_open_by_handle_at),
        ("setns", libc::SYS_setns),
        ("bpf", libc::SYS_bpf),
        ("userfaultfd", libc::SYS_userfaultfd),
        ("io_uring_setup", libc::SYS_io_uring_setup),
        ("open_tree", libc::SYS_open_tree),
        ("move_mount", libc::SYS_move_mount),
        ("fsopen", libc::SYS_fsopen),
        ("clone", libc::SYS_clone),
        ("clone3", libc::SYS_clone3),
    ];
    #[cfg(target_arch = "x86_64")]
    nr.extend([("iopl", libc::SYS_iopl), ("ioperm", libc::SYS_ioperm)]);
    numbers(&nr)
}

/// Runs a Python probe (prelude and this suite's numbers) as `who`.
async fn py(sbx: &Sandbox, who: &str, body: &str) -> CmdResult {
    crate::probe::py(sbx, who, &syscall_numbers(), body).await
}

/// A file on the host with random content, removed on drop.
struct HostFile {
    path: PathBuf,
    content: String,
}

impl HostFile {
    fn new(path: PathBuf) -> Self {
        let content = format!("host-secret-{}", new_id());
        std::fs::write(&path, &content).expect("write host secret");
        assert_eq!(std::fs::read_to_string(&path).expect("host reads its own secret"), content, "positive control: the secret exists on the host");
        Self { path, content }
    }
}

impl Drop for HostFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A TCP listener on the host that records who connected.
struct HostListener {
    addr: SocketAddr,
    peers: Arc<Mutex<Vec<SocketAddr>>>,
    stop: Arc<AtomicBool>,
}

impl HostListener {
    fn bind(addr: &str) -> Self {
        let l = TcpListener::bind(addr).expect("bind host listener");
        l.set_nonblocking(true).expect("nonblocking");
        let addr = l.local_addr().expect("local addr");
        let peers = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (p, s) = (peers.clone(), stop.clone());
        std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut conn, peer)) => {
                        p.lock().expect("peers").push(peer);
                        let _ = conn.write_all(b"host-listener\n");
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Self { addr, peers, stop }
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }

    fn peers(&self) -> Vec<SocketAddr> {
        self.peers.lock().expect("peers").clone()
    }

    /// Connects from the host itself and checks the listener saw it.
    fn assert_reachable_from_host(&self, ip: Ipv4Addr) {
        let before = self.peers().len();
        let mut s = TcpStream::connect_timeout(&SocketAddr::new(ip.into(), self.port()), Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("positive control: the host reaches its own listener on {ip}:{}: {e}", self.port()));
        let mut banner = String::new();
        s.read_to_string(&mut banner).expect("banner");
        assert_eq!(banner, "host-listener\n");
        let deadline = Instant::now() + Duration::from_secs(2);
        while self.peers().len() == before && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(self.peers().len(), before + 1, "the listener recorded the host's connection");
    }
}

impl Drop for HostListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Host side of the simulated neighbour network (`Neighbour`): a test
/// fixture that comes and goes while other tests run, not a host address.
const NEIGHBOUR_IF_PREFIX: &str = "alnb";

/// The host's own IPv4 addresses, sandbox veths and test fixtures excluded.
fn host_ipv4() -> Vec<(String, Ipv4Addr)> {
    let out = std::process::Command::new("ip").args(["-4", "-o", "addr", "show"]).output().expect("ip addr");
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let ifname = f.get(1)?.trim_end_matches(':').to_string();
            let i = f.iter().position(|w| *w == "inet")?;
            let ip: Ipv4Addr = f.get(i + 1)?.split('/').next()?.parse().ok()?;
            (!ifname.starts_with("alk") && !ifname.starts_with(NEIGHBOUR_IF_PREFIX)).then_some((ifname, ip))
        })
        .collect()
}

/// A Python probe that connects to every `(label, ip, port)` at once, two
/// seconds each, and prints `label ok|timeout|ERRNO`.
fn connect_probe(targets: &[(String, String, u16)]) -> String {
    let list: Vec<String> = targets.iter().map(|(l, ip, p)| format!("('{l}', '{ip}', {p})")).collect();
    format!(
        r#"
targets = [{}]
res = {{}}
def probe(label, ip, port):
    fam = socket.AF_INET6 if ':' in ip else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(2)
    try:
        s.connect((ip, port))
        res[label] = "ok"
    except socket.timeout:
        res[label] = "timeout"
    except OSError as e:
        res[label] = errno.errorcode.get(e.errno, str(e.errno))
    finally:
        s.close()
ts = [threading.Thread(target=probe, args=t) for t in targets]
for t in ts: t.start()
for t in ts: t.join()
for k in sorted(res): print(k, res[k])
"#,
        list.join(", ")
    )
}

/// Where the harness keeps a sandbox's files on the host.
fn sandbox_dir(sbx: &Sandbox) -> PathBuf {
    harness().root.join("sandboxes").join(sbx.id())
}

/// Path of a cgroup v1 controller's file for a sandbox, or the v2 equivalent.
fn cgroup_file(sbx: &Sandbox, v1: (&str, &str), v2: &str) -> PathBuf {
    let p = Path::new("/sys/fs/cgroup").join(v1.0).join("airlock").join(sbx.id()).join(v1.1);
    if p.exists() {
        p
    } else {
        Path::new("/sys/fs/cgroup/airlock").join(sbx.id()).join(v2)
    }
}

fn read_trim(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display())).trim().to_string()
}

/// Compiles a C program inside the sandbox (as root, into /tmp, readable by all).
async fn compile(sbx: &Sandbox, name: &str, src: &str) -> String {
    let bin = format!("/tmp/{name}");
    run_ok(sbx, "root", &format!("cat > {bin}.c <<'CEOF'\n{src}\nCEOF\ntimeout -s KILL 60 gcc -O0 -o {bin} {bin}.c && chmod 755 {bin}")).await;
    bin
}

// ---------------------------------------------------------------------------
// 1. Host files
// ---------------------------------------------------------------------------

#[tokio::test]
async fn host_files_cannot_be_found_or_read() {
    let sbx = Sandbox::new();
    let tok = new_id();
    let name = format!("airlock-secret-{tok}");
    let secrets = [
        HostFile::new(PathBuf::from("/root").join(&name)),
        HostFile::new(PathBuf::from("/tmp").join(&name)),
        // The sandbox's own directory on the host, next to its rootfs.
        HostFile::new(sandbox_dir(&sbx).join(&name)),
    ];
    let sdir = sandbox_dir(&sbx).display().to_string();
    for who in WHO {
        let script = format!(
            r#"
name={name}
try() {{ if out=$(timeout -s KILL 5 cat "$1" 2>&1); then echo "READ $1 $out"; else echo "DENIED $1 ${{out##*: }}"; fi; }}
# Positive control: the same commands read and find a file planted inside.
echo inside-{tok} > /tmp/$name.inside-$(id -u)
try /tmp/$name.inside-$(id -u)
cat /proc/self/environ >/dev/null && echo "SELF-ENVIRON ok"
try /root/$name
try /tmp/$name
try {sdir}/$name
try {sdir}/launch.json
try /proc/1/root/root/$name
try /proc/1/root/tmp/$name
try /proc/1/cwd/root/$name
try /proc/self/root/root/$name
try /proc/self/root/../../../../root/$name
try /../../../../../../root/$name
try /proc/self/cwd/../../../../../../tmp/$name
ln -sf /root/$name /tmp/link1-$(id -u) && try /tmp/link1-$(id -u)
ln -sf {sdir}/$name /tmp/link2-$(id -u) && try /tmp/link2-$(id -u)
ln -sf /proc/1/root/root/$name /tmp/link3-$(id -u) && try /tmp/link3-$(id -u)
try /proc/1/environ
for n in 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15; do try /proc/1/fd/$n; done
if out=$(ls /proc/1/fd 2>&1); then echo "LISTED /proc/1/fd $out"; else echo "DENIED ls-/proc/1/fd ${{out##*: }}"; fi
if out=$(readlink -v /proc/1/root 2>&1); then echo "LINK /proc/1/root $out"; else echo "DENIED readlink-/proc/1/root ${{out##*: }}"; fi
echo "SELF-ROOT $(readlink /proc/self/root)"
echo "DOTDOT $(cd / && cd ../../.. && pwd) $(cd / && cd ../../.. && ls | tr '\n' ' ')"
find / \( -path /proc -o -path /sys -o -path /usr \) -prune -o -name "$name*" -print 2>/dev/null | sed 's/^/FOUND /'
"#
        );
        let r = run(&sbx, who, &script).await;
        for s in &secrets {
            assert!(!r.stdout.contains(&s.content) && !r.stderr.contains(&s.content), "as {who}: host secret leaked\n{r:#?}");
        }
        let lines: Vec<&str> = r.stdout.lines().collect();
        let mine = format!("/tmp/{name}.inside-{}", if who == "root" { 0 } else { 1000 });
        assert!(lines.contains(&format!("READ {mine} inside-{tok}").as_str()), "as {who}: positive control read\n{r:#?}");
        assert!(lines.contains(&"SELF-ENVIRON ok"), "as {who}: own environ readable\n{r:#?}");
        let found: Vec<&str> = lines.iter().filter_map(|l| l.strip_prefix("FOUND ")).collect();
        assert!(found.contains(&mine.as_str()), "as {who}: positive control: find sees the file planted inside\n{r:#?}");
        assert!(found.iter().all(|f| f.starts_with(&format!("/tmp/{name}.inside-"))), "as {who}: find sees only files planted inside\n{r:#?}");
        assert!(lines.contains(&"SELF-ROOT /"), "as {who}\n{r:#?}");
        assert!(lines.iter().any(|l| l.starts_with("DOTDOT / ") && l.contains(" home ") && l.contains(" usr ")), "as {who}: `..` stops at the sandbox root\n{r:#?}");
        let mut denied = 0;
        for l in &lines {
            if let Some(rest) = l.strip_prefix("DENIED ") {
                denied += 1;
                let (path, why) = rest.split_once(' ').expect("reason");
                let via_pid1 = path.contains("/proc/1/") || path.ends_with("link3-0") || path.ends_with("link3-1000");
                let ok = if via_pid1 {
                    // The agent is non-dumpable: /proc/1's private entries
                    // refuse everyone in the sandbox, root included.
                    why == "Permission denied"
                } else if who == "root" {
                    why == "No such file or directory"
                } else {
                    why == "No such file or directory" || why == "Permission denied"
                };
                assert!(ok, "as {who}: {path} refused with an unexpected reason {why:?}\n{r:#?}");
            }
            assert!(!l.starts_with("READ ") || l.contains(&mine), "as {who}: read something it should not: {l}\n{r:#?}");
            assert!(!l.starts_with("LISTED ") && !l.starts_with("LINK "), "as {who}: {l}\n{r:#?}");
        }
        assert_eq!(denied, 33, "as {who}: every attempt was refused\n{r:#?}");
    }

    // open_by_handle_at ("shocker"): a handle for the file system's root
    // inode, forged against the mount holding the host's /usr, and a real
    // handle of a file the sandbox owns. Both refused; name_to_handle_at
    // (the harmless half) works, so the probe itself is sound.
    for who in WHO {
        let r = py(
            &sbx,
            who,
            r#"
class FH(ctypes.Structure):
    _fields_ = [("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int), ("f_handle", ctypes.c_ubyte * 128)]
p = "/tmp/handle-probe-%d" % os.getuid()
open(p, "w").write("x")
fh = FH(); fh.handle_bytes = 128
mnt = ctypes.c_int(0)
show("name_to_handle_at", "name_to_handle_at", -100, p.encode(), ctypes.byref(fh), ctypes.byref(mnt), 0)
d = os.open("/tmp", os.O_RDONLY)
show("open_by_handle_at-own", "open_by_handle_at", d, ctypes.byref(fh), os.O_RDONLY)
forged = FH(); forged.handle_bytes = 8; forged.handle_type = 1
struct.pack_into("<II", forged.f_handle, 0, 2, 0)
u = os.open("/usr", os.O_RDONLY)
show("open_by_handle_at-forged", "open_by_handle_at", u, ctypes.byref(forged), os.O_RDONLY)
"#,
        )
        .await;
        expect_results(who, &r, &[("name_to_handle_at", "ok"), ("open_by_handle_at-own", "EPERM"), ("open_by_handle_at-forged", "EPERM")]);
    }
    drop(secrets);
}

/// Root inside holds CAP_SYS_CHROOT; the classic chroot escape (chroot
/// into a subdirectory, then climb `..` from a directory outside it) only
/// reaches the root of the sandbox's mount namespace.
#[tokio::test]
async fn chroot_escape_only_reaches_the_sandbox_root() {
    let sbx = Sandbox::new();
    let secret = HostFile::new(PathBuf::from("/root").join(format!("airlock-chroot-{}", new_id())));
    run_ok(&sbx, "root", "echo planted > /root/inside-marker").await;
    let r = py(
        &sbx,
        "root",
        &format!(
            r#"
os.makedirs("/tmp/jail", exist_ok=True)
outside = os.open("/", os.O_RDONLY)
oserr("chroot", lambda: os.chroot("/tmp/jail"))
print("jailed-root", sorted(os.listdir("/")) == [], flush=True)
os.fchdir(outside)
for _ in range(64):
    os.chdir("..")
oserr("chroot-dot", lambda: os.chroot("."))
print("escaped-listing", " ".join(sorted(os.listdir("/"))), flush=True)
print("marker", open("/root/inside-marker").read().strip(), flush=True)
oserr("host-secret", lambda: open("{secret}").read())
"#,
            secret = secret.path.display()
        ),
    )
    .await;
    expect_results("root", &r, &[("chroot", "ok"), ("jailed-root", "True"), ("chroot-dot", "ok"), ("marker", "planted"), ("host-secret", "ENOENT")]);
    let listing = kv(&r.stdout).remove("escaped-listing").unwrap_or_default();
    assert!(listing.split(' ').any(|d| d == "home"), "the climb ends at the sandbox root: {r:#?}");
    assert!(!listing.split(' ').any(|d| d.starts_with("airlock-it-") || d == "rootfs"), "{r:#?}");
}

// ---------------------------------------------------------------------------
// 2. Host processes
// ---------------------------------------------------------------------------

#[tokio::test]
async fn host_processes_are_invisible_and_unkillable() {
    let sbx = Sandbox::new();
    let mut victim = std::process::Command::new("sleep").arg("60").spawn().expect("host sleep");
    let vpid = victim.id();
    let me = std::process::id();
    assert!(Path::new(&format!("/proc/{vpid}")).exists() && Path::new(&format!("/proc/{me}")).exists(), "positive control: the host sees both");
    let r = run(
        &sbx,
        "root",
        &format!(
            r#"
echo "SELF $$"
for d in /proc/[0-9]*; do printf 'PROC %s %s\n' "${{d#/proc/}}" "$(tr '\0' ' ' < $d/cmdline 2>/dev/null)"; done
ps -e -o pid=,args= | sed 's/^ */PS /'
out=$(kill -9 {vpid} 2>&1); echo "KILL-HOST $? ${{out##*- }}"
out=$(kill -0 {me} 2>&1); echo "SIGNAL-TEST $? ${{out##*- }}"
sleep 30 & c=$!; kill -9 $c; wait $c; echo "KILL-OWN $?"
sleep 30 & kill -9 -1; echo "KILL-ALL $?"
"#
        ),
    )
    .await;
    let lines: Vec<&str> = r.stdout.lines().collect();
    let pids: Vec<u32> = lines.iter().filter_map(|l| l.strip_prefix("PROC ")?.split(' ').next()?.parse().ok()).collect();
    let ps = lines.iter().filter(|l| l.starts_with("PS ")).count();
    assert!(pids.contains(&1), "PID 1 (the agent) is visible: {r:#?}");
    assert!(pids.len() < 12 && ps < 12, "only the sandbox's few processes are visible: {r:#?}");
    assert!(!pids.contains(&vpid) && !pids.contains(&me), "host pids are not in the sandbox's /proc: {r:#?}");
    for l in &lines {
        if l.starts_with("PROC ") || l.starts_with("PS ") {
            assert!(!l.contains("sleep 60") && !l.contains("/deps/it-") && !l.contains("cargo"), "host process visible: {l}\n{r:#?}");
        }
    }
    expect_results("root", &r, &[("KILL-HOST", "1 No such process"), ("SIGNAL-TEST", "1 No such process"), ("KILL-OWN", "137"), ("KILL-ALL", "0")]);
    assert!(victim.try_wait().expect("try_wait").is_none(), "the host process survived kill -9 from inside");
    assert_eq!(run_ok(&sbx, "user", "echo alive").await.stdout, "alive\n", "the agent survived kill -9 -1");
    let _ = victim.kill();
    let _ = victim.wait();
}

// ---------------------------------------------------------------------------
// 3. /proc and /sys writes
// ---------------------------------------------------------------------------

#[tokio::test]
async fn proc_sys_and_sysrq_are_read_only_for_root_inside() {
    let sbx = Sandbox::new();
    let core_before = std::fs::read_to_string("/proc/sys/kernel/core_pattern").expect("host core_pattern");
    let r = run(
        &sbx,
        "root",
        r#"
w() { if out=$( { printf '%s\n' "$2" > "$1"; } 2>&1); then echo "WROTE $1"; else echo "DENIED $1 ${out##*: }"; fi; }
w /tmp/probe x
test -e /proc/sysrq-trigger && echo "EXISTS /proc/sysrq-trigger" && w /proc/sysrq-trigger h
for f in /proc/sys/kernel/core_pattern /proc/sys/kernel/sysrq /proc/sys/kernel/panic /proc/sys/vm/overcommit_memory /proc/sys/net/ipv4/ip_forward /proc/sys/kernel/hostname /sys/class/net/lo/mtu /sys/kernel/profiling; do
  [ -e $f ] || { echo "MISSING $f"; continue; }
  v=$(cat $f); echo "VALUE $f $v"
  # Writing the current value back: harmless even if it were allowed.
  w $f "$v"
done
echo "CGROUPFS $(ls -A /sys/fs/cgroup | wc -l)"
w /sys/fs/cgroup/escape 1
# The sandbox's own cgroup is visible (runtimes size themselves by it),
# read-only, and nothing above or beside it shows.
for f in /sys/fs/cgroup/memory.max /sys/fs/cgroup/memory/memory.limit_in_bytes; do
  [ -e $f ] && { echo "LIMIT $(cat $f)"; w $f 1073741824; }
done
for d in $(find /sys/fs/cgroup -mindepth 1 -type d); do echo "CGDIR ${d#/sys/fs/cgroup/}"; done
"#,
    )
    .await;
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert!(lines.contains(&"WROTE /tmp/probe"), "positive control: writing works where allowed\n{r:#?}");
    // Kernels built without magic SysRq (this host's) have no trigger at
    // all; where it exists, the sandbox sees it and cannot write it.
    let sysrq = Path::new("/proc/sysrq-trigger").exists();
    assert_eq!(lines.contains(&"EXISTS /proc/sysrq-trigger"), sysrq, "{r:#?}");
    if sysrq {
        assert!(lines.contains(&"DENIED /proc/sysrq-trigger Read-only file system"), "{r:#?}");
    }
    assert!(lines.iter().any(|l| l.starts_with("VALUE /proc/sys/kernel/core_pattern")), "positive control: readable\n{r:#?}");
    assert!(!lines.iter().any(|l| l.starts_with("WROTE /proc") || l.starts_with("WROTE /sys")), "a kernel setting was written\n{r:#?}");
    for f in ["/proc/sys/kernel/core_pattern", "/proc/sys/kernel/panic", "/proc/sys/vm/overcommit_memory", "/proc/sys/net/ipv4/ip_forward", "/sys/class/net/lo/mtu"] {
        assert!(lines.contains(&format!("DENIED {f} Read-only file system").as_str()), "{f}\n{r:#?}");
    }
    assert!(lines.iter().any(|l| l.starts_with("DENIED /sys/fs/cgroup/escape ")), "{r:#?}");
    let limit = read_trim(&cgroup_file(&sbx, ("memory", "memory.limit_in_bytes"), "memory.max"));
    assert!(lines.contains(&format!("LIMIT {limit}").as_str()), "the sandbox sees its own memory limit ({limit})\n{r:#?}");
    assert!(lines.iter().any(|l| l.starts_with("DENIED /sys/fs/cgroup/memory") && l.ends_with("Read-only file system")), "{r:#?}");
    // v2: no directory at all (the sandbox's group is the root); v1: one
    // per controller hierarchy, with no group inside any of them.
    for d in lines.iter().filter_map(|l| l.strip_prefix("CGDIR ")) {
        assert!(!d.contains('/') && ["memory", "cpu", "cpuacct", "pids", "cpu,cpuacct"].contains(&d), "{d} shows more than the sandbox's own cgroup\n{r:#?}");
    }
    assert_eq!(std::fs::read_to_string("/proc/sys/kernel/core_pattern").expect("core_pattern"), core_before);
}

// ---------------------------------------------------------------------------
// 4. Mounting
// ---------------------------------------------------------------------------

#[tokio::test]
async fn mounting_anything_fails_for_root_inside() {
    let sbx = Sandbox::new();
    let r = run(
        &sbx,
        "root",
        r#"
before=$(wc -l < /proc/self/mountinfo)
test -d /mnt && echo "MNT-EXISTS"
m() { label=$1; shift; out=$(timeout -s KILL 5 "$@" 2>&1); echo "RC-$label $? $out"; }
m tmpfs mount -t tmpfs none /mnt
m bind mount --bind /tmp /mnt
m proc mount -t proc proc /mnt
m cgroup mount -t cgroup -o memory cgroup /mnt
m remount mount -o remount,rw /proc/sys
m umount umount /proc/sys
m umount-lazy umount -l /sys
echo "MOUNTS $before $(wc -l < /proc/self/mountinfo)"
"#,
    )
    .await;
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert!(lines.contains(&"MNT-EXISTS"), "{r:#?}");
    for label in ["tmpfs", "bind", "proc", "cgroup", "remount"] {
        let l = lines.iter().find(|l| l.starts_with(&format!("RC-{label} "))).unwrap_or_else(|| panic!("{label}: {r:#?}"));
        assert!(l.starts_with(&format!("RC-{label} 32 ")) && l.contains("permission denied"), "mount {label} refused with EPERM: {l}\n{r:#?}");
    }
    for label in ["umount", "umount-lazy"] {
        let l = lines.iter().find(|l| l.starts_with(&format!("RC-{label} "))).unwrap_or_else(|| panic!("{label}: {r:#?}"));
        assert!(l.starts_with(&format!("RC-{label} 32 ")) && (l.contains("must be superuser") || l.contains("Operation not permitted")), "{label}: {l}\n{r:#?}");
    }
    let counts: Vec<&str> = lines.iter().find_map(|l| l.strip_prefix("MOUNTS ")).expect("counts").split(' ').collect();
    assert_eq!(counts[0], counts[1], "the mount table is unchanged\n{r:#?}");

    for who in WHO {
        let r = py(
            &sbx,
            who,
            r#"
show("mount-tmpfs", "mount", b"none", b"/mnt", b"tmpfs", 0, None)
show("mount-bind", "mount", b"/tmp", b"/mnt", None, 4096, None)
show("mount-remount-proc-sys", "mount", None, b"/proc/sys", None, 32 | 4096, None)
show("umount2-proc-sys", "umount2", b"/proc/sys", 2)
show("fsopen", "fsopen", b"tmpfs", 0)
show("open_tree", "open_tree", -100, b"/proc", 1)
show("move_mount", "move_mount", -100, b"/tmp", -100, b"/mnt", 0)
show("pivot_root", "pivot_root", b"/tmp", b"/tmp")
show("getpid", "getpid")
"#,
        )
        .await;
        expect_results(
            who,
            &r,
            &[
                ("mount-tmpfs", "EPERM"),
                ("mount-bind", "EPERM"),
                ("mount-remount-proc-sys", "EPERM"),
                ("umount2-proc-sys", "EPERM"),
                ("fsopen", "EPERM"),
                ("open_tree", "EPERM"),
                ("move_mount", "EPERM"),
                ("pivot_root", "EPERM"),
                ("getpid", "ok"),
            ],
        );
    }
}

// ---------------------------------------------------------------------------
// 5. Kernel modules
// ---------------------------------------------------------------------------

#[tokio::test]
async fn kernel_modules_cannot_be_loaded_or_removed() {
    let sbx = Sandbox::new();
    for who in WHO {
        let r = py(
            &sbx,
            who,
            r#"
image = b"\x7fELF" + b"\0" * 4092
p = "/tmp/evil-%d.ko" % os.getuid()
open(p, "wb").write(image)
fd = oserr("open-module-file", lambda: os.open(p, os.O_RDONLY))
buf = ctypes.create_string_buffer(image)
show("init_module", "init_module", buf, len(image), b"")
show("finit_module", "finit_module", fd, b"", 0)
# A name no module has: were the call allowed, it would answer ENOENT.
show("delete_module", "delete_module", b"airlock_no_such_module", 0x800)
"#,
        )
        .await;
        expect_results(who, &r, &[("open-module-file", "ok"), ("init_module", "EPERM"), ("finit_module", "EPERM"), ("delete_module", "EPERM")]);
    }
    // Where kmod is installed (not on every host), insmod of a real module
    // (kmod checks a file before the call, so a junk one proves nothing)
    // must fail the same way.
    let r = run(
        &sbx,
        "root",
        "if ! command -v insmod >/dev/null; then echo 'RC absent'; exit; fi; \
         m=$(find /lib/modules /usr/lib/modules -name 'dummy.ko*' 2>/dev/null | head -1); \
         if [ -z \"$m\" ]; then echo 'RC no-module'; exit; fi; insmod \"$m\"; echo \"RC $?\"",
    )
    .await;
    assert!(r.stdout.contains("RC absent") || r.stdout.contains("RC no-module") || (r.stdout.contains("RC 1") && r.stderr.contains("Operation not permitted")), "{r:#?}");
}

// ---------------------------------------------------------------------------
// 6. ptrace
// ---------------------------------------------------------------------------

const PTRACE_C: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ptrace.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile long marker = 0x41697231;

static const char *res(long r) { return r >= 0 ? "ok" : strerrorname_np(errno); }

int main(void) {
    pid_t c = fork();
    if (c == 0) { for (;;) pause(); }
    errno = 0;
    long r = ptrace(PTRACE_ATTACH, c, 0, 0);
    printf("child-attach %s\n", res(r));
    if (r == 0) {
        int st = 0;
        waitpid(c, &st, 0);
        printf("child-stopped %s\n", WIFSTOPPED(st) ? "yes" : "no");
        errno = 0;
        long word = ptrace(PTRACE_PEEKDATA, c, (void *)&marker, 0);
        printf("child-peek %s\n", word == marker ? "marker" : "wrong");
        ptrace(PTRACE_DETACH, c, 0, 0);
    }
    kill(c, SIGKILL);
    waitpid(c, 0, 0);

    errno = 0;
    r = ptrace(PTRACE_ATTACH, 1, 0, 0);
    printf("pid1-attach %s\n", res(r));
    if (r == 0) ptrace(PTRACE_DETACH, 1, 0, 0);
    errno = 0;
    r = ptrace(PTRACE_SEIZE, 1, 0, 0);
    printf("pid1-seize %s\n", res(r));
    if (r == 0) ptrace(PTRACE_DETACH, 1, 0, 0);
    int fd = open("/proc/1/mem", O_RDONLY);
    printf("pid1-mem %s\n", res(fd));
    char buf[8];
    struct iovec l = { buf, sizeof buf }, rem = { (void *)&marker, sizeof buf };
    errno = 0;
    printf("pid1-vm-read %s\n", res(process_vm_readv(1, &l, 1, &rem, 1, 0)));
    fflush(stdout);
    return 0;
}
"#;

#[tokio::test]
async fn ptrace_reaches_own_children_but_never_the_agent() {
    let sbx = Sandbox::new();
    let bin = compile(&sbx, "ptrace-probe", PTRACE_C).await;
    for who in WHO {
        let r = run(&sbx, who, &format!("timeout -s KILL 20 {bin}")).await;
        expect_results(
            who,
            &r,
            &[
                ("child-attach", "ok"),
                ("child-stopped", "yes"),
                ("child-peek", "marker"),
                ("pid1-attach", "EPERM"),
                ("pid1-seize", "EPERM"),
                ("pid1-mem", "EACCES"),
                ("pid1-vm-read", "EPERM"),
            ],
        );
        // Python ctypes, the way a script would try it.
        let p = py(&sbx, who, "show('pid1-attach', 'ptrace', 16, 1, 0, 0)").await;
        expect_results(who, &p, &[("pid1-attach", "EPERM")]);
    }
    assert_eq!(run_ok(&sbx, "user", "echo alive").await.stdout, "alive\n", "the agent is not left stopped");
}

// ---------------------------------------------------------------------------
// 7. Devices
// ---------------------------------------------------------------------------

#[tokio::test]
async fn devices_cannot_be_created_and_host_devices_are_absent() {
    // A real block device of the host, for the positive control and for
    // its numbers.
    let host_blk =
        std::fs::read_dir("/dev").expect("host /dev").flatten().find(|e| e.file_type().map(|t| t.is_block_device()).unwrap_or(false)).expect("the host has a block device");
    let rdev = host_blk.metadata().expect("stat").rdev();
    let (maj, min) = (libc::major(rdev), libc::minor(rdev));
    let host_name = host_blk.file_name().to_string_lossy().to_string();
    std::fs::File::open(host_blk.path()).expect("positive control: host root opens its block device");

    let sbx = Sandbox::new();
    let r = run(
        &sbx,
        "root",
        &format!(
            r#"
m() {{ out=$(mknod "$@" 2>&1); echo "MKNOD $1 $? ${{out##*: }}"; }}
m /tmp/{host_name} b {maj} {min}
m /root/{host_name} b {maj} {min}
m /root/mem c 1 1
m /root/kmsg c 1 11
m /root/null c 1 3
m /root/fifo p
echo "DEV $(ls -A /dev | tr '\n' ' ')"
for d in /dev/{host_name} /dev/mem /dev/kmem /dev/port /dev/kmsg /dev/kvm /dev/loop0 /dev/loop-control /dev/fuse /dev/net/tun; do test -e $d && echo "PRESENT $d"; done
true
"#
        ),
    )
    .await;
    let lines: Vec<&str> = r.stdout.lines().collect();
    for p in [format!("/tmp/{host_name}"), format!("/root/{host_name}"), "/root/mem".into(), "/root/kmsg".into(), "/root/null".into()] {
        assert!(lines.contains(&format!("MKNOD {p} 1 Operation not permitted").as_str()), "{p}\n{r:#?}");
    }
    assert!(lines.contains(&"MKNOD /root/fifo 0 "), "positive control: mknod of a fifo works\n{r:#?}");
    assert!(!lines.iter().any(|l| l.starts_with("PRESENT ")), "{r:#?}");
    let allowed: BTreeSet<&str> = ["null", "zero", "full", "random", "urandom", "tty", "pts", "shm", "ptmx", "fd", "stdin", "stdout", "stderr", "console", "mqueue"].into();
    let dev = lines.iter().find_map(|l| l.strip_prefix("DEV ")).expect("dev listing");
    for d in dev.split_whitespace() {
        assert!(allowed.contains(d), "unexpected /dev/{d} inside\n{r:#?}");
    }
    let p = py(&sbx, "root", &format!("oserr('mknod-block', lambda: os.mknod('/root/blk2', 0o600 | stat.S_IFBLK, os.makedev({maj}, {min})))")).await;
    expect_results("root", &p, &[("mknod-block", "EPERM")]);
}

// ---------------------------------------------------------------------------
// 8. Namespaces
// ---------------------------------------------------------------------------

#[tokio::test]
async fn new_namespaces_and_setns_are_refused() {
    let sbx = Sandbox::new();
    for who in WHO {
        let r = run(
            &sbx,
            who,
            r#"
u() { label=$1; shift; out=$(timeout -s KILL 5 unshare "$@" true 2>&1); echo "UNSHARE-$label $? ${out##*: }"; }
u user-root -U -r
u user -U
u mount -m
u net -n
u pid -p -f
u user-mount -U -r -m
"#,
        )
        .await;
        for label in ["user-root", "user", "mount", "net", "pid", "user-mount"] {
            assert!(r.stdout.lines().any(|l| l == format!("UNSHARE-{label} 1 Operation not permitted")), "as {who}: unshare {label}\n{r:#?}");
        }
        let p = py(
            &sbx,
            who,
            r#"
CLONE_NEWNS, CLONE_NEWCGROUP, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x20000, 0x2000000, 0x4000000, 0x8000000, 0x10000000, 0x20000000, 0x40000000
show("unshare-none", "unshare", 0)
for n, f in [("user", CLONE_NEWUSER), ("mount", CLONE_NEWNS), ("net", CLONE_NEWNET), ("pid", CLONE_NEWPID), ("uts", CLONE_NEWUTS), ("ipc", CLONE_NEWIPC), ("cgroup", CLONE_NEWCGROUP), ("time", 0x80)]:
    show("unshare-" + n, "unshare", f)
def clone(label, flags):
    r, res = sys_("clone", flags | 17, 0, 0, 0, 0)
    if r == 0:
        os._exit(0)
    if r > 0:
        os.waitpid(r, 0)
    print(label, res, flush=True)
clone("clone-plain", 0)
clone("clone-user", CLONE_NEWUSER)
clone("clone-user-mount", CLONE_NEWUSER | CLONE_NEWNS)
clone("clone-net", CLONE_NEWNET)
args = ctypes.create_string_buffer(struct.pack("<QQQQQQQQ", CLONE_NEWUSER, 0, 0, 0, 17, 0, 0, 0), 88)
r, res = sys_("clone3", args, 88)
if r == 0:
    os._exit(0)
print("clone3-user", res, flush=True)
for ns in ["user", "mnt", "net", "pid", "uts"]:
    fd = os.open("/proc/self/ns/" + ns, os.O_RDONLY)
    show("setns-self-" + ns, "setns", fd, 0)
    oserr("open-pid1-" + ns, lambda: os.open("/proc/1/ns/" + ns, os.O_RDONLY))
"#,
        )
        .await;
        let mut want: Vec<(String, &str)> =
            [("unshare-none", "ok"), ("clone-plain", "ok"), ("clone-user", "EPERM"), ("clone-user-mount", "EPERM"), ("clone-net", "EPERM"), ("clone3-user", "ENOSYS")]
                .iter()
                .map(|(l, r)| (l.to_string(), *r))
                .collect();
        for n in ["user", "mount", "net", "pid", "uts", "ipc", "cgroup", "time"] {
            want.push((format!("unshare-{n}"), "EPERM"));
        }
        for ns in ["user", "mnt", "net", "pid", "uts"] {
            want.push((format!("setns-self-{ns}"), "EPERM"));
            want.push((format!("open-pid1-{ns}"), "EACCES"));
        }
        expect_results(who, &p, &want);
    }
}

// ---------------------------------------------------------------------------
// 9. Network to the host
// ---------------------------------------------------------------------------

#[tokio::test]
async fn the_host_is_unreachable_from_inside() {
    let any = HostListener::bind("0.0.0.0:0");
    let lo = HostListener::bind("127.0.0.1:0");
    let host_ips = host_ipv4();
    let external: Vec<&(String, Ipv4Addr)> = host_ips.iter().filter(|(_, ip)| !ip.is_loopback()).collect();
    assert!(!external.is_empty(), "the host has a non-loopback address: {host_ips:?}");
    for (_, ip) in &host_ips {
        any.assert_reachable_from_host(*ip);
    }
    lo.assert_reachable_from_host(Ipv4Addr::LOCALHOST);
    let host_peers = any.peers().len() + lo.peers().len();

    let (on, off) = tokio::join!(tokio::task::spawn_blocking(Sandbox::new), tokio::task::spawn_blocking(|| Sandbox::with(|s| s.internet = false)));
    let (on, off) = (on.expect("create"), off.expect("create"));
    let ip = on.info.ip.expect("a sandbox with internet has an address");
    let gw = Ipv4Addr::from(u32::from(ip) - 1);

    // The sandbox's own view of its gateway, from the routing table.
    let route = run_ok(&on, "user", "cat /proc/net/route").await;
    let gw_hex = format!("{:08X}", u32::from_le_bytes(gw.octets()));
    assert!(route.stdout.lines().any(|l| l.split_whitespace().nth(2) == Some(gw_hex.as_str())), "gateway {gw} in the route table\n{route:#?}");
    let off_route = run_ok(&off, "user", "cat /proc/net/route | wc -l; ls /sys/class/net").await;
    assert_eq!(off_route.stdout, "1\nlo\n", "no internet: loopback only\n{off_route:#?}");

    let mut targets = vec![
        ("loopback-any".to_string(), "127.0.0.1".to_string(), any.port()),
        ("loopback-lo".to_string(), "127.0.0.1".to_string(), lo.port()),
        ("ipv6-loopback".to_string(), "::1".to_string(), any.port()),
        ("gateway".to_string(), gw.to_string(), any.port()),
        ("gateway-ssh".to_string(), gw.to_string(), 22),
    ];
    for (ifname, hip) in &external {
        targets.push((format!("host-{ifname}"), hip.to_string(), any.port()));
    }
    // Positive control inside: a listener the sandbox owns is reachable.
    let inside = format!(
        r#"
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); srv.bind(("0.0.0.0", 0)); srv.listen(8)
own_port = srv.getsockname()[1]
c = socket.create_connection(("127.0.0.1", own_port), timeout=2); c.close()
print("own-listener", "ok", flush=True)
{}
"#,
        connect_probe(&targets)
    );
    for who in WHO {
        let (a, b) = tokio::join!(py(&on, who, &inside), py(&off, who, &inside));
        let mut want_on: Vec<(String, &str)> = vec![
            ("own-listener".into(), "ok"),
            // The sandbox's loopback is its own: nothing listens there.
            ("loopback-any".into(), "ECONNREFUSED"),
            ("loopback-lo".into(), "ECONNREFUSED"),
            ("gateway".into(), "timeout"),
            ("gateway-ssh".into(), "timeout"),
        ];
        for (ifname, _) in &external {
            want_on.push((format!("host-{ifname}"), "timeout"));
        }
        expect_results(who, &a, &want_on);
        let want_off: Vec<(String, &str)> = want_on.iter().map(|(l, r)| (l.clone(), if *r == "timeout" { "ENETUNREACH" } else { *r })).collect();
        expect_results(who, &b, &want_off);
        for r in [&a, &b] {
            let v6 = kv(&r.stdout).remove("ipv6-loopback").unwrap_or_default();
            assert_ne!(v6, "ok", "as {who}: ::1\n{r:#?}");
        }
    }
    // Bash's /dev/tcp, the other way a script would try.
    let r = run(&on, "root", &format!("timeout -s KILL 3 bash -c 'echo > /dev/tcp/{gw}/{}'; echo \"RC $?\"", any.port())).await;
    assert_eq!(r.stdout, "RC 137\n", "the connection hangs (dropped) until killed\n{r:#?}");
    assert_eq!(any.peers().len() + lo.peers().len(), host_peers, "no sandbox connection reached a host listener: {:?} {:?}", any.peers(), lo.peers());
}

/// The firewall speaks IPv4 only, so IPv6 must be off inside: otherwise
/// the host's link-local address on the sandbox's veth (which the kernel
/// assigns on the host side) would be an unfiltered way in.
#[tokio::test]
async fn the_host_is_unreachable_over_ipv6() {
    let sbx = Sandbox::new();
    let slot = slot_of(sbx.id());
    let host_if = format!("alk{slot}");
    // The host side's IPv6 addresses on that veth, if the host runs IPv6,
    // once duplicate address detection is over (a tentative address can't
    // be used yet, which would spoil the positive control).
    let hex_to_ip = |hex: &str| (0..8).map(|i| hex[i * 4..i * 4 + 4].to_string()).collect::<Vec<_>>().join(":");
    let deadline = Instant::now() + Duration::from_secs(5);
    let (inet6, link_local) = loop {
        let inet6 = std::fs::read_to_string("/proc/net/if_inet6").unwrap_or_default();
        let mine: Vec<(String, u32)> = inet6
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>())
            .filter(|f| f.len() == 6 && f[5] == host_if)
            .map(|f| (hex_to_ip(f[0]), u32::from_str_radix(f[4], 16).unwrap_or(0)))
            .collect();
        const IFA_F_TENTATIVE: u32 = 0x40;
        if mine.iter().all(|(_, flags)| flags & IFA_F_TENTATIVE == 0) || Instant::now() > deadline {
            break (inet6, mine.into_iter().map(|(a, _)| a).collect::<Vec<_>>());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let global: Vec<String> = inet6
        .lines()
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() == 6 && f[3] == "00" && !f[5].starts_with("alk")
        })
        .map(|l| hex_to_ip(l.split_whitespace().next().unwrap_or_default()))
        .collect();
    let l6 = match TcpListener::bind("[::]:0") {
        Ok(l) => l,
        Err(_) => return, // no IPv6 on this host: nothing to reach
    };
    let port = l6.local_addr().expect("addr").port();
    // Positive control: the host side's link-local address is live and
    // the listener answers on it.
    let ifname = std::ffi::CString::new(host_if.clone()).expect("ifname");
    // SAFETY: if_nametoindex reads a NUL-terminated string.
    let scope = unsafe { libc::if_nametoindex(ifname.as_ptr()) };
    for a in &link_local {
        let ip: std::net::Ipv6Addr = a.parse().expect("ipv6");
        TcpStream::connect_timeout(&std::net::SocketAddrV6::new(ip, port, 0, scope).into(), Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("positive control: the host reaches [{a}%{host_if}]:{port}: {e}"));
        let _ = l6.accept().expect("accept the host's own connection");
    }
    for a in &global {
        let ip: std::net::Ipv6Addr = a.parse().expect("ipv6");
        TcpStream::connect_timeout(&std::net::SocketAddrV6::new(ip, port, 0, 0).into(), Duration::from_secs(2))
            .unwrap_or_else(|e| panic!("positive control: the host reaches [{a}]:{port}: {e}"));
        let _ = l6.accept().expect("accept the host's own connection");
    }
    l6.set_nonblocking(true).expect("nonblocking");
    let mut targets = String::new();
    for (i, a) in link_local.iter().enumerate() {
        targets.push_str(&format!("('host-link-local-{i}', '{a}', True), "));
    }
    for (i, a) in global.iter().enumerate() {
        targets.push_str(&format!("('host-global-{i}', '{a}', False), "));
    }
    for who in WHO {
        let r = py(
            &sbx,
            who,
            &format!(
                r#"
print("eth0-disable_ipv6", open("/proc/sys/net/ipv6/conf/eth0/disable_ipv6").read().strip(), flush=True)
print("inside-ipv6-addresses", len([l for l in open("/proc/net/if_inet6")]) if os.path.exists("/proc/net/if_inet6") else 0, flush=True)
for label, addr, scoped in [{targets}]:
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.settimeout(2)
    try:
        s.connect((addr, {port}, 0, socket.if_nametoindex("eth0") if scoped else 0))
        print(label, "ok", flush=True)
    except socket.timeout:
        print(label, "timeout", flush=True)
    except OSError as e:
        print(label, errno.errorcode.get(e.errno, str(e.errno)), flush=True)
"#
            ),
        )
        .await;
        let got = kv(&r.stdout);
        assert_eq!(got.get("eth0-disable_ipv6").map(String::as_str), Some("1"), "as {who}: IPv6 is off on eth0\n{r:#?}");
        assert_eq!(got.get("inside-ipv6-addresses").map(String::as_str), Some("0"), "as {who}: no IPv6 address inside\n{r:#?}");
        for (k, v) in &got {
            if k.starts_with("host-") {
                assert_ne!(v, "ok", "as {who}: reached the host over IPv6 at {k}\n{r:#?}");
            }
        }
    }
    assert!(l6.accept().is_err(), "nothing from inside reached the host's IPv6 listener");
}

/// Abstract unix sockets are per network namespace: the host's are not
/// reachable from inside.
#[tokio::test]
async fn host_abstract_unix_sockets_are_unreachable() {
    use std::os::linux::net::SocketAddrExt;
    let name = format!("airlock-test-{}", new_id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).expect("abstract addr");
    let l = std::os::unix::net::UnixListener::bind_addr(&addr).expect("bind abstract");
    let c = std::os::unix::net::UnixStream::connect_addr(&addr).expect("positive control: host connects");
    drop(c);
    let _ = l.accept().expect("accept");
    let sbx = Sandbox::new();
    for who in WHO {
        let r = py(
            &sbx,
            who,
            &format!(
                r#"
own = socket.socket(socket.AF_UNIX); own.bind("\0own-{name}"); own.listen(1)
oserr("own", lambda: socket.socket(socket.AF_UNIX).connect("\0own-{name}"))
own.close()
oserr("host", lambda: socket.socket(socket.AF_UNIX).connect("\0{name}"))
"#
            ),
        )
        .await;
        expect_results(who, &r, &[("own", "ok"), ("host", "ECONNREFUSED")]);
    }
    l.set_nonblocking(true).expect("nonblocking");
    assert!(l.accept().is_err(), "nothing from inside reached the host socket");
}

// ---------------------------------------------------------------------------
// 10. Other sandboxes
// ---------------------------------------------------------------------------

#[tokio::test]
async fn sandboxes_cannot_reach_or_see_each_other() {
    let (a, b, off) =
        tokio::join!(tokio::task::spawn_blocking(Sandbox::new), tokio::task::spawn_blocking(Sandbox::new), tokio::task::spawn_blocking(|| Sandbox::with(|s| s.internet = false)));
    let (a, b, off) = (a.expect("a"), b.expect("b"), off.expect("off"));
    let b_ip = b.info.ip.expect("b has an address");
    let b_gw = Ipv4Addr::from(u32::from(b_ip) - 1);
    let tok = new_id();

    // B serves a marker over HTTP on every interface.
    let started = run(
        &b,
        "user",
        &format!(
            r#"
mkdir -p /tmp/www && echo "marker-{tok}" > /tmp/www/marker
cd /tmp/www && setsid nohup python3 -m http.server 8000 --bind 0.0.0.0 >/tmp/http.log 2>&1 </dev/null &
for i in $(seq 100); do (echo > /dev/tcp/127.0.0.1/8000) 2>/dev/null && break; sleep 0.1; done
python3 -c 'import urllib.request as u; print("LOCAL", u.urlopen("http://127.0.0.1:8000/marker", timeout=2).read().decode().strip())'
python3 -c 'import urllib.request as u; print("OWN-IP", u.urlopen("http://{b_ip}:8000/marker", timeout=2).read().decode().strip())'
echo "HOSTNAME-I $(hostname -I)"
"#
        ),
    )
    .await;
    assert!(started.stdout.contains(&format!("LOCAL marker-{tok}")) && started.stdout.contains(&format!("OWN-IP marker-{tok}")), "positive control: B serves\n{started:#?}");
    assert!(started.stdout.contains(&format!("HOSTNAME-I {b_ip}")), "B's address from inside matches info.ip\n{started:#?}");
    let targets = vec![("b".to_string(), b_ip.to_string(), 8000u16), ("b-gateway".to_string(), b_gw.to_string(), 8000u16)];
    let probe = connect_probe(&targets);
    for who in WHO {
        let (ra, roff) = tokio::join!(py(&a, who, &probe), py(&off, who, &probe));
        expect_results(who, &ra, &[("b", "timeout"), ("b-gateway", "timeout")]);
        expect_results(who, &roff, &[("b", "ENETUNREACH"), ("b-gateway", "ENETUNREACH")]);
    }

    // A's processes and files are invisible to B.
    run_ok(&a, "root", &format!("echo a-file-{tok} > /root/a-secret-{tok}; (setsid bash -c 'exec -a a-proc-{tok} sleep 300' >/dev/null 2>&1 </dev/null &)")).await;
    let a_upper = sandbox_dir(&a).join(format!("upper/root/root/a-secret-{tok}"));
    assert!(a_upper.exists(), "positive control: A's file is on the host at {}", a_upper.display());
    // `[t]` keeps the pattern from matching grep's own command line (ids start with t).
    let pattern = format!("a-proc-[t]{}", &tok[1..]);
    let seen_in_a = run_ok(&a, "root", &format!("sleep 0.2; grep -l '{pattern}' /proc/[0-9]*/cmdline 2>/dev/null | wc -l")).await;
    assert_eq!(seen_in_a.stdout.trim(), "1", "positive control: A sees its own process\n{seen_in_a:#?}");
    let r = run(
        &b,
        "root",
        &format!(
            r#"
echo "PROCS $(grep -l '{pattern}' /proc/[0-9]*/cmdline 2>/dev/null | wc -l)"
echo "FILES $(find / \( -path /proc -o -path /sys -o -path /usr \) -prune -o -name 'a-secret-{tok}' -print 2>/dev/null | wc -l)"
out=$(cat {} 2>&1); echo "HOSTPATH ${{out##*: }}"
out=$(cat /root/a-secret-{tok} 2>&1); echo "SAMEPATH ${{out##*: }}"
"#,
            a_upper.display()
        ),
    )
    .await;
    expect_results("root", &r, &[("PROCS", "0"), ("FILES", "0"), ("HOSTPATH", "No such file or directory"), ("SAMEPATH", "No such file or directory")]);
}

// ---------------------------------------------------------------------------
// 11. Resource limits
// ---------------------------------------------------------------------------

#[tokio::test]
async fn memory_bomb_is_killed_and_the_sandbox_survives() {
    let sbx = Sandbox::with(|s| {
        s.internet = false;
        s.resources.memory_mb = 64;
    });
    let limit = cgroup_file(&sbx, ("memory", "memory.limit_in_bytes"), "memory.max");
    assert_eq!(read_trim(&limit), (64u64 << 20).to_string(), "the limit is set on the host");
    let r = run(&sbx, "user", "python3 -c \"x = b'a' * (512 << 20); print('allocated', len(x))\"").await;
    assert_eq!((r.exit_code, r.end["status"].as_str()), (-1, Some("signal: killed")), "the bomb was OOM-killed\n{r:#?}");
    assert!(!r.stdout.contains("allocated"), "{r:#?}");
    let oom = cgroup_file(&sbx, ("memory", "memory.oom_control"), "memory.events");
    let kills: u64 = read_trim(&oom).lines().find_map(|l| l.strip_prefix("oom_kill ")).and_then(|v| v.trim().parse().ok()).unwrap_or(0);
    assert!(kills >= 1, "the kernel recorded an OOM kill in the sandbox's cgroup: {}", read_trim(&oom));
    assert!(Path::new(&format!("/proc/{}", sbx.info.pid)).exists(), "the agent (PID 1) was not the victim");
    let ok = run_ok(&sbx, "user", "python3 -c \"x = b'a' * (16 << 20); print('small', len(x))\"").await;
    assert_eq!(ok.stdout, format!("small {}\n", 16 << 20), "a modest allocation still works");
    // Root inside cannot lift its own limit: the cgroup tree is not there.
    let r = run(&sbx, "root", "out=$( { echo -1 > /sys/fs/cgroup/memory/memory.limit_in_bytes; } 2>&1); echo \"RAISE ${out##*: }\"; cat /proc/self/cgroup").await;
    assert!(r.stdout.starts_with("RAISE No such file or directory\n") || r.stdout.starts_with("RAISE Read-only file system\n"), "{r:#?}");
    assert!(r.stdout.lines().skip(1).all(|l| l.ends_with(":/")), "the cgroup namespace hides the host path\n{r:#?}");
    assert_eq!(read_trim(&limit), (64u64 << 20).to_string());
}

#[tokio::test]
async fn fork_bomb_hits_the_pids_limit_and_the_sandbox_survives() {
    let sbx = Sandbox::with(|s| {
        s.internet = false;
        s.resources.pids = 64;
    });
    let max = cgroup_file(&sbx, ("pids", "pids.max"), "pids.max");
    let current = cgroup_file(&sbx, ("pids", "pids.current"), "pids.current");
    assert_eq!(read_trim(&max), "64");

    // A controlled bomb first: fork until the kernel says no, then report.
    let r = py(
        &sbx,
        "user",
        r#"
kids = []
err = None
for _ in range(500):
    try:
        p = os.fork()
    except OSError as e:
        err = e
        break
    if p == 0:
        time.sleep(30)
        os._exit(0)
    kids.append(p)
print("forked", len(kids), flush=True)
print("error", errno.errorcode.get(err.errno) if err else "none", flush=True)
for k in kids:
    os.kill(k, 9)
for k in kids:
    os.waitpid(k, 0)
"#,
    )
    .await;
    expect_results("user", &r, &[("error", "EAGAIN")]);
    let forked: u32 = kv(&r.stdout)["forked"].parse().expect("count");
    assert!(forked > 10 && forked < 64, "the limit, not something else, stopped the forks: {forked}\n{r:#?}");

    // The real thing, with a second sandbox created while it rages.
    // The bomb's shell then blocks in a builtin `read` on a fifo (no fork
    // needed), so `timeout` is still watching when it kills the whole
    // process group; a bare `:(){ :|:& };:` returns at once and would leave
    // the bomb running unsupervised.
    // `pids.events` counts forks this group's limit refused: proof that the
    // limit stopped the bomb (a sample of pids.current is not: the bomb's
    // processes die and respawn, so any one sample may be well below it).
    let events = cgroup_file(&sbx, ("pids", "pids.events"), "pids.events");
    let refused = || -> u64 { read_trim(&events).lines().find_map(|l| l.strip_prefix("max ")).and_then(|v| v.trim().parse().ok()).unwrap_or(0) };
    let refused_before = refused();
    let bomb = run(&sbx, "user", "mkfifo /tmp/hold && timeout -s KILL 4 bash -c 'exec 3<>/tmp/hold; :(){ :|:& };:; read -t 30 -u 3; echo unsupervised'; echo \"RC $?\"");
    let other = async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let other = tokio::task::spawn_blocking(Sandbox::new).await.expect("create during the bomb");
        let r = run_ok(&other, "user", "echo fine").await;
        (r, other)
    };
    let (b, (o, _other)) = tokio::join!(bomb, other);
    assert_eq!(b.stdout, "RC 137\n", "the bomb ran until timeout killed it\n{}", &b.stdout);
    assert!(
        b.stderr.contains("fork: retry: Resource temporarily unavailable") || b.stderr.contains("fork: Resource temporarily unavailable"),
        "bash hit EAGAIN\n{}",
        &b.stderr[..b.stderr.len().min(2000)]
    );
    let refused_after = refused();
    assert!(refused_after > refused_before, "the sandbox's pids limit refused the bomb's forks ({refused_before} -> {refused_after})");
    assert_eq!(o.stdout, "fine\n", "another sandbox works during the bomb");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n: u64 = read_trim(&current).parse().expect("pids.current");
        if n < 16 {
            break;
        }
        assert!(Instant::now() < deadline, "the bomb's processes are gone ({n} tasks left)");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(run_ok(&sbx, "user", "echo alive").await.stdout, "alive\n", "the sandbox still runs commands");
}

// ---------------------------------------------------------------------------
// 12. Seccomp
// ---------------------------------------------------------------------------

#[tokio::test]
async fn dangerous_syscalls_are_filtered() {
    let sbx = Sandbox::new();
    for who in WHO {
        let r = py(
            &sbx,
            who,
            r#"
status = dict(l.split(":\t", 1) for l in open("/proc/self/status").read().splitlines() if ":\t" in l)
print("seccomp-mode", status["Seccomp"].strip(), flush=True)
print("getpid", "ok" if sys_("getpid")[0] == os.getpid() else "wrong", flush=True)
zero = ctypes.create_string_buffer(256)
show("keyctl", "keyctl", 0, -3, 1)
show("add_key", "add_key", b"user", b"airlock", b"x", 1, -3)
show("bpf", "bpf", 0, zero, 72)
attr = ctypes.create_string_buffer(struct.pack("<IIQ", 1, 128, 0) + b"\0" * 112, 128)
show("perf_event_open", "perf_event_open", attr, 0, -1, -1, 0)
show("kexec_load", "kexec_load", 0, 0, None, 0)
show("kexec_file_load", "kexec_file_load", -1, -1, 0, None, 4)
show("reboot", "reboot", 0xfee1dead, 672274793, 0, None)
show("swapon", "swapon", b"/tmp/no-such-swap", 0)
show("io_uring_setup", "io_uring_setup", 1, zero)
show("userfaultfd", "userfaultfd", 0)
show("syslog", "syslog", 3, zero, 256)
show("acct", "acct", None)
ts = ctypes.create_string_buffer(16)
libc.clock_gettime(0, ts)
show("clock_settime", "clock_settime", 0, ts)
show("sethostname", "sethostname", b"pwned", 5)
show("fanotify_init", "fanotify_init", 0, 0)
if "iopl" in NR:
    show("iopl", "iopl", 3)
    show("ioperm", "ioperm", 0x80, 1, 1)
before = sys_("personality", 0xffffffff)[0]
show("personality-query", "personality", 0xffffffff)
show("personality-read-implies-exec", "personality", 0x0400000)
show("personality-addr-no-randomize", "personality", 0x0040000)
print("personality-unchanged", "yes" if sys_("personality", 0xffffffff)[0] == before else "no", flush=True)
r, res = sys_("clone3", zero, 88)
if r == 0:
    os._exit(0)
print("clone3", res, flush=True)
"#,
        )
        .await;
        #[allow(unused_mut)]
        let mut want = vec![
            ("seccomp-mode", "2"),
            ("getpid", "ok"),
            ("personality-query", "ok"),
            ("personality-unchanged", "yes"),
            ("keyctl", "EPERM"),
            ("add_key", "EPERM"),
            ("bpf", "EPERM"),
            ("perf_event_open", "EPERM"),
            ("kexec_load", "EPERM"),
            ("kexec_file_load", "EPERM"),
            ("reboot", "EPERM"),
            ("swapon", "EPERM"),
            ("io_uring_setup", "EPERM"),
            ("userfaultfd", "EPERM"),
            ("syslog", "EPERM"),
            ("acct", "EPERM"),
            ("clock_settime", "EPERM"),
            ("sethostname", "EPERM"),
            ("fanotify_init", "EPERM"),
            ("personality-read-implies-exec", "EPERM"),
            ("personality-addr-no-randomize", "EPERM"),
            // clone3's flags are out of the filter's reach: it answers
            // ENOSYS so libc falls back to clone, whose flags are checked.
            ("clone3", "ENOSYS"),
        ];
        #[cfg(target_arch = "x86_64")]
        want.extend([("iopl", "EPERM"), ("ioperm", "EPERM")]);
        expect_results(who, &r, &want);
    }
    // The shell tools fail the same way.
    let r = run(&sbx, "root", "out=$(dmesg 2>&1); echo \"DMESG $? ${out##*: }\"; out=$(hostname pwned 2>&1); echo \"HOSTNAME $? ${out##*: }\"; echo \"NOW $(hostname)\"").await;
    // hostname(1) words EPERM from sethostname as "you must be root".
    expect_results("root", &r, &[("DMESG", "1 Operation not permitted"), ("HOSTNAME", "1 you must be root to change the host name"), ("NOW", "sandbox")]);
}

// ---------------------------------------------------------------------------
// 13. Capabilities and setuid
// ---------------------------------------------------------------------------

#[tokio::test]
async fn root_inside_lacks_dangerous_capabilities_and_setuid_gives_nothing() {
    let sbx = Sandbox::new();
    // Bits that must never be held or regained (bounding set) inside.
    let forbidden: &[(u32, &str)] = &[
        (2, "CAP_DAC_READ_SEARCH"),
        (12, "CAP_NET_ADMIN"),
        (16, "CAP_SYS_MODULE"),
        (17, "CAP_SYS_RAWIO"),
        (19, "CAP_SYS_PTRACE"),
        (21, "CAP_SYS_ADMIN"),
        (22, "CAP_SYS_BOOT"),
        (24, "CAP_SYS_RESOURCE"),
        (25, "CAP_SYS_TIME"),
        (30, "CAP_AUDIT_CONTROL"),
        (33, "CAP_MAC_ADMIN"),
        (34, "CAP_SYSLOG"),
        (38, "CAP_PERFMON"),
        (39, "CAP_BPF"),
        (40, "CAP_CHECKPOINT_RESTORE"),
    ];
    for who in WHO {
        let r = run_ok(&sbx, who, "grep -E '^(Cap(Inh|Prm|Eff|Bnd|Amb)|NoNewPrivs|Uid):' /proc/self/status | tr -d '\\t' | sed 's/:/ /'").await;
        let st = kv(&r.stdout);
        let cap = |k: &str| u64::from_str_radix(st.get(k).unwrap_or_else(|| panic!("{k}: {r:#?}")), 16).expect("hex");
        assert_eq!(st["NoNewPrivs"], "1", "as {who}\n{r:#?}");
        for k in ["CapEff", "CapPrm", "CapBnd", "CapInh", "CapAmb"] {
            for (bit, name) in forbidden {
                assert_eq!(cap(k) & (1 << bit), 0, "as {who}: {name} in {k}\n{r:#?}");
            }
        }
        if who == "root" {
            // Positive control: root inside is root of its namespace and
            // holds the harmless container capabilities.
            assert!(st["Uid"].starts_with("0"), "{r:#?}");
            assert_ne!(cap("CapEff") & (1 << 0), 0, "CAP_CHOWN");
            assert_ne!(cap("CapEff") & (1 << 7), 0, "CAP_SETUID");
        } else {
            assert_eq!((cap("CapEff"), cap("CapPrm")), (0, 0), "user holds nothing\n{r:#?}");
        }
    }

    // A setuid-root binary on the overlay root (not nosuid) and the real
    // setuid `su` from /usr: no_new_privs keeps the caller's ids.
    let setup = run_ok(&sbx, "root", "cp /usr/bin/id /opt/suid-id && chmod 4755 /opt/suid-id && stat -c '%a %u' /opt/suid-id && findmnt -no OPTIONS --target /opt").await;
    assert!(setup.stdout.starts_with("4755 0\n"), "positive control: a setuid-root copy exists\n{setup:#?}");
    assert!(!setup.stdout.contains("nosuid"), "the copy sits on a mount that honours setuid, so only no_new_privs stops it\n{setup:#?}");
    let r = run(
        &sbx,
        "user",
        "echo \"EUID $(/opt/suid-id -u) RUID $(/opt/suid-id -ru)\"; su -c 'id -u' root </dev/null; echo \"SU $?\"; python3 -c 'import os; os.setuid(0)' 2>&1 | tail -1",
    )
    .await;
    assert!(r.stdout.contains("EUID 1000 RUID 1000"), "setuid bit ignored\n{r:#?}");
    assert!(!r.stdout.lines().any(|l| l.trim() == "0"), "su gave root\n{r:#?}");
    assert!(r.stdout.contains("PermissionError: [Errno 1] Operation not permitted"), "{r:#?}");
    let su_rc = r.stdout.lines().find_map(|l| l.strip_prefix("SU ")).expect("su rc");
    assert_ne!(su_rc, "0", "{r:#?}");
}

// ---------------------------------------------------------------------------
// 14. Ids on the host
// ---------------------------------------------------------------------------

#[tokio::test]
async fn sandbox_root_is_an_unprivileged_host_uid() {
    let sbx = Sandbox::new();
    let tok = new_id();
    let env_mtime = std::fs::metadata("/usr/bin/env").expect("host /usr/bin/env").mtime();
    let r = run_ok(&sbx, "root", &format!("cat /proc/self/uid_map /proc/self/gid_map; echo x > /root/owned-{tok}; cp /usr/bin/id /root/suid-{tok}; chmod 4755 /root/suid-{tok}; touch -d '2001-01-01' /usr/bin/env; echo y > /usr/airlock-probe-{tok}")).await;
    let maps: Vec<Vec<u64>> = r.stdout.lines().map(|l| l.split_whitespace().map(|n| n.parse().expect("number")).collect()).collect();
    assert_eq!(maps.len(), 2, "one uid and one gid range\n{r:#?}");
    let base = maps[0][1];
    assert!(base >= 1 << 20, "root inside is host uid {base}\n{r:#?}");
    assert_eq!(maps[0], vec![0, base, 65536]);
    assert_eq!(maps[1], vec![0, base, 65536]);
    run_ok(&sbx, "user", &format!("echo u > /home/user/owned-{tok}")).await;

    let upper = sandbox_dir(&sbx).join("upper");
    let f = std::fs::metadata(upper.join(format!("root/root/owned-{tok}"))).expect("root's file is in the writable layer");
    assert_eq!((f.uid() as u64, f.gid() as u64), (base, base), "owned by the sandbox's base id on the host");
    let s = std::fs::metadata(upper.join(format!("root/root/suid-{tok}"))).expect("suid copy");
    assert_eq!((s.uid() as u64, s.mode() & 0o7777), (base, 0o4755), "a setuid binary made inside is setuid to an unprivileged host uid");
    let u = std::fs::metadata(upper.join(format!("root/home/user/owned-{tok}"))).expect("user's file");
    assert_eq!(u.uid() as u64, base + 1000);

    // /usr is the host's, as a read-only lower layer: writes land in the
    // sandbox's upper layer and the host's files are untouched.
    assert!(!Path::new(&format!("/usr/airlock-probe-{tok}")).exists(), "no new file in the host's /usr");
    assert!(upper.join(format!("usr/airlock-probe-{tok}")).exists(), "it is in the upper layer");
    assert_eq!(std::fs::metadata("/usr/bin/env").expect("host /usr/bin/env").mtime(), env_mtime, "the host's /usr/bin/env kept its mtime");
    assert!(upper.join("usr/bin/env").exists(), "the touched copy lives in the upper layer");
}

/// Destroying a sandbox must not follow links planted inside its
/// writable layer to host files.
#[tokio::test]
async fn destroy_does_not_follow_links_planted_inside() {
    let dir = tempfile::Builder::new().prefix("airlock-victim-").tempdir().expect("victim dir");
    let victim = HostFile::new(dir.path().join("precious"));
    let sbx = Sandbox::new();
    run_ok(
        &sbx,
        "root",
        &format!("ln -s {d} /root/link-dir; ln -s {f} /root/link-file; mkdir -p /root/nest && ln -s {d} /root/nest/deeper", d = dir.path().display(), f = victim.path.display()),
    )
    .await;
    let upper = sandbox_dir(&sbx).join("upper/root/root");
    assert!(std::fs::symlink_metadata(upper.join("link-dir")).expect("planted").file_type().is_symlink(), "positive control: the links are on the host");
    drop(sbx);
    assert_eq!(std::fs::read_to_string(&victim.path).expect("victim still there"), victim.content);
}

/// Descriptors the server inherited without close-on-exec must not reach
/// the sandbox: a directory descriptor would be a way out of the mount
/// namespace (`/proc/self/fd/N/..`), the pattern of runc's CVE-2024-21626.
/// The test opens one on purpose, as a careless supervisor or socket
/// activation would, and creates a sandbox while it is open.
#[tokio::test]
async fn inherited_host_descriptors_do_not_reach_the_sandbox() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new().prefix("airlock-leak-").tempdir().expect("dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let secret = HostFile::new(dir.path().join("secret"));
    std::fs::set_permissions(&secret.path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let cdir = std::ffi::CString::new(dir.path().as_os_str().as_encoded_bytes()).expect("path");
    // SAFETY: open(2) on a NUL-terminated path; deliberately without
    // O_CLOEXEC. The descriptor is closed right after the sandbox exists,
    // to keep the window in which other tests' children inherit it short.
    let fd = unsafe { libc::open(cdir.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY) };
    assert!(fd > 2, "open host directory: {}", std::io::Error::last_os_error());
    let sbx = Sandbox::new();
    // SAFETY: closing the descriptor opened above.
    unsafe { libc::close(fd) };
    for who in WHO {
        let r = run(
            &sbx,
            who,
            &format!(
                r#"
ls -l /proc/self/fd/ | awk 'NR > 1 {{ print "FD", $9, $11 }}'
out=$(cat /proc/self/fd/{fd}/secret 2>&1); echo "VIA-FD ${{out##*: }}"
# Climbing out of the descriptor lands in the host's /tmp.
echo "PARENT $(ls /proc/self/fd/{fd}/.. 2>&1 | grep -c '^airlock-leak-')"
"#
            ),
        )
        .await;
        assert!(!r.stdout.contains(&secret.content), "as {who}: read the host secret through an inherited fd\n{r:#?}");
        assert!(r.stdout.contains("PARENT 0\n"), "as {who}: reached the host's /tmp through an inherited fd\n{r:#?}");
        // `ls` lists its own descriptor on /proc/self/fd too.
        let fds: Vec<&str> = r.stdout.lines().filter_map(|l| l.strip_prefix("FD ")).filter(|l| !(l.contains(" /proc/") && l.ends_with("/fd"))).collect();
        assert!(
            fds.len() == 3 && fds.iter().all(|f| f.starts_with("0 /dev/null") || f.starts_with("1 pipe:") || f.starts_with("2 pipe:")),
            "as {who}: only stdin, stdout and stderr are inherited: {fds:?}\n{r:#?}"
        );
    }
}

/// PID 1 is handed the server's base mount namespace (see
/// `airlock_runtime::mntns`) to make its own from; a descriptor of it kept
/// would be a handle on a namespace full of host mounts. It must be gone
/// once the sandbox runs, and the sandbox's namespace must be neither the
/// host's nor shared with another sandbox.
#[tokio::test]
async fn pid1_keeps_no_mount_namespace_descriptor_and_shares_no_namespace() {
    let (a, b) = (Sandbox::new(), Sandbox::new());
    let pid1 = |sbx: &Sandbox| -> u64 {
        let st: serde_json::Value = serde_json::from_slice(&std::fs::read(sandbox_dir(sbx).join("state.json")).expect("state.json")).expect("json");
        st["pid"].as_u64().expect("pid in state.json")
    };
    let ns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/mnt")).expect("mount namespace").display().to_string();
    let (pa, pb) = (pid1(&a), pid1(&b));
    for pid in [pa, pb] {
        let fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .expect("PID 1's descriptors")
            .flatten()
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .map(|p| p.display().to_string())
            .collect();
        assert!(!fds.is_empty(), "positive control: PID 1 has descriptors");
        assert!(!fds.iter().any(|f| f.starts_with("mnt:[")), "PID 1 of a sandbox kept a mount namespace descriptor: {fds:?}");
    }
    assert_ne!(ns(&pa.to_string()), ns("self"), "a sandbox lives in the host's mount namespace");
    assert_ne!(ns(&pa.to_string()), ns(&pb.to_string()), "two sandboxes share a mount namespace");
    // Inside, the root's view is the sandbox's own: no other sandbox's
    // directory shows in its mount table.
    let r = run_ok(&a, "root", "cat /proc/self/mountinfo").await;
    assert!(!r.stdout.contains(b.id()) && !r.stdout.contains("sandboxes/"), "{}", r.stdout);
    // No mount inside is a peer of one outside (a clone of a shared host
    // mount would be, and mounts would then propagate both ways).
    assert!(r.stdout.lines().count() > 10, "positive control: the mount table\n{}", r.stdout);
    assert!(!r.stdout.lines().any(|l| l.contains(" shared:") || l.contains(" master:")), "a sandbox mount propagates to or from outside:\n{}", r.stdout);
}

/// A volume whose source is a shared mount on the host (as everything is
/// on a systemd host): PID 1 clones it before it leaves the host's mount
/// namespace, and a clone of a shared mount is its peer unless made
/// private. A mount made on the host under the source after the sandbox
/// started must not appear inside, and nothing inside may be a peer of
/// anything outside.
#[tokio::test]
async fn a_shared_host_mount_given_as_a_volume_does_not_propagate() {
    let dir = tempfile::Builder::new().prefix("airlock-shared-").tempdir().expect("dir");
    let src = dir.path().join("vol");
    std::fs::create_dir_all(src.join("later")).expect("mkdir");
    let sh = |c: &str| {
        let o = std::process::Command::new("sh").args(["-c", c]).output().expect("sh");
        assert!(o.status.success(), "{c}: {}", String::from_utf8_lossy(&o.stderr));
    };
    let s = src.display().to_string();
    sh(&format!("mount --bind {s} {s} && mount --make-shared {s}"));
    struct Unmount(String);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").args(["-R", "-l", &self.0]).status();
        }
    }
    let _u = Unmount(s.clone());
    assert!(
        std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo").lines().any(|l| l.contains(&s) && l.contains(" shared:")),
        "positive control: the source is shared on the host"
    );
    let sbx = Sandbox::with(|spec| spec.volumes.push(airlock_runtime::VolumeMount { source: src.clone(), target: "/mnt/vol".into(), read_only: false }));
    // After the sandbox exists: a mount on the host under the source.
    sh(&format!("mount -t tmpfs -o size=1m airlock-late {s}/later && echo from-the-host > {s}/later/marker"));
    let r = run_ok(&sbx, "root", "grep /mnt/vol /proc/self/mountinfo; ls /mnt/vol/later; cat /mnt/vol/later/marker 2>&1; true").await;
    assert!(r.stdout.contains("/mnt/vol"), "positive control: the volume is mounted\n{r:#?}");
    assert!(!r.stdout.contains("from-the-host"), "a host mount made later propagated into the sandbox\n{r:#?}");
    assert!(!r.stdout.lines().any(|l| l.contains(" shared:") || l.contains(" master:")), "the volume is a peer of the host's mount\n{r:#?}");
}

/// A stand-in for a machine on the host's own network, built entirely on
/// this host: a network namespace behind a veth pair on a TEST-NET-2
/// subnet (not one of the private ranges the firewall lists), running a
/// TCP listener. Removed on drop.
struct FakeNeighbour {
    ns: String,
    child: std::process::Child,
    ip: Ipv4Addr,
    port: u16,
}

impl FakeNeighbour {
    fn new() -> Self {
        let tag = &new_id()[..8];
        let ns = format!("airlock-sec-{tag}");
        let host_if = format!("{NEIGHBOUR_IF_PREFIX}{tag}");
        let ip = Ipv4Addr::new(198, 51, 100, 2);
        let sh = |cmd: &str| {
            let out = std::process::Command::new("sh").arg("-c").arg(cmd).output().expect("sh");
            assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
        };
        sh(&format!(
            "ip netns add {ns} && ip link add {host_if} type veth peer name eth0 netns {ns} && ip addr add 198.51.100.1/24 dev {host_if} && ip link set {host_if} up && \
             ip netns exec {ns} ip addr add {ip}/24 dev eth0 && ip netns exec {ns} ip link set eth0 up && ip netns exec {ns} ip link set lo up && \
             ip netns exec {ns} ip route add default via 198.51.100.1"
        ));
        let mut child = std::process::Command::new("ip")
            .args(["netns", "exec", &ns, "python3", "-u", "-c"])
            .arg("import socket\ns = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(('0.0.0.0', 8080)); s.listen(16)\nprint('ready', flush=True)\nwhile True:\n    c, a = s.accept(); c.sendall(b'neighbour\\n'); c.close()")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("neighbour listener");
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().expect("stdout")), &mut line).expect("ready");
        assert_eq!(line, "ready\n");
        Self { ns, child, ip, port: 8080 }
    }
}

impl Drop for FakeNeighbour {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::process::Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

/// The host's own networks are not the internet: a machine next to the
/// host on a subnet outside the firewall's fixed private list (this host's
/// LAN is 192.0.2.0/24, TEST-NET-1, with its gateway at .1) must not be
/// reachable from a sandbox. The neighbour here is simulated on this host.
#[tokio::test]
async fn networks_next_to_the_host_are_unreachable() {
    let nb = FakeNeighbour::new();
    // Positive control: the neighbour answers the host.
    let mut s = TcpStream::connect_timeout(&SocketAddr::new(nb.ip.into(), nb.port), Duration::from_secs(2)).expect("host reaches the neighbour");
    let mut banner = String::new();
    s.read_to_string(&mut banner).expect("banner");
    assert_eq!(banner, "neighbour\n");
    let sbx = Sandbox::new();
    let targets = vec![("neighbour".to_string(), nb.ip.to_string(), nb.port)];
    for who in WHO {
        let r = py(&sbx, who, &connect_probe(&targets)).await;
        expect_results(who, &r, &[("neighbour", "timeout")]);
    }
}

#[tokio::test]
async fn mount_table_and_pid1_show_no_host_paths() {
    let h = harness();
    let sbx = Sandbox::new();
    let root = h.root.display().to_string();
    let r = sbx.sh_as("root", "cat /proc/self/mountinfo /proc/1/cmdline; echo; cat /proc/self/mounts").await;
    assert_eq!(r.exit_code, 0, "{r:#?}");
    assert!(r.stdout.contains("overlay"), "positive control: the overlay is listed\n{}", r.stdout);
    assert!(!r.stdout.contains(&root), "host data directory {root} leaks into the sandbox:\n{}", r.stdout);
    assert!(!r.stdout.contains("/work/") && !r.stdout.contains("target/debug"), "host paths leak:\n{}", r.stdout);
}

// ---------------------------------------------------------------------------
// Sandbox traffic without the sandbox's token
// ---------------------------------------------------------------------------

/// Every route the proxy carries to a sandbox's agent, as `(port, method,
/// path, content type, body)`. A route added to the agent belongs here too.
fn token_guarded_routes() -> Vec<(&'static str, &'static str, &'static str, &'static str, Vec<u8>)> {
    let envelope = |msg: serde_json::Value| airlock_proto::connect::json_envelope(&msg).to_vec();
    let json = |msg: serde_json::Value| serde_json::to_vec(&msg).expect("json");
    let start = serde_json::json!({"process": {"cmd": "/bin/bash", "args": ["-c", "id -u"]}, "stdin": false});
    let pid = serde_json::json!({"process": {"pid": 1}});
    let path = serde_json::json!({"path": "/home/user"});
    let mut v = vec![
        ("49983", "POST", "/process.Process/Start", "application/connect+json", envelope(start)),
        ("49983", "POST", "/process.Process/Connect", "application/connect+json", envelope(pid.clone())),
        ("49983", "POST", "/process.Process/StreamInput", "application/connect+json", envelope(serde_json::json!({"start": pid.clone()}))),
        ("49983", "POST", "/process.Process/List", "application/json", json(serde_json::json!({}))),
        ("49983", "POST", "/process.Process/Update", "application/json", json(pid.clone())),
        ("49983", "POST", "/process.Process/SendInput", "application/json", json(serde_json::json!({"process": {"pid": 1}, "input": {"stdin": "eA=="}}))),
        ("49983", "POST", "/process.Process/SendSignal", "application/json", json(serde_json::json!({"process": {"pid": 1}, "signal": "SIGNAL_SIGKILL"}))),
        ("49983", "POST", "/process.Process/CloseStdin", "application/json", json(pid)),
        ("49983", "POST", "/filesystem.Filesystem/WatchDir", "application/connect+json", envelope(path.clone())),
        ("49983", "GET", "/files?path=/etc/hostname", "", vec![]),
        ("49983", "POST", "/files?path=/home/user/planted", "application/octet-stream", b"x".to_vec()),
        ("49999", "POST", "/execute", "application/json", json(serde_json::json!({"code": "import os; print(os.getuid())"}))),
        ("49999", "POST", "/contexts", "application/json", json(serde_json::json!({"language": "python"}))),
        ("49999", "GET", "/contexts", "", vec![]),
        ("49999", "DELETE", "/contexts/some-context", "", vec![]),
        ("49999", "POST", "/contexts/some-context/restart", "", vec![]),
    ];
    for m in ["Stat", "MakeDir", "ListDir", "Remove", "CreateWatcher"] {
        let p: &'static str = Box::leak(format!("/filesystem.Filesystem/{m}").into_boxed_str());
        v.push(("49983", "POST", p, "application/json", json(path.clone())));
    }
    v.push(("49983", "POST", "/filesystem.Filesystem/Move", "application/json", json(serde_json::json!({"source": "/home/user", "destination": "/tmp/x"}))));
    for m in ["GetWatcherEvents", "RemoveWatcher"] {
        let p: &'static str = Box::leak(format!("/filesystem.Filesystem/{m}").into_boxed_str());
        v.push(("49983", "POST", p, "application/json", json(serde_json::json!({"watcherId": "w"}))));
    }
    v
}

/// Regression: requests for port 49999 reached the code interpreter before
/// any token check, so knowing a sandbox's id was enough to run code in it.
#[tokio::test]
async fn every_sandbox_route_refuses_a_missing_or_wrong_token() {
    let srv = crate::server::Server::start(&[]).await;
    let sbx = srv.create(serde_json::json!({"templateID": "base", "timeout": 300})).await;
    let id = sbx["sandboxID"].as_str().expect("id").to_string();
    let token = sbx["envdAccessToken"].as_str().expect("every v2 sandbox has an access token").to_string();
    let traffic = sbx["trafficAccessToken"].as_str().expect("and a traffic token for the interpreter").to_string();
    assert_ne!(token, traffic);
    for (port, method, path, ctype, body) in token_guarded_routes() {
        let mut attempts: Vec<(&str, Vec<(&str, &str)>)> = vec![
            ("no token", vec![]),
            ("wrong access token", vec![("x-access-token", "not-the-token")]),
            ("empty access token", vec![("x-access-token", "")]),
            ("wrong traffic token", vec![("e2b-traffic-access-token", "not-the-token")]),
        ];
        if port == "49983" {
            // The traffic token opens the interpreter only, never envd.
            attempts.push(("traffic token on envd", vec![("x-access-token", traffic.as_str()), ("e2b-traffic-access-token", traffic.as_str())]));
        }
        for (what, extra) in attempts {
            let mut headers = vec![("e2b-sandbox-id", id.as_str()), ("e2b-sandbox-port", port)];
            if !ctype.is_empty() {
                headers.push(("content-type", ctype));
            }
            headers.extend(extra);
            let (status, _, resp) = srv.req(method, path, &headers, Bytes::from(body.clone())).await.expect("request");
            assert_eq!(status, 401, "{method} {path} on port {port} with {what} must be refused, got {status}: {}", String::from_utf8_lossy(&resp));
        }
    }
    // Nothing those requests carried happened.
    let (_, out) = srv.run(&sbx, "test -e /home/user/planted && echo planted; test -e /tmp/x && echo moved; echo checked").await;
    assert_eq!(out, "checked\n");

    // Positive controls: /health is public on both ports; the access token
    // runs code; the traffic token alone manages contexts, as the official
    // code-interpreter SDKs send it.
    for port in ["49983", "49999"] {
        let (s, _, _) = srv.req("GET", "/health", &[("e2b-sandbox-id", &id), ("e2b-sandbox-port", port)], Bytes::new()).await.expect("health");
        assert!(s == 200 || s == 204, "health on {port} is public: {s}");
    }
    let exec = serde_json::to_vec(&serde_json::json!({"code": "import os; print(os.getuid())"})).expect("json");
    let (s, _, out) = srv
        .req("POST", "/execute", &[("e2b-sandbox-id", &id), ("e2b-sandbox-port", "49999"), ("content-type", "application/json"), ("x-access-token", &token)], Bytes::from(exec))
        .await
        .expect("execute");
    assert_eq!(s, 200);
    assert!(String::from_utf8_lossy(&out).contains("1000"), "code ran with the token: {}", String::from_utf8_lossy(&out));
    let (s, _, out) = srv
        .req(
            "POST",
            "/contexts",
            &[("e2b-sandbox-id", &id), ("e2b-sandbox-port", "49999"), ("content-type", "application/json"), ("e2b-traffic-access-token", &traffic)],
            Bytes::from_static(b"{}"),
        )
        .await
        .expect("contexts");
    assert_eq!(s, 200, "{}", String::from_utf8_lossy(&out));
    let (s, _, _) =
        srv.req("GET", "/contexts", &[("e2b-sandbox-id", &id), ("e2b-sandbox-port", "49999"), ("e2b-traffic-access-token", &traffic)], Bytes::new()).await.expect("contexts");
    assert_eq!(s, 200);
}

// ---------------------------------------------------------------------------
// Per-user kernel limits
// ---------------------------------------------------------------------------

/// Takes every inotify instance, queued signal and message-queue byte its
/// uid may have, reports the counts, then holds them.
const EXHAUST: &str = r#"
import ctypes, errno, os, signal, time
libc = ctypes.CDLL(None, use_errno=True)
def count(make):
    n = 0
    while n < 100000:
        ctypes.set_errno(0)
        if make() < 0:
            return n, errno.errorcode.get(ctypes.get_errno(), "?")
        n += 1
    return n, "none"
inotify = count(lambda: libc.inotify_init1(os.O_CLOEXEC))
sig = signal.SIGRTMIN
signal.pthread_sigmask(signal.SIG_BLOCK, [sig])
class Val(ctypes.Union):
    _fields_ = [("i", ctypes.c_int), ("p", ctypes.c_void_p)]
libc.sigqueue.argtypes = [ctypes.c_int, ctypes.c_int, Val]
sigs = count(lambda: libc.sigqueue(os.getpid(), sig, Val(0)))
libc.mq_open.restype = ctypes.c_int
mq = [0]
def mq_open():
    mq[0] += 1
    return libc.mq_open(f"/airlock-{os.getpid()}-{mq[0]}".encode(), os.O_CREAT | os.O_RDWR, 0o600, None)
queues = count(mq_open)
print("inotify", *inotify, "signals", *sigs, "mqueues", *queues, flush=True)
"#;

/// One of each, or the errno that stopped it.
const ONE_EACH: &str = r#"
import ctypes, errno, os, signal
libc = ctypes.CDLL(None, use_errno=True)
def one(label, make):
    ctypes.set_errno(0)
    r = make()
    print(label, "ok" if r >= 0 else errno.errorcode.get(ctypes.get_errno(), "?"), flush=True)
one("inotify", lambda: libc.inotify_init1(os.O_CLOEXEC))
sig = signal.SIGRTMIN + 1
signal.pthread_sigmask(signal.SIG_BLOCK, [sig])
class Val(ctypes.Union):
    _fields_ = [("i", ctypes.c_int), ("p", ctypes.c_void_p)]
libc.sigqueue.argtypes = [ctypes.c_int, ctypes.c_int, Val]
one("signal", lambda: libc.sigqueue(os.getpid(), sig, Val(0)))
name = f"/airlock-probe-{os.getpid()}".encode()
one("mqueue", lambda: libc.mq_open(name, os.O_CREAT | os.O_RDWR, 0o600, None))
libc.mq_unlink(name)
"#;

/// Regression: user namespaces made by host root charged every sandbox's
/// inotify instances, queued signals and message queues to host root, so
/// one sandbox could starve the host's daemons and every other sandbox.
#[tokio::test]
async fn per_user_kernel_limits_are_charged_to_the_sandbox_not_host_root() {
    let hog = Sandbox::new();
    let other = tokio::task::spawn_blocking(Sandbox::new).await.expect("second sandbox");
    // Root and user inside together take all the sandbox may have; the
    // scripts keep what they took until the sandbox is destroyed.
    let script = EXHAUST.replace('\'', "'\\''");
    for who in WHO {
        run_ok(&hog, who, &format!("python3 -c '{script}' > /tmp/exhaust-{who}.txt 2>&1 & for i in $(seq 600); do [ -s /tmp/exhaust-{who}.txt ] && break; sleep 0.1; done; sleep 3600 >/dev/null 2>&1 & disown -a; true")).await;
    }
    let user = run_ok(&hog, "root", "cat /tmp/exhaust-user.txt").await.stdout;
    let got: Vec<&str> = user.split_whitespace().collect();
    assert_eq!(got.len(), 9, "exhaust script output: {user}");
    // The limits really were reached inside (positive control).
    assert_eq!((got[2], got[5], got[8]), ("EMFILE", "EAGAIN", "EMFILE"), "limits reached as user: {user}");
    assert!(got[1].parse::<u32>().expect("count") > 0 && got[4].parse::<u32>().expect("count") > 0);

    let expect_all_ok = |who: &str, out: &str| {
        let m = kv(out);
        for k in ["inotify", "signal", "mqueue"] {
            assert_eq!(m.get(k).map(String::as_str), Some("ok"), "{who} could not get a {k} while another sandbox holds all of its own: {out}");
        }
    };
    // Host root is untouched...
    let host = std::process::Command::new("python3").arg("-c").arg(ONE_EACH).output().expect("python3 on the host");
    expect_all_ok("host root", &String::from_utf8_lossy(&host.stdout));
    // ...and so is another sandbox, as its root and its user.
    let script = ONE_EACH.replace('\'', "'\\''");
    for who in WHO {
        let r = run_ok(&other, who, &format!("python3 -c '{script}'")).await;
        expect_all_ok(&format!("{who} in another sandbox"), &r.stdout);
    }
}

#[tokio::test]
async fn root_inside_binds_low_ports_and_pings_its_own_loopback() {
    let sbx = Sandbox::new();
    for who in WHO {
        let r = py(
            &sbx,
            who,
            r#"
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
oserr("bind-80", lambda: s.bind(("127.0.0.1", 80)))
def ping():
    p = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP)
    p.settimeout(5)
    p.sendto(struct.pack("!BBHHH", 8, 0, 0, 0, 1) + b"airlock", ("127.0.0.1", 0))
    data, _ = p.recvfrom(1024)
    if data[0] != 0:
        raise OSError(errno.EPROTO, "not an echo reply")
oserr("ping", ping)
"#,
        )
        .await;
        expect_results(who, &r, &[("bind-80", "ok"), ("ping", "ok")]);
    }
}

#[tokio::test]
async fn host_side_secrets_are_readable_by_root_only() {
    use std::os::unix::fs::PermissionsExt;
    let srv = crate::server::Server::start(&[]).await;
    let sbx = srv.create(serde_json::json!({"templateID": "base"})).await;
    let id = sbx["sandboxID"].as_str().expect("id");
    let mode = |p: &Path| std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())).permissions().mode() & 0o777;
    assert_eq!(mode(&srv.data), 0o700, "data directory");
    for f in ["airlock.db", "airlock.db-wal", "airlock.db-shm"] {
        let p = srv.data.join(f);
        if f == "airlock.db" || p.exists() {
            assert_eq!(mode(&p), 0o600, "{f}");
        }
    }
    let dir = srv.data.join("sandboxes").join(id);
    for f in ["launch.json", "state.json", "agent.log"] {
        assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
    }
    // The token really is in there (so the mode is what protects it).
    let launch = std::fs::read_to_string(dir.join("launch.json")).expect("launch.json");
    assert!(launch.contains(sbx["envdAccessToken"].as_str().expect("token")));
}

// ---------------------------------------------------------------------------
// /tmp, /dev/shm and the OOM killer
// ---------------------------------------------------------------------------

/// Regression: an unbounded tmpfs `/tmp` written past the memory limit left
/// the OOM killer nothing to free but processes, PID 1 included, and the
/// sandbox died.
#[tokio::test]
async fn filling_tmp_fails_with_enospc_and_the_sandbox_lives() {
    let sbx = Sandbox::with(|s| s.resources.memory_mb = 256);
    let agent_before = run_ok(&sbx, "root", "stat -c %Y /proc/1").await.stdout;
    for dir in ["/tmp", "/dev/shm"] {
        let r = run(&sbx, "user", &format!("dd if=/dev/zero of={dir}/fill bs=1M count=600 2>&1; echo rc=$?")).await;
        assert!(r.stdout.contains("No space left on device") && !r.stdout.contains("rc=0"), "{dir} is bounded below the memory limit: {r:#?}");
        run_ok(&sbx, "user", &format!("rm -f {dir}/fill")).await;
    }
    let r = run_ok(&sbx, "root", "df -m /tmp | tail -1 | awk '{print $2}'").await;
    let size: u64 = r.stdout.trim().parse().expect("df size");
    assert!(size <= 128, "/tmp is at most half the memory limit: {size} MiB");
    // PID 1 is the one it was, and children are the OOM killer's first choice.
    assert_eq!(run_ok(&sbx, "root", "stat -c %Y /proc/1").await.stdout, agent_before);
    // The agent sets a child's score once spawn() returns (after exec):
    // read it from a process started after that.
    let r = run_ok(&sbx, "user", "sleep 0.5; cat /proc/1/oom_score_adj /proc/self/oom_score_adj").await;
    let scores: Vec<i32> = r.stdout.split_whitespace().map(|s| s.parse().expect("score")).collect();
    assert_eq!(scores.len(), 2, "{r:#?}");
    assert!(scores[1] >= scores[0] + 500, "children must score well above the agent: {scores:?}");
    // And a memory hog dies alone.
    let r = run(&sbx, "user", "python3 -c 'x = bytearray(1 << 30); print(len(x))'; echo rc=$?").await;
    assert!(r.stdout.contains("rc=137") || r.stdout.contains("MemoryError"), "{r:#?}");
    assert_eq!(run_ok(&sbx, "user", "echo alive").await.stdout, "alive\n");
}

// ---------------------------------------------------------------------------
// Host details
// ---------------------------------------------------------------------------

#[tokio::test]
async fn host_kernel_disk_and_id_details_are_masked() {
    let sbx = Sandbox::new();
    let id_base = {
        let launch: serde_json::Value = serde_json::from_slice(&std::fs::read(sandbox_dir(&sbx).join("launch.json")).expect("launch.json")).expect("json");
        launch["id_base"].as_u64().expect("id_base")
    };
    assert!(!std::fs::read_to_string("/proc/cmdline").expect("host cmdline").trim().is_empty(), "the host has a command line to hide");
    let r = run_ok(
        &sbx,
        "root",
        "for f in /proc/cmdline /proc/diskstats /proc/partitions /proc/zoneinfo /proc/iomem /sys/kernel/vmcoreinfo /sys/kernel/notes; do \
           if [ -e $f ]; then echo \"$f $(wc -c < $f)\"; else echo \"$f 0\"; fi; done; \
         echo \"/sys/block $(ls -A /sys/block | wc -l)\"; echo \"/proc/cpuinfo $(wc -c < /proc/cpuinfo)\"; echo \"/proc/meminfo $(wc -c < /proc/meminfo)\"",
    )
    .await;
    let m = kv(&r.stdout);
    for f in ["/proc/cmdline", "/proc/diskstats", "/proc/partitions", "/proc/zoneinfo", "/proc/iomem", "/sys/kernel/vmcoreinfo", "/sys/kernel/notes", "/sys/block"] {
        assert_eq!(m.get(f).map(String::as_str), Some("0"), "{f} must be empty inside: {r:#?}");
    }
    for f in ["/proc/cpuinfo", "/proc/meminfo"] {
        assert_ne!(m.get(f).map(String::as_str), Some("0"), "{f} stays readable: {r:#?}");
    }
    // No mount option carries a host id (which would give away the slot).
    let mounts = run_ok(&sbx, "user", "cat /proc/self/mountinfo").await.stdout;
    for (lo, hi) in [(id_base, id_base + 65536)] {
        for tok in mounts.split(|c: char| !c.is_ascii_digit()).filter_map(|t| t.parse::<u64>().ok()) {
            assert!(!(lo..hi).contains(&tok) || tok < 1 << 20, "mountinfo shows a host id {tok}:\n{mounts}");
        }
    }
    assert!(!mounts.contains(",uid=") && !mounts.contains(",gid="), "no uid=/gid= mount options:\n{mounts}");
    // /dev, /tmp and terminals still belong to the sandbox's users.
    let r = run_ok(&sbx, "user", "stat -c '%U %a' /tmp /dev /dev/shm; touch /tmp/mine && stat -c %U /tmp/mine").await;
    assert_eq!(r.stdout, "root 1777\nroot 755\nroot 1777\nuser\n");
}

// ---------------------------------------------------------------------------
// Magic links through /files and the filesystem RPCs
// ---------------------------------------------------------------------------

/// Regression: symlinks planted inside let `files.read` reach the agent's
/// own `/proc/self/exe` (the host binary), `/proc/self/maps` (host paths)
/// and `/proc/self/fd/{1,2}` (the host-side log).
#[tokio::test]
async fn files_never_follow_magic_links_into_the_agent() {
    let sbx = Sandbox::new();
    let host_bin = std::fs::canonicalize(env!("CARGO_BIN_EXE_airlock")).expect("binary").display().to_string();
    let links = [
        ("exe", "/proc/self/exe"),
        ("maps", "/proc/self/maps"),
        ("environ", "/proc/self/environ"),
        ("fd1", "/proc/self/fd/1"),
        ("fd2", "/proc/1/fd/2"),
        ("pid1-maps", "/proc/1/maps"),
        ("pid1-mem", "/proc/1/mem"),
        ("thread-maps", "/proc/thread-self/maps"),
        ("cwd-escape", "/proc/self/cwd/etc/hostname"),
        ("ok", "/etc/hostname"),
        ("proc-ok", "/proc/cpuinfo"),
    ];
    let plant: Vec<String> = links.iter().map(|(n, t)| format!("ln -sfn {t} /home/user/{n}")).collect();
    run_ok(&sbx, "user", &plant.join(" && ")).await;
    for (name, target) in links {
        let r = sbx.envd.request("GET", &format!("/files?path=/home/user/{name}"), &[], Bytes::new()).await;
        let status = r.status;
        let body = r.bytes().await;
        let text = String::from_utf8_lossy(&body);
        if name.ends_with("ok") {
            assert_eq!(status, 200, "{name} -> {target} is an ordinary file: {text}");
            assert!(!body.is_empty());
            continue;
        }
        assert_eq!(status, 403, "{name} -> {target} must be refused as forbidden, got {status} ({} bytes): {text}", body.len());
        assert!(!text.contains(&host_bin) && !text.contains("agent.log"), "{name}: the error leaks a host path: {text}");
    }
    // Writing through a link to the agent's stdout/stderr is refused too.
    for name in ["fd1", "fd2"] {
        let r = sbx.envd.request("POST", &format!("/files?path=/home/user/{name}"), &[("content-type", "application/octet-stream".into())], Bytes::from_static(b"planted")).await;
        assert_eq!(r.status, 403, "write through {name}");
    }
    let log = std::fs::read_to_string(sandbox_dir(&sbx).join("agent.log")).unwrap_or_default();
    assert!(!log.contains("planted"), "nothing reached the host-side log");
    // Stat and ListDir describe the links without resolving them to host paths.
    let st = sbx.envd.unary("filesystem.Filesystem", "Stat", serde_json::json!({"path": "/home/user/exe"})).await.expect("stat of the link itself");
    let target = st["entry"]["symlinkTarget"].as_str().unwrap_or_default();
    assert!(!target.contains(&host_bin), "Stat resolved the magic link to the host binary: {st}");
    let ls = sbx.envd.unary("filesystem.Filesystem", "ListDir", serde_json::json!({"path": "/home/user"})).await.expect("list");
    assert!(!ls.to_string().contains(&host_bin), "ListDir leaks the host binary path: {ls}");
    // The agent's stdio is not a host file at all.
    let r = run_ok(&sbx, "root", "readlink /proc/1/fd/1 /proc/1/fd/2 2>&1; ls -l /proc/1/fd 2>&1 | head -3; true").await;
    assert!(!r.stdout.contains("agent.log") && !r.stdout.contains(&host_bin), "{r:#?}");
}

// ---------------------------------------------------------------------------
// Inodes
// ---------------------------------------------------------------------------

/// Regression: one sandbox created a million empty files on the host's root
/// filesystem. Every sandbox now has its own filesystem by default, so it
/// runs out of its own inodes and nobody else's.
#[tokio::test]
async fn a_file_flood_exhausts_only_the_sandboxs_own_inodes() {
    let srv = crate::server::Server::start(&[]).await;
    // The default applies without asking: its own 10 GiB filesystem.
    let plain = srv.create(serde_json::json!({"templateID": "base"})).await;
    let (_, df) = srv.run(&plain, "df -m --output=size / | tail -1").await;
    let size: u64 = df.trim().parse().unwrap_or_else(|_| panic!("df: {df}"));
    assert!((9000..=10240).contains(&size), "default disk limit of 10 GiB, saw {size} MiB");
    // A small one floods quickly.
    let sbx = srv.create(serde_json::json!({"templateID": "base", "diskMB": 32})).await;
    for (s, want) in [(&plain, 10240), (&sbx, 32)] {
        let (_, v) = srv.api("GET", &format!("/sandboxes/{}", s["sandboxID"].as_str().expect("id")), None).await;
        assert_eq!(v["diskSizeMB"], want, "the limit is reported: {v}");
    }
    let (_, out) = srv
        .run(
            &sbx,
            "python3 -c '
import errno, os
os.makedirs(\"/home/user/flood\", exist_ok=True)
n = 0
try:
    while n < 2000000:
        open(f\"/home/user/flood/{n}\", \"w\").close(); n += 1
    print(n, \"none\")
except OSError as e:
    print(n, errno.errorcode[e.errno])
'; df --output=iavail / 2>&1 | tail -1",
        )
        .await;
    let words: Vec<&str> = out.split_whitespace().collect();
    assert_eq!(words.len(), 3, "{out}");
    let made: u64 = words[0].parse().expect("count");
    assert_eq!(words[1], "ENOSPC", "the flood ends at the sandbox's own limit: {out}");
    assert!(made > 1000 && made < 200_000, "a bounded number of files: {made}");
    assert_eq!(words[2], "0", "its own inodes are all used: {out}");
    // Its files are in its own image, not in the data directory's tree.
    let upper = srv.data.join("sandboxes").join(sbx["sandboxID"].as_str().expect("id")).join("upper");
    let host_dev = std::fs::metadata(&srv.data).expect("data dir").dev();
    assert_ne!(std::fs::metadata(&upper).expect("upper").dev(), host_dev, "the writable layer is a filesystem of its own");
    // The sandbox still works, and so does a new one.
    let (_, out) = srv.run(&sbx, "rm -rf /home/user/flood; echo alive").await;
    assert_eq!(out, "alive\n");
    let other = srv.create(serde_json::json!({"templateID": "base"})).await;
    let (_, out) = srv.run(&other, "touch /home/user/f && echo ok").await;
    assert_eq!(out, "ok\n");
}

// ---------------------------------------------------------------------------
// Shared host resources: pids and disk bandwidth
// ---------------------------------------------------------------------------

/// Regression: 32 sandboxes at 1024 pids each reached the host's `pid_max`.
#[tokio::test]
async fn all_sandboxes_together_leave_the_host_pids() {
    let sbx = Sandbox::new();
    let pid_max: u64 = read_trim(Path::new("/proc/sys/kernel/pid_max")).parse().expect("pid_max");
    let own = cgroup_file(&sbx, ("pids", "pids.max"), "pids.max");
    let base = own.parent().and_then(Path::parent).expect("sandbox groups sit under the airlock group").join("pids.max");
    let cap: u64 = read_trim(&base).parse().unwrap_or_else(|_| panic!("{} is a number", base.display()));
    assert_eq!(cap, pid_max / 4 * 3, "all sandboxes together are capped below pid_max ({pid_max})");
    // The sandbox's own limit sits below it, inside the capped group.
    assert_eq!(read_trim(&own), "1024");
}

#[tokio::test]
async fn direct_disk_io_is_throttled_per_sandbox() {
    let srv = crate::server::Server::start(&["--io-bps", "4194304"]).await;
    let sbx = srv.create(serde_json::json!({"templateID": "base"})).await;
    let id = sbx["sandboxID"].as_str().expect("id");
    // The limit is on the sandbox's group, for the data directory's disk.
    let (v1, v2) = (Path::new("/sys/fs/cgroup/blkio/airlock").join(id), Path::new("/sys/fs/cgroup/airlock").join(id));
    let setting = if v1.exists() { read_trim(&v1.join("blkio.throttle.write_bps_device")) } else { read_trim(&v2.join("io.max")) };
    assert!(setting.contains("4194304"), "limit set on the sandbox's group: {setting}");
    // 12 MiB at 4 MiB/s cannot take less than two seconds, whatever the
    // machine (a slow one only takes longer). Direct I/O: cgroup v1
    // throttles nothing else.
    let started = Instant::now();
    let (_, out) = srv.run(&sbx, "dd if=/dev/zero of=/home/user/f bs=1M count=12 oflag=direct 2>&1 | tail -1").await;
    let took = started.elapsed();
    assert!(out.contains("12582912 bytes"), "dd wrote everything: {out}");
    assert!(took >= Duration::from_secs(2), "12 MiB went through a 4 MiB/s limit in {took:?}");
}
