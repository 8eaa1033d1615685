//! The filter run by a small classic-BPF interpreter: the verdict for every
//! case the policy cares about, and the shape of the program.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use libc::sock_filter as Insn;

use super::bpf::{self, ret_errno, Rule, JA, JEQ_K, JGE_K, JSET_K, LD_W_ABS, RET_ALLOW, RET_K, RET_KILL_PROCESS};
use super::*;

const EPERM: u32 = ret_errno(libc::EPERM);
const ENOSYS: u32 = ret_errno(libc::ENOSYS);
const EAFNOSUPPORT: u32 = ret_errno(libc::EAFNOSUPPORT);

static PROGRAM: LazyLock<Vec<Insn>> = LazyLock::new(|| program().expect("the filter builds"));

/// Runs `prog` on one `seccomp_data` as the kernel lays it out; returns
/// the verdict and how many instructions ran. Knows only the opcodes the
/// compiler emits, and panics on anything else or on a jump out of range.
fn run(prog: &[Insn], arch: u32, nr: u32, args: [u64; 6]) -> (u32, usize) {
    let mut data = Vec::with_capacity(64);
    data.extend(nr.to_ne_bytes());
    data.extend(arch.to_ne_bytes());
    data.extend(0u64.to_ne_bytes()); // instruction pointer
    for a in args {
        data.extend(a.to_ne_bytes());
    }
    let (mut acc, mut pc, mut steps) = (0u32, 0usize, 0usize);
    loop {
        let i = prog[pc];
        pc += 1;
        steps += 1;
        let taken = |cond: bool| usize::from(if cond { i.jt } else { i.jf });
        match i.code {
            LD_W_ABS => {
                let at = i.k as usize;
                acc = u32::from_ne_bytes([data[at], data[at + 1], data[at + 2], data[at + 3]]);
            }
            JA => pc += i.k as usize,
            JEQ_K => pc += taken(acc == i.k),
            JGE_K => pc += taken(acc >= i.k),
            JSET_K => pc += taken(acc & i.k != 0),
            RET_K => return (i.k, steps),
            c => panic!("instruction {}: opcode {c:#x} is not one the compiler emits", pc - 1),
        }
    }
}

/// The verdict of the real filter for a native call.
fn verdict(nr: impl TryInto<u32>, args: [u64; 6]) -> u32 {
    let nr = nr.try_into().unwrap_or_else(|_| panic!("system call number out of range"));
    run(&PROGRAM, AUDIT_ARCH, nr, args).0
}

fn call0(nr: impl TryInto<u32>) -> u32 {
    verdict(nr, [0; 6])
}

fn call1(nr: impl TryInto<u32>, a0: u64) -> u32 {
    verdict(nr, [a0, 0, 0, 0, 0, 0])
}

fn name(v: u32) -> String {
    match v {
        RET_ALLOW => "ALLOW".into(),
        RET_KILL_PROCESS => "KILL_PROCESS".into(),
        EPERM => "EPERM".into(),
        ENOSYS => "ENOSYS".into(),
        EAFNOSUPPORT => "EAFNOSUPPORT".into(),
        v => format!("{v:#x}"),
    }
}

#[track_caller]
fn expect(what: &str, got: u32, want: u32) {
    assert_eq!(name(got), name(want), "{what}");
}

#[test]
fn every_allowed_call_is_allowed() {
    for (name, nr) in allowed() {
        expect(name, call0(nr), RET_ALLOW);
    }
    // What libc and language runtimes make before main() and in every
    // program: listed again here so that a call dropped from the table by
    // mistake shows up.
    let everyday = [
        libc::SYS_read,
        libc::SYS_write,
        libc::SYS_openat,
        libc::SYS_close,
        libc::SYS_futex,
        libc::SYS_mmap,
        libc::SYS_mprotect,
        libc::SYS_munmap,
        libc::SYS_brk,
        libc::SYS_getrandom,
        libc::SYS_newfstatat,
        libc::SYS_statx,
        libc::SYS_fstat,
        libc::SYS_lseek,
        libc::SYS_ioctl,
        libc::SYS_fcntl,
        libc::SYS_pipe2,
        libc::SYS_dup3,
        libc::SYS_execve,
        libc::SYS_exit_group,
        libc::SYS_wait4,
        libc::SYS_rt_sigaction,
        libc::SYS_rt_sigprocmask,
        libc::SYS_rt_sigreturn,
        libc::SYS_sigaltstack,
        libc::SYS_set_tid_address,
        libc::SYS_set_robust_list,
        libc::SYS_rseq,
        libc::SYS_prlimit64,
        libc::SYS_sched_getaffinity,
        libc::SYS_clock_nanosleep,
        libc::SYS_epoll_pwait,
        libc::SYS_ppoll,
        libc::SYS_getdents64,
    ];
    for nr in everyday {
        expect(&format!("syscall {nr}"), call0(nr), RET_ALLOW);
    }
    #[cfg(target_arch = "x86_64")]
    for nr in [libc::SYS_open, libc::SYS_stat, libc::SYS_fork, libc::SYS_vfork, libc::SYS_arch_prctl, libc::SYS_poll] {
        expect(&format!("syscall {nr}"), call0(nr), RET_ALLOW);
    }
}

#[test]
fn refused_calls_answer_eperm() {
    for (name, nr) in refused() {
        expect(name, call0(nr), EPERM);
    }
    #[allow(unused_mut)] // extended on x86_64 only
    let mut named = vec![
        libc::SYS_mount,
        libc::SYS_bpf,
        libc::SYS_keyctl,
        libc::SYS_memfd_secret,
        libc::SYS_setns,
        libc::SYS_init_module,
        libc::SYS_io_uring_setup,
        nr::SYS_open_tree_attr,
        nr::SYS_statmount,
        nr::SYS_listmount,
    ];
    #[cfg(target_arch = "x86_64")]
    named.extend([libc::SYS_modify_ldt, libc::SYS_iopl, libc::SYS_ioperm]);
    for nr in named {
        expect(&format!("syscall {nr}"), call0(nr), EPERM);
    }
}

#[test]
fn numbers_on_no_list_answer_enosys() {
    // 459-461 lsm_*, 468-469 file_{get,set}attr, 470 listns, 471 and 1000
    // do not exist yet; mbind and friends are NUMA policy (Docker wants
    // CAP_SYS_NICE for them).
    let mut off = vec![459u32, 460, 461, 468, 469, 470, 471, 500, 1000, 4095, 0x3fff_ffff, u32::MAX];
    off.extend([libc::SYS_mbind, libc::SYS_get_mempolicy, libc::SYS_set_mempolicy, libc::SYS_migrate_pages].map(|n| n as u32));
    for nr in off {
        expect(&format!("syscall {nr}"), call0(nr), ENOSYS);
    }
    // What 460..=470 holds: mseal allowed, open_tree_attr refused, the rest unknown.
    for nr in 460..=470u32 {
        let want = match nr {
            462..=466 => RET_ALLOW,
            467 => EPERM,
            _ => ENOSYS,
        };
        expect(&format!("syscall {nr}"), call0(nr), want);
    }
    // clone3 cannot have its flags checked: it looks unimplemented, so libc
    // falls back to clone.
    expect("clone3", call0(libc::SYS_clone3), ENOSYS);
}

#[test]
fn the_program_agrees_with_the_table_for_every_number() {
    let table: BTreeMap<u32, Rule> = policy().into_iter().map(|((_, nr), rule)| (nr, rule)).collect();
    let max = *table.keys().last().expect("a non-empty policy");
    for nr in 0..=max + 64 {
        // Arguments of zero: every conditional call's own tests cover the rest.
        let want = match table.get(&nr) {
            None => ENOSYS,
            Some(Rule::Allow) => RET_ALLOW,
            Some(Rule::Errno(e)) => ret_errno(*e),
            Some(Rule::RefuseFlags { .. }) => RET_ALLOW,
            Some(Rule::AllowValues { values, errno, .. }) => {
                if values.contains(&0) {
                    RET_ALLOW
                } else {
                    ret_errno(*errno)
                }
            }
        };
        expect(&format!("syscall {nr}"), call0(nr), want);
    }
}

#[test]
fn clone_and_unshare_refuse_new_namespaces_only() {
    let c = |f: libc::c_int| f as u64;
    let threads = c(libc::CLONE_VM
        | libc::CLONE_FS
        | libc::CLONE_FILES
        | libc::CLONE_SIGHAND
        | libc::CLONE_THREAD
        | libc::CLONE_SYSVSEM
        | libc::CLONE_SETTLS
        | libc::CLONE_PARENT_SETTID
        | libc::CLONE_CHILD_CLEARTID);
    for flags in [0, c(libc::SIGCHLD), threads, c(libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD)] {
        expect(&format!("clone({flags:#x})"), call1(libc::SYS_clone, flags), RET_ALLOW);
    }
    for flags in [0, c(libc::CLONE_FILES), c(libc::CLONE_FS), c(libc::CLONE_SYSVSEM), c(libc::CLONE_FILES | libc::CLONE_FS)] {
        expect(&format!("unshare({flags:#x})"), call1(libc::SYS_unshare, flags), RET_ALLOW);
    }
    let namespaces = [
        libc::CLONE_NEWNS,
        libc::CLONE_NEWUTS,
        libc::CLONE_NEWIPC,
        libc::CLONE_NEWUSER,
        libc::CLONE_NEWPID,
        libc::CLONE_NEWNET,
        libc::CLONE_NEWCGROUP,
        0x80, // CLONE_NEWTIME
    ];
    for ns in namespaces.map(c) {
        expect(&format!("clone({ns:#x})"), call1(libc::SYS_clone, ns | c(libc::SIGCHLD)), EPERM);
        expect(&format!("clone({ns:#x}) as a thread"), call1(libc::SYS_clone, ns | threads), EPERM);
        expect(&format!("unshare({ns:#x})"), call1(libc::SYS_unshare, ns), EPERM);
        expect(&format!("unshare({ns:#x} | CLONE_FILES)"), call1(libc::SYS_unshare, ns | c(libc::CLONE_FILES)), EPERM);
    }
    expect("clone(NEWUSER|NEWNS)", call1(libc::SYS_clone, c(libc::CLONE_NEWUSER | libc::CLONE_NEWNS)), EPERM);
}

#[test]
fn sockets_only_for_the_families_a_sandbox_uses() {
    let stream = libc::SOCK_STREAM as u64;
    for family in [libc::AF_UNIX, libc::AF_INET, libc::AF_INET6, libc::AF_NETLINK, libc::AF_PACKET] {
        let f = family as u64;
        expect(&format!("socket({family})"), verdict(libc::SYS_socket, [f, stream, 0, 0, 0, 0]), RET_ALLOW);
        expect(&format!("socketpair({family})"), verdict(libc::SYS_socketpair, [f, stream, 0, 0, 0, 0]), RET_ALLOW);
        // The kernel takes the family as an int: the upper half is ignored.
        expect(&format!("socket({family} + high bits)"), call1(libc::SYS_socket, f | 0xdead_beef_0000_0000), RET_ALLOW);
    }
    let refused = [
        libc::AF_UNSPEC,
        libc::AF_VSOCK,
        libc::AF_ALG,
        libc::AF_BLUETOOTH,
        libc::AF_CAN,
        libc::AF_TIPC,
        libc::AF_RDS,
        libc::AF_KEY,
        libc::AF_XDP,
        43, // AF_SMC
        42, // AF_QIPCRTR
        45, // AF_MCTP
        libc::AF_APPLETALK,
        libc::AF_X25,
        libc::AF_NFC,
        libc::AF_IB,
        46,
        255,
    ];
    for family in refused {
        let f = family as u64;
        let args = [f, stream | libc::SOCK_CLOEXEC as u64, 0, 0, 0, 0];
        expect(&format!("socket({family})"), verdict(libc::SYS_socket, args), EAFNOSUPPORT);
        expect(&format!("socketpair({family})"), verdict(libc::SYS_socketpair, args), EAFNOSUPPORT);
    }
    // High bits cannot make a refused family pass, nor a low word of zero
    // with AF_INET above it.
    expect("socket(AF_VSOCK + high bits)", call1(libc::SYS_socket, 40 | (2 << 32)), EAFNOSUPPORT);
    expect("socket(AF_INET << 32)", call1(libc::SYS_socket, 2 << 32), EAFNOSUPPORT);
}

#[test]
fn personality_takes_only_harmless_values() {
    for p in [0x0u64, 0x8, 0x2_0000, 0x2_0008, 0xffff_ffff, 0x1_0000_0000] {
        expect(&format!("personality({p:#x})"), call1(libc::SYS_personality, p), RET_ALLOW);
    }
    // READ_IMPLIES_EXEC, ADDR_NO_RANDOMIZE, ADDR_COMPAT_LAYOUT, MMAP_PAGE_ZERO, PER_BSD.
    for p in [0x40_0000u64, 0x4_0000, 0x20_0000, 0x10_0000, 0x6, 0xffff_fffe] {
        expect(&format!("personality({p:#x})"), call1(libc::SYS_personality, p), EPERM);
    }
}

#[test]
fn other_abis_are_killed_or_unimplemented() {
    // i386, 32-bit ARM, and the other 64-bit one: killed, whatever the call.
    for arch in [0x4000_0003u32, 0x4000_0028, 0xc000_003e ^ 0xc000_00b7 ^ AUDIT_ARCH] {
        for nr in [libc::SYS_read as u32, libc::SYS_getpid as u32, 1000] {
            expect(&format!("arch {arch:#x} syscall {nr}"), run(&PROGRAM, arch, nr, [0; 6]).0, RET_KILL_PROCESS);
        }
    }
    // x32: the same arch value with bit 30 set in the number.
    #[cfg(target_arch = "x86_64")]
    for nr in [libc::SYS_read, libc::SYS_mount, libc::SYS_clone, 512, 547] {
        expect(&format!("x32 syscall {nr}"), call0(nr as u32 | 0x4000_0000), ENOSYS);
    }
}

#[test]
fn allowed_refused_and_conditional_calls_do_not_overlap() {
    let mut seen: BTreeMap<u32, &str> = BTreeMap::new();
    let conditional: Vec<Call> = conditional().into_iter().map(|(c, _)| c).collect();
    for (list, calls) in [("allowed", allowed()), ("refused", refused()), ("conditional", conditional)] {
        for (name, nr) in calls {
            if let Some(first) = seen.insert(nr, name) {
                panic!("{name} ({nr}) of the {list} list is also {first}");
            }
        }
    }
}

#[test]
fn the_program_is_valid_and_a_call_costs_a_few_instructions() {
    let prog = &*PROGRAM;
    assert!(prog.len() <= libc::BPF_MAXINSNS as usize, "{} instructions", prog.len());
    // Checked here independently of bpf::validate, which compile() runs.
    for (pc, i) in prog.iter().enumerate() {
        let targets = match i.code {
            JA => vec![i.k as usize],
            JEQ_K | JGE_K | JSET_K => vec![usize::from(i.jt), usize::from(i.jf)],
            _ => vec![],
        };
        for t in targets {
            assert!(pc + 1 + t < prog.len(), "instruction {pc} jumps {t} past the end of {}", prog.len());
        }
    }
    assert_eq!(prog.last().map(|i| i.code), Some(RET_K));
    bpf::validate(prog).expect("valid");

    // The longest path over every number in use and far beyond: the header
    // (5-6), the search (log2 of the intervals), the longest leaf (7).
    let worst = (0..2048u32).chain([0x4000_0000, u32::MAX]).map(|nr| run(prog, AUDIT_ARCH, nr, [0; 6]).1).max();
    let worst = worst.expect("some numbers");
    assert!(worst <= 22, "a call may run {worst} instructions");
    let (_, read) = run(prog, AUDIT_ARCH, libc::SYS_read as u32, [0; 6]);
    eprintln!("{} instructions; read runs {read}, the worst call {worst}", prog.len());
}

#[test]
fn long_left_subtrees_are_reached_through_ja() {
    // Alternating verdicts make one interval per number: the root's left
    // half is far longer than a conditional jump reaches.
    let calls: Vec<(u32, Rule)> = (0..600u32).map(|nr| (nr * 2, if nr % 3 == 0 { Rule::Allow } else { Rule::Errno(nr as i32 % 100 + 1) })).collect();
    let spec = bpf::Spec { arch: AUDIT_ARCH, foreign_from: None, default: Rule::Errno(libc::ENOSYS), calls: &calls };
    let prog = bpf::compile(&spec).expect("compiles");
    assert!(prog.iter().any(|i| i.code == JA), "the test needs a long jump");
    let table: BTreeMap<u32, Rule> = calls.iter().copied().collect();
    for nr in 0..1300u32 {
        let want = match table.get(&nr) {
            Some(Rule::Allow) => RET_ALLOW,
            Some(Rule::Errno(e)) => ret_errno(*e),
            _ => ENOSYS,
        };
        expect(&format!("syscall {nr}"), run(&prog, AUDIT_ARCH, nr, [0; 6]).0, want);
    }
}

#[test]
fn the_compiler_refuses_what_the_kernel_would() {
    let twice = [(1, Rule::Allow), (1, Rule::Errno(libc::EPERM))];
    let spec = bpf::Spec { arch: AUDIT_ARCH, foreign_from: None, default: Rule::Errno(libc::ENOSYS), calls: &twice };
    assert!(bpf::compile(&spec).is_err(), "a number with two rules");
    let too_many: Vec<(u32, Rule)> = (0..5000u32).map(|nr| (nr * 2, Rule::Allow)).collect();
    let spec = bpf::Spec { calls: &too_many, ..spec };
    assert!(bpf::compile(&spec).is_err(), "more than BPF_MAXINSNS instructions");
    let out_of_range = [Insn { code: JEQ_K, jt: 1, jf: 0, k: 0 }, Insn { code: RET_K, jt: 0, jf: 0, k: 0 }];
    assert!(bpf::validate(&out_of_range).is_err());
    let no_return = [Insn { code: LD_W_ABS, jt: 0, jf: 0, k: 0 }];
    assert!(bpf::validate(&no_return).is_err());
    let outside_data = [Insn { code: LD_W_ABS, jt: 0, jf: 0, k: 64 }, Insn { code: RET_K, jt: 0, jf: 0, k: 0 }];
    assert!(bpf::validate(&outside_data).is_err());
}

/// The real kernel takes the program and answers as the interpreter does.
/// Needs no privilege: `no_new_privs` is enough to install a filter.
#[test]
fn the_kernel_accepts_the_filter_and_agrees() {
    use libc::{c_long, SYS_clone3, SYS_getpid, SYS_keyctl, SYS_memfd_secret, SYS_mount, SYS_personality, SYS_socket, SYS_unshare};
    let dgram = libc::SOCK_DGRAM as c_long;
    // (call, arguments, errno wanted or 0 for success). Each would be
    // harmless in this child even if the filter let it through.
    let checks: &[(c_long, [c_long; 3], i32)] = &[
        (SYS_getpid, [0, 0, 0], 0),
        (1000, [0, 0, 0], libc::ENOSYS),
        (470, [0, 0, 0], libc::ENOSYS),
        (SYS_clone3, [0, 0, 0], libc::ENOSYS),
        (SYS_mount, [0, 0, 0], libc::EPERM),
        (SYS_keyctl, [0, 0, 0], libc::EPERM),
        (SYS_memfd_secret, [0, 0, 0], libc::EPERM),
        (SYS_unshare, [libc::CLONE_NEWUSER as c_long, 0, 0], libc::EPERM),
        (SYS_unshare, [libc::CLONE_FILES as c_long, 0, 0], 0),
        (SYS_socket, [libc::AF_VSOCK as c_long, libc::SOCK_STREAM as c_long, 0], libc::EAFNOSUPPORT),
        (SYS_socket, [libc::AF_ALG as c_long, libc::SOCK_SEQPACKET as c_long, 0], libc::EAFNOSUPPORT),
        (SYS_socket, [libc::AF_INET as c_long, dgram, 0], 0),
        (SYS_socket, [(1 << 32) | libc::AF_UNIX as c_long, dgram, 0], 0),
        (SYS_personality, [0xffff_ffff, 0, 0], 0),
        (SYS_personality, [0x4_0000, 0, 0], libc::EPERM),
        #[cfg(target_arch = "x86_64")]
        (0x4000_0000 | SYS_getpid, [0, 0, 0], libc::ENOSYS),
    ];
    let mut prog = PROGRAM.clone();
    let fprog = libc::sock_fprog { len: prog.len() as u16, filter: prog.as_mut_ptr() };
    // SAFETY: the child below makes raw system calls only (no allocation,
    // no locks), as a fork of a multi-threaded process must, and exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        // SAFETY: integer and pointer arguments to live data; `_exit` never
        // returns, so nothing runs after the checks but the kernel's kill.
        unsafe {
            let no_core = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            libc::setrlimit(libc::RLIMIT_CORE, &no_core);
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 || libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, 0, &fprog as *const libc::sock_fprog) != 0
            {
                libc::_exit(100);
            }
            for (i, (nr, a, want)) in checks.iter().enumerate() {
                let r = libc::syscall(*nr, a[0], a[1], a[2]);
                let got = if r < 0 { *libc::__errno_location() } else { 0 };
                if got != *want {
                    libc::_exit(1 + i as i32);
                }
            }
            // The i386 ABI (getpid through int 0x80) must kill the process.
            #[cfg(target_arch = "x86_64")]
            std::arch::asm!("int 0x80", inlateout("eax") 20 => _, options(nostack));
            libc::_exit(0);
        }
    }
    let mut status = 0;
    // SAFETY: waiting for our own child, status into a local.
    assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
    let exited = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    match exited {
        Some(100) => panic!("the kernel refused the filter"),
        Some(n) if n > 0 => panic!("check {:?} got another answer", checks[n as usize - 1]),
        _ => {}
    }
    #[cfg(target_arch = "x86_64")]
    assert!(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGSYS, "int 0x80 was not killed: status {status:#x}");
    #[cfg(not(target_arch = "x86_64"))]
    assert_eq!(exited, Some(0));
}
