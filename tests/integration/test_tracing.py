"""Tracing across real processes: a server started with the standard OTEL_* variables sends
its spans over OTLP/HTTP (OpenTelemetry's own exporter) to a collector this test runs on
loopback; the caller's trace holds the front end's span and, under it, the worker's queue,
batch and handler spans. Without the variables, nothing of OpenTelemetry is imported."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.models import write_model_dir
from tests.support.servers import finish, start_server

pytestmark = pytest.mark.integration

trace_service = pytest.importorskip(
    "opentelemetry.proto.collector.trace.v1.trace_service_pb2",
    reason="the OTLP/HTTP exporter (opentelemetry-exporter-otlp-proto-http) is not installed")

TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"
WAIT_S = 30.0

ECHO = """
    def handle(data, context):
        if data is None:
            return None
        return [row["body"] for row in data]
    """


class Collector:
    """An OTLP/HTTP trace receiver on loopback: every span it is sent, with its service."""

    def __init__(self) -> None:
        self.spans: list[tuple[dict, object]] = []  # (resource attributes, span)
        collector = self

        class Receiver(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                request = trace_service.ExportTraceServiceRequest.FromString(body)
                for resource_spans in request.resource_spans:
                    resource = {a.key: a.value.string_value
                                for a in resource_spans.resource.attributes}
                    for scope_spans in resource_spans.scope_spans:
                        collector.spans.extend((resource, s) for s in scope_spans.spans)
                reply = trace_service.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}/v1/traces"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def trace(self, trace_id: str) -> dict[str, tuple[dict, object]]:
        return {span.name: (resource, span) for resource, span in self.spans
                if span.trace_id.hex() == trace_id}


@pytest.fixture
def collector():
    receiver = Collector()
    try:
        yield receiver
    finally:
        receiver.close()


def test_one_trace_holds_the_front_end_queue_batch_and_handler(tmp_path, collector):
    env = dict(os.environ, OTEL_TRACES_EXPORTER="otlp", OTEL_SERVICE_NAME="zb-test",
               OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=collector.endpoint,
               OTEL_BSP_SCHEDULE_DELAY="50")
    server = start_server({"echo": write_model_dir(str(tmp_path / "echo"), ECHO)}, env=env)
    try:
        status, headers, body = server.http(
            "POST", "/predictions/echo", b'{"x": 1}',
            {"Content-Type": "application/json",
             "traceparent": f"00-{TRACE_ID}-{CALLER_SPAN}-01"})
        assert status == 200, body
        names = {"POST /predictions/{model_name}", "zerobatch.queue", "zerobatch.batch",
                 "zerobatch.handler"}
        deadline = time.monotonic() + WAIT_S
        while not names <= set(collector.trace(TRACE_ID)):
            assert time.monotonic() < deadline, (
                f"spans of the trace: {sorted(collector.trace(TRACE_ID))}")
            time.sleep(0.05)  # poll interval: the processes export every 50 ms
    finally:
        finish(server)

    spans = collector.trace(TRACE_ID)
    front_resource, front = spans["POST /predictions/{model_name}"]
    worker_resource, queue = spans["zerobatch.queue"]
    _, batch = spans["zerobatch.batch"]
    _, handler = spans["zerobatch.handler"]
    assert front_resource["service.name"] == "zb-test"
    assert front_resource["zerobatch.process"] == "frontend"
    assert worker_resource["zerobatch.process"] == "worker"
    assert front.parent_span_id.hex() == CALLER_SPAN
    assert queue.parent_span_id == front.span_id and batch.parent_span_id == front.span_id
    assert handler.parent_span_id == batch.span_id
    assert front.start_time_unix_nano <= queue.start_time_unix_nano
    assert queue.end_time_unix_nano == batch.start_time_unix_nano
    assert batch.end_time_unix_nano <= front.end_time_unix_nano
    assert headers["x-request-id"] in {a.value.string_value for a in front.attributes}


def test_without_the_variables_nothing_of_opentelemetry_is_imported(tmp_path):
    code = ("import sys\n"
            "from zerobatch.api.http_app import create_app\n"
            "from zerobatch.config import FrontendConfig\n"
            "import zerobatch.worker.service\n"
            "create_app(FrontendConfig(broker_address='ipc:///nowhere'))\n"
            "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))")
    environ = {name: value for name, value in os.environ.items()
               if not name.startswith("OTEL_")}
    out = subprocess.run([sys.executable, "-c", code], env=environ, cwd=tmp_path,
                         capture_output=True, text=True, timeout=60, check=True).stdout
    assert out.strip() == "[]"
