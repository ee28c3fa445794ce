"""Garbage collection in the serving processes: what startup built is frozen out of it.

The broker, the front ends and the workers run for hours and make almost no cyclic garbage
while they serve: a request's objects die by reference counting. CPython's collector still
walks every tracked object in a full collection (the imported modules, the app, the model),
and the process does nothing else meanwhile: a full collection of a front end's imports and
app stalls its event loop for tens of milliseconds and finds no garbage, and every request
then waiting is answered that much later; in a worker, torch's objects make it longer still
(docs/benchmarks.md, `python -m benchmarks.bench_gc`).

`freeze_startup_objects()` moves every tracked object to the permanent generation
(`gc.freeze()`, a constant-time list splice), so later collections walk only what serving
made. It does not collect first: that would cost what it saves, and whatever cyclic garbage
startup left stays frozen, once. It also raises the youngest generation's threshold from
CPython's 700 to YOUNG_THRESHOLD net allocations: each young collection walks the requests
then in flight, so under load fewer of them cost less in all. Cyclic garbage made while
serving is still collected; it just waits a little longer. Each process's entry point calls
this once, when its startup is done.
"""

from __future__ import annotations

import gc

__all__ = ["YOUNG_THRESHOLD", "freeze_startup_objects"]

#: net container allocations between two collections of the youngest generation
YOUNG_THRESHOLD = 10_000


def freeze_startup_objects() -> None:
    """Keep every object made so far out of later collections, and collect young objects less
    often (see the module docstring). Call once, when the process is ready to serve."""
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
