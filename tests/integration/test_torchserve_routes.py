"""zerobatch against TorchServe 0.12.0's recorded answers on the routes that carry more than a
model name: the segments after a version (the `url_path` header) and explanations.

The archives are the ones tests/torchserve/record_routes.py packed for TorchServe, built here
with the real torch-model-archiver; each stored request is replayed against zerobatch and
the answer compared with TorchServe's: status, content type and body bytes. TorchServe's
error bodies belong to the error answers' own tests, so for an error only the status is
compared here (for a failing handler, only that it is a 5xx). KServe v1 (`:predict`,
`:explain`) is compared as JSON: zerobatch answers the same values compactly, where
TorchServe's kserve envelope pretty-prints them (docs/kserve.md).
"""

from __future__ import annotations

import base64
import json
import os
import sys

import pytest

from tests.support import torchserve_answers
from tests.support.servers import finish, start_server
from tests.torchserve.record_routes import CASES, KSERVE_CASES, build_archives

pytestmark = pytest.mark.integration

REAL_ARCHIVER = os.path.join(os.path.dirname(sys.executable), "torch-model-archiver")
ANSWERS = torchserve_answers.load("routes")
#: TorchServe sends no Content-Type with a handler's JSON answer; zerobatch names it
#: (docs/from-torchserve.md lists the difference)
UNNAMED_JSON = "application/json"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    store = tmp_path_factory.mktemp("store")
    archives = build_archives(str(store), REAL_ARCHIVER)
    started = start_server({name: str(store / archive) for name, archive in archives.items()})
    yield started
    finish(started)


def replay(server, case: str) -> tuple[int, dict, bytes, dict]:
    recorded = ANSWERS[case]
    request = recorded["request"]
    status, headers, body = server.http(request["method"], request["path"],
                                        base64.b64decode(request["body_b64"]),
                                        request["headers"])
    return status, headers, body, recorded


def test_every_case_was_recorded():
    assert set(ANSWERS) == set(CASES) | set(KSERVE_CASES)


@pytest.mark.parametrize("case", sorted(CASES))
def test_answer_is_torchserves(server, case):
    status, headers, body, recorded = replay(server, case)
    if recorded["status"] >= 500:  # a failing handler: its answer is the error issue's
        assert status >= 500, (status, body)
        return
    if recorded["status"] >= 400:
        assert status == recorded["status"], (status, body)
        return
    torchserve_answers.assert_same_answer(status, headers, body, recorded, header_names=())
    assert headers.get("content-type") == (recorded["headers"].get("content-type")
                                           or UNNAMED_JSON)


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

