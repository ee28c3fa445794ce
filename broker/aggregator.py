"""The aggregator, by its public name: picks the compiled twin or the pure-Python one.

Both twins define `Aggregator` with the same calls and the same decisions: `_aggregator_py`
is the specification, `_aggregator` (built from `csrc/_aggregator.pyx` with the package) the
fast one, typed by `_aggregator.pyi`. Callers ask `load(preference)` for a class once, at
startup, and log `implementation_name(cls)`.
This module reads no environment variables: the entry point turns flags into a preference.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from zerobatch.broker import _aggregator_py
from zerobatch.errors import ConfigError

#: Largest time stamp (and max_batch_delay_ns) an aggregator accepts, in nanoseconds.
MAX_TIME_NS = _aggregator_py.MAX_TIME_NS
#: Largest max_queue an aggregator accepts.
MAX_QUEUE_LIMIT = _aggregator_py.MAX_QUEUE_LIMIT

PREFERENCES = ("auto", "compiled", "python")

_BUILD_HINT = ("reinstall zerobatch with Cython and a C compiler (`make build` in a checkout), "
               "or choose the pure-Python twin with aggregator 'auto' or 'python'")


def _compiled_module() -> ModuleType:
    """The compiled twin's module; ImportError when it was not built."""
    return importlib.import_module("zerobatch.broker._aggregator")


def load(preference: str = "auto") -> type:
    """The Aggregator class for a preference.

    "auto": the compiled twin when it imports, else the Python twin; "compiled": the compiled
    twin, or ConfigError saying how to build it; "python": the Python twin.
    """
    if preference == "python":
        return _aggregator_py.Aggregator
    if preference == "auto":
        try:
            return _compiled_module().Aggregator
        except ImportError:
            return _aggregator_py.Aggregator
    if preference == "compiled":
        try:
            return _compiled_module().Aggregator
        except ImportError as exc:
            raise ConfigError("the compiled aggregator (zerobatch.broker._aggregator) does not "
                              f"import ({exc}); {_BUILD_HINT}") from exc
    raise ConfigError(f"aggregator preference {preference!r} must be one of "
                      f"{', '.join(PREFERENCES)}")


def implementation_name(cls: type | object) -> str:
    """"compiled" or "python": which twin an Aggregator class (or instance) is."""
    if not isinstance(cls, type):
        cls = type(cls)
    if cls is _aggregator_py.Aggregator:
        return "python"
    try:
        if cls is _compiled_module().Aggregator:
            return "compiled"
    except ImportError:
        pass
    raise TypeError(f"{cls!r} is not one of the aggregator twins")


#: The twin that "auto" picks, chosen once at import.
Aggregator = load("auto")
#: "compiled" or "python": which twin `Aggregator` is.
IMPLEMENTATION = implementation_name(Aggregator)
