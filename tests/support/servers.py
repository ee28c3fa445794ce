"""Real zerobatch servers (broker, workers, front ends) on loopback, for integration tests.

Every server gets free ports and its own short run directory; its finalizer runs
`zerobatch stop` and then SIGKILLs any process still naming that run directory, so a failing
test never leaves processes behind. Readiness is `zerobatch start` returning, which waits for
the broker, a ready worker per model and the HTTP ping; no fixed sleeps.

Token authorization (api/token_auth.py) is on by default in zerobatch, as in TorchServe; a
server started here runs with `--disable-token-auth` unless the test's flags include the
marker `--token-auth` (taken out before the command runs), so that only the tests of token
authorization need keys.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

from tests.support.http_request import http_request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEST_MODELS = os.path.join(ROOT, "tests", "models")

def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def cli(*args: str, env: dict | None = None, timeout: float = 90) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "zerobatch.api.cli", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


def processes_mentioning(text: str) -> list[int]:
    """Pids whose command line contains text (our children carry the run dir in theirs)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as handle:
                cmdline = handle.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{entry}/stat") as handle:
                state = handle.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if text in cmdline and state != "Z":
            pids.append(int(entry))
    return pids


@dataclass
class Server:
    run_dir: str
    http_port: int
    client_address: str
    start_output: str = ""
    env: dict = field(default_factory=dict)
    #: the management API's port (0 when the test turned it off)
    management_port: int = 0
    #: the metrics API's port (0 when the test turned it off)
    metrics_port: int = 0

    # -- HTTP
    def http(self, method: str, path: str, body: bytes | None = None,
             headers: dict | None = None, timeout: float = 30) -> tuple[int, dict, bytes]:
        return http_request(self.http_port, method, path, body, headers, timeout)

    def predict(self, model: str, body: bytes, content_type: str = "application/json",
                timeout_ms: int | None = None) -> tuple[int, dict, bytes]:
        headers = {"Content-Type": content_type}
        if timeout_ms is not None:
            headers["x-zerobatch-timeout-ms"] = str(timeout_ms)
        return self.http("POST", f"/predictions/{model}", body, headers)

    def management(self, method: str, path: str, body: bytes | None = None,
                   headers: dict | None = None, timeout: float = 60) -> tuple[int, dict, bytes]:
        return http_request(self.management_port, method, path, body, headers, timeout)

    def metrics(self, query: str = "", timeout: float = 30) -> tuple[int, dict, bytes]:
        """GET /metrics of the metrics API (query: e.g. "?name[]=QueueTime")."""
        return http_request(self.metrics_port, "GET", f"/metrics{query}", None, None, timeout)

    # -- ZeroMQ
    def client(self):
        from zerobatch.api.client import Client
        return Client(self.client_address)

    @property
    def control_address(self) -> str:
        """The broker's local control socket (stop, describe)."""
        from zerobatch.config import control_address
        return control_address(self.run_dir)

    def describe(self) -> dict:
        from zerobatch.api.client import Client
        with Client(self.control_address) as client:
            return client.control("describe", timeout_ms=2000)

    def workers(self, model: str) -> list[dict]:
        for entry in self.describe()["models"]:
            if entry["modelName"] == model:
                return entry["workers"]
        raise KeyError(model)

    def wait_for(self, predicate, timeout_s: float = 20, what: str = "condition"):
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")

    def frontend_pids(self) -> set[int]:
        """The HTTP front ends: processes naming the run dir and zerobatch.api.frontend."""
        found = set()
        for pid in processes_mentioning(self.run_dir):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as handle:
                    if b"zerobatch.api.frontend" in handle.read():
                        found.add(pid)
            except OSError:
                pass
        return found

    def stop(self) -> subprocess.CompletedProcess:
        return cli("stop", "--run-dir", self.run_dir, env=self.env)

    def kill_leftovers(self) -> list[int]:
        leftovers = processes_mentioning(self.run_dir)
        for pid in leftovers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return leftovers


def isolated_flags() -> list[str]:
    """What a test that runs `zerobatch start` itself adds, as start_server does: the
    management and metrics APIs on free ports (never the shared defaults, 8081 and 8082) and
    no token authorization (the tests of those start their servers with them)."""
    return ["--disable-token-auth", "--management-address",
            f"http://127.0.0.1:{free_port()}", "--metrics-address",
            f"http://127.0.0.1:{free_port()}"]


#: a start_server flag of the tests only: keep zerobatch's default, token authorization on
TOKEN_AUTH = "--token-auth"


def start_server(models: dict[str, str], *flags: str, env: dict | None = None) -> Server:
    flags = (tuple(flag for flag in flags if flag != TOKEN_AUTH) if TOKEN_AUTH in flags
             else (*flags, "--disable-token-auth"))
    run_dir = tempfile.mkdtemp(prefix="zb")
    server = Server(run_dir=run_dir, http_port=free_port(),
                    client_address=f"tcp://127.0.0.1:{free_port()}",
                    env=dict(os.environ if env is None else env))
    if "--management-address" not in flags:  # never the shared default port, 8081
        server.management_port = free_port()
        flags = (*flags, "--management-address",
                 f"http://127.0.0.1:{server.management_port}")
    if "--metrics-address" not in flags:  # never the shared default port, 8082
        server.metrics_port = free_port()
        flags = (*flags, "--metrics-address", f"http://127.0.0.1:{server.metrics_port}")
    else:
        address = flags[flags.index("--metrics-address") + 1]
        server.metrics_port = 0 if address.lower() == "none" else int(address.rsplit(":", 1)[1])
    args = ["start", "--run-dir", run_dir, "--http-port", str(server.http_port),
            "--client-address", server.client_address, "--startup-timeout", "60",
            "--model-store", TEST_MODELS, "--models",
            *[f"{name}={path}" for name, path in models.items()], *flags]
    result = cli(*args, env=server.env)
    server.start_output = result.stdout + result.stderr
    if result.returncode != 0:
        server.kill_leftovers()
        shutil.rmtree(run_dir, ignore_errors=True)
        raise AssertionError(f"zerobatch start failed ({result.returncode}):\n"
                             f"{server.start_output}")
    return server


def finish(server: Server) -> None:
    try:
        server.stop()
    finally:
        server.kill_leftovers()
        shutil.rmtree(server.run_dir, ignore_errors=True)


def json_body(raw: bytes):
    return json.loads(raw.decode())
