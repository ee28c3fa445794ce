"""TorchServe's `ts.*` import names, answered by zerobatch's own modules inside a worker.

TorchServe handler files import `ts.context`, `ts.torch_handler.base_handler`,
`ts.utils.util`, `ts.metrics.dimension`, ... . No package named `ts` is installed:
`install_ts_aliases()` puts a meta-path finder first on `sys.meta_path` that maps each name
of `TS_ALIASES` to a zerobatch module, so that
`ts.torch_handler.base_handler.BaseHandler is worker.base_handler.BaseHandler` (the same
module objects, not copies; several `ts.metrics` names answer with one module). The packages
`ts`, `ts.torch_handler`, `ts.utils`, `ts.handler_utils` and `ts.metrics` are small
synthetic modules with an empty `__path__`, so a `ts.*` name not in the table is a plain
ModuleNotFoundError.

If a real TorchServe (`pip install torchserve`) is installed too, ours still wins inside the
worker: the finder runs before the path finders, and installing it evicts any `ts` modules
imported earlier. Outside a worker (the broker, the front ends, your own scripts) nothing
changes. Importing this module imports nothing heavy; a target module (and torch, for the
handlers) is imported only when its `ts` name is.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import logging
import sys
from types import ModuleType

log = logging.getLogger(__name__)

#: `ts` name -> the zerobatch module that answers it.
TS_ALIASES: dict[str, str] = {
    "ts.context": "zerobatch.worker.context",
    "ts.torch_handler.base_handler": "zerobatch.worker.base_handler",
    "ts.torch_handler.vision_handler": "zerobatch.worker.handlers.vision_handler",
    "ts.torch_handler.image_classifier": "zerobatch.worker.handlers.image_classifier",
    "ts.torch_handler.image_segmenter": "zerobatch.worker.handlers.image_segmenter",
    "ts.torch_handler.object_detector": "zerobatch.worker.handlers.object_detector",
    "ts.torch_handler.text_handler": "zerobatch.worker.handlers.text_handler",
    "ts.torch_handler.text_classifier": "zerobatch.worker.handlers.text_classifier",
    "ts.utils.util": "zerobatch.worker.compat.util",
    "ts.handler_utils.utils": "zerobatch.worker.compat.handler_utils",
    "ts.handler_utils.timer": "zerobatch.worker.compat.timer",
    "ts.handler_utils.micro_batching": "zerobatch.worker.compat.micro_batching",
    # TorchServe's custom metrics API: the small modules are one of ours, the cache another
    "ts.metrics.dimension": "zerobatch.worker.compat.metrics",
    "ts.metrics.metric_type_enum": "zerobatch.worker.compat.metrics",
    "ts.metrics.unit": "zerobatch.worker.compat.metrics",
    "ts.metrics.metric_cache_errors": "zerobatch.worker.compat.metrics",
    "ts.metrics.metric_abstract": "zerobatch.worker.compat.metrics",
    "ts.metrics.caching_metric": "zerobatch.worker.compat.metrics",
    "ts.metrics.metric": "zerobatch.worker.compat.metrics",
    "ts.metrics.metric_cache_abstract": "zerobatch.worker.compat.metrics_cache",
    "ts.metrics.metric_cache_yaml_impl": "zerobatch.worker.compat.metrics_cache",
}

#: Synthetic packages: they hold the aliased submodules and nothing else.
TS_PACKAGES = ("ts", "ts.torch_handler", "ts.utils", "ts.handler_utils", "ts.metrics")


class _AliasLoader(importlib.abc.Loader):
    """Hands out an existing module (or a synthetic package) under a `ts` name."""

    def __init__(self, target: str | None) -> None:
        self.target = target
        self._target_spec = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        if self.target is None:
            module = ModuleType(spec.name, f"zerobatch's stand-in for TorchServe's {spec.name}")
            module.__path__ = []
            return module
        module = importlib.import_module(self.target)
        self._target_spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        # The import system stamped the alias spec on the target module; give it its own back,
        # so the module still knows its real name (importlib.reload, pickling by reference).
        if self._target_spec is not None:
            module.__spec__ = self._target_spec


class TsAliasFinder(importlib.abc.MetaPathFinder):
    """Finds the names of TS_ALIASES and TS_PACKAGES; declines everything else."""

    def find_spec(self, fullname: str, path: object = None,
                  target: object = None) -> importlib.machinery.ModuleSpec | None:
        if fullname in TS_ALIASES:
            return importlib.machinery.ModuleSpec(fullname, _AliasLoader(TS_ALIASES[fullname]))
        if fullname in TS_PACKAGES:
            return importlib.machinery.ModuleSpec(fullname, _AliasLoader(None), is_package=True)
        return None


def install_ts_aliases() -> None:
    """Make `ts.*` resolve to zerobatch's modules in this process; calling it again is a no-op."""
    if any(isinstance(finder, TsAliasFinder) for finder in sys.meta_path):
        return
    stale = sorted(name for name in sys.modules if name == "ts" or name.startswith("ts."))
    for name in stale:  # a real TorchServe imported before us: ours replaces it
        del sys.modules[name]
    if stale:
        log.warning("replaced already imported TorchServe modules by zerobatch's: %s",
                    ", ".join(stale))
    sys.meta_path.insert(0, TsAliasFinder())
