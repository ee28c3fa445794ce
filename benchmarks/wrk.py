"""Debian's wrk as a load generator: the reference closed-loop HTTP driver, written in C.

Why keep it next to our own client: the figures quoted for the peers were taken with wrk, and
a C generator costs the server's cores less CPU than any Python one. wrk is driven by a Lua
script written here: it posts the body (read from a file, so any bytes go through), sets the
headers, counts responses by status in each thread, and at the end prints one line of JSON
(totals, socket errors, ~120 latency percentiles in µs, status counts) that `wrk_run` parses.
benchmarks.loadgen.run_wrk turns that into a LoadResult.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile

WRK = "wrk"
_MARK = "ZB_WRK_JSON "

# the percentiles wrk reports: 1..99 by 1, 99.1..99.9 by .1, then the far tail and 100
PERCENTILES = ([float(q) for q in range(1, 100)] + [99 + q / 10 for q in range(1, 10)]
               + [99.95, 99.99, 99.999, 100.0])

_SCRIPT = """
local body_file = assert(io.open({body_path}, "rb"))
wrk.method = "POST"
wrk.body = body_file:read("*a")
body_file:close()
{headers}
local threads = {{}}
function setup(thread)
  table.insert(threads, thread)
end
function init(args)
  statuses = {{}}
end
function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end
function done(summary, latency, requests)
  local counts = {{}}
  for _, thread in ipairs(threads) do
    for status, n in pairs(thread:get("statuses")) do
      counts[status] = (counts[status] or 0) + n
    end
  end
  local parts = {{}}
  for status, n in pairs(counts) do
    table.insert(parts, string.format('"%d": %d', status, n))
  end
  local points = {{}}
  for _, q in ipairs({{{percentiles}}}) do
    table.insert(points, string.format("[%s, %d]", q, latency:percentile(q)))
  end
  local e = summary.errors
  io.write(string.format(
    '{mark}{{"requests": %d, "duration_us": %d, "bytes": %d, '
    .. '"errors": {{"connect": %d, "read": %d, "write": %d, "client-timeout": %d}}, '
    .. '"status_errors": %d, "statuses": {{%s}}, "min_us": %d, "max_us": %d, '
    .. '"mean_us": %f, "percentiles": [%s]}}\\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.timeout,
    e.status, table.concat(parts, ", "), latency.min, latency.max, latency.mean,
    table.concat(points, ", ")))
end
"""


def wrk_available() -> bool:
    """True when a wrk binary is on PATH (Debian: apt-get install wrk)."""
    return shutil.which(WRK) is not None


def _lua_string(text: str | bytes) -> str:
    """A Lua string literal for any bytes: every byte outside [A-Za-z0-9 ./:_-] escaped."""
    raw = text.encode() if isinstance(text, str) else text
    safe = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ./:_-"
    return '"' + "".join(chr(b) if b in safe else f"\\{b:03d}" for b in raw) + '"'


def script_text(body_path: str, headers: dict[str, str]) -> str:
    lines = "\n".join(f"wrk.headers[{_lua_string(name)}] = {_lua_string(value)}"
                      for name, value in headers.items())
    return _SCRIPT.format(body_path=_lua_string(body_path), headers=lines, mark=_MARK,
                          percentiles=", ".join(repr(q) for q in PERCENTILES))


def wrk_run(host: str, port: int, path: str, body: bytes, headers: dict[str, str], *,
            connections: int, threads: int, duration_s: float,
            timeout_s: float = 10.0) -> dict:
    """Run wrk for duration_s (whole seconds, at least 1) and return its JSON figures."""
    if not wrk_available():
        raise RuntimeError("wrk is not installed: apt-get install wrk")
    if host not in ("127.0.0.1", "localhost"):
        raise ValueError(f"benchmarks only load 127.0.0.1, not {host}")
    seconds = max(1, round(duration_s))
    with tempfile.TemporaryDirectory(prefix="zbwrk") as tmp:
        body_path = os.path.join(tmp, "body")
        with open(body_path, "wb") as handle:
            handle.write(body)
        script = os.path.join(tmp, "post.lua")
        with open(script, "w") as handle:
            handle.write(script_text(body_path, headers))
        argv = [WRK, "-t", str(threads), "-c", str(connections), "-d", f"{seconds}s",
                "--timeout", f"{max(1, round(timeout_s))}s", "-s", script,
                f"http://{host}:{port}{path}"]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    for line in result.stdout.splitlines():
        if line.startswith(_MARK):
            figures = json.loads(line[len(_MARK):])
            figures["percentiles"] = [(float(q), int(v)) for q, v in figures["percentiles"]]
            return figures
    raise RuntimeError(f"wrk printed no figures (exit {result.returncode}):\n"
                       f"{result.stdout}{result.stderr}")
