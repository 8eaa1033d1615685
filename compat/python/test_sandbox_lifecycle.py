"""Control-plane lifecycle: create, connect, get_info, set_timeout, kill, metrics, errors."""

from __future__ import annotations

import datetime as dt
import re
import time

import pytest

from e2b import (
    AuthenticationException,
    Sandbox,
    SandboxException,
    SandboxNotFoundException,
    SandboxNotRunningException,
    SandboxQuery,
    SandboxState,
)

from _support import kill_later, run_metadata, unique, wait_until

UNKNOWN_ID = "doesnotexist0000000000"


def _now() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


def test_create_defaults_to_base_and_is_running(sandbox: Sandbox):
    assert isinstance(sandbox.sandbox_id, str) and sandbox.sandbox_id
    # E2B's proxy splits hosts on '-' and '.', so ids must not contain them.
    assert re.fullmatch(r"[A-Za-z0-9_]+", sandbox.sandbox_id), sandbox.sandbox_id
    assert sandbox.is_running() is True
    r = sandbox.commands.run("echo ready")
    assert r.stdout == "ready\n"


def test_create_explicit_template_and_context_manager():
    with Sandbox.create("base", timeout=60, metadata=run_metadata()) as sbx:
        assert sbx.commands.run("true").exit_code == 0
        sid = sbx.sandbox_id
    # __exit__ kills the sandbox
    assert Sandbox.kill(sid) is False


def test_create_unknown_template_fails():
    with pytest.raises(SandboxException):
        Sandbox.create(unique("no-such-template-"), metadata=run_metadata())


def test_is_running_false_after_kill(sandbox: Sandbox):
    assert sandbox.is_running()
    assert sandbox.kill() is True
    assert sandbox.is_running() is False


def test_kill_static_and_twice(sandbox: Sandbox):
    assert Sandbox.kill(sandbox.sandbox_id) is True
    assert Sandbox.kill(sandbox.sandbox_id) is False


def test_kill_unknown_returns_false():
    assert Sandbox.kill(UNKNOWN_ID) is False


def test_killed_sandbox_is_gone_from_info(sandbox: Sandbox):
    sandbox.kill()
    with pytest.raises(SandboxNotFoundException):
        Sandbox.get_info(sandbox.sandbox_id)


def test_command_on_killed_sandbox_raises_not_running(sandbox: Sandbox):
    sandbox.kill()
    with pytest.raises(SandboxNotRunningException):
        sandbox.commands.run("echo hi", timeout=10)


def test_kill_while_command_running(sandbox: Sandbox):
    handle = sandbox.commands.run("sleep 60", background=True)
    sandbox.kill()
    with pytest.raises(SandboxException) as exc:
        handle.wait()
    # The SDK probes /health (502 "... was not found") to tell the sandbox is gone.
    assert isinstance(exc.value, SandboxNotRunningException), repr(exc.value)


def test_get_info_fields(airlock_server):
    meta = run_metadata(owner="compat", case=unique())
    before = _now() - dt.timedelta(seconds=2)
    sbx = Sandbox.create(timeout=120, metadata=meta)
    try:
        info = sbx.get_info()
        assert info.sandbox_id == sbx.sandbox_id
        assert isinstance(info.template_id, str) and info.template_id
        # template may be reported by id with the alias in `name`
        assert "base" in (info.template_id, info.name), (info.template_id, info.name)
        assert info.metadata == meta
        assert info.state == SandboxState.RUNNING
        assert info.state == "running"
        assert info.started_at.tzinfo is not None
        assert before <= info.started_at <= _now() + dt.timedelta(seconds=2)
        ttl = (info.end_at - info.started_at).total_seconds()
        assert 110 <= ttl <= 130, ttl
        assert info.cpu_count >= 1
        assert info.memory_mb >= 128
        assert isinstance(info.envd_version, str) and info.envd_version

        static_info = Sandbox.get_info(sbx.sandbox_id)
        assert static_info.sandbox_id == sbx.sandbox_id
        assert static_info.metadata == meta
    finally:
        kill_later(sbx)


def test_get_info_unknown_raises_not_found():
    with pytest.raises(SandboxNotFoundException):
        Sandbox.get_info(UNKNOWN_ID)


def test_set_timeout_moves_end_at(sandbox: Sandbox):
    first = sandbox.get_info().end_at
    sandbox.set_timeout(900)
    longer = sandbox.get_info().end_at
    assert (longer - first).total_seconds() > 500, (first, longer)
    assert abs((longer - _now()).total_seconds() - 900) < 15

    sandbox.set_timeout(60)
    shorter = sandbox.get_info().end_at
    assert abs((shorter - _now()).total_seconds() - 60) < 15, shorter
    assert sandbox.is_running()


def test_set_timeout_static_and_unknown(sandbox: Sandbox):
    Sandbox.set_timeout(sandbox.sandbox_id, 400)
    end_at = Sandbox.get_info(sandbox.sandbox_id).end_at
    assert abs((end_at - _now()).total_seconds() - 400) < 15
    with pytest.raises(SandboxNotFoundException):
        Sandbox.set_timeout(UNKNOWN_ID, 30)


def test_sandbox_expires_after_timeout(airlock_server):
    meta = run_metadata(case=unique())
    sbx = Sandbox.create(timeout=2, metadata=meta)
    try:
        assert sbx.is_running()
        wait_until(lambda: not sbx.is_running(), timeout=20, interval=0.25,
                   what="sandbox to be killed at its timeout")

        def gone():
            try:
                Sandbox.get_info(sbx.sandbox_id)
                return False
            except SandboxNotFoundException:
                return True

        wait_until(gone, timeout=10, interval=0.25, what="expired sandbox to leave the API")
        assert sbx.sandbox_id not in [
            s.sandbox_id for s in Sandbox.list(query=SandboxQuery(metadata=meta)).next_items()]
    finally:
        kill_later(sbx)


def test_connect_to_running_sandbox(sandbox: Sandbox):
    sandbox.files.write("/tmp/connect-marker", "marker")
    other = Sandbox.connect(sandbox.sandbox_id)
    assert other.sandbox_id == sandbox.sandbox_id
    assert other.files.read("/tmp/connect-marker") == "marker"
    assert other.commands.run("echo via-connect").stdout == "via-connect\n"

    same = sandbox.connect()
    assert same.sandbox_id == sandbox.sandbox_id
    assert same.is_running()


def test_connect_does_not_shorten_timeout(airlock_server):
    sbx = Sandbox.create(timeout=600, metadata=run_metadata())
    try:
        end_before = sbx.get_info().end_at
        Sandbox.connect(sbx.sandbox_id, timeout=30)
        end_after = sbx.get_info().end_at
        assert end_after >= end_before - dt.timedelta(seconds=2), (end_before, end_after)
        # a longer timeout on connect extends it
        Sandbox.connect(sbx.sandbox_id, timeout=1200)
        end_longer = sbx.get_info().end_at
        assert (end_longer - end_before).total_seconds() > 300, (end_before, end_longer)
    finally:
        kill_later(sbx)


def test_connect_unknown_raises_not_found():
    with pytest.raises(SandboxNotFoundException):
        Sandbox.connect(UNKNOWN_ID)


def test_connect_killed_raises_not_found(sandbox: Sandbox):
    sandbox.kill()
    with pytest.raises(SandboxNotFoundException):
        Sandbox.connect(sandbox.sandbox_id)


def test_create_with_envs(airlock_server):
    sbx = Sandbox.create(envs={"SBX_GLOBAL": "from-create", "SBX_OTHER": "x y"},
                         metadata=run_metadata())
    try:
        assert sbx.commands.run("echo $SBX_GLOBAL").stdout == "from-create\n"
        assert sbx.commands.run('printf %s "$SBX_OTHER"').stdout == "x y"
        # per-command envs override sandbox-wide ones
        r = sbx.commands.run("echo $SBX_GLOBAL", envs={"SBX_GLOBAL": "override"})
        assert r.stdout == "override\n"
    finally:
        kill_later(sbx)


def test_get_metrics(sandbox: Sandbox):
    sandbox.commands.run("head -c 1000000 /dev/urandom | sha256sum > /dev/null")
    metrics = wait_until(lambda: sandbox.get_metrics(), timeout=15, interval=0.5,
                         what="at least one metrics sample")
    assert isinstance(metrics, list)
    started = sandbox.get_info().started_at
    for m in metrics:
        assert m.cpu_count >= 1
        assert 0 <= m.cpu_used_pct <= 100 * m.cpu_count + 1
        assert m.mem_total > 0
        assert 0 < m.mem_used <= m.mem_total
        assert m.mem_cache >= 0
        assert m.disk_total > 0
        assert 0 <= m.disk_used <= m.disk_total
        assert m.timestamp.tzinfo is not None
        assert started - dt.timedelta(seconds=5) <= m.timestamp <= _now() + dt.timedelta(seconds=5)

    static = Sandbox.get_metrics(sandbox.sandbox_id)
    assert isinstance(static, list)


def test_get_metrics_time_window(sandbox: Sandbox):
    wait_until(lambda: sandbox.get_metrics(), timeout=15, interval=0.5, what="metrics")
    future = _now() + dt.timedelta(hours=1)
    assert sandbox.get_metrics(start=future, end=future + dt.timedelta(minutes=1)) == []


def test_get_metrics_unknown_raises_not_found():
    with pytest.raises(SandboxNotFoundException):
        Sandbox.get_metrics(UNKNOWN_ID)


def test_bad_api_key_raises_authentication(airlock_server):
    bad = "e2b_" + "0" * 40
    assert bad != airlock_server.api_key
    with pytest.raises(AuthenticationException):
        Sandbox.create(api_key=bad, metadata=run_metadata())
    with pytest.raises(AuthenticationException):
        Sandbox.list(api_key=bad).next_items()
    with pytest.raises(AuthenticationException):
        Sandbox.get_info(UNKNOWN_ID, api_key=bad)


def test_envd_rejects_missing_access_token(sandbox: Sandbox, airlock_server):
    """If the server hands out an envdAccessToken, envd requests without it are refused."""
    import httpx

    token = sandbox._envd_access_token
    if not token:
        pytest.skip("server returned no envdAccessToken (unsecured sandboxes)")
    r = httpx.post(
        f"{airlock_server.url}/process.Process/List",
        headers={
            "E2b-Sandbox-Id": sandbox.sandbox_id,
            "E2b-Sandbox-Port": "49983",
            "Content-Type": "application/json",
            "Connect-Protocol-Version": "1",
        },
        content=b"{}",
    )
    assert r.status_code == 401, (r.status_code, r.text)
    # /health needs no token
    h = httpx.get(
        f"{airlock_server.url}/health",
        headers={"E2b-Sandbox-Id": sandbox.sandbox_id, "E2b-Sandbox-Port": "49983"},
    )
    assert 200 <= h.status_code < 300, h.status_code


def test_unknown_sandbox_header_gives_502(airlock_server):
    import httpx

    r = httpx.get(
        f"{airlock_server.url}/health",
        headers={"E2b-Sandbox-Id": UNKNOWN_ID, "E2b-Sandbox-Port": "49983"},
    )
    assert r.status_code == 502, (r.status_code, r.text)
    assert "was not found" in r.json()["message"]


def test_many_sandboxes_concurrently(airlock_server):
    """Sandboxes are isolated from each other."""
    sbxs = [Sandbox.create(metadata=run_metadata()) for _ in range(3)]
    try:
        for i, s in enumerate(sbxs):
            s.files.write("/tmp/who", f"sandbox-{i}")
        for i, s in enumerate(sbxs):
            assert s.files.read("/tmp/who") == f"sandbox-{i}"
        assert len({s.sandbox_id for s in sbxs}) == 3
    finally:
        for s in sbxs:
            kill_later(s)


def test_create_is_fast(airlock_server):
    t0 = time.monotonic()
    sbx = Sandbox.create(metadata=run_metadata())
    try:
        sbx.commands.run("true")
        # generous bound: creation + first command well under 5 s
        assert time.monotonic() - t0 < 5
    finally:
        kill_later(sbx)


def test_parallel_creates(airlock_server):
    from concurrent.futures import ThreadPoolExecutor

    def make(i):
        s = Sandbox.create(metadata=run_metadata(par=str(i)))
        return s, s.commands.run(f"echo {i}").stdout

    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(make, range(6)))
    try:
        assert [out for _, out in results] == [f"{i}\n" for i in range(6)]
        assert len({s.sandbox_id for s, _ in results}) == 6
    finally:
        for s, _ in results:
            kill_later(s)


def test_private_ports_need_the_traffic_token_and_egress_rules_are_refused(airlock_server):
    """network={"allow_public_traffic": False}: a port answers only with the
    sandbox's traffic access token; egress rules this server cannot enforce
    are refused rather than silently ignored."""
    import httpx
    from e2b import SandboxException
    sbx = Sandbox.create(network={"allow_public_traffic": False, "mask_request_host": "inside.test:${PORT}"}, metadata=run_metadata())
    try:
        assert sbx.traffic_access_token, "the create answer carries the traffic token"
        sbx.commands.run(
            "cat > /tmp/host.py <<'PY'\n"
            "import http.server\n"
            "class H(http.server.BaseHTTPRequestHandler):\n"
            "    def do_GET(self):\n"
            "        b = (self.headers.get('Host', '') + '|' + str(self.headers.get('e2b-traffic-access-token'))).encode()\n"
            "        self.send_response(200); self.send_header('Content-Length', str(len(b))); self.end_headers(); self.wfile.write(b)\n"
            "http.server.HTTPServer(('0.0.0.0', 8000), H).serve_forever()\n"
            "PY\n"
            "setsid nohup python3 /tmp/host.py >/dev/null 2>&1 &"
        )
        port = {"E2b-Sandbox-Id": sbx.sandbox_id, "E2b-Sandbox-Port": "8000"}
        def up():
            r = httpx.get(airlock_server.url + "/", headers={**port, "e2b-traffic-access-token": sbx.traffic_access_token}, timeout=5)
            return r if r.status_code == 200 else None
        r = wait_until(up, timeout=15, what="the server in the sandbox")
        assert r.text == "inside.test:8000|None", "the host is masked and the token stays at the proxy: " + r.text
        assert httpx.get(airlock_server.url + "/", headers=port, timeout=5).status_code == 403
        assert httpx.get(airlock_server.url + "/", headers={**port, "e2b-traffic-access-token": "wrong"}, timeout=5).status_code == 403
        # envd itself still takes the access token as always.
        assert sbx.commands.run("echo ok").stdout == "ok\n"
    finally:
        kill_later(sbx)
    with pytest.raises(SandboxException, match="not an IPv4 address, a CIDR or a domain"):
        Sandbox.create(network={"allow_out": ["not a host!"]}, metadata=run_metadata())
    with pytest.raises(SandboxException, match="SOCKS5"):
        Sandbox.create(network={"egress_proxy": {"address": "proxy.test:1080"}}, metadata=run_metadata())
    no_net = Sandbox.create(network={"deny_out": ["0.0.0.0/0"]}, metadata=run_metadata())
    try:
        assert no_net.get_info().allow_internet_access is False
    finally:
        kill_later(no_net)


def test_update_network_refuses_what_it_cannot_enforce(sandbox: Sandbox):
    from e2b import SandboxException
    with pytest.raises(SandboxException, match="not an IPv4 address, a CIDR or a domain"):
        sandbox.update_network({"allow_out": ["bad entry"]})
    offline = Sandbox.create(allow_internet_access=False, metadata=run_metadata())
    try:
        with pytest.raises(SandboxException, match="cannot give it a network"):
            offline.update_network({"allow_out": ["198.51.100.7"]})
        offline.update_network({"allow_internet_access": False})  # what it has already: accepted
    finally:
        kill_later(offline)
    sandbox.update_network({"dns_servers": []})  # nothing it cannot do: accepted
    assert sandbox.commands.run("echo still-fine").stdout == "still-fine\n"
