"""How zerobatch starts its own processes: `python -m MODULE`, without the caller's directory.

`python -m` puts the current directory first on `sys.path`, so a `zerobatch/` folder, a
`worker.py` or an `api/` package where the user happens to stand would shadow the installed
package in every child. Python 3.11's `-P` leaves that entry out; on 3.10 a one-line bootstrap
(`bootstrap_argv`) removes it before running the module. `PYTHONPATH` is honoured either way.
"""

from __future__ import annotations

import sys

#: run as `python -c BOOTSTRAP MODULE ARGS...`: drop the '' entry that `-c` puts first on
#: sys.path (the current directory), then run MODULE as `-m` would, with argv[1:] = ARGS
_BOOTSTRAP = """\
import runpy, sys
if sys.path and sys.path[0] == '':
    del sys.path[0]
runpy.run_module(sys.argv.pop(1), run_name='__main__', alter_sys=True)
"""


def module_argv(module: str, *args: str) -> list[str]:
    """The argv that runs `python -m module args...` with this interpreter, safely."""
    if sys.version_info >= (3, 11):
        return [sys.executable, "-P", "-m", module, *args]
    return bootstrap_argv(module, *args)


def bootstrap_argv(module: str, *args: str) -> list[str]:
    """What module_argv gives on Python 3.10, which has no `-P`; it works on any version."""
    return [sys.executable, "-c", _BOOTSTRAP, module, *args]


# Exit statuses of the broker (and of `zerobatch start --foreground`, which becomes it), for
# whatever supervises it: 0 after a requested stop; these two for problems that a restart
# cannot fix; anything else (a crash, a signal) is worth a restart.
EXIT_CONFIG = 2
EXIT_ADDRESS_IN_USE = 3
PERMANENT_EXITS = frozenset({EXIT_CONFIG, EXIT_ADDRESS_IN_USE})
