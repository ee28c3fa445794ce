"""zerobatch against TorchServe 0.12.0's recorded answers on the routes that carry more than a
model name: the segments after a version (the `url_path` header) and explanations; and on the
rest of TorchServe's inference routes and methods (api/inference_routes.py): any method on
/predictions and /explanations, OPTIONS (a model's own API description), /invocations,
/models/{model}/invoke, the legacy /{model}/predict, and an upload over the size limit that
expects 100-continue.

The archives are the ones tests/torchserve/record_routes.py packed for TorchServe, built here
with the real torch-model-archiver; each stored request is replayed against zerobatch and
the answer compared with TorchServe's: status, content type (none when the handler set none,
as in TorchServe) and body bytes. TorchServe's error bodies belong to the error answers' own
tests, so for an error only the status is compared here (for a failing handler, only that it
is a 5xx). KServe v1 (`:predict`, `:explain`) is compared as JSON: zerobatch answers the same
values compactly, where TorchServe's kserve envelope pretty-prints them (docs/kserve.md). The
other routes' answers are compared byte for byte, with the content type of an error and of
OPTIONS, and a HEAD's Content-Length.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import sys

import pytest

from tests.support import torchserve_answers
from tests.support.servers import finish, start_server
from tests.torchserve.record_routes import (
    CASES,
    EXPECT_CASE,
    EXPECT_LENGTH,
    KSERVE_CASES,
    METHOD_CASES,
    SINGLE_MODEL_CASES,
    build_archives,
)

pytestmark = pytest.mark.integration

REAL_ARCHIVER = os.path.join(os.path.dirname(sys.executable), "torch-model-archiver")
ANSWERS = torchserve_answers.load("routes")


@pytest.fixture(scope="module")
def archives(tmp_path_factory) -> dict[str, str]:
    store = tmp_path_factory.mktemp("store")
    return {name: str(store / archive)
            for name, archive in build_archives(str(store), REAL_ARCHIVER).items()}


@pytest.fixture(scope="module")
def server(archives):
    started = start_server(archives)
    yield started
    finish(started)


@pytest.fixture(scope="module")
def single_server(archives):
    """zerobatch serving one model, as TorchServe did for SINGLE_MODEL_CASES."""
    started = start_server({"answers": archives["answers"]})
    yield started
    finish(started)


def replay(server, case: str) -> tuple[int, dict, bytes, dict]:
    recorded = ANSWERS[case]
    request = recorded["request"]
    status, headers, body = server.http(request["method"], request["path"],
                                        base64.b64decode(request["body_b64"]),
                                        request["headers"])
    return status, {name.lower(): value for name, value in headers.items()}, body, recorded


def test_every_case_was_recorded():
    assert set(ANSWERS) == (set(CASES) | set(KSERVE_CASES) | set(METHOD_CASES)
                            | set(SINGLE_MODEL_CASES) | {EXPECT_CASE})


@pytest.mark.parametrize("case", sorted(CASES))
def test_answer_is_torchserves(server, case):
    status, headers, body, recorded = replay(server, case)
    if recorded["status"] >= 500:  # a failing handler: its answer is the error issue's
        assert status >= 500, (status, body)
        return
    if recorded["status"] >= 400:
        assert status == recorded["status"], (status, body)
        return
    # the content type too: none where the handler set none, as in TorchServe
    torchserve_answers.assert_same_answer(status, headers, body, recorded)


@pytest.mark.parametrize("case", sorted(KSERVE_CASES))
def test_kserve_v1_answer_is_torchserves_envelope(server, case):
    status, _headers, body, recorded = replay(server, case)
    assert status == recorded["status"], body
    assert json.loads(body) == json.loads(torchserve_answers.body(recorded))


def test_the_url_path_reaches_the_handler_without_its_slashes(server):
    status, _headers, body = server.http("POST", "/predictions/echo/1.0/v1/chat/completion/",
                                         b"x")
    assert status == 200, body
    assert json.loads(body) == {"url_path": "v1/chat/completion", "explain": "False"}



def assert_torchserves_answer(server, case: str) -> None:
    """Status and body bytes; the content type of an error and of OPTIONS (a handler's own
    answers' content type has its own test); a HEAD's Content-Length (it has no body)."""
    status, headers, body, recorded = replay(server, case)
    method = recorded["request"]["method"]
    compared = ("content-type",) if recorded["status"] >= 400 or method == "OPTIONS" else ()
    torchserve_answers.assert_same_answer(status, headers, body, recorded, compared)
    if method == "HEAD":
        assert headers.get("content-length") == recorded["headers"]["content-length"]


@pytest.mark.parametrize("case", sorted(METHOD_CASES))
def test_other_routes_and_methods_answer_as_torchserve(server, case):
    assert_torchserves_answer(server, case)


@pytest.mark.parametrize("case", sorted(SINGLE_MODEL_CASES))
def test_invocations_with_one_model_answer_as_torchserve(single_server, case):
    assert_torchserves_answer(single_server, case)


def test_an_upload_over_the_limit_expecting_100_continue_is_answered_as_torchserve(server):
    """413 with no body and no Content-Type (Netty's HttpObjectAggregator); zerobatch also
    closes the connection, where TorchServe keeps it open and drops the body."""
    recorded = ANSWERS[EXPECT_CASE]
    head = (f"POST /predictions/answers HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Length: {EXPECT_LENGTH}\r\n"
            f"Expect: 100-continue\r\n\r\n").encode()
    received = b""
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=10) as sock:
        sock.sendall(head)
        while chunk := sock.recv(65536):  # until zerobatch closes
            received += chunk
    status_line, _, rest = received.partition(b"\r\n")
    fields, _, body = rest.partition(b"\r\n\r\n")
    headers = dict((name.strip().lower(), value.strip()) for name, _, value in
                   (line.decode().partition(":") for line in fields.split(b"\r\n") if line))
    assert int(status_line.split()[1]) == recorded["status"] == 413
    assert headers["content-length"] == recorded["headers"]["content-length"] == "0"
    assert "content-type" not in headers and "content-type" not in recorded["headers"]
    assert body == torchserve_answers.body(recorded) == b""
    assert headers["connection"] == "close" and not recorded["closed"]
