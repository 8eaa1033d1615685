"""Airlock's MCP server through the official `mcp` Python SDK (PyPI), over both
transports: stdio (the SDK spawns `airlock mcp` with the server's URL and key in
its environment) and Streamable HTTP (`/mcp` on the server, authenticated with
the API key). The tools are Flow Nexus's: names, arguments and result fields as
it documents them, errors as tool results with its codes.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import json
import os
import time

import httpx
import httpx2
import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

from _support import run_metadata, unique

TOOLS = {
    "sandbox_create", "sandbox_execute", "sandbox_list", "sandbox_status", "sandbox_configure",
    "sandbox_upload", "sandbox_logs", "sandbox_stop", "sandbox_start", "sandbox_delete",
    "sandbox_run_command", "sandbox_read_file", "sandbox_list_files",
}


@contextlib.asynccontextmanager
async def mcp_session(server, transport: str, key: str | None = None, bearer: bool = False):
    """An initialized MCP client session with `server` over `transport`."""
    key = server.api_key if key is None else key
    if transport == "stdio":
        env = {"AIRLOCK_URL": server.url, "AIRLOCK_API_KEY": key, "PATH": os.environ.get("PATH", "")}
        params = StdioServerParameters(command=str(server.bin), args=["mcp"], env=env)
        async with stdio_client(params) as (r, w):
            async with ClientSession(r, w) as s:
                await s.initialize()
                yield s
    else:
        headers = {"Authorization": f"Bearer {key}"} if bearer else {"X-API-KEY": key}
        async with httpx2.AsyncClient(headers=headers, timeout=120) as hc:
            async with streamable_http_client(server.url + "/mcp", http_client=hc) as (r, w):
                async with ClientSession(r, w) as s:
                    await s.initialize()
                    yield s


async def call(s: ClientSession, tool: str, **args):
    """Calls a tool that must succeed; returns its structured content."""
    r = await s.call_tool(tool, args)
    assert not r.is_error, f"{tool} failed: {r.content}"
    assert r.content and r.content[0].type == "text" and r.content[0].text, "a text summary comes first"
    assert isinstance(r.structured_content, dict)
    return r.structured_content


async def call_err(s: ClientSession, tool: str, **args) -> dict:
    """Calls a tool that must fail; returns the error ({code, message})."""
    r = await s.call_tool(tool, args)
    assert r.is_error, f"{tool} should have failed: {r.structured_content}"
    err = r.structured_content["error"]
    assert err["code"] in {"SANDBOX_NOT_FOUND", "SANDBOX_NOT_RUNNING", "EXECUTION_TIMEOUT", "EXECUTION_ERROR",
                           "INSUFFICIENT_RESOURCES", "PERMISSION_DENIED", "QUOTA_EXCEEDED"}, err
    assert err["code"] in r.content[0].text
    return err


async def create(s: ClientSession, **args) -> str:
    out = await call(s, "sandbox_create", metadata=run_metadata(), timeout=300, **args)
    return out["sandbox_id"]


@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_tools_are_listed_with_their_schemas(airlock_server, transport):
    async with mcp_session(airlock_server, transport) as s:
        tools = {t.name: t for t in (await s.list_tools()).tools}
    assert set(tools) == TOOLS
    for t in tools.values():
        assert t.description, t.name
        assert t.input_schema["type"] == "object", t.name
    ex = tools["sandbox_execute"].input_schema
    assert set(ex["required"]) == {"sandbox_id", "code"}
    assert set(ex["properties"]) >= {"sandbox_id", "code", "language", "timeout", "working_dir", "env_vars", "capture_output"}
    lang = json.dumps(ex["properties"]["language"])
    assert all(x in lang for x in ("python", "javascript", "bash"))
    cr = tools["sandbox_create"].input_schema
    assert set(cr["properties"]) >= {"template", "name", "timeout", "env_vars", "install_packages", "startup_script", "metadata"}
    assert "required" not in cr or not cr["required"]
    assert set(tools["sandbox_upload"].input_schema["required"]) == {"sandbox_id", "file_path", "content"}
    assert set(tools["sandbox_logs"].input_schema["properties"]) >= {"lines", "include_timestamps", "log_level", "follow"}
    assert set(tools["sandbox_configure"].input_schema["properties"]) >= {"env_vars", "install_packages", "run_commands", "restart"}


@pytest.mark.timeout_s(180)
@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_every_tool(airlock_server, transport):
    async with mcp_session(airlock_server, transport) as s:
        name = unique("mcp")
        c = await call(s, "sandbox_create", name=name, env_vars={"GREETING": "hello"}, metadata=run_metadata(), timeout=300)
        sid = c["sandbox_id"]
        assert c["status"] == "running" and c["name"] == name and c["template"] == "base"
        assert c["env_vars_configured"] == 1 and c["startup_script_configured"] is False and c["timeout"] == 300
        assert c["metadata"]["name"] == name and c["created_at"] and sid in c["url"]

        py = await call(s, "sandbox_execute", sandbox_id=sid, language="python", code="import os\nprint(os.environ['GREETING'], 6 * 7)")
        assert (py["output"], py["exit_code"], py["status"], py["language"]) == ("hello 42\n", 0, "completed", "python")
        assert py["execution_id"] and py["execution_time"] >= 0
        assert py["cpu_time"] is not None and py["memory_used"] and py["memory_used"] > 1024 * 1024, py
        js = await call(s, "sandbox_execute", sandbox_id=sid, language="javascript", code="console.log([1, 2, 3].map(x => x * 2).join(','))")
        assert js["output"] == "2,4,6\n" and js["exit_code"] == 0
        sh = await call(s, "sandbox_execute", sandbox_id=sid, language="bash", code="echo out; echo err >&2; exit 3", working_dir="/tmp", env_vars={"X": "1"})
        assert (sh["output"], sh["error"], sh["exit_code"], sh["status"]) == ("out\n", "err\n", 3, "failed")

        cmd = await call(s, "sandbox_run_command", sandbox_id=sid, command="pwd; echo $X", working_dir="/tmp", env_vars={"X": "y"})
        assert cmd["stdout"] == "/tmp\ny\n" and cmd["exit_code"] == 0 and cmd["success"] is True

        data = b"\x00\x01binary\xff"
        up = await call(s, "sandbox_upload", sandbox_id=sid, file_path="/home/user/data.bin", content=base64.b64encode(data).decode(), encoding="base64")
        assert up["size_bytes"] == len(data) and up["checksum"] == hashlib.sha256(data).hexdigest()
        assert up["permissions"].startswith("-rw") and up["created_at"]
        await call(s, "sandbox_upload", sandbox_id=sid, file_path="/home/user/notes.txt", content="héllo\n")
        rd = await call(s, "sandbox_read_file", sandbox_id=sid, file_path="/home/user/notes.txt")
        assert (rd["content"], rd["encoding"], rd["truncated"]) == ("héllo\n", "text", False)
        rb = await call(s, "sandbox_read_file", sandbox_id=sid, file_path="/home/user/data.bin")
        assert rb["encoding"] == "base64" and base64.b64decode(rb["content"]) == data
        ls = await call(s, "sandbox_list_files", sandbox_id=sid, path="/home/user")
        assert {"data.bin", "notes.txt"} <= {e["name"] for e in ls["entries"]}

        cf = await call(s, "sandbox_configure", sandbox_id=sid, env_vars={"MODE": "configured"}, run_commands=["echo set-up-ran", "true"])
        assert cf["env_vars_updated"] == ["MODE"] and [x["exit_code"] for x in cf["commands_executed"]] == [0, 0]
        assert "set-up-ran" in cf["commands_executed"][0]["output"] and cf["configuration_time"] >= 0
        assert cf["restart_required"] is True
        later = await call(s, "sandbox_execute", sandbox_id=sid, language="python", code="import os; print(os.environ.get('MODE'), os.environ.get('GREETING'))")
        assert later["output"] == "configured hello\n", "later executions see configured and original variables"

        st = await call(s, "sandbox_status", sandbox_id=sid)
        assert st["status"] == "running" and st["uptime"] is not None and st["expires_at"]
        ru = st["resource_usage"]
        assert ru["memory_limit_bytes"] > 0 and ru["disk_limit_bytes"] > 0 and ru["memory_used_bytes"] is not None
        assert {"network_bytes_sent", "network_bytes_received", "cpu_percent"} <= set(ru)
        env = st["environment"]
        assert env["language_versions"]["python"].startswith("3.") and env["working_directory"]
        assert env["env_var_count"] >= 2
        ex = st["executions"]
        # python, javascript, bash, the command, two configure commands, the later python.
        assert ex["total"] >= 7 and ex["failed"] >= 1 and ex["successful"] >= 6 and ex["average_duration"] >= 0

        logs = await call(s, "sandbox_logs", sandbox_id=sid, lines=500)
        msgs = [e["message"] for e in logs["entries"]]
        assert "hello 42" in msgs and "err" in msgs and "set-up-ran" in msgs, msgs
        assert {e["source"] for e in logs["entries"]} >= {"system", "execution", "stdout", "stderr"}
        assert all(e["timestamp"] for e in logs["entries"]) and logs["total_lines"] >= len(logs["entries"])
        assert logs["oldest_entry"] == logs["entries"][0]["timestamp"]
        ended = [e for e in logs["entries"] if e["source"] == "execution" and "exit_code" in e]
        assert any(e["exit_code"] == 3 and e["level"] == "error" for e in ended)
        errs = await call(s, "sandbox_logs", sandbox_id=sid, log_level="error", include_timestamps=False)
        assert errs["entries"] and all(e["level"] == "error" and "timestamp" not in e for e in errs["entries"])

        lst = await call(s, "sandbox_list", status="running", sort_by="created_at", order="desc")
        mine = [x for x in lst["sandboxes"] if x["sandbox_id"] == sid]
        assert mine and mine[0]["name"] == name and mine[0]["uptime"] is not None and mine[0]["resource_usage"]
        assert lst["total_count"] >= 1 and lst["running_count"] >= 1 and lst["stopped_count"] == lst["total_count"] - lst["running_count"]

        stop = await call(s, "sandbox_stop", sandbox_id=sid)
        assert stop["status"] == "stopped" and stop["files_kept"] is True
        assert (await call(s, "sandbox_status", sandbox_id=sid))["status"] == "stopped"
        assert (await call_err(s, "sandbox_execute", sandbox_id=sid, code="print(1)"))["code"] == "SANDBOX_NOT_RUNNING"
        assert (await call(s, "sandbox_start", sandbox_id=sid))["status"] == "running"
        kept = await call(s, "sandbox_read_file", sandbox_id=sid, file_path="/home/user/notes.txt")
        assert kept["content"] == "héllo\n", "a stopped sandbox keeps its files"

        d = await call(s, "sandbox_delete", sandbox_id=sid)
        assert d["deleted"] is True and "filesystem" in d["cleaned"]
        assert (await call_err(s, "sandbox_status", sandbox_id=sid))["code"] == "SANDBOX_NOT_FOUND"


@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_errors_are_tool_errors_with_flow_nexus_codes(airlock_server, transport):
    async with mcp_session(airlock_server, transport) as s:
        for tool, args in [("sandbox_status", {}), ("sandbox_execute", {"code": "1"}), ("sandbox_delete", {}), ("sandbox_logs", {}),
                           ("sandbox_read_file", {"file_path": "/x"}), ("sandbox_stop", {})]:
            err = await call_err(s, tool, sandbox_id="nosuchsandbox0000000", **args)
            assert err["code"] == "SANDBOX_NOT_FOUND", (tool, err)
        sid = await create(s)
        err = await call_err(s, "sandbox_execute", sandbox_id=sid, code="IDENTIFICATION DIVISION.", language="cobol")
        assert err["code"] == "EXECUTION_ERROR" and "cobol" in err["message"]
        t0 = time.monotonic()
        err = await call_err(s, "sandbox_execute", sandbox_id=sid, code="import time; time.sleep(60)", timeout=2)
        assert err["code"] == "EXECUTION_TIMEOUT" and time.monotonic() - t0 < 20
        err = await call_err(s, "sandbox_read_file", sandbox_id=sid, file_path="/home/user/missing.txt")
        assert err["code"] == "EXECUTION_ERROR" and "not found" in err["message"]
        err = await call_err(s, "sandbox_upload", sandbox_id=sid, file_path="/tmp/x", content="%%%", encoding="base64")
        assert "base64" in err["message"]
        err = await call_err(s, "sandbox_configure", sandbox_id=sid, install_packages=["bad;name"])
        assert "invalid pip package name" in err["message"]
        # The server answers after all of them.
        assert (await call(s, "sandbox_run_command", sandbox_id=sid, command="echo alive"))["stdout"] == "alive\n"
        await call(s, "sandbox_delete", sandbox_id=sid)


async def test_a_bad_api_key_is_refused_on_both_transports(airlock_server):
    async with mcp_session(airlock_server, "stdio", key="e2b_" + "0" * 40) as s:
        err = await call_err(s, "sandbox_list")
        assert err["code"] == "PERMISSION_DENIED"
        err = await call_err(s, "sandbox_create")
        assert err["code"] == "PERMISSION_DENIED"
    for bearer in (False, True):
        with pytest.raises(BaseException) as e:
            async with mcp_session(airlock_server, "http", key="e2b_" + "0" * 40, bearer=bearer) as s:
                await s.list_tools()
        assert "401" in repr(e.value) or "nauthorized" in repr(e.value) or e.type is not AssertionError
    # The raw endpoint says why.
    r = httpx.post(airlock_server.url + "/mcp", headers={"X-API-KEY": "wrong", "Accept": "application/json, text/event-stream"},
                   json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, timeout=10)
    assert r.status_code == 401 and r.json()["message"] == "Invalid API key"
    # Bearer with the right key works.
    async with mcp_session(airlock_server, "http", bearer=True) as s:
        assert {t.name for t in (await s.list_tools()).tools} == TOOLS


@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_long_runs_send_progress_and_a_cancelled_call_kills_its_execution(airlock_server, transport):
    async with mcp_session(airlock_server, transport) as s:
        sid = await create(s)
        seen = []

        async def progress(p, total, message):
            seen.append((p, total, message))

        out = await s.call_tool("sandbox_execute", {"sandbox_id": sid, "language": "bash", "code": "sleep 2.5; echo done", "timeout": 30}, progress_callback=progress)
        assert not out.is_error and out.structured_content["output"] == "done\n"
        assert len(seen) >= 3 and seen[-1][0] >= seen[0][0] and all(t == 30 for _, t, _ in seen), seen
        assert any("running" in m for _, _, m in seen)

        call_task = asyncio.create_task(s.call_tool("sandbox_execute", {"sandbox_id": sid, "language": "bash", "code": "echo $$ > /home/user/pid; exec sleep 120", "timeout": 300}))
        await asyncio.sleep(2)
        call_task.cancel()
        with pytest.raises(BaseException):
            await call_task
        deadline = time.monotonic() + 10
        state = ""
        while time.monotonic() < deadline:
            state = (await call(s, "sandbox_run_command", sandbox_id=sid, command="kill -0 $(cat /home/user/pid) 2>/dev/null && echo alive || echo gone"))["stdout"]
            if state == "gone\n":
                break
            await asyncio.sleep(0.5)
        assert state == "gone\n", "the cancelled execution's process is killed"
        await call(s, "sandbox_delete", sandbox_id=sid)


@pytest.mark.parametrize("transport", ["stdio", "http"])
async def test_a_followed_log_stream(airlock_server, transport):
    async with mcp_session(airlock_server, transport) as s:
        sid = await create(s)
        await call(s, "sandbox_run_command", sandbox_id=sid, command="echo before-follow")

        async def later():
            await asyncio.sleep(1.5)
            await call(s, "sandbox_run_command", sandbox_id=sid, command="echo during-follow; echo oops >&2")

        writer = asyncio.create_task(later())
        notes = []

        async def progress(p, total, message):
            notes.append(message)

        r = await s.call_tool("sandbox_logs", {"sandbox_id": sid, "follow": True, "follow_seconds": 4, "lines": 20}, progress_callback=progress)
        await writer
        assert not r.is_error
        msgs = [e["message"] for e in r.structured_content["entries"]]
        assert "before-follow" in msgs and "during-follow" in msgs and "oops" in msgs, msgs
        assert r.structured_content["followed"] is True
        assert any("during-follow" in n for n in notes), "each followed entry is also a progress notification"
        await call(s, "sandbox_delete", sandbox_id=sid)


async def test_the_rest_log_api_follows_and_filters(airlock_server):
    """`GET /sandboxes/{id}/logs`: E2B's `logs` kept, Airlock's entries, filters, and follow as NDJSON."""
    h = {"X-API-KEY": airlock_server.api_key}
    async with mcp_session(airlock_server, "http") as s:
        sid = await create(s)
        await call(s, "sandbox_run_command", sandbox_id=sid, command="echo first-line")
        body = httpx.get(f"{airlock_server.url}/sandboxes/{sid}/logs", headers=h, timeout=30).json()
        assert isinstance(body["logs"], list), "E2B's field stays"
        assert "first-line" in [e["message"] for e in body["logEntries"]]
        assert body["stats"]["total"] >= 1 and body["stats"]["successful"] >= 1
        warn = httpx.get(f"{airlock_server.url}/v2/sandboxes/{sid}/logs", params={"level": "warn"}, headers=h, timeout=30).json()
        assert all(e["level"] in ("warn", "error") for e in warn["logEntries"])
        assert httpx.get(f"{airlock_server.url}/sandboxes/{sid}/logs", params={"level": "loud"}, headers=h, timeout=30).status_code == 400
        future = int(time.time() * 1000) + 3_600_000
        assert httpx.get(f"{airlock_server.url}/sandboxes/{sid}/logs", params={"since": future}, headers=h, timeout=30).json()["logEntries"] == []
        for bad in ({"lines": "0"}, {"lines": "x"}, {"since": "yesterday"}, {"follow": "maybe"}, {"level": ""}):
            r = httpx.get(f"{airlock_server.url}/sandboxes/{sid}/logs", params=bad, headers=h, timeout=30)
            assert r.status_code in (200, 400) and (r.status_code == 400) == (bad != {"level": ""}), (bad, r.text)
        assert httpx.get(f"{airlock_server.url}/sandboxes/nosuchsandbox/logs", params={"follow": "true"}, headers=h, timeout=30).status_code == 404
        one = httpx.get(f"{airlock_server.url}/sandboxes/{sid}/logs", params={"lines": 1}, headers=h, timeout=30).json()
        assert len(one["logEntries"]) == 1 and one["totalLines"] >= 3

        got = []
        with httpx.Client(headers=h, timeout=30) as c:
            with c.stream("GET", f"{airlock_server.url}/sandboxes/{sid}/logs", params={"follow": "true", "lines": 5}) as r:
                assert r.status_code == 200 and r.headers["content-type"].startswith("application/x-ndjson")
                lines = r.iter_lines()
                asked = False
                for line in lines:
                    e = json.loads(line)
                    got.append(e["message"])
                    if e["message"] == "first-line" and not asked:
                        asked = True
                        await call(s, "sandbox_run_command", sandbox_id=sid, command="echo live-line")
                    if e["message"] == "live-line":
                        # Ending the sandbox ends the stream, with a last word.
                        await call(s, "sandbox_delete", sandbox_id=sid)
                    if e["message"].startswith("end of log stream"):
                        break
        assert "live-line" in got and got[-1].startswith("end of log stream"), got


@pytest.mark.timeout_s(400)
async def test_a_200_call_session_leaves_nothing_behind_and_memory_flat(airlock_server):
    """200 tool calls over one HTTP session: sandboxes it deleted are gone, and
    the server's resident memory after the run stays near where it was after a
    warm-up (a generous bound: allocator noise, not a leak per call)."""
    pid = airlock_server.proc.pid

    def rss_kib() -> int:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError("no VmRSS")

    calls = 0
    deleted = []
    async with mcp_session(airlock_server, "http") as s:
        async def one(tool, **args):
            nonlocal calls
            calls += 1
            return await call(s, tool, **args)

        async def round_(n):
            sid = (await one("sandbox_create", metadata=run_metadata(), timeout=300))["sandbox_id"]
            for i in range(n):
                k = i % 5
                if k == 0:
                    await one("sandbox_execute", sandbox_id=sid, code=f"print({i})")
                elif k == 1:
                    await one("sandbox_run_command", sandbox_id=sid, command=f"echo {i}")
                elif k == 2:
                    await one("sandbox_upload", sandbox_id=sid, file_path=f"/home/user/f{i}.txt", content="x" * 1000)
                elif k == 3:
                    await one("sandbox_read_file", sandbox_id=sid, file_path=f"/home/user/f{i - 1}.txt")
                else:
                    await one("sandbox_logs", sandbox_id=sid, lines=20)
            await one("sandbox_delete", sandbox_id=sid)
            deleted.append(sid)

        for _ in range(2):  # warm-up: pools, caches, the allocator's arenas
            await round_(8)
        before = rss_kib()
        while calls < 200:
            await round_(min(18, 200 - calls - 2) if 200 - calls > 2 else 0)
        after = rss_kib()
        assert calls >= 200
        listed = await one("sandbox_list", status="all", limit=1000)
    ids = {x["sandbox_id"] for x in listed["sandboxes"]}
    assert not ids & set(deleted), "no deleted sandbox is listed"
    h = {"X-API-KEY": airlock_server.api_key}
    for sid in deleted:
        assert httpx.get(f"{airlock_server.url}/sandboxes/{sid}", headers=h, timeout=10).status_code == 404
        assert not os.path.exists(os.path.join(airlock_server.data_dir, "sandboxes", sid)), "its directory is gone"
    assert after - before < 64 * 1024, f"server RSS grew {before} -> {after} KiB over {calls} calls"
