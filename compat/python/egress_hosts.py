"""A stand-in internet for the egress tests, built entirely on this host.

`Internet()` creates a network namespace behind a veth pair and routes two
documentation ranges to it through that namespace (so they are routed
destinations, not networks the host is attached to):

    203.0.113.10   api.good.test   HTTP :80, HTTPS :443, TCP banner :7000
    203.0.113.11   cdn.good.test   (same servers)
    198.51.100.20  evil.test       (same servers)
    203.0.113.53   a DNS server (UDP/TCP :53) for *.test, and a DNS-over-HTTPS
                   endpoint at https://203.0.113.53/dns-query

Every server answers with what it saw: the address it was reached on, the
SNI, the Host and the request headers, so a test can tell where traffic
went and what it carried. Nothing here talks to a real internet address.

Run as a script inside the namespace, it is the servers themselves.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

NAMES = {
    "api.good.test": "203.0.113.10",
    "cdn.good.test": "203.0.113.11",
    "evil.test": "198.51.100.20",
    "dns.good.test": "203.0.113.53",
}
ADDRS = sorted(set(NAMES.values()))
DNS_IP = "203.0.113.53"
TRANSIT_HOST = "198.51.100.249"
TRANSIT_PEER = "198.51.100.250"


def _sh(cmd: str) -> None:
    r = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{cmd}: {r.stderr.strip()}")


def _host_ranges_clash() -> str | None:
    out = subprocess.run(["ip", "-4", "addr"], capture_output=True, text=True).stdout
    for r in ("203.0.113.", "198.51.100."):
        if f"inet {r}" in out:
            return r
    return None


class Internet:
    """The namespace, its routes and its servers; `close()` removes them."""

    def __init__(self) -> None:
        clash = _host_ranges_clash()
        if clash:
            raise RuntimeError(f"this host already has an address in {clash}0/24; the egress tests need that range for their own test hosts")
        tag = uuid.uuid4().hex[:6]
        self.ns = f"airlock-inet-{tag}"
        self.host_if = f"altinet{tag}"
        self.dir = Path(tempfile.mkdtemp(prefix="airlock-inet-"))
        self._make_certs()
        _sh(
            f"ip netns add {self.ns} && ip link add {self.host_if} type veth peer name eth0 netns {self.ns} && "
            f"ip addr add {TRANSIT_HOST}/30 dev {self.host_if} && ip link set {self.host_if} up && "
            f"ip netns exec {self.ns} ip addr add {TRANSIT_PEER}/30 dev eth0 && "
            f"ip netns exec {self.ns} ip link set eth0 up && ip netns exec {self.ns} ip link set lo up && "
            + " && ".join(f"ip netns exec {self.ns} ip addr add {a}/32 dev lo" for a in ADDRS)
            + f" && ip netns exec {self.ns} ip route add default via {TRANSIT_HOST}"
            f" && ip route add 203.0.113.0/24 via {TRANSIT_PEER} && ip route add 198.51.100.0/25 via {TRANSIT_PEER}"
        )
        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", self.ns, sys.executable, "-u", __file__, str(self.dir)],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        line = self.proc.stdout.readline()
        if line.strip() != "ready":
            self.close()
            raise RuntimeError(f"test internet did not start: {line}{self.proc.stdout.read()}")

    def _make_certs(self) -> None:
        d = self.dir
        sans = ",".join(f"DNS:{n}" for n in NAMES) + "," + ",".join(f"IP:{a}" for a in ADDRS)
        _sh(
            f"cd {d} && openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 "
            f"-subj /CN=airlock-test-internet-ca -keyout ca.key -out ca.pem 2>/dev/null && "
            f"openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=api.good.test "
            f"-keyout srv.key -out srv.csr 2>/dev/null && "
            f"printf 'subjectAltName={sans}\\n' > ext.cnf && "
            f"openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile ext.cnf -out srv.pem 2>/dev/null"
        )

    @property
    def ca_pem(self) -> Path:
        return self.dir / "ca.pem"

    def close(self) -> None:
        if getattr(self, "proc", None) and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        subprocess.run(["sh", "-c", f"ip route del 203.0.113.0/24 via {TRANSIT_PEER}; ip route del 198.51.100.0/25 via {TRANSIT_PEER}; "
                        f"ip link del {self.host_if}; ip netns del {self.ns}"], capture_output=True)
        shutil.rmtree(self.dir, ignore_errors=True)


# --------------------------------------------------------------- the servers


def _dns_answer(query: bytes) -> bytes:
    """An answer from NAMES (A records, TTL 60) or NXDOMAIN."""
    qid, flags = query[:2], query[2:4]
    at, labels = 12, []
    while query[at]:
        n = query[at]
        labels.append(query[at + 1: at + 1 + n].decode().lower())
        at += 1 + n
    qend = at + 5
    qtype = int.from_bytes(query[at + 1: at + 3], "big")
    name = ".".join(labels)
    ip = NAMES.get(name)
    rd = flags[0] & 0x01
    if ip is None:
        return qid + bytes([0x80 | rd, 0x83]) + b"\x00\x01\x00\x00\x00\x00\x00\x00" + query[12:qend]
    if qtype != 1:
        return qid + bytes([0x80 | rd, 0x80]) + b"\x00\x01\x00\x00\x00\x00\x00\x00" + query[12:qend]
    rr = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04" + socket.inet_aton(ip)
    return qid + bytes([0x80 | rd, 0x80]) + b"\x00\x01\x00\x01\x00\x00\x00\x00" + query[12:qend] + rr


def _serve_dns_udp() -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((DNS_IP, 53))
    while True:
        q, peer = s.recvfrom(4096)
        try:
            s.sendto(_dns_answer(q), peer)
        except Exception:
            pass


def _serve_dns_tcp() -> None:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((DNS_IP, 53))
    s.listen(64)
    while True:
        c, _ = s.accept()
        try:
            n = int.from_bytes(c.recv(2), "big")
            q = b""
            while len(q) < n:
                q += c.recv(n - len(q))
            a = _dns_answer(q)
            c.sendall(len(a).to_bytes(2, "big") + a)
        except Exception:
            pass
        c.close()


def _read_head(c) -> tuple[bytes, bytes]:
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = c.recv(65536)
        if not d:
            break
        buf += d
    head, _, rest = buf.partition(b"\r\n\r\n")
    return head, rest


def _http_reply(c, local: str, sni: str | None) -> None:
    """Answers requests on `c` until it closes: JSON of what was seen."""
    while True:
        head, rest = _read_head(c)
        if not head:
            return
        lines = head.decode("latin-1").split("\r\n")
        method, path = lines[0].split(" ")[:2]
        headers = {}
        for l in lines[1:]:
            k, _, v = l.partition(":")
            headers[k.strip().lower()] = v.strip()
        n = int(headers.get("content-length", "0") or 0)
        body = rest
        while len(body) < n:
            body += c.recv(65536)
        if path.startswith("/dns-query"):
            import base64, urllib.parse
            q = urllib.parse.parse_qs(urllib.parse.urlparse(path).query).get("dns", [""])[0]
            a = _dns_answer(base64.urlsafe_b64decode(q + "=" * (-len(q) % 4)))
            c.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/dns-message\r\ncontent-length: %d\r\n\r\n" % len(a) + a)
            if headers.get("connection", "").lower() == "close":
                return
            continue
        if path.startswith("/bytes/"):
            size = int(path.split("/")[2])
            c.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: %d\r\n\r\n" % size)
            chunk = b"x" * 65536
            left = size
            while left > 0:
                c.sendall(chunk[: min(left, len(chunk))])
                left -= min(left, len(chunk))
            continue
        out = json.dumps({"local": local, "sni": sni, "method": method, "path": path, "headers": headers, "body_len": len(body)}).encode()
        c.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(out) + out)
        if headers.get("connection", "").lower() == "close":
            return


def _serve_http(port: int, ctx: ssl.SSLContext | None) -> None:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(256)

    def one(c):
        try:
            local = c.getsockname()[0]
            sni = None
            if ctx is not None:
                c = ctx.wrap_socket(c, server_side=True)
                sni = getattr(c, "airlock_sni", None)
            _http_reply(c, local, sni)
        except Exception:
            pass
        finally:
            try:
                c.close()
            except Exception:
                pass

    while True:
        c, _ = s.accept()
        threading.Thread(target=one, args=(c,), daemon=True).start()


def _serve_banner(port: int) -> None:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(64)
    while True:
        c, _ = s.accept()
        try:
            c.sendall(f"banner {c.getsockname()[0]}\n".encode())
        except Exception:
            pass
        c.close()


def _main(cert_dir: str) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(os.path.join(cert_dir, "srv.pem"), os.path.join(cert_dir, "srv.key"))

    def on_sni(sock, name, _ctx):
        sock.airlock_sni = name

    ctx.sni_callback = on_sni
    for target, args in ((_serve_dns_udp, ()), (_serve_dns_tcp, ()), (_serve_http, (80, None)), (_serve_http, (443, ctx)), (_serve_banner, (7000,))):
        threading.Thread(target=target, args=args, daemon=True).start()
    time.sleep(0.3)
    print("ready", flush=True)
    while True:
        time.sleep(3600)


if __name__ == "__main__":
    _main(sys.argv[1])
