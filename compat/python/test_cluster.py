"""An Airlock cluster on one machine, through the official `e2b` SDK.

Three etcd members (Debian's etcd-server) and three `airlock serve --cluster`
nodes, each in its own network namespace with its own address
(`cluster_hosts.py`). The tests run in order and share the cluster:

1. 30 sandboxes created through node 1 spread over the three nodes;
2. every sandbox answers through every node: commands, files, a PTY, a
   port;
3. a listing through any node shows them all; a template built on one
   node, or a snapshot taken there, runs its sandboxes there, and a node
   without it fetches its layers (checked against their digests) when the
   ones with it take no more; a key made
   on one node works on all (and a revoked one stops); `airlock node list`;
4. killing node 2's process marks its sandboxes lost within the lease
   (ended, once the deadline the catalog holds for one has passed), and
   new creates still succeed (elsewhere);
5. stopping one etcd member changes nothing visible;
6. losing etcd's quorum keeps existing sandboxes usable, and cluster-wide
   calls fail with a clear error; they recover when etcd does;
7. node 2 restarted rejoins and serves its sandboxes again.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from e2b import PtySize, Sandbox

from cluster_hosts import ETCD, NODES, Cluster

REPO = Path(__file__).resolve().parents[2]
LEASE_S = 4

pytestmark = pytest.mark.timeout_s(240)


@pytest.fixture(scope="module")
def cluster():
    if shutil.which("etcd") is None:
        pytest.fail("etcd is not installed (apt install etcd-server); .ci/run installs it", pytrace=False)
    c = Cluster(Path(os.environ.get("AIRLOCK_BIN", REPO / "target" / "debug" / "airlock")), lease_s=LEASE_S)
    try:
        c.up()
    except Exception as e:
        logs = "\n".join(f"--- {n}\n{c.log(n)}" for n in NODES)
        c.close()
        pytest.fail(f"the cluster did not come up: {e}\n{logs}", pytrace=False)
    c.sandboxes = {}  # id -> node that holds it
    yield c
    c.close()


def sdk(c: Cluster, node: str) -> dict:
    return {"api_key": c.api_key, "api_url": c.url(node), "sandbox_url": c.url(node)}


def api(c: Cluster, node: str, method: str, path: str, timeout: float = 30, **kw) -> httpx.Response:
    return httpx.request(method, c.url(node) + path, headers={"X-API-KEY": c.api_key}, timeout=timeout, **kw)


def holder(c: Cluster, node: str, sid: str) -> str:
    r = api(c, node, "GET", f"/sandboxes/{sid}")
    assert r.status_code == 200, r.text
    return r.json()["clientID"]


def catalog(c: Cluster, sid: str) -> dict | None:
    """The sandbox's catalog entry, read from etcd's JSON gateway."""
    key = base64.b64encode(f"/airlock/v1/sandboxes/{sid}".encode()).decode()
    for ip in ETCD.values():
        try:
            kvs = httpx.post(f"http://{ip}:2379/v3/kv/range", json={"key": key}, timeout=5).json().get("kvs")
        except httpx.HTTPError:
            continue
        return json.loads(base64.b64decode(kvs[0]["value"])) if kvs else None
    raise AssertionError("no etcd member answered")


def wait_until(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            v = pred()
            if v:
                return v
        except Exception as e:  # noqa: BLE001
            last = e
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last error: {last})")


def test_creates_through_one_node_spread_over_the_nodes(cluster: Cluster):
    nodes = api(cluster, "n1", "GET", "/nodes").json()
    assert sorted(n["name"] for n in nodes) == ["n1", "n2", "n3"]
    assert [n["name"] for n in nodes if n["self"]] == ["n1"]
    for _ in range(30):
        s = Sandbox.create(timeout=600, **sdk(cluster, "n1"))
        cluster.sandboxes[s.sandbox_id] = None
    for sid in cluster.sandboxes:
        cluster.sandboxes[sid] = holder(cluster, "n1", sid)
    per_node = {n: sum(1 for h in cluster.sandboxes.values() if h == n) for n in NODES}
    assert all(per_node[n] > 0 for n in NODES), f"30 creates did not spread: {per_node}"
    # Not all on one node, and not far from even on equal nodes.
    assert max(per_node.values()) <= 20, per_node


def test_every_sandbox_answers_through_every_node(cluster: Cluster):
    for sid, home in cluster.sandboxes.items():
        for node in NODES:
            sbx = Sandbox.connect(sid, **sdk(cluster, node))
            r = sbx.commands.run(f"echo {sid} via {node}")
            assert r.stdout == f"{sid} via {node}\n"
    # Files written through one node are read through another; one of
    # them large enough to stream.
    for i, (sid, home) in enumerate(list(cluster.sandboxes.items())[:6]):
        writer, reader = list(NODES)[i % 3], list(NODES)[(i + 1) % 3]
        data = os.urandom(3 << 20) if i == 0 else f"from {writer}".encode()
        Sandbox.connect(sid, **sdk(cluster, writer)).files.write("/tmp/f.bin", data)
        got = Sandbox.connect(sid, **sdk(cluster, reader)).files.read("/tmp/f.bin", format="bytes")
        assert bytes(got) == data, f"{sid} on {home}: written via {writer}, read via {reader}"
    # Signed file URLs (no headers name the sandbox) through another node.
    sid = next(s for s, h in cluster.sandboxes.items() if h == "n2")
    sb = Sandbox.connect(sid, **sdk(cluster, "n1"))
    sb.files.write("/tmp/signed.txt", "signed content")
    url = sb.download_url("/tmp/signed.txt")
    assert url.startswith(cluster.url("n1")) and "signature=" in url, url
    r = httpx.get(url, timeout=30)
    assert r.status_code == 200 and r.text == "signed content", (r.status_code, r.text[:200])
    r = httpx.post(sb.upload_url("/tmp/up.txt"), files={"file": ("up.txt", b"uploaded by url")}, timeout=30)
    assert r.status_code == 200, (r.status_code, r.text[:200])
    assert sb.files.read("/tmp/up.txt") == "uploaded by url"
    bad = httpx.get(url.replace("signature=", "signature=x"), timeout=30)
    assert bad.status_code == 401, bad.status_code
    # A PTY on a sandbox of another node (WebSocket-less: envd streams).
    sid = next(s for s, h in cluster.sandboxes.items() if h != "n1")
    sbx = Sandbox.connect(sid, **sdk(cluster, "n1"))
    out = bytearray()
    lock = threading.Lock()

    def on_data(b: bytes):
        with lock:
            out.extend(b)

    handle = sbx.pty.create(PtySize(rows=24, cols=80))
    t = threading.Thread(target=lambda: handle.wait(on_pty=on_data), daemon=True)
    t.start()
    sbx.pty.send_stdin(handle.pid, b"echo pty-$((40+2))\n")
    wait_until(lambda: b"pty-42" in bytes(out), 15, "the PTY's output through another node")
    sbx.pty.send_stdin(handle.pid, b"exit 0\n")
    t.join(15)
    # A port of a sandbox on another node, tunnelled through this one.
    sid = next(s for s, h in cluster.sandboxes.items() if h == "n2")
    Sandbox.connect(sid, **sdk(cluster, "n2")).commands.run(
        "mkdir -p /tmp/www && echo served-by-the-sandbox > /tmp/www/index.html && cd /tmp/www && python3 -m http.server 8080",
        background=True,
    )

    def fetched():
        r = httpx.get(cluster.url("n3") + "/", headers={"E2b-Sandbox-Id": sid, "E2b-Sandbox-Port": "8080"}, timeout=10)
        return r.status_code == 200 and r.text == "served-by-the-sandbox\n"

    wait_until(fetched, 20, "the sandbox's port through another node")


def test_a_template_built_on_one_node_runs_there(cluster: Cluster):
    r = api(cluster, "n1", "POST", "/templates", json={"name": "cluster-t", "recipe": "FROM base\nRUN echo built-on-n1 > /opt/marker\n"}, timeout=120)
    assert r.status_code == 200, r.text
    assert '"done"' in r.text.splitlines()[-1], r.text[-500:]
    wait_until(
        lambda: "cluster-t" in next(n for n in api(cluster, "n3", "GET", "/nodes").json() if n["name"] == "n1")["templates"],
        15,
        "node 1 to say it has the template",
    )
    for _ in range(3):
        s = Sandbox.create(template="cluster-t", timeout=600, **sdk(cluster, "n3"))
        assert holder(cluster, "n3", s.sandbox_id) == "n1", "placed on a node without the template"
        assert s.commands.run("cat /opt/marker").stdout == "built-on-n1\n"
        cluster.sandboxes[s.sandbox_id] = "n1"
    # A snapshot is a template too: sandboxes from it go where it is.
    src = next(s for s, h in cluster.sandboxes.items() if h == "n2")
    Sandbox.connect(src, **sdk(cluster, "n1")).files.write("/home/user/kept.txt", "from the snapshot")
    r = api(cluster, "n1", "POST", f"/sandboxes/{src}/snapshots", json={}, timeout=120)
    assert r.status_code == 201, r.text
    snap = r.json()["snapshotID"]
    wait_until(
        # Listed by template name (the id without E2B's `:default` tag).
        lambda: snap.removesuffix(":default") in next(n for n in api(cluster, "n3", "GET", "/nodes").json() if n["name"] == "n2")["templates"],
        15,
        "node 2 to say it has the snapshot",
    )
    s = Sandbox.create(template=snap, timeout=600, **sdk(cluster, "n3"))
    assert holder(cluster, "n3", s.sandbox_id) == "n2", "placed away from its snapshot"
    assert s.files.read("/home/user/kept.txt") == "from the snapshot"
    cluster.sandboxes[s.sandbox_id] = "n2"


def test_a_template_moves_to_a_node_without_it_checked_against_its_digest(cluster: Cluster):
    """With node 1 drained, a template only node 1 built runs elsewhere: that
    node fetches its layers from node 1 and checks them against the digests
    in the cluster's manifest; a layer that does not match is refused."""
    wait_until(lambda: api(cluster, "n3", "GET", "/templates/cluster-t").status_code == 200, 15, "the template's manifest in the cluster")
    assert api(cluster, "n2", "POST", "/nodes/n1/drain").status_code == 204
    try:
        s = Sandbox.create(template="cluster-t", timeout=600, **sdk(cluster, "n3"))
        h = holder(cluster, "n3", s.sandbox_id)
        assert h in ("n2", "n3"), f"placed on the drained node {h}"
        assert s.commands.run("cat /opt/marker").stdout == "built-on-n1\n"
        cluster.sandboxes[s.sandbox_id] = h
        # The copy stays: that node now lists the template too.
        wait_until(lambda: "cluster-t" in next(n for n in api(cluster, "n1", "GET", "/nodes").json() if n["name"] == h)["templates"], 15, f"{h} to list its copy")

        # A layer that changed since it was published (here on the node
        # that sends it) does not match its digest and is not used.
        r = api(cluster, "n1", "POST", "/templates", json={"name": "cluster-bad", "recipe": "FROM base\nRUN echo original > /opt/bad\n"}, timeout=120)
        assert r.status_code == 200 and '"done"' in r.text.splitlines()[-1], r.text[-500:]
        wait_until(lambda: api(cluster, "n3", "GET", "/templates/cluster-bad").status_code == 200, 15, "the second template's manifest")
        # Listed through a node that does not have it (as a load balancer
        # in front of the nodes would need).
        assert "cluster-bad" in {t["templateID"] for t in api(cluster, "n2", "GET", "/templates").json()}
        layers = cluster.dir / "data-n1" / "templates" / "layers"
        tampered = [p for p in layers.glob("*/root/opt/bad") if p.read_text() == "original\n"]
        assert tampered, "the built layer is not where the test looks"
        for p in tampered:
            p.write_text("tampered\n")
        with pytest.raises(Exception) as e:
            Sandbox.create(template="cluster-bad", timeout=600, **sdk(cluster, "n3"))
        assert "does not match" in str(e.value), str(e.value)
        for n in ("n2", "n3"):
            left = list((cluster.dir / f"data-{n}" / "templates" / "layers").glob(".fetch-*"))
            assert not left, f"{n} kept parts of the refused layer: {left}"
            assert not (cluster.dir / f"data-{n}" / "templates" / "cluster-bad").exists(), f"{n} saved the template"

        # Deleted through a node that never had it, it is gone everywhere.
        r = api(cluster, "n2", "DELETE", "/templates/cluster-bad")
        assert r.status_code == 204, r.text
        assert api(cluster, "n3", "GET", "/templates/cluster-bad").status_code == 404
        wait_until(lambda: api(cluster, "n1", "GET", "/templates/cluster-bad").status_code == 404, 45, "node 1 to drop its copy")
    finally:
        assert api(cluster, "n2", "POST", "/nodes/n1/undrain").status_code == 204


def test_a_listing_through_any_node_shows_every_node_sandbox(cluster: Cluster):
    for node in NODES:
        listed = set()
        paginator = Sandbox.list(**{k: v for k, v in sdk(cluster, node).items() if k != "sandbox_url"})
        while paginator.has_next:
            listed |= {s.sandbox_id for s in paginator.next_items()}
        assert set(cluster.sandboxes) <= listed, f"through {node}: missing {set(cluster.sandboxes) - listed}"


def test_keys_made_on_one_node_work_on_every_node_and_the_cli_lists_nodes(cluster: Cluster):
    data = str(cluster.dir / "data-n1")
    out = subprocess.run([str(cluster.bin), "keys", "create", "--name", "cluster-test", "--data-dir", data], capture_output=True, text=True, check=True)
    key = out.stdout.strip()
    key_id = out.stderr.split("key id ")[1].split(";")[0].strip()

    def works(node: str) -> int:
        return httpx.get(cluster.url(node) + "/v2/sandboxes?limit=1", headers={"X-API-KEY": key}, timeout=30).status_code

    assert works("n1") == 200
    wait_until(lambda: works("n3") == 200 and works("n2") == 200, 15, "a key made on node 1 to work on nodes 2 and 3")
    subprocess.run([str(cluster.bin), "keys", "revoke", key_id, "--data-dir", data], capture_output=True, check=True)
    assert works("n1") == 401
    wait_until(lambda: works("n3") == 401, 30, "a key revoked on node 1 to stop working on node 3")
    # The CLI's view of the cluster, through any node.
    out = subprocess.run(
        [str(cluster.bin), "node", "list", "--url", cluster.url("n2"), "--api-key", cluster.api_key],
        capture_output=True, text=True, check=True,
    ).stdout
    assert "n2 *" in out and "n1" in out and "n3" in out and "ready" in out, out


def test_a_killed_node_loses_its_sandboxes_and_creates_go_elsewhere(cluster: Cluster):
    lost = [s for s, h in cluster.sandboxes.items() if h == "n2"]
    assert len(lost) >= 2, lost
    # One with a short timeout: the catalog holds its deadline, so once that
    # has passed the other nodes say it ended rather than that it is lost.
    short = lost.pop()
    del cluster.sandboxes[short]
    ends = LEASE_S + 6
    Sandbox.set_timeout(short, ends, api_key=cluster.api_key, api_url=cluster.url("n1"))
    wait_until(
        lambda: 0 < catalog(cluster, short)["endAt"] < time.time() * 1000 + ends * 1000 + 2000, 10, "the new deadline in the catalog"
    )
    cluster.kill_node("n2")
    t0 = time.monotonic()

    def reported_lost():
        r = api(cluster, "n1", "GET", f"/sandboxes/{lost[0]}")
        return r.status_code == 502 and "lost" in r.json()["message"]

    wait_until(reported_lost, LEASE_S + 6, "node 2's sandbox to be reported lost")
    assert time.monotonic() - t0 < LEASE_S + 6
    r = api(cluster, "n3", "GET", f"/sandboxes/{lost[-1]}").json()
    assert "n2" in r["message"], r
    # The SDK gets an error, not a hang.
    t1 = time.monotonic()
    with pytest.raises(Exception):
        Sandbox.connect(lost[0], **sdk(cluster, "n1")).commands.run("true")
    assert time.monotonic() - t1 < 20
    assert sorted(n["name"] for n in api(cluster, "n1", "GET", "/nodes").json()) == ["n1", "n3"]

    def ended():
        r = api(cluster, "n3", "GET", f"/sandboxes/{short}")
        return r.status_code == 404 and "timeout ended" in r.json()["message"]

    wait_until(ended, ends + 10, "the short-lived sandbox of node 2 to be reported ended")
    # Creates still succeed, on the nodes that are left.
    for _ in range(4):
        s = Sandbox.create(timeout=600, **sdk(cluster, "n1"))
        home = holder(cluster, "n1", s.sandbox_id)
        assert home in ("n1", "n3")
        assert s.commands.run("echo ok").stdout == "ok\n"
        cluster.sandboxes[s.sandbox_id] = home
    # The others' sandboxes are untouched.
    for sid, home in cluster.sandboxes.items():
        if home != "n2":
            assert Sandbox.connect(sid, **sdk(cluster, "n3")).commands.run("echo up").stdout == "up\n"
    # Past its deadline by a lease, the remaining nodes drop its entry.
    wait_until(lambda: catalog(cluster, short) is None, 45, "the ended sandbox's catalog entry to go")


def test_one_etcd_member_down_changes_nothing(cluster: Cluster):
    # The first member of every node's list: each fails over to the next.
    cluster.stop_etcd("e1")
    s = Sandbox.create(timeout=600, **sdk(cluster, "n3"))
    cluster.sandboxes[s.sandbox_id] = holder(cluster, "n3", s.sandbox_id)
    for node in ("n1", "n3"):
        assert Sandbox.connect(s.sandbox_id, **sdk(cluster, node)).commands.run("echo fine").stdout == "fine\n"
    assert sorted(n["name"] for n in api(cluster, "n1", "GET", "/nodes").json()) == ["n1", "n3"]
    health = api(cluster, "n1", "GET", "/health").json()
    assert health["checks"]["cluster"] is True, health


def test_without_etcd_quorum_existing_sandboxes_stay_usable(cluster: Cluster):
    cluster.stop_etcd("e2")  # one member of three left: no quorum
    mine = [s for s, h in cluster.sandboxes.items() if h == "n1"]
    assert mine
    for sid in mine:
        assert Sandbox.connect(sid, **sdk(cluster, "n1")).commands.run("echo still").stdout == "still\n"
    # What needs the cluster says why it cannot answer.
    r = api(cluster, "n1", "GET", "/nodes")
    assert r.status_code == 503 and "etcd" in r.json()["message"], r.text
    # A create is made where it was asked (reachable there) rather than refused.
    s = Sandbox.create(timeout=600, **sdk(cluster, "n1"))
    assert s.commands.run("echo made").stdout == "made\n"
    assert holder(cluster, "n1", s.sandbox_id) == "n1"
    cluster.sandboxes[s.sandbox_id] = "n1"
    # etcd comes back; the cluster recovers by itself, and the sandbox made
    # meanwhile is catalogued (reachable through another node).
    cluster.start_etcd("e1")
    cluster.start_etcd("e2")
    wait_until(lambda: api(cluster, "n1", "GET", "/nodes").status_code == 200, 60, "the cluster to answer again")
    wait_until(
        lambda: Sandbox.connect(s.sandbox_id, **sdk(cluster, "n3")).commands.run("echo back").stdout == "back\n",
        60,
        "the sandbox made without etcd to be reachable through node 3",
    )


def test_a_restarted_node_rejoins_and_serves_its_sandboxes(cluster: Cluster):
    cluster.start_node("n2")
    cluster.wait_node("n2")
    wait_until(lambda: "n2" in {n["name"] for n in api(cluster, "n1", "GET", "/nodes").json()}, 30, "node 2 to rejoin")
    for sid in [s for s, h in cluster.sandboxes.items() if h == "n2"]:
        for node in NODES:
            assert Sandbox.connect(sid, **sdk(cluster, node)).commands.run("echo again").stdout == "again\n"
    # Drained, it takes no new sandboxes; undrained, it does again.
    assert api(cluster, "n1", "POST", "/nodes/n2/drain").status_code == 204
    assert {n["name"]: n["state"] for n in api(cluster, "n3", "GET", "/nodes").json()}["n2"] == "drained"
    for _ in range(6):
        s = Sandbox.create(timeout=600, **sdk(cluster, "n2"))
        home = holder(cluster, "n2", s.sandbox_id)
        cluster.sandboxes[s.sandbox_id] = home
        assert home != "n2", "a drained node took a sandbox"
    assert api(cluster, "n1", "POST", "/nodes/n2/undrain").status_code == 204
    assert api(cluster, "n1", "POST", "/nodes/nope/drain").status_code == 404
