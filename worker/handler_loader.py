"""Handler resolution, as TorchServe's model loader does it.

The manifest's `model.handler` names a module (`my_handler.py` or `my_handler`), optionally
followed by `:function_name`. The entry point is, in this order:

1. `module:function` -> that function, called as `function(data, context)`;
2. a module-level `handle` function;
3. the one class defined in the module that has a `handle` method: it is instantiated with
   no arguments, `initialize(context)` runs once, and its bound `handle` is the entry point.

Anything else is a ConfigError saying what was found and what is expected. As in TorchServe,
a function entry point is called once at load time as `handle(None, context)`: handlers use
that call to initialize themselves, and must accept `data=None`.

The module is looked up as a file in the model directory first (loaded from that exact file,
so two models with a `handler.py` each do not share a module), then as one of TorchServe's
default handlers by name (`image_classifier`, ... : `DEFAULT_HANDLERS`), then as an
importable module. Before any handler or model file is imported, `install_ts_aliases()`
makes TorchServe's `ts.*` imports resolve to zerobatch's modules (see `worker.ts_alias`).

torch is not an install requirement of zerobatch (users install the build for their
hardware): a handler that needs it where it is missing fails to load with one line that says
so (`torch_missing_error`), not a traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
import os
import sys
from types import ModuleType
from typing import Any, Callable

from zerobatch.errors import ConfigError
from zerobatch.worker.ts_alias import install_ts_aliases

log = logging.getLogger(__name__)

EntryPoint = Callable[[Any, Any], Any]

#: Where a user picks the torch build for their hardware.
TORCH_INSTALL_URL = "https://pytorch.org/get-started/locally/"

#: TorchServe's built-in handlers, named without a file in the archive -> our module.
DEFAULT_HANDLERS = {
    "base_handler": "zerobatch.worker.base_handler",
    "vision_handler": "zerobatch.worker.handlers.vision_handler",
    "image_classifier": "zerobatch.worker.handlers.image_classifier",
    "image_segmenter": "zerobatch.worker.handlers.image_segmenter",
    "object_detector": "zerobatch.worker.handlers.object_detector",
    "text_handler": "zerobatch.worker.handlers.text_handler",
    "text_classifier": "zerobatch.worker.handlers.text_classifier",
}


def load_entry_point(model_dir: str, handler: str) -> tuple[EntryPoint, Callable[[Any], None]]:
    """Resolve `handler` into (entry point, initializer); the caller runs the initializer."""
    module_spec, _, function_name = handler.strip().partition(":")
    module = import_handler_module(model_dir, module_spec)
    if function_name:
        entry = getattr(module, function_name, None)
        if not callable(entry):
            raise ConfigError(f"handler {handler!r}: module {module.__name__!r} has no "
                              f"function {function_name!r}")
        return entry, _function_initializer(entry)
    entry = getattr(module, "handle", None)
    if callable(entry) and not inspect.isclass(entry):
        return entry, _function_initializer(entry)
    return _class_entry_point(module, handler)


def import_handler_module(model_dir: str, module_spec: str) -> ModuleType:
    """Import the handler module: a file of the model directory, a default handler by name,
    else an importable module."""
    install_ts_aliases()
    spec = module_spec.strip().replace("\\", "/")
    if spec.endswith(".py"):
        spec = spec[:-3]
    name = spec.split("/")[-1]
    if not name:
        raise ConfigError(f"handler {module_spec!r} does not name a module")
    for path in (os.path.join(model_dir, spec + ".py"), os.path.join(model_dir, name + ".py")):
        if os.path.isfile(path):
            return _exec_file(name, path)
    if spec in DEFAULT_HANDLERS:
        try:
            return importlib.import_module(DEFAULT_HANDLERS[spec])
        except Exception as exc:
            raise _import_failed(f"{spec} (default handler)", exc) from exc
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (name == exc.name or name.startswith(exc.name + ".")):
            raise ConfigError(f"handler {module_spec!r}: no file {name}.py in {model_dir} and no "
                              f"importable module {name!r}") from None
        raise _import_failed(name, exc) from exc
    except Exception as exc:
        raise _import_failed(name, exc) from exc


def torch_missing_error(model_name: str, exc: BaseException) -> ConfigError | None:
    """The one-line error for a model whose handler needs torch where torch is not installed,
    when exc (or an exception it was raised from) is torch failing to import; else None."""
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        if isinstance(cause, ModuleNotFoundError) and cause.name == "torch":
            return ConfigError(f"model {model_name}: its handler needs torch, which is not "
                               "installed in the Python that runs the workers; install the "
                               f"build for your hardware: {TORCH_INSTALL_URL}")
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return None


def _exec_file(name: str, path: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise ConfigError(f"handler file {path} cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    previous = sys.modules.get(name)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        if previous is None:
            sys.modules.pop(name, None)
        else:
            sys.modules[name] = previous
        raise _import_failed(path, exc) from exc
    return module


def _import_failed(what: str, exc: BaseException) -> ConfigError:
    return ConfigError(f"handler {what} failed to import: {type(exc).__name__}: {exc}")


def _function_initializer(entry: EntryPoint) -> Callable[[Any], None]:
    def initialize(context: Any) -> None:
        entry(None, context)
    return initialize


def _class_entry_point(module: ModuleType, handler: str) -> tuple[EntryPoint, Callable]:
    defined = [obj for obj in vars(module).values()
               if inspect.isclass(obj) and obj.__module__ == module.__name__]
    candidates = [cls for cls in defined if callable(getattr(cls, "handle", None))]
    if len(candidates) != 1:
        found = ", ".join(cls.__name__ for cls in (candidates or defined)) or "none"
        what = "classes with a handle method" if candidates else "classes defined"
        raise ConfigError(
            f"handler {handler!r}: expected a module-level handle(data, context) function, "
            f"'{handler.split(':')[0]}:function_name', or exactly one class with a handle "
            f"method; {what}: {found}")
    cls = candidates[0]
    try:
        service = cls()
    except Exception as exc:
        raise ConfigError(f"handler class {cls.__name__} cannot be instantiated without "
                          f"arguments: {type(exc).__name__}: {exc}") from exc
    initialize = getattr(service, "initialize", None)
    if not callable(initialize):
        def initialize(context: Any) -> None:
            return None
    return service.handle, initialize
