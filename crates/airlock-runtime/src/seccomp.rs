//! The system-call filter and capability set of every sandbox process.
//!
//! The filter is a deny list modelled on the default profile of container
//! runtimes: it refuses (with `EPERM`) the calls that reach kernel-wide
//! state or widen the attack surface: modules, kexec, reboot, swap, keys,
//! bpf, perf, io_uring, clocks, accounting, quotas, mounting of any kind and
//! every way of making or entering namespaces. `clone3` answers `ENOSYS`
//! because its flags sit in memory a filter cannot read; libc then falls
//! back to `clone`, whose flags are checked.
//!
//! Most of these calls would fail anyway, since every namespace but the user
//! namespace is owned by the host; the filter is the second wall.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule, TargetArch,
};

#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("building seccomp filter: {0}")]
    Build(String),
    #[error("installing seccomp filter: {0}")]
    Install(String),
    #[error("{what}")]
    Sys { what: &'static str, #[source] source: std::io::Error },
}

#[cfg(target_arch = "x86_64")]
const ARCH: TargetArch = TargetArch::x86_64;
#[cfg(target_arch = "aarch64")]
const ARCH: TargetArch = TargetArch::aarch64;

/// Calls refused outright.
fn denied() -> Vec<i64> {
    let mut v = vec![
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_kexec_load,
        libc::SYS_kexec_file_load,
        libc::SYS_reboot,
        libc::SYS_swapon,
        libc::SYS_swapoff,
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_bpf,
        libc::SYS_perf_event_open,
        libc::SYS_userfaultfd,
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_fsopen,
        libc::SYS_fsconfig,
        libc::SYS_fsmount,
        libc::SYS_fspick,
        libc::SYS_move_mount,
        libc::SYS_open_tree,
        libc::SYS_mount_setattr,
        libc::SYS_setns,
        libc::SYS_acct,
        libc::SYS_settimeofday,
        libc::SYS_clock_settime,
        libc::SYS_clock_adjtime,
        libc::SYS_adjtimex,
        libc::SYS_lookup_dcookie,
        libc::SYS_open_by_handle_at,
        libc::SYS_quotactl,
        libc::SYS_syslog,
        libc::SYS_vhangup,
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
        libc::SYS_sethostname,
        libc::SYS_setdomainname,
        libc::SYS_fanotify_init,
        libc::SYS_personality,
    ];
    #[cfg(target_arch = "x86_64")]
    v.extend([
        174, // create_module (removed from the kernel, still a number)
        177, // get_kernel_syms
        178, // query_module
        libc::SYS_iopl,
        libc::SYS_ioperm,
        libc::SYS_nfsservctl,
        libc::SYS_uselib,
        libc::SYS_ustat,
        libc::SYS_sysfs,
        libc::SYS__sysctl,
    ]);
    #[cfg(target_arch = "x86_64")]
    {
        // The x32 ABI numbers the same calls with bit 30 set; deny those too
        // in case the host kernel has x32 enabled.
        let x32: Vec<i64> = v.iter().map(|n| n | 0x4000_0000).collect();
        v.extend(x32);
    }
    v
}

/// Namespace flags that `clone` and `unshare` may not be given.
const NS_FLAGS: &[u64] = &[
    libc::CLONE_NEWNS as u64,
    libc::CLONE_NEWUTS as u64,
    libc::CLONE_NEWIPC as u64,
    libc::CLONE_NEWUSER as u64,
    libc::CLONE_NEWPID as u64,
    libc::CLONE_NEWNET as u64,
    libc::CLONE_NEWCGROUP as u64,
    0x80, // CLONE_NEWTIME
];

fn ns_rules(arg: u8) -> Result<Vec<SeccompRule>, SecurityError> {
    NS_FLAGS
        .iter()
        .map(|f| {
            let c = SeccompCondition::new(arg, SeccompCmpArgLen::Qword, SeccompCmpOp::MaskedEq(*f), *f)
                .map_err(|e| SecurityError::Build(e.to_string()))?;
            SeccompRule::new(vec![c]).map_err(|e| SecurityError::Build(e.to_string()))
        })
        .collect()
}

/// Personalities that are harmless (Docker allows the same set): anything
/// else (e.g. `READ_IMPLIES_EXEC`, `ADDR_NO_RANDOMIZE`) weakens the sandbox.
fn personality_allowed() -> Vec<u64> {
    vec![0x0, 0x8, 0x20000, 0x20008, 0xffff_ffff]
}

/// Builds the two BPF programs: the EPERM deny list and the clone3 ENOSYS rule.
pub fn filters() -> Result<Vec<BpfProgram>, SecurityError> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for nr in denied() {
        if nr == libc::SYS_personality {
            continue;
        }
        rules.insert(nr, vec![]);
    }
    rules.insert(libc::SYS_unshare, ns_rules(0)?);
    // clone's flags are its first argument on x86_64 and aarch64.
    rules.insert(libc::SYS_clone, ns_rules(0)?);
    let deny = SeccompFilter::new(rules, SeccompAction::Allow, SeccompAction::Errno(libc::EPERM as u32), ARCH)
        .map_err(|e| SecurityError::Build(e.to_string()))?;

    // personality(): refuse everything but the allowed values. Expressed as
    // "allow when equal to one of them" in a filter whose default is EPERM
    // for this one call only, by listing it alone.
    let mut p_rules = BTreeMap::new();
    let allowed = personality_allowed()
        .into_iter()
        .map(|v| {
            let c = SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, v).map_err(|e| SecurityError::Build(e.to_string()))?;
            Ok(c)
        })
        .collect::<Result<Vec<_>, SecurityError>>()?;
    // One rule whose conditions are all "not equal to an allowed value":
    // it matches (and denies) exactly the disallowed personalities.
    p_rules.insert(libc::SYS_personality, vec![SeccompRule::new(allowed).map_err(|e| SecurityError::Build(e.to_string()))?]);
    let personality = SeccompFilter::new(p_rules, SeccompAction::Allow, SeccompAction::Errno(libc::EPERM as u32), ARCH)
        .map_err(|e| SecurityError::Build(e.to_string()))?;

    let mut c3 = BTreeMap::new();
    c3.insert(libc::SYS_clone3, vec![]);
    let clone3 = SeccompFilter::new(c3, SeccompAction::Allow, SeccompAction::Errno(libc::ENOSYS as u32), ARCH)
        .map_err(|e| SecurityError::Build(e.to_string()))?;

    [deny, personality, clone3]
        .into_iter()
        .map(|f| BpfProgram::try_from(f).map_err(|e| SecurityError::Build(e.to_string())))
        .collect()
}

/// Installs the filters on the calling thread; they are inherited by
/// everything it forks. Requires `no_new_privs` (set here).
pub fn install() -> Result<(), SecurityError> {
    set_no_new_privs()?;
    for p in filters()? {
        seccompiler::apply_filter(&p).map_err(|e| SecurityError::Install(e.to_string()))?;
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
    let last = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(40);
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
    #[repr(C)]
    struct Header {
        version: u32,
        pid: i32,
    }
    #[repr(C)]
    #[derive(Default, Clone, Copy)]
    struct Data {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    let hdr = Header { version: 0x2008_0522, pid: 0 };
    let mut data = [Data::default(); 2];
    // SAFETY: capget/capset with a v3 header and two data words, as the ABI requires.
    unsafe {
        if libc::syscall(libc::SYS_capget, &hdr as *const Header, data.as_mut_ptr()) != 0 {
            return Err(SecurityError::Sys { what: "reading capabilities", source: std::io::Error::last_os_error() });
        }
        for (i, d) in data.iter_mut().enumerate() {
            let m = (mask >> (32 * i)) as u32;
            d.effective &= m;
            d.permitted &= m;
            d.inheritable = 0;
        }
        if libc::syscall(libc::SYS_capset, &hdr as *const Header, data.as_ptr()) != 0 {
            return Err(SecurityError::Sys { what: "setting capabilities", source: std::io::Error::last_os_error() });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_compile_for_this_arch() {
        let f = filters().expect("filters build");
        assert_eq!(f.len(), 3);
        assert!(f.iter().all(|p| !p.is_empty()));
    }

    #[test]
    fn deny_list_covers_the_dangerous_calls() {
        let d = denied();
        for nr in [libc::SYS_mount, libc::SYS_init_module, libc::SYS_kexec_load, libc::SYS_bpf, libc::SYS_setns, libc::SYS_keyctl] {
            assert!(d.contains(&nr), "syscall {nr} must be denied");
        }
        assert!(!d.contains(&libc::SYS_read));
    }
}
