"""The async client (AsyncSandbox): the same wire calls through the async transports."""

from __future__ import annotations

import asyncio

import pytest

from e2b import (
    AsyncSandbox,
    CommandExitException,
    FileNotFoundException,
    SandboxNotFoundException,
    SandboxQuery,
    SandboxState,
)

from _support import kill_later, run_metadata, unique


async def test_async_create_run_kill(airlock_server):
    sbx = await AsyncSandbox.create(metadata=run_metadata())
    try:
        assert await sbx.is_running()
        r = await sbx.commands.run("echo async")
        assert r.stdout == "async\n"
    finally:
        assert await sbx.kill() is True
    assert await sbx.is_running() is False


async def test_async_commands(async_sandbox: AsyncSandbox):
    out: list[str] = []
    r = await async_sandbox.commands.run("echo a; echo b >&2", on_stdout=out.append)
    assert r.stdout == "a\n" and r.stderr == "b\n"
    assert out == ["a\n"]

    with pytest.raises(CommandExitException) as exc:
        await async_sandbox.commands.run("exit 4")
    assert exc.value.exit_code == 4

    streamed: list[str] = []
    handle = await async_sandbox.commands.run("head -n 1", background=True, stdin=True,
                                              on_stdout=streamed.append)
    await handle.send_stdin("via async stdin\n")
    result = await handle.wait()
    assert result.stdout == "via async stdin\n"
    assert "".join(streamed) == "via async stdin\n"


async def test_async_background_kill(async_sandbox: AsyncSandbox):
    handle = await async_sandbox.commands.run("sleep 60", background=True)
    procs = [p.pid for p in await async_sandbox.commands.list()]
    assert handle.pid in procs
    assert await handle.kill() is True
    with pytest.raises(CommandExitException):
        await handle.wait()


async def test_async_parallel_commands(async_sandbox: AsyncSandbox):
    results = await asyncio.gather(*[
        async_sandbox.commands.run(f"sleep 0.5; echo {i}") for i in range(5)])
    assert [r.stdout for r in results] == [f"{i}\n" for i in range(5)]


async def test_async_files(async_sandbox: AsyncSandbox):
    await async_sandbox.files.write("/home/user/async.txt", "async file")
    assert await async_sandbox.files.read("/home/user/async.txt") == "async file"
    assert await async_sandbox.files.exists("/home/user/async.txt")
    infos = await async_sandbox.files.write_files([
        {"path": "/tmp/am/1.txt", "data": "1"}, {"path": "/tmp/am/2.txt", "data": b"2"}])
    assert len(infos) == 2
    names = sorted(e.name for e in await async_sandbox.files.list("/tmp/am"))
    assert names == ["1.txt", "2.txt"]
    await async_sandbox.files.remove("/tmp/am")
    assert not await async_sandbox.files.exists("/tmp/am")
    with pytest.raises(FileNotFoundException):
        await async_sandbox.files.read("/tmp/am/1.txt")


async def test_async_info_list_timeout_pause(airlock_server):
    case = unique()
    sbx = await AsyncSandbox.create(timeout=100, metadata=run_metadata(case=case))
    try:
        info = await sbx.get_info()
        assert info.sandbox_id == sbx.sandbox_id
        assert info.metadata["case"] == case

        paginator = AsyncSandbox.list(query=SandboxQuery(metadata={"case": case}))
        items = await paginator.next_items()
        assert [s.sandbox_id for s in items] == [sbx.sandbox_id]
        assert not paginator.has_next

        await sbx.set_timeout(500)
        assert ((await sbx.get_info()).end_at - info.end_at).total_seconds() > 300

        await sbx.files.write("/tmp/keep", "kept")
        assert await sbx.pause() is True
        assert (await AsyncSandbox.get_info(sbx.sandbox_id)).state == SandboxState.PAUSED
        resumed = await AsyncSandbox.connect(sbx.sandbox_id)
        assert await resumed.files.read("/tmp/keep") == "kept"
    finally:
        kill_later(sbx.sandbox_id)


async def test_async_connect_unknown(airlock_server):
    with pytest.raises(SandboxNotFoundException):
        await AsyncSandbox.connect("doesnotexist0000000000")
