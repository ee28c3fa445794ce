"""broker/preload.py: which models get a first worker started before their archive is
extracted. Real archives written with zipfile and tarfile in a temporary directory."""

from __future__ import annotations

import json
import tarfile
import zipfile

import pytest

from zerobatch.broker.preload import wants_preload

TORCH_HANDLER = "import torch\n\n\ndef handle(data, context):\n    return data\n"
PLAIN_HANDLER = "def handle(data, context):\n    return data\n"
BASE_HANDLER = ("from ts.torch_handler.base_handler import BaseHandler\n\n\n"
                "class H(BaseHandler):\n    pass\n")


def mar(path, handler: str, members: dict[str, str]) -> str:
    manifest = {"runtime": "python", "model": {"modelName": "m", "handler": handler,
                                               "modelVersion": "1.0"}}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("MAR-INF/MANIFEST.json", json.dumps(manifest))
        for name, text in members.items():
            archive.writestr(name, text)
    return str(path)


@pytest.mark.parametrize("handler, members, expected", [
    ("h.py", {"h.py": TORCH_HANDLER}, True),
    ("h", {"h.py": TORCH_HANDLER}, True),  # named without .py
    ("h.py:handle", {"h.py": TORCH_HANDLER}, True),  # module:function
    ("h.py", {"h.py": BASE_HANDLER}, True),  # a TorchServe BaseHandler subclass
    ("image_classifier", {}, True),  # a built-in handler: no file of the archive
    ("h.py", {"h.py": PLAIN_HANDLER}, False),  # echo-like: stays torch-free
    ("", {"h.py": TORCH_HANDLER}, False),  # no handler: the extraction reports it
])
def test_zip_archives_by_their_handler(tmp_path, handler, members, expected):
    assert wants_preload(mar(tmp_path / "m.mar", handler, members), False) is expected


def test_not_with_per_model_requirements(tmp_path):
    path = mar(tmp_path / "m.mar", "h.py", {"h.py": TORCH_HANDLER})
    assert wants_preload(path, True) is False


def test_not_for_directories_tar_archives_or_garbage(tmp_path):
    source = tmp_path / "src"
    (source / "MAR-INF").mkdir(parents=True)
    (source / "MAR-INF" / "MANIFEST.json").write_text(json.dumps(
        {"model": {"modelName": "m", "handler": "h.py"}}))
    (source / "h.py").write_text(TORCH_HANDLER)
    assert wants_preload(str(source), False) is False
    tgz = tmp_path / "m.tar.gz"
    with tarfile.open(tgz, "w:gz") as archive:
        archive.add(source, arcname="m")
    assert wants_preload(str(tgz), False) is False
    garbage = tmp_path / "g.mar"
    garbage.write_bytes(b"PK\x03\x04 not really a zip")
    assert wants_preload(str(garbage), False) is False
    no_manifest = tmp_path / "n.mar"
    with zipfile.ZipFile(no_manifest, "w") as archive:
        archive.writestr("h.py", TORCH_HANDLER)
    assert wants_preload(str(no_manifest), False) is False
    bad_manifest = mar(tmp_path / "b.mar", "h.py", {})
    with zipfile.ZipFile(bad_manifest, "w") as archive:
        archive.writestr("MAR-INF/MANIFEST.json", "{not json")
    assert wants_preload(bad_manifest, False) is False
    assert wants_preload(str(tmp_path / "missing.mar"), False) is False
