"""How zerobatch starts its own processes: `python -m MODULE`, without the caller's directory.

`python -m` puts the current directory first on `sys.path`, so a `zerobatch/` folder, a
`worker.py` or an `api/` package where the user happens to stand would shadow the installed
package in every child. Python 3.11's `-P` leaves that entry out; on 3.10 a two-line bootstrap
removes it before running the module. `PYTHONPATH` is honoured as usual either way.
"""

from __future__ import annotations

import sys

#: run on Python 3.10 as `python -c BOOTSTRAP MODULE ARGS...`: drop the '' entry, run MODULE
_BOOTSTRAP = ("import runpy, sys; del sys.path[0]; module = sys.argv.pop(1); "
              "runpy.run_module(module, run_name='__main__', alter_sys=True)")


def module_argv(module: str, *args: str) -> list[str]:
    """The argv that runs `python -m module args...` with this interpreter, safely."""
    if sys.version_info >= (3, 11):
        return [sys.executable, "-P", "-m", module, *args]
    return [sys.executable, "-c", _BOOTSTRAP, module, *args]
