"""The HTTP inference app in process (falcon's ASGIConductor, lifespan included) over a real
AsyncClient to a fake broker thread: what reaches the broker, what the caller gets back, and
every error as TorchServe-shaped JSON."""

from __future__ import annotations

import asyncio

import falcon.testing
import pytest

import zerobatch.api.client_helpers as client_helpers
import zerobatch.api.http_app as http_app
from tests.support.fake_client_broker import (
    FakeBroker,
    control_reply,
    error_frames,
    reply_frames,
)
from zerobatch import errors, protocol, tracing
from zerobatch.api.http_app import create_app
from zerobatch.config import FrontendConfig

WAIT_S = 10.0


def config_for(broker, **overrides) -> FrontendConfig:
    return FrontendConfig(broker_address=broker.address, **overrides)


def simulate(app, *calls):
    """Run (method, path, kwargs) calls through one app lifespan; return the results."""
    async def main():
        async with falcon.testing.ASGIConductor(app) as conductor:
            return [await conductor.simulate_request(method, path, **kwargs)
                    for method, path, kwargs in calls]
    return asyncio.run(asyncio.wait_for(main(), WAIT_S))


def call(app, method, path, **kwargs):
    return simulate(app, (method, path, kwargs))[0]


@pytest.fixture
def silent_broker():
    fake = FakeBroker()
    yield fake
    fake.close()


def assert_error(result, status, type_name, message_part=""):
    assert result.status_code == status
    assert result.headers["content-type"] == "application/json"
    body = result.json
    assert set(body) == {"code", "type", "message"}
    assert body["code"] == status and body["type"] == type_name
    assert message_part in body["message"]


# ---------------------------------------------------------------- ping

def test_ping_healthy(echo_broker):
    result = call(create_app(config_for(echo_broker)), "GET", "/ping")
    assert result.status_code == 200 and result.json == {"status": "Healthy"}
    assert echo_broker.next().control == {"op": "ping"}


def test_ping_unhealthy_when_the_broker_is_silent(silent_broker, monkeypatch):
    monkeypatch.setattr(http_app, "PING_TIMEOUT_MS", 50)
    result = call(create_app(config_for(silent_broker)), "GET", "/ping")
    assert result.status_code == 500 and result.json == {"status": "Unhealthy"}


@pytest.mark.parametrize("verdict, status", [("Unhealthy", 500), ("Partial Healthy", 200),
                                             ("something else", 200)])
def test_ping_reports_the_brokers_verdict(verdict, status):
    with FakeBroker(lambda m: control_reply(m.rid, {"status": verdict})) as fake:
        result = call(create_app(config_for(fake)), "GET", "/ping")
    assert result.status_code == status
    assert result.json == {"status": verdict if verdict != "something else" else "Healthy"}


# ---------------------------------------------------------------- predictions

@pytest.mark.parametrize("body, content_type, wire_type", [
    (b'{"data": [1, 2]}', "application/json", "application/json"),
    ("plain words".encode(), "text/plain; charset=utf-8", "text/plain; charset=utf-8"),
    (bytes(range(256)), None, "application/octet-stream"),
    (b"--XyZ\r\nContent-Disposition: form-data; name=\"data\"\r\n\r\n1\r\n--XyZ--\r\n",
     "multipart/form-data; boundary=XyZ", "multipart/form-data; boundary=XyZ"),
])
def test_prediction_passes_body_type_headers_and_request_id(echo_broker, body, content_type,
                                                           wire_type):
    headers = {"X-Custom-Thing": "Value"}
    if content_type:
        headers["Content-Type"] = content_type
    app = create_app(config_for(echo_broker, default_timeout_ms=4321))
    result = call(app, "POST", "/predictions/digits", body=body, headers=headers)
    msg = echo_broker.next()
    assert msg.route == ("digits", None, 4321)
    assert msg.body == body
    assert msg.content_type == wire_type
    assert msg.headers["x-custom-thing"] == "Value"
    assert all(name == name.lower() for name in msg.headers)
    assert len(msg.request_id) == 32 and int(msg.request_id, 16) >= 0
    assert result.status_code == 200
    assert result.headers["x-request-id"] == msg.request_id
    assert result.content == body
    # the reply names the body's type, but no handler set a content-type header: none, as
    # TorchServe sends none
    assert "content-type" not in result.headers


def test_version_path_and_put(echo_broker):
    app = create_app(config_for(echo_broker))
    first, second = simulate(app, ("POST", "/predictions/m/2.0", {"body": b"a"}),
                             ("PUT", "/predictions/m", {"body": b"b"}))
    assert first.status_code == 200 and second.status_code == 200
    versioned, unversioned = echo_broker.take(2)
    assert versioned.route[:2] == ("m", "2.0") and unversioned.route[:2] == ("m", None)
    assert unversioned.body == b"b"


def test_the_path_after_the_version_is_the_url_path_header(echo_broker):
    app = create_app(config_for(echo_broker))
    simulate(app, ("POST", "/predictions/m/1.0/v1/chat/completion/", {"body": b"a"}),
             ("PUT", "/predictions/m/1.0", {"body": b"b", "headers": {
                 "url_path": "spoofed", "explain": "True"}}),
             ("POST", "/explanations/m/2.0/deep/er", {"body": b"c"}),
             ("POST", "/explanations/m", {"body": b"d"}))
    chat, plain, deep, explained = echo_broker.take(4)
    assert chat.route[:2] == ("m", "1.0") and explained.route[:2] == ("m", None)
    assert deep.route[:2] == ("m", "2.0") and deep.body == b"c"
    assert [(msg.headers["url_path"], msg.headers["explain"])
            for msg in (chat, plain, deep, explained)] == [
        ("v1/chat/completion", "False"), ("", "False"), ("deep/er", "True"), ("", "True")]
    assert tracing.SENT_HEADER not in chat.headers  # only a traced front end stamps the send


def test_reply_status_type_and_headers_come_back():
    def handler(msg):
        return reply_frames(msg.rid, b"a,b\n1,2\n", status=201, content_type="text/csv",
                            headers={"x-worker": "w1", "cache-control": "no-store",
                                     "content-type": "text/csv"})
    with FakeBroker(handler) as fake:
        result = call(create_app(config_for(fake)), "POST", "/predictions/m", body=b"x")
    assert result.status_code == 201
    assert result.headers["content-type"] == "text/csv"
    assert result.headers["x-worker"] == "w1"
    assert result.headers["cache-control"] == "no-store"
    assert result.content == b"a,b\n1,2\n"


def test_reply_whose_handler_set_no_content_type_has_none():
    """The codec's type (the reply meta's content_type) is for ZeroMQ clients; over HTTP,
    TorchServe sends a Content-Type only when the handler set one."""
    def handler(msg):
        return reply_frames(msg.rid, b"[0.5]", content_type="application/json")
    with FakeBroker(handler) as fake:
        result = call(create_app(config_for(fake)), "POST", "/predictions/m", body=b"x")
    assert "content-type" not in result.headers and result.json == [0.5]


@pytest.mark.parametrize("header, expected_ms", [("250", 250), ("999999", 5000)])
def test_timeout_header_shortens_the_deadline(echo_broker, header, expected_ms):
    app = create_app(config_for(echo_broker, default_timeout_ms=5000))
    result = call(app, "POST", "/predictions/m", body=b"x",
                  headers={"X-Zerobatch-Timeout-Ms": header})
    assert result.status_code == 200
    assert echo_broker.next().route == ("m", None, expected_ms)


@pytest.mark.parametrize("header", ["abc", "0", "-5", "1.5", ""])
def test_bad_timeout_header_is_400(echo_broker, header):
    app = create_app(config_for(echo_broker))
    result = call(app, "POST", "/predictions/m", body=b"x",
                  headers={"x-zerobatch-timeout-ms": header})
    assert_error(result, 400, "BadRequestException", "x-zerobatch-timeout-ms")
    assert result.headers["x-request-id"]
    assert echo_broker.received.empty()


def test_body_over_the_limit_is_413(echo_broker):
    app = create_app(config_for(echo_broker, max_request_bytes=10))
    small, big = simulate(app, ("POST", "/predictions/m", {"body": b"x" * 10}),
                          ("POST", "/predictions/m", {"body": b"x" * 11}))
    assert small.status_code == 200
    # TorchServe's (Netty's) 413: no body, no content type
    assert (big.status_code, big.content, big.headers.get("content-type")) == (413, b"", None)
    assert echo_broker.next().body == b"x" * 10
    assert echo_broker.received.empty()


def test_body_over_the_limit_in_detail(echo_broker):
    app = create_app(config_for(echo_broker, max_request_bytes=10, zerobatch_answers=True))
    (big,) = simulate(app, ("POST", "/predictions/m", {"body": b"x" * 11}))
    assert_error(big, 413, "RequestTooLarge", "10 bytes")
    assert echo_broker.received.empty()


# ---------------------------------------------------------------- errors

ERRORS = [
    ("model_not_found", 404, "ModelNotFound"),
    ("queue_full", 503, "QueueFull"),
    ("deadline_exceeded", 504, "DeadlineExceeded"),
    ("handler_error", 500, "HandlerError"),
    ("broker_unavailable", 503, "BrokerUnavailable"),
    ("worker_lost", 503, "WorkerLost"),
    ("bad_request", 400, "BadRequest"),
]


@pytest.mark.parametrize("code, status, type_name", ERRORS, ids=[e[0] for e in ERRORS])
def test_detailed_error_replies_become_json_with_their_status(code, status, type_name):
    with FakeBroker(lambda m: error_frames(m.rid, code, f"it failed: {code}", status)) as fake:
        result = call(create_app(config_for(fake, zerobatch_answers=True)), "POST",
                      "/predictions/m", body=b"x")
    assert_error(result, status, type_name, f"it failed: {code}")
    assert len(result.headers["x-request-id"]) == 32


#: the same errors in TorchServe's words, by default (tests/integration/
#: test_torchserve_answers.py compares them with TorchServe's own answers)
TORCHSERVE_ERRORS = [
    ("model_not_found", 404, "ModelNotFoundException", "Model not found: m"),
    ("queue_full", 503, "ServiceUnavailableException",
     'Model "m" has no worker to serve inference request.'),
    ("deadline_exceeded", 504, "DeadlineExceeded", "it failed"),
    ("handler_error", 503, "InternalServerException", "Prediction failed"),
    ("broker_unavailable", 503, "ServiceUnavailableException", "it failed"),
    ("worker_lost", 500, "InternalServerException", "Worker died."),
    ("bad_request", 400, "BadRequestException", "it failed"),
]


@pytest.mark.parametrize("code, status, type_name, message", TORCHSERVE_ERRORS,
                         ids=[e[0] for e in TORCHSERVE_ERRORS])
def test_error_replies_answer_as_torchserve(code, status, type_name, message):
    wire_status = dict((e[0], e[1]) for e in ERRORS)[code]
    with FakeBroker(lambda m: error_frames(m.rid, code, f"it failed: {code}",
                                           wire_status)) as fake:
        result = call(create_app(config_for(fake)), "POST", "/predictions/m", body=b"x")
    assert_error(result, status, type_name, message)
    assert result.content.endswith(b"\n}\n")  # Gson's pretty printing, then a newline


def test_status_on_the_wire_is_kept():
    with FakeBroker(lambda m: error_frames(m.rid, "prediction_error", "bad input", 422)) as f:
        result = call(create_app(config_for(f)), "POST", "/predictions/m", body=b"x")
    assert_error(result, 422, "InternalServerException", "bad input")
    with FakeBroker(lambda m: error_frames(m.rid, "prediction_error", "bad input", 422)) as f:
        result = call(create_app(config_for(f, zerobatch_answers=True)), "POST",
                      "/predictions/m", body=b"x")
    assert_error(result, 422, "PredictionError", "bad input")


def test_silent_broker_is_a_504(silent_broker, monkeypatch):
    monkeypatch.setattr(client_helpers, "GRACE_MS", 20)
    app = create_app(config_for(silent_broker))
    result = call(app, "POST", "/predictions/m", body=b"x",
                  headers={"x-zerobatch-timeout-ms": "30"})
    assert_error(result, 504, "DeadlineExceeded")


def test_unknown_path_and_wrong_method_are_json(echo_broker):
    app = create_app(config_for(echo_broker))
    missing, unnamed, wrong = simulate(app, ("GET", "/nope", {}),
                                       ("POST", "/explanations/", {"body": b"x"}),
                                       # TorchServe predicts whatever the method; CONNECT
                                       # (a tunnel) is refused here
                                       ("CONNECT", "/predictions/m", {}))
    # TorchServe's words (ResourceNotFoundException.java, MethodNotAllowedException.java)
    assert_error(missing, 404, "ResourceNotFoundException", "not found")
    assert_error(unnamed, 404, "ResourceNotFoundException")
    assert_error(wrong, 405, "MethodNotAllowedException")
    assert "POST" in wrong.headers["allow"]


class _ExplodingClient:
    def __init__(self, exc):
        self.exc = exc

    async def predict(self, *args, **kwargs):
        raise self.exc

    predict_or_stream = predict

    async def control(self, *args, **kwargs):
        raise self.exc


def test_unexpected_exception_is_a_logged_500_json(echo_broker, caplog):
    app = create_app(config_for(echo_broker), client=_ExplodingClient(KeyError("boom")))
    result = call(app, "POST", "/predictions/m", body=b"x")
    assert_error(result, 500, "InternalServerError", "KeyError")
    assert any("unexpected error" in r.message for r in caplog.records)


def test_injected_client_errors_and_ping_failure(echo_broker):
    app = create_app(config_for(echo_broker),
                     client=_ExplodingClient(errors.BrokerUnavailable("down")))
    predicted, pinged = simulate(app, ("POST", "/predictions/m", {"body": b"x"}),
                                 ("GET", "/ping", {}))
    assert_error(predicted, 503, "ServiceUnavailableException", "down")
    assert pinged.status_code == 500 and pinged.json == {"status": "Unhealthy"}


def test_each_lifespan_makes_and_closes_its_own_client(echo_broker):
    app = create_app(config_for(echo_broker))
    assert call(app, "GET", "/ping").status_code == 200
    assert call(app, "GET", "/ping").status_code == 200  # a fresh client after a shutdown


def test_a_streamed_reply_is_sent_chunked_in_order():
    brokers = []

    def streaming(msg):
        fake = brokers[0]
        for part in (b"one,", b"two,"):
            fake.send(msg.identity, reply_frames(msg.rid, part, status=200,
                                                 content_type="text/plain",
                                                 command=protocol.PARTIAL))
        fake.send(msg.identity, reply_frames(msg.rid, b"end", content_type="text/plain"))

    with FakeBroker(streaming) as fake:
        brokers.append(fake)
        result = call(create_app(config_for(fake)), "POST", "/predictions/m", body=b"x")
    # TorchServe's recorded stream carries ts_stream_next and no content type
    assert (result.status_code, result.headers.get("content-type")) == (200, None)
    assert result.headers["ts_stream_next"] == "true"
    assert result.content == b"one,two,end"
    assert "content-length" not in result.headers
