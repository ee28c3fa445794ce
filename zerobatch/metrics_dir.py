"""The metrics folder of a run directory (RUN_DIR/metrics): where every process of a server
keeps its prometheus_client figures in multiprocess mode, and where the metrics API reads them.

prometheus_client's multiprocess mode (https://prometheus.github.io/client_python/multiprocess/)
has each process write its metrics to mmap'ed files named after its pid in the folder that
PROMETHEUS_MULTIPROC_DIR names; the metrics API's MultiProcessCollector sums them. So the
broker, before any child starts, makes the folder private (0700) and empty of the files an
earlier run left (they would be counted again), starts every child with the variable set
(`child_environ`), and when a child exits drops its live gauges (`mark_process_dead`); its
counters and histograms stay, as they should.

Pure but for the file operations: prometheus_client is imported only by `mark_process_dead`,
when a child exits, never at import (the broker does not load it on its serving path).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping

from zerobatch.errors import ConfigError

#: the variable that puts prometheus_client in multiprocess mode, naming the folder
ENV_VAR = "PROMETHEUS_MULTIPROC_DIR"
#: its lowercase spelling, which older prometheus_client releases read too
_LEGACY_ENV_VAR = "prometheus_multiproc_dir"
#: the files prometheus_client's multiprocess mode writes
_SUFFIX = ".db"


def prepare(path: str) -> int:
    """Make path a private directory (mode 0700) holding none of the files an earlier run
    left; the number removed. ConfigError (one line) for a symbolic link, something that is
    not a directory, or a directory of another user."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"metrics folder {path} is not a directory (or is a symbolic link); "
                          "remove it, the server makes its own")
    if info.st_uid != os.geteuid():
        raise ConfigError(f"metrics folder {path} belongs to user {info.st_uid}, not to you "
                          f"({os.geteuid()}); remove it, the server makes its own")
    if stat.S_IMODE(info.st_mode) != 0o700:
        os.chmod(path, 0o700)
    removed = 0
    with os.scandir(path) as entries:
        for entry in entries:
            if entry.name.endswith(_SUFFIX) and not entry.is_dir(follow_symlinks=False):
                os.unlink(entry.path)
                removed += 1
    return removed


def child_environ(environ: Mapping[str, str], path: str | None) -> dict[str, str]:
    """The environment of a child process: environ with ENV_VAR naming path; without it (None:
    no metrics API) when environ had one, so that no child writes into a folder of someone
    else's choosing."""
    env = dict(environ)
    env.pop(_LEGACY_ENV_VAR, None)
    env.pop(ENV_VAR, None)
    if path:
        env[ENV_VAR] = path
    return env


def mark_process_dead(pid: int, path: str) -> None:
    """A child that wrote into path has exited: drop its live gauges (prometheus_client's
    mark_process_dead; loaded on the first call)."""
    from prometheus_client import multiprocess  # here, not at the top: see the module doc

    multiprocess.mark_process_dead(pid, path)
