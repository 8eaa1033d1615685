"""pause() and resume through connect(): state, files and processes survive."""

from __future__ import annotations

import datetime as dt
import os
import time

import pytest

from e2b import Sandbox, SandboxNotFoundException, SandboxQuery, SandboxState

from _support import kill_later, run_metadata, unique, wait_until

COUNTER = (
    "i=0; while true; do i=$((i+1)); echo $i > /tmp/counter.tmp; "
    "mv /tmp/counter.tmp /tmp/counter; sleep 0.1; done"
)


def _counter(sbx: Sandbox) -> int:
    text = sbx.files.read("/tmp/counter").strip()
    return int(text) if text else 0


def test_pause_then_connect_preserves_files_and_processes(sandbox: Sandbox):
    sandbox.files.write("/home/user/persist.txt", "survives pause")
    sandbox.commands.run("echo in-memory-tmpfs > /tmp/tmpfile")
    handle = sandbox.commands.run(COUNTER, background=True)
    wait_until(lambda: sandbox.files.exists("/tmp/counter") and _counter(sandbox) >= 3,
               timeout=10, what="counter to start")

    assert sandbox.pause() is True
    before = sandbox.get_info()
    assert before.state == SandboxState.PAUSED
    assert before.state == "paused"
    paused_ids = [s.sandbox_id for s in Sandbox.list(
        query=SandboxQuery(state=[SandboxState.PAUSED])).next_items()]
    assert sandbox.sandbox_id in paused_ids

    resumed = Sandbox.connect(sandbox.sandbox_id)
    assert resumed.sandbox_id == sandbox.sandbox_id
    assert resumed.get_info().state == SandboxState.RUNNING
    assert resumed.is_running()

    assert resumed.files.read("/home/user/persist.txt") == "survives pause"
    assert resumed.files.read("/tmp/tmpfile") == "in-memory-tmpfs\n"

    # the background process is still the same process, and keeps counting
    pids = [p.pid for p in resumed.commands.list()]
    assert handle.pid in pids, (handle.pid, pids)
    value_after = _counter(resumed)
    assert value_after >= 3  # did not restart from scratch
    wait_until(lambda: _counter(resumed) > value_after + 2, timeout=10,
               what="counter to keep increasing after resume")
    assert resumed.commands.kill(handle.pid) is True


def test_paused_sandbox_is_frozen(sandbox: Sandbox):
    sandbox.commands.run(COUNTER, background=True)
    wait_until(lambda: sandbox.files.exists("/tmp/counter") and _counter(sandbox) >= 2,
               timeout=10, what="counter to start")
    v0 = _counter(sandbox)
    sandbox.pause()
    time.sleep(2.0)  # ~20 ticks if the sandbox were still running
    resumed = sandbox.connect()
    v1 = _counter(resumed)
    assert v0 <= v1 < v0 + 12, (v0, v1)


def test_instance_connect_resumes(sandbox: Sandbox):
    sandbox.files.write("f.txt", "x")
    sandbox.pause()
    same = sandbox.connect()
    assert same.get_info().state == SandboxState.RUNNING
    assert same.files.read("f.txt") == "x"
    # The original object keeps working after resume too (same id, same token).
    assert sandbox.commands.run("echo ok").stdout == "ok\n"


def test_pause_static_and_twice(sandbox: Sandbox):
    assert Sandbox.pause(sandbox.sandbox_id) is True
    # already paused -> 409 -> False
    assert Sandbox.pause(sandbox.sandbox_id) is False
    Sandbox.connect(sandbox.sandbox_id)
    assert Sandbox.get_info(sandbox.sandbox_id).state == SandboxState.RUNNING


def test_pause_unknown_raises_not_found():
    with pytest.raises(SandboxNotFoundException):
        Sandbox.pause("doesnotexist0000000000")


def test_kill_paused_sandbox(sandbox: Sandbox):
    sandbox.pause()
    assert Sandbox.kill(sandbox.sandbox_id) is True
    with pytest.raises(SandboxNotFoundException):
        Sandbox.get_info(sandbox.sandbox_id)
    with pytest.raises(SandboxNotFoundException):
        Sandbox.connect(sandbox.sandbox_id)


def test_paused_sandbox_envd_unreachable(sandbox: Sandbox):
    sandbox.pause()
    assert sandbox.is_running() is False
    sandbox.connect()
    assert sandbox.is_running() is True


def test_pause_resume_many_times(airlock_server):
    sbx = Sandbox.create(metadata=run_metadata(case=unique()))
    try:
        for i in range(3):
            sbx.commands.run(f"echo {i} >> /tmp/log")
            assert sbx.pause() is True
            sbx = Sandbox.connect(sbx.sandbox_id)
        assert sbx.files.read("/tmp/log") == "0\n1\n2\n"
    finally:
        kill_later(sbx)


def test_connect_after_pause_applies_new_timeout(airlock_server):
    sbx = Sandbox.create(timeout=60, metadata=run_metadata(case=unique()))
    try:
        sbx.pause()
        Sandbox.connect(sbx.sandbox_id, timeout=900)
        info = sbx.get_info()
        assert info.state == SandboxState.RUNNING
        remaining = (info.end_at - dt.datetime.now(dt.timezone.utc)).total_seconds()
        assert 800 < remaining <= 910, remaining
    finally:
        kill_later(sbx)


def test_auto_pause_on_timeout(airlock_server):
    """lifecycle on_timeout="pause": the sandbox is paused, not killed, at its timeout."""
    sbx = Sandbox.create(timeout=2, lifecycle={"on_timeout": "pause"},
                         metadata=run_metadata(case=unique()))
    try:
        sbx.files.write("/home/user/auto.txt", "kept across auto-pause")
        info = sbx.get_info()
        if info.lifecycle is not None:
            assert info.lifecycle.get("on_timeout") == "pause", info.lifecycle
        wait_until(lambda: sbx.get_info().state == SandboxState.PAUSED, timeout=20,
                   interval=0.25, what="auto-pause at timeout")
        assert sbx.is_running() is False
        resumed = Sandbox.connect(sbx.sandbox_id, timeout=120)
        assert resumed.get_info().state == SandboxState.RUNNING
        assert resumed.files.read("/home/user/auto.txt") == "kept across auto-pause"
    finally:
        kill_later(sbx)


def test_auto_resume_wakes_a_paused_sandbox_on_traffic(airlock_server):
    """lifecycle auto_resume: a request to a paused sandbox's port resumes it."""
    import httpx
    sbx = Sandbox.create(timeout=120, lifecycle={"on_timeout": "pause", "auto_resume": True},
                         metadata=run_metadata(case=unique()))
    try:
        info = sbx.get_info()
        assert info.lifecycle and info.lifecycle.get("auto_resume") is True, info.lifecycle
        sbx.commands.run("mkdir -p /tmp/www && echo awake > /tmp/www/index.html && "
                         "cd /tmp/www && setsid nohup python3 -m http.server 8000 >/dev/null 2>&1 &")
        port = {"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": "8000"}
        wait_until(lambda: httpx.get(airlock_server.url + "/index.html", headers=port, timeout=5).status_code == 200,
                   timeout=15, what="the web server in the sandbox")
        assert sbx.pause() is True
        assert sbx.get_info().state == SandboxState.PAUSED
        r = httpx.get(airlock_server.url + "/index.html", headers=port, timeout=30)
        assert (r.status_code, r.text.strip()) == (200, "awake"), r.text
        assert sbx.get_info().state == SandboxState.RUNNING
    finally:
        kill_later(sbx)


def test_without_auto_resume_traffic_does_not_wake_it(sandbox: Sandbox):
    import httpx
    sandbox.pause()
    r = httpx.get(os.environ["E2B_API_URL"] + "/health", headers={"E2b-Sandbox-Id": sandbox.sandbox_id, "E2b-Sandbox-Port": "49983"}, timeout=10)
    assert r.status_code in (409, 502, 503, 404), r.status_code
    assert sandbox.get_info().state == SandboxState.PAUSED
