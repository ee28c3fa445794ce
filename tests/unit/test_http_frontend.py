"""The real front-end process, `python -m api.frontend`, on loopback against a fake broker
thread: serving on an inherited socket (--fd) and on its own port, chunked bodies over the
limit, graceful exit on SIGTERM. Readiness is polled through /ping; the process is always
killed in a finalizer."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.http_request import http_request
from tests.unit.test_client_fakebroker import FakeBroker, echo
from zerobatch.config import FrontendConfig

REPO = Path(__file__).resolve().parents[2]
START_S = 20.0
STOP_S = 10.0


class Frontend:
    def __init__(self, proc: subprocess.Popen, port: int, log_path: Path) -> None:
        self.proc = proc
        self.port = port
        self.log_path = log_path

    def request(self, method: str, path: str, body=None, headers=None, timeout_s: float = 5.0):
        return http_request(self.port, method, path, body, headers, timeout_s)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_ready(self) -> None:
        deadline = time.monotonic() + START_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"front end exited with {self.proc.returncode}:\n{self.log()}")
            try:
                status, _, _ = self.request("GET", "/ping", timeout_s=1.0)
            except OSError:
                status = None
            if status == 200:
                return
            time.sleep(0.05)  # poll interval, not a readiness guess
        pytest.fail(f"front end not ready within {START_S} s:\n{self.log()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(STOP_S)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(STOP_S)


def start_frontend(tmp_path: Path, broker: FakeBroker, *, inherit_socket: bool,
                   **overrides) -> Frontend:
    listener = None
    if inherit_socket:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        port = listener.getsockname()[1]
    else:
        with socket.socket() as probe:  # a free port; the child binds it itself
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
    config = FrontendConfig(broker_address=broker.address, host="127.0.0.1", port=port,
                            log_level="WARNING", **overrides)
    command = [sys.executable, "-m", "api.frontend", "--config", config.to_json()]
    pass_fds: tuple[int, ...] = ()
    if listener is not None:
        command += ["--fd", str(listener.fileno())]
        pass_fds = (listener.fileno(),)
    log_path = tmp_path / f"frontend-{port}.log"
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(command, cwd=REPO, env=env, pass_fds=pass_fds,
                                stdout=log_file, stderr=subprocess.STDOUT)
    if listener is not None:
        listener.close()  # the child holds its own copy
    return Frontend(proc, port, log_path)


@pytest.fixture
def broker():
    fake = FakeBroker(echo)
    yield fake
    fake.close()


@pytest.fixture
def frontend(tmp_path, broker, request):
    started = []

    def start(**kwargs):
        front = start_frontend(tmp_path, broker, **kwargs)
        started.append(front)
        front.wait_ready()
        return front

    yield start
    for front in started:
        front.stop()


def test_serves_on_an_inherited_socket_and_stops_on_sigterm(frontend, broker):
    front = frontend(inherit_socket=True, max_request_bytes=1000)
    status, headers, body = front.request(
        "POST", "/predictions/digits/1.0", body=b'{"x": 1}',
        headers={"Content-Type": "application/json", "X-Trace": "t1"})
    assert status == 200 and body == b'{"x": 1}'
    assert headers["content-type"] == "application/json"
    msgs = []
    while not broker.received.empty():
        msgs.append(broker.next())
    request = [m for m in msgs if m.route is not None][-1]
    assert request.route == ("digits", "1.0", FrontendConfig.default_timeout_ms)
    assert request.headers["x-trace"] == "t1"
    assert headers["x-request-id"] == request.request_id

    status, _, body = front.request("GET", "/nowhere")
    assert status == 404 and json.loads(body)["type"] == "RouteNotFound"

    chunks = iter([b"x" * 600, b"y" * 600])  # chunked: no Content-Length to check up front
    status, _, body = front.request("POST", "/predictions/m", body=chunks)
    assert status == 413
    assert json.loads(body) == {"code": 413, "type": "RequestTooLarge",
                                "message": "request body exceeds the limit of 1000 bytes"}

    assert front.stop() == 0, front.log()


def test_binds_its_own_port_without_fd(frontend):
    front = frontend(inherit_socket=False)
    status, _, body = front.request("GET", "/ping")
    assert status == 200 and json.loads(body) == {"status": "Healthy"}
    status, _, body = front.request("PUT", "/predictions/m", body="texte".encode(),
                                    headers={"Content-Type": "text/plain"})
    assert status == 200 and body == b"texte"
    assert front.stop() == 0, front.log()


def test_bad_config_exits_with_status_2():
    result = subprocess.run([sys.executable, "-m", "api.frontend", "--config", "{\"nope\": 1}"],
                            cwd=REPO, capture_output=True, timeout=START_S)
    assert result.returncode == 2
    assert b"bad --config" in result.stderr
