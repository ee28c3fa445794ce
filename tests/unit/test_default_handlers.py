"""TorchServe's default handlers by name, on tiny models saved here and PNGs made by Pillow."""

import base64
import io
import json
import os
import textwrap
import warnings

import pytest
import torch
from PIL import Image

from tests.support.fake_worker_broker import decode_answers, item
from zerobatch.config import ModelConfig
from zerobatch.worker.handlers import transforms
from zerobatch.worker.handlers.text_handler import TextHandler, ngrams_iterator
from zerobatch.worker.service import Service

COLORS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}
RGB_LABELS = {"0": "red", "1": "green", "2": "blue"}


# ------------------------------------------------------------------ helpers

def model_dir(root, handler, serialized=None, model_file=None, files=None):
    """A no-archive model directory naming a default handler; `files`: name -> text/bytes."""
    os.makedirs(os.path.join(root, "MAR-INF"), exist_ok=True)
    model = {"modelName": "m", "handler": handler, "modelVersion": "1.0"}
    if serialized:
        model["serializedFile"] = serialized
    if model_file:
        model["modelFile"] = model_file
    with open(os.path.join(root, "MAR-INF", "MANIFEST.json"), "w", encoding="utf-8") as f:
        json.dump({"runtime": "python", "model": model}, f)
    for name, content in (files or {}).items():
        mode = "wb" if isinstance(content, bytes) else "w"
        with open(os.path.join(root, name), mode) as f:
            f.write(content if isinstance(content, bytes) else textwrap.dedent(content))
    return root


def save_jit(module, path, example=None):
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.", category=DeprecationWarning)
        compiled = torch.jit.script(module) if example is None else torch.jit.trace(module,
                                                                                    example)
        torch.jit.save(compiled, path)


def png(color="red", size=(300, 260), mode="RGB"):
    buffer = io.BytesIO()
    Image.new("RGB", size, COLORS[color]).convert(mode).save(buffer, format="PNG")
    return buffer.getvalue()


def load(path, batch_size=8):
    return Service.load(ModelConfig("m", str(path), batch_size=batch_size))


def run(service, items):
    frames = service.run_batch(1, items)[3:]
    return decode_answers(frames)


def answers(service, items):
    replies = run(service, items)
    assert [(r.kind, r.status) for r in replies] == [("reply", 200)] * len(items), replies
    return [json.loads(r.body) for r in replies]


# ------------------------------------------------------------------ transforms

def test_resize_matches_the_shorter_side():
    image = Image.new("RGB", (300, 260))
    assert transforms.Resize(256)(image).size == (295, 256)
    assert transforms.Resize(256)(Image.new("RGB", (100, 400))).size == (256, 1024)
    assert transforms.Resize((10, 20))(image).size == (20, 10)


def test_center_crop_and_padding():
    image = Image.new("L", (5, 5))
    image.putpixel((2, 2), 255)
    cropped = transforms.CenterCrop(3)(image)
    assert cropped.size == (3, 3) and cropped.getpixel((1, 1)) == 255
    padded = transforms.CenterCrop(7)(image)
    assert padded.size == (7, 7) and padded.getpixel((3, 3)) == 255


def test_to_tensor_and_normalize():
    tensor = transforms.ToTensor()(Image.new("RGB", (4, 2), (255, 0, 51)))
    assert tensor.shape == (3, 2, 4) and tensor.dtype == torch.float32
    assert tensor[:, 0, 0].tolist() == pytest.approx([1.0, 0.0, 0.2])
    assert transforms.ToTensor()(Image.new("L", (4, 2))).shape == (1, 2, 4)
    normalized = transforms.Normalize([0.5, 0.5, 0.5], [0.5, 0.5, 0.5])(tensor)
    assert normalized[:, 0, 0].tolist() == pytest.approx([1.0, -1.0, -0.6])
    assert transforms.imagenet_processing()(Image.new("L", (300, 260))).shape == (3, 224, 224)


# ------------------------------------------------------------------ image_classifier

class ChannelMeans(torch.nn.Module):
    """3 classes: the mean of each channel, so a red image is class 0 after normalization."""

    def forward(self, x):
        return x.mean(dim=(2, 3))


@pytest.fixture
def classifier_dir(tmp_path):
    save_jit(ChannelMeans(), str(tmp_path / "model.pt"), torch.zeros(1, 3, 224, 224))
    return model_dir(str(tmp_path), "image_classifier", serialized="model.pt",
                     files={"index_to_name.json": json.dumps(RGB_LABELS)})


def test_image_classifier_top_k_labels(classifier_dir):
    service = load(classifier_dir)
    red, green, blue = answers(service, [item(png("red"), "image/png"),
                                         item(png("green", (224, 224)), "image/png"),
                                         item(png("blue", (500, 300)), "image/png")])
    for answer, color in ((red, "red"), (green, "green"), (blue, "blue")):
        assert sorted(answer) == ["blue", "green", "red"]  # top 5, clamped to 3 classes
        assert next(iter(answer)) == color
        values = list(answer.values())
        assert values == sorted(values, reverse=True)
        assert sum(values) == pytest.approx(1.0, abs=1e-5)


def test_image_classifier_topk_from_model_config(classifier_dir):
    with open(os.path.join(classifier_dir, "model-config.yaml"), "w") as f:
        f.write("handler:\n  topk: 1\n")
    service = load(classifier_dir)
    assert answers(service, [item(png("green"), "image/png")])[0].keys() == {"green"}
    assert service.entry_point.__self__.get_max_result_classes() == 1


def test_image_classifier_reads_base64_grayscale_and_rgba(classifier_dir):
    service = load(classifier_dir)
    encoded = base64.b64encode(png("blue")).decode()
    got = answers(service, [item(encoded, "text/plain"),
                            item(json.dumps({"data": encoded})),
                            item(png("red", mode="RGBA"), "image/png"),
                            item(png("red", mode="L"), "image/png")])
    assert [next(iter(answer)) for answer in got[:3]] == ["blue", "blue", "red"]
    assert len(got[3]) == 3


def test_an_unreadable_image_fails_as_a_handler_error(classifier_dir):
    """A handler's failure, which the front end answers 503 "Prediction failed" as TorchServe
    does (tests/integration/test_torchserve_answers.py); the message names the request."""
    service = load(classifier_dir)
    replies = run(service, [item(png("red"), "image/png"),
                            item(b"not an image", "image/png", request_id="r-2")])
    # failure isolation: the batch is retried one by one, so only the bad image fails
    assert [(r.kind, r.status, r.code) for r in replies] == [
        ("reply", 200, None), ("error", 500, "handler_error")]
    assert replies[1].message.startswith("UnreadableImage: request r-2")
    assert "Pillow" in replies[1].message


# ------------------------------------------------------------------ vision_handler

def test_vision_handler_by_name_takes_images_and_lists(tmp_path):
    save_jit(ChannelMeans(), str(tmp_path / "model.pt"), torch.zeros(1, 3, 4, 4))
    service = load(model_dir(str(tmp_path), "vision_handler", serialized="model.pt"))
    image_answer, = answers(service, [item(png("red", (4, 4)), "image/png")])
    assert image_answer == pytest.approx([1.0, 0.0, 0.0])
    list_answer, = answers(service, [item(json.dumps([[[0.5] * 4] * 4] * 3))])
    assert list_answer == pytest.approx([0.5, 0.5, 0.5])


# ------------------------------------------------------------------ image_segmenter

class Segmenter(torch.nn.Module):
    """torchvision's segmentation output: {"out": [N, K, H, W]}, here the channels as classes."""

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": x * 10}


def test_image_segmenter_class_map(tmp_path):
    save_jit(Segmenter(), str(tmp_path / "model.pt"))
    service = load(model_dir(str(tmp_path), "image_segmenter", serialized="model.pt"))
    red, blue = answers(service, [item(png("red"), "image/png"),
                                  item(png("blue", (256, 256)), "image/png")])
    for answer, color_class in ((red, 0.0), (blue, 2.0)):
        assert (len(answer), len(answer[0]), len(answer[0][0])) == (224, 224, 2)
        assert {pixel[0] for row in answer for pixel in row} == {color_class}
        assert 0.99 < answer[100][100][1] <= 1.0


# ------------------------------------------------------------------ object_detector

FIXED_DETECTOR = """
    import torch


    class FixedDetector(torch.nn.Module):
        \"\"\"Two detections per image: one sure, one not; the box grows with the image.\"\"\"

        def __init__(self):
            super().__init__()
            self.register_buffer("scores", torch.tensor([0.9, 0.3]))

        def forward(self, images):
            out = []
            for image in images:
                height, width = image.shape[-2:]
                boxes = torch.tensor([[1.0, 2.0, float(width), float(height)],
                                      [0.0, 0.0, 5.0, 5.0]])
                out.append({"boxes": boxes, "labels": torch.tensor([1, 2]),
                            "scores": self.scores})
            return out
"""


@pytest.fixture
def detector_dir(tmp_path):
    """An eager model: modelFile + a state dict, as TorchServe's detection examples ship."""
    model_dir(str(tmp_path), "object_detector", serialized="weights.pth",
              model_file="detector_model.py",
              files={"detector_model.py": FIXED_DETECTOR,
                     "index_to_name.json": json.dumps(
                         {"object_type_names": ["__background__", "person", "car"]})})
    torch.save({"scores": torch.tensor([0.9, 0.3])}, str(tmp_path / "weights.pth"))
    return tmp_path


def test_object_detector_boxes_above_threshold(detector_dir):
    service = load(detector_dir)
    small, large = answers(service, [item(png("red", (40, 30)), "image/png"),
                                     item(png("blue", (64, 48), mode="L"), "image/png")])
    assert small == [{"person": [1.0, 2.0, 40.0, 30.0], "score": pytest.approx(0.9)}]
    assert large == [{"person": [1.0, 2.0, 64.0, 48.0], "score": pytest.approx(0.9)}]


def test_object_detector_threshold_from_model_config(detector_dir):
    (detector_dir / "model-config.yaml").write_text("handler:\n  threshold: 0.2\n")
    answer, = answers(load(detector_dir), [item(png("red", (10, 10)), "image/png")])
    assert [list(d)[0] for d in answer] == ["person", "car"]


def test_object_detector_scripted_model_without_mapping(tmp_path):
    class Scripted(torch.nn.Module):
        def forward(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
            return [{"boxes": torch.tensor([[0.0, 0.0, 2.0, 2.0]]), "labels": torch.tensor([7]),
                     "scores": torch.tensor([0.75])} for _ in range(images.shape[0])]

    save_jit(Scripted(), str(tmp_path / "model.pt"))
    service = load(model_dir(str(tmp_path), "object_detector", serialized="model.pt"))
    got = answers(service, [item(png("red", (8, 8)), "image/png")] * 2)
    assert got == [[{"7": [0.0, 0.0, 2.0, 2.0], "score": 0.75}]] * 2


# ------------------------------------------------------------------ text_classifier

BAG_MODEL = """
    import torch


    class Bag(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embedding = torch.nn.EmbeddingBag(VOCAB, 2, mode="sum")

        def forward(self, text, offsets):
            return self.embedding(text, offsets)
"""


def text_model_dir(root, vocab=3, files=None):
    model_dir(str(root), "text_classifier", serialized="model.pth", model_file="bag.py",
              files={"bag.py": f"VOCAB = {vocab}\n" + textwrap.dedent(BAG_MODEL),
                     "index_to_name.json": json.dumps({"0": "positive", "1": "negative"}),
                     **(files or {})})
    weight = torch.zeros(vocab, 2)
    if vocab == 3:
        weight[1, 0] = weight[2, 1] = 5.0  # "good" -> positive, "bad" -> negative
    torch.save({"embedding.weight": weight}, str(root / "model.pth"))
    return root


def test_text_classifier_with_a_json_vocabulary(tmp_path):
    text_model_dir(tmp_path, files={"source_vocab.json": json.dumps(
        {"<unk>": 0, "good": 1, "bad": 2})})
    service = load(tmp_path)
    good, bad, empty = answers(service, [item("This is <b>GOOD</b>!", "text/plain"),
                                         item(b"bad, bad movie", "application/octet-stream"),
                                         item("", "text/plain")])
    assert list(good) == ["positive", "negative"] and good["positive"] > 0.99
    assert bad["negative"] > 0.99
    assert empty == {"positive": 0.5, "negative": 0.5}


def test_text_classifier_hashes_tokens_without_a_vocabulary(tmp_path):
    text_model_dir(tmp_path, vocab=50)
    service = load(tmp_path)
    handler = service.entry_point.__self__
    assert handler.vocab_size == 50
    first, second = answers(service, [item("same words", "text/plain")] * 2)
    assert first == second and sum(first.values()) == pytest.approx(1.0)
    assert handler.token_ids(["same"]) == handler.token_ids(["same"])
    assert all(0 <= i < 50 for i in handler.token_ids(["a", "b", "same words"]))


def test_text_classifier_rejects_a_torchtext_vocab(tmp_path):
    text_model_dir(tmp_path, files={"source_vocab.pt": b"not a torch file"})
    from zerobatch.errors import ConfigError
    with pytest.raises(ConfigError, match="source_vocab.json"):
        load(tmp_path)


def test_text_cleanup_as_torchserve():
    handler = TextHandler()
    assert handler.clean_tokens("<b>I can't</b> believe it's the CAF\u00c9-time&amp; "
                                "they're here!") == [
        "i", "cannot", "believe", "it", "is", "the", "cafetime", "they", "are", "here"]
    assert list(ngrams_iterator(["a", "b", "c"], 2)) == ["a", "b", "c", "a b", "b c"]
