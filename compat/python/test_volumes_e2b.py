"""E2B volumes with the official SDK: `e2b.Volume` (control API with the API key,
content API with the volume's bearer token) and `volume_mounts` on sandbox create.

The content API is on its own base URL in the SDK (`E2B_VOLUME_API_URL`; it never
reads `E2B_API_URL`), so the module points that at the same server."""

from __future__ import annotations

import os

import pytest

from e2b import (
    Sandbox,
    SandboxException,
    Volume,
    VolumeException,
    VolumeNotFoundException,
    VolumePathNotFoundException,
)

from _support import kill_later, run_metadata, unique


@pytest.fixture(autouse=True)
def _volume_api_url(airlock_server, monkeypatch):
    monkeypatch.setenv("E2B_VOLUME_API_URL", airlock_server.url)


def _name() -> str:
    return unique("v")


def test_volume_keeps_files_across_three_sandboxes():
    vol = Volume.create(_name())
    try:
        for i in range(3):
            sbx = Sandbox.create(timeout=120, metadata=run_metadata(), volume_mounts={"/mnt/data": vol})
            try:
                r = sbx.commands.run(f"cat /mnt/data/log 2>/dev/null; echo run{i} >> /mnt/data/log; id -un", user="user")
                assert r.stdout.splitlines() == [f"run{j}" for j in range(i)] + ["user"], r.stdout
            finally:
                sbx.kill()
        assert vol.read_file("/log") == "run0\nrun1\nrun2\n"
    finally:
        Volume.destroy(vol.volume_id)


def test_content_api_round_trip_and_stat_shapes():
    vol = Volume.create(_name())
    try:
        st = vol.write_file("/dir/a.txt", "hello")
        assert (st.name, st.path, st.size, st.uid, st.gid) == ("a.txt", "/dir/a.txt", 5, 1000, 1000)
        assert vol.read_file("/dir/a.txt") == "hello"
        assert vol.read_file("/dir/a.txt", format="bytes") == b"hello"
        d = vol.make_dir("/x/y", force=True, mode=0o700)
        assert d.path == "/x/y" and d.mode == 0o700
        names = sorted(e.path for e in vol.list("/", depth=2))
        assert names == ["/dir", "/dir/a.txt", "/x", "/x/y"], names
        assert vol.exists("/dir/a.txt") and not vol.exists("/nope")
        assert vol.update_metadata("/dir/a.txt", mode=0o600).mode == 0o600
        with pytest.raises(VolumeException):
            vol.write_file("/dir/a.txt", "again")  # no force: refused
        assert vol.write_file("/dir/a.txt", "again", force=True).size == 5
        vol.remove("/dir")
        assert not vol.exists("/dir/a.txt")
        with pytest.raises(VolumePathNotFoundException):
            vol.get_info("/dir")
        with pytest.raises(VolumePathNotFoundException):
            vol.read_file("/dir/a.txt")
        # Connect fetches the token again.
        again = Volume.connect(vol.volume_id)
        assert again.token == vol.token and again.name == vol.name
        assert vol.volume_id in [v.volume_id for v in Volume.list()]
    finally:
        assert Volume.destroy(vol.volume_id) is True


def test_unknown_volume_is_not_found():
    with pytest.raises(VolumeNotFoundException):
        Volume.get_info("vol_doesnotexist0000000")
    assert Volume.destroy("vol_doesnotexist0000000") is False
    with pytest.raises(SandboxException):
        Sandbox.create(timeout=60, metadata=run_metadata(), volume_mounts={"/mnt/x": "no-such-volume"})


def test_wrong_token_is_refused():
    vol = Volume.create(_name())
    try:
        with pytest.raises(Exception) as e:
            vol.list("/", token="not-the-token")
        assert "401" in str(e.value) or "token" in str(e.value).lower()
    finally:
        Volume.destroy(vol.volume_id)


def test_duplicate_and_bad_names_are_refused():
    name = _name()
    vol = Volume.create(name)
    try:
        with pytest.raises(VolumeException, match="409"):
            Volume.create(name)
        with pytest.raises(VolumeException, match="400"):
            Volume.create("Not A Name")
    finally:
        Volume.destroy(vol.volume_id)


def test_delete_in_use_is_refused_and_two_sandboxes_share():
    vol = Volume.create(_name())
    a = Sandbox.create(timeout=120, metadata=run_metadata(), volume_mounts={"/mnt/shared": vol.name})
    b = Sandbox.create(timeout=120, metadata=run_metadata(), volume_mounts={"/home/user/shared": vol})
    try:
        a.commands.run("echo from-a > /mnt/shared/a", user="user")
        assert b.commands.run("cat /home/user/shared/a").stdout == "from-a\n"
        b.commands.run("echo from-b > /home/user/shared/b", user="user")
        assert a.commands.run("cat /mnt/shared/b").stdout == "from-b\n"
        with pytest.raises(VolumeException, match="409") as e:
            Volume.destroy(vol.volume_id)
        assert a.sandbox_id in str(e.value) and b.sandbox_id in str(e.value)
    finally:
        a.kill()
        b.kill()
    assert Volume.destroy(vol.volume_id) is True


@pytest.mark.parametrize("path", ["/", "/proc", "/etc", "/mnt/../etc", "relative/path", "/dev/shm/x"])
def test_bad_mount_paths_are_refused(path):
    vol = Volume.create(_name())
    try:
        with pytest.raises(SandboxException, match="400"):
            s = Sandbox.create(timeout=60, metadata=run_metadata(), volume_mounts={path: vol})
            kill_later(s)
    finally:
        Volume.destroy(vol.volume_id)


def test_planted_symlink_to_host_etc_is_not_followed():
    vol = Volume.create(_name())
    sbx = Sandbox.create(timeout=120, metadata=run_metadata(), volume_mounts={"/mnt/v": vol})
    try:
        sbx.commands.run("ln -s /etc /mnt/v/evil && ln -s ../../../../../../etc/passwd /mnt/v/pw", user="user")
        with pytest.raises(VolumePathNotFoundException):
            vol.read_file("/evil/passwd")
        with pytest.raises(VolumePathNotFoundException):
            vol.read_file("/pw")
        with pytest.raises(VolumePathNotFoundException):
            vol.list("/evil")
        st = vol.get_info("/evil")
        assert (st.type.value if hasattr(st.type, "value") else st.type) == "symlink"
    finally:
        sbx.kill()
        Volume.destroy(vol.volume_id)
