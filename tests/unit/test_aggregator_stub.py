"""broker/_aggregator.pyi types the compiled twin: it names exactly what both twins offer."""

from __future__ import annotations

import ast
import os

from zerobatch.broker import _aggregator_py, aggregator

STUB = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__)))), "broker", "_aggregator.pyi")


def stub_names() -> tuple[set[str], set[str]]:
    """(module-level names, Aggregator's public names) declared in the stub."""
    with open(STUB, encoding="utf-8") as handle:
        tree = ast.parse(handle.read())
    module = {node.target.id for node in tree.body if isinstance(node, ast.AnnAssign)}
    (cls,) = [node for node in tree.body if isinstance(node, ast.ClassDef)]
    methods = {node.name for node in cls.body if isinstance(node, ast.FunctionDef)}
    return module, {name for name in methods if not name.startswith("_") or name == "__len__"}


def public(cls: type) -> set[str]:
    return {name for name in dir(cls) if not name.startswith("_")} | {"__len__"}


def test_the_stub_names_what_the_python_twin_offers():
    module, methods = stub_names()
    assert module == {"MAX_TIME_NS", "MAX_QUEUE_LIMIT"}
    assert methods == public(_aggregator_py.Aggregator)


def test_the_stub_names_what_the_compiled_twin_offers():
    compiled = aggregator._compiled_module()
    _module, methods = stub_names()
    assert methods == public(compiled.Aggregator)
    assert (compiled.MAX_TIME_NS, compiled.MAX_QUEUE_LIMIT) == (
        _aggregator_py.MAX_TIME_NS, _aggregator_py.MAX_QUEUE_LIMIT)
