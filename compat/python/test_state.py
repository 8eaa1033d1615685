"""Snapshots, fork and the filesystem-only pause, through the official SDK.

Airlock cannot checkpoint processes on this kernel: snapshots and forks
hold the filesystem, and sandboxes made from them boot afresh over it.
"""

from __future__ import annotations

import os
import time

import httpx
import pytest

from e2b import (
    InvalidArgumentException,
    NotFoundException,
    Sandbox,
    SandboxException,
    SandboxNotFoundException,
    SandboxState,
)

from _support import kill_later, run_metadata, wait_until

BOOT_ID = "cat /proc/sys/kernel/random/boot_id"


@pytest.fixture
def reap():
    """Sandboxes to kill once the test is over (kill_later acts at once)."""
    later: list = []
    yield later.append
    for s in later:
        kill_later(s)


def _api(server) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"X-API-KEY": server.api_key}, timeout=60)


def _host_pids_of(sandbox_id: str) -> list[int]:
    """Host processes whose cgroup names the sandbox: none once it holds no memory."""
    pids = []
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/cgroup") as f:
                if sandbox_id in f.read():
                    pids.append(int(p))
        except OSError:
            pass
    return pids


def test_two_sandboxes_from_one_snapshot_diverge(sandbox: Sandbox, reap):
    sandbox.files.write("/home/user/state.txt", "prepared")
    sandbox.commands.run("mkdir -p /opt/app && echo v1 > /opt/app/version && rm -f /etc/motd", user="root")
    snap = sandbox.create_snapshot()
    assert snap.snapshot_id.endswith(":default")
    # The source keeps running and keeps its own files.
    assert sandbox.commands.run("echo alive").stdout == "alive\n"

    a = Sandbox.create(snap.snapshot_id, metadata=run_metadata())
    b = Sandbox.create(snap.snapshot_id, metadata=run_metadata())
    reap(a)
    reap(b)
    for s in (a, b):
        assert s.files.read("/home/user/state.txt") == "prepared"
        assert s.files.read("/opt/app/version") == "v1\n"
        assert not s.files.exists("/etc/motd"), "deletions are part of the snapshot"
    a.files.write("/home/user/state.txt", "a's")
    b.commands.run("echo b > /opt/app/version", user="root")
    assert a.files.read("/home/user/state.txt") == "a's"
    assert b.files.read("/home/user/state.txt") == "prepared"
    assert a.files.read("/opt/app/version") == "v1\n"
    assert sandbox.files.read("/home/user/state.txt") == "prepared"
    # Ownership survives: the sandbox's user still owns its files.
    assert a.commands.run("stat -c %U /home/user/state.txt").stdout.strip() == "user"


def test_snapshot_listing_names_and_delete(sandbox: Sandbox, airlock_server, reap):
    sandbox.files.write("/home/user/n.txt", "1")
    named = sandbox.create_snapshot(name="compat-named-snap")
    assert named.snapshot_id == "compat-named-snap:default"
    assert named.names == ["compat-named-snap:default"]
    plain = sandbox.create_snapshot()
    mine = [s.snapshot_id for s in sandbox.list_snapshots().next_items()]
    assert set(mine) >= {named.snapshot_id, plain.snapshot_id}
    everything = [s.snapshot_id for s in Sandbox.list_snapshots().next_items()]
    assert plain.snapshot_id in everything
    # Paging: one per page, tokens follow on.
    pager = Sandbox.list_snapshots(sandbox_id=sandbox.sandbox_id, limit=1)
    seen = []
    while pager.has_next:
        seen += [s.snapshot_id for s in pager.next_items()]
    assert sorted(seen) == sorted(mine)

    # The name moves to a newer snapshot; the old content stays reachable
    # by sandboxes already made from it.
    old = Sandbox.create(named.snapshot_id, metadata=run_metadata())
    reap(old)
    sandbox.files.write("/home/user/n.txt", "2")
    again = sandbox.create_snapshot(name="compat-named-snap")
    assert again.snapshot_id == named.snapshot_id
    new = Sandbox.create(again.snapshot_id, metadata=run_metadata())
    assert new.files.read("/home/user/n.txt") == "2"
    assert old.files.read("/home/user/n.txt") == "1"

    # In use: refused; unused: deleted; gone: False.
    with pytest.raises(SandboxException):
        Sandbox.delete_snapshot(again.snapshot_id)
    new.kill()
    old.kill()
    assert Sandbox.delete_snapshot(again.snapshot_id) is True
    assert Sandbox.delete_snapshot(again.snapshot_id) is False
    assert Sandbox.delete_snapshot(plain.snapshot_id) is True
    with pytest.raises(SandboxException) as gone:
        Sandbox.create(plain.snapshot_id)
    assert getattr(gone.value, "status_code", None) == 404, gone.value

    with _api(airlock_server) as c:
        r = c.post(f"/sandboxes/{sandbox.sandbox_id}/snapshots", json={"name": "../bad"})
        assert r.status_code == 400, r.text
        r = c.post(f"/sandboxes/{sandbox.sandbox_id}/snapshots", json={"name": "base"})
        assert r.status_code == 409, r.text
        r = c.post(f"/sandboxes/{sandbox.sandbox_id}/snapshots", content=b"{not json")
        assert r.status_code == 400, r.text
        r = c.get("/snapshots", params={"limit": "0"})
        assert r.status_code == 400, r.text
        r = c.get("/snapshots", params={"nextToken": "nosuch"})
        assert r.status_code == 400, r.text


def test_snapshot_of_unknown_or_killed_sandbox_is_not_found():
    with pytest.raises(SandboxNotFoundException):
        Sandbox.create_snapshot("nosuchsandbox0000000")
    s = Sandbox.create(metadata=run_metadata())
    s.kill()
    with pytest.raises(SandboxNotFoundException):
        s.create_snapshot()
    with pytest.raises(SandboxNotFoundException):
        Sandbox.fork(s.sandbox_id)


def test_fork_is_independent_and_outlives_its_source(airlock_server, reap):
    src = Sandbox.create(envs={"FORK_ENV": "inherited"}, metadata=run_metadata(role="source"))
    src.files.write("/home/user/data.txt", "from source")
    forks = src.fork(count=3, timeout=120)
    assert len(forks) == 3
    assert all(isinstance(f, Sandbox) for f in forks), forks
    ids = {f.sandbox_id for f in forks}
    assert len(ids) == 3 and src.sandbox_id not in ids
    for f in forks:
        reap(f)
    # The source keeps running.
    assert src.commands.run("echo still").stdout == "still\n"
    src.kill()
    for i, f in enumerate(forks):
        assert f.files.read("/home/user/data.txt") == "from source"
        assert f.commands.run("echo $FORK_ENV").stdout == "inherited\n"
        f.files.write("/home/user/data.txt", f"fork {i}")
    assert [f.files.read("/home/user/data.txt") for f in forks] == ["fork 0", "fork 1", "fork 2"]
    info = forks[0].get_info()
    assert info.metadata.get("role") == "source"

    # Bad counts: the SDK refuses them itself; the API does too.
    with pytest.raises(InvalidArgumentException):
        forks[0].fork(count=0)
    with _api(airlock_server) as c:
        for body in ({"count": 0}, {"count": 21}, {"timeout": -1}):
            r = c.post(f"/sandboxes/{forks[0].sandbox_id}/fork", json=body)
            assert r.status_code == 400, (body, r.text)


def test_filesystem_pause_releases_memory_and_resume_boots_afresh(sandbox: Sandbox):
    sandbox.files.write("/home/user/kept.txt", "kept")
    boot_before = sandbox.commands.run(BOOT_ID).stdout.strip()
    sandbox.commands.run("sleep 1000", background=True)
    assert _host_pids_of(sandbox.sandbox_id), "a running sandbox has processes"

    assert sandbox.pause(mode="filesystem") is True
    assert sandbox.get_info().state == SandboxState.PAUSED
    assert _host_pids_of(sandbox.sandbox_id) == [], "no process (and so no memory) is left"
    assert sandbox.pause(mode="filesystem") is False, "already paused"

    resumed = Sandbox.connect(sandbox.sandbox_id)
    assert resumed.get_info().state == SandboxState.RUNNING
    assert resumed.files.read("/home/user/kept.txt") == "kept"
    assert resumed.commands.run(BOOT_ID).stdout.strip() != boot_before
    ps = resumed.commands.run("ps -eo args").stdout
    assert "sleep 1000" not in ps, ps


def test_snapshot_and_paused_sandbox_survive_a_server_crash(airlock_server, reap):
    src = Sandbox.create(metadata=run_metadata())
    reap(src)
    src.files.write("/home/user/x.txt", "snapshotted")
    snap = src.create_snapshot()
    paused = Sandbox.create(metadata=run_metadata())
    reap(paused)
    paused.files.write("/home/user/y.txt", "paused on disk")
    paused.pause(mode="filesystem")
    frozen = Sandbox.create(metadata=run_metadata())
    reap(frozen)
    frozen.files.write("/home/user/z.txt", "frozen")
    frozen.pause()

    airlock_server.restart(kill=True)

    assert snap.snapshot_id in [s.snapshot_id for s in Sandbox.list_snapshots().next_items()]
    fresh = Sandbox.create(snap.snapshot_id, metadata=run_metadata())
    reap(fresh)
    assert fresh.files.read("/home/user/x.txt") == "snapshotted"
    assert Sandbox.get_info(paused.sandbox_id).state == SandboxState.PAUSED
    back = Sandbox.connect(paused.sandbox_id)
    assert back.files.read("/home/user/y.txt") == "paused on disk"
    thawed = Sandbox.connect(frozen.sandbox_id)
    assert thawed.files.read("/home/user/z.txt") == "frozen"


def test_soft_and_hard_reset_and_restart(sandbox: Sandbox, airlock_server):
    sandbox.files.write("/home/user/keep.txt", "written")
    sandbox.commands.run("sleep 1000", background=True)
    with _api(airlock_server) as c:
        r = c.post(f"/sandboxes/{sandbox.sandbox_id}/reset", json={})
        assert r.status_code == 200, r.text
        wait_until(lambda: "sleep 1000" not in sandbox.commands.run("ps -eo args").stdout, timeout=10, what="processes to die")
        assert sandbox.files.read("/home/user/keep.txt") == "written", "a soft reset keeps files"

        boot = sandbox.commands.run(BOOT_ID).stdout
        r = c.post(f"/sandboxes/{sandbox.sandbox_id}/restart", json={"envVars": {"ADDED": "yes"}, "memoryMB": 256})
        assert r.status_code == 200, r.text
        assert r.json()["memoryMB"] == 256
        assert sandbox.commands.run(BOOT_ID).stdout != boot
        assert sandbox.commands.run("echo $ADDED").stdout == "yes\n"
        assert sandbox.files.read("/home/user/keep.txt") == "written", "a restart keeps files"

        r = c.post(f"/sandboxes/{sandbox.sandbox_id}/reset", json={"hard": True})
        assert r.status_code == 200, r.text
        assert r.json()["sandboxID"] == sandbox.sandbox_id
        # Same id, same token: the original handle keeps working.
        assert not sandbox.files.exists("/home/user/keep.txt"), "a hard reset goes back to the template"
        assert sandbox.commands.run("echo ok").stdout == "ok\n"

        for path in ("reset", "restart"):
            r = c.post(f"/sandboxes/nosuchsandbox0000000/{path}", json={})
            assert r.status_code == 404, r.text
        r = c.post(f"/sandboxes/{sandbox.sandbox_id}/restart", json={"memoryMB": 1})
        assert r.status_code == 400, r.text


def test_export_and_import_round_trip(sandbox: Sandbox, airlock_server, reap):
    sandbox.files.write("/home/user/exported.txt", "moves between hosts")
    sandbox.commands.run("mkdir -p /srv/x && ln -s ../exported /srv/x/link && rm -f /etc/issue", user="root")
    with _api(airlock_server) as c:
        r = c.get(f"/sandboxes/{sandbox.sandbox_id}/export")
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/zstd"
        archive = r.content
        assert archive[:4] == b"\x28\xb5\x2f\xfd", "zstd magic"
        r = c.post("/sandboxes/import", content=archive, params={"timeout": "120"})
        assert r.status_code == 201, r.text
        body = r.json()
        new = Sandbox.connect(body["sandboxID"])
        reap(new)
        assert new.sandbox_id != sandbox.sandbox_id
        assert new.files.read("/home/user/exported.txt") == "moves between hosts"
        assert new.commands.run("readlink /srv/x/link").stdout == "../exported\n"
        assert not new.files.exists("/etc/issue")
        assert new.commands.run("stat -c %U /home/user/exported.txt").stdout.strip() == "user"

        # Garbage and truncated archives are refused with a clear error.
        for bad in (b"", b"not an archive", archive[: len(archive) // 2]):
            r = c.post("/sandboxes/import", content=bad)
            assert r.status_code == 400, (len(bad), r.text)
        r = c.get("/sandboxes/nosuchsandbox0000000/export")
        assert r.status_code == 404, r.text
