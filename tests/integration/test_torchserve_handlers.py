"""TorchServe handler files, packed by the real torch-model-archiver, served unchanged over HTTP.

Three archives, each written as a TorchServe user would: a BaseHandler subclass imported from
`ts.torch_handler.base_handler` over a TorchScript model; an ImageClassifier subclass with an
`index_to_name.json`; an eager model (`--model-file` plus a state dict) behind a BaseHandler
subclass. One server serves all three; each answers correctly.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
import warnings

import pytest

from tests.support.forms import multipart

pytestmark = pytest.mark.integration

torch = pytest.importorskip("torch")
Image = pytest.importorskip("PIL.Image")

REAL_ARCHIVER = os.path.join(os.path.dirname(sys.executable), "torch-model-archiver")

DOUBLE_HANDLER = """
    import torch
    from ts.torch_handler.base_handler import BaseHandler


    class DoubleHandler(BaseHandler):
        def preprocess(self, data):
            return torch.tensor([row["body"]["x"] for row in data], dtype=torch.float32)

        def postprocess(self, output):
            return output.tolist()
"""

CLASSIFIER_HANDLER = """
    from ts.torch_handler.image_classifier import ImageClassifier


    class TwoBest(ImageClassifier):
        topk = 2
"""

EAGER_MODEL = """
    import torch


    class Affine(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = torch.nn.Linear(2, 1)

        def forward(self, x):
            return self.linear(x)
"""

EAGER_HANDLER = """
    import torch
    from ts.torch_handler.base_handler import BaseHandler


    class AffineHandler(BaseHandler):
        def preprocess(self, data):
            return torch.tensor([row["body"] for row in data], dtype=torch.float32)

        def postprocess(self, output):
            return [round(value, 4) for value in output.squeeze(1).tolist()]
"""


class Doubler(torch.nn.Module):
    def forward(self, x):
        return x * 2


class RedDetector(torch.nn.Module):
    """3 classes from the mean of each colour channel: a red image is class 0."""

    def forward(self, x):
        return x.mean(dim=(2, 3)) * 10


def write(path, text: str) -> str:
    path.write_text(textwrap.dedent(text).lstrip())
    return str(path)


def archive(src, export, name: str, *flags: str) -> str:
    result = subprocess.run([REAL_ARCHIVER, "--model-name", name, "--version", "1.0",
                             "--export-path", str(export), *flags],
                            capture_output=True, text=True, cwd=src, timeout=120)
    assert result.returncode == 0, result.stderr
    return str(export / f"{name}.mar")


@pytest.fixture(scope="module")
def torchserve_archives(tmp_path_factory):
    src = tmp_path_factory.mktemp("src")
    export = tmp_path_factory.mktemp("export")
    made = {}

    with warnings.catch_warnings():  # torch 2.13 deprecates TorchScript; users still ship it
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.script(Doubler()).save(str(src / "double.pt"))
        torch.jit.trace(RedDetector(), torch.rand(1, 3, 224, 224)).save(str(src / "colour.pt"))
    made["double"] = archive(src, export, "double", "--serialized-file", str(src / "double.pt"),
                             "--handler", write(src / "double_handler.py", DOUBLE_HANDLER))

    (src / "index_to_name.json").write_text(json.dumps({"0": "red", "1": "green", "2": "blue"}))
    made["colour"] = archive(src, export, "colour", "--serialized-file", str(src / "colour.pt"),
                             "--handler", write(src / "colour_handler.py", CLASSIFIER_HANDLER),
                             "--extra-files", str(src / "index_to_name.json"))

    model_file = write(src / "affine_model.py", EAGER_MODEL)
    sys.path.insert(0, str(src))
    try:
        from affine_model import Affine  # the very class the archive ships
    finally:
        sys.path.remove(str(src))
    affine = Affine()
    with torch.no_grad():
        affine.linear.weight.copy_(torch.tensor([[1.0, 10.0]]))
        affine.linear.bias.fill_(0.5)
    torch.save(affine.state_dict(), str(src / "affine.pth"))
    made["affine"] = archive(src, export, "affine", "--serialized-file", str(src / "affine.pth"),
                             "--model-file", model_file,
                             "--handler", write(src / "affine_handler.py", EAGER_HANDLER))
    return made


@pytest.fixture(scope="module")
def server(torchserve_archives):
    from tests.support.servers import finish, start_server

    started = start_server(torchserve_archives, "--batch-size", "4", "--max-batch-delay", "50")
    yield started
    finish(started)


def test_base_handler_subclass_over_torchscript(server):
    status, _h, body = server.predict("double", b'{"x": [1.5, -2]}')
    assert status == 200, body
    assert json.loads(body) == [3.0, -4.0]


def test_image_classifier_subclass_maps_labels(server):
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (250, 10, 10)).save(buffer, format="PNG")
    status, _h, body = server.predict("colour", buffer.getvalue(), "image/png")
    assert status == 200, body
    answer = json.loads(body)
    assert len(answer) == 2  # topk = 2 in the subclass
    assert list(answer)[0] == "red" and answer["red"] > 0.5


def test_eager_model_from_model_file_and_state_dict(server):
    status, _h, body = server.predict("affine", b"[1, 2]")
    assert status == 200, body
    assert json.loads(body) == 21.5


def test_an_image_sent_as_a_form_file_reaches_the_handler_under_its_field_name(server):
    buffer = io.BytesIO()
    Image.new("RGB", (64, 48), (10, 10, 250)).save(buffer, format="PNG")
    form = multipart("X-BOUNDARY", ("data", "blue.png", "image/png", buffer.getvalue()))
    # what `curl -F data=@blue.png` sends; ImageClassifier reads row.get("data") first
    status, _h, body = server.predict("colour", form, "multipart/form-data; boundary=X-BOUNDARY")
    assert status == 200, body
    assert list(json.loads(body))[0] == "blue"


def test_a_malformed_form_is_400_and_the_model_keeps_serving(server):
    status, _h, body = server.predict("colour", b"--B\r\nno end", "multipart/form-data; boundary=B")
    assert status == 400
    assert json.loads(body) == {
        "code": 400, "type": "BadRequestException",
        "message": "a part of the multipart body has no end to its headers"}
    status, _h, body = server.predict("double", b'{"x": [1]}')
    assert (status, json.loads(body)) == (200, [2.0])
