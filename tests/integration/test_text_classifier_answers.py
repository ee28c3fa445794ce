"""TorchServe's default `text_classifier`, served by zerobatch, answers as TorchServe 0.12.0
answered (tests/data/torchserve_answers/text_classifier.json, recorded by
tests/torchserve/record_text_classifier.py): the same archive, packed here by the real
torch-model-archiver, with the vocabulary torchtext 0.18 itself saved
(tests/data/torchtext/source_vocab.pt, read without torchtext), gets each recorded request
again, and the status, the content type and the body bytes must equal TorchServe's (its
floats computed on another CPU may round otherwise: assert_same_computed_body):
predictions through its text cleanup (HTML, contractions, accents, punctuation), bigrams,
unknown words, a form and raw octets, text that is not UTF-8 (503), and explanations (Captum's
LayerIntegratedGradients over the embedding, where Captum is installed).
"""

from __future__ import annotations

import base64
import json
import os
import sys

import pytest

from tests.support.torchserve_answers import assert_same_answer, body, load, request
from tests.torchserve import record_text_classifier as recorded_case

pytestmark = pytest.mark.integration

torch = pytest.importorskip("torch")

REAL_ARCHIVER = os.path.join(os.path.dirname(sys.executable), "torch-model-archiver")
ANSWERS = load("text_classifier")
TORCHTEXT_ITOS = os.path.join(os.path.dirname(recorded_case.VOCAB), "source_vocab_itos.json")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from tests.support.servers import finish, start_server

    export = tmp_path_factory.mktemp("export")
    archive = os.path.join(export, recorded_case.build_archive(str(export), REAL_ARCHIVER))
    started = start_server({recorded_case.MODEL_NAME: archive})
    yield started
    finish(started)


def test_every_request_is_recorded():
    assert set(ANSWERS) == set(recorded_case.REQUESTS)


def test_the_torchtext_file_is_read_as_torchtext_wrote_it():
    from zerobatch.worker.handlers.vocab import read_vocab_pt

    with open(TORCHTEXT_ITOS) as f:
        written = json.load(f)
    vocab = read_vocab_pt(recorded_case.VOCAB)
    assert vocab.get_itos() == written["itos"]
    assert vocab["never"] == written["default_index"]


@pytest.mark.parametrize("case", sorted(recorded_case.REQUESTS))
def test_answers_as_torchserve(server, case):
    if case.startswith("explain"):
        pytest.importorskip("captum")
    recorded = ANSWERS[case]
    sent = recorded["request"]
    status, headers, answer = request(server.http_port, sent["method"], sent["path"],
                                      base64.b64decode(sent["body_b64"]), sent["headers"])
    assert_same_answer(status, headers, answer, recorded, computed=True)


def test_the_recorded_bodies_are_what_the_cases_say():
    """A guard on the recording itself: the predictions are the two labels' probabilities,
    the explanation names the words."""
    assert set(json.loads(body(ANSWERS["plain"]))) == {"negative", "positive"}
    assert json.loads(body(ANSWERS["explain"]))["words"] == ["a", "good", "movie", "not",
                                                             "bad"]
