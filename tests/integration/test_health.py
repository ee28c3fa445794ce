"""Health (/ping) and readiness (/ready) over HTTP.

In process, the app against a fake broker: /ping's bytes are TorchServe's (its StatusResponse
pretty-printed by Gson, then a newline) with its status codes, /ready's shape. Then real
servers: a model whose handler does not import makes /ping "Unhealthy" (500); /ready stays 503
while a model loads (a handler whose initialize waits for a gate file the test creates, so no
timing is guessed) and turns 200 once it has; a 1-worker model whose worker is killed makes
/ping "Partial Healthy" and /ready 503 until its restarted worker has loaded it again.

The real servers start in the foreground (the CLI becomes the broker), so the test sees them
before their models load; they are found ready by polling, and every process is stopped in a
finalizer.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile

import falcon.testing
import pytest

from tests.support.fake_client_broker import FakeBroker, control_reply
from tests.support.servers import ROOT, TEST_MODELS, Server, finish, free_port, isolated_flags
from zerobatch.api import http_app
from zerobatch.api.http_app import create_app
from zerobatch.config import FrontendConfig

pytestmark = pytest.mark.integration

#: what TorchServe 0.12 sends for /ping (NettyUtils.sendJsonResponse of a StatusResponse)
TS_HEALTHY = b'{\n  "status": "Healthy"\n}\n'
TS_PARTIAL = b'{\n  "status": "Partial Healthy"\n}\n'
TS_UNHEALTHY = b'{\n  "status": "Unhealthy"\n}\n'
READY = b'{\n  "status": "Ready"\n}\n'
#: how long a real server may take to reach a state ("does not hang", not a timing test)
WAIT_S = 60.0


# ---------------------------------------------------------------- the app, in process

def config_for(broker: FakeBroker) -> FrontendConfig:
    return FrontendConfig(broker_address=broker.address)


def call(app, method: str, path: str):
    """One request through the app's lifespan (falcon's ASGIConductor), bounded in time."""
    async def main():
        async with falcon.testing.ASGIConductor(app) as conductor:
            return await conductor.simulate_request(method, path)
    return asyncio.run(asyncio.wait_for(main(), 10))


@pytest.mark.parametrize("verdict, status, body", [
    ("Healthy", 200, TS_HEALTHY), ("Partial Healthy", 200, TS_PARTIAL),
    ("Unhealthy", 500, TS_UNHEALTHY)])
def test_ping_sends_torchserves_bytes(verdict, status, body):
    with FakeBroker(lambda m: control_reply(m.rid, {"status": verdict})) as fake:
        result = call(create_app(config_for(fake)), "GET", "/ping")
        assert fake.next().control == {"op": "ping"}
    assert (result.status_code, result.content) == (status, body)
    assert result.headers["content-type"] == "application/json"


def test_ping_is_unhealthy_when_the_broker_is_silent(monkeypatch):
    monkeypatch.setattr(http_app, "PING_TIMEOUT_MS", 50)
    with FakeBroker() as silent:
        result = call(create_app(config_for(silent)), "GET", "/ping")
    assert (result.status_code, result.content) == (500, TS_UNHEALTHY)


def test_ready_says_which_models_still_load():
    answers = iter([{"ready": False, "loading": ["big", "small"]},
                    {"ready": True, "loading": []}])
    with FakeBroker(lambda m: control_reply(m.rid, next(answers))) as fake:
        app = create_app(config_for(fake))
        loading, ready = call(app, "GET", "/ready"), call(app, "GET", "/ready")
        assert fake.next().control == {"op": "ready"}
    assert loading.status_code == 503 and loading.headers["content-type"] == "application/json"
    assert loading.content == b'{\n  "status": "Not Ready",\n  "loading": [\n    "big",\n' \
                              b'    "small"\n  ]\n}\n'
    assert (ready.status_code, ready.content) == (200, READY)


def test_ready_is_503_when_the_broker_is_silent(monkeypatch):
    monkeypatch.setattr(http_app, "PING_TIMEOUT_MS", 50)
    with FakeBroker() as silent:
        result = call(create_app(config_for(silent)), "GET", "/ready")
    assert (result.status_code, result.json) == (503, {"status": "Not Ready"})


# ---------------------------------------------------------------- real servers

def model_dir(root: str, name: str, handler_source: str) -> str:
    """A model directory as torch-model-archiver lays one out, with this handler."""
    path = os.path.join(root, name)
    os.makedirs(os.path.join(path, "MAR-INF"))
    with open(os.path.join(path, f"{name}_handler.py"), "w") as handle:
        handle.write(handler_source)
    with open(os.path.join(path, "MAR-INF", "MANIFEST.json"), "w") as handle:
        json.dump({"runtime": "python", "model": {
            "modelName": name, "modelVersion": "1.0", "handler": f"{name}_handler.py"}},
            handle)
    return path


def gated_handler(gate: str) -> str:
    """A handler whose initialize returns only once the gate file exists (at most a minute)."""
    return f'''import os
import time

GATE = {gate!r}


class GatedHandler:
    def initialize(self, context):
        deadline = time.monotonic() + 60
        while not os.path.exists(GATE) and time.monotonic() < deadline:
            time.sleep(0.01)

    def handle(self, data, context):
        return [{{"gated": True}} for _ in data]
'''


def open_gate(gate: str) -> None:
    with open(gate, "w"):
        pass


class Foreground:
    """`zerobatch start --foreground`: the CLI becomes the broker and nothing waits for the
    models, so the test sees the server while they load. Stopped like any test server."""

    def __init__(self, models: dict[str, str]) -> None:
        self.server = Server(run_dir=tempfile.mkdtemp(prefix="zb"), http_port=free_port(),
                             client_address=f"tcp://127.0.0.1:{free_port()}",
                             env=dict(os.environ))
        self.log_path = os.path.join(self.server.run_dir, "foreground.log")
        argv = [sys.executable, "-m", "zerobatch.api.cli", "start", "--foreground",
                "--run-dir", self.server.run_dir, "--http-port", str(self.server.http_port),
                "--client-address", self.server.client_address, "--frontends", "1",
                "--model-store", TEST_MODELS, "--models",
                *[f"{name}={path}" for name, path in models.items()], *isolated_flags()]
        with open(self.log_path, "wb") as log_file:
            self.process = subprocess.Popen(argv, cwd=ROOT, stdin=subprocess.DEVNULL,
                                            stdout=log_file, stderr=subprocess.STDOUT)

    def answer(self, path: str) -> tuple[int, bytes] | None:
        """(status, body) of GET path, or None while nothing answers on the port."""
        assert self.process.poll() is None, f"the server exited:\n{self.log()}"
        try:
            status, _headers, body = self.server.http("GET", path, timeout=5)
        except OSError:
            return None
        return status, body

    def until(self, path: str, wanted, what: str) -> tuple[int, bytes]:
        """Poll GET path until wanted((status, body)) holds; that answer."""
        def check():
            got = self.answer(path)
            return got if got is not None and wanted(got) else None
        return self.server.wait_for(check, timeout_s=WAIT_S, what=what)

    def load_error(self, model: str) -> str | None:
        """The broker's loadError for model (describe, on the local control socket)."""
        try:
            described = self.server.describe()
        except Exception:  # not answering yet
            return None
        return next((m["loadError"] for m in described["models"] if m["modelName"] == model),
                    None)

    def log(self) -> str:
        with open(self.log_path, errors="replace") as handle:
            return handle.read()[-4000:]

    def stop(self) -> None:
        try:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(15)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait(10)
        finally:
            finish(self.server)  # zerobatch stop (nothing left), then SIGKILL to leftovers


@pytest.fixture
def foreground():
    started: list[Foreground] = []

    def start(models: dict[str, str]) -> Foreground:
        server = Foreground(models)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def loading(answer: tuple[int, bytes]) -> list[str] | None:
    """The models a 503 from /ready names as loading; None for any other answer."""
    status, body = answer
    return json.loads(body).get("loading") if status == 503 else None


def not_ready(answer: tuple[int, bytes]) -> bool:
    """A 503 from /ready in which the broker named the models still loading."""
    return loading(answer) is not None


def test_a_model_whose_handler_does_not_import_makes_ping_unhealthy(foreground, tmp_path):
    broken = model_dir(str(tmp_path), "broken", "import module_that_does_not_exist\n")
    server = foreground({"echo": "echo", "broken": broken})
    server.server.wait_for(lambda: server.load_error("broken"), timeout_s=WAIT_S,
                           what="broken's load error")
    # no worker has loaded it, and none can: it stays so (a 500 from a silent broker would
    # not be told apart from the body alone, so it is asked after the load failed)
    assert server.answer("/ping") == (500, TS_UNHEALTHY)  # TorchServe's bytes: no error text
    assert server.until("/ready", lambda got: loading(got) == ["broken"],
                        "echo loaded, broken not")[1] == (
        b'{\n  "status": "Not Ready",\n  "loading": [\n    "broken"\n  ]\n}\n')
    status, _h, body = server.server.predict("echo", b'{"ok": 1}')
    assert (status, json.loads(body)) == (200, {"ok": 1})  # the other model serves


def test_ready_is_503_until_every_model_has_loaded(foreground, tmp_path):
    gate = str(tmp_path / "gate")
    gated = model_dir(str(tmp_path), "gated", gated_handler(gate))
    server = foreground({"echo": "echo", "gated": gated})
    first = server.until("/ready", not_ready, "the front end")
    assert "gated" in loading(first)
    server.until("/ready", lambda got: loading(got) == ["gated"], "echo loaded, gated not")
    # gated cannot load before the gate opens: these are not races
    assert server.answer("/ping") == (200, TS_PARTIAL)
    assert loading(server.answer("/ready")) == ["gated"]
    open_gate(gate)
    assert server.until("/ready", lambda got: got[0] == 200, "ready") == (200, READY)
    assert server.answer("/ping") == (200, TS_HEALTHY)


def test_killing_the_only_worker_of_a_model_shows_until_it_has_restarted(foreground,
                                                                         tmp_path):
    gate = str(tmp_path / "gate")
    open_gate(gate)
    gated = model_dir(str(tmp_path), "gated", gated_handler(gate))
    server = foreground({"gated": gated})
    server.until("/ready", lambda got: got[0] == 200, "ready")
    assert server.answer("/ping") == (200, TS_HEALTHY)
    (worker,) = server.server.workers("gated")
    os.remove(gate)  # its replacement will wait in initialize until the gate opens again
    os.kill(worker["pid"], signal.SIGKILL)
    server.until("/ping", lambda got: got == (200, TS_PARTIAL), "a Partial Healthy /ping")
    assert loading(server.answer("/ready")) == ["gated"]
    open_gate(gate)
    server.until("/ping", lambda got: got == (200, TS_HEALTHY), "Healthy again")
    assert server.answer("/ready") == (200, READY)
    (restarted,) = server.server.workers("gated")
    assert restarted["pid"] != worker["pid"]


def test_a_worker_that_overruns_its_startup_timeout_is_a_load_failure(foreground, tmp_path):
    """TorchServe's startupTimeout: a worker still loading after it is killed and started
    again (with backoff); meanwhile the model counts as failed to load: /ping is Unhealthy
    with no worker serving it, and describe says why. Once a worker loads in time, healthy."""
    gate = str(tmp_path / "gate")
    gated = model_dir(str(tmp_path), "gated", gated_handler(gate))
    with open(os.path.join(gated, "model-config.yaml"), "w") as handle:
        handle.write("startupTimeout: 2\n")
    server = foreground({"echo": "echo", "gated": gated})
    error = server.server.wait_for(lambda: server.load_error("gated"), timeout_s=WAIT_S,
                                   what="gated's startup timeout")
    assert "did not finish loading within the model's startup timeout (2 s)" in error
    assert server.answer("/ping") == (500, TS_UNHEALTHY)
    server.server.wait_for(lambda: "started worker gated@1.0#0.2" in server.log(),
                           timeout_s=WAIT_S, what="a second worker started for gated")
    open_gate(gate)
    assert server.until("/ready", lambda got: got[0] == 200, "ready") == (200, READY)
    assert server.answer("/ping") == (200, TS_HEALTHY)
