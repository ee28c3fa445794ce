"""Which models get their first worker started while their archive is being extracted.

Extracting a `.mar` (a fifth of a second for the benchmark MLP's 50 MB) and starting a worker
that imports torch (a second or more) both lie on the way to a model's first answer, and the
worker needs the model directory only once torch is imported. So for such a model the broker
starts the first worker before it extracts anything, as `python -P -m zerobatch.worker
--preload torch --config -`: the worker imports torch, then reads its WorkerConfig from
stdin, which the supervisor writes once the directory is ready and model-config.yaml is
applied (broker.supervisor). The preloaded worker of a model that ends up refused, or with
no worker slot, is killed (and one whose stdin closes before a
configuration arrives exits 0). Restarts and the other slots start the usual way.

A model is preloaded when it is a zip archive (`.mar`) whose handler mentions torch, or names
no file of the archive (TorchServe's built-in handlers, which all import torch). Not:
directories (nothing to extract), `.tar.gz` (finding the handler means inflating the whole
archive), models with per-model requirements (their own packages, torch among them, must come
first on the path), and handlers that never mention torch (echo starts in half a second
without it, and stays that way).
"""

from __future__ import annotations

import logging
import zipfile

from zerobatch import model_files
from zerobatch.broker.archive import MANIFEST_MEMBER
from zerobatch.errors import ConfigError

log = logging.getLogger("zerobatch.broker.preload")

#: The module a preloaded worker imports before it reads its configuration.
PRELOAD_MODULE = "torch"
#: Handler files larger than this are not read to decide (they are preloaded).
MAX_HANDLER_BYTES = 1 << 20


def wants_preload(path: str, install_py_deps: bool) -> bool:
    """Whether the model at `path` (the CLI's path: archive or directory) gets a preloaded
    first worker; False on anything unexpected, which the extraction will then report."""
    if install_py_deps or not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as archive:
            member = archive.getinfo(MANIFEST_MEMBER)
            if member.file_size > model_files.MAX_MANIFEST_BYTES:
                return False
            manifest = model_files.parse_manifest(archive.read(member),
                                                  f"{path}: {MANIFEST_MEMBER}")
            handler = manifest["model"]["handler"].strip().partition(":")[0]
            member = handler if handler.endswith(".py") else f"{handler}.py"
            try:
                info = archive.getinfo(member)
            except KeyError:
                return True  # a built-in handler, or an installed module
            if info.file_size > MAX_HANDLER_BYTES:
                return True
            return PRELOAD_MODULE.encode() in archive.read(info)
    except (ConfigError, OSError, KeyError, zipfile.BadZipFile, RuntimeError) as exc:
        log.debug("%s: not preloading a worker: %s", path, exc)
        return False

