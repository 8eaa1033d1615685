"""sandbox.commands: run, background handles, streaming callbacks, stdin, kill, list, connect."""

from __future__ import annotations

import threading
import time

import pytest

from e2b import (
    CommandExitException,
    CommandHandle,
    InvalidArgumentException,
    NotFoundException,
    Sandbox,
    SandboxException,
    TimeoutException,
)

from _support import wait_until


def test_run_stdout_stderr_exit_code(sandbox: Sandbox):
    r = sandbox.commands.run("echo hello; echo oops 1>&2")
    assert r.stdout == "hello\n"
    assert r.stderr == "oops\n"
    assert r.exit_code == 0
    assert not r.error


def test_run_is_a_login_bash(sandbox: Sandbox):
    r = sandbox.commands.run("shopt -q login_shell && echo login")
    assert r.stdout == "login\n"


def test_nonzero_exit_raises_command_exit_exception(sandbox: Sandbox):
    with pytest.raises(CommandExitException) as exc:
        sandbox.commands.run("echo partial; echo bad thing >&2; exit 3")
    e = exc.value
    assert e.exit_code == 3
    assert e.stderr == "bad thing\n"
    assert e.stdout == "partial\n"
    assert e.error  # envd: "exit status 3"
    assert "3" in e.error
    assert isinstance(e, SandboxException)


def test_command_not_found_exit_127(sandbox: Sandbox):
    with pytest.raises(CommandExitException) as exc:
        sandbox.commands.run("definitely-not-a-command-xyz")
    assert exc.value.exit_code == 127
    assert "not found" in exc.value.stderr


def test_unicode_and_binary_safe_output(sandbox: Sandbox):
    r = sandbox.commands.run("printf 'h\\xc3\\xa9llo \\xf0\\x9f\\x8c\\x8d\\n'")
    assert r.stdout == "héllo 🌍\n"


def test_large_output(sandbox: Sandbox):
    r = sandbox.commands.run("seq 1 200000")
    lines = r.stdout.splitlines()
    assert len(lines) == 200000
    assert lines[0] == "1" and lines[-1] == "200000"


def test_background_handle_and_wait(sandbox: Sandbox):
    handle = sandbox.commands.run("sleep 0.5; echo done", background=True)
    assert isinstance(handle, CommandHandle)
    assert isinstance(handle.pid, int) and handle.pid > 0
    result = handle.wait()
    assert result.stdout == "done\n"
    assert result.exit_code == 0


def test_background_handle_iteration(sandbox: Sandbox):
    handle = sandbox.commands.run("for i in 1 2 3; do echo $i; sleep 0.1; done; echo e >&2",
                                  background=True)
    out, err = [], []
    for stdout, stderr, pty in handle:
        if stdout:
            out.append(stdout)
        if stderr:
            err.append(stderr)
        assert pty is None
    assert "".join(out) == "1\n2\n3\n"
    assert "".join(err) == "e\n"


def test_background_nonzero_exit_raises_on_wait(sandbox: Sandbox):
    handle = sandbox.commands.run("sleep 0.1; exit 7", background=True)
    with pytest.raises(CommandExitException) as exc:
        handle.wait()
    assert exc.value.exit_code == 7


def test_on_stdout_on_stderr_callbacks_stream(sandbox: Sandbox):
    stdout, stderr, stamps = [], [], []
    t0 = time.monotonic()

    def on_out(s):
        stdout.append(s)
        stamps.append(time.monotonic() - t0)

    r = sandbox.commands.run(
        "echo first; sleep 1; echo second; echo err1 >&2",
        on_stdout=on_out,
        on_stderr=stderr.append,
    )
    assert "".join(stdout) == "first\nsecond\n"
    assert "".join(stderr) == "err1\n"
    assert r.stdout == "first\nsecond\n"
    # output is streamed, not delivered all at the end
    assert stamps[0] < 0.9, stamps


def test_wait_callbacks_on_background(sandbox: Sandbox):
    handle = sandbox.commands.run("echo a; echo b >&2", background=True)
    out, err = [], []
    handle.wait(on_stdout=out.append, on_stderr=err.append)
    assert "".join(out) == "a\n"
    assert "".join(err) == "b\n"


def test_stdin_disabled_by_default(sandbox: Sandbox):
    t0 = time.monotonic()
    r = sandbox.commands.run("cat; echo eof", timeout=20)
    assert r.stdout == "eof\n"
    assert time.monotonic() - t0 < 10


def test_stdin_send_via_handle(sandbox: Sandbox):
    handle = sandbox.commands.run("head -n 2", background=True, stdin=True)
    handle.send_stdin("line one\n")
    handle.send_stdin(b"line two\n")
    r = handle.wait()
    assert r.stdout == "line one\nline two\n"


def test_stdin_send_via_commands_and_close(sandbox: Sandbox):
    handle = sandbox.commands.run("cat; echo closed", background=True, stdin=True)
    sandbox.commands.send_stdin(handle.pid, "hello stdin\n")
    sandbox.commands.close_stdin(handle.pid)
    r = handle.wait()
    assert r.stdout == "hello stdin\nclosed\n"


def test_stream_input(sandbox: Sandbox):
    if not hasattr(sandbox.commands, "stream_input"):
        pytest.skip("this SDK version has no commands.stream_input")
    handle = sandbox.commands.run("cat", background=True, stdin=True)
    sandbox.commands.stream_input(handle.pid, [b"a", "b", b"c\n"])
    sandbox.commands.close_stdin(handle.pid)
    assert handle.wait().stdout == "abc\n"


def test_commands_kill(sandbox: Sandbox):
    handle = sandbox.commands.run("sleep 60", background=True)
    assert sandbox.commands.kill(handle.pid) is True
    with pytest.raises(CommandExitException) as exc:
        handle.wait()
    assert exc.value.exit_code != 0
    wait_until(lambda: handle.pid not in [p.pid for p in sandbox.commands.list()],
               timeout=5, what="killed process to leave the list")


def test_handle_kill(sandbox: Sandbox):
    handle = sandbox.commands.run("sleep 60", background=True)
    assert handle.kill() is True
    with pytest.raises(CommandExitException):
        handle.wait()


def test_kill_unknown_pid_returns_false(sandbox: Sandbox):
    assert sandbox.commands.kill(999999) is False


def test_commands_list(sandbox: Sandbox):
    handle = sandbox.commands.run("sleep 30", background=True, envs={"LISTED": "1"},
                                  cwd="/tmp")
    procs = {p.pid: p for p in sandbox.commands.list()}
    assert handle.pid in procs, procs
    p = procs[handle.pid]
    assert p.cmd == "/bin/bash"
    assert p.args == ["-l", "-c", "sleep 30"]
    assert p.envs.get("LISTED") == "1"
    assert p.cwd == "/tmp"
    assert p.tag is None
    handle.kill()


def test_connect_to_running_command(sandbox: Sandbox):
    handle = sandbox.commands.run(
        "for i in 1 2 3 4 5; do echo tick$i; sleep 0.2; done", background=True)
    time.sleep(0.3)
    again = sandbox.commands.connect(handle.pid)
    assert again.pid == handle.pid
    r = again.wait()
    assert "tick5" in r.stdout
    assert r.exit_code == 0


def test_disconnect_then_reconnect(sandbox: Sandbox):
    handle = sandbox.commands.run("sleep 1; echo finished", background=True)
    handle.disconnect()
    # the process keeps running after disconnect
    assert handle.pid in [p.pid for p in sandbox.commands.list()]
    again = sandbox.commands.connect(handle.pid)
    assert again.wait().stdout.endswith("finished\n")


def test_connect_unknown_pid_raises_not_found(sandbox: Sandbox):
    with pytest.raises(NotFoundException):
        sandbox.commands.connect(999999).wait()


def test_envs(sandbox: Sandbox):
    r = sandbox.commands.run('echo "$FOO|$BAR"', envs={"FOO": "foo value", "BAR": "b=r"})
    assert r.stdout == "foo value|b=r\n"


def test_default_environment(sandbox: Sandbox):
    r = sandbox.commands.run('echo "$HOME|$USER|$(whoami)|$(id -u)|$(pwd)"')
    assert r.stdout == "/home/user|user|user|1000|/home/user\n"
    path = sandbox.commands.run("echo $PATH").stdout
    assert "/usr/bin" in path


def test_cwd(sandbox: Sandbox):
    assert sandbox.commands.run("pwd", cwd="/tmp").stdout == "/tmp\n"
    sandbox.files.make_dir("/home/user/sub dir")
    assert sandbox.commands.run("pwd", cwd="/home/user/sub dir").stdout == "/home/user/sub dir\n"


def test_cwd_missing_raises(sandbox: Sandbox):
    with pytest.raises((InvalidArgumentException, NotFoundException, SandboxException)) as exc:
        sandbox.commands.run("pwd", cwd="/does/not/exist")
    assert not isinstance(exc.value, CommandExitException), "missing cwd must fail the start, not run"


def test_user_root(sandbox: Sandbox):
    r = sandbox.commands.run('echo "$(whoami)|$(id -u)|$HOME|$(pwd)"', user="root")
    assert r.stdout == "root|0|/root|/root\n"
    r = sandbox.commands.run("whoami", user="user")
    assert r.stdout == "user\n"


def test_user_cannot_write_root_owned(sandbox: Sandbox):
    with pytest.raises(CommandExitException):
        sandbox.commands.run("touch /root/nope")
    sandbox.commands.run("touch /root/yes", user="root")


def test_command_timeout(sandbox: Sandbox):
    t0 = time.monotonic()
    with pytest.raises((TimeoutException, CommandExitException)):
        sandbox.commands.run("sleep 30; echo never", timeout=1)
    assert time.monotonic() - t0 < 10
    # envd kills the process when the command timeout expires
    wait_until(
        lambda: not [p for p in sandbox.commands.list() if p.args[-1:] == ["sleep 30; echo never"]],
        timeout=10, what="timed-out command to be killed")


def test_timeout_zero_means_unlimited(sandbox: Sandbox):
    r = sandbox.commands.run("sleep 1.5; echo slow", timeout=0)
    assert r.stdout == "slow\n"


def test_parallel_commands(sandbox: Sandbox):
    results = {}

    def run(i):
        results[i] = sandbox.commands.run(f"sleep 0.5; echo {i}").stdout

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    t0 = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert results == {i: f"{i}\n" for i in range(4)}
    assert time.monotonic() - t0 < 5


def test_background_process_survives_other_commands(sandbox: Sandbox):
    handle = sandbox.commands.run("sleep 2; echo bg", background=True)
    for i in range(3):
        assert sandbox.commands.run(f"echo {i}").stdout == f"{i}\n"
    assert handle.wait().stdout == "bg\n"


def test_python_and_node_available(sandbox: Sandbox):
    assert sandbox.commands.run("python3 -c 'print(6*7)'").stdout == "42\n"
    assert sandbox.commands.run("node -e 'console.log(6*7)'").stdout == "42\n"


def test_a_sandbox_killed_mid_stream_is_reported_killed():
    # E2B's answer: the stream ends with `unavailable`, the SDK probes the
    # sandbox, finds it gone and says it was killed (not a read error or a
    # timeout).
    import e2b.exceptions
    from _support import run_metadata
    # 2.45 says it with a TimeoutException; later SDKs have their own class.
    SandboxNotRunningException = getattr(e2b.exceptions, "SandboxNotRunningException", e2b.exceptions.TimeoutException)
    sbx = Sandbox.create(metadata=run_metadata())
    lines = []
    killer = threading.Timer(1.0, lambda: Sandbox.kill(sbx.sandbox_id))
    killer.start()
    t0 = time.monotonic()
    with pytest.raises(SandboxNotRunningException, match="killed or reached its end of life"):
        sbx.commands.run("for i in $(seq 60); do echo $i; sleep 0.2; done", on_stdout=lambda s: lines.append(s), timeout=60)
    killer.join()
    assert lines, "output streamed before the kill"
    assert time.monotonic() - t0 < 20, "the failure is prompt, not a timeout"


def test_sudo_works_as_on_e2b(sandbox: Sandbox):
    # E2B's templates let `user` run anything as root without a password.
    r = sandbox.commands.run("sudo id -u; id -u; echo via-pipe | sudo tee /root/t >/dev/null && sudo cat /root/t")
    assert r.stdout == "0\n1000\nvia-pipe\n", r
    assert sandbox.commands.run("sudo -u user id -un").stdout == "user\n"
    assert sandbox.commands.run("sudo -i pwd").stdout == "/root\n"
    env = sandbox.commands.run("sudo env").stdout
    assert "SUDO_USER=user" in env and "HOME=/root" in env, env
    with pytest.raises(CommandExitException) as e:
        sandbox.commands.run("sudo sh -c 'echo oops >&2; exit 7'")
    assert e.value.exit_code == 7 and "oops" in e.value.stderr
    # A signal to sudo reaches the command (timeout sends SIGTERM).
    r = sandbox.commands.run("timeout 1 sudo sleep 30; echo rc=$?; sleep 0.3; pgrep -x sleep || echo gone")
    assert r.stdout == "rc=124\ngone\n", r
    # Root inside the sandbox only: it may not mount (or touch the host).
    r = sandbox.commands.run("sudo mount -t tmpfs none /mnt 2>/dev/null; echo rc=$?")
    assert r.stdout != "rc=0\n", r
