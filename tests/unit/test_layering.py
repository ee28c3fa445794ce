"""The architecture as a test: who may import whom, and where torch may appear.

api/, broker/ and worker/ share only the zerobatch/ contract; torch stays in the workers.
"""

from __future__ import annotations

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGES = ("api", "broker", "worker", "zerobatch")
#: package -> top-level modules it must never import
FORBIDDEN = {
    "zerobatch": {"api", "broker", "worker", "torch", "falcon", "uvicorn"},
    "broker": {"api", "worker", "torch", "falcon", "uvicorn"},
    "api": {"broker", "worker", "torch"},
    "worker": {"api", "broker", "falcon", "uvicorn"},
}


def imported_top_levels(path: str) -> set[str]:
    with open(path, encoding="utf-8") as handle:
        tree = ast.parse(handle.read(), path)
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def python_files(package: str):
    for folder, _dirs, files in os.walk(os.path.join(ROOT, package)):
        for name in files:
            if name.endswith(".py"):
                yield os.path.join(folder, name)


@pytest.mark.parametrize("package", PACKAGES)
def test_package_imports_respect_the_layers(package):
    offenders = {}
    for path in python_files(package):
        bad = imported_top_levels(path) & FORBIDDEN[package]
        if bad:
            offenders[os.path.relpath(path, ROOT)] = sorted(bad)
    assert offenders == {}, f"{package} imports what it must not: {offenders}"


def test_broker_process_does_not_load_torch():
    import subprocess
    import sys

    code = ("import sys, broker.__main__, broker.core, broker.loop, broker.supervisor, "
            "api.http_app, api.client; "
            "print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
