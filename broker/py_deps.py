"""Per-model Python dependencies (`--install-py-dep-per-model`, TorchServe's flag).

A model whose manifest names a `requirementsFile` gets it installed with pip into a directory
of its own, RUN_DIR/deps/<model>-<version>-<hash of its directory>, before any worker starts;
its workers put that directory first on sys.path (ModelConfig.python_path). The server's own
environment is never modified. A marker file written after a successful install records the
hash of the requirements, so a restart with the same requirements reuses the directory. A
failing install refuses the model with the end of pip's output in the error.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
from dataclasses import replace

from zerobatch.config import ModelConfig
from zerobatch.errors import ConfigError

log = logging.getLogger("zerobatch.broker.py_deps")

DEPS_DIR = "deps"
MARKER_FILE = ".zerobatch-installed"
PIP_TIMEOUT_S = 600
PIP_ERROR_LINES = 20
_UNSAFE_NAME_CHARS = re.compile(r"[^A-Za-z0-9._-]+")


def requirements_path(model_dir: str, manifest: dict) -> str | None:
    """The requirements file the manifest names, when it is present in the model directory."""
    named = (manifest.get("model") or {}).get("requirementsFile")
    if not named:
        return None
    if not isinstance(named, str):
        raise ConfigError(f'{model_dir}: "model.requirementsFile" must be a file name')
    root = os.path.realpath(model_dir)
    path = os.path.realpath(os.path.join(model_dir, named))
    if not path.startswith(root + os.sep):
        raise ConfigError(f'{model_dir}: "model.requirementsFile" {named!r} lies outside the '
                          "model directory")
    return path if os.path.isfile(path) else None


def deps_dir(model: ModelConfig, model_dir: str, run_dir: str) -> str:
    """The private dependency directory of this model version."""
    digest = hashlib.sha256(os.path.realpath(model_dir).encode()).hexdigest()[:12]
    name = _UNSAFE_NAME_CHARS.sub("_", f"{model.name}-{model.version}").lstrip(".")
    return os.path.join(os.path.abspath(run_dir), DEPS_DIR, f"{name}-{digest}")


def install(model: ModelConfig, model_dir: str, manifest: dict, run_dir: str,
            enabled: bool) -> ModelConfig:
    """model with its dependency directory on python_path, installing it first if needed.

    Unchanged when the model has no requirements file or `enabled` is False (then logged)."""
    requirements = requirements_path(model_dir, manifest)
    if requirements is None:
        return model
    if not enabled:
        log.info("model %s ships %s; not installed (start with --install-py-dep-per-model "
                 "to install it for this model)", model.key, os.path.basename(requirements))
        return model
    target = deps_dir(model, model_dir, run_dir)
    with open(requirements, "rb") as handle:
        wanted = _marker_text(handle.read())
    marker = os.path.join(target, MARKER_FILE)
    try:
        with open(marker, encoding="utf-8") as handle:
            reuse = handle.read() == wanted
    except OSError:
        reuse = False
    if reuse:
        log.info("model %s: dependencies already installed in %s", model.key, target)
    else:
        _pip_install(model, requirements, target, wanted)
    return replace(model, python_path=(target, *model.python_path))


def _marker_text(requirements: bytes) -> str:
    version = ".".join(map(str, sys.version_info[:3]))
    return f"{hashlib.sha256(requirements).hexdigest()} python {version}\n"


def _pip_install(model: ModelConfig, requirements: str, target: str, marker_text: str) -> None:
    staging = f"{target}.staging-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    os.makedirs(staging)
    argv = [sys.executable, "-m", "pip", "install", "--no-input", "--disable-pip-version-check",
            "-r", requirements, "--target", staging]
    log.info("model %s: installing %s into %s", model.key, requirements, target)
    try:
        try:
            result = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                                    text=True, errors="replace", timeout=PIP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise ConfigError(f"model {model.key}: pip install -r {requirements} did not finish "
                              f"within {PIP_TIMEOUT_S} s") from None
        except OSError as exc:
            raise ConfigError(f"model {model.key}: cannot run pip: {exc}") from None
        if result.returncode != 0:
            output = (result.stdout + result.stderr).strip().splitlines()
            tail = "\n".join(output[-PIP_ERROR_LINES:])
            raise ConfigError(f"model {model.key}: pip install -r {requirements} failed "
                              f"(exit {result.returncode}):\n{tail}")
        with open(os.path.join(staging, MARKER_FILE), "w", encoding="utf-8") as handle:
            handle.write(marker_text)
        shutil.rmtree(target, ignore_errors=True)
        os.rename(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log.info("model %s: dependencies installed in %s", model.key, target)
