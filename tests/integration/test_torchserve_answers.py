"""zerobatch answers failed and odd predictions as TorchServe 0.12.0 does, byte for byte.

TorchServe's answers were recorded by tests/torchserve/record_errors.py (the requests are
stored with them, in tests/data/torchserve_answers/errors.json): a handler that raises, runs
out of memory, returns the wrong number of results or something that is not a list, raises a
PredictionException, dies; an unknown model or version, a body over the limit, a full queue,
url-encoded fields without a value, a streamed answer, an unreadable image. Here the same
archive, packed by the real torch-model-archiver, is served by zerobatch with the same limits
(batch size 1, a queue of one request, max_request_size), each stored request is sent again,
and the status, the content type (none where the handler set none) and the body must equal
TorchServe's. An unreadable image goes to zerobatch's default image_classifier (see the
recorder for why TorchServe's was recorded through the same first step in the `answers`
handler).

Then `--zerobatch-answers`: the same failures in zerobatch's own words.
"""

from __future__ import annotations

import base64
import json
import os
import sys
import tempfile
import threading
import warnings

import pytest

from tests.support.servers import finish, start_server
from tests.support.torchserve_answers import assert_same_answer, body, load, request
from tests.torchserve.record_errors import MAX_REQUEST_BYTES, QUEUE_SIZE, build_archives

pytestmark = pytest.mark.integration

REAL_ARCHIVER = os.path.join(os.path.dirname(sys.executable), "torch-model-archiver")
ANSWERS = load("errors")
#: cases with a test of their own
OWN_TEST = {"queue_full", "handler_exit", "image_unreadable"}
COMPARED = sorted(set(ANSWERS) - OWN_TEST)


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    export = tmp_path_factory.mktemp("answers")
    made = build_archives(REAL_ARCHIVER, str(export))
    made["colour"] = _image_classifier_archive(tmp_path_factory.mktemp("colour"), export)
    return made


def _image_classifier_archive(src, export) -> str:
    """The default image_classifier over a tiny TorchScript model, as TorchServe users pack
    it."""
    import subprocess

    torch = pytest.importorskip("torch")

    class RedDetector(torch.nn.Module):
        def forward(self, x):
            return x.mean(dim=(2, 3)) * 10

    with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript; users still ship it
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.trace(RedDetector(), torch.rand(1, 3, 224, 224)).save(str(src / "colour.pt"))
    (src / "index_to_name.json").write_text(json.dumps({"0": "red", "1": "green", "2": "blue"}))
    result = subprocess.run(
        [REAL_ARCHIVER, "--model-name", "colour", "--version", "1.0", "--handler",
         "image_classifier", "--serialized-file", str(src / "colour.pt"), "--extra-files",
         str(src / "index_to_name.json"), "--export-path", str(export)],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return str(export / "colour.mar")


def _start(archives: dict, *flags: str):
    return start_server(archives, "--batch-size", "1", "--max-queue", str(QUEUE_SIZE),
                        "--max-request-size", str(MAX_REQUEST_BYTES), *flags)


@pytest.fixture(scope="module")
def server(archives):
    started = _start(archives)
    yield started
    finish(started)


@pytest.fixture(scope="module")
def own_answers(archives):
    started = _start(archives, "--zerobatch-answers")
    yield started
    finish(started)


def replay(port: int, recorded: dict, path: str | None = None) -> tuple[int, dict, bytes]:
    sent = recorded["request"]
    return request(port, sent["method"], path or sent["path"],
                   base64.b64decode(sent["body_b64"]), sent["headers"])


def assert_answers_as_torchserve(answer: tuple[int, dict, bytes], recorded: dict) -> None:
    """The status, the content type (none for a successful answer whose handler set none)
    and the body."""
    status, headers, answer_body = answer
    assert_same_answer(status, headers, answer_body, recorded)


@pytest.mark.parametrize("case", COMPARED)
def test_answers_as_torchserve(server, case):
    recorded = ANSWERS[case]
    assert_answers_as_torchserve(replay(server.http_port, recorded), recorded)


def test_a_streamed_answer_carries_ts_stream_next(server):
    recorded = ANSWERS["handler_stream"]
    assert recorded["headers"]["ts_stream_next"] == "true"
    _status, headers, _body = replay(server.http_port, recorded)
    assert headers.get("ts_stream_next") == "true"
    assert headers.get("transfer-encoding") == "chunked"


def test_an_unreadable_image_for_the_default_image_classifier(server):
    recorded = ANSWERS["image_unreadable"]
    answer = replay(server.http_port, recorded, "/predictions/colour")
    assert_answers_as_torchserve(answer, recorded)


def test_a_full_queue(server):
    """One request runs (the handler sleeps after touching a marker file); of the four sent
    while it runs, one may be sent ahead to its worker and one waits in the queue of one:
    the others are refused at once, as TorchServe refused the request after a queued one."""
    marker = os.path.join(tempfile.mkdtemp(prefix="answers-marker-"), "running")
    answers: list = []

    def send(headers: dict) -> None:
        answers.append(request(server.http_port, "POST", "/predictions/answers", b"x", headers))

    first = threading.Thread(target=send, args=(
        {"x-case": "sleep", "x-marker": marker, "x-seconds": "3"},))
    first.start()
    server.wait_for(lambda: os.path.exists(marker), what="the slow request to run")
    more = [threading.Thread(target=send, args=({"x-case": "sleep", "x-seconds": "0.1"},))
            for _ in range(4)]
    for thread in more:
        thread.start()
    for thread in (first, *more):
        thread.join(60)
    refused = [answer for answer in answers if answer[0] != 200]
    assert len(answers) == 5 and 2 <= len(refused) <= 3, [a[:1] for a in answers]
    for answer in refused:
        assert_answers_as_torchserve(answer, ANSWERS["queue_full"])


def test_a_worker_that_dies_mid_request(server):
    recorded = ANSWERS["handler_exit"]
    assert_answers_as_torchserve(replay(server.http_port, recorded), recorded)
    # the model serves again once its worker is back
    server.wait_for(lambda: replay(server.http_port, ANSWERS["handler_ok"])[0] == 200,
                    timeout_s=60, what="a new worker")


@pytest.mark.parametrize(("case", "status", "type_name", "message"), [
    ("handler_raise", 500, "HandlerError", "ValueError: the handler failed on purpose"),
    ("handler_memory", 507, "OutOfResources", "MemoryError: no memory left on purpose"),
    ("handler_count", 500, "ResultCountMismatch", "handler returned 2 results for 1 requests"),
    ("handler_not_list", 500, "BadHandlerOutput",
     "handler returned dict, expected a list with one result for each of 1 requests"),
    ("handler_prediction_exception", 418, "PredictionError", "the handler refused this request"),
    ("unknown_model", 404, "ModelNotFound", "Model not found: nosuch"),
])
def test_zerobatch_answers_are_in_zerobatch_words(own_answers, case, status, type_name, message):
    answer_status, headers, answer_body = replay(own_answers.http_port, ANSWERS[case])
    assert (answer_status, headers.get("content-type")) == (status, "application/json")
    assert json.loads(answer_body) == {"code": status, "type": type_name, "message": message}
    assert answer_body.endswith(b"\n}\n")  # indented as TorchServe's bodies are


def test_zerobatch_answers_name_the_unreadable_image(own_answers):
    answer_status, _h, answer_body = replay(own_answers.http_port, ANSWERS["image_unreadable"],
                                            "/predictions/colour")
    answer = json.loads(answer_body)
    assert (answer_status, answer["type"]) == (500, "HandlerError")
    assert answer["message"].startswith("UnreadableImage: request ")
    assert "not an image Pillow can read" in answer["message"]


def test_zerobatch_answers_leave_successful_answers_alone(own_answers):
    for case in ("handler_ok", "handler_none", "form_field_without_value"):
        status, _h, answer_body = replay(own_answers.http_port, ANSWERS[case])
        assert (status, answer_body) == (ANSWERS[case]["status"], body(ANSWERS[case]))


def test_the_config_properties_key_turns_zerobatch_answers_on(archives, make_server, tmp_path):
    properties = tmp_path / "config.properties"
    properties.write_text("zerobatch_answers=true\n")
    started = make_server({"answers": archives["answers"]}, "--ts-config", str(properties))
    status, _h, answer_body = replay(started.http_port, ANSWERS["handler_raise"])
    assert (status, json.loads(answer_body)["type"]) == (500, "HandlerError")
