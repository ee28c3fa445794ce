"""The records of one harness run (RESULTS_DIR/run.json) and the lookups that every reader of
them shares: the report's tables (benchmarks/report.py) and its plots (benchmarks/plots.py).

A record is one measurement: "scenario" ("latency", "throughput", "overload", "startup",
"ceiling", "floor"), "server", "workload", "transport", "concurrency", and a "result" (a
LoadResult.to_dict(), see benchmarks/report.py for the keys read). A missing value is None (or
NaN, from a summary of no samples) and the readers render it as "n/a".
"""

from __future__ import annotations

import json
import math
import os

#: the servers a run compares unless it names others, in the order every table and plot uses
SERVERS = ("zerobatch", "torchserve", "litserve")
LOAD_SCENARIOS = ("latency", "throughput")


def missing(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def latency(record: dict | None, key: str):
    if record is None:
        return None
    return (record.get("result") or {}).get("latency", {}).get(key)


def rps(record: dict | None):
    return None if record is None else (record.get("result") or {}).get("rps")


def select(records: list[dict], **where) -> list[dict]:
    return [r for r in records if all(r.get(key) == value for key, value in where.items())]


def find(records: list[dict], **where) -> dict | None:
    found = select(records, **where)
    return found[-1] if found else None


def ordered(values) -> list:
    return sorted(set(values), key=lambda value: (value is None, value))


def load_run(results_dir: str) -> dict:
    with open(os.path.join(results_dir, "run.json")) as handle:
        return json.load(handle)
