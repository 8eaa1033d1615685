//! A classic-BPF compiler for seccomp: turns "syscall number → rule" into a
//! program that finds a number's rule with a binary search.
//!
//! The program checks the architecture, loads the number, then walks a
//! balanced tree of `JGE` comparisons over the table's intervals (runs of
//! consecutive numbers with the same rule, the gaps between them being the
//! default), so a call costs about log2(intervals) comparisons instead of
//! one per listed call. Every leaf returns on its own; only the few rules
//! that look at an argument load it, so a verdict that depends on the
//! number alone stays a constant the kernel can cache per syscall.
//!
//! Conditional jumps have 8-bit offsets: the tree is laid out in pre-order
//! (a node, its left subtree, its right subtree) so the only long jump is a
//! node's "go right", which becomes a `JA` (32-bit offset) when the left
//! subtree is longer than 255 instructions.

use libc::sock_filter as Insn;

// The only opcodes emitted (linux/bpf_common.h), so the only ones the tests'
// interpreter has to know.
pub(super) const LD_W_ABS: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16;
pub(super) const JA: u16 = (libc::BPF_JMP | libc::BPF_JA) as u16;
pub(super) const JEQ_K: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
pub(super) const JGE_K: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
pub(super) const JSET_K: u16 = (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16;
pub(super) const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;

// Offsets into `struct seccomp_data`.
const NR: u32 = 0;
const ARCH: u32 = 4;

/// Offset of the low 32 bits of argument `i`: every argument the rules
/// look at is an `int` or has all its meaningful bits there.
const fn arg_lo(i: u8) -> u32 {
    16 + 8 * i as u32 + if cfg!(target_endian = "big") { 4 } else { 0 }
}

pub(super) const RET_ALLOW: u32 = libc::SECCOMP_RET_ALLOW;
pub(super) const RET_KILL_PROCESS: u32 = libc::SECCOMP_RET_KILL_PROCESS;

pub(super) const fn ret_errno(errno: i32) -> u32 {
    libc::SECCOMP_RET_ERRNO | (errno as u32 & libc::SECCOMP_RET_DATA)
}

/// What a system call gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Rule {
    Allow,
    Errno(i32),
    /// `errno` if the argument has any of `mask`'s bits, else allowed.
    RefuseFlags {
        arg: u8,
        mask: u32,
        errno: i32,
    },
    /// Allowed if the argument is one of `values`, else `errno`.
    AllowValues {
        arg: u8,
        values: &'static [u32],
        errno: i32,
    },
}

impl Rule {
    /// Rules that do not look at arguments can share one interval.
    fn is_plain(&self) -> bool {
        matches!(self, Rule::Allow | Rule::Errno(_))
    }
}

/// One filter: the only architecture allowed, the rules by number, and the
/// rule of every number not listed.
pub(super) struct Spec<'a> {
    /// `AUDIT_ARCH_*` value; any other architecture (another ABI of the same
    /// CPU) is killed.
    pub arch: u32,
    /// Numbers from this one up get `default` before the search: a second
    /// ABI that shares the architecture value (x32 on x86_64).
    pub foreign_from: Option<u32>,
    pub default: Rule,
    pub calls: &'a [(u32, Rule)],
}

fn stmt(code: u16, k: u32) -> Insn {
    Insn { code, jt: 0, jf: 0, k }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> Insn {
    Insn { code, jt, jf, k }
}

fn ret(k: u32) -> Insn {
    stmt(RET_K, k)
}

fn offset(n: usize) -> Result<u8, String> {
    u8::try_from(n).map_err(|_| format!("jump of {n} instructions does not fit a conditional jump"))
}

pub(super) fn compile(spec: &Spec) -> Result<Vec<Insn>, String> {
    if !spec.default.is_plain() {
        return Err("the default rule cannot look at arguments".into());
    }
    let mut prog = vec![stmt(LD_W_ABS, ARCH), jump(JEQ_K, spec.arch, 1, 0), ret(RET_KILL_PROCESS), stmt(LD_W_ABS, NR)];
    if let Some(from) = spec.foreign_from {
        prog.push(jump(JGE_K, from, 0, 1));
        prog.extend(leaf(&spec.default)?);
    }
    prog.extend(tree(&intervals(spec)?)?);
    validate(&prog)?;
    Ok(prog)
}

/// The whole number space `0..=u32::MAX` as `(first number, rule)` runs,
/// in order: listed numbers, merged where neighbours share a plain rule,
/// and the default in every gap.
fn intervals(spec: &Spec) -> Result<Vec<(u32, Rule)>, String> {
    let mut calls = spec.calls.to_vec();
    calls.sort_by_key(|c| c.0);
    if let Some(w) = calls.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(format!("system call {} has two rules", w[0].0));
    }
    let mut out: Vec<(u32, Rule)> = Vec::new();
    let mut push = |first: u32, rule: Rule| match out.last() {
        Some((_, last)) if *last == rule && rule.is_plain() => {}
        _ => out.push((first, rule)),
    };
    let mut next: u64 = 0; // first number not yet covered
    for &(nr, rule) in &calls {
        if u64::from(nr) > next {
            push(next as u32, spec.default);
        }
        push(nr, rule);
        next = u64::from(nr) + 1;
    }
    if next <= u64::from(u32::MAX) {
        push(next as u32, spec.default);
    }
    Ok(out)
}

/// Binary search over `runs` (non-empty): the rule of the run holding the
/// number in the accumulator.
fn tree(runs: &[(u32, Rule)]) -> Result<Vec<Insn>, String> {
    if let [(_, rule)] = runs {
        return leaf(rule);
    }
    let mid = runs.len() / 2;
    let (left, right) = (tree(&runs[..mid])?, tree(&runs[mid..])?);
    let pivot = runs[mid].0;
    let mut out = Vec::with_capacity(left.len() + right.len() + 2);
    match offset(left.len()) {
        // nr >= pivot: skip the left subtree.
        Ok(skip) => out.push(jump(JGE_K, pivot, skip, 0)),
        // Too far for a conditional jump: hop through a JA.
        Err(_) => {
            out.push(jump(JGE_K, pivot, 0, 1));
            out.push(stmt(JA, left.len() as u32));
        }
    }
    out.extend(left);
    out.extend(right);
    Ok(out)
}

fn leaf(rule: &Rule) -> Result<Vec<Insn>, String> {
    Ok(match *rule {
        Rule::Allow => vec![ret(RET_ALLOW)],
        Rule::Errno(e) => vec![ret(ret_errno(e))],
        Rule::RefuseFlags { arg, mask, errno } => {
            vec![stmt(LD_W_ABS, arg_lo(arg)), jump(JSET_K, mask, 0, 1), ret(ret_errno(errno)), ret(RET_ALLOW)]
        }
        Rule::AllowValues { arg, values, errno } => {
            // One JEQ per value, each jumping to the final "allow"; falling
            // through all of them reaches the refusal.
            let mut v = vec![stmt(LD_W_ABS, arg_lo(arg))];
            for (i, value) in values.iter().enumerate() {
                v.push(jump(JEQ_K, *value, offset(values.len() - i)?, 0));
            }
            v.extend([ret(ret_errno(errno)), ret(RET_ALLOW)]);
            v
        }
    })
}

/// What the kernel's checker would refuse, found before it does: size,
/// opcodes, loads outside `seccomp_data`, jump targets, and a last
/// instruction that does not return.
pub(super) fn validate(prog: &[Insn]) -> Result<(), String> {
    if prog.is_empty() || prog.len() > libc::BPF_MAXINSNS as usize {
        return Err(format!("program of {} instructions (1..={} allowed)", prog.len(), libc::BPF_MAXINSNS));
    }
    for (pc, i) in prog.iter().enumerate() {
        let targets: &[usize] = match i.code {
            LD_W_ABS if i.k % 4 == 0 && (i.k as usize) < std::mem::size_of::<libc::seccomp_data>() => &[],
            RET_K => &[],
            JA => &[i.k as usize],
            JEQ_K | JGE_K | JSET_K => &[i.jt as usize, i.jf as usize],
            c => return Err(format!("instruction {pc}: opcode {c:#x} (k = {}) is not one we emit", i.k)),
        };
        if let Some(t) = targets.iter().find(|t| pc + 1 + **t >= prog.len()) {
            return Err(format!("instruction {pc}: jump of {t} leaves the program"));
        }
    }
    match prog.last() {
        Some(i) if i.code == RET_K => Ok(()),
        _ => Err("the program does not end with a return".into()),
    }
}
