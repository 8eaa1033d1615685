//! Attacking from inside: running probes in a sandbox as its root and as
//! `user`, with Python helpers for raw system calls, and reading their
//! `label result` lines back. Shared by the security and seccomp suites.

use std::collections::BTreeMap;
use std::time::Duration;

use airlock_testkit::envd::CmdResult;

use crate::support::Sandbox;

/// Both attackers: root inside (it holds the capabilities a container
/// keeps) and the unprivileged user.
pub(crate) const WHO: [&str; 2] = ["root", "user"];

/// Runs `cmd` with `bash -l -c` as `who` ("user" or "root"), bounded in time.
pub(crate) async fn run(sbx: &Sandbox, who: &str, cmd: &str) -> CmdResult {
    match tokio::time::timeout(Duration::from_secs(120), sbx.sh_as(who, cmd)).await {
        Ok(r) => r,
        Err(_) => panic!("command as {who} did not finish in 120 s: {cmd}"),
    }
}

/// Like `run`, but the command itself must succeed.
pub(crate) async fn run_ok(sbx: &Sandbox, who: &str, cmd: &str) -> CmdResult {
    let r = run(sbx, who, cmd).await;
    assert_eq!(r.exit_code, 0, "command as {who} failed: {cmd}\n{r:#?}");
    r
}

/// Python helpers shared by every probe: `sys_(name_or_number, *args)`
/// makes a raw system call and returns `(result, "ok" | errno name)`;
/// `show` and `oserr` print `label result` on one line for the Rust side.
const PRELUDE: &str = r#"
import ctypes, errno, os, socket, stat, struct, sys, threading, time
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def _arg(a):
    return ctypes.c_long(a) if isinstance(a, int) else a
def sys_(call, *args):
    nr = NR[call] if isinstance(call, str) else call
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(nr), *[_arg(a) for a in args])
    e = ctypes.get_errno()
    return r, ("ok" if r >= 0 else errno.errorcode.get(e, str(e)))
def show(label, call, *args):
    r, res = sys_(call, *args)
    print(label, res, flush=True)
    return r
def oserr(label, f):
    try:
        v = f()
        print(label, "ok", flush=True)
        return v
    except OSError as e:
        print(label, errno.errorcode.get(e.errno, str(e.errno)), flush=True)
"#;

/// System call numbers as the `NR` dict the prelude looks names up in.
pub(crate) fn numbers(nr: &[(&str, libc::c_long)]) -> String {
    let items: Vec<String> = nr.iter().map(|(n, v)| format!("'{n}': {v}")).collect();
    format!("NR = {{{}}}\n", items.join(", "))
}

/// Runs a Python probe (prelude and `numbers` first) as `who`.
pub(crate) async fn py(sbx: &Sandbox, who: &str, numbers: &str, body: &str) -> CmdResult {
    let script = format!("{PRELUDE}\n{numbers}\n{body}");
    run(sbx, who, &format!("timeout -s KILL 60 python3 - <<'PYEOF'\n{script}\nPYEOF\n")).await
}

/// `label value...` lines into a map (the last line with a label wins).
pub(crate) fn kv(out: &str) -> BTreeMap<String, String> {
    out.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ').unwrap_or((l, ""));
            (!k.is_empty()).then(|| (k.to_string(), v.trim().to_string()))
        })
        .collect()
}

/// Asserts that every `label` in `want` printed exactly the given result.
pub(crate) fn expect_results<S: AsRef<str>>(who: &str, r: &CmdResult, want: &[(S, &str)]) {
    let got = kv(&r.stdout);
    for (label, res) in want {
        let label = label.as_ref();
        assert_eq!(got.get(label).map(String::as_str), Some(*res), "as {who}: `{label}` should be {res}\n{r:#?}");
    }
}
