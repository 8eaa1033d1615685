"""`GET /metrics` parses as the Prometheus text format and counts what happened."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from e2b import Sandbox

from _support import kill_later, run_metadata


def _families(server) -> dict:
    r = httpx.get(f"{server.url}/metrics", headers={"X-API-KEY": server.api_key}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(r.text)}


def _value(fams: dict, name: str, **labels) -> float:
    for s in fams[name].samples:
        if s.name in (name, name + "_total") and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    raise AssertionError(f"no sample {name} {labels}")


def test_metrics_parse_and_count(airlock_server):
    before = _families(airlock_server)
    creates = before["airlock_sandbox_create_seconds"]
    created_before = next(s.value for s in creates.samples if s.name.endswith("_count"))
    sbx = Sandbox.create(metadata=run_metadata())
    try:
        sbx.commands.run("true")
        after = _families(airlock_server)
        assert _value(after, "airlock_sandboxes", state="running") >= 1
        count = next(s.value for s in after["airlock_sandbox_create_seconds"].samples if s.name.endswith("_count"))
        assert count == created_before + 1
        assert _value(after, "airlock_proxy_responses", code="2xx") > _value(before, "airlock_proxy_responses", code="2xx")
        assert _value(after, "airlock_api_responses", code="2xx") > 0
        assert after["airlock_sandbox_kill_seconds"].type == "histogram"
        assert _value(after, "airlock_proxy_sent_bytes") > _value(before, "airlock_proxy_sent_bytes")
        missing = httpx.get(f"{airlock_server.url}/sandboxes/nosuchsandbox0000000", headers={"X-API-KEY": airlock_server.api_key}, timeout=30)
        assert missing.status_code == 404
        errs = _families(airlock_server)
        assert _value(errs, "airlock_api_errors", kind="not_found") >= 1
        assert errs["airlock_pool_ready"].type == "gauge"
    finally:
        kill_later(sbx)
    r = httpx.get(f"{airlock_server.url}/metrics", timeout=30)
    assert r.status_code == 401, "the metrics need the API key"
