"""Handlers that micro-batch (`ts.handler_utils.micro_batching`), packed by the real
torch-model-archiver and served over HTTP.

- `microdouble`: tests/torchserve/handlers/micro_batching_handler.py, a BaseHandler subclass
  shaped as pytorch/serve's examples/micro_batching handler; its answers, alone and in a
  batch of seven sent at once, are compared with TorchServe 0.12.0's recorded answers
  (tests/torchserve/record_micro_batching.py; status and body bytes: TorchServe sends a
  handler's JSON answer without a Content-Type, zerobatch with `application/json`).
- `microcolour`: an ImageClassifier subclass written as the example is (`__init__` without
  `super().__init__()`, the micro_batching block of model-config.yaml read in `initialize`),
  which TorchServe could not run here for want of torchvision: a batch of images of several
  colours is answered one label per request, in request order.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
import warnings
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.support.torchserve_answers import assert_same_answer, body, load
from tests.torchserve import record_micro_batching as recorded_case

pytestmark = pytest.mark.integration

torch = pytest.importorskip("torch")
Image = pytest.importorskip("PIL.Image")

REAL_ARCHIVER = os.path.join(os.path.dirname(sys.executable), "torch-model-archiver")

#: the shape of pytorch/serve's examples/micro_batching/micro_batching_handler.py
EXAMPLE_STYLE_HANDLER = """
    import logging

    from ts.handler_utils.micro_batching import MicroBatching
    from ts.torch_handler.image_classifier import ImageClassifier

    logger = logging.getLogger(__name__)


    class MicroBatchingClassifier(ImageClassifier):
        def __init__(self):
            self.handle = MicroBatching(self)

        def initialize(self, ctx):
            super().initialize(ctx)
            settings = ctx.model_yaml_config.get("micro_batching", {})
            parallelism = settings.get("parallelism", None)
            if parallelism:
                logger.info("micro batching parallelism: %s", parallelism)
                self.handle.parallelism = parallelism
            self.handle.micro_batch_size = settings.get("micro_batch_size", 1)
"""

EXAMPLE_CONFIG = """
    batchSize: 6
    maxBatchDelay: 1000
    micro_batching:
      micro_batch_size: 2
      parallelism:
        preprocess: 2
        inference: 1
        postprocess: 2
"""

COLOURS = {"red": (250, 10, 10), "green": (10, 250, 10), "blue": (10, 10, 250)}


class ChannelMeans(torch.nn.Module):
    """3 classes from the mean of each colour channel: a red image is class 0."""

    def forward(self, x):
        return x.mean(dim=(2, 3)) * 10


def png(colour: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), COLOURS[colour]).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    src = tmp_path_factory.mktemp("src")
    export = tmp_path_factory.mktemp("export")
    made = {recorded_case.MODEL_NAME: os.path.join(
        export, recorded_case.build_archive(str(export), REAL_ARCHIVER))}

    with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript; users still ship it
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.trace(ChannelMeans(), torch.rand(1, 3, 224, 224)).save(str(src / "means.pt"))
    (src / "index_to_name.json").write_text(json.dumps({"0": "red", "1": "green", "2": "blue"}))
    (src / "handler.py").write_text(textwrap.dedent(EXAMPLE_STYLE_HANDLER).lstrip())
    (src / "config.yaml").write_text(textwrap.dedent(EXAMPLE_CONFIG).lstrip())
    result = subprocess.run(
        [REAL_ARCHIVER, "--model-name", "microcolour", "--version", "1.0",
         "--serialized-file", str(src / "means.pt"), "--handler", str(src / "handler.py"),
         "--extra-files", str(src / "index_to_name.json"),
         "--config-file", str(src / "config.yaml"), "--export-path", str(export)],
        capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    made["microcolour"] = str(export / "microcolour.mar")
    return made


@pytest.fixture(scope="module")
def server(archives):
    from tests.support.servers import finish, start_server

    # full_delay: requests sent together wait for each other and share a batch
    started = start_server(archives, "--batch-policy", "full_delay")
    yield started
    finish(started)


def send_together(server, model: str, bodies: list[bytes], content_type: str) -> list:
    with ThreadPoolExecutor(len(bodies)) as pool:
        return list(pool.map(lambda one: server.predict(model, one, content_type), bodies))


def test_one_request_answers_as_torchserve(server):
    stored = load("micro_batching")["single"]
    status, headers, answer = server.predict(recorded_case.MODEL_NAME, body(stored["request"]))
    assert_same_answer(status, headers, answer, stored)


def test_a_batch_answers_as_torchserve(server):
    stored = load("micro_batching")
    cases = sorted(case for case in stored if case.startswith("batch_"))
    assert len(cases) == len(recorded_case.BATCH)
    answers = send_together(server, recorded_case.MODEL_NAME,
                            [body(stored[case]["request"]) for case in cases],
                            "application/json")
    for case, (status, headers, answer) in zip(cases, answers, strict=True):
        assert_same_answer(status, headers, answer, stored[case])


def test_an_example_style_image_classifier_answers_each_request_in_order(server):
    colours = ["red", "blue", "green", "green", "red", "blue"]
    answers = send_together(server, "microcolour", [png(c) for c in colours], "image/png")
    assert [status for status, _h, _b in answers] == [200] * len(colours)
    assert [next(iter(json.loads(answer))) for _s, _h, answer in answers] == colours
