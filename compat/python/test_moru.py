"""The official `moru` SDK unchanged: commands and files travel with
`Moru-Sandbox-Id` / `Moru-Sandbox-Port`, and `GET /v2/sandbox-runs` lists
live and ended runs; E2B's `GET /default-templates` through its own client."""

from __future__ import annotations

import pytest

moru = pytest.importorskip("moru")

from moru import Sandbox  # noqa: E402

from _support import run_metadata, wait_until  # noqa: E402


@pytest.fixture(autouse=True)
def _moru_env(airlock_server, monkeypatch):
    monkeypatch.setenv("MORU_API_URL", airlock_server.url)
    monkeypatch.setenv("MORU_SANDBOX_URL", airlock_server.url)
    monkeypatch.setenv("MORU_API_KEY", airlock_server.api_key)
    monkeypatch.delenv("MORU_DEBUG", raising=False)


def test_moru_commands_and_files_work_unchanged():
    s = Sandbox.create(template="base", timeout=120, metadata=run_metadata())
    try:
        r = s.commands.run("echo from-moru; id -un")
        assert (r.exit_code, r.stdout) == (0, "from-moru\nuser\n"), r
        s.files.write("/home/user/m.txt", "moru file")
        assert s.files.read("/home/user/m.txt") == "moru file"
        assert any(e.name == "m.txt" for e in s.files.list("/home/user"))
    finally:
        s.kill()


def test_sandbox_runs_list_live_and_ended_runs(airlock_server):
    from moru.api.client.api.sandboxes import get_v2_sandbox_runs
    from moru.api.client.models import SandboxRunStatus
    from moru.api.client_sync import get_api_client
    from moru.connection_config import ConnectionConfig

    live = Sandbox.create(template="base", timeout=120, metadata=run_metadata())
    ended = Sandbox.create(template="base", timeout=120, metadata=run_metadata())
    ended.kill()
    client = get_api_client(ConnectionConfig())
    try:
        res = get_v2_sandbox_runs.sync_detailed(client=client, limit=100)
        assert res.status_code == 200, res.content
        runs = {r.sandbox_id: r for r in res.parsed}
        assert runs[live.sandbox_id].status == SandboxRunStatus.RUNNING
        assert runs[live.sandbox_id].template_id == "base"
        e = runs[ended.sandbox_id]
        assert e.status == SandboxRunStatus.STOPPED and e.end_reason.value == "killed" and e.ended_at >= e.created_at, e
        order = [r.sandbox_id for r in res.parsed]
        assert order.index(ended.sandbox_id) < order.index(live.sandbox_id), "newest first"
        stopped = get_v2_sandbox_runs.sync_detailed(client=client, status=[SandboxRunStatus.STOPPED], limit=100).parsed
        assert ended.sandbox_id in {r.sandbox_id for r in stopped} and live.sandbox_id not in {r.sandbox_id for r in stopped}
        page = get_v2_sandbox_runs.sync_detailed(client=client, limit=1)
        assert len(page.parsed) == 1 and page.headers.get("x-next-token")
        nxt = get_v2_sandbox_runs.sync_detailed(client=client, limit=1, next_token=page.headers["x-next-token"])
        assert nxt.parsed[0].sandbox_id != page.parsed[0].sandbox_id
    finally:
        live.kill()


def test_default_templates_parse_in_e2bs_model(airlock_server):
    from e2b import ConnectionConfig
    from e2b.api.client.api.templates import get_default_templates
    from e2b.api.client_sync import get_api_client

    res = get_default_templates.sync_detailed(client=get_api_client(ConnectionConfig()))
    assert res.status_code == 200, res.content
    names = {t.template_id: t for t in res.parsed}
    assert {"base", "code-interpreter-v1"} <= set(names)
    assert names["base"].build_status.value == "ready"
