"""Tracing (zerobatch/tracing.py, api/request_tracing.py, worker/tracing.py) with
OpenTelemetry's in-memory span exporter: the front end's span under the caller's traceparent,
the headers it forwards, and a worker's queue, batch and handler spans under them (across
real processes: tests/integration/test_tracing.py)."""

from __future__ import annotations

import json
import time

import falcon.testing
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from tests.models import write_model_dir
from tests.support.fake_worker_broker import decode_answers, item
from zerobatch import protocol, tracing
from zerobatch.api.aio_client import Reply
from zerobatch.api.http_app import create_app
from zerobatch.config import FrontendConfig, ModelConfig
from zerobatch.errors import HandlerError, ModelNotFound
from zerobatch.worker.service import Service

#: the caller's span: trace 0af7..., span b7ad...
TRACE_ID = "0af7651916cd43dd8448eb211c80319c"
CALLER_SPAN = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE_ID}-{CALLER_SPAN}-01"

ECHO = """
    def handle(data, context):
        if data is None:  # TorchServe calls a function handler once to initialize
            return None
        return [row["body"] for row in data]
"""


def by_name(exporter: InMemorySpanExporter) -> dict:
    return {span.name: span for span in exporter.get_finished_spans()}


# ------------------------------------------------------------------ configuration

@pytest.mark.parametrize("environ, expected", [
    ({}, False),
    ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
    ({"OTEL_TRACES_EXPORTER": "console"}, True),
    ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318"}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, True),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, True),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318", "OTEL_SDK_DISABLED": "true"}, False),
    ({"OTEL_SERVICE_NAME": "only-a-name"}, False),
])
def test_tracing_is_on_when_the_standard_variables_say_where_spans_go(environ, expected):
    assert tracing.configured(environ) is expected


def test_an_exporter_it_does_not_know_turns_tracing_off(caplog):
    tracing.reset_for_tests()
    try:
        assert tracing.tracer("test", {"OTEL_TRACES_EXPORTER": "zipkin"}) is None
    finally:
        tracing.reset_for_tests()
    assert "zipkin is not supported" in caplog.text


# ------------------------------------------------------------------ the front end

class HeaderKeeper:
    """The AsyncClient calls the app makes: predictions answer `outcome` and keep the
    headers they were asked to forward."""

    def __init__(self) -> None:
        self.outcome: Reply | Exception = Reply(200, "application/json", None, b"{}")
        self.forwarded: list[dict] = []

    async def control(self, op: str, **args) -> dict:
        return {"status": "Healthy"}

    async def predict_or_stream(self, model: str, body: bytes, *, headers: dict,
                                **kwargs) -> Reply:
        self.forwarded.append(dict(headers))
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome


def traced_client(keeper: HeaderKeeper) -> falcon.testing.TestClient:
    return falcon.testing.TestClient(
        create_app(FrontendConfig(broker_address="ipc:///nowhere"), keeper))


def test_the_front_ends_span_continues_the_callers_trace(spans):
    keeper = HeaderKeeper()
    client = traced_client(keeper)
    before_ns = time.time_ns()
    result = client.simulate_post("/predictions/echo/2.0", body=b"1", headers={
        "traceparent": TRACEPARENT, "x-request-id": "caller-7"})
    assert result.status_code == 200
    (span,) = spans.get_finished_spans()
    assert span.name == "POST /predictions/{model_name}/{model_version}"
    assert span.kind is SpanKind.SERVER
    assert format(span.context.trace_id, "032x") == TRACE_ID
    assert format(span.parent.span_id, "016x") == CALLER_SPAN
    assert span.attributes["zerobatch.model"] == "echo"
    assert span.attributes["zerobatch.model_version"] == "2.0"
    assert span.attributes["http.response.status_code"] == 200
    assert span.attributes["zerobatch.request_id"] == "caller-7"
    assert span.status.status_code is StatusCode.UNSET
    # the worker gets this span as its parent, and the time of the send
    (forwarded,) = keeper.forwarded
    assert forwarded["traceparent"] == (
        f"00-{TRACE_ID}-{format(span.context.span_id, '016x')}-01")
    assert before_ns <= int(forwarded[tracing.SENT_HEADER]) <= time.time_ns()


def test_a_traced_request_keeps_torchserves_url_path_and_explain_headers(spans):
    keeper = HeaderKeeper()
    client = traced_client(keeper)
    assert client.simulate_post("/explanations/echo/2.0/v1/chat", body=b"1").status_code == 200
    assert client.simulate_post("/predictions/echo", body=b"1").status_code == 200
    explained, predicted = keeper.forwarded
    assert (explained["url_path"], explained["explain"]) == ("v1/chat", "True")
    assert (predicted["url_path"], predicted["explain"]) == ("", "False")
    assert tracing.SENT_HEADER in explained and "traceparent" in explained
    assert sorted(span.name for span in spans.get_finished_spans()) == [
        "POST /explanations/{model_name}/{model_version}/{url_path:path}",
        "POST /predictions/{model_name}"]


def test_without_a_traceparent_the_front_end_starts_the_trace(spans):
    keeper = HeaderKeeper()
    assert traced_client(keeper).simulate_post("/predictions/echo", body=b"1").status_code == 200
    (span,) = spans.get_finished_spans()
    assert span.parent is None and span.name == "POST /predictions/{model_name}"
    assert keeper.forwarded[0]["traceparent"].split("-")[1] == format(
        span.context.trace_id, "032x")


@pytest.mark.parametrize("error, status, is_error", [
    (HandlerError("boom"), 503, True),  # TorchServe's "Prediction failed"
    (ModelNotFound("Model not found: nope"), 404, False),
])
def test_an_error_answer_ends_the_span_with_its_status(spans, error, status, is_error):
    keeper = HeaderKeeper()
    keeper.outcome = error
    result = traced_client(keeper).simulate_post("/predictions/echo", body=b"1",
                                                 headers={"traceparent": TRACEPARENT})
    assert result.status_code == status
    (span,) = spans.get_finished_spans()
    assert span.attributes["http.response.status_code"] == status
    assert (span.status.status_code is StatusCode.ERROR) is is_error


def test_a_refusal_before_the_send_forwards_nothing(spans):
    keeper = HeaderKeeper()
    result = traced_client(keeper).simulate_post(
        "/predictions/echo", body=b"1", headers={"x-zerobatch-timeout-ms": "soon"})
    assert result.status_code == 400
    assert keeper.forwarded == []
    (span,) = spans.get_finished_spans()
    assert span.attributes["http.response.status_code"] == 400


# ------------------------------------------------------------------ the worker

def run_traced_batch(tmp_path, headers_per_request):
    service = Service.load(ModelConfig("echo", write_model_dir(str(tmp_path / "m"), ECHO),
                                       version="3.0", batch_size=8))
    frames = service.run_batch(41, [item(json.dumps(i), headers=headers, request_id=f"r{i}")
                                    for i, headers in enumerate(headers_per_request)])
    _batch_id, flat = protocol.split_worker_reply(frames)
    return decode_answers(flat)


def test_a_worker_hangs_queue_batch_and_handler_spans_under_each_request(spans, tmp_path):
    front_end_span = "00f067aa0ba902b7"
    sent_ns = time.time_ns() - 5_000_000
    traced = {"traceparent": f"00-{TRACE_ID}-{front_end_span}-01",
              tracing.SENT_HEADER: str(sent_ns)}
    other_trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    replies = run_traced_batch(tmp_path, [
        traced, None, {"traceparent": f"00-{other_trace}-{CALLER_SPAN}-01"}])
    assert [r.kind for r in replies] == ["reply"] * 3

    finished = spans.get_finished_spans()
    # two traced requests: queue, batch and handler for the first; no send time for the
    # third, so no queue span; nothing for the untraced one
    assert sorted(s.name for s in finished) == [
        "zerobatch.batch", "zerobatch.batch", "zerobatch.handler", "zerobatch.handler",
        "zerobatch.queue"]
    first = {s.name: s for s in finished if format(s.context.trace_id, "032x") == TRACE_ID}
    queue, batch, handler = (first["zerobatch.queue"], first["zerobatch.batch"],
                             first["zerobatch.handler"])
    assert format(queue.parent.span_id, "016x") == front_end_span
    assert format(batch.parent.span_id, "016x") == front_end_span
    assert handler.parent.span_id == batch.context.span_id
    assert queue.start_time == sent_ns and queue.end_time == batch.start_time
    assert batch.start_time <= handler.start_time <= handler.end_time <= batch.end_time
    assert batch.attributes["zerobatch.batch.size"] == 3
    assert batch.attributes["zerobatch.batch.id"] == 41
    assert batch.attributes["zerobatch.model"] == "echo"
    assert batch.attributes["zerobatch.model_version"] == "3.0"
    assert handler.attributes["zerobatch.handler.calls"] == 1


@pytest.mark.parametrize("sent", ["soon", str(10**9), str(time.time_ns() + 60 * 10**9)])
def test_a_send_time_that_cannot_be_right_makes_no_queue_span(spans, tmp_path, sent):
    run_traced_batch(tmp_path, [{"traceparent": TRACEPARENT, tracing.SENT_HEADER: sent}])
    assert sorted(by_name(spans)) == ["zerobatch.batch", "zerobatch.handler"]
