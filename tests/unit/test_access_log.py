"""The access log (api/access_log.py): one line per request of the inference app, in its
documented format, with its fields as `extra`; nothing when it is off."""

from __future__ import annotations

import asyncio
import logging
import re
import time

import falcon
import falcon.asgi
import falcon.testing
import pytest

from zerobatch.api import access_log
from zerobatch.api.access_log import (
    ACCESS_LOGGER,
    MAX_FIELD_CHARS,
    AccessLog,
    model_and_version,
    safe_field,
    utc_time,
)
from zerobatch.api.aio_client import Reply
from zerobatch.api.http_app import create_app
from zerobatch.config import FrontendConfig

#: the documented line, field by field
LINE = re.compile(
    r'\[(?P<time>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z)\] (?P<client>\S+) '
    r'"(?P<method>[A-Z]+) (?P<path>\S+)" (?P<status>\d{3}) (?P<bytes>\d+) '
    r'(?P<latency_ms>\d+\.\d{3})ms model=(?P<model>\S+) version=(?P<version>\S+) '
    r'request_id=(?P<request_id>\S+)$')
FIELDS = {"time", "client", "method", "path", "model", "version", "status", "bytes",
          "latency_ms", "request_id"}


class FakeClient:
    def __init__(self) -> None:
        self.body = b'{"answer": 42}'

    async def control(self, op: str, **kwargs) -> dict:
        return {"status": "Healthy"}

    async def predict_or_stream(self, model: str, body: bytes, **kwargs) -> Reply:
        return Reply(200, "application/json", None, self.body)


@pytest.fixture
def access_records(caplog):
    logger, root = logging.getLogger(ACCESS_LOGGER), logging.getLogger()
    levels = logger.level, root.level
    logger.setLevel(logging.NOTSET)  # as a fresh process has it: AccessLog raises it to INFO
    root.setLevel(logging.WARNING)  # the server's level: the lines come out anyway
    yield lambda: [r for r in caplog.records if r.name == ACCESS_LOGGER]
    logger.setLevel(levels[0])
    root.setLevel(levels[1])


def app_with_log(**overrides):
    config = FrontendConfig(broker_address="ipc:///nowhere", access_log=True, **overrides)
    return create_app(config, FakeClient())


def test_one_line_per_request_in_the_documented_format(access_records):
    client = falcon.testing.TestClient(app_with_log())
    before_s = time.time()
    result = client.simulate_post("/predictions/echo/2.0", body=b"1", remote_addr="10.1.2.3",
                                  headers={"X-Request-ID": "abc-123"})
    assert result.status_code == 200
    [record] = access_records()
    assert record.levelno == logging.INFO
    line = LINE.match(record.getMessage())
    assert line, record.getMessage()
    fields = record.access
    assert set(fields) == FIELDS
    assert {key: line[key] for key in FIELDS} == {key: str(fields[key]) if key != "latency_ms"
                                                  else f"{fields[key]:.3f}" for key in FIELDS}
    assert fields["client"].startswith("10.1.2.3:")
    assert (fields["method"], fields["path"], fields["model"], fields["version"]) == (
        "POST", "/predictions/echo/2.0", "echo", "2.0")
    assert (fields["status"], fields["bytes"], fields["request_id"]) == (
        200, len(b'{"answer": 42}'), "abc-123")
    assert isinstance(fields["latency_ms"], float) and fields["latency_ms"] >= 0
    started = time.mktime(time.strptime(fields["time"][:19], "%Y-%m-%dT%H:%M:%S")) - \
        time.timezone
    assert before_s - 1 <= started <= time.time()


def test_every_request_has_its_line_with_what_it_names(access_records):
    client = falcon.testing.TestClient(app_with_log(max_request_bytes=4))
    client.simulate_get("/ping")
    client.simulate_get("/nowhere", query_string="secret=1")
    client.simulate_post("/predictions/echo", body=b"too large")
    client.simulate_post("/predictions/echo", body=b"1")
    lines = [(r.access["method"], r.access["path"], r.access["status"], r.access["model"],
              r.access["version"]) for r in access_records()]
    assert lines == [("GET", "/ping", 200, "-", "-"), ("GET", "/nowhere", 404, "-", "-"),
                     ("POST", "/predictions/echo", 413, "echo", "-"),
                     ("POST", "/predictions/echo", 200, "echo", "-")]
    ids = [r.access["request_id"] for r in access_records()]
    assert ids[:2] == ["-", "-"] and len(ids[3]) == 32  # a fresh id for a prediction
    assert all(r.access["client"] == "-" for r in access_records())  # no peer address known


def test_client_controlled_fields_cannot_break_the_line(access_records):
    client = falcon.testing.TestClient(app_with_log())
    client.simulate_post('/predictions/a"b%0Aforged line', body=b"1")
    [record] = access_records()
    message = record.getMessage()
    assert "\n" not in message and LINE.match(message), message
    assert record.access["model"] == 'a\\x22b\\nforged\\x20line'


def test_escaping_and_the_other_helpers():
    assert safe_field("/predictions/echo") == "/predictions/echo"
    assert safe_field("a b\"c\td\u00e9") == "a\\x20b\\x22c\\td\\xe9"
    assert safe_field("x" * (MAX_FIELD_CHARS + 10)) == "x" * MAX_FIELD_CHARS + "..."
    assert utc_time(0.25) == "1970-01-01T00:00:00.250Z"
    assert utc_time(1_000_000_000.5) == "2001-09-09T01:46:40.500Z"
    assert model_and_version("/predictions/m") == ("m", "-")
    assert model_and_version("/predictions/m/1.0") == ("m", "1.0")
    assert model_and_version("/predictions/") == ("-", "-")
    assert model_and_version("/predictions/m/1.0/v1/chat") == ("m", "1.0")  # and a url_path
    assert model_and_version("/explanations/m/2") == ("m", "2")
    assert model_and_version("/ping") == ("-", "-")
    # TorchServe's other inference routes (api/inference_routes.py)
    assert model_and_version("/models/m/invoke") == ("m", "-")
    assert model_and_version("/m/predict") == ("m", "-")
    assert model_and_version("/m/1.0/predict/") == ("m", "1.0")
    assert model_and_version("/models/m/predict") == ("-", "-")  # not a legacy path
    assert model_and_version("/invocations") == ("-", "-")  # its model is in the query
    assert model_and_version("/ping/predict") == ("-", "-")  # the health, as TorchServe


def test_a_failing_app_is_logged_500_and_the_failure_goes_on(access_records):
    async def broken(scope, receive, send):
        raise RuntimeError("bug")

    wrapped = AccessLog(broken)
    scope = {"type": "http", "method": "GET", "path": "/x", "raw_path": b"/x",
             "client": ("127.0.0.1", 5)}
    with pytest.raises(RuntimeError):
        asyncio.run(wrapped(scope, None, None))
    [record] = access_records()
    assert (record.access["status"], record.access["bytes"], record.access["client"]) == (
        500, 0, "127.0.0.1:5")


def test_streamed_bodies_are_counted_chunk_by_chunk(access_records):
    async def streaming(scope, receive, send):
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"x-request-id", b"r1")]})
        for chunk in (b"abc", b"de", b""):
            await send({"type": "http.response.body", "body": chunk, "more_body": bool(chunk)})

    sent = []

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/predictions/s",
             "raw_path": b"/predictions/s"}
    asyncio.run(AccessLog(streaming)(scope, None, send))
    [record] = access_records()
    assert (record.access["bytes"], record.access["request_id"], len(sent)) == (5, "r1", 4)


def test_lifespan_passes_through_without_a_line(access_records):
    calls = []

    async def app(scope, receive, send):
        calls.append(scope["type"])

    asyncio.run(AccessLog(app)({"type": "lifespan"}, None, None))
    assert calls == ["lifespan"] and access_records() == []


def test_off_the_app_is_not_wrapped_and_logs_nothing(access_records):
    app = create_app(FrontendConfig(broker_address="ipc:///nowhere"), FakeClient())
    assert isinstance(app, falcon.asgi.App)
    falcon.testing.TestClient(app).simulate_post("/predictions/echo", body=b"1")
    assert access_records() == []
    assert isinstance(app_with_log(), access_log.AccessLog)


def test_in_a_served_process_lines_are_buffered_and_flushed_at_shutdown(monkeypatch):
    """After zerobatch.logs.configure (as a front end runs), create_app's access log writes
    buffered lines in the log's own format; the server's lifespan shutdown flushes them."""
    import io

    from zerobatch import logs

    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(logs.TEXT_FORMAT.format(process="frontend")))
    monkeypatch.setattr(logs, "_configured", (handler, "text", "frontend"))
    app = app_with_log()
    assert app.lines is not None and app.lines.logger_name == ACCESS_LOGGER
    events = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent = []

    async def receive():
        return events.pop(0)

    async def send(message):
        if message["type"] == "lifespan.shutdown.complete":
            sent.append(stream.getvalue())  # what was written when shutdown completed

    async def main():
        body = []

        async def http_send(message):
            body.append(message)

        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": "POST", "path": "/predictions/echo", "raw_path": b"/predictions/echo",
                 "query_string": b"", "headers": [(b"content-length", b"1")],
                 "client": ("127.0.0.1", 4000), "server": ("127.0.0.1", 8080),
                 "scheme": "http", "root_path": ""}

        async def http_receive():
            return {"type": "http.request", "body": b"1", "more_body": False}

        await app(scope, http_receive, http_send)
        assert stream.getvalue() == ""  # held: the timer has not fired
        await app({"type": "lifespan", "asgi": {"version": "3.0"}}, receive, send)

    asyncio.run(main())
    (written,) = sent
    (line,) = written.splitlines()
    assert " INFO frontend[" in line and " zerobatch.access: " in line
    assert LINE.search(line.split(" zerobatch.access: ", 1)[1]).group("status") == "200"
