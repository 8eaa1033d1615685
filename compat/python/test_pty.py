"""sandbox.pty: create, send_stdin, resize, kill, connect (sync and async)."""

from __future__ import annotations

import threading

import pytest

from e2b import AsyncSandbox, CommandExitException, PtySize, Sandbox

from _support import async_wait_until, wait_until


class Collector:
    def __init__(self):
        self.buf = bytearray()
        self.lock = threading.Lock()

    def __call__(self, data: bytes):
        with self.lock:
            self.buf.extend(data)

    def text(self) -> str:
        with self.lock:
            return self.buf.decode(errors="replace")


def _wait_in_thread(handle, collector):
    result = {}

    def run():
        try:
            result["result"] = handle.wait(on_pty=collector)
        except Exception as e:  # noqa: BLE001
            result["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, result


def test_pty_echo_and_exit(sandbox: Sandbox):
    handle = sandbox.pty.create(PtySize(rows=24, cols=80))
    assert handle.pid > 0
    out = Collector()
    t, result = _wait_in_thread(handle, out)
    sandbox.pty.send_stdin(handle.pid, b"echo pty-$((40+2))\n")
    wait_until(lambda: "pty-42" in out.text(), timeout=10, what="pty output")
    sandbox.pty.send_stdin(handle.pid, b"exit 0\n")
    t.join(15)
    assert not t.is_alive()
    assert "error" not in result, result
    assert result["result"].exit_code == 0


def test_pty_is_a_terminal_with_env(sandbox: Sandbox):
    handle = sandbox.pty.create(PtySize(rows=24, cols=80))
    out = Collector()
    t, result = _wait_in_thread(handle, out)
    sandbox.pty.send_stdin(
        handle.pid,
        b"[ -t 0 ] && [ -t 1 ] && echo IS-TTY; echo TERM=$TERM; whoami; pwd; exit\n")
    t.join(15)
    text = out.text()
    assert "IS-TTY" in text
    assert "TERM=xterm-256color" in text
    assert "user" in text and "/home/user" in text


def test_pty_resize(sandbox: Sandbox):
    handle = sandbox.pty.create(PtySize(rows=24, cols=80))
    out = Collector()
    t, _ = _wait_in_thread(handle, out)
    sandbox.pty.send_stdin(handle.pid, b"stty size\n")
    wait_until(lambda: "24 80" in out.text(), timeout=10, what="initial size")
    sandbox.pty.resize(handle.pid, PtySize(rows=40, cols=132))
    sandbox.pty.send_stdin(handle.pid, b"stty size\n")
    wait_until(lambda: "40 132" in out.text(), timeout=10, what="resized size")
    sandbox.pty.send_stdin(handle.pid, b"exit\n")
    t.join(15)


def test_pty_kill(sandbox: Sandbox):
    handle = sandbox.pty.create(PtySize(rows=24, cols=80))
    out = Collector()
    t, result = _wait_in_thread(handle, out)
    assert sandbox.pty.kill(handle.pid) is True
    t.join(15)
    assert not t.is_alive()
    assert isinstance(result.get("error"), CommandExitException), result
    assert sandbox.pty.kill(handle.pid) is False


def test_pty_ctrl_c_interrupts(sandbox: Sandbox):
    handle = sandbox.pty.create(PtySize(rows=24, cols=80))
    out = Collector()
    t, _ = _wait_in_thread(handle, out)
    sandbox.pty.send_stdin(handle.pid, b"sleep 100; echo NOT-$((20+5))\n")
    # ^C flushes pending tty input, so type ahead only once sleep is running
    wait_until(lambda: "sleep 100" in sandbox.commands.run("ps -eo args").stdout,
               timeout=10, what="sleep to start")
    sandbox.pty.send_stdin(handle.pid, b"\x03")
    wait_until(lambda: "sleep 100" not in sandbox.commands.run("ps -eo args").stdout,
               timeout=10, what="^C to interrupt sleep")
    sandbox.pty.send_stdin(handle.pid, b"echo after-$((1+1))\n")
    wait_until(lambda: "after-2" in out.text(), timeout=10, what="prompt after ^C")
    assert "NOT-25" not in out.text()
    sandbox.pty.kill(handle.pid)
    t.join(15)


def test_pty_as_root_with_cwd_and_envs(sandbox: Sandbox):
    handle = sandbox.pty.create(PtySize(rows=24, cols=80), user="root", cwd="/tmp",
                                envs={"PTY_VAR": "pv"})
    out = Collector()
    t, _ = _wait_in_thread(handle, out)
    sandbox.pty.send_stdin(handle.pid, b"echo \"$(whoami):$(pwd):$PTY_VAR\"; exit\n")
    t.join(15)
    assert "root:/tmp:pv" in out.text()


def test_pty_listed_in_commands(sandbox: Sandbox):
    handle = sandbox.pty.create(PtySize(rows=24, cols=80))
    procs = {p.pid: p for p in sandbox.commands.list()}
    assert handle.pid in procs
    assert procs[handle.pid].cmd == "/bin/bash"
    assert procs[handle.pid].args == ["-i", "-l"]
    sandbox.pty.kill(handle.pid)


def test_pty_connect(sandbox: Sandbox):
    handle = sandbox.pty.create(PtySize(rows=24, cols=80))
    handle.disconnect()
    again = sandbox.pty.connect(handle.pid)
    out = Collector()
    t, _ = _wait_in_thread(again, out)
    sandbox.pty.send_stdin(handle.pid, b"echo re-$((3*3))\n")
    wait_until(lambda: "re-9" in out.text(), timeout=10, what="output after pty reconnect")
    sandbox.pty.kill(handle.pid)
    t.join(15)


async def test_async_pty_create_on_data(async_sandbox: AsyncSandbox):
    chunks: list[bytes] = []
    handle = await async_sandbox.pty.create(PtySize(rows=24, cols=80), on_data=chunks.append)
    await async_sandbox.pty.send_stdin(handle.pid, b"echo async-$((6*7))\n")
    await async_wait_until(lambda: b"async-42" in b"".join(chunks), timeout=10,
                           what="async pty data")
    await async_sandbox.pty.resize(handle.pid, PtySize(rows=50, cols=100))
    await async_sandbox.pty.send_stdin(handle.pid, b"stty size; exit 3\n")
    with pytest.raises(CommandExitException) as exc:
        await handle.wait()
    assert exc.value.exit_code == 3
    assert b"50 100" in b"".join(chunks)


async def test_async_pty_kill(async_sandbox: AsyncSandbox):
    handle = await async_sandbox.pty.create(PtySize(rows=24, cols=80), on_data=lambda d: None)
    assert await async_sandbox.pty.kill(handle.pid) is True
    with pytest.raises(CommandExitException):
        await handle.wait()
