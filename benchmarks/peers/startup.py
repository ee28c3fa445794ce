"""Startup time: from spawning a server to its first successful prediction.

The clock starts right before the spawn (the caller takes `time.monotonic()`), and the real
payload is POSTed every 10 ms until a 2xx comes back; a health endpoint would answer before
the model can, so only a prediction counts. If the server process exits first, or the time
runs out, RuntimeError says so with the tail of the server's log.
"""

from __future__ import annotations

import http.client
import subprocess
import time

from benchmarks.loadgen import HttpTarget

POLL_INTERVAL_S = 0.010


def time_first_success(target: HttpTarget, started_at: float, process: subprocess.Popen, *,
                       timeout_s: float, log_path: str) -> float:
    """Seconds from started_at (time.monotonic()) to the first 2xx answer of target."""
    deadline = started_at + timeout_s
    last_problem = "no attempt yet"
    while True:
        now = time.monotonic()
        if now > deadline:
            raise RuntimeError(f"no successful prediction within {timeout_s} s "
                               f"({last_problem})\n{log_tail(log_path)}")
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with {process.returncode} before its first "
                               f"prediction\n{log_tail(log_path)}")
        status, last_problem = _post(target, deadline - now)
        if 200 <= status < 300:
            return time.monotonic() - started_at
        # the next attempt goes out on the next 10 ms tick of the clock started at spawn
        time.sleep(POLL_INTERVAL_S - (time.monotonic() - started_at) % POLL_INTERVAL_S)


def _post(target: HttpTarget, timeout_s: float) -> tuple[int, str]:
    connection = http.client.HTTPConnection(target.host, target.port, timeout=max(timeout_s, 0.01))
    try:
        connection.request("POST", target.path, body=target.body, headers=target.headers)
        response = connection.getresponse()
        body = response.read()
        return response.status, f"last answer {response.status}: {body[:200]!r}"
    except (OSError, http.client.HTTPException) as error:
        return 0, f"last attempt: {error!r}"
    finally:
        connection.close()


def log_tail(log_path: str, lines: int = 40) -> str:
    try:
        with open(log_path, errors="replace") as handle:
            return "".join(handle.readlines()[-lines:])
    except OSError:
        return f"(no log at {log_path})"
