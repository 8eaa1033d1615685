"""Operating sandboxes through the official SDK's own API client: E2B's
bulk metrics, the metric history with its range, and the server's health."""

from __future__ import annotations

import datetime

import httpx
from e2b import ConnectionConfig, Sandbox
from e2b.api.client.api.sandboxes import get_sandboxes_metrics
from e2b.api.client.models import SandboxesWithMetrics
from e2b.api.client_sync import get_api_client

from _support import kill_later, run_metadata, wait_until


def test_bulk_metrics_and_history_parse_in_the_sdks_models(airlock_server):
    a = Sandbox.create(metadata=run_metadata())
    b = Sandbox.create(metadata=run_metadata())
    try:
        a.commands.run("head -c 1000000 /dev/urandom | sha256sum")
        client = get_api_client(ConnectionConfig())
        def bulk():
            res = get_sandboxes_metrics.sync_detailed(client=client, sandbox_ids=[a.sandbox_id, b.sandbox_id, "nosuchsandbox0000000"])
            assert res.status_code == 200, res.content
            assert isinstance(res.parsed, SandboxesWithMetrics), res.content
            got = res.parsed.sandboxes
            return got if {a.sandbox_id, b.sandbox_id} <= set(got) else None
        got = wait_until(bulk, timeout=20, what="a sample of both sandboxes")
        assert "nosuchsandbox0000000" not in got
        m = got[a.sandbox_id]
        assert m["memTotal"] > 0 and m["diskTotal"] > 0 and "netRxBytes" in m, m

        history = a.get_metrics()
        assert history, "the SDK's get_metrics returns the history"
        assert all(x.mem_total > 0 for x in history)
        first = history[0].timestamp
        ranged = a.get_metrics(start=first, end=first + datetime.timedelta(seconds=1))
        assert ranged and all(x.timestamp <= first + datetime.timedelta(seconds=2) for x in ranged)
    finally:
        kill_later(a)
        kill_later(b)


def test_server_health_reports_its_dependencies(airlock_server):
    r = httpx.get(f"{airlock_server.url}/health", timeout=10)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "ok" and body["checks"]["store"] is True and body["checks"]["disk"] is True, body
    r = httpx.get(f"{airlock_server.url}/health/details", headers={"X-API-KEY": airlock_server.api_key}, timeout=10)
    assert r.status_code == 200 and r.json()["checks"]["disk"]["freeBytes"] > 0, r.text


def test_v2_logs_parse_in_e2bs_model(airlock_server):
    from e2b.api.client.api.sandboxes import get_v_2_sandboxes_sandbox_id_logs
    from e2b.api.client.models import LogsDirection, SandboxLogsV2Response

    s = Sandbox.create(metadata=run_metadata())
    try:
        s.commands.run("echo v2-line; echo oops >&2")
        client = get_api_client(ConnectionConfig())
        res = get_v_2_sandboxes_sandbox_id_logs.sync_detailed(s.sandbox_id, client=client, search="v2-line")
        assert res.status_code == 200, res.content
        assert isinstance(res.parsed, SandboxLogsV2Response), res.content
        assert res.parsed.logs and all("v2-line" in e.message for e in res.parsed.logs), res.parsed.logs
        e = next(e for e in res.parsed.logs if e.message == "v2-line")
        assert e.level.value == "info" and e.fields["source"] == "stdout", e
        back = get_v_2_sandboxes_sandbox_id_logs.sync_detailed(s.sandbox_id, client=client, direction=LogsDirection.BACKWARD).parsed.logs
        fwd = get_v_2_sandboxes_sandbox_id_logs.sync_detailed(s.sandbox_id, client=client).parsed.logs
        assert [x.message for x in back] == [x.message for x in reversed(fwd)] and len(fwd) >= 2
    finally:
        kill_later(s)
