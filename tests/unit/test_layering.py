"""The architecture as a test: who may import whom, and where torch may appear.

The installed package is `zerobatch`; the repository's `api/`, `broker/` and `worker/` folders
are its subpackages `zerobatch.api`, `zerobatch.broker` and `zerobatch.worker` (setup.py), and
`zerobatch/` itself is the contract they share. The three never import each other, torch stays
in the workers, and nothing in the product imports by the folder names (`import broker`) or
from the lab (`benchmarks`, `examples`, `tests`): installed, those names do not exist.
"""

from __future__ import annotations

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
#: repository folder -> its layer's name
FOLDERS = {"api": "api", "broker": "broker", "worker": "worker", "zerobatch": "contract"}
#: top-level names that exist only in a checkout
CHECKOUT_ONLY = {"api", "broker", "worker", "benchmarks", "examples", "tests"}
#: layer -> layers and third-party top-level modules it must never import
FORBIDDEN = {
    "contract": {"api", "broker", "worker", "torch", "falcon", "uvicorn"},
    "broker": {"api", "worker", "torch", "falcon", "uvicorn"},
    "api": {"broker", "worker", "torch"},
    "worker": {"api", "broker", "falcon", "uvicorn"},
}


def layer_of(module: str) -> str:
    """The layer an absolute import lands in: a zerobatch subpackage, the contract, or the
    third-party top-level name itself."""
    parts = module.split(".")
    if parts[0] != "zerobatch":
        return parts[0]
    if len(parts) > 1 and parts[1] in ("api", "broker", "worker"):
        return parts[1]
    return "contract"


def imports_of(path: str) -> list[str]:
    """Every absolute module an import statement in the file names (`from zerobatch import
    broker` counts as `zerobatch.broker`)."""
    with open(path, encoding="utf-8") as handle:
        tree = ast.parse(handle.read(), path)
    modules = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.append(node.module)
            if node.module == "zerobatch":
                modules.extend(f"zerobatch.{alias.name}" for alias in node.names)
    return modules


def python_files(folder: str):
    for parent, _dirs, files in os.walk(os.path.join(ROOT, folder)):
        for name in files:
            if name.endswith(".py"):
                yield os.path.join(parent, name)


@pytest.mark.parametrize("folder", FOLDERS)
def test_package_imports_respect_the_layers(folder):
    layer, offenders = FOLDERS[folder], {}
    for path in python_files(folder):
        bad = {layer_of(module) for module in imports_of(path)} & FORBIDDEN[layer]
        if bad:
            offenders[os.path.relpath(path, ROOT)] = sorted(bad)
    assert offenders == {}, f"{folder}/ imports what it must not: {offenders}"


@pytest.mark.parametrize("folder", FOLDERS)
def test_the_product_imports_nothing_that_exists_only_in_a_checkout(folder):
    offenders = {}
    for path in python_files(folder):
        bad = {module.split(".")[0] for module in imports_of(path)} & CHECKOUT_ONLY
        if bad:
            offenders[os.path.relpath(path, ROOT)] = sorted(bad)
    assert offenders == {}, f"{folder}/ imports checkout-only names: {offenders}"


def test_the_layer_of_an_import():
    assert layer_of("zerobatch.broker.core") == "broker"
    assert layer_of("zerobatch.api") == "api"
    assert layer_of("zerobatch.protocol") == "contract"
    assert layer_of("zerobatch") == "contract"
    assert layer_of("torch.nn") == "torch"


def test_a_forbidden_import_is_seen(tmp_path):
    module = tmp_path / "bad.py"
    module.write_text("from zerobatch import worker\nimport zerobatch.api.client\nimport broker\n")
    assert {layer_of(name) for name in imports_of(str(module))} >= {"worker", "api", "broker"}
