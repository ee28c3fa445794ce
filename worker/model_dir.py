"""Reading a model directory laid out as TorchServe's `no-archive` format.

A model directory holds `MAR-INF/MANIFEST.json`, the handler file, the serialized weights and
whatever extra files the archive carried. This module reads and checks the manifest; every
failure is a ConfigError that names the file and says what is wrong with it.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

from zerobatch.errors import ConfigError

MANIFEST_PATH = os.path.join("MAR-INF", "MANIFEST.json")


def manifest_file(model_dir: str) -> str:
    return os.path.join(model_dir, MANIFEST_PATH)


def read_manifest(model_dir: str) -> dict[str, Any]:
    """Load and check the TorchServe manifest of `model_dir`."""
    if not os.path.isdir(model_dir):
        raise ConfigError(f"model directory {model_dir!r} does not exist or is not a directory")
    path = manifest_file(model_dir)
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: manifest not found; a model directory needs "
                          f"{MANIFEST_PATH} (as written by torch-model-archiver)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the manifest: {exc}") from None
    model = manifest.get("model") if isinstance(manifest, dict) else None
    if not isinstance(model, dict):
        raise ConfigError(f'{path}: the manifest needs a "model" object')
    handler = model.get("handler")
    if not isinstance(handler, str) or not handler.strip():
        raise ConfigError(f'{path}: "model.handler" must name the handler file or module')
    for key in ("modelName", "serializedFile", "modelFile", "modelVersion"):
        if key in model and model[key] is not None and not isinstance(model[key], str):
            raise ConfigError(f'{path}: "model.{key}" must be a string')
    runtime = manifest.get("runtime", "python")
    if runtime not in ("python", "python3"):
        raise ConfigError(f'{path}: runtime {runtime!r} is not supported; use "python"')
    return manifest


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


#: The model's YAML config when the manifest names no `model.configFile`.
MODEL_CONFIG_FILE = "model-config.yaml"


def read_model_yaml_config(model_dir: str, manifest: dict[str, Any]) -> dict[str, Any]:
    """The model's `model-config.yaml` (or the manifest's `configFile`) as a dict; {} if none.

    This is what handlers read as `context.model_yaml_config` (e.g. its `handler` section).
    """
    name = manifest["model"].get("configFile") or MODEL_CONFIG_FILE
    path = os.path.join(model_dir, name)
    if not os.path.isfile(path):
        if manifest["model"].get("configFile"):
            raise ConfigError(f'{manifest_file(model_dir)}: "model.configFile" names {name}, '
                              f"which is not in {model_dir}")
        return {}
    import yaml  # only models that carry a config pay for the import

    try:
        with open(path, encoding="utf-8") as f:
            config = yaml.safe_load(f)
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: cannot read the model config: {exc}") from None
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise ConfigError(f"{path}: the model config must be a YAML mapping, "
                          f"not {type(config).__name__}")
    return config
