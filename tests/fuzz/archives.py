"""Fuzz target: bytes read as a model archive, by the broker and by the CLI.

An input is the archive file itself. The broker extracts it (`broker.archive.prepare_model`,
zip `.mar` or `.tar.gz`/`.tar`, told apart by content), and the CLI reads its manifest
(`api.archiver.read_archive_manifest`). What must hold:

- both raise nothing but ArchiveError / ConfigError (ArchiveError is a ConfigError),
  whatever the zip, tar and compression readers raise on a damaged archive;
- an accepted archive is a directory under the work root's models/ with a valid manifest;
- nothing is written outside the extraction directory: a directory beside the work root
  stays empty, the work root holds only the archive's own directory (no staging directory
  left behind), and nothing in that resolves outside it.
"""

from __future__ import annotations

import io
import os
import stat
import tempfile
import warnings

from tests.fuzz import _harness

# the standard library's archive readers are fuzzed too: imported here first, they are
# instrumented along with zerobatch
with _harness.instrumented("zerobatch", "zipfile", "tarfile", "gzip"):
    import tarfile
    import zipfile

    from zerobatch import model_files
    from zerobatch.api import archiver
    from zerobatch.broker import archive
    from zerobatch.errors import ConfigError

#: limits small enough that a bomb costs little, large enough for the seeds
MAX_BYTES = 1 << 20
MAX_MEMBERS = 64
ARCHIVE_NAME = "model.mar"
WORK = "work"
OUTSIDE = "outside"

MANIFEST = b'{"runtime": "python", "model": {"modelName": "m", "handler": "handler.py"}}'


def check_archive(data: bytes, top: str) -> str | None:
    """Extract and read data as an archive in the empty directory top; returns the model
    directory when the archive is accepted, None when refused (ConfigError)."""
    path = os.path.join(top, ARCHIVE_NAME)
    work_root = os.path.join(top, WORK)
    outside = os.path.join(top, OUTSIDE)
    os.mkdir(outside)
    with open(path, "wb") as handle:
        handle.write(data)
    try:
        model_dir = archive.prepare_model(path, work_root, max_bytes=MAX_BYTES,
                                          max_members=MAX_MEMBERS)
    except ConfigError:
        model_dir = None
    try:
        archiver.read_archive_manifest(path)
    except ConfigError:
        pass
    check_confined(top)
    if model_dir is not None:
        models = os.path.realpath(os.path.join(work_root, archive.MODELS_DIR))
        assert os.path.realpath(model_dir).startswith(models + os.sep), model_dir
        model_files.read_manifest(model_dir)
    return model_dir


def check_confined(top: str) -> None:
    """Nothing was written outside the archive's own directory under top/work/models/: top
    holds the archive, work/ and an empty outside/; work/ holds models/, models/ at most the
    archive's directory (no staging left behind), and nothing in it resolves outside it."""
    assert not os.listdir(os.path.join(top, OUTSIDE)), "a member was written outside"
    assert set(os.listdir(top)) <= {ARCHIVE_NAME, WORK, OUTSIDE}, os.listdir(top)
    work_root = os.path.join(top, WORK)
    if not os.path.exists(work_root):
        return
    assert os.listdir(work_root) == [archive.MODELS_DIR], os.listdir(work_root)
    models = os.path.join(work_root, archive.MODELS_DIR)
    own = archive._private_name(os.path.join(top, ARCHIVE_NAME))
    assert set(os.listdir(models)) <= {own}, os.listdir(models)
    root = os.path.realpath(os.path.join(models, own))
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            entry = os.path.join(folder, name)
            resolved = os.path.realpath(entry)
            assert resolved == root or resolved.startswith(root + os.sep), (
                f"{entry} resolves outside the extraction directory, to {resolved}")
            mode = os.lstat(entry).st_mode
            assert stat.S_ISDIR(mode) or stat.S_ISREG(mode) or stat.S_ISLNK(mode), entry


def test_one_input(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as top:
        check_archive(data, top)


# ------------------------------------------------------------------ seeds

def zip_bytes(members: list[tuple[str, bytes]], compression: int = zipfile.ZIP_DEFLATED,
              modes: dict[str, int] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as zf, warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a name given twice: wanted here
        for name, content in members:
            info = zipfile.ZipInfo(name)
            info.compress_type = compression
            if modes and name in modes:
                info.external_attr = modes[name] << 16
            zf.writestr(info, content)
    return buffer.getvalue()


def tar_bytes(members: list[tuple[str, bytes | None, str | None, bytes]], mode: str = "w:gz"
              ) -> bytes:
    """members: (name, content or None, link target or None, type) with type a tarfile
    type (REGTYPE, DIRTYPE, SYMTYPE, LNKTYPE...)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=mode) as tar:
        for name, content, target, kind in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            if target is not None:
                info.linkname = target
            info.size = len(content) if content is not None else 0
            tar.addfile(info, io.BytesIO(content) if content is not None else None)
    return buffer.getvalue()


def seeds() -> list[bytes]:
    model = [("MAR-INF/MANIFEST.json", MANIFEST), ("handler.py", b"def handle(d, c):\n"),
             ("extra/data.txt", b"x" * 40)]
    top = [(f"m/{name}", content, None, tarfile.REGTYPE) for name, content in model]
    return [
        zip_bytes(model),
        zip_bytes(model, zipfile.ZIP_STORED, modes={"handler.py": 0o100755}),
        zip_bytes(model, zipfile.ZIP_BZIP2),
        zip_bytes(model, zipfile.ZIP_LZMA),
        zip_bytes(model + [("../outside/escape", b"x"), ("sub/../../x", b"y")],
                  zipfile.ZIP_STORED),
        zip_bytes(model + [("link", b"../outside")], zipfile.ZIP_STORED,
                  modes={"link": 0o120777}),
        tar_bytes([("m", None, None, tarfile.DIRTYPE)] + top),
        tar_bytes(top, "w:bz2"),
        tar_bytes(top, "w:xz"),
        tar_bytes(top + [("m/hard", None, "m/handler.py", tarfile.LNKTYPE),
                         ("m/soft", None, "handler.py", tarfile.SYMTYPE)], "w"),
        tar_bytes(top + [("m/up", None, "../../outside", tarfile.SYMTYPE),
                         ("m/up/x", b"escape", None, tarfile.REGTYPE)], "w"),
        tar_bytes([(name, content, None, tarfile.REGTYPE) for name, content in model]
                  + [("fifo", None, None, tarfile.FIFOTYPE)], "w"),
    ]


if __name__ == "__main__":
    _harness.run("archives", test_one_input, seeds())
