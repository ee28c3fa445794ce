"""What one full garbage collection stalls each serving process for, with and without
zerobatch.gc_policy's freeze.

    python -m benchmarks.bench_gc [--repeat 3] [--json PATH]

For each process kind, a fresh interpreter builds what that process holds once its startup
is done (the front end: its uvicorn server and app; the broker: its modules and a BrokerCore
with the demo model; the worker: the demo model loaded through worker.service, torch and
all), then times `gc.collect()`, the full collection CPython would run now and then while it
serves, `--repeat` times (the first from the caches startup left, the others right after
it: a server's collections come after milliseconds of other work, so the first is the nearer
figure); then calls `freeze_startup_objects()`, as the entry points do, and
times it again. A process does nothing else during a full collection: for a front end or the
broker, every request in flight waits that long. Needs the demo model (`make demo`).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys

from benchmarks.common import ROOT, at_least, bench_parser, run_record, write_json

DEMO_MODEL = "examples/digits/model"

_SETUP = {
    "frontend": """
from zerobatch.api.frontend import build_server
from zerobatch.config import FrontendConfig
kept = build_server(FrontendConfig(broker_address="ipc:///tmp/unused.sock"), None)
""",
    "broker": """
import zerobatch.broker.__main__
from zerobatch.broker import aggregator
from zerobatch.broker.core import BrokerCore
from zerobatch.config import ModelConfig
kept = BrokerCore(aggregator.load("auto"))
kept.add_model(ModelConfig(name="digits", path=DEMO_MODEL))
""",
    "worker": """
from zerobatch.worker.service import Service
from zerobatch.config import ModelConfig
kept = Service.load(ModelConfig(name="digits", path=DEMO_MODEL))
""",
}

_MEASURE = """
import gc, json, time
from zerobatch.gc_policy import freeze_startup_objects

def full_collections_ms():
    times = []
    for _ in range(REPEAT):
        started = time.perf_counter()
        gc.collect()
        times.append((time.perf_counter() - started) * 1000)
    return times

tracked = len(gc.get_objects())
before_ms = full_collections_ms()
freeze_startup_objects()
print(json.dumps({"tracked": tracked, "frozen": gc.get_freeze_count(),
                  "full_collection_ms": before_ms, "after_freeze_ms": full_collections_ms()}))
"""


def measure(kind: str, repeat: int) -> dict:
    """Run one process kind's startup and its timed collections in a fresh interpreter."""
    script = (f"DEMO_MODEL = {DEMO_MODEL!r}\nREPEAT = {repeat}\n" + _SETUP[kind] + _MEASURE)
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                            text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    if result.returncode != 0:
        raise RuntimeError(f"{kind}: {result.stderr.strip()}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = bench_parser("benchmarks.bench_gc")
    parser.add_argument("--repeat", type=at_least(2), default=3,
                        help="timed collections per case (at least 2: the first, then again)")
    args = parser.parse_args(argv)
    figures = {}
    for kind in _SETUP:
        figures[kind] = found = measure(kind, args.repeat)
        before, after = found["full_collection_ms"], found["after_freeze_ms"]
        print(f"{kind:9s} {found['tracked']:8,} objects: a full collection takes "
              f"{before[0]:6.2f} ms the first time, {statistics.median(before[1:]):6.2f} ms "
              f"again; frozen: {after[0]:.3f} and {statistics.median(after[1:]):.3f} ms")
    write_json(args.json, run_record("bench_gc", {"repeat": args.repeat}, figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
