"""A model directory in the worker: making its handler and private dependencies importable.

The format itself (manifest, model-config.yaml) is read by zerobatch.model_files, which the
CLI and the broker share.
"""

from __future__ import annotations

import os
import sys


def add_to_sys_path(model_dir: str) -> None:
    """Put the model directory first on sys.path so the handler and its siblings import."""
    model_dir = os.path.abspath(model_dir)
    if model_dir not in sys.path:
        sys.path.insert(0, model_dir)


def add_python_path(paths: tuple[str, ...]) -> None:
    """Put the model's private dependency directories (ModelConfig.python_path) first on
    sys.path, in order, before the handler is imported."""
    for path in reversed(paths):
        path = os.path.abspath(path)
        if path in sys.path:
            sys.path.remove(path)
        sys.path.insert(0, path)
