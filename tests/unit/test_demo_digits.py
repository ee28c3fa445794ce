"""The demo model: it trains (or loads), and its handler reads images and 8x8 JSON arrays."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from examples.digits import make_samples, train
from tests.support.demo import SAMPLE, demo_model_dir
from tests.support.fake_worker_broker import decode_answers, item
from tests.support.forms import multipart
from zerobatch.config import ModelConfig
from zerobatch.worker.service import Service


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return demo_model_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def service(model_dir):
    return Service.load(ModelConfig("digits", model_dir, batch_size=8))


def predict(service, items):
    frames = service.run_batch(1, items)[3:]
    return decode_answers(frames)


def top(reply):
    assert (reply.kind, reply.status, reply.content_type) == ("reply", 200, "application/json")
    probabilities = json.loads(reply.body)
    assert sorted(probabilities) == [str(d) for d in range(10)]
    values = list(probabilities.values())
    assert values == sorted(values, reverse=True)
    assert sum(values) == pytest.approx(1.0, abs=1e-4)
    return next(iter(probabilities))


def test_held_out_accuracy(model_dir, capsys):
    assert train.main(["--out", model_dir]) == 0  # up to date now: evaluates, no training
    out = capsys.readouterr().out
    accuracy = float(out.rsplit("held-out accuracy ", 1)[1].split()[0])
    assert accuracy > 0.9


def test_sample_png_is_classified_as_3(service):
    with open(SAMPLE, "rb") as f:
        png = f.read()
    [reply] = predict(service, [item(png, "image/png")])
    assert top(reply) == "3"


def test_a_form_file_named_data_is_read_and_other_names_are_explained(service):
    with open(SAMPLE, "rb") as f:
        png = f.read()
    form = "multipart/form-data; boundary=b"
    good, bad = predict(service, [item(multipart("b", ("data", "3.png", "image/png", png)), form),
                                  item(multipart("b", ("file", "3.png", "image/png", png)), form)])
    assert top(good) == "3"
    assert (bad.kind, bad.status) == ("reply", 400)
    assert json.loads(bad.body) == {"error": "no input: send it as the body or as the form "
                                             "field 'data' (got the fields ['file'])"}


def test_a_mixed_batch_runs_in_one_call(service):
    _, test_x, _, test_y = train.load_split()
    with open(SAMPLE, "rb") as f:
        png = f.read()
    # Any size, not square, with a margin, as an RGB JPEG.
    canvas = Image.new("L", (100, 64), 255)
    with Image.open(SAMPLE) as sample:
        canvas.paste(sample.resize((64, 64), Image.BILINEAR), (18, 0))
    buffer = io.BytesIO()
    canvas.convert("RGB").save(buffer, format="JPEG", quality=95)
    items = [
        item(json.dumps(test_x[0].tolist())),
        item(json.dumps({"data": test_x[1].tolist()})),
        item(png, "image/png"),
        item(json.dumps(test_x[2].ravel().tolist()), "text/plain"),
        item("[[1, 2], [3, 4]]"),
        item(b"neither image nor json", "application/octet-stream"),
        item(buffer.getvalue(), "image/jpeg"),
    ]
    replies = predict(service, items)
    assert [top(r) for r in replies[:4]] == [str(test_y[0]), str(test_y[1]), "3", str(test_y[2])]
    for bad in replies[4:6]:
        assert (bad.kind, bad.status) == ("reply", 400)
        assert "error" in json.loads(bad.body)
    assert top(replies[6]) == "3"


def test_sample_is_reproducible(tmp_path):
    assert make_samples.main(["--out-dir", str(tmp_path)]) == 0
    with Image.open(tmp_path / "sample_3.png") as new, Image.open(SAMPLE) as old:
        regenerated, committed = np.asarray(new), np.asarray(old)
    assert committed.shape == (32, 32)
    assert np.array_equal(regenerated, committed)

