//! The system-call filter and capability set of every sandbox process.
//!
//! The filter is an allow list modelled on the container runtimes' default
//! profile (moby/containerd `default.json` for an unprivileged container).
//! Every number falls in one of three groups:
//!
//! - allowed: what ordinary programs use (files, memory, processes and
//!   threads, signals, time, sockets, System V and POSIX IPC, AIO, epoll and
//!   friends, `ptrace` and `process_vm_*` of one's own processes, `seccomp`
//!   so programs can stack their own, stricter filters, landlock, ...);
//! - refused with `EPERM`: calls that exist but reach kernel-wide state or
//!   widen the attack surface: modules, kexec, reboot, swap, keys, bpf,
//!   perf, io_uring, userfaultfd, clocks, accounting, quotas, the whole mount
//!   API and the mount-table queries, entering namespaces, `syslog`,
//!   `fanotify_init`, `open_by_handle_at`, `memfd_secret`, `modify_ldt`,
//!   port I/O;
//! - everything else, calls newer kernels add included: `ENOSYS`, what a
//!   kernel without them answers, so libc and runtimes fall back to older
//!   calls. A new call is allowed only once someone adds it here.
//!
//! Five calls are decided by their first argument: `clone` and `unshare`
//! are refused (`EPERM`) when asked for a new namespace; `socket` and
//! `socketpair` are allowed for unix, IPv4, IPv6, netlink and packet
//! sockets and answer `EAFNOSUPPORT` for every other family, as a kernel
//! without it would (notably `AF_VSOCK`: vsock is not per network namespace,
//! so a sandbox would share the host's port space and on a VM host reach
//! the hypervisor; refusing families also stops sockets from loading
//! protocol modules on the host); `personality` accepts only the harmless
//! personas. `clone3` answers `ENOSYS`: its flags sit in memory a filter
//! cannot read, and libc then falls back to `clone`, whose flags are checked.
//! Another ABI on the same CPU (i386 on x86_64) kills the process, as the
//! filter has never allowed it; x32 numbers answer `ENOSYS`.
//!
//! Deliberately not done: no pointer is followed and no request code of
//! `ioctl`, `prctl`, `fcntl` or `setsockopt` is inspected, nor socket types
//! and protocols (capabilities and the network namespace govern raw
//! sockets and netlink). Most refused calls would fail anyway, since every
//! namespace but the user namespace is owned by the host: the filter is the
//! second wall, and it narrows the kernel code a sandbox can reach.
//!
//! The filter is one classic-BPF program generated here (`bpf`): a binary
//! search over the numbers, a few comparisons per call, not one per listed
//! call. The verdict of most calls depends on the number alone, which lets
//! the kernel (5.11+) cache it and skip the filter for those calls entirely.

mod bpf;
#[cfg(test)]
mod tests;

use bpf::Rule;

#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("building seccomp filter: {0}")]
    Build(String),
    #[error("{what}")]
    Sys {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!("the seccomp filter knows the system calls of x86_64 and aarch64 only");

/// `AUDIT_ARCH_*` of the native ABI: the ELF machine with the 64-bit and
/// little-endian flags.
#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e;
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7;

/// x32 programs make x86_64 calls (same arch value) with bit 30 set in the
/// number. They answer `ENOSYS`, what a kernel built without x32 support
/// answers: no x32 program can run here, and any errno but `ENOSYS` would
/// suggest the call exists.
#[cfg(target_arch = "x86_64")]
const FOREIGN_ABI_FROM: Option<u32> = Some(0x4000_0000);
#[cfg(not(target_arch = "x86_64"))]
const FOREIGN_ABI_FROM: Option<u32> = None;

/// System call numbers: libc's, plus the ones it does not define (yet, or
/// on aarch64, where it leaves out the numbers the ILP32 ABI lacks).
#[allow(non_upper_case_globals)]
mod nr {
    pub(super) use libc::*;

    // Numbers from 424 up are the same on every architecture.
    pub(super) const SYS_cachestat: c_long = 451;
    pub(super) const SYS_map_shadow_stack: c_long = 453;
    pub(super) const SYS_futex_wake: c_long = 454;
    pub(super) const SYS_futex_wait: c_long = 455;
    pub(super) const SYS_futex_requeue: c_long = 456;
    pub(super) const SYS_statmount: c_long = 457;
    pub(super) const SYS_listmount: c_long = 458;
    pub(super) const SYS_setxattrat: c_long = 463;
    pub(super) const SYS_getxattrat: c_long = 464;
    pub(super) const SYS_listxattrat: c_long = 465;
    pub(super) const SYS_removexattrat: c_long = 466;
    pub(super) const SYS_open_tree_attr: c_long = 467;

    #[cfg(target_arch = "x86_64")]
    pub(super) const SYS_io_pgetevents: c_long = 333;
    #[cfg(target_arch = "x86_64")]
    pub(super) const SYS_uretprobe: c_long = 335;
    // Gone from the kernel, still numbers.
    #[cfg(target_arch = "x86_64")]
    pub(super) const SYS_create_module: c_long = 174;
    #[cfg(target_arch = "x86_64")]
    pub(super) const SYS_get_kernel_syms: c_long = 177;
    #[cfg(target_arch = "x86_64")]
    pub(super) const SYS_query_module: c_long = 178;

    #[cfg(target_arch = "aarch64")]
    pub const SYS_renameat: c_long = 38;
    #[cfg(target_arch = "aarch64")]
    pub const SYS_sync_file_range: c_long = 84;
    #[cfg(target_arch = "aarch64")]
    pub const SYS_getrlimit: c_long = 163;
    #[cfg(target_arch = "aarch64")]
    pub const SYS_setrlimit: c_long = 164;
    #[cfg(target_arch = "aarch64")]
    pub const SYS_io_pgetevents: c_long = 292;
    #[cfg(target_arch = "aarch64")]
    pub const SYS_fchmodat2: c_long = 452;
}

/// A system call by name, for the tests' messages, and number.
type Call = (&'static str, u32);

macro_rules! call {
    ($name:ident) => {
        (stringify!($name), nr::$name as u32)
    };
}

macro_rules! calls {
    ($($name:ident),* $(,)?) => { vec![$(call!($name)),*] };
}

/// The calls any process in the sandbox may make, whatever the arguments.
#[rustfmt::skip]
fn allowed() -> Vec<Call> {
    #[allow(unused_mut)] // extended on x86_64 only
    let mut v = calls![
        // Files and descriptors.
        SYS_read, SYS_write, SYS_readv, SYS_writev, SYS_pread64, SYS_pwrite64, SYS_preadv, SYS_pwritev,
        SYS_preadv2, SYS_pwritev2, SYS_lseek, SYS_close, SYS_close_range, SYS_dup, SYS_dup3, SYS_fcntl,
        SYS_ioctl, SYS_flock, SYS_fsync, SYS_fdatasync, SYS_syncfs, SYS_sync, SYS_sync_file_range,
        SYS_fallocate, SYS_fadvise64, SYS_readahead, SYS_ftruncate, SYS_truncate, SYS_openat, SYS_openat2,
        SYS_newfstatat, SYS_fstat, SYS_statx, SYS_statfs, SYS_fstatfs, SYS_faccessat, SYS_faccessat2,
        SYS_fchmod, SYS_fchmodat, SYS_fchmodat2, SYS_fchown, SYS_fchownat, SYS_utimensat, SYS_mkdirat,
        SYS_mknodat, SYS_unlinkat, SYS_renameat, SYS_renameat2, SYS_linkat, SYS_symlinkat, SYS_readlinkat,
        SYS_getdents64, SYS_getcwd, SYS_chdir, SYS_fchdir, SYS_chroot, SYS_umask, SYS_name_to_handle_at,
        SYS_copy_file_range, SYS_sendfile, SYS_splice, SYS_tee, SYS_vmsplice, SYS_cachestat, SYS_pipe2,
        // Extended attributes.
        SYS_setxattr, SYS_lsetxattr, SYS_fsetxattr, SYS_getxattr, SYS_lgetxattr, SYS_fgetxattr,
        SYS_listxattr, SYS_llistxattr, SYS_flistxattr, SYS_removexattr, SYS_lremovexattr,
        SYS_fremovexattr, SYS_setxattrat, SYS_getxattrat, SYS_listxattrat, SYS_removexattrat,
        // Waiting for events. fanotify_mark needs a group only fanotify_init
        // (refused) makes.
        SYS_epoll_create1, SYS_epoll_ctl, SYS_epoll_pwait, SYS_epoll_pwait2, SYS_ppoll, SYS_pselect6,
        SYS_eventfd2, SYS_signalfd4, SYS_timerfd_create, SYS_timerfd_settime, SYS_timerfd_gettime,
        SYS_inotify_init1, SYS_inotify_add_watch, SYS_inotify_rm_watch, SYS_fanotify_mark,
        // Linux native AIO, as libaio uses it (io_uring is refused).
        SYS_io_setup, SYS_io_destroy, SYS_io_submit, SYS_io_cancel, SYS_io_getevents, SYS_io_pgetevents,
        // Memory.
        SYS_brk, SYS_mmap, SYS_munmap, SYS_mremap, SYS_mprotect, SYS_madvise, SYS_msync, SYS_mincore,
        SYS_mlock, SYS_mlock2, SYS_munlock, SYS_mlockall, SYS_munlockall, SYS_remap_file_pages,
        SYS_memfd_create, SYS_membarrier, SYS_pkey_alloc, SYS_pkey_free, SYS_pkey_mprotect,
        SYS_map_shadow_stack, SYS_mseal,
        // Processes and threads (clone, clone3 and unshare are conditional).
        SYS_execve, SYS_execveat, SYS_exit, SYS_exit_group, SYS_wait4, SYS_waitid, SYS_kill, SYS_tkill,
        SYS_tgkill, SYS_getpid, SYS_getppid, SYS_gettid, SYS_getpgid, SYS_setpgid, SYS_getsid, SYS_setsid,
        SYS_set_tid_address, SYS_set_robust_list, SYS_get_robust_list, SYS_rseq, SYS_prctl,
        SYS_restart_syscall, SYS_pidfd_open, SYS_pidfd_send_signal, SYS_process_mrelease, SYS_prlimit64,
        SYS_getrlimit, SYS_setrlimit, SYS_getrusage, SYS_getpriority, SYS_setpriority, SYS_ioprio_get,
        SYS_ioprio_set, SYS_sched_yield, SYS_sched_getaffinity, SYS_sched_setaffinity, SYS_sched_getattr,
        SYS_sched_setattr, SYS_sched_getparam, SYS_sched_setparam, SYS_sched_getscheduler,
        SYS_sched_setscheduler, SYS_sched_get_priority_max, SYS_sched_get_priority_min,
        SYS_sched_rr_get_interval, SYS_getcpu, SYS_seccomp, SYS_landlock_create_ruleset,
        SYS_landlock_add_rule, SYS_landlock_restrict_self,
        // Other processes, under the kernel's ptrace access checks (the
        // agent is non-dumpable). Docker allows ptrace and process_vm_*
        // (kernels 4.8+, where ptrace no longer bypasses seccomp) but keeps
        // kcmp, pidfd_getfd and process_madvise for CAP_SYS_PTRACE; they
        // pass the same access check as ptrace, so they give nothing more.
        SYS_ptrace, SYS_process_vm_readv, SYS_process_vm_writev, SYS_kcmp, SYS_pidfd_getfd,
        SYS_process_madvise,
        // Credentials (capabilities decide what succeeds).
        SYS_getuid, SYS_geteuid, SYS_getgid, SYS_getegid, SYS_getresuid, SYS_getresgid, SYS_getgroups,
        SYS_setuid, SYS_setgid, SYS_setreuid, SYS_setregid, SYS_setresuid, SYS_setresgid, SYS_setfsuid,
        SYS_setfsgid, SYS_setgroups, SYS_capget, SYS_capset,
        // Signals.
        SYS_rt_sigaction, SYS_rt_sigprocmask, SYS_rt_sigreturn, SYS_rt_sigpending, SYS_rt_sigsuspend,
        SYS_rt_sigtimedwait, SYS_rt_sigqueueinfo, SYS_rt_tgsigqueueinfo, SYS_sigaltstack,
        // Time (reading it and sleeping; setting it is refused).
        SYS_clock_gettime, SYS_clock_getres, SYS_clock_nanosleep, SYS_nanosleep, SYS_gettimeofday,
        SYS_getitimer, SYS_setitimer, SYS_timer_create, SYS_timer_settime, SYS_timer_gettime,
        SYS_timer_getoverrun, SYS_timer_delete, SYS_times,
        // Futexes.
        SYS_futex, SYS_futex_waitv, SYS_futex_wake, SYS_futex_wait, SYS_futex_requeue,
        // Sockets (socket and socketpair are conditional).
        SYS_bind, SYS_connect, SYS_listen, SYS_accept, SYS_accept4, SYS_getsockname, SYS_getpeername,
        SYS_getsockopt, SYS_setsockopt, SYS_sendto, SYS_recvfrom, SYS_sendmsg, SYS_recvmsg, SYS_sendmmsg,
        SYS_recvmmsg, SYS_shutdown,
        // System V and POSIX IPC, private to the sandbox's IPC namespace.
        SYS_mq_open, SYS_mq_unlink, SYS_mq_timedsend, SYS_mq_timedreceive, SYS_mq_notify,
        SYS_mq_getsetattr, SYS_msgget, SYS_msgsnd, SYS_msgrcv, SYS_msgctl, SYS_semget, SYS_semop,
        SYS_semtimedop, SYS_semctl, SYS_shmget, SYS_shmat, SYS_shmdt, SYS_shmctl,
        SYS_uname, SYS_sysinfo, SYS_getrandom,
    ];
    // The calls x86_64 kept from before the generic table (aarch64 has
    // only their *at and flag-taking successors), and its own.
    #[cfg(target_arch = "x86_64")]
    v.extend(calls![
        SYS_open, SYS_creat, SYS_stat, SYS_lstat, SYS_access, SYS_pipe, SYS_poll, SYS_select,
        SYS_epoll_create, SYS_epoll_wait, SYS_eventfd, SYS_signalfd, SYS_inotify_init, SYS_dup2, SYS_fork,
        SYS_vfork, SYS_alarm, SYS_pause, SYS_time, SYS_utime, SYS_utimes, SYS_futimesat, SYS_link,
        SYS_unlink, SYS_symlink, SYS_readlink, SYS_rename, SYS_mkdir, SYS_rmdir, SYS_mknod, SYS_chmod,
        SYS_chown, SYS_lchown, SYS_getdents, SYS_getpgrp, SYS_arch_prctl, SYS_set_thread_area,
        SYS_get_thread_area,
        // The return trampoline of user-space probes; 6.14+ kernels let it
        // through the filter themselves.
        SYS_uretprobe,
    ]);
    v
}

/// Calls that exist but are refused (`EPERM`): they act on the whole
/// machine, or open kernel code no sandbox needs.
#[rustfmt::skip]
fn refused() -> Vec<Call> {
    #[allow(unused_mut)] // extended on x86_64 only
    let mut v = calls![
        SYS_init_module, SYS_finit_module, SYS_delete_module, SYS_kexec_load, SYS_kexec_file_load,
        SYS_reboot, SYS_swapon, SYS_swapoff, SYS_keyctl, SYS_add_key, SYS_request_key, SYS_bpf,
        SYS_perf_event_open, SYS_userfaultfd, SYS_io_uring_setup, SYS_io_uring_enter, SYS_io_uring_register,
        // Mounting, old and new API, and reading other mounts' details.
        SYS_mount, SYS_umount2, SYS_pivot_root, SYS_fsopen, SYS_fsconfig, SYS_fsmount, SYS_fspick,
        SYS_move_mount, SYS_open_tree, SYS_open_tree_attr, SYS_mount_setattr, SYS_statmount, SYS_listmount,
        SYS_setns, SYS_acct, SYS_settimeofday, SYS_clock_settime, SYS_clock_adjtime, SYS_adjtimex,
        SYS_lookup_dcookie, SYS_open_by_handle_at, SYS_quotactl, SYS_quotactl_fd, SYS_syslog, SYS_vhangup,
        SYS_sethostname, SYS_setdomainname, SYS_fanotify_init,
        // Memory taken out of the kernel's own mapping: hides a process's
        // data from the host's inspection and splits the kernel's direct
        // map (why kernels ship it disabled by default).
        SYS_memfd_secret,
    ];
    #[cfg(target_arch = "x86_64")]
    v.extend(calls![
        SYS_create_module, SYS_get_kernel_syms, SYS_query_module, SYS_iopl, SYS_ioperm,
        // Per-process LDT: 16-bit segments, a history of kernel bugs, and
        // nothing a 64-bit program needs.
        SYS_modify_ldt, SYS_nfsservctl, SYS_uselib, SYS_ustat, SYS_sysfs, SYS__sysctl,
    ]);
    v
}

/// Namespace flags `clone` and `unshare` may not be given. 0x80 is
/// `CLONE_NEWTIME` (for `clone` it falls in the exit signal, which is never
/// that large). Only the low 32 bits of the flags are compared: `clone`
/// drops the upper half and `unshare` refuses it (`EINVAL`).
const NS_FLAGS: u32 =
    (libc::CLONE_NEWNS | libc::CLONE_NEWUTS | libc::CLONE_NEWIPC | libc::CLONE_NEWUSER | libc::CLONE_NEWPID | libc::CLONE_NEWNET | libc::CLONE_NEWCGROUP) as u32 | 0x80;

/// The address families a sandbox may open sockets of.
const SOCKET_FAMILIES: &[u32] = &[libc::AF_UNIX as u32, libc::AF_INET as u32, libc::AF_INET6 as u32, libc::AF_NETLINK as u32, libc::AF_PACKET as u32];

/// Harmless personalities (Docker's set): `PER_LINUX`, `PER_LINUX32`,
/// `UNAME26`, both, and the query. Anything else (`READ_IMPLIES_EXEC`,
/// `ADDR_NO_RANDOMIZE`, ...) weakens the sandbox.
const PERSONALITIES: &[u32] = &[0x0, 0x8, 0x2_0000, 0x2_0008, 0xffff_ffff];

/// The calls decided by an argument, and `clone3`.
fn conditional() -> Vec<(Call, Rule)> {
    let no_namespaces = Rule::RefuseFlags { arg: 0, mask: NS_FLAGS, errno: libc::EPERM };
    let families = Rule::AllowValues { arg: 0, values: SOCKET_FAMILIES, errno: libc::EAFNOSUPPORT };
    vec![
        // The flags are the first argument of both, on x86_64 and aarch64.
        (call!(SYS_clone), no_namespaces),
        (call!(SYS_unshare), no_namespaces),
        (call!(SYS_socket), families),
        (call!(SYS_socketpair), families),
        (call!(SYS_personality), Rule::AllowValues { arg: 0, values: PERSONALITIES, errno: libc::EPERM }),
        (call!(SYS_clone3), Rule::Errno(libc::ENOSYS)),
    ]
}

/// The whole policy by number.
fn policy() -> Vec<(Call, Rule)> {
    let mut v: Vec<(Call, Rule)> = allowed().into_iter().map(|c| (c, Rule::Allow)).collect();
    v.extend(refused().into_iter().map(|c| (c, Rule::Errno(libc::EPERM))));
    v.extend(conditional());
    v
}

/// The filter as a classic-BPF program for this architecture.
pub fn program() -> Result<Vec<libc::sock_filter>, SecurityError> {
    let calls: Vec<(u32, Rule)> = policy().into_iter().map(|((_, nr), rule)| (nr, rule)).collect();
    bpf::compile(&bpf::Spec { arch: AUDIT_ARCH, foreign_from: FOREIGN_ABI_FROM, default: Rule::Errno(libc::ENOSYS), calls: &calls }).map_err(SecurityError::Build)
}

/// Installs the filter on the calling thread; everything it forks inherits
/// it. Requires `no_new_privs` (set here).
pub fn install() -> Result<(), SecurityError> {
    set_no_new_privs()?;
    let mut prog = program()?;
    let len = u16::try_from(prog.len()).map_err(|_| SecurityError::Build(format!("program of {} instructions", prog.len())))?;
    let fprog = libc::sock_fprog { len, filter: prog.as_mut_ptr() };
    // SAFETY: `fprog` points at `prog`, alive and unchanged for the call; the
    // kernel copies the program and keeps no pointer to it.
    let rc = unsafe { libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, 0, &fprog as *const libc::sock_fprog) };
    if rc != 0 {
        return Err(SecurityError::Sys { what: "installing seccomp filter", source: std::io::Error::last_os_error() });
    }
    Ok(())
}

pub fn set_no_new_privs() -> Result<(), SecurityError> {
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(SecurityError::Sys { what: "setting no_new_privs", source: std::io::Error::last_os_error() });
    }
    Ok(())
}

/// The capabilities an unprivileged container keeps (the container runtimes'
/// default set). Everything else leaves the bounding set, so no process in
/// the sandbox, root included, can ever hold it.
pub const KEPT_CAPS: &[u32] = &[
    0,  // CAP_CHOWN
    1,  // CAP_DAC_OVERRIDE
    3,  // CAP_FOWNER
    4,  // CAP_FSETID
    5,  // CAP_KILL
    6,  // CAP_SETGID
    7,  // CAP_SETUID
    8,  // CAP_SETPCAP
    10, // CAP_NET_BIND_SERVICE
    13, // CAP_NET_RAW
    18, // CAP_SYS_CHROOT
    27, // CAP_MKNOD
    29, // CAP_AUDIT_WRITE
    31, // CAP_SETFCAP
];

/// Drops every capability outside `KEPT_CAPS` from the bounding, ambient,
/// inheritable, permitted and effective sets of the calling thread.
pub fn drop_capabilities() -> Result<(), SecurityError> {
    let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap").ok().and_then(|s| s.trim().parse::<u32>().ok()).unwrap_or(40);
    for cap in 0..=last {
        if KEPT_CAPS.contains(&cap) {
            continue;
        }
        // SAFETY: prctl with integer arguments only.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINVAL) {
                return Err(SecurityError::Sys { what: "dropping capability from bounding set", source: e });
            }
        }
    }
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) };
    let mut mask: u64 = 0;
    for c in KEPT_CAPS {
        mask |= 1u64 << c;
    }
    update_capabilities(|sets| {
        for (i, d) in sets.iter_mut().enumerate() {
            let m = (mask >> (32 * i)) as u32;
            d.effective &= m;
            d.permitted &= m;
            d.inheritable = 0;
        }
    })
    .map_err(|(what, source)| SecurityError::Sys { what, source })?;
    Ok(())
}

/// One 32-bit word of each capability set (`struct __user_cap_data_struct`).
#[repr(C)]
#[derive(Default, Clone, Copy)]
pub(crate) struct CapSets {
    pub(crate) effective: u32,
    pub(crate) permitted: u32,
    pub(crate) inheritable: u32,
}

/// Reads the calling thread's capability sets (both words of the v3 ABI),
/// lets `f` change them, and sets them. Only raw syscalls: usable in a
/// forked child.
pub(crate) fn update_capabilities(f: impl FnOnce(&mut [CapSets; 2])) -> Result<(), (&'static str, std::io::Error)> {
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    let hdr = Header { version: 0x2008_0522, pid: 0 };
    let mut sets = [CapSets::default(); 2];
    // SAFETY: capget with a v3 header and room for two data words, as the ABI requires.
    if unsafe { libc::syscall(libc::SYS_capget, &hdr as *const Header, sets.as_mut_ptr()) } != 0 {
        return Err(("reading capabilities", std::io::Error::last_os_error()));
    }
    f(&mut sets);
    // SAFETY: capset with the same header and two initialised data words.
    if unsafe { libc::syscall(libc::SYS_capset, &hdr as *const Header, sets.as_ptr()) } != 0 {
        return Err(("setting capabilities", std::io::Error::last_os_error()));
    }
    Ok(())
}
