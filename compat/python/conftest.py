"""Compatibility suite: the official, unmodified `e2b` Python SDK against `airlock serve`.

One Airlock server is started per test session (as root, on a free loopback
port, with a throw-away data dir and a random API key). The SDK is pointed at
it purely through the environment variables a user would set:

    E2B_API_URL=http://127.0.0.1:<port>
    E2B_SANDBOX_URL=http://127.0.0.1:<port>
    E2B_API_KEY=e2b_<40 hex>

The binary comes from $AIRLOCK_BIN (default: <repo>/target/debug/airlock); this
suite never builds it.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from e2b import AsyncSandbox, Sandbox

from _support import kill_later, run_metadata, wait_for_background_kills

REPO = Path(__file__).resolve().parents[2]
READY_TIMEOUT_S = 30
# Upper bound for one test (setup + call), enforced with SIGALRM so a hung
# stream cannot stall the whole run. The SDK's own timeouts are 60 s.
TEST_TIMEOUT_S = int(os.environ.get("AIRLOCK_COMPAT_TEST_TIMEOUT", "90"))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = 60) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as e:
        return f"<cannot read {path}: {e}>"
    return "\n".join(text.splitlines()[-lines:])


def _host_mounts_under(path: Path) -> list[str]:
    try:
        with open("/proc/self/mounts") as f:
            points = [line.split()[1] for line in f]
    except OSError:
        return ["<unknown>"]
    prefix = str(path).rstrip("/") + "/"
    return [p for p in points if p == str(path) or p.startswith(prefix)]


class AirlockServer:
    def __init__(self) -> None:
        self.bin = Path(os.environ.get("AIRLOCK_BIN", REPO / "target" / "debug" / "airlock"))
        self.port = 0
        # The loopback address it listens on (a module may give it its own).
        self.host = "127.0.0.1"
        self.url = ""
        self.api_key = "e2b_" + secrets.token_hex(20)
        self.data_dir = Path(tempfile.mkdtemp(prefix="airlock-compat-py-"))
        fd, log = tempfile.mkstemp(prefix="airlock-compat-py-", suffix=".log")
        os.close(fd)
        self.log_path = Path(log)
        self.proc: subprocess.Popen | None = None
        # More `airlock serve` flags (a module with its own server).
        self.extra_args: list[str] = []

    def log_tail(self, lines: int = 60) -> str:
        return _tail(self.log_path, lines)

    def died(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None

    def restart(self, kill: bool = True) -> None:
        """Stop the server (SIGKILL when `kill`, as a crash would) and start it
        again on the same port and data dir; sandboxes outlive it."""
        if self.proc is not None and self.proc.poll() is None:
            if kill:
                self.proc.kill()
                self.proc.wait(timeout=10)
            else:
                self.stop()
        self.start(port=self.port)

    def start(self, port: int | None = None) -> None:
        if not self.bin.exists():
            raise RuntimeError(
                f"airlock binary not found at {self.bin} (set AIRLOCK_BIN or build it first)"
            )
        if os.geteuid() != 0:
            raise RuntimeError("airlock serve must run as root; run the suite as root")
        self.port = port or _free_port()
        self.url = f"http://{self.host}:{self.port}"
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [
                str(self.bin),
                "serve",
                "--listen",
                f"{self.host}:{self.port}",
                "--data-dir",
                str(self.data_dir),
                "--api-key",
                self.api_key,
                *self.extra_args,
            ],
            stdin=subprocess.DEVNULL,
            # hermetic: no AIRLOCK_* settings (config file, extra keys...) leak in
            env={k: v for k, v in os.environ.items() if not k.startswith("AIRLOCK_")},
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + READY_TIMEOUT_S
        last_err: object = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"airlock serve exited with {self.proc.returncode} before becoming ready; "
                    f"log tail:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
                    last_err = f"status {r.status}"
            except (urllib.error.URLError, OSError) as e:
                last_err = e
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(
            f"airlock serve not ready after {READY_TIMEOUT_S}s (last: {last_err}); "
            f"log tail:\n{self.log_tail()}"
        )

    def kill_leftover_sandboxes(self) -> None:
        """Kill every sandbox left in this server (best effort).

        The data dir is private to this run, so everything in it is ours. Sandboxes
        outlive `airlock serve` (it stops without killing them), so this must run
        before the server is stopped.
        """
        try:
            paginator = Sandbox.list(api_key=self.api_key, api_url=self.url)
            ids = []
            for _ in range(100):
                if not paginator.has_next:
                    break
                ids += [s.sandbox_id for s in paginator.next_items()]
            for sid in ids:
                try:
                    Sandbox.kill(sid, api_key=self.api_key, api_url=self.url)
                except Exception:
                    pass
        except Exception:
            pass
        # Volumes are images mounted under the data dir: delete them too, or
        # the data dir cannot be removed (the fuzzing suite makes some).
        try:
            import httpx

            h = {"X-API-KEY": self.api_key}
            vols = httpx.get(f"{self.url}/volumes", headers=h, timeout=30).json()
            for v in vols if isinstance(vols, list) else []:
                vid = v.get("volumeID") or v.get("id")
                if vid:
                    httpx.delete(f"{self.url}/volumes/{vid}", headers=h, timeout=30)
        except Exception:
            pass

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def cleanup_dirs(self) -> None:
        # Only remove the data dir if nothing is mounted under it in our mount
        # namespace (never recurse through a mount).
        if not _host_mounts_under(self.data_dir):
            shutil.rmtree(self.data_dir, ignore_errors=True)


_SERVER: AirlockServer | None = None


@pytest.fixture(scope="session", autouse=True)
def airlock_server():
    """Start `airlock serve` once per session and point the SDK at it."""
    global _SERVER
    server = AirlockServer()
    _SERVER = server

    # SIGTERM (e.g. from `timeout`) unwinds like Ctrl-C, so the teardown below
    # still kills the sandboxes and the server (both outlive pytest otherwise).
    def on_term(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_term)
    saved = {k: os.environ.get(k) for k in
             ("E2B_API_URL", "E2B_SANDBOX_URL", "E2B_API_KEY", "E2B_DEBUG", "E2B_DOMAIN")}
    try:
        server.start()
    except Exception as e:
        server.stop()
        server.cleanup_dirs()
        pytest.fail(f"could not start airlock serve: {e}", pytrace=False)
    os.environ["E2B_API_URL"] = server.url
    os.environ["E2B_SANDBOX_URL"] = server.url
    os.environ["E2B_API_KEY"] = server.api_key
    os.environ.pop("E2B_DEBUG", None)
    os.environ.pop("E2B_DOMAIN", None)
    try:
        yield server
    finally:
        if not server.died():
            wait_for_background_kills()
        else:
            # Sandboxes outlive the server: bring it back on the same data dir
            # just to kill what is left.
            try:
                server.start()
            except Exception:
                pass
        if not server.died():
            server.kill_leftover_sandboxes()
        server.stop()
        server.cleanup_dirs()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if os.environ.get("AIRLOCK_COMPAT_KEEP_LOG") != "1":
            try:
                server.log_path.unlink()
            except OSError:
                pass


@pytest.fixture(autouse=True)
def _per_test_timeout(request):
    """SIGALRM deadline for the test body; `@pytest.mark.timeout_s(N)` overrides it."""
    marker = request.node.get_closest_marker("timeout_s")
    limit = int(marker.args[0]) if marker else TEST_TIMEOUT_S

    def on_alarm(signum, frame):
        raise TimeoutError(f"test exceeded {limit}s (timeout_s marker / AIRLOCK_COMPAT_TEST_TIMEOUT)")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(limit)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    server = _SERVER
    if server is None or not report.failed:
        return
    if report.when == "setup" or server.died():
        state = (
            f"airlock serve DIED (exit {server.proc.returncode})"
            if server.died()
            else "airlock serve running"
        )
        report.sections.append(
            ("airlock serve log tail", f"{state}; log {server.log_path}:\n{server.log_tail()}")
        )


@pytest.fixture
def sandbox(airlock_server):
    sbx = Sandbox.create(timeout=300, metadata=run_metadata())
    yield sbx
    kill_later(sbx)


@pytest.fixture
async def async_sandbox(airlock_server):
    sbx = await AsyncSandbox.create(timeout=300, metadata=run_metadata())
    yield sbx
    kill_later(sbx.sandbox_id)
