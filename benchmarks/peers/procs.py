"""Starting a peer server in its own session and making sure all of it is gone afterwards.

A peer is a tree of processes (TorchServe: a Python launcher, a JVM, Python workers; LitServe:
an API server and inference workers). Each is spawned with `start_new_session`, so the whole
tree shares one process group and session whose id is the leader's pid, and stopping it
means: ask nicely (SIGTERM to the group), then SIGKILL whatever of the session is left, and
wait until /proc shows none of it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

_POLL_S = 0.05


def spawn(argv: list[str], *, env: dict[str, str], cwd: str, log_path: str) -> subprocess.Popen:
    """Start argv as the leader of a new session, stdout and stderr to log_path."""
    with open(log_path, "ab") as log:
        return subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)


def session_pids(session_id: int) -> list[int]:
    """Live (non-zombie) processes whose session or process group is session_id."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        state, pgid, sid = fields[0], int(fields[2]), int(fields[3])
        if state not in ("Z", "X") and session_id in (pgid, sid):
            pids.append(int(entry))
    return pids


def stop_session(leader: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM the leader's group, SIGKILL what is left after grace_s, wait until none is left.
    Raises RuntimeError if processes survive SIGKILL (which would be a bug to look at)."""
    session_id = leader.pid
    _signal_group(session_id, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and _alive(leader, session_id):
        time.sleep(_POLL_S)
    for pid in session_pids(session_id):
        _kill(pid)
    _signal_group(session_id, signal.SIGKILL)
    deadline = time.monotonic() + 10.0
    while _alive(leader, session_id):
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes of session {session_id} survive SIGKILL: "
                               f"{session_pids(session_id)}")
        time.sleep(_POLL_S)


def _alive(leader: subprocess.Popen, session_id: int) -> bool:
    leader.poll()  # reap the leader so that it does not linger as a zombie
    return bool(session_pids(session_id))


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
