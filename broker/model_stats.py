"""The broker's figures for the metrics API: what the `metrics` control call answers.

The broker keeps, per model version, counters that cost an integer add where the event
happens (broker/core.py): worker restarts, load failures, and each request's queue time
(arrival to dispatch) in a histogram of fixed buckets with its sum. The rest is read when the
call comes: queued and in-flight requests, worker counts, refusals and expirations (the
batching policy's Refusals), requests accepted, batch sizes. api/metrics_app.py turns the
answer into Prometheus families; the broker never imports prometheus_client.

The answer, a msgpack map (lists, not maps keyed by integers):

    {"queue_buckets_ns": [upper bound, ...],      # the histogram's buckets, +Inf implied
     "worker_thread_ns": n or None,               # the broker's time on the last batch
     "models": [{"model": name, "version": v,
                 "default": bool,                 # the version a request naming none gets
                 "queued": n, "in_flight": n,     # waiting now; sent to workers, unanswered
                 "workers": {"live": n, "desired": n, "min": n, "max": n},
                 "refusals": {"queue_full": n, "deadline_unreachable": n},
                 "expired": n, "worker_restarts": n, "load_failures": n, "requests": n,
                 "batch_sizes": [[size, batches], ...],
                 "queue_counts": [n, ...],        # per bucket, not cumulative, +Inf last
                 "queue_ns_total": n}, ...]}
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

#: upper bounds of the queue-time histogram's buckets, in ns (Prometheus `le`; a wait equal to
#: a bound counts in its bucket): 100 µs to 2 minutes, TorchServe's default response timeout
QUEUE_BUCKETS_NS = tuple(round(seconds * 1e9) for seconds in (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0, 60.0, 120.0))


class ModelStats:
    """The counters of one model version that the broker keeps as events happen."""

    __slots__ = ("worker_restarts", "load_failures", "queue_counts", "queue_ns_total")

    def __init__(self) -> None:
        #: workers of the model lost or exited while they served it (not retired ones)
        self.worker_restarts = 0
        #: workers that failed to load the model (LOAD_FAILED, or past the startup timeout)
        self.load_failures = 0
        #: requests dispatched, by queue-time bucket (QUEUE_BUCKETS_NS, then +Inf)
        self.queue_counts = [0] * (len(QUEUE_BUCKETS_NS) + 1)
        #: the sum of their queue times
        self.queue_ns_total = 0


def model_figures(queue: Any, default: bool) -> dict[str, Any]:
    """The answer's entry for one model version (a broker.core.ModelQueue); default: it is
    its model's default version."""
    config = queue.config
    stats: ModelStats = queue.stats
    in_flight = 0
    live = 0
    for worker in queue.workers.values():
        live += not worker.retiring
        for batch in (worker.batch, worker.next_batch):
            if batch is not None:
                in_flight += len(batch.requests)
    refusals = queue.policy.refusals
    return {
        "model": config.name,
        "version": config.version,
        "default": default,
        "queued": len(queue.aggregator) + (0 if queue.sequences is None  # sequences' too
                                           else len(queue.sequences)),
        "in_flight": in_flight,
        "workers": {"live": live, "desired": queue.target_workers, "min": config.workers,
                    "max": queue.max_workers},
        "refusals": dict(refusals.counts),
        "expired": refusals.expired,
        "worker_restarts": stats.worker_restarts,
        "load_failures": stats.load_failures,
        "requests": queue.requests_total,
        "batch_sizes": sorted([size, count] for size, count in queue.batch_sizes.items()),
        "queue_counts": list(stats.queue_counts),
        "queue_ns_total": stats.queue_ns_total,
    }


def answer(queues: Iterable[Any], default_versions: Mapping[str, str],
           worker_thread_ns: int | None = None) -> dict[str, Any]:
    """The `metrics` control call's answer over these model queues; default_versions: each
    model name's default version; worker_thread_ns: the broker's time on its last batch
    (BrokerCore.worker_thread_ns)."""
    return {"queue_buckets_ns": list(QUEUE_BUCKETS_NS), "worker_thread_ns": worker_thread_ns,
            "models": [model_figures(queue, default_versions.get(queue.config.name)
                                     == queue.config.version) for queue in queues]}
