"""errors.client_safe, and the two places a worker's or handler's text reaches a client through
it: the broker's model-load failures (503) and the worker's error answers (500, 4xx, 507).
The server's own logs keep the full text."""

from __future__ import annotations

import logging

import pytest

from tests.models import write_model_dir
from tests.support.fake_worker_broker import decode_answers, item
from zerobatch import protocol as p
from zerobatch.broker import aggregator
from zerobatch.broker.core import BrokerCore
from zerobatch.config import ModelConfig
from zerobatch.errors import client_safe
from zerobatch.worker.service import Service

SECRET = "/srv/secret-layout/run/models/m-0123abcd"


@pytest.mark.parametrize("text, safe", [
    (f"{SECRET}/handler.py", "handler.py"),
    (f"handler 'h.py' of {SECRET}/MAR-INF/MANIFEST.json failed to initialize",
     "handler 'h.py' of MANIFEST.json failed to initialize"),
    (f"FileNotFoundError: [Errno 2] No such file or directory: '{SECRET}/w eights.pt'",
     "FileNotFoundError: [Errno 2] No such file or directory: 'w eights.pt'"),
    (f'File "{SECRET}/handler.py", line 3, in handle', 'File "handler.py", line 3, in handle'),
    (f"cannot open `{SECRET}/x.bin`", "cannot open `x.bin`"),
    (f"(in {SECRET}/a.py:12)", "(in a.py:12)"),
    (f"dir {SECRET}/ is gone", "dir m-0123abcd is gone"),
    (f"PYTHONPATH={SECRET}/lib:{SECRET}/deps", "PYTHONPATH=deps"),
    (f"see file://{SECRET}/doc.txt", "see doc.txt"),
    # not paths: left as they are
    ("ValueError: asked to fail", "ValueError: asked to fail"),
    ("see http://example.com/a/b and s3://bucket/key", "see http://example.com/a/b and "
                                                         "s3://bucket/key"),
    ("1/2 of the batch, and/or x / y", "1/2 of the batch, and/or x / y"),
    ("relative models/m/handler.py", "relative models/m/handler.py"),
    ("the root / alone", "the root / alone"),
])
def test_client_safe_cuts_absolute_paths_to_their_last_component(text, safe):
    assert client_safe(text) == safe


# ------------------------------------------------------------------ broker: load failures

@pytest.fixture
def core() -> BrokerCore:
    core = BrokerCore(aggregator.load("python"), max_request_bytes=1000)
    core.add_model(ModelConfig(name="m", path="/nowhere", batch_size=1))
    return core


def load_failed(core: BrokerCore, error: str) -> None:
    core.on_back([b"m@1.0#0.1"] + p.encode_load_failed("m", "1.0", "m@1.0#0.1", error), 0)


def request(core: BrokerCore, rid: bytes) -> list[str]:
    """The error messages a client gets for one request."""
    core.on_front([b"client"] + p.encode_request(rid, p.encode_route("m", None, 0),
                                                 p.encode_meta("text/plain"), b"x"), 0)
    out, core.out_front = core.out_front, []
    return [p.parse_error_info(a)[1] for m in out
            for command, _rid, a, _body in p.parse_client_replies(m[1:]) if command == p.ERROR]


def test_a_load_failure_reaches_clients_without_server_paths(core, caplog):
    error = (f"handler 'handler.py' of {SECRET}/MAR-INF/MANIFEST.json failed to initialize: "
             f"FileNotFoundError: [Errno 2] No such file or directory: '{SECRET}/w.pt'")
    with caplog.at_level(logging.ERROR, logger="zerobatch.broker"):
        load_failed(core, error)
    (message,) = request(core, b"r1")
    assert SECRET not in message and "/srv" not in message
    assert "MANIFEST.json failed to initialize" in message and "'w.pt'" in message
    assert message.startswith("model m/1.0 failed to load in worker m@1.0#0.1: ")
    assert SECRET not in core.describe()["models"][0]["loadError"]
    assert error in caplog.text  # the broker's log keeps the whole story


# ------------------------------------------------------------------ worker: handler errors

def run(service: Service) -> list:
    frames = service.run_batch(1, [item('"x"')])
    return decode_answers(p.split_worker_reply(frames)[1])


def test_a_handler_exception_reaches_clients_without_server_paths(tmp_path, caplog):
    model_dir = write_model_dir(str(tmp_path / "model"), """
        import os

        def handle(data, context):
            if data is None:
                return None
            open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "missing.bin"))
        """)
    service = Service.load(ModelConfig("test", model_dir, batch_size=1))
    with caplog.at_level(logging.ERROR):
        (reply,) = run(service)
    assert (reply.kind, reply.code, reply.status) == ("error", "handler_error", 500)
    assert reply.message == ("FileNotFoundError: [Errno 2] No such file or directory: "
                             "'missing.bin'")
    assert str(tmp_path) in caplog.text  # the worker's log keeps the full path


def test_a_prediction_exception_message_loses_server_paths_and_keeps_its_status(tmp_path):
    model_dir = write_model_dir(str(tmp_path / "model"), """
        import os

        class PredictionException(Exception):
            def __init__(self, message, error_code=500):
                super().__init__(message)
                self.message, self.error_code = message, error_code

        def handle(data, context):
            if data is None:
                return None
            raise PredictionException(f"no labels in {os.path.abspath(__file__)}", 422)
        """)
    service = Service.load(ModelConfig("test", model_dir, batch_size=1))
    (reply,) = run(service)
    assert (reply.code, reply.status, reply.message) == ("prediction_error", 422,
                                                         "no labels in handler.py")
