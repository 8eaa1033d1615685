"""sandbox.files: read/write, write_files, list, exists, get_info, make_dir, rename, remove,
metadata, gzip/stream transfers, and the signed download/upload URLs used without the SDK."""

from __future__ import annotations

import datetime as dt
import io
import json
import urllib.error
import urllib.request

import httpx
import pytest

from e2b import (
    EntryInfo,
    FileNotFoundException,
    FileType,
    InvalidArgumentException,
    NotFoundException,
    Sandbox,
    SandboxException,
    WriteInfo,
)


def test_write_and_read_text(sandbox: Sandbox):
    info = sandbox.files.write("/home/user/hello.txt", "Hello, Airlock!\n")
    assert isinstance(info, WriteInfo)
    assert info.path == "/home/user/hello.txt"
    assert info.name == "hello.txt"
    assert info.type == FileType.FILE
    assert sandbox.files.read("/home/user/hello.txt") == "Hello, Airlock!\n"


def test_relative_paths_resolve_to_home(sandbox: Sandbox):
    info = sandbox.files.write("relative.txt", "rel")
    assert info.path == "/home/user/relative.txt"
    assert sandbox.files.read("/home/user/relative.txt") == "rel"
    assert sandbox.files.read("relative.txt") == "rel"
    assert sandbox.files.read("~/relative.txt") == "rel"
    assert sandbox.commands.run("cat /home/user/relative.txt").stdout == "rel"


def test_write_and_read_bytes(sandbox: Sandbox):
    data = bytes(range(256)) * 64
    sandbox.files.write("/tmp/blob.bin", data)
    got = sandbox.files.read("/tmp/blob.bin", format="bytes")
    assert isinstance(got, bytearray)
    assert bytes(got) == data
    assert sandbox.commands.run("stat -c %s /tmp/blob.bin").stdout.strip() == str(len(data))


def test_unicode_content_and_name(sandbox: Sandbox):
    sandbox.files.write("/tmp/ünï cödé 🌍.txt", "日本語 ✓\n")
    assert sandbox.files.read("/tmp/ünï cödé 🌍.txt") == "日本語 ✓\n"
    assert sandbox.files.exists("/tmp/ünï cödé 🌍.txt")


def test_empty_file(sandbox: Sandbox):
    sandbox.files.write("/tmp/empty", "")
    assert sandbox.files.read("/tmp/empty") == ""
    assert sandbox.files.get_info("/tmp/empty").size == 0


def test_overwrite(sandbox: Sandbox):
    sandbox.files.write("over.txt", "a much longer first version")
    sandbox.files.write("over.txt", "short")
    assert sandbox.files.read("over.txt") == "short"


def test_write_creates_parent_dirs_owned_by_user(sandbox: Sandbox):
    sandbox.files.write("/home/user/a/b/c/deep.txt", "deep")
    assert sandbox.files.read("/home/user/a/b/c/deep.txt") == "deep"
    owners = sandbox.commands.run(
        "stat -c %U /home/user/a /home/user/a/b/c /home/user/a/b/c/deep.txt").stdout.split()
    assert owners == ["user", "user", "user"]


def test_write_as_root(sandbox: Sandbox):
    sandbox.files.write("/root/secret.txt", "root only", user="root")
    assert sandbox.files.read("/root/secret.txt", user="root") == "root only"
    info = sandbox.files.get_info("/root/secret.txt", user="root")
    assert info.owner == "root"
    assert info.permissions == "-rw-r--r--"
    # (envd opens /files downloads as root whatever the user, so a read as
    # `user` is not refused there either; nothing to assert about that.)
    assert sandbox.commands.run("stat -c %U:%G /root/secret.txt", user="root").stdout == "root:root\n"


def test_large_file_roundtrip(sandbox: Sandbox):
    data = bytes(range(256)) * (20 * 1024 * 4)  # 20 MiB
    sandbox.files.write("/tmp/large.bin", data)
    got = sandbox.files.read("/tmp/large.bin", format="bytes")
    assert len(got) == len(data)
    assert bytes(got) == data


def test_write_files_multiple(sandbox: Sandbox):
    infos = sandbox.files.write_files([
        {"path": "/tmp/multi/one.txt", "data": "one"},
        {"path": "/tmp/multi/two.bin", "data": b"\x00\x01two"},
        {"path": "multi-rel.txt", "data": "three"},
    ])
    assert len(infos) == 3
    assert sorted(i.path for i in infos) == sorted(
        ["/tmp/multi/one.txt", "/tmp/multi/two.bin", "/home/user/multi-rel.txt"])
    assert sandbox.files.read("/tmp/multi/one.txt") == "one"
    assert bytes(sandbox.files.read("/tmp/multi/two.bin", format="bytes")) == b"\x00\x01two"
    assert sandbox.files.read("/home/user/multi-rel.txt") == "three"


def test_write_file_like_object_uses_octet_stream(sandbox: Sandbox):
    data = b"streamed upload " * 10000
    info = sandbox.files.write("/tmp/stream-up.bin", io.BytesIO(data))
    assert info.path == "/tmp/stream-up.bin"
    assert bytes(sandbox.files.read("/tmp/stream-up.bin", format="bytes")) == data


def test_write_iterable_chunks(sandbox: Sandbox):
    import inspect
    if "Iterable" not in inspect.signature(sandbox.files.write).parameters["data"].annotation.__str__():
        pytest.skip("this SDK version writes no iterables")
    chunks = [b"chunk-%d;" % i for i in range(1000)]
    sandbox.files.write("/tmp/chunks.txt", iter(chunks))
    assert sandbox.files.read("/tmp/chunks.txt", format="bytes") == b"".join(chunks)


def test_gzip_upload_and_download(sandbox: Sandbox):
    text = "compress me please\n" * 5000
    sandbox.files.write("/tmp/gz.txt", text, gzip=True)
    assert sandbox.commands.run("wc -c < /tmp/gz.txt").stdout.strip() == str(len(text))
    assert sandbox.files.read("/tmp/gz.txt") == text
    assert sandbox.files.read("/tmp/gz.txt", gzip=True) == text


def test_read_stream(sandbox: Sandbox):
    data = bytes(range(256)) * 4096  # 1 MiB
    sandbox.files.write("/tmp/stream.bin", data)
    with sandbox.files.read("/tmp/stream.bin", format="stream") as stream:
        got = b"".join(stream)
    assert got == data


def test_read_missing_raises_file_not_found(sandbox: Sandbox):
    with pytest.raises(FileNotFoundException) as exc:
        sandbox.files.read("/tmp/does-not-exist.txt")
    assert isinstance(exc.value, NotFoundException)


def test_read_directory_raises(sandbox: Sandbox):
    with pytest.raises(SandboxException) as exc:
        sandbox.files.read("/tmp")
    assert isinstance(exc.value, InvalidArgumentException), repr(exc.value)


@pytest.fixture
def tree(sandbox: Sandbox):
    base = "/home/user/tree"
    sandbox.files.write_files([
        {"path": f"{base}/a.txt", "data": "aaa"},
        {"path": f"{base}/sub/b.txt", "data": "bb"},
        {"path": f"{base}/sub/deeper/c.txt", "data": "c"},
    ])
    sandbox.files.make_dir(f"{base}/emptydir")
    return base


def test_list_depth_1(sandbox: Sandbox, tree: str):
    entries = sandbox.files.list(tree)
    assert all(isinstance(e, EntryInfo) for e in entries)
    by_name = {e.name: e for e in entries}
    assert sorted(by_name) == ["a.txt", "emptydir", "sub"]
    assert by_name["a.txt"].type == FileType.FILE
    assert by_name["a.txt"].path == f"{tree}/a.txt"
    assert by_name["a.txt"].size == 3
    assert by_name["sub"].type == FileType.DIR
    assert by_name["emptydir"].type == FileType.DIR


def test_list_depth_2_and_3(sandbox: Sandbox, tree: str):
    paths2 = sorted(e.path for e in sandbox.files.list(tree, depth=2))
    assert paths2 == sorted([
        f"{tree}/a.txt", f"{tree}/emptydir", f"{tree}/sub",
        f"{tree}/sub/b.txt", f"{tree}/sub/deeper",
    ])
    paths3 = sorted(e.path for e in sandbox.files.list(tree, depth=3))
    assert f"{tree}/sub/deeper/c.txt" in paths3
    names = {e.path: e.name for e in sandbox.files.list(tree, depth=3)}
    assert names[f"{tree}/sub/deeper/c.txt"] == "c.txt"


def test_list_relative_and_home(sandbox: Sandbox, tree: str):
    names = sorted(e.name for e in sandbox.files.list("tree"))
    assert names == ["a.txt", "emptydir", "sub"]


def test_list_depth_zero_rejected_client_side(sandbox: Sandbox):
    with pytest.raises(InvalidArgumentException):
        sandbox.files.list("/tmp", depth=0)


def test_list_missing_dir_raises(sandbox: Sandbox):
    with pytest.raises(FileNotFoundException):
        sandbox.files.list("/nonexistent/dir")


def test_exists(sandbox: Sandbox, tree: str):
    assert sandbox.files.exists(f"{tree}/a.txt") is True
    assert sandbox.files.exists(tree) is True
    assert sandbox.files.exists(f"{tree}/nope") is False
    assert sandbox.files.exists("/nonexistent/deeper/path") is False


def test_get_info_file(sandbox: Sandbox):
    before = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=5)
    sandbox.files.write("/home/user/info.txt", "12345")
    info = sandbox.files.get_info("/home/user/info.txt")
    assert info.name == "info.txt"
    assert info.path == "/home/user/info.txt"
    assert info.type == FileType.FILE
    assert info.size == 5
    assert info.mode & 0o777 == 0o644, oct(info.mode)
    assert info.permissions == "-rw-r--r--"
    assert info.owner == "user"
    assert info.group == "user"
    assert info.symlink_target is None
    mt = info.modified_time
    if mt.tzinfo is None:
        mt = mt.replace(tzinfo=dt.timezone.utc)
    assert before <= mt <= dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=5)


def test_get_info_dir(sandbox: Sandbox):
    info = sandbox.files.get_info("/home/user")
    assert info.type == FileType.DIR
    assert info.name == "user"
    assert info.path == "/home/user"
    assert info.permissions.startswith("d")


def test_get_info_symlink(sandbox: Sandbox):
    sandbox.files.write("/home/user/target.txt", "t")
    sandbox.commands.run("ln -s /home/user/target.txt /home/user/link.txt")
    info = sandbox.files.get_info("/home/user/link.txt")
    # envd gives the target's type and `is_symlink`; SDKs from before they
    # read `is_symlink` (2.45) report the target's type, as against E2B.
    import inspect
    import e2b.sandbox.filesystem.filesystem as fsmod
    reads_is_symlink = "is_symlink" in inspect.getsource(fsmod)
    assert info.type == (FileType.SYMLINK if reads_is_symlink else FileType.FILE)
    assert info.symlink_target == "/home/user/target.txt"
    assert sandbox.files.read("/home/user/link.txt") == "t"


def test_get_info_missing_raises(sandbox: Sandbox):
    with pytest.raises(FileNotFoundException):
        sandbox.files.get_info("/home/user/nope.txt")


def test_make_dir(sandbox: Sandbox):
    assert sandbox.files.make_dir("/home/user/newdir") is True
    assert sandbox.files.make_dir("/home/user/newdir") is False
    assert sandbox.files.make_dir("/home/user/x/y/z") is True
    assert sandbox.files.get_info("/home/user/x/y/z").type == FileType.DIR
    assert sandbox.commands.run("stat -c %U /home/user/x/y/z").stdout == "user\n"


def test_make_dir_over_file_fails(sandbox: Sandbox):
    sandbox.files.write("/home/user/plainfile", "f")
    with pytest.raises(SandboxException):
        sandbox.files.make_dir("/home/user/plainfile")


def test_rename(sandbox: Sandbox):
    sandbox.files.write("/home/user/old.txt", "moving")
    info = sandbox.files.rename("/home/user/old.txt", "/home/user/new.txt")
    assert isinstance(info, EntryInfo)
    assert info.path == "/home/user/new.txt"
    assert info.name == "new.txt"
    assert info.type == FileType.FILE
    assert not sandbox.files.exists("/home/user/old.txt")
    assert sandbox.files.read("/home/user/new.txt") == "moving"


def test_rename_directory(sandbox: Sandbox):
    sandbox.files.write("/home/user/d1/f.txt", "in dir")
    info = sandbox.files.rename("/home/user/d1", "/home/user/d2")
    assert info.type == FileType.DIR
    assert sandbox.files.read("/home/user/d2/f.txt") == "in dir"


def test_rename_missing_raises(sandbox: Sandbox):
    with pytest.raises(FileNotFoundException):
        sandbox.files.rename("/home/user/nope", "/home/user/nope2")


def test_remove_file_and_dir(sandbox: Sandbox, tree: str):
    sandbox.files.remove(f"{tree}/a.txt")
    assert not sandbox.files.exists(f"{tree}/a.txt")
    sandbox.files.remove(f"{tree}/sub")  # recursive
    assert not sandbox.files.exists(f"{tree}/sub")
    assert sandbox.files.exists(tree)


def test_remove_missing_is_not_an_error(sandbox: Sandbox):
    sandbox.files.remove("/home/user/never-existed")


def test_file_metadata(sandbox: Sandbox):
    info = sandbox.files.write("/home/user/meta.txt", "with metadata",
                               metadata={"author": "compat", "Kind": "test"})
    assert info.metadata == {"author": "compat", "kind": "test"}
    got = sandbox.files.get_info("/home/user/meta.txt")
    assert got.metadata == {"author": "compat", "kind": "test"}
    listed = {e.name: e for e in sandbox.files.list("/home/user")}
    assert listed["meta.txt"].metadata == {"author": "compat", "kind": "test"}
    # rewriting with new metadata replaces it
    sandbox.files.write("/home/user/meta.txt", "v2", metadata={"v": "2"})
    assert sandbox.files.get_info("/home/user/meta.txt").metadata == {"v": "2"}
    # a file without metadata reports None
    sandbox.files.write("/home/user/plain.txt", "x")
    assert sandbox.files.get_info("/home/user/plain.txt").metadata is None


# --- signed URLs fetched without the SDK (no E2b-Sandbox-* / X-Access-Token headers) ---


def test_download_url_plain_urllib(sandbox: Sandbox):
    sandbox.files.write("/home/user/dl.txt", "download me")
    url = sandbox.download_url("/home/user/dl.txt")
    assert url.startswith("http://127.0.0.1:")
    with urllib.request.urlopen(url, timeout=30) as r:
        assert r.status == 200
        assert r.read() == b"download me"


def test_download_url_relative_path_and_user(sandbox: Sandbox):
    sandbox.files.write("dl-rel.txt", "relative download")
    url = sandbox.download_url("dl-rel.txt", user="user")
    with urllib.request.urlopen(url, timeout=30) as r:
        assert r.read() == b"relative download"


def test_download_url_with_expiration(sandbox: Sandbox):
    sandbox.files.write("/home/user/exp.txt", "expiring")
    url = sandbox.download_url("/home/user/exp.txt", use_signature_expiration=120)
    assert "signature_expiration=" in url
    r = httpx.get(url, timeout=30)
    assert r.status_code == 200
    assert r.content == b"expiring"


def test_download_url_expired_signature_401(sandbox: Sandbox):
    sandbox.files.write("/home/user/exp.txt", "expired")
    url = sandbox.download_url("/home/user/exp.txt", use_signature_expiration=-120)
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(url, timeout=30)
    assert exc.value.code == 401
    assert json.loads(exc.value.read().decode()) == {
        "code": 401, "message": "signature is already expired"}


def test_download_url_tampered_signature_401(sandbox: Sandbox):
    sandbox.files.write("/home/user/t.txt", "x")
    url = sandbox.download_url("/home/user/t.txt")
    assert "signature=" in url
    bad = url.replace("signature=v1_", "signature=v1_AAAA")
    r = httpx.get(bad, timeout=30)
    assert r.status_code in (401, 403, 404), r.status_code
    # and a URL signed for one path does not open another
    other = url.replace("t.txt", "u.txt")
    r = httpx.get(other, timeout=30)
    assert r.status_code in (401, 403, 404), r.status_code


def test_upload_url_plain_httpx_multipart(sandbox: Sandbox):
    url = sandbox.upload_url("/home/user/uploaded.txt")
    r = httpx.post(url, files={"file": ("uploaded.txt", b"uploaded via url")}, timeout=30)
    assert r.status_code == 200, (r.status_code, r.text)
    body = r.json()
    assert isinstance(body, list) and body
    assert body[0]["path"] == "/home/user/uploaded.txt"
    assert sandbox.files.read("/home/user/uploaded.txt") == "uploaded via url"
    assert sandbox.commands.run("stat -c %U /home/user/uploaded.txt").stdout == "user\n"


def test_upload_url_wrong_operation_rejected(sandbox: Sandbox):
    # a download (read) signature must not authorise an upload
    url = sandbox.download_url("/home/user/ro.txt")
    r = httpx.post(url, files={"file": ("ro.txt", b"nope")}, timeout=30)
    assert r.status_code in (401, 403), (r.status_code, r.text)
    assert not sandbox.files.exists("/home/user/ro.txt")


def test_upload_url_with_expiration_and_root(sandbox: Sandbox):
    url = sandbox.upload_url("/root/up.txt", user="root", use_signature_expiration=60)
    r = httpx.post(url, files={"file": ("up.txt", b"root upload")}, timeout=30)
    assert r.status_code == 200, (r.status_code, r.text)
    assert sandbox.files.read("/root/up.txt", user="root") == "root upload"
