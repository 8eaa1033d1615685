"""Clients that know only a domain: `airlock serve --domain airlock.test` with
HTTPS from the local CA (`airlock tls init`), reached as E2B's cloud is, at
`https://api.airlock.test` and `https://{port}-{id}.airlock.test` on port 443.

The clients are configured with nothing but `E2B_DOMAIN`, `E2B_API_KEY` and
the CA (`SSL_CERT_FILE`): the newest `e2b` over HTTP/2 and HTTP/1.1, and
`e2b-mcp-server` (PyPI), which pins the 1.x `e2b-code-interpreter` (installed
by this module in a virtualenv of its own: it cannot share this one).

Names resolve through a DNS server this module runs: the clients run in a
mount namespace whose /etc/resolv.conf points at it, and it answers every
name under airlock.test with the server's own loopback address. No real
name or address is involved.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path

import pytest

from conftest import AirlockServer

DOMAIN = "airlock.test"
# A loopback address of this module's own (the server listens on its :443,
# the resolver on its :53); the machine's 127.0.0.1 is left alone.
ADDR = f"127.{secrets.randbelow(200) + 20}.{secrets.randbelow(250) + 1}.{secrets.randbelow(250) + 1}"


class Resolver:
    """A UDP DNS server: A records for DOMAIN and every name under it, with
    ADDR; NOERROR and no answer for other types there; REFUSED elsewhere."""

    def __init__(self, addr: str) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((addr, 53))
        self.queries: list[str] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                q, peer = self.sock.recvfrom(512)
            except OSError:
                return
            try:
                self.sock.sendto(self._answer(q), peer)
            except Exception:
                continue

    def _answer(self, q: bytes) -> bytes:
        qid, _flags, qd = struct.unpack(">HHH", q[:6])
        i, labels = 12, []
        while q[i]:
            labels.append(q[i + 1:i + 1 + q[i]].decode("ascii", "replace"))
            i += 1 + q[i]
        qtype, _qclass = struct.unpack(">HH", q[i + 1:i + 5])
        question = q[12:i + 5]
        name = ".".join(labels).lower()
        self.queries.append(name)
        ours = name == DOMAIN or name.endswith("." + DOMAIN)
        rcode = 0 if ours else 5
        answers = b""
        if ours and qtype == 1:
            answers = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, 30, 4) + socket.inet_aton(ADDR)
        head = struct.pack(">HHHHHH", qid, 0x8180 | rcode, 1, 1 if answers else 0, 0, 0)
        return head + question + answers

    def close(self) -> None:
        self.sock.close()


@pytest.fixture(scope="module")
def domain_server():
    resolver = Resolver(ADDR)
    srv = AirlockServer()
    srv.host = ADDR
    srv.extra_args = ["--domain", DOMAIN]
    out = subprocess.run([str(srv.bin), "tls", "init", "--data-dir", str(srv.data_dir), "--domain", DOMAIN],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    ca = srv.data_dir / "tls-ca" / "ca.pem"
    assert str(ca) in out.stdout and "SSL_CERT_FILE" in out.stdout and "NODE_EXTRA_CA_CERTS" in out.stdout, out.stdout
    # Port 443: the SDKs add no port to a domain's URLs. Plain HTTP (the
    # fixture's readiness check) shares it.
    srv.start(port=443)
    resolv = Path(tempfile.mkstemp(prefix="airlock-resolv-")[1])
    resolv.write_text(f"nameserver {ADDR}\noptions attempts:2 timeout:2\n")
    srv.resolv = resolv
    srv.ca = ca
    srv.resolver = resolver
    yield srv
    srv.kill_leftover_sandboxes()
    srv.stop()
    srv.cleanup_dirs()
    resolver.close()
    resolv.unlink()


def isolated(srv, argv: list[str]) -> list[str]:
    """argv run in a private mount namespace whose resolver is ours."""
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c",
            'mount --bind "$0" /etc/resolv.conf && exec "$@"', str(srv.resolv), *argv]


def domain_env(srv, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("E2B_", "AIRLOCK_", "MORU_"))}
    env.update(E2B_DOMAIN=DOMAIN, E2B_API_KEY=srv.api_key, SSL_CERT_FILE=str(srv.ca), **extra)
    return env


CLIENT = textwrap.dedent('''
    import json, os, ssl, sys, time, urllib.request
    from e2b import Sandbox
    out = {}
    s = Sandbox.create(template="base", timeout=120)
    try:
        out["api"] = s.connection_config.api_url
        out["envd"] = s.envd_api_url
        out["domain"] = s.sandbox_domain
        r = s.commands.run("echo over-$((40+2)); id -un")
        out["run"] = [r.exit_code, r.stdout]
        s.files.write("/home/user/d.txt", "by domain")
        out["read"] = s.files.read("/home/user/d.txt")
        s.commands.run("cd /home/user && python3 -m http.server 8000 >/dev/null 2>&1", background=True)
        host = s.get_host(8000)
        out["host"] = host
        ctx = ssl.create_default_context()
        for _ in range(100):
            try:
                with urllib.request.urlopen(f"https://{host}/d.txt", context=ctx, timeout=5) as resp:
                    out["port"] = [resp.status, resp.read().decode()]
                break
            except Exception as e:
                out["port_error"] = repr(e)
                time.sleep(0.2)
        out["listed"] = s.sandbox_id in [x.sandbox_id for x in Sandbox.list().next_items()]
    finally:
        s.kill()
    print(json.dumps(out))
''')


@pytest.mark.timeout_s(150)
@pytest.mark.parametrize("http_version", ["2", "1.1"])
def test_the_e2b_sdk_works_with_only_a_domain_over_https(domain_server, http_version):
    env = domain_env(domain_server, E2B_HTTP_VERSION=http_version)
    p = subprocess.run(isolated(domain_server, [sys.executable, "-c", CLIENT]), env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, f"stdout:\n{p.stdout}\nstderr:\n{p.stderr[-4000:]}\nserver:\n{domain_server.log_tail()}"
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["api"] == f"https://api.{DOMAIN}", out
    assert out["domain"] == DOMAIN and out["envd"].startswith("https://49983-"), out
    assert out["run"] == [0, "over-42\nuser\n"], out
    assert out["read"] == "by domain", out
    assert out["host"].startswith("8000-") and out["host"].endswith("." + DOMAIN), out
    assert out.get("port") == [200, "by domain"], out
    assert out["listed"], out
    assert any(q.startswith("49983-") for q in domain_server.resolver.queries), domain_server.resolver.queries


def test_a_client_that_does_not_trust_the_ca_is_refused(domain_server):
    # The same client without the CA: certificate verification fails (the
    # server presents a certificate of the local CA, not a public one).
    code = "from e2b import Sandbox\ntry:\n    Sandbox.create(template='base', timeout=30)\nexcept Exception as e:\n    print('refused', type(e).__name__, e)\n"
    env = domain_env(domain_server)
    env.pop("SSL_CERT_FILE")
    p = subprocess.run(isolated(domain_server, [sys.executable, "-c", code]), env=env, capture_output=True, text=True, timeout=90)
    assert "refused" in p.stdout, p.stdout + p.stderr
    assert "certificate" in p.stdout.lower() or "tls" in p.stdout.lower() or "ssl" in p.stdout.lower(), p.stdout


@pytest.fixture(scope="module")
def mcp_server_venv():
    """A virtualenv with `e2b-mcp-server` from PyPI (it needs the 1.x SDKs)."""
    venv = Path(tempfile.gettempdir()) / "airlock-compat-e2b-mcp-server"
    python = venv / "bin" / "python"
    # A venv from an earlier run is reused only when it imports the package;
    # a missing or half-made one (an interrupted pip) is made again from scratch.
    if not python.exists() or subprocess.run([str(python), "-c", "import e2b_mcp_server"], capture_output=True).returncode != 0:
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", "e2b-mcp-server"], check=True, timeout=600)
    return venv


@pytest.mark.timeout_s(240)
async def test_e2b_mcp_server_runs_code_through_the_domain(domain_server, mcp_server_venv):
    from mcp import ClientSession, StdioServerParameters, stdio_client

    ver = subprocess.run([str(mcp_server_venv / "bin" / "python"), "-c", "import importlib.metadata as m; print(m.version('e2b-code-interpreter'), m.version('e2b'))"],
                         capture_output=True, text=True, timeout=60)
    assert ver.stdout.startswith("1."), ver.stdout + ver.stderr
    # The wheel has no console script: its `main` is the entry point.
    argv = isolated(domain_server, [str(mcp_server_venv / "bin" / "python"), "-c", "import e2b_mcp_server; e2b_mcp_server.main()"])
    params = StdioServerParameters(command=argv[0], args=argv[1:], env=domain_env(domain_server))
    async with stdio_client(params) as (r, w):
        async with ClientSession(r, w) as s:
            await s.initialize()
            tools = await s.list_tools()
            assert [t.name for t in tools.tools] == ["run_code"]
            res = await s.call_tool("run_code", {"code": "x = 6 * 7\nprint('answer', x)"})
            assert not res.is_error, res
            body = json.loads(res.content[0].text)
            assert body["stdout"] == ["answer 42\n"], body
            assert body["stderr"] == [], body


MORU_CLIENT = textwrap.dedent('''
    import json
    from moru import Sandbox
    s = Sandbox.create(template="base", timeout=120)
    try:
        r = s.commands.run("echo moru-by-domain")
        s.files.write("/home/user/m.txt", "moru file")
        print(json.dumps({"api": s.connection_config.api_url, "run": [r.exit_code, r.stdout], "read": s.files.read("/home/user/m.txt")}))
    finally:
        s.kill()
''')


@pytest.mark.timeout_s(120)
def test_moru_in_domain_mode(domain_server):
    pytest.importorskip("moru")
    env = domain_env(domain_server, MORU_DOMAIN=DOMAIN, MORU_API_KEY=domain_server.api_key)
    p = subprocess.run(isolated(domain_server, [sys.executable, "-c", MORU_CLIENT]), env=env, capture_output=True, text=True, timeout=100)
    assert p.returncode == 0, f"stdout:\n{p.stdout}\nstderr:\n{p.stderr[-4000:]}"
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out == {"api": f"https://api.{DOMAIN}", "run": [0, "moru-by-domain\n"], "read": "moru file"}, out


JS_CLIENT = """
import { Sandbox } from 'e2b'
const s = await Sandbox.create('base', { timeoutMs: 120_000 })
try {
  const r = await s.commands.run('echo js-by-domain')
  await s.files.write('/home/user/j.txt', 'js file')
  await s.commands.run('cd /home/user && python3 -m http.server 8001 >/dev/null 2>&1', { background: true })
  // Until the server in the sandbox listens (the proxy says 502 before).
  let port = null
  for (let i = 0; i < 100 && port?.[0] !== 200; i++) {
    try {
      const res = await fetch(`https://${s.getHost(8001)}/j.txt`)
      port = [res.status, await res.text()]
    } catch (e) { port = [0, String(e)] }
    if (port[0] !== 200) await new Promise((ok) => setTimeout(ok, 200))
  }
  console.log(JSON.stringify({ run: [r.exitCode, r.stdout], read: await s.files.read('/home/user/j.txt'), host: s.getHost(8001), port }))
} finally {
  await s.kill()
}
"""


@pytest.mark.timeout_s(120)
def test_the_js_sdk_works_with_only_a_domain(domain_server):
    js = Path(__file__).resolve().parents[1] / "js"
    assert (js / "node_modules" / "e2b").is_dir(), "compat/js's packages are not installed (compat/run.sh installs them first)"
    env = domain_env(domain_server, NODE_EXTRA_CA_CERTS=str(domain_server.ca))
    p = subprocess.run(isolated(domain_server, ["node", "--input-type=module", "-e", JS_CLIENT]), env=env, cwd=js, capture_output=True, text=True, timeout=100)
    assert p.returncode == 0, f"stdout:\n{p.stdout}\nstderr:\n{p.stderr[-4000:]}\nserver:\n{domain_server.log_tail()}"
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out["run"] == [0, "js-by-domain\n"] and out["read"] == "js file", out
    assert out["host"].startswith("8001-") and out["host"].endswith("." + DOMAIN), out
    assert out["port"] == [200, "js file"], out
