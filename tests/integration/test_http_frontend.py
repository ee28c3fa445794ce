"""The real front-end process, `python -P -m zerobatch.api.frontend`, on loopback against a
fake broker thread: serving on an inherited socket (--fd) and on its own port, chunked
bodies over the limit, uploads over it refused before they are sent (Expect: 100-continue),
graceful exit on SIGTERM. Readiness is polled through /ping; the process is always killed in
a finalizer."""

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

from tests.support.fake_client_broker import FakeBroker, echo
from tests.support.http_request import http_request
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
    command = [sys.executable, "-m", "zerobatch.api.frontend", "--config", config.to_json()]
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
    assert "content-type" not in headers  # the fake broker's reply sets no header
    msgs = []
    while not broker.received.empty():
        msgs.append(broker.next())
    request = [m for m in msgs if m.route is not None][-1]
    assert request.route == ("digits", "1.0", FrontendConfig.default_timeout_ms)
    assert request.headers["x-trace"] == "t1"
    assert headers["x-request-id"] == request.request_id

    status, _, body = front.request("GET", "/nowhere")
    assert status == 404 and json.loads(body)["type"] == "ResourceNotFoundException"

    chunks = iter([b"x" * 600, b"y" * 600])  # chunked: no Content-Length to check up front
    status, headers, body = front.request("POST", "/predictions/m", body=chunks)
    assert status == 413 and body == b""  # TorchServe's answer: no body, no content type
    assert "content-type" not in {name.lower() for name in headers}

    assert front.stop() == 0, front.log()


def test_binds_its_own_port_without_fd(frontend):
    front = frontend(inherit_socket=False)
    status, _, body = front.request("GET", "/ping")
    assert status == 200 and json.loads(body) == {"status": "Healthy"}
    status, _, body = front.request("PUT", "/predictions/m", body="texte".encode(),
                                    headers={"Content-Type": "text/plain"})
    assert status == 200 and body == b"texte"
    assert front.stop() == 0, front.log()


def read_until_closed(sock: socket.socket, limit_s: float = 5.0) -> bytes:
    """Everything the server sends on sock until it closes the connection (bounded)."""
    sock.settimeout(limit_s)
    received = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return received
        received += chunk


def test_an_upload_over_the_limit_that_expects_100_continue_is_refused_before_it_is_sent(
        frontend):
    front = frontend(inherit_socket=False, max_request_bytes=1000)
    head = (b"POST /predictions/m HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 1001\r\n"
            b"Expect: 100-continue\r\n\r\n")
    with socket.create_connection(("127.0.0.1", front.port), timeout=5) as sock:
        sock.sendall(head)  # and no body: the client waits for 100 Continue
        response = read_until_closed(sock)
    assert b"100 Continue" not in response
    status_line, _, rest = response.partition(b"\r\n")
    headers, _, body = rest.partition(b"\r\n\r\n")
    assert status_line == b"HTTP/1.1 413 Request Entity Too Large"
    # TorchServe's answer (tests/data/torchserve_answers/routes.json, expect_continue_too_large):
    # no body, no content type; and the connection closed
    fields = dict(line.split(b": ", 1) for line in headers.lower().split(b"\r\n"))
    assert fields[b"content-length"] == b"0" and b"content-type" not in fields
    assert fields[b"connection"] == b"close"
    assert body == b""

    # within the limit, 100-continue goes on as before: Continue, then the answer
    with socket.create_connection(("127.0.0.1", front.port), timeout=5) as sock:
        sock.sendall(head.replace(b"1001", b"5").replace(b"\r\n\r\n",
                                                          b"\r\nConnection: close\r\n\r\n"))
        assert sock.recv(65536) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(b"hello")
        response = read_until_closed(sock)
    assert response.startswith(b"HTTP/1.1 200 OK") and response.endswith(b"\r\n\r\nhello")
    assert front.stop() == 0, front.log()


def held_or_echo(msg):
    """Fake broker handler: requests to the model "held" get no answer until the test sends
    one; everything else is echoed."""
    return None if msg.route is not None and msg.model == "held" else echo(msg)


def test_a_client_too_slow_to_send_its_request_is_timed_out_and_nobody_else(tmp_path):
    """With a 1 s read timeout: a connection that sends nothing is closed silently; one that
    stops in its headers or in its body gets a 408 in the JSON shape and is closed. A request
    sent whole is answered however long its answer takes, a body that keeps coming at the
    minimum rate is read past the timeout, and other clients are served."""
    timeout_s = 1.0
    with FakeBroker(held_or_echo) as broker:
        front = start_frontend(tmp_path, broker, inherit_socket=False,
                               request_read_timeout_s=timeout_s, request_min_rate_bytes_s=10)
        try:
            front.wait_ready()
            port = front.port
            silent = socket.create_connection(("127.0.0.1", port), timeout=5)
            in_headers = socket.create_connection(("127.0.0.1", port), timeout=5)
            in_headers.sendall(b"POST /predictions/m HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            in_body = socket.create_connection(("127.0.0.1", port), timeout=5)
            in_body.sendall(b"POST /predictions/m HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                            b"Content-Length: 100\r\n\r\nonly part")
            held = socket.create_connection(("127.0.0.1", port), timeout=5)
            held.sendall(b"POST /predictions/held HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                         b"Content-Length: 2\r\nConnection: close\r\n\r\nhi")
            request = next(msg for msg in iter(broker.next, None)
                           if msg.route is not None and msg.model == "held")
            with silent, in_headers, in_body:
                assert read_until_closed(silent) == b""
                for sock in (in_headers, in_body):
                    status_line, _, rest = read_until_closed(sock).partition(b"\r\n")
                    assert status_line == b"HTTP/1.1 408 Request Timeout"
                    assert json.loads(rest.partition(b"\r\n\r\n")[2]) == {
                        "code": 408, "type": "RequestTimeout",
                        "message": f"waited {timeout_s:g} s for the rest of the request"}
            # the held request has waited past the timeout too, received whole: it is kept
            time.sleep(timeout_s)
            broker.reply(request, b"late")
            with held:
                response = read_until_closed(held)
            assert response.startswith(b"HTTP/1.1 200 OK") and response.endswith(b"late")
            status, _, body = front.request("POST", "/predictions/m", body=b"still here")
            assert (status, body) == (200, b"still here")
            pieces = [b"a" * 5] * 10
            with socket.create_connection(("127.0.0.1", port), timeout=5) as steady:
                steady.sendall(b"POST /predictions/m HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                               b"Content-Length: 50\r\nConnection: close\r\n\r\n")
                for piece in pieces:  # 20 bytes/s: 2.5 s in all, over twice the timeout
                    time.sleep(timeout_s / 4)
                    steady.sendall(piece)
                response = read_until_closed(steady)
            assert response.startswith(b"HTTP/1.1 200 OK") and response.endswith(b"a" * 50)
            assert front.stop() == 0, front.log()
        finally:
            front.stop()


def test_bad_config_exits_with_status_2():
    result = subprocess.run([sys.executable, "-m", "zerobatch.api.frontend", "--config",
                             "{\"nope\": 1}"],
                            cwd=REPO, capture_output=True, timeout=START_S)
    assert result.returncode == 2
    assert b"bad --config" in result.stderr
