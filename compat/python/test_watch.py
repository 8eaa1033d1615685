"""files.watch_dir: sync (CreateWatcher + GetWatcherEvents polling) and async (WatchDir stream)."""

from __future__ import annotations

import asyncio

import pytest

from e2b import (
    AsyncSandbox,
    FilesystemEvent,
    FilesystemEventType,
    NotFoundException,
    Sandbox,
    SandboxException,
)

from _support import async_wait_until, wait_until


def _poll_events(handle, predicate, timeout=10.0):
    seen: list[FilesystemEvent] = []

    def check():
        seen.extend(handle.get_new_events())
        return any(predicate(e) for e in seen)

    wait_until(check, timeout=timeout, interval=0.1, what="watch event")
    return seen


def test_watch_dir_sync_file_created(sandbox: Sandbox):
    sandbox.files.make_dir("/home/user/watched")
    handle = sandbox.files.watch_dir("/home/user/watched")
    try:
        sandbox.files.write("/home/user/watched/new.txt", "hello")
        events = _poll_events(handle, lambda e: e.name == "new.txt"
                              and e.type == FilesystemEventType.WRITE)
        types = [e.type for e in events if e.name == "new.txt"]
        assert FilesystemEventType.CREATE in types
        assert types.index(FilesystemEventType.CREATE) < types.index(FilesystemEventType.WRITE)
        # nothing new since the last call
        assert [e for e in handle.get_new_events() if e.name == "new.txt"] == []
    finally:
        handle.stop()


def test_watch_dir_sync_remove_and_rename(sandbox: Sandbox):
    sandbox.files.write("/home/user/w2/a.txt", "a")
    handle = sandbox.files.watch_dir("/home/user/w2")
    try:
        sandbox.files.rename("/home/user/w2/a.txt", "/home/user/w2/b.txt")
        sandbox.files.remove("/home/user/w2/b.txt")
        events = _poll_events(handle, lambda e: e.name == "b.txt"
                              and e.type == FilesystemEventType.REMOVE)
        assert any(e.type == FilesystemEventType.RENAME and e.name == "a.txt" for e in events), events
    finally:
        handle.stop()


def test_watch_dir_sync_events_only_after_start(sandbox: Sandbox):
    sandbox.files.write("/home/user/w3/before.txt", "before")
    handle = sandbox.files.watch_dir("/home/user/w3")
    try:
        sandbox.files.write("/home/user/w3/after.txt", "after")
        events = _poll_events(handle, lambda e: e.name == "after.txt")
        assert not [e for e in events if e.name == "before.txt"]
    finally:
        handle.stop()


def test_watch_dir_sync_recursive(sandbox: Sandbox):
    sandbox.files.make_dir("/home/user/wr/nested")
    handle = sandbox.files.watch_dir("/home/user/wr", recursive=True)
    try:
        sandbox.files.write("/home/user/wr/nested/deep.txt", "deep")
        _poll_events(handle, lambda e: e.name == "nested/deep.txt")
        # a directory created after the watch started is watched too
        sandbox.files.make_dir("/home/user/wr/later")
        sandbox.files.write("/home/user/wr/later/x.txt", "x")
        _poll_events(handle, lambda e: e.name == "later/x.txt"
                     and e.type == FilesystemEventType.WRITE)
    finally:
        handle.stop()


def test_watch_dir_sync_not_recursive_ignores_nested(sandbox: Sandbox):
    sandbox.files.make_dir("/home/user/wn/nested")
    handle = sandbox.files.watch_dir("/home/user/wn")
    try:
        sandbox.files.write("/home/user/wn/nested/deep.txt", "deep")
        sandbox.files.write("/home/user/wn/top.txt", "top")
        events = _poll_events(handle, lambda e: e.name == "top.txt")
        assert not [e for e in events if e.name.endswith("deep.txt")], events
    finally:
        handle.stop()


def test_watch_dir_sync_include_entry(sandbox: Sandbox):
    sandbox.files.make_dir("/home/user/we")
    handle = sandbox.files.watch_dir("/home/user/we", include_entry=True)
    try:
        sandbox.files.write("/home/user/we/e.txt", "12345")
        events = _poll_events(handle, lambda e: e.name == "e.txt"
                              and e.type == FilesystemEventType.WRITE)
        with_entry = [e for e in events if e.name == "e.txt" and e.entry is not None]
        assert with_entry, events
        assert with_entry[-1].entry.path == "/home/user/we/e.txt"
    finally:
        handle.stop()


def test_watch_dir_sync_stop(sandbox: Sandbox):
    sandbox.files.make_dir("/home/user/ws")
    handle = sandbox.files.watch_dir("/home/user/ws")
    handle.stop()
    with pytest.raises(SandboxException):
        handle.get_new_events()


def test_watch_missing_dir_raises(sandbox: Sandbox):
    with pytest.raises(NotFoundException):
        sandbox.files.watch_dir("/home/user/no-such-dir")


def test_watch_file_instead_of_dir_raises(sandbox: Sandbox):
    sandbox.files.write("/home/user/notadir.txt", "x")
    with pytest.raises(SandboxException):
        sandbox.files.watch_dir("/home/user/notadir.txt")


async def test_watch_dir_async_stream(async_sandbox: AsyncSandbox):
    await async_sandbox.files.make_dir("/home/user/awatch")
    events: list[FilesystemEvent] = []
    exits: list = []
    handle = await async_sandbox.files.watch_dir(
        "/home/user/awatch", on_event=events.append, on_exit=exits.append)
    try:
        await async_sandbox.files.write("/home/user/awatch/async.txt", "async content")
        await async_wait_until(
            lambda: any(e.name == "async.txt" and e.type == FilesystemEventType.WRITE
                        for e in events),
            timeout=10, what="async watch WRITE event")
        assert any(e.name == "async.txt" and e.type == FilesystemEventType.CREATE for e in events)
        assert exits == []  # still running
    finally:
        await handle.stop()
    assert exits == [None]


async def test_watch_dir_async_recursive_and_async_callback(async_sandbox: AsyncSandbox):
    await async_sandbox.files.make_dir("/home/user/arw/sub")
    events: list[FilesystemEvent] = []

    async def on_event(e):
        await asyncio.sleep(0)
        events.append(e)

    handle = await async_sandbox.files.watch_dir("/home/user/arw", on_event=on_event,
                                                 recursive=True)
    try:
        await async_sandbox.commands.run("echo x > /home/user/arw/sub/made-by-shell.txt")
        await async_wait_until(lambda: any(e.name == "sub/made-by-shell.txt" for e in events),
                               timeout=10, what="recursive async event")
    finally:
        await handle.stop()


async def test_watch_dir_async_missing_raises(async_sandbox: AsyncSandbox):
    with pytest.raises(NotFoundException):
        await async_sandbox.files.watch_dir("/home/user/missing-async", on_event=lambda e: None)


async def test_watch_dir_async_on_exit_when_sandbox_killed(async_sandbox: AsyncSandbox):
    await async_sandbox.files.make_dir("/home/user/akill")
    exits: list = []
    await async_sandbox.files.watch_dir("/home/user/akill", on_event=lambda e: None,
                                        on_exit=exits.append, timeout=0)
    await async_sandbox.kill()
    await async_wait_until(lambda: exits, timeout=15, what="on_exit after sandbox kill")
