"""Virtual environments for the peers, under `<repo>/.bench/venvs/<name>`.

Each peer gets its own environment so its pins (TorchServe 0.12.0's, LitServe's) never meet
ours. Installs run as ordered steps: torch first, pinned, because pip then takes the CPU
wheel on this disk, while a later unpinned `torch` requirement would pull a CUDA build of
several GB. A marker file records the steps that completed, so `ensure_venv` is a no-op when
they have not changed, and a file lock keeps two processes from installing at once.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
import sys

from benchmarks.common import ROOT

VENVS_DIR = os.path.join(ROOT, ".bench", "venvs")
TORCH_PIN = "torch==2.13.0"
_MARKER = "zerobatch-installed.json"
_INSTALL_TIMEOUT_S = 1800


def venv_dir(name: str) -> str:
    return os.path.join(VENVS_DIR, name)


def venv_bin(name: str, program: str = "python") -> str:
    return os.path.join(venv_dir(name), "bin", program)


def is_installed(name: str, steps: list[list[str]]) -> bool:
    try:
        with open(os.path.join(venv_dir(name), _MARKER)) as handle:
            return json.load(handle) == steps
    except (OSError, ValueError):
        return False


def ensure_venv(name: str, steps: list[list[str]]) -> str:
    """Create the venv and pip-install each step in order unless already done; returns its
    python. A failed install raises RuntimeError with pip's last lines."""
    os.makedirs(VENVS_DIR, exist_ok=True)
    with open(os.path.join(VENVS_DIR, f".{name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if is_installed(name, steps):
            return venv_bin(name)
        directory = venv_dir(name)
        if os.path.isdir(directory) and not os.path.exists(venv_bin(name)):
            shutil.rmtree(directory)
        if not os.path.exists(venv_bin(name)):
            _run([sys.executable, "-m", "venv", directory], f"creating the venv {directory}")
        for step in steps:
            _run([venv_bin(name), "-m", "pip", "install", "--disable-pip-version-check",
                  *step], f"pip install {' '.join(step)} into {directory}")
        with open(os.path.join(directory, _MARKER), "w") as handle:
            json.dump(steps, handle)
    return venv_bin(name)


def dist_version(name: str, distribution: str) -> str | None:
    """The version of a distribution installed in the peer's venv (None if absent)."""
    if not os.path.exists(venv_bin(name)):
        return None
    result = subprocess.run(
        [venv_bin(name), "-c", "import sys, importlib.metadata as m; "
         "print(m.version(sys.argv[1]))", distribution],
        capture_output=True, text=True, timeout=60)
    if result.returncode != 0:
        return None
    return result.stdout.strip() or None


def _run(argv: list[str], what: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=_INSTALL_TIMEOUT_S)
    if result.returncode != 0:
        tail = "\n".join((result.stdout + result.stderr).splitlines()[-20:])
        raise RuntimeError(f"{what} failed (exit {result.returncode}):\n{tail}")
