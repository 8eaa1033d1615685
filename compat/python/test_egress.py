"""Egress policy through the official SDKs' `network` option, against a
server of this module's own that resolves through the stand-in internet of
`egress_hosts` (its own namespace and documentation-range addresses; no
traffic leaves this host).

Each check runs from inside a sandbox, with code that tries to get past the
policy: its own resolver, another DNS server, DNS over HTTPS to an allowed
address, an allowed name's address under another name, an allowed name
pointed at another address.
"""

from __future__ import annotations

import json
import time

import pytest

from conftest import AirlockServer
from egress_hosts import DNS_IP, NAMES, Internet

from e2b import Sandbox, SandboxException

GOOD, EVIL, CDN = NAMES["api.good.test"], NAMES["evil.test"], NAMES["cdn.good.test"]

# What runs inside the sandbox: each probe prints one JSON line.
PROBE = r'''
import base64, json, random, socket, ssl, struct, sys

def query(name):
    q = struct.pack(">HHHHHH", random.randint(0, 65535), 0x0100, 1, 0, 0, 0)
    for l in name.split("."):
        q += bytes([len(l)]) + l.encode()
    return q + b"\x00\x00\x01\x00\x01"

def parse(a):
    rcode, an = a[3] & 0x0F, struct.unpack(">H", a[6:8])[0]
    at = 12
    while a[at]:
        at += 1 + a[at]
    at += 5
    ips = []
    for _ in range(an):
        at += 2 if a[at] & 0xC0 == 0xC0 else 0
        t, _, _, ln = struct.unpack(">HHIH", a[at:at + 10])
        if t == 1:
            ips.append(socket.inet_ntoa(a[at + 10:at + 14]))
        at += 10 + ln
    return {"rcode": rcode, "ips": ips}

def dns(name, server, port=53, tcp=False):
    try:
        if tcp:
            s = socket.create_connection((server, port), timeout=4)
            q = query(name)
            s.sendall(struct.pack(">H", len(q)) + q)
            n = struct.unpack(">H", s.recv(2))[0]
            a = b""
            while len(a) < n:
                a += s.recv(n - len(a))
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(3)
            s.sendto(query(name), (server, port))
            a = s.recv(4096)
        return parse(a)
    except Exception as e:
        return {"error": type(e).__name__}

def system_dns(name):
    try:
        return {"ips": sorted({a[4][0] for a in socket.getaddrinfo(name, 80, socket.AF_INET)})}
    except Exception as e:
        return {"error": type(e).__name__}

def http(ip, port, host, path="/", tls=False, sni=None, ca=None, headers=None):
    try:
        s = socket.create_connection((ip, port), timeout=5)
        if tls:
            ctx = ssl.create_default_context(cafile=ca) if ca else ssl.create_default_context()
            if not ca:
                ctx.check_hostname = False
                ctx.verify_mode = ssl.CERT_NONE
            s = ctx.wrap_socket(s, server_hostname=sni or host)
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n".encode())
        data = b""
        while True:
            d = s.recv(65536)
            if not d:
                break
            data += d
        head, _, body = data.partition(b"\r\n\r\n")
        status = int(head.split(b" ")[1]) if head else 0
        try:
            body = json.loads(body)
        except Exception:
            body = body.decode(errors="replace")
        return {"status": status, "body": body}
    except Exception as e:
        return {"error": type(e).__name__}

def banner(ip, port=7000):
    try:
        s = socket.create_connection((ip, port), timeout=5)
        d = s.recv(100).decode()
        return {"banner": d.strip()} if d else {"error": "closed"}
    except Exception as e:
        return {"error": type(e).__name__}

def doh(server, name):
    r = http(server, 443, "dns.good.test", "/dns-query?dns=" + base64.urlsafe_b64encode(query(name)).decode().rstrip("="), tls=True)
    return r

print(json.dumps(eval(sys.argv[1])))
'''


# Looks for a value (given reversed) in the environment, every process's
# environment and command line, and the files a sandbox can write.
FIND = r'''
import os, sys
v = sys.argv[1][::-1].encode()
n = 0
for k, val in os.environ.items():
    if v in (k + "=" + val).encode():
        print("FOUND env", k)
for pid in os.listdir("/proc"):
    if pid.isdigit():
        for f in ("environ", "cmdline"):
            try:
                n += 1
                if v in open(f"/proc/{pid}/{f}", "rb").read():
                    print("FOUND", pid, f)
            except OSError:
                pass
for top in ("/etc", "/home", "/tmp", "/root", "/run", "/var"):
    for d, _, files in os.walk(top):
        for f in files:
            p = os.path.join(d, f)
            try:
                n += 1
                if os.path.isfile(p) and v in open(p, "rb").read(8 << 20):
                    print("FOUND", p)
            except OSError:
                pass
print("searched", n)
'''


@pytest.fixture(scope="module")
def inet():
    i = Internet()
    yield i
    i.close()


@pytest.fixture(scope="module")
def egress_server(inet):
    srv = AirlockServer()
    srv.extra_args = ["--dns-upstream", DNS_IP, "--upstream-ca", str(inet.ca_pem)]
    srv.start()
    yield srv
    srv.kill_leftover_sandboxes()
    srv.stop()
    srv.cleanup_dirs()


def make(srv: AirlockServer, **kw) -> Sandbox:
    s = Sandbox.create(api_key=srv.api_key, api_url=srv.url, sandbox_url=srv.url, timeout=180, **kw)
    s.files.write("/tmp/probe.py", PROBE)
    return s


def probe(s: Sandbox, expr: str) -> dict:
    r = s.commands.run(f"python3 /tmp/probe.py {json.dumps(expr)}", timeout=30)
    return json.loads(r.stdout)


def test_only_an_allowed_name_is_reachable_and_only_at_its_own_addresses(egress_server):
    s = make(egress_server, network={"allow_out": ["api.good.test"], "deny_out": ["0.0.0.0/0"]})
    try:
        # Positive controls: the allowed name resolves and answers, over HTTP and HTTPS.
        assert probe(s, "system_dns('api.good.test')") == {"ips": [GOOD]}
        r = probe(s, f"http('{GOOD}', 80, 'api.good.test', '/hello')")
        assert r["status"] == 200 and r["body"]["local"] == GOOD and r["body"]["headers"]["host"] == "api.good.test", r
        r = probe(s, f"http('{GOOD}', 443, 'api.good.test', '/tls', tls=True)")
        assert r["status"] == 200 and r["body"]["sni"] == "api.good.test", r
        # No name at all (a raw TCP service): an address the resolver gave for an allowed name is that name's.
        assert probe(s, f"banner('{GOOD}')") == {"banner": f"banner {GOOD}"}
        # A denied name does not resolve, through the system resolver or any server the sandbox picks.
        assert "error" in probe(s, "system_dns('evil.test')")
        assert probe(s, f"dns('evil.test', '{EVIL}')") == {"rcode": 5, "ips": []}, "a query to another server is answered by Airlock's resolver"
        assert probe(s, f"dns('evil.test', '{DNS_IP}', tcp=True)") == {"rcode": 5, "ips": []}
        assert "error" in probe(s, f"dns('evil.test', '{DNS_IP}', port=5353)"), "DNS on another port does not leave"
        # The allowed name's address under another name (Host, then SNI).
        r = probe(s, f"http('{GOOD}', 80, 'evil.test')")
        assert r["status"] == 403 and "evil.test" in r["body"], r
        assert "error" in probe(s, f"http('{GOOD}', 443, 'evil.test', tls=True)")
        # The allowed name pointed at another address (its own /etc/hosts, a forged SNI).
        r = probe(s, f"http('{EVIL}', 80, 'api.good.test')")
        assert r["status"] == 403 and "does not resolve to" in r["body"], r
        assert "error" in probe(s, f"http('{EVIL}', 443, 'api.good.test', tls=True)")
        # Denied addresses, with no name.
        assert "error" in probe(s, f"banner('{EVIL}')")
        # A kept-alive connection cannot switch to another Host after its first request.
        two = "GET / HTTP/1.1\\r\\nHost: api.good.test\\r\\n\\r\\nGET / HTTP/1.1\\r\\nHost: evil.test\\r\\n\\r\\n"
        r = s.commands.run(
            "python3 -c \"import socket; s=socket.create_connection(('%s',80),timeout=5); s.sendall(b'%s'); import time; time.sleep(1); print(s.recv(65536).decode().count('HTTP/1.1 200'))\"" % (GOOD, two),
            timeout=30,
        )
        assert r.stdout.strip() == "1", r
        # What was refused is counted.
        import httpx
        m = httpx.get(egress_server.url + "/metrics", headers={"X-API-KEY": egress_server.api_key}, timeout=10).text
        denied = next(float(l.split()[-1]) for l in m.splitlines() if l.startswith('airlock_egress_connections_total{verdict="denied"}'))
        refused = next(float(l.split()[-1]) for l in m.splitlines() if l.startswith('airlock_egress_dns_queries_total{answer="refused"}'))
        policed = next(float(l.split()[-1]) for l in m.splitlines() if l.startswith("airlock_egress_policed_sandboxes "))
        assert denied >= 5 and refused >= 2 and policed >= 1, m
    finally:
        s.kill()


def test_dns_over_https_to_an_allowed_address_does_not_open_a_denied_name(egress_server):
    s = make(egress_server, network={"allow_out": ["api.good.test", DNS_IP], "deny_out": ["0.0.0.0/0"]})
    try:
        # The sandbox can ask an allowed DoH server anything, and learns evil.test's address...
        r = probe(s, f"doh('{DNS_IP}', 'evil.test')")
        assert r.get("status") == 200, r
        # ...which gets it nowhere.
        r = probe(s, f"http('{EVIL}', 80, 'evil.test')")
        assert r["status"] == 403, r
        assert "error" in probe(s, f"banner('{EVIL}')")
        assert "error" in probe(s, f"http('{EVIL}', 443, 'evil.test', tls=True)")
    finally:
        s.kill()


def test_addresses_and_cidrs_allow_wins_over_deny(egress_server):
    s = make(egress_server, network={"allow_out": ["198.51.100.0/25"], "deny_out": ["0.0.0.0/0"]})
    try:
        assert probe(s, f"banner('{EVIL}')") == {"banner": f"banner {EVIL}"}
        assert "error" in probe(s, f"banner('{GOOD}')")
        r = probe(s, f"http('{GOOD}', 80, 'api.good.test')")
        assert r["status"] == 403, r
        # With everything denied, names do not even resolve (queries could carry data out).
        assert "error" in probe(s, "system_dns('api.good.test')")
    finally:
        s.kill()
    # Deny a few, allow the rest (no allow_out).
    s = make(egress_server, network={"deny_out": ["203.0.113.10", "*.evil.test", "evil.test"]})
    try:
        assert probe(s, f"banner('{CDN}')") == {"banner": f"banner {CDN}"}
        assert "error" in probe(s, f"banner('{GOOD}')")
        assert "error" in probe(s, "system_dns('evil.test')")
        assert probe(s, "system_dns('cdn.good.test')") == {"ips": [CDN]}
    finally:
        s.kill()


def test_a_live_policy_change_applies_to_new_connections_and_replaces_the_rules(egress_server):
    s = make(egress_server)
    try:
        assert probe(s, f"banner('{EVIL}')") == {"banner": f"banner {EVIL}"}, "an open sandbox reaches anything public"
        s.update_network({"allow_out": ["api.good.test"], "deny_out": ["0.0.0.0/0"]})
        assert "error" in probe(s, f"banner('{EVIL}')")
        r = probe(s, f"http('{GOOD}', 80, 'api.good.test')")
        assert r["status"] == 200, r
        info = Sandbox.get_info(s.sandbox_id, api_key=egress_server.api_key, api_url=egress_server.url)
        assert info.network is not None
        # An update replaces the rules: without any, the sandbox is open again.
        s.update_network({})
        assert probe(s, f"banner('{EVIL}')") == {"banner": f"banner {EVIL}"}
        s.update_network({"allow_internet_access": False})
        assert "error" in probe(s, f"banner('{GOOD}')"), "allow_internet_access=false on a running sandbox takes its internet away"
    finally:
        s.kill()


def test_bad_policies_are_refused_and_a_restart_keeps_policies(egress_server):
    for bad, why in ((["999.1.2.3/40"], "not an IPv4 address"), (["::1"], "IPv6"), (["exa mple.test"], "not an IPv4 address")):
        with pytest.raises(SandboxException, match=why):
            make(egress_server, network={"allow_out": bad, "deny_out": ["0.0.0.0/0"]})
    s = make(egress_server, network={"allow_out": ["api.good.test"], "deny_out": ["0.0.0.0/0"]})
    try:
        assert "error" in probe(s, f"banner('{EVIL}')")
        egress_server.restart(kill=True)
        # Outlived the server, still policed by the new one.
        assert "error" in probe(s, f"banner('{EVIL}')")
        r = probe(s, f"http('{GOOD}', 80, 'api.good.test')")
        assert r["status"] == 200, r
    finally:
        s.kill()


def test_moru_network_option(egress_server, monkeypatch):
    moru = pytest.importorskip("moru")
    monkeypatch.setenv("MORU_API_URL", egress_server.url)
    monkeypatch.setenv("MORU_SANDBOX_URL", egress_server.url)
    monkeypatch.setenv("MORU_API_KEY", egress_server.api_key)
    s = moru.Sandbox.create(timeout=120, network={"allow_out": ["api.good.test"], "deny_out": ["0.0.0.0/0"]})
    try:
        s.files.write("/tmp/probe.py", PROBE)
        out = s.commands.run(f"python3 /tmp/probe.py {json.dumps(f'banner({EVIL!r})')}").stdout
        assert "error" in json.loads(out)
        out = s.commands.run(f"python3 /tmp/probe.py {json.dumps(f'banner({GOOD!r})')}").stdout
        assert "error" in json.loads(out), "with no name and no query, the allowed name's address is not known yet"
        out = s.commands.run(f"python3 /tmp/probe.py {json.dumps('system_dns(' + repr('api.good.test') + ')')}").stdout
        assert json.loads(out) == {"ips": [GOOD]}
        out = s.commands.run(f"python3 /tmp/probe.py {json.dumps(f'banner({GOOD!r})')}").stdout
        assert json.loads(out) == {"banner": f"banner {GOOD}"}
    finally:
        s.kill()


def test_a_secret_is_injected_into_requests_to_its_host_and_never_seen_inside(egress_server):
    from e2b import Secret

    opts = dict(api_key=egress_server.api_key, api_url=egress_server.url)
    value = "sk-test-" + __import__("secrets").token_hex(16)
    Secret.create("upstream-key", value, **opts)
    rules = {"api.good.test": [{"transform": {"headers": {"Authorization": "Bearer " + Secret.fill("upstream-key")}}}]}
    s = make(egress_server, network={"allow_out": ["api.good.test", "cdn.good.test"], "deny_out": ["0.0.0.0/0"], "rules": rules})
    try:
        # HTTPS, verified by the sandbox's default trust store (which trusts the server's CA)...
        r = probe(s, f"http('{GOOD}', 443, 'api.good.test', '/tls', tls=True, ca='/etc/ssl/certs/ca-certificates.crt', headers={{'Authorization': 'Bearer sandbox-guess'}})")
        assert r["status"] == 200, r
        assert r["body"]["headers"]["authorization"] == f"Bearer {value}", "the rule's header replaces the sandbox's own"
        # ...and plain HTTP.
        r = probe(s, f"http('{GOOD}', 80, 'api.good.test', '/plain')")
        assert r["body"]["headers"]["authorization"] == f"Bearer {value}", r
        # Another host gets nothing.
        r = probe(s, "system_dns('cdn.good.test')")
        r = probe(s, f"http('{CDN}', 80, 'cdn.good.test')")
        assert r["status"] == 200 and "authorization" not in r["body"]["headers"], r
        r = probe(s, f"http('{CDN}', 443, 'cdn.good.test', tls=True)")
        assert r["status"] == 200 and "authorization" not in r["body"]["headers"], r
        # The value is nowhere inside: environment, files, any process's memory maps or command line.
        # (The search is given the value reversed, so its own command line does not hold it.)
        s.files.write("/tmp/find.py", FIND)
        look = s.commands.run(f"python3 /tmp/find.py {value[::-1]}", user="root", timeout=60)
        assert look.stdout.startswith("searched ") and "FOUND" not in look.stdout, look.stdout
        # Nor in what the API returns about the sandbox or the secret.
        info = Sandbox.get_info(s.sandbox_id, **opts)
        assert value not in repr(info)
        assert value not in repr(Secret.get_info("upstream-key", **opts))
        assert value not in egress_server.log_path.read_text(errors="replace")
    finally:
        s.kill()
        Secret.destroy("upstream-key", **opts)


def test_sandbox_networks_connect_members_by_name_and_nobody_else(egress_server):
    import httpx

    api = lambda method, path, **kw: httpx.request(method, egress_server.url + path, headers={"X-API-KEY": egress_server.api_key}, timeout=30, **kw)
    web = make(egress_server)
    backend = make(egress_server, network={"deny_out": ["0.0.0.0/0"], "allow_out": ["api.good.test"]})
    outsider = make(egress_server)
    try:
        assert api("POST", "/networks", json={"name": "app"}).status_code == 201
        assert api("POST", "/networks", json={"name": "app"}).status_code == 409
        r = api("POST", "/networks/app/members", json={"sandboxID": web.sandbox_id, "name": "web"})
        assert r.status_code == 200, r.text
        r = api("POST", "/networks/app/members", json={"sandboxID": backend.sandbox_id, "name": "backend"})
        assert r.status_code == 200 and {m["name"] for m in r.json()["members"]} == {"web", "backend"}, r.text
        assert api("POST", "/networks/app/members", json={"sandboxID": outsider.sandbox_id, "name": "web"}).status_code == 409, "names are unique on a network"
        assert api("POST", "/networks/Bad_Name/members", json={"sandboxID": outsider.sandbox_id}).status_code == 400
        backend.commands.run("cd /tmp && echo backend-here > index.html && python3 -m http.server 8080 >/dev/null 2>&1", background=True)
        get = "import sys,urllib.request\ntry:\n    print(urllib.request.urlopen(sys.argv[1], timeout=4).read().decode().strip())\nexcept Exception as e:\n    print('ERR', type(e).__name__)\n"
        for s in (web, backend, outsider):
            s.files.write("/tmp/get.py", get)
        wait = "for i in $(seq 50); do python3 /tmp/get.py http://127.0.0.1:8080/ | grep -q backend-here && break; sleep 0.1; done"
        backend.commands.run(wait, timeout=30)
        # Members by name, either form, on any port; the policed member too.
        for url in ("http://backend:8080/", "http://backend.app:8080/"):
            assert web.commands.run(f"python3 /tmp/get.py {url}").stdout.strip() == "backend-here", url
        web.commands.run("cd /tmp && echo web-here > index.html && python3 -m http.server 9090 >/dev/null 2>&1", background=True)
        web.commands.run(wait.replace("8080", "9090").replace("backend-here", "web-here"), timeout=30)
        assert backend.commands.run("python3 /tmp/get.py http://web.app:9090/").stdout.strip() == "web-here", "a policed member reaches its fellow members"
        # The policed member's own policy still holds for everything else.
        assert "error" in probe(backend, f"banner('{EVIL}')")
        # Nobody outside the network: not by name, not by address.
        backend_ip = next(m["ip"] for m in api("GET", "/networks/app").json()["members"] if m["name"] == "backend")
        assert outsider.commands.run("python3 /tmp/get.py http://backend.app:8080/").stdout.startswith("ERR")
        assert outsider.commands.run(f"python3 /tmp/get.py http://{backend_ip}:8080/").stdout.startswith("ERR")
        # Broadcast: one command in each member, each with its own result.
        r = api("POST", "/sandboxes/broadcast", json={"network": "app", "cmd": "echo hi-$(id -un)"})
        assert r.status_code == 200, r.text
        res = {x["sandboxID"]: x for x in r.json()["results"]}
        assert set(res) == {web.sandbox_id, backend.sandbox_id}, res
        assert all(x["exitCode"] == 0 and x["stdout"] == "hi-user\n" for x in res.values()), res
        r = api("POST", "/sandboxes/broadcast", json={"network": "app", "cmd": "exit 3"})
        assert all(x["exitCode"] == 3 for x in r.json()["results"])
        assert api("POST", "/sandboxes/broadcast", json={"cmd": "true"}).status_code == 400, "a broadcast names its sandboxes"
        # A network with members stays; leaving and killing empty it.
        assert api("DELETE", "/networks/app").status_code == 409
        assert api("DELETE", f"/networks/app/members/{web.sandbox_id}").status_code == 204
        assert backend.commands.run("python3 /tmp/get.py http://web.app:9090/").stdout.startswith("ERR"), "a member that left is unreachable"
        backend.kill()
        assert api("GET", "/networks/app").json()["members"] == []
        assert api("DELETE", "/networks/app").status_code == 204
        assert api("GET", "/networks/app").status_code == 404
    finally:
        for s in (web, backend, outsider):
            try:
                s.kill()
            except Exception:
                pass
