"""Helpers shared by the compatibility tests (not a test module)."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Callable, TypeVar

T = TypeVar("T")

# Every sandbox this run creates carries this metadata pair, so the session can
# clean up after itself and list tests can scope their queries.
RUN_ID = uuid.uuid4().hex[:12]
RUN_META_KEY = "airlock_compat_run"


def run_metadata(**extra: str) -> dict:
    """Metadata for a sandbox of this run (plus `extra`)."""
    return {RUN_META_KEY: RUN_ID, **extra}


def unique(prefix: str = "t") -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def wait_until(fn: Callable[[], T], timeout: float = 10.0, interval: float = 0.1,
               what: str = "condition") -> T:
    """Poll `fn` until it returns a truthy value; return that value."""
    deadline = time.monotonic() + timeout
    last: T = fn()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last={last!r})")
        time.sleep(interval)
        last = fn()
    return last


async def async_wait_until(fn: Callable[[], T], timeout: float = 10.0,
                           interval: float = 0.05, what: str = "condition") -> T:
    deadline = time.monotonic() + timeout
    last: T = fn()
    while not last:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what} (last={last!r})")
        await asyncio.sleep(interval)
        last = fn()
    return last


# Killing a sandbox is a cleanup step most tests don't need to wait for; do it
# in the background (the session waits for these before stopping the server).
_killer = None
_kills: list = []


def kill_later(sbx_or_id) -> None:
    """Kill a sandbox (object or id) in the background, ignoring errors."""
    global _killer
    from concurrent.futures import ThreadPoolExecutor

    from e2b import Sandbox

    sid = sbx_or_id if isinstance(sbx_or_id, str) else sbx_or_id.sandbox_id
    if _killer is None:
        _killer = ThreadPoolExecutor(max_workers=8, thread_name_prefix="kill")

    def kill():
        try:
            Sandbox.kill(sid)
        except Exception:
            pass

    _kills.append(_killer.submit(kill))


def wait_for_background_kills(timeout: float = 60) -> None:
    from concurrent.futures import wait

    if _kills:
        wait(list(_kills), timeout=timeout)
        _kills.clear()
