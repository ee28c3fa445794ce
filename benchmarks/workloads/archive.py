"""Building a workload: its .mar made by the real torch-model-archiver, and the same files
unpacked as a model directory (TorchServe's no-archive layout), cached by content.

The archiver is the `torch-model-archiver` script next to sys.executable (0.12.0 in the
project's venv), so TorchServe gets archives made by its own tool. The MLP's weights are made
by `mlp/make_mlp.py` in a subprocess: this process never imports torch. A build stamp holds a
hash of everything that goes into an archive; a second build with the same sources returns at
once."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
import zipfile

from benchmarks.workloads.handler_host import MANIFEST_PATH
from benchmarks.workloads.spec import CONTENT_TYPE, NAMES, Workload, payload

HERE = os.path.dirname(os.path.abspath(__file__))
ARCHIVER = os.path.join(os.path.dirname(sys.executable), "torch-model-archiver")
MAKE_MLP = os.path.join(HERE, "mlp", "make_mlp.py")
MODEL_VERSION = "1.0"
#: bump to rebuild every cached workload when the layout of a build changes
BUILD_FORMAT = 1
ARCHIVER_TIMEOUT_S = 300
MAKE_MLP_TIMEOUT_S = 300


def handler_file(name: str) -> str:
    return f"{name}_handler.py"


def _sources(name: str) -> dict[str, list[str]]:
    """The files each workload's archive is made from (and whose bytes key the cache)."""
    handler = os.path.join(HERE, name, handler_file(name))
    if name == "echo":
        return {"handler": [handler], "extra": [], "makers": []}
    if name == "mlp":
        return {"handler": [handler], "extra": [], "makers": [MAKE_MLP]}
    if name == "sleep":
        return {"handler": [handler], "extra": [os.path.join(HERE, "sleep", "sleep.json")],
                "makers": []}
    raise ValueError(f"unknown workload {name!r}; choose one of {', '.join(NAMES)}")


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def source_key(name: str, paths: list[str], tools: dict[str, str | None]) -> str:
    """A hash of the workload name, the bytes of its source files and the tool versions."""
    digest = hashlib.sha256(json.dumps([BUILD_FORMAT, name, tools], sort_keys=True).encode())
    for path in paths:
        digest.update(os.path.basename(path).encode() + b"\0")
        with open(path, "rb") as source:
            digest.update(hashlib.sha256(source.read()).digest())
    return digest.hexdigest()


def _key(name: str) -> str:
    sources = _sources(name)
    tools = {"torch-model-archiver": _version("torch-model-archiver")}
    if sources["makers"]:
        tools["torch"] = _version("torch")  # the weights depend on torch's init and RNG
    return source_key(name, [p for group in sources.values() for p in group], tools)


def build(name: str, out_dir: str) -> Workload:
    """Build (or reuse) out_dir/archives/<name>.mar and out_dir/models/<name>/."""
    key = _key(name)  # also rejects unknown names
    out_dir = os.path.abspath(out_dir)
    archive = os.path.join(out_dir, "archives", f"{name}.mar")
    model_dir = os.path.join(out_dir, "models", name)
    stamp = os.path.join(out_dir, "archives", f"{name}.key")
    if not _is_cached(stamp, key, archive, model_dir):
        _make(name, out_dir, archive, model_dir, stamp, key)
    return Workload(name=name, archive=archive, model_dir=model_dir,
                    handler=handler_file(name), payload=payload(name),
                    content_type=CONTENT_TYPE)


def _is_cached(stamp: str, key: str, archive: str, model_dir: str) -> bool:
    try:
        with open(stamp) as stamp_file:
            if stamp_file.read().strip() != key:
                return False
    except OSError:
        return False
    return os.path.isfile(archive) and os.path.isfile(os.path.join(model_dir, MANIFEST_PATH))


def _make(name: str, out_dir: str, archive: str, model_dir: str, stamp: str, key: str) -> None:
    if not os.path.isfile(ARCHIVER):
        raise RuntimeError(f"{ARCHIVER} not found: install it into this venv with "
                           f"`{sys.executable} -m pip install torch-model-archiver==0.12.0`")
    os.makedirs(os.path.dirname(archive), exist_ok=True)
    os.makedirs(os.path.dirname(model_dir), exist_ok=True)
    staging = os.path.join(out_dir, f".staging-{name}-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    try:
        sources = _sources(name)
        argv = [ARCHIVER, "--model-name", name, "--version", MODEL_VERSION,
                "--handler", sources["handler"][0], "--export-path", staging, "--force"]
        if name == "mlp":
            weights = os.path.join(staging, "mlp.pt")
            _run([sys.executable, MAKE_MLP, weights], MAKE_MLP_TIMEOUT_S, "making mlp.pt")
            argv += ["--serialized-file", weights]
        if sources["extra"]:
            argv += ["--extra-files", ",".join(sources["extra"])]
        # the archiver copies the files to $TMPDIR/<model name> and deletes that folder after,
        # so two builds of one name at once (two runs, parallel tests) would collide: give it
        # a temp dir of its own
        archiver_tmp = os.path.join(staging, "tmp")
        os.makedirs(archiver_tmp)
        _run(argv, ARCHIVER_TIMEOUT_S, f"torch-model-archiver for {name}",
             env=dict(os.environ, TMPDIR=archiver_tmp))
        built = os.path.join(staging, f"{name}.mar")
        unpacked = os.path.join(staging, "model")
        with zipfile.ZipFile(built) as mar:
            mar.extractall(unpacked)
        if not os.path.isfile(os.path.join(unpacked, MANIFEST_PATH)):
            raise RuntimeError(f"{built} has no {MANIFEST_PATH}")
        # the stamp goes first and comes back last, so a build cut short is never "cached"
        if os.path.exists(stamp):
            os.remove(stamp)
        os.replace(built, archive)
        shutil.rmtree(model_dir, ignore_errors=True)
        os.replace(unpacked, model_dir)
        with open(stamp + ".tmp", "w") as stamp_file:
            stamp_file.write(key + "\n")
        os.replace(stamp + ".tmp", stamp)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _run(argv: list[str], timeout_s: float, what: str, env: dict | None = None) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, env=env)
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed ({result.returncode}):\n{result.stdout}"
                           f"{result.stderr}")
