"""Captum insights of the default vision and text handlers: TorchServe's calls and answer
shapes, the attribution objects built at the first explanation (not at initialize), and a
worker without Captum that predicts and says `pip install captum` when asked to explain.

Equality with TorchServe's own answers is tests/integration/test_torchserve_explanations.py.
"""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
import torch

from tests.support.fake_worker_broker import item
from tests.unit.test_default_handlers import answers, load, model_dir, png, run, save_jit
from zerobatch.worker.handlers.insights import CaptumAttribution

captum_attr = pytest.importorskip("captum.attr")  # a dev requirement (requirements-dev.txt)

EXPLAIN = {"explain": "True"}

TINY_CONV = """
    import torch


    class TinyConv(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.conv = torch.nn.Conv2d(3, 2, kernel_size=3)
            self.fc = torch.nn.Linear(2, 4)

        def forward(self, x):
            return self.fc(torch.relu(self.conv(x)).mean(dim=(2, 3)))
"""

TEXT_BAG = """
    import torch


    class TextBag(torch.nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.embedding = torch.nn.EmbeddingBag(8, 3, mode="mean")
            self.fc = torch.nn.Linear(3, 2)

        def forward(self, text, offsets):
            return self.fc(self.embedding(text, offsets))
"""
VOCAB = {"<unk>": 0, "good": 1, "bad": 2, "film": 3, "good film": 4, "bad film": 5}


def vision_dir(tmp_path, handler="vision_handler"):
    namespace: dict = {}
    exec(compile(textwrap.dedent(TINY_CONV), "tiny_conv", "exec"), namespace)
    torch.save(namespace["TinyConv"]().state_dict(), str(tmp_path / "model.pth"))
    return model_dir(str(tmp_path), handler, serialized="model.pth", model_file="tiny_conv.py",
                     files={"tiny_conv.py": TINY_CONV})


def text_dir(tmp_path):
    namespace: dict = {}
    exec(compile(textwrap.dedent(TEXT_BAG), "text_bag", "exec"), namespace)
    torch.save(namespace["TextBag"]().state_dict(), str(tmp_path / "model.pth"))
    return model_dir(str(tmp_path), "text_classifier", serialized="model.pth",
                     model_file="text_bag.py",
                     files={"text_bag.py": TEXT_BAG, "source_vocab.json": json.dumps(VOCAB)})


def handler_of(service):
    return service.entry_point.__self__


# ------------------------------------------------------------------ CaptumAttribution

class Holder:
    built = 0

    def build(self):
        type(self).built += 1
        return f"built #{type(self).built}"

    attribution = CaptumAttribution(lambda holder: holder.build())


def test_an_attribution_is_built_at_its_first_read_and_kept():
    Holder.built = 0
    holder = Holder()
    assert Holder.built == 0
    assert holder.attribution == "built #1"
    assert holder.attribution == "built #1" and Holder.built == 1
    holder.attribution = "mine"
    assert holder.attribution == "mine"
    holder.attribution = None  # TorchServe's "not built yet"
    assert holder.attribution == "built #2"
    assert isinstance(Holder.attribution, CaptumAttribution)


# ------------------------------------------------------------------ vision

def test_image_insights_are_torchserves_integrated_gradients(tmp_path):
    service = load(vision_dir(tmp_path))
    handler = handler_of(service)
    assert "_captum_ig" not in vars(handler)  # nothing built at initialize
    images = [png("red", (6, 5)), png("blue", (6, 5))]
    got = answers(service, [item(image, "image/png", EXPLAIN) for image in images])
    assert isinstance(handler.ig, captum_attr.IntegratedGradients)
    batch = torch.stack([handler.read_image(index, {"body": image})
                         for index, image in enumerate(images)])
    expected = captum_attr.IntegratedGradients(handler.model).attribute(
        batch, baselines=torch.zeros_like(batch), target=0, n_steps=15)
    assert got == expected.tolist()  # one [C][H][W] list of attributions per image
    assert [len(got[0]), len(got[0][0]), len(got[0][0][0])] == [3, 5, 6]


def test_image_insights_take_the_target_of_the_first_request(tmp_path):
    service = load(vision_dir(tmp_path))
    handler = handler_of(service)
    tensor = handler.read_image(0, {"body": png("green", (6, 5))}).unsqueeze(0)
    by_target = [handler.get_insights(tensor, None, target) for target in (0, 3)]
    assert by_target[0] != by_target[1]
    assert by_target[1] == handler.ig.attribute(tensor, target=3, n_steps=15).tolist()


def test_the_image_classifier_explains_through_its_own_preprocessing(tmp_path):
    service = load(vision_dir(tmp_path, "image_classifier"))
    explanation, = answers(service, [item(png("red"), "image/png", EXPLAIN)])
    assert [len(explanation), len(explanation[0]), len(explanation[0][0])] == [3, 224, 224]


def test_a_torchscript_model_is_explained_too(tmp_path):
    namespace: dict = {}
    exec(compile(textwrap.dedent(TINY_CONV), "tiny_conv", "exec"), namespace)
    save_jit(namespace["TinyConv"](), str(tmp_path / "model.pt"), torch.zeros(1, 3, 5, 6))
    service = load(model_dir(str(tmp_path), "vision_handler", serialized="model.pt"))
    image = png("red", (6, 5))
    explanation, = answers(service, [item(image, "image/png", EXPLAIN)])
    handler = handler_of(service)
    tensor = handler.read_image(0, {"body": image}).unsqueeze(0)
    eager = captum_attr.IntegratedGradients(namespace["TinyConv"]()).attribute(
        tensor, target=0, n_steps=15)
    torch.testing.assert_close(torch.tensor(explanation), eager[0])


# ------------------------------------------------------------------ text

def test_text_insights_are_torchserves_layer_integrated_gradients(tmp_path):
    service = load(text_dir(tmp_path))
    handler = handler_of(service)
    assert "_captum_lig" not in vars(handler)
    answer, = answers(service, [item("Good <i>film</i>!", "text/plain", EXPLAIN)])
    assert list(answer) == ["importances", "words"]
    assert answer["words"] == ["good", "film"]
    lig = captum_attr.LayerIntegratedGradients(handler.model, handler.model.embedding)
    ids = torch.tensor([1, 3, 4])  # good, film, "good film"
    attributions = lig.attribute(ids, torch.zeros(3, dtype=torch.long),
                                 additional_forward_args=torch.tensor([0]), target=0)
    summary = torch.nn.functional.softmax(attributions, dim=1)
    summary = summary / torch.norm(summary.sum(dim=-1))
    # importances per embedding dimension of the one bag, as TorchServe answers them
    assert answer["importances"] == summary.tolist()
    assert len(answer["importances"]) == 1 and len(answer["importances"][0]) == 3


def test_each_text_of_a_batch_gets_its_own_explanation(tmp_path):
    service = load(text_dir(tmp_path))
    texts = ["good film", "bad film"]
    alone = [answers(service, [item(text, "text/plain", EXPLAIN)])[0] for text in texts]
    together = answers(service, [item(text, "text/plain", EXPLAIN) for text in texts])
    assert together == alone
    assert [answer["words"] for answer in alone] == [["good", "film"], ["bad", "film"]]


def test_a_one_token_text_cannot_be_explained_as_in_torchserve(tmp_path):
    """TorchServe's zero reference, squeezed, is a scalar for one token id; Captum refuses it
    (TorchServe answers 503, recorded in tests/data/torchserve_answers/explanations.json)."""
    service = load(text_dir(tmp_path))
    reply, = run(service, [item("bad", "text/plain", EXPLAIN)])
    assert (reply.kind, reply.status) == ("error", 500)


def test_text_insights_need_an_embedding_layer(tmp_path):
    service = load(text_dir(tmp_path))
    handler = handler_of(service)
    handler.model = torch.nn.Linear(2, 2)
    reply, = run(service, [item("good film", "text/plain", EXPLAIN)])
    assert (reply.kind, reply.status) == ("error", 500)
    assert "`embedding` layer" in reply.message and "set self.lig" in reply.message


# ------------------------------------------------------------------ without Captum

@pytest.fixture
def no_captum(monkeypatch):
    """Captum made unimportable, as in a worker's Python without it."""
    for name in [name for name in sys.modules if name.split(".")[0] == "captum"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "captum", None)


@pytest.mark.parametrize("make_dir, body, content_type", [
    (vision_dir, png("red", (6, 5)), "image/png"),
    (text_dir, "good film", "text/plain"),
])
def test_without_captum_predictions_work_and_explanations_say_how_to_get_it(
        tmp_path, no_captum, make_dir, body, content_type):
    service = load(make_dir(tmp_path))
    assert answers(service, [item(body, content_type)])  # loads and predicts without Captum
    reply, = run(service, [item(body, content_type, EXPLAIN)])
    assert (reply.kind, reply.status) == ("error", 500)
    assert "need Captum" in reply.message and "pip install captum" in reply.message
