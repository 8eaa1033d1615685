"""A cluster on one machine: three etcd members and three `airlock serve`
nodes, each in its own network namespace with its own address on a bridge
the test makes (a documentation range, 198.51.100.128/25, that this host
is not on).

    bridge clbr0 (host side)    198.51.100.129   where the tests talk from
    etcd members e1..e3         198.51.100.141-143  client :2379, peer :2380
    airlock nodes n1..n3        198.51.100.151-153  :3000

Everything is started here and torn down by `close()`; nothing is reached
outside these namespaces.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

# Not `alk...`: the host firewall treats interfaces named so as sandboxes' (it drops
# what they send to the host).
BRIDGE = "clbr0"
HOST_IP = "198.51.100.129"
PREFIX = 25
ETCD = {f"e{i}": f"198.51.100.{140 + i}" for i in (1, 2, 3)}
NODES = {f"n{i}": f"198.51.100.{150 + i}" for i in (1, 2, 3)}
PORT = 3000


def _sh(cmd: str) -> None:
    r = subprocess.run(["sh", "-c", cmd], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{cmd}: {r.stderr.strip()}")


def range_clash() -> str | None:
    """The host's own addresses must not be in the test's range."""
    out = subprocess.run(["ip", "-4", "addr"], capture_output=True, text=True).stdout
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("inet 198.51.100.") and BRIDGE not in line:
            host = int(line.split()[1].split("/")[0].rsplit(".", 1)[1])
            if host >= 128:
                return line
    return None


def _terminate(p: subprocess.Popen | None, grace: float) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds."""
    if p and p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=10)


def _wait_http(url: str, timeout: float, ok=lambda status: status == 200) -> None:
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if ok(r.status):
                    return
                last = r.status
        except urllib.error.HTTPError as e:
            if ok(e.code):
                return
            last = e
        except (urllib.error.URLError, OSError) as e:
            last = e
        time.sleep(0.2)
    raise RuntimeError(f"{url} not ready after {timeout}s: {last}")


class Cluster:
    def __init__(self, airlock_bin: Path, lease_s: int = 4) -> None:
        self.bin = airlock_bin
        self.lease_s = lease_s
        self.tag = secrets.token_hex(3)
        self.dir = Path(tempfile.mkdtemp(prefix="airlock-cluster-"))
        self.api_key = "e2b_" + secrets.token_hex(20)
        self.secret_file = self.dir / "cluster-secret"
        self.secret_file.write_text(secrets.token_urlsafe(40) + "\n")
        os.chmod(self.secret_file, 0o600)
        self.etcd_procs: dict[str, subprocess.Popen] = {}
        self.node_procs: dict[str, subprocess.Popen] = {}
        self.netns: list[str] = []

    # ------------------------------------------------------------ network

    def ns(self, name: str) -> str:
        return f"alk{self.tag}{name}"

    def _attach(self, name: str, ip: str) -> None:
        ns = self.ns(name)
        host_if, peer_if = f"ah{self.tag}{name}", f"ap{self.tag}{name}"
        _sh(f"ip netns add {ns}")
        self.netns.append(ns)
        _sh(f"ip link add {host_if} type veth peer name {peer_if}")
        _sh(f"ip link set {peer_if} netns {ns}")
        _sh(f"ip link set {host_if} master {BRIDGE} up")
        _sh(f"ip -n {ns} link set lo up")
        _sh(f"ip -n {ns} addr add {ip}/{PREFIX} dev {peer_if}")
        _sh(f"ip -n {ns} link set {peer_if} up")

    def _enter(self, name: str) -> list[str]:
        # nsenter, not `ip netns exec`: that one mounts a fresh /sys, which
        # hides the host's cgroup hierarchies from the server.
        return ["nsenter", f"--net=/run/netns/{self.ns(name)}", "--"]

    def up(self) -> None:
        clash = range_clash()
        if clash:
            raise RuntimeError(f"this host is on the test's range already: {clash}")
        _sh(f"ip link add {BRIDGE} type bridge")
        _sh(f"ip addr add {HOST_IP}/{PREFIX} dev {BRIDGE}")
        _sh(f"ip link set {BRIDGE} up")
        # A bridge's frames must not go through the host's iptables (the
        # Docker-style br_netfilter setting would drop them).
        _sh(f"sysctl -qw net.bridge.bridge-nf-call-iptables=0 2>/dev/null || true")
        for name, ip in {**ETCD, **NODES}.items():
            self._attach(name, ip)
        for name in ETCD:
            self.start_etcd(name)
        for name in ETCD:
            _wait_http(f"http://{ETCD[name]}:2379/health", 30)
        for name in NODES:
            self.start_node(name)
        for name in NODES:
            self.wait_node(name)

    # ---------------------------------------------------------------- etcd

    def start_etcd(self, name: str) -> None:
        ip = ETCD[name]
        initial = ",".join(f"{n}=http://{a}:2380" for n, a in ETCD.items())
        data = self.dir / f"etcd-{name}"
        state = "existing" if data.exists() else "new"
        log = open(self.dir / f"etcd-{name}.log", "ab")
        self.etcd_procs[name] = subprocess.Popen(
            [
                *self._enter(name), shutil.which("etcd") or "etcd",
                "--name", name,
                "--data-dir", str(data),
                "--listen-client-urls", f"http://{ip}:2379",
                "--advertise-client-urls", f"http://{ip}:2379",
                "--listen-peer-urls", f"http://{ip}:2380",
                "--initial-advertise-peer-urls", f"http://{ip}:2380",
                "--initial-cluster", initial,
                "--initial-cluster-state", state,
                "--initial-cluster-token", f"airlock-test-{self.tag}",
                "--heartbeat-interval", "100",
                "--election-timeout", "1000",
            ],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
        )
        log.close()

    def stop_etcd(self, name: str) -> None:
        _terminate(self.etcd_procs.pop(name, None), 10)

    def etcd_endpoints(self) -> str:
        return "etcd://" + ",".join(f"{a}:2379" for a in ETCD.values())

    # --------------------------------------------------------------- nodes

    def url(self, name: str) -> str:
        return f"http://{NODES[name]}:{PORT}"

    def start_node(self, name: str) -> None:
        ip = NODES[name]
        data = self.dir / f"data-{name}"
        data.mkdir(exist_ok=True)
        log = open(self.dir / f"{name}.log", "ab")
        self.node_procs[name] = subprocess.Popen(
            [
                *self._enter(name), str(self.bin), "serve",
                "--listen", f"{ip}:{PORT}",
                "--data-dir", str(data),
                "--api-key", self.api_key,
                "--cluster", self.etcd_endpoints(),
                "--advertise", self.url(name),
                "--node-name", name,
                "--cluster-secret-file", str(self.secret_file),
                "--cluster-lease", str(self.lease_s),
            ],
            stdin=subprocess.DEVNULL,
            env={k: v for k, v in os.environ.items() if not k.startswith("AIRLOCK_")},
            stdout=log, stderr=log, start_new_session=True,
        )
        log.close()

    def wait_node(self, name: str, timeout: float = 60) -> None:
        _wait_http(self.url(name) + "/health", timeout)

    def kill_node(self, name: str) -> None:
        """SIGKILL, as a crash: its sandboxes keep running, unreachable."""
        p = self.node_procs.pop(name, None)
        if p and p.poll() is None:
            p.kill()
            p.wait(timeout=10)

    def stop_node(self, name: str) -> None:
        _terminate(self.node_procs.pop(name, None), 15)

    def log(self, name: str, lines: int = 40) -> str:
        try:
            return "\n".join((self.dir / f"{name}.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "<no log>"

    # ------------------------------------------------------------ teardown

    def close(self) -> None:
        # Each node's sandboxes go before the node (they outlive it otherwise).
        for name in list(NODES):
            if name not in self.node_procs:
                try:
                    self.start_node(name)
                    self.wait_node(name, 30)
                except Exception:
                    pass
        for name in list(ETCD):
            if name not in self.etcd_procs:
                try:
                    self.start_etcd(name)
                except Exception:
                    pass
        import httpx

        for name in list(self.node_procs):
            try:
                h = {"X-API-KEY": self.api_key, "x-airlock-scope": "local"}
                r = httpx.get(self.url(name) + "/v2/sandboxes?state=running,paused&limit=100", headers=h, timeout=30)
                for s in r.json() if r.status_code == 200 else []:
                    httpx.delete(f"{self.url(name)}/sandboxes/{s['sandboxID']}", headers=h, timeout=30)
            except Exception:
                pass
        for name in list(self.node_procs):
            self.stop_node(name)
        for name in list(self.etcd_procs):
            self.stop_etcd(name)
        for ns in self.netns:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True)
        if os.environ.get("AIRLOCK_COMPAT_KEEP_LOG") != "1":
            subprocess.run(["sh", "-c", f"grep -qs ' {self.dir}' /proc/self/mounts || rm -rf '{self.dir}'"])
