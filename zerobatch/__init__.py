"""zerobatch's shared contract: the wire protocol, the error tree and the configuration; and
the public client, `from zerobatch import Client, AsyncClient`.

`api/`, `broker/` and `worker/` each import from here and never from each other, so this
package is the only thing the three processes agree on. It must stay light: no torch, no
falcon, nothing that a broker or a front end should not pay for at import time. So the
clients are imported on first access to their names (module `__getattr__`), not here.
"""

__version__ = "0.1.0"
SERVER_NAME = "zerobatch"

#: public names imported on first access -> the module that defines each
_LAZY = {"Client": "zerobatch.api.client", "AsyncClient": "zerobatch.api.aio_client"}

__all__ = ["AsyncClient", "Client", "SERVER_NAME", "__version__"]


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    from importlib import import_module

    value = getattr(import_module(module), name)
    globals()[name] = value  # later accesses are plain attribute look-ups
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
