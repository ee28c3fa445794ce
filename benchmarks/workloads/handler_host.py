"""Hosting a workload's handler outside a server: import its file and give it a minimal context.

The handlers use only `context.system_properties["model_dir"]`, `.get("batch_size")` and
`context.manifest`, so this small stand-in is enough for the batched-ceiling measurement and
for any adapter that calls handle(rows, context) itself. Standard library only, so it also
runs in a peer's virtual environment."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from types import ModuleType

MANIFEST_PATH = os.path.join("MAR-INF", "MANIFEST.json")


class MinimalContext:
    """The part of TorchServe's Context that the workload handlers read."""

    def __init__(self, model_dir: str, batch_size: int = 1, gpu_id: int | None = None) -> None:
        self.model_dir = os.path.abspath(model_dir)
        self.manifest = read_manifest(self.model_dir)
        self.model_name = self.manifest.get("model", {}).get("modelName", "")
        self.system_properties = {"model_dir": self.model_dir, "batch_size": batch_size,
                                  "gpu_id": gpu_id}


def read_manifest(model_dir: str) -> dict:
    """MAR-INF/MANIFEST.json of a model directory, or {} where it has none."""
    path = os.path.join(model_dir, MANIFEST_PATH)
    if not os.path.exists(path):
        return {}
    with open(path) as manifest_file:
        return json.load(manifest_file)


def load_handler(model_dir: str, handler: str) -> ModuleType:
    """Import handler (a file name inside model_dir) as a fresh module, as TorchServe does:
    with model_dir on sys.path so the handler can import its neighbours."""
    model_dir = os.path.abspath(model_dir)
    path = os.path.join(model_dir, handler)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no handler file {handler!r} in {model_dir}")
    if model_dir not in sys.path:
        sys.path.insert(0, model_dir)
    spec = importlib.util.spec_from_file_location(os.path.splitext(handler)[0], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not callable(getattr(module, "handle", None)):
        raise AttributeError(f"{path} has no module-level handle(data, context)")
    return module
