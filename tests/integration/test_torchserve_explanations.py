"""zerobatch's default image and text handlers answer as TorchServe 0.12.0's: Captum's
insights on /explanations (and KServe v1's `:explain`), predictions, an unreadable image.

TorchServe's answers were recorded by tests/torchserve/record_explanations.py (requests
stored with them, in tests/data/torchserve_answers/explanations.json) from archives naming
the default `image_classifier` and `text_classifier`; here the same archives, packed by the
real torch-model-archiver, are served by zerobatch and each stored request is sent again.
The status, the content type (none, where the handler set none) and the body bytes must equal
TorchServe's: the attributions come from the same torch and Captum on the CPU, so every float
is the same, not merely close, on the machine that recorded them (on a CPU whose float
kernels round otherwise, each number within FLOAT_REL_TOL: assert_same_computed_body).
KServe v1 is compared as JSON values, float for float: zerobatch answers it compactly where
TorchServe's kserve envelope indents it (docs/kserve.md).
"""

from __future__ import annotations

import base64
import json
import os
import sys

import pytest

from tests.support.servers import finish, start_server
from tests.support.torchserve_answers import assert_same_computed_body, load
from tests.torchserve.record_explanations import (
    build_archives,
    kserve_requests,
    requests,
    unpack_body,
)

pytestmark = pytest.mark.integration
pytest.importorskip("captum")  # a dev requirement (requirements-dev.txt); the server's optional

REAL_ARCHIVER = os.path.join(os.path.dirname(sys.executable), "torch-model-archiver")
ANSWERS = load("explanations")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    store = tmp_path_factory.mktemp("store")
    archives = build_archives(str(store), REAL_ARCHIVER)
    started = start_server({name: str(store / archive) for name, archive in archives.items()})
    yield started
    finish(started)


def replay(server, case: str) -> tuple[int, dict, bytes, dict]:
    recorded = ANSWERS[case]
    sent = recorded["request"]
    status, headers, body = server.http(sent["method"], sent["path"],
                                        base64.b64decode(sent["body_b64"]), sent["headers"])
    return status, headers, body, recorded


def test_every_case_was_recorded():
    assert set(ANSWERS) == set(requests()) | set(kserve_requests())


@pytest.mark.parametrize("case", sorted(requests()))
def test_answer_is_torchserves(server, case):
    status, headers, body, recorded = replay(server, case)
    expected = unpack_body(recorded)
    assert status == recorded["status"], (status, body[:300])
    assert_same_computed_body(body, expected)
    assert headers.get("content-type") == recorded["headers"].get("content-type")


@pytest.mark.parametrize("case", sorted(kserve_requests()))
def test_kserve_v1_explanation_is_torchserves(server, case):
    status, _headers, body, recorded = replay(server, case)
    assert status == recorded["status"], body[:300]
    assert json.loads(body) == json.loads(unpack_body(recorded))


def test_an_image_explanation_is_one_attribution_per_pixel(server):
    """The shape of TorchServe's answer: [3][224][224] after the classifier's crop, non-zero
    only at the pixels TinyConvNet samples (every 16th row and column)."""
    _status, _headers, body, _recorded = replay(server, "image_explain")
    attributions = json.loads(body)
    assert [len(attributions), len(attributions[0]), len(attributions[0][0])] == [3, 224, 224]
    sampled = {(row, column) for channel in attributions
               for row, values in enumerate(channel)
               for column, value in enumerate(values) if value != 0}
    assert sampled and all(row % 16 == 0 and column % 16 == 0 for row, column in sampled)

