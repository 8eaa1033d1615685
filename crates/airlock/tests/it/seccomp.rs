//! The seccomp allow list, from inside a real sandbox: families and calls
//! off the list are refused the way the filter promises (`EAFNOSUPPORT`,
//! `ENOSYS`, `EPERM`, a kill for another ABI), and ordinary programs still
//! run under it.
//!
//! Probes run as root inside and as `user`; each refusal comes with a
//! positive control (the family exists on the host, the neighbouring call
//! works inside) so a broken probe cannot pass. Raw system calls go
//! through Python's ctypes with numbers from the `libc` crate. Nothing
//! here connects anywhere: the vsock sockets are only created.

use airlock_testkit::envd::*;

use crate::probe::{expect_results, kv, numbers, run, WHO};
use crate::support::*;

/// System call numbers for this architecture, as a Python dict literal.
fn syscall_numbers() -> String {
    #[allow(unused_mut)]
    let mut nr: Vec<(&str, libc::c_long)> = vec![
        ("getpid", libc::SYS_getpid),
        ("socket", libc::SYS_socket),
        ("socketpair", libc::SYS_socketpair),
        ("memfd_create", libc::SYS_memfd_create),
        ("memfd_secret", libc::SYS_memfd_secret),
        ("mount", libc::SYS_mount),
        ("statmount", 457),
        ("listmount", 458),
        ("open_tree_attr", 467),
    ];
    #[cfg(target_arch = "x86_64")]
    nr.push(("modify_ldt", libc::SYS_modify_ldt));
    numbers(&nr)
}

/// Runs a Python probe (prelude and this suite's numbers) as `who`.
async fn py(sbx: &Sandbox, who: &str, body: &str) -> CmdResult {
    crate::probe::py(sbx, who, &syscall_numbers(), body).await
}

/// Whether the host kernel can make sockets of `family` (the positive
/// control: if it can, the refusal inside is the filter's).
fn host_has_family(family: libc::c_int, ty: libc::c_int) -> bool {
    // SAFETY: socket with integer arguments; the fd, if any, is closed at once.
    let fd = unsafe { libc::socket(family, ty | libc::SOCK_CLOEXEC, 0) };
    if fd >= 0 {
        // SAFETY: our own fresh fd.
        unsafe { libc::close(fd) };
    }
    fd >= 0
}

#[tokio::test]
async fn vsock_sockets_are_refused() {
    let host_vsock = host_has_family(libc::AF_VSOCK, libc::SOCK_STREAM);
    let host_alg = host_has_family(libc::AF_ALG, libc::SOCK_SEQPACKET);
    eprintln!("host kernel: AF_VSOCK {host_vsock}, AF_ALG {host_alg}");
    let sbx = Sandbox::new();
    for who in WHO {
        let r = py(
            &sbx,
            who,
            r#"
oserr("vsock-stream", lambda: socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM))
oserr("vsock-dgram", lambda: socket.socket(socket.AF_VSOCK, socket.SOCK_DGRAM))
show("vsock-raw", "socket", socket.AF_VSOCK, socket.SOCK_STREAM, 0)
# The kernel reads the family as an int: bits above it change nothing.
show("vsock-high-bits", "socket", (1 << 32) | socket.AF_VSOCK, socket.SOCK_STREAM, 0)
sv = ctypes.create_string_buffer(8)
show("vsock-pair", "socketpair", socket.AF_VSOCK, socket.SOCK_STREAM, 0, sv)
oserr("vsock-pair-py", lambda: socket.socketpair(socket.AF_VSOCK, socket.SOCK_STREAM))
oserr("alg", lambda: socket.socket(socket.AF_ALG, socket.SOCK_SEQPACKET))
show("alg-pair", "socketpair", socket.AF_ALG, socket.SOCK_SEQPACKET, 0, sv)
# Positive controls: the families a sandbox uses.
a, b = oserr("unix-pair", lambda: socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)) or (None, None)
if a:
    a.sendall(b"x")
    print("unix-pair-data", b.recv(1).decode(), flush=True)
oserr("inet", lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).close())
oserr("inet6", lambda: socket.socket(socket.AF_INET6, socket.SOCK_DGRAM).close())
oserr("netlink", lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0).close())
show("inet-high-bits", "socket", (1 << 32) | socket.AF_INET, socket.SOCK_DGRAM, 0)
"#,
        )
        .await;
        expect_results(
            who,
            &r,
            &[
                ("vsock-stream", "EAFNOSUPPORT"),
                ("vsock-dgram", "EAFNOSUPPORT"),
                ("vsock-raw", "EAFNOSUPPORT"),
                ("vsock-high-bits", "EAFNOSUPPORT"),
                ("vsock-pair", "EAFNOSUPPORT"),
                ("vsock-pair-py", "EAFNOSUPPORT"),
                ("alg", "EAFNOSUPPORT"),
                ("alg-pair", "EAFNOSUPPORT"),
                ("unix-pair", "ok"),
                ("unix-pair-data", "x"),
                ("inet", "ok"),
                ("inet6", "ok"),
                ("netlink", "ok"),
                ("inet-high-bits", "ok"),
            ],
        );
    }
}

/// A C program making a call through the i386 ABI (`int 0x80`, getpid):
/// the filter allows one architecture only and kills the rest.
#[cfg(target_arch = "x86_64")]
const I386_C: &str = r#"
#include <stdio.h>
int main(void) {
    long r;
    printf("before\n");
    fflush(stdout);
    __asm__ volatile("int $0x80" : "=a"(r) : "a"(20L) : "memory");
    printf("survived %ld\n", r);
    return 0;
}
"#;

#[tokio::test]
async fn syscalls_off_the_allow_list_get_enosys() {
    let sbx = Sandbox::new();
    for who in WHO {
        let r = py(
            &sbx,
            who,
            r#"
status = dict(l.split(":\t", 1) for l in open("/proc/self/status").read().splitlines() if ":\t" in l)
print("seccomp-mode", status["Seccomp"].strip(), flush=True)
print("seccomp-filters", status.get("Seccomp_filters", "absent").strip(), flush=True)
print("getpid", "ok" if sys_("getpid")[0] == os.getpid() else "wrong", flush=True)
# Numbers no kernel has yet, or that this one has and the list leaves out
# (470 is listns on 6.18).
show("nr-470", 470)
show("nr-471", 471)
show("nr-1000", 1000)
show("nr-huge", 0x3fffffff)
if "modify_ldt" in NR:
    # x32 numbers (bit 30) are another ABI: unimplemented.
    show("x32-getpid", 0x40000000 | NR["getpid"])
    ldt = ctypes.create_string_buffer(16)
    show("modify_ldt", "modify_ldt", 0, ldt, 16)
# Calls that exist and are refused on purpose.
show("memfd_secret", "memfd_secret", 0)
show("open_tree_attr", "open_tree_attr", -100, b"/", 1, None, 0)
show("statmount", "statmount", None, None, 0, 0)
show("listmount", "listmount", None, None, 0, 0)
show("mount", "mount", b"none", b"/tmp", b"tmpfs", 0, None)
# Positive controls: allowed neighbours work.
fd = show("memfd_create", "memfd_create", b"probe", 1)
if fd >= 0:
    os.write(fd, b"hello")
    os.lseek(fd, 0, 0)
    print("memfd-data", os.read(fd, 5).decode(), flush=True)
oserr("memfd_create-py", lambda: os.close(os.memfd_create("py")))
"#,
        )
        .await;
        #[allow(unused_mut)]
        let mut want = vec![
            ("seccomp-mode", "2"),
            ("seccomp-filters", "1"),
            ("getpid", "ok"),
            ("nr-470", "ENOSYS"),
            ("nr-471", "ENOSYS"),
            ("nr-1000", "ENOSYS"),
            ("nr-huge", "ENOSYS"),
            ("memfd_secret", "EPERM"),
            ("open_tree_attr", "EPERM"),
            ("statmount", "EPERM"),
            ("listmount", "EPERM"),
            ("mount", "EPERM"),
            ("memfd_create", "ok"),
            ("memfd-data", "hello"),
            ("memfd_create-py", "ok"),
        ];
        #[cfg(target_arch = "x86_64")]
        want.extend([("x32-getpid", "ENOSYS"), ("modify_ldt", "EPERM")]);
        expect_results(who, &r, &want);
    }

    // The i386 ABI kills the process (SIGSYS: 128 + 31 in the shell).
    #[cfg(target_arch = "x86_64")]
    {
        let r = run(&sbx, "root", "command -v gcc >/dev/null && echo GCC yes || echo GCC no").await;
        if kv(&r.stdout).get("GCC").map(String::as_str) == Some("yes") {
            let r = run(&sbx, "user", &format!("cd /tmp && cat > i386.c <<'CEOF'\n{I386_C}\nCEOF\ngcc -o i386 i386.c || exit 1\nulimit -c 0\n./i386\necho \"STATUS $?\"")).await;
            expect_results("user", &r, &[("before", ""), ("STATUS", "159")]);
            assert!(!r.stdout.contains("survived"), "{r:#?}");
        } else {
            eprintln!("gcc is not in the sandbox: i386 ABI check skipped");
        }
    }
}

/// A C program using what libc, threads and event loops use (clone3 and
/// io_uring fallbacks included); prints `c-ok` when every step worked.
const EVERYDAY_C: &str = r#"
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;
#define CHECK(c) do { if (!(c)) { printf("failed %s\n", #c); fflush(stdout); return 1; } } while (0)

static void *worker(void *arg) { *(int *)arg += 41; return arg; }

int main(void) {
    int v = 1; pthread_t t; void *res;
    CHECK(pthread_create(&t, NULL, worker, &v) == 0 && pthread_join(t, &res) == 0 && v == 42);

    pid_t p; char *argv[] = {"true", NULL}; int st;
    CHECK(posix_spawnp(&p, "true", NULL, NULL, argv, environ) == 0);
    CHECK(waitpid(p, &st, 0) == p && WIFEXITED(st) && WEXITSTATUS(st) == 0);
    p = fork();
    if (p == 0) { execlp("true", "true", (char *)NULL); _exit(127); }
    CHECK(p > 0 && waitpid(p, &st, 0) == p && WEXITSTATUS(st) == 0);

    int ep = epoll_create1(EPOLL_CLOEXEC), ev = eventfd(0, EFD_CLOEXEC);
    struct epoll_event e = { .events = EPOLLIN }, out;
    CHECK(ep >= 0 && ev >= 0 && epoll_ctl(ep, EPOLL_CTL_ADD, ev, &e) == 0);
    uint64_t one = 1;
    CHECK(write(ev, &one, 8) == 8 && epoll_wait(ep, &out, 1, 1000) == 1);

    int tf = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC);
    struct itimerspec its = { .it_value = { 0, 1000000 } };
    uint64_t ticks;
    CHECK(tf >= 0 && timerfd_settime(tf, 0, &its, NULL) == 0 && read(tf, &ticks, 8) == 8);

    sigset_t set; sigemptyset(&set); sigaddset(&set, SIGUSR1);
    CHECK(sigprocmask(SIG_BLOCK, &set, NULL) == 0);
    int sf = signalfd(-1, &set, SFD_CLOEXEC);
    struct signalfd_siginfo si;
    CHECK(sf >= 0 && kill(getpid(), SIGUSR1) == 0 && read(sf, &si, sizeof si) == sizeof si);

    int in = inotify_init1(IN_CLOEXEC);
    CHECK(in >= 0 && inotify_add_watch(in, "/tmp", IN_CREATE) >= 0);

    int mf = memfd_create("c", MFD_CLOEXEC);
    CHECK(mf >= 0 && ftruncate(mf, 4096) == 0);
    char *m = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, mf, 0);
    CHECK(m != MAP_FAILED && (strcpy(m, "hi"), munmap(m, 4096) == 0));

    char buf[16];
    CHECK(getrandom(buf, sizeof buf, 0) == sizeof buf);
    struct statx sx;
    CHECK(statx(AT_FDCWD, "/tmp", 0, STATX_BASIC_STATS, &sx) == 0);
    struct timespec ts = { 0, 1000 };
    CHECK(clock_nanosleep(CLOCK_MONOTONIC, 0, &ts, NULL) == 0);
    printf("c-ok\n");
    return 0;
}
"#;

#[tokio::test]
async fn ordinary_programs_still_work_under_the_allow_list() {
    let sbx = Sandbox::new();
    let tools = run(&sbx, "root", "for t in gcc node; do command -v $t >/dev/null && echo \"HAVE $t\"; done; true").await;
    let have = |t: &str| tools.stdout.lines().any(|l| l == format!("HAVE {t}"));
    if have("gcc") {
        let r = run(
            &sbx,
            "root",
            &format!(
                "cat > /tmp/everyday.c <<'CEOF'\n{EVERYDAY_C}\nCEOF\ntimeout -s KILL 60 gcc -O1 -pthread -o /tmp/everyday /tmp/everyday.c && chmod 755 /tmp/everyday && echo built"
            ),
        )
        .await;
        assert_eq!(r.stdout.trim(), "built", "gcc (cc1, as, ld) works inside\n{r:#?}");
    } else {
        eprintln!("gcc is not in the sandbox: the C part is skipped");
    }
    if !have("node") {
        eprintln!("node is not in the sandbox: the Node.js part is skipped");
    }
    for who in WHO {
        let r = run(
            &sbx,
            who,
            r#"
cd "$(mktemp -d)"
echo "pipeline $(seq 1 100000 | sort -rn | head -3 | tr '\n' ' ')"
ls -la / >/dev/null && echo "ls ok"
ps -eo pid,comm >/dev/null && echo "ps $(ps -eo pid= | wc -l | awk '$1 > 1 {print "ok"}')"
echo data > f && cp f g && mv g h && ln -s h l && chmod 600 h && touch -d @0 h && cat l >/dev/null && echo "files ok"
mkfifo fifo && (echo through > fifo &) && echo "fifo $(cat fifo)"
tar czf a.tgz f h && tar tzf a.tgz | wc -l | sed 's/^/tar /'
flock lock true && echo "flock ok"
timeout 5 sleep 0.1 && echo "timeout ok"
df / >/dev/null && stat / >/dev/null && id -u >/dev/null && date +%s >/dev/null && echo "info ok"
python3 - <<'PYEOF'
import asyncio, concurrent.futures, mmap, multiprocessing, os, resource, signal, socket, subprocess, tempfile, threading
def square(x):
    return x * x
with concurrent.futures.ThreadPoolExecutor(4) as ex:
    print("py-threads", "ok" if sum(ex.map(square, range(100))) == 328350 else "wrong", flush=True)
print("py-subprocess", subprocess.run(["echo", "hi"], capture_output=True, text=True).stdout.strip(), flush=True)
with multiprocessing.get_context("fork").Pool(2) as pool:
    print("py-multiprocessing", "ok" if pool.map(square, range(10))[-1] == 81 else "wrong", flush=True)
async def main():
    p = await asyncio.create_subprocess_exec("echo", "async", stdout=asyncio.subprocess.PIPE)
    out, _ = await p.communicate()
    await asyncio.sleep(0.01)
    return out.decode().strip()
print("py-asyncio", asyncio.run(main()), flush=True)
srv = socket.create_server(("127.0.0.1", 0))
c = socket.create_connection(srv.getsockname())
s, _ = srv.accept()
c.sendall(b"ping")
print("py-tcp", s.recv(4).decode(), flush=True)
with tempfile.TemporaryFile() as f:
    f.write(b"x" * 4096); f.flush()
    print("py-mmap", "ok" if mmap.mmap(f.fileno(), 4096)[:1] == b"x" else "wrong", flush=True)
signal.signal(signal.SIGALRM, lambda *a: print("py-alarm ok", flush=True))
signal.setitimer(signal.ITIMER_REAL, 0.01)
threading.Event().wait(0.2)
resource.getrlimit(resource.RLIMIT_NOFILE)
print("py-misc", "ok" if len(os.getrandom(8)) == 8 and os.sched_getaffinity(0) else "wrong", flush=True)
PYEOF
"#,
        )
        .await;
        assert_eq!(r.exit_code, 0, "as {who}\n{r:#?}");
        expect_results(
            who,
            &r,
            &[
                ("pipeline", "100000 99999 99998"),
                ("ls", "ok"),
                ("ps", "ok"),
                ("files", "ok"),
                ("fifo", "through"),
                ("tar", "2"),
                ("flock", "ok"),
                ("timeout", "ok"),
                ("info", "ok"),
                ("py-threads", "ok"),
                ("py-subprocess", "hi"),
                ("py-multiprocessing", "ok"),
                ("py-asyncio", "async"),
                ("py-tcp", "ping"),
                ("py-mmap", "ok"),
                ("py-alarm", "ok"),
                ("py-misc", "ok"),
            ],
        );
        if have("gcc") {
            let r = run(&sbx, who, "timeout -s KILL 30 /tmp/everyday").await;
            assert_eq!(r.stdout.trim(), "c-ok", "as {who}\n{r:#?}");
        }
        if have("node") {
            let r = run(
                &sbx,
                who,
                r#"timeout -s KILL 60 node -e '
const { execFileSync } = require("child_process");
const { Worker } = require("worker_threads");
const w = new Worker("require(\"worker_threads\").parentPort.postMessage(6 * 7)", { eval: true });
w.on("message", (m) => console.log("node", m === 42 && execFileSync("echo", ["ok"]).toString().trim()));
'"#,
            )
            .await;
            expect_results(who, &r, &[("node", "ok")]);
        }
    }
}
