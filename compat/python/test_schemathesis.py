"""The control API fuzzed from its own OpenAPI document with schemathesis.

Every operation the document lists gets generated requests (valid and
invalid); none may answer 5xx or break the connection. Template builds
(`POST /templates`, which run recipes), imports (`application/zstd`
bodies schemathesis cannot generate), the event streams (endless by
design), the logs (endless with `follow=true`, which schemathesis finds
through the API links; one query parameter cannot be left out alone) and
webhook registration (it would send deliveries to whatever hosts it
generates) are left out; the other suites cover them (`test_mcp.py` the
logs' filters and bad input).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile

import pytest


@pytest.mark.timeout_s(420)
def test_no_generated_request_gets_a_server_error(airlock_server):
    exe = shutil.which("schemathesis") or shutil.which("st")
    cmd = [exe] if exe else [sys.executable, "-m", "schemathesis.cli"]
    r = subprocess.run(
        cmd
        + [
            "run",
            f"{airlock_server.url}/openapi.json",
            "-H",
            f"X-API-KEY: {airlock_server.api_key}",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "10",
            "--exclude-path-regex",
            # One filter of one kind: schemathesis ANDs filters of different kinds.
            "^/templates$|^/sandboxes/import$|/events$|^/webhooks$|^/events/webhooks$|/logs$",
            "--workers",
            "1",
            # A create of a template that starts a service (the code
            # interpreter's Jupyter) can pass 10 s on a loaded 2-core host.
            "--request-timeout",
            "60",
            "--no-color",
        ],
        capture_output=True,
        text=True,
        timeout=400,
        # Its cache goes where it runs: not into the repository.
        cwd=tempfile.mkdtemp(prefix="airlock-schemathesis-"),
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-6000:]
    assert " passed" in out and "failed" not in out.split("Test cases:")[-1], out[-3000:]
    assert not airlock_server.died(), "the server died under the fuzzing"
