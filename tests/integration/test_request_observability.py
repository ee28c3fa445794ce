"""Request ids, the access log and the metrics files, with real processes on loopback:

- a front-end process (`python -m zerobatch.api.frontend`, access log on, prometheus_client's
  multiprocess directory set) against a fake broker thread: its access lines and the figures
  it writes into the directory, read as the metrics API reads them (MultiProcessCollector);
- a real server (`zerobatch start`): a caller's x-request-id reaches the handler
  (context.get_request_id) and comes back;
- a worker process with the directory set: its load time, handler time and handler metrics.

Readiness is polled through /ping or READY; every process is stopped in a finalizer.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from tests.models import write_model_dir
from tests.support.fake_client_broker import FakeBroker, echo, error_frames
from tests.support.fake_worker_broker import item
from tests.support.http_request import http_request
from tests.support.servers import finish, start_server
from tests.support.thread_worker import worker_config
from zerobatch import protocol
from zerobatch.config import FrontendConfig
from zerobatch.launch import module_argv

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
START_S = 20.0
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
ACCESS_LINE = re.compile(
    r'zerobatch\.access: \[[0-9T:.\-]+Z\] 127\.0\.0\.1:\d+ "(?P<method>[A-Z]+) (?P<path>\S+)" '
    r'(?P<status>\d{3}) (?P<bytes>\d+) [0-9.]+ms model=(?P<model>\S+) '
    r'version=(?P<version>\S+) request_id=(?P<request_id>\S+)$', re.MULTILINE)


def figures(path: Path) -> CollectorRegistry:
    """What the metrics API would collect from the files in path."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(path))
    return registry


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def not_found_for_nope(msg):
    """The fake broker: ModelNotFound for model "nope", else echo."""
    if msg.command == protocol.REQUEST and msg.model == "nope":
        return error_frames(msg.rid, "model_not_found", "Model not found: nope", 404)
    return echo(msg)


@pytest.fixture
def frontend(tmp_path):
    broker = FakeBroker(not_found_for_nope)
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    port = free_port()
    config = FrontendConfig(broker_address=broker.address, host="127.0.0.1", port=port,
                            log_level="WARNING", access_log=True)
    log_path = tmp_path / "frontend.log"
    env = dict(os.environ, **{MULTIPROC_ENV: str(metrics_dir)})
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "zerobatch.api.frontend", "--config", config.to_json()],
            cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + START_S
        while True:
            assert proc.poll() is None, log_path.read_text()
            try:
                if http_request(port, "GET", "/ping", timeout_s=1.0)[0] == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)  # poll interval, not a readiness guess
        yield port, broker, log_path, metrics_dir
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        broker.close()


def test_a_front_end_logs_each_request_and_writes_its_figures(frontend):
    port, broker, log_path, metrics_dir = frontend
    status, headers, body = http_request(port, "POST", "/predictions/echo", b'{"x": 1}',
                                         {"Content-Type": "application/json",
                                          "X-Request-ID": "caller-7"})
    assert (status, body, headers["x-request-id"]) == (200, b'{"x": 1}', "caller-7")
    for _ in range(2):
        assert http_request(port, "PUT", "/predictions/echo/2.0", b"1")[0] == 200
    assert http_request(port, "POST", "/predictions/nope", b"1")[0] == 404
    assert http_request(port, "GET", "/nowhere")[0] == 404
    requests = []
    while not broker.received.empty():
        message = broker.next()
        if message.route is not None:
            requests.append(message)
    assert requests[0].request_id == "caller-7"

    # the access log: one line per request, the /ping polls included
    deadline = time.monotonic() + START_S
    while len(ACCESS_LINE.findall(log_path.read_text())) < 6 and time.monotonic() < deadline:
        time.sleep(0.05)  # the log is written as the requests end
    lines = [match.groupdict() for match in ACCESS_LINE.finditer(log_path.read_text())]
    served = [line for line in lines if line["path"] != "/ping"]
    assert [(line["method"], line["path"], line["status"], line["model"], line["version"])
            for line in served] == [
        ("POST", "/predictions/echo", "200", "echo", "-"),
        ("PUT", "/predictions/echo/2.0", "200", "echo", "2.0"),
        ("PUT", "/predictions/echo/2.0", "200", "echo", "2.0"),
        ("POST", "/predictions/nope", "404", "nope", "-"),
        ("GET", "/nowhere", "404", "-", "-")]
    assert served[0]["request_id"] == "caller-7" and served[0]["bytes"] == "8"
    assert served[1]["request_id"] == requests[1].request_id

    # the figures, as the metrics API collects them from the directory, once the front end
    # has written them (every request_metrics.FLUSH_INTERVAL_S)
    host = socket.gethostname()
    deadline = time.monotonic() + START_S
    while True:
        registry = figures(metrics_dir)
        if registry.get_sample_value("Requests4XX_total",
                                     {"Level": "Host", "Hostname": host}) == 2:
            break  # the last request's figures are there, and so all the others
        assert time.monotonic() < deadline, "the front end wrote no figures"
        time.sleep(0.05)

    def count(name, **labels):
        return registry.get_sample_value(name, labels) or 0

    assert count("ts_inference_requests_total", model_name="echo", model_version="default",
                 hostname=host) == 1
    assert count("ts_inference_requests_total", model_name="echo", model_version="2.0",
                 hostname=host) == 2
    assert count("ts_inference_latency_microseconds_total", model_name="echo",
                 model_version="2.0", hostname=host) > 0
    assert count("zerobatch_request_seconds_count", model_name="echo",
                 model_version="2.0") == 2
    assert count("ts_inference_requests_total", model_name="nope", model_version="default",
                 hostname=host) == 0
    pings = len(lines) - len(served)  # /ping polls counted so far (at least the first)
    assert 3 + 1 <= count("Requests2XX_total", Level="Host", Hostname=host) <= 3 + pings
    assert count("Requests4XX_total", Level="Host", Hostname=host) == 2
    assert count("Requests5XX_total", Level="Host", Hostname=host) == 0


REQUEST_ID_HANDLER = """
    def handle(data, context):
        if data is None:
            return None
        return [{"request_id": context.get_request_id(i)} for i in range(len(data))]
    """


def test_a_callers_request_id_reaches_the_handler_and_comes_back(tmp_path):
    path = write_model_dir(str(tmp_path / "ids"), REQUEST_ID_HANDLER)
    server = start_server({"ids": path})
    try:
        status, headers, body = server.http("POST", "/predictions/ids", b"{}",
                                            {"X-Request-ID": "trace-abc-123"})
        assert status == 200
        assert headers["x-request-id"] == "trace-abc-123"
        assert json.loads(body) == {"request_id": "trace-abc-123"}
        too_long = "x" * 129
        status, headers, body = server.http("POST", "/predictions/ids", b"{}",
                                            {"X-Request-ID": too_long})
        fresh = headers["x-request-id"]
        assert status == 200 and fresh != too_long and len(fresh) == 32
        assert json.loads(body) == {"request_id": fresh}
    finally:
        finish(server)


WORKER_METRICS_HANDLER = """
    from ts.metrics.dimension import Dimension
    from ts.metrics.metric_type_enum import MetricTypes


    def handle(data, context):
        if data is None:
            return None
        context.metrics.add_counter("Rows", len(data))
        context.metrics.add_size("Payload", 2.5, unit="kB",
                                 dimensions=[Dimension("Kind", "json")],
                                 metric_type=MetricTypes.HISTOGRAM)
        return [row["body"] for row in data]
    """


def test_a_worker_process_writes_its_figures(tmp_path, worker_broker):
    path = write_model_dir(str(tmp_path / "counted"), WORKER_METRICS_HANDLER)
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    config = worker_config(worker_broker, model="counted", path=path, worker_id="w-metrics")
    env = dict(os.environ, **{MULTIPROC_ENV: str(metrics_dir)})
    with open(tmp_path / "worker.log", "wb") as log_file:
        proc = subprocess.Popen(module_argv("zerobatch.worker", "--config", config.to_json()),
                                cwd=tmp_path, env=env, stdout=log_file,
                                stderr=subprocess.STDOUT)
    try:
        identity, _info = worker_broker.wait_ready()
        replies = worker_broker.request(identity, 1, [item('"a"'), item('"b"')])
        assert [r.body for r in replies] == [b"a", b"b"]
        worker_broker.request(identity, 2, [item('"c"')])
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    registry = figures(metrics_dir)
    host = socket.gethostname()
    model = {"ModelName": "counted", "Level": "Model", "Hostname": host}

    def value(name, **labels):
        return registry.get_sample_value(name, labels)

    assert value("WorkerLoadTime", WorkerName="w-metrics", Level="Host", Hostname=host) > 0
    assert value("zerobatch_handler_seconds_count", model_name="counted",
                 model_version="1.0") == 2
    assert value("PredictionTime", **model) >= 0
    assert value("Rows_total", **model) == 3
    assert value("Payload_count", Kind="json", **model) == 2
    assert value("Payload_sum", Kind="json", **model) == 5.0
