"""Record TorchServe 0.12.0's answers from its default image and text handlers: explanations
(Captum's insights), predictions, and an unreadable image.

    TORCHSERVE_BIN=/path/to/venv/bin python -m tests.torchserve.record_explanations

writes tests/data/torchserve_answers/explanations.json; the parity test
(tests/integration/test_torchserve_explanations.py) builds the same archives with
`build_archives` and replays each stored request against zerobatch.

Two archives, packed by the real torch-model-archiver: `images`, the default `image_classifier`
over TinyConvNet (tests/torchserve/handlers/tiny_conv_net.py, eager, 6 classes, weights from
a formula rather than a random generator), and `texts`, the default `text_classifier` over
TinyTextBag (tiny_text_bag.py) with a `source_vocab.pt` that is a plain {token: id} dict, so
TorchServe's handler runs without torchtext. The recording venv needs `captum` (TorchServe's
vision and text handlers import it) and `torchvision` (its image_classifier does).

torchvision's wheels on PyPI are CUDA builds: on a CPU-only torch their C++ ops do not load,
and `import torchvision` then fails registering fake kernels of `torchvision::nms` and
`qnms`. The image classifier uses only torchvision's transforms, which do not need those ops,
so where that import fails, TorchServe's Python processes are started with a `sitecustomize`
(on PYTHONPATH, which TorchServe passes on to its workers) that declares the two operators'
schemas just before torchvision is first imported.

An answer body over INLINE_BODY_BYTES (an image's attributions: 3 x 224 x 224 floats, one a
line in TorchServe's indented JSON) is stored gzipped (`pack_body`, `unpack_body`).
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile
import textwrap

from tests.support.forms import multipart
from tests.support.torchserve_answers import TORCHSERVE_BIN, TorchServe, save

HANDLERS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "handlers")
VERSION = "1.0"
#: bodies larger than this are stored gzipped
INLINE_BODY_BYTES = 64 * 1024
IMAGE_LABELS = {"0": "zero", "1": "one", "2": "two", "3": "three", "4": "four", "5": "five"}
TEXT_LABELS = {"0": "positive", "1": "neutral", "2": "negative"}
TEXT = "<b>The</b> movie was GREAT fun!"
#: the cleaned tokens of TEXT and of "Great", with TEXT's 2-grams: the vocabulary
VOCAB_TOKENS = ["the", "movie", "was", "great", "fun", "the movie", "movie was", "was great",
                "great fun"]
BOUNDARY = "zerobatch-explanations-boundary"
PNG = {"content-type": "image/png"}
PLAIN = {"content-type": "text/plain"}
JSON_TYPE = {"content-type": "application/json"}


def small_png() -> bytes:
    """A 40 x 30 RGB picture of colour ramps, as PNG."""
    from PIL import Image

    image = Image.new("RGB", (40, 30))
    image.putdata([((x * 6) % 256, (y * 8) % 256, ((x + y) * 3) % 256)
                   for y in range(30) for x in range(40)])
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _ramp(shape: tuple[int, ...], step: float, scale: float = 1.0, cosine: bool = False):
    import torch

    count = 1
    for size in shape:
        count *= size
    angles = torch.arange(count, dtype=torch.float32) * step
    return (torch.cos(angles) if cosine else torch.sin(angles)).mul(scale).reshape(shape)


def image_state_dict() -> dict:
    """TinyConvNet's weights, from sines and cosines (no random generator)."""
    import torch

    return {"conv.weight": _ramp((4, 3, 3, 3), 0.37, 0.5),
            "conv.bias": torch.linspace(-0.1, 0.1, 4),
            "fc.weight": _ramp((6, 4), 0.61, cosine=True),
            "fc.bias": torch.arange(6, dtype=torch.float32) * 0.01}


def text_state_dict() -> dict:
    """TinyTextBag's weights, from sines and cosines (no random generator)."""
    import torch

    return {"embedding.weight": _ramp((16, 4), 0.29),
            "fc.weight": _ramp((3, 4), 0.43, cosine=True),
            "fc.bias": torch.zeros(3)}


def requests() -> dict[str, tuple[str, str, bytes, dict]]:
    """case -> (method, path, body, headers) for TorchServe with its default envelope."""
    image = small_png()
    form = multipart(BOUNDARY, ("data", "ramp.png", "image/png", image),
                     ("target", None, None, b"2"))
    return {
        "image_explain": ("POST", "/explanations/images", image, PNG),
        "image_explain_version": ("POST", "/explanations/images/1.0", image, PNG),
        "image_explain_base64": ("POST", "/explanations/images",
                                 base64.b64encode(image), PLAIN),
        # a form's target reaches the handler as text, which Captum refuses
        "image_explain_form_target": (
            "POST", "/explanations/images", form,
            {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}),
        "image_explain_unreadable": ("POST", "/explanations/images", b"not an image",
                                     {"content-type": "application/octet-stream"}),
        "image_predict": ("POST", "/predictions/images", image, PNG),
        "image_unreadable": ("POST", "/predictions/images", b"not an image",
                             {"content-type": "application/octet-stream"}),
        "text_explain": ("POST", "/explanations/texts", TEXT.encode(), PLAIN),
        "text_explain_one_word": ("POST", "/explanations/texts", b"Great", PLAIN),
        "text_predict": ("POST", "/predictions/texts", TEXT.encode(), PLAIN),
    }


def kserve_requests() -> dict[str, tuple[str, str, bytes, dict]]:
    """KServe v1 under TorchServe's kserve envelope: each instance is a handler's row, so a
    target given there reaches get_insights as a number."""
    image = base64.b64encode(small_png()).decode()
    return {
        "kserve_image_explain_target": (
            "POST", "/v1/models/images:explain",
            json.dumps({"instances": [{"data": image, "target": 2}]}).encode(), JSON_TYPE),
        "kserve_text_explain_target": (
            "POST", "/v1/models/texts:explain",
            json.dumps({"instances": [{"data": TEXT, "target": 1}]}).encode(), JSON_TYPE),
    }


def build_archives(export_dir: str, archiver: str) -> dict[str, str]:
    """Pack `images` and `texts` with the torch-model-archiver at `archiver` into export_dir;
    model name -> archive file name."""
    import torch

    vocab = {"<unk>": 0, **{token: index + 1 for index, token in enumerate(VOCAB_TOKENS)}}
    models = {"images": ("image_classifier", "tiny_conv_net.py", image_state_dict(),
                         IMAGE_LABELS, {}),
              "texts": ("text_classifier", "tiny_text_bag.py", text_state_dict(),
                        TEXT_LABELS, {"source_vocab.pt": vocab})}
    archives = {}
    for name, (handler, model_file, weights, labels, saved_extras) in models.items():
        with tempfile.TemporaryDirectory(prefix=f"{name}-src-") as source:
            torch.save(weights, os.path.join(source, "weights.pth"))
            extras = [os.path.join(source, "index_to_name.json")]
            with open(extras[0], "w") as out:
                json.dump(labels, out)
            for file_name, value in saved_extras.items():
                extras.append(os.path.join(source, file_name))
                torch.save(value, extras[-1])
            result = subprocess.run(
                [archiver, "--model-name", name, "--version", VERSION, "--handler", handler,
                 "--model-file", os.path.join(HANDLERS, model_file),
                 "--serialized-file", os.path.join(source, "weights.pth"),
                 "--extra-files", ",".join(extras), "--export-path", export_dir, "--force"],
                capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"torch-model-archiver failed: {result.stderr}")
        archives[name] = f"{name}.mar"
    return archives


def pack_body(answer: dict) -> dict:
    """The answer as stored: a body over INLINE_BODY_BYTES gzipped (no timestamp), with its
    length and SHA-256."""
    raw = base64.b64decode(answer["body_b64"])
    if len(raw) <= INLINE_BODY_BYTES:
        return answer
    packed = {key: value for key, value in answer.items() if key != "body_b64"}
    packed.update(body_gzip_b64=base64.b64encode(gzip.compress(raw, 9, mtime=0)).decode(),
                  body_bytes=len(raw), body_sha256=hashlib.sha256(raw).hexdigest())
    return packed


def unpack_body(answer: dict) -> bytes:
    """The body bytes of a stored answer, gzipped or not."""
    if "body_b64" in answer:
        return base64.b64decode(answer["body_b64"])
    raw = gzip.decompress(base64.b64decode(answer["body_gzip_b64"]))
    assert hashlib.sha256(raw).hexdigest() == answer["body_sha256"]
    return raw


TORCHVISION_SHIM = textwrap.dedent('''\
    """Declares torchvision's nms and qnms before torchvision is imported, where its C++ ops
    do not load (a CUDA build of torchvision on a CPU-only torch): recording only."""
    import sys

    _KEPT = []


    class _DeclareTorchvisionOps:
        def find_spec(self, name, path=None, target=None):
            if name == "torchvision":
                sys.meta_path.remove(self)
                import torch

                library = torch.library.Library("torchvision", "DEF")
                for op in ("nms", "qnms"):
                    library.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold)"
                                   " -> Tensor")
                _KEPT.append(library)
            return None


    sys.meta_path.insert(0, _DeclareTorchvisionOps())
''')


def _torchvision_needs_shim() -> bool:
    python = os.path.join(TORCHSERVE_BIN, "python")
    result = subprocess.run([python, "-c", "import torchvision.transforms"],
                            capture_output=True, text=True, timeout=300)
    if result.returncode == 0:
        return False
    if "torchvision::nms does not exist" in result.stderr:
        return True
    raise RuntimeError(f"torchvision does not import in {TORCHSERVE_BIN}: {result.stderr}")


def main() -> int:
    answers = {}
    with tempfile.TemporaryDirectory() as store, tempfile.TemporaryDirectory() as shim:
        if _torchvision_needs_shim():
            with open(os.path.join(shim, "sitecustomize.py"), "w") as out:
                out.write(TORCHVISION_SHIM)
            os.environ["PYTHONPATH"] = os.pathsep.join(
                filter(None, [shim, os.environ.get("PYTHONPATH")]))
        archives = build_archives(store, os.path.join(TORCHSERVE_BIN, "torch-model-archiver"))
        with TorchServe(store, archives) as torchserve:
            for case, (method, path, body, headers) in requests().items():
                answers[case] = torchserve.record(method, path, body, headers)
        with TorchServe(store, archives, config={"service_envelope": "kserve"}) as torchserve:
            for case, (method, path, body, headers) in kserve_requests().items():
                answers[case] = torchserve.record(method, path, body, headers)
    for case, answer in answers.items():
        print(case, answer["status"], len(base64.b64decode(answer["body_b64"])),
              base64.b64decode(answer["body_b64"])[:100])
    print(save("explanations", {case: pack_body(answer) for case, answer in answers.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
