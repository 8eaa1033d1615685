"""Moru volumes with the official `moru` SDK (a fork of E2B's): `moru.Volume` and its
file API on the control URL with the API key, and `volume_id` + `volume_mount_path` on
sandbox create. Commands run through the E2B SDK's `Sandbox.connect` (same envd)."""

from __future__ import annotations

import hashlib
import os

import pytest

moru = pytest.importorskip("moru")

from e2b import Sandbox as E2BSandbox  # noqa: E402
from moru import NotFoundException, Sandbox, SandboxException, Volume  # noqa: E402

from _support import kill_later, run_metadata, unique  # noqa: E402


@pytest.fixture(autouse=True)
def _moru_env(airlock_server, monkeypatch):
    monkeypatch.setenv("MORU_API_URL", airlock_server.url)
    monkeypatch.setenv("MORU_SANDBOX_URL", airlock_server.url)
    monkeypatch.setenv("MORU_API_KEY", airlock_server.api_key)
    monkeypatch.delenv("MORU_DEBUG", raising=False)


def _create(vol: Volume, path: str) -> E2BSandbox:
    s = Sandbox.create(template="base", timeout=120, metadata=run_metadata(), volume_id=vol.volume_id, volume_mount_path=path)
    return E2BSandbox.connect(s.sandbox_id)


@pytest.mark.timeout_s(180)
def test_file_api_round_trips_50_mib():
    vol = Volume.create(unique("m"))
    try:
        data = os.urandom(50 * 1024 * 1024)
        vol.upload("/big/blob.bin", data)  # the sync SDK returns None
        got = vol.download("/big/blob.bin")
        assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest()
        files = vol.list_files("/big")
        assert [(f.name, f.path, f.type, f.size) for f in files] == [("blob.bin", "/big/blob.bin", "file", len(data))]
        root = vol.list_files("/")
        assert [(f.name, f.type) for f in root] == [("big", "directory")]
        info = Volume.get(vol.volume_id)
        assert info.total_size_bytes == len(data) and info.total_file_count == 1
        assert vol.delete_file("/big", recursive=True) is True
        assert vol.list_files("/") == []
    finally:
        vol.delete()


def test_volume_keeps_files_across_three_sandboxes_and_user_writes():
    vol = Volume.create(unique("m"))
    try:
        vol.upload("/seed.txt", b"seed")
        for i in range(3):
            sbx = _create(vol, "/workspace/data")
            try:
                r = sbx.commands.run(f"cat /workspace/data/seed.txt; echo; echo {i} >> /workspace/data/n; cat /workspace/data/n | wc -l", user="user")
                assert r.stdout.split() == ["seed", str(i + 1)], r.stdout
            finally:
                sbx.kill()
        assert vol.download("/n") == b"0\n1\n2\n"
    finally:
        vol.delete()


def test_unknown_volume_is_not_found():
    with pytest.raises(NotFoundException):
        Volume.get("vol_doesnotexist0000000")
    ghost = Volume("vol_doesnotexist0000000", "ghost")
    assert ghost.delete() is False
    with pytest.raises(NotFoundException):
        ghost.list_files("/")
    with pytest.raises(NotFoundException):
        ghost.download("/x")


def test_missing_file_is_not_found():
    vol = Volume.create(unique("m"))
    try:
        with pytest.raises(NotFoundException):
            vol.download("/nope")
    finally:
        vol.delete()


def test_delete_in_use_is_refused():
    vol = Volume.create(unique("m"))
    sbx = _create(vol, "/data/v")
    try:
        with pytest.raises(SandboxException, match="409"):
            vol.delete()
        assert Volume.get(vol.volume_id).name == vol.name
    finally:
        sbx.kill()
    assert vol.delete() is True


@pytest.mark.parametrize("path", ["/workspace/x/../../etc", "/data/../etc", "/mnt/a//b", "/volumes/a/"])
def test_bad_mount_paths_are_refused_by_the_server(path):
    # The SDK checks prefixes and '..' itself; send the create raw so the
    # server's own check is what is tested.
    import httpx

    vol = Volume.create(unique("m"))
    try:
        r = httpx.post(
            os.environ["MORU_API_URL"] + "/sandboxes",
            headers={"X-API-KEY": os.environ["MORU_API_KEY"]},
            json={"templateID": "base", "volumeId": vol.volume_id, "volumeMountPath": path},
        )
        assert r.status_code == 400, r.text
        assert r.json()["code"] == 400
    finally:
        vol.delete()


def test_sdk_refuses_paths_outside_the_prefixes():
    vol = Volume.create(unique("m"))
    try:
        for p in ["/tmp/x", "/workspace", "/mnt/../etc"]:
            with pytest.raises(ValueError):
                s = Sandbox.create(template="base", volume_id=vol.volume_id, volume_mount_path=p)
                kill_later(s.sandbox_id)
    finally:
        vol.delete()


def test_planted_symlink_to_host_etc_is_not_followed():
    vol = Volume.create(unique("m"))
    sbx = _create(vol, "/mnt/v")
    try:
        sbx.commands.run("ln -s /etc /mnt/v/evil; ln -s /etc/passwd /mnt/v/pw", user="user")
        with pytest.raises(NotFoundException):
            vol.download("/evil/passwd")
        with pytest.raises(NotFoundException):
            vol.download("/pw")
        with pytest.raises(NotFoundException):
            vol.list_files("/evil")
        # Uploading through the link cannot land in the host's /etc either.
        with pytest.raises(SandboxException):
            vol.upload("/evil/airlock-planted", b"x")
        assert not os.path.exists("/etc/airlock-planted")
    finally:
        sbx.kill()
        vol.delete()
