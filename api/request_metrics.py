"""The HTTP front end's request metrics, in TorchServe's Prometheus names, via prometheus_client.

Families (labels):

    ts_inference_requests_total        counter    model_name, model_version, hostname
    ts_inference_latency_microseconds  counter    model_name, model_version, hostname
    Requests2XX, Requests4XX,          counter    Level ("Host"), Hostname
    Requests5XX
    zerobatch_request_seconds          histogram  model_name, model_version

When each is counted, as TorchServe's front end does:

- Requests2XX / 4XX / 5XX: every response of the inference app, by its status: 2xx, 4xx, and
  anything else in 5XX (TorchServe's NettyUtils.sendHttpResponse: its `else` takes 1xx and 3xx
  too). /ping, /ready and the OpenAPI description count, and so do the refusals before any
  routing: 404 for an unknown path, 405, 400 for a bad token. A streamed reply counts with its
  first chunk's status. (Answers the HTTP layer gives by itself, before the app sees the
  request, do not count: 408, 413 to an Expect: 100-continue, 431, 503 over the connection
  cap: api/http_protocol.py.)
- ts_inference_requests_total and zerobatch_request_seconds: each prediction the broker took
  for a model (and version) it serves, whatever became of it; not one refused before it was
  sent (bad token, bad x-zerobatch-timeout-ms, body over the limit) nor one for a model or
  version the broker does not know (404): TorchServe counts it once it has found the model.
  zerobatch_request_seconds is the time from the request's arrival at the app to its last
  body byte handed to the server (a stream's end).
- ts_inference_latency_microseconds: the same time, in µs, summed over the predictions a
  worker answered (a reply, or its handler's error), as TorchServe adds it when the worker's
  response comes; not those the broker refused (queue full, deadline unreachable, deadline
  passed) or lost with their worker (RestJob.sendError adds nothing either).

model_version is the version the path names, "default" when it names none (TorchServe's
label); hostname is socket.gethostname().

Cost: a request adds to plain Python numbers (a count, two sums of ns, the count of its
histogram bucket, its status class), about a microsecond; the figures are written into
prometheus_client about every FLUSH_INTERVAL_S, by a timer on the server's loop (started at
lifespan startup, with a last flush at shutdown) and by the first request after the
interval: a few writes per (model, version) whatever the traffic. So the metrics API lags the
front end by up to FLUSH_INTERVAL_S, and a front end that is killed loses at most that much.
The histogram is written as Histogram.observe would leave it, bucket by bucket, through the
child's `_sum` and `_buckets` values (prometheus_client has no public call to observe many
values at once; tests/unit/test_request_metrics.py checks the result against observe).
Label children are made once per (model, version) and cached.

The families are created with the RequestMetrics object (at app creation, in the front-end
process), never when this module is imported: prometheus_client picks its multiprocess mode
from PROMETHEUS_MULTIPROC_DIR when it is first imported, and the front end should only
import it once its environment is final.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from bisect import bisect_left
from collections.abc import AsyncIterator
from time import monotonic_ns
from typing import Any

import falcon.asgi

log = logging.getLogger(__name__)

#: the label value of a prediction whose path names no version (TorchServe's)
DEFAULT_VERSION_LABEL = "default"
MODEL_LABELS = ("model_name", "model_version", "hostname")
STATUS_LABELS = ("Level", "Hostname")
#: zerobatch_request_seconds' buckets: prometheus_client's defaults, 5 ms to 10 s
REQUEST_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                     7.5, 10.0, float("inf"))
#: longest the counts of a front end wait before they are written for the metrics API
FLUSH_INTERVAL_S = 0.25
#: (model, version) pairs whose label children are cached; past it a new pair is still
#: counted, its children made again at each flush (the broker only lets through the models
#: it serves, so it takes many registrations to get there)
MAX_CACHED_MODELS = 4096

#: where each (model, version)'s pending figures sit in its list
_COUNT, _ANSWERED_NS, _TOTAL_NS, _BUCKETS = 0, 1, 2, 3


class RequestMetrics:
    """The front end's prometheus_client families: counts gathered per request in plain
    Python numbers, written to prometheus_client at most every FLUSH_INTERVAL_S."""

    def __init__(self, registry: Any = None, hostname: str | None = None,
                 flush_interval_s: float = FLUSH_INTERVAL_S) -> None:
        from prometheus_client import Counter, Histogram  # see the module docstring

        self.hostname = hostname or socket.gethostname()
        self._requests = Counter("ts_inference_requests_total",
                                 "Total number of inference requests.", MODEL_LABELS,
                                 registry=registry)
        self._latency = Counter("ts_inference_latency_microseconds",
                                "Cumulative inference duration in microseconds",
                                MODEL_LABELS, registry=registry)
        self._seconds = Histogram("zerobatch_request_seconds",
                                  "Seconds from a prediction's arrival to its last byte",
                                  ("model_name", "model_version"), registry=registry,
                                  buckets=REQUEST_BUCKETS_S)
        self._status_counters = [
            Counter(name, "Torchserve prometheus counter metric with unit: Count",
                    STATUS_LABELS, registry=registry).labels("Host", self.hostname)
            for name in ("Requests2XX", "Requests4XX", "Requests5XX")]
        #: the upper bounds of the buckets, in ns (bisect_left finds an observation's)
        self._bounds_ns = [round(bound * 1e9) if bound != float("inf") else bound
                           for bound in REQUEST_BUCKETS_S]
        #: responses not yet written, by status // 100 (0 to 6: 600 and above)
        self._statuses = [0] * 7
        #: (model, version label) -> [count, answered ns, total ns, one count per bucket]
        self._pending: dict[tuple[str, str], list] = {}
        #: (model, version label) -> (requests child, latency child, histogram child)
        self._children: dict[tuple[str, str], tuple[Any, Any, Any]] = {}
        self._interval_ns = int(flush_interval_s * 1e9)
        self._interval_s = flush_interval_s
        self._flush_at_ns = monotonic_ns() + self._interval_ns
        self._timer: asyncio.TimerHandle | None = None

    # ------------------------------------------------------------------ per request

    def count_status(self, status: int) -> None:
        """One response of this status (Requests2XX, 4XX or 5XX)."""
        self._statuses[min(status // 100, 6)] += 1

    def record(self, model: str, version: str | None, start_ns: int,
               answered: bool = True) -> None:
        """One prediction of a served model, which arrived at start_ns (monotonic) and has
        just ended; answered: a worker answered it (see the module docstring)."""
        now_ns = monotonic_ns()
        elapsed_ns = now_ns - start_ns
        key = (model, version or DEFAULT_VERSION_LABEL)
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = [0] * (_BUCKETS + len(self._bounds_ns))
        pending[_COUNT] += 1
        if answered:
            pending[_ANSWERED_NS] += elapsed_ns
        pending[_TOTAL_NS] += elapsed_ns
        pending[_BUCKETS + bisect_left(self._bounds_ns, elapsed_ns)] += 1
        if now_ns >= self._flush_at_ns:
            self.flush(now_ns)

    async def stream(self, chunks: AsyncIterator[bytes], model: str, version: str | None,
                     start_ns: int) -> AsyncIterator[bytes]:
        """chunks, recorded as one answered prediction when the stream ends (or is cut)."""
        try:
            async for chunk in chunks:
                yield chunk
        finally:
            self.record(model, version, start_ns)

    # ------------------------------------------------------------------ writing

    def flush(self, now_ns: int | None = None) -> None:
        """Write what was counted since the last flush into prometheus_client."""
        self._flush_at_ns = (monotonic_ns() if now_ns is None else now_ns) + self._interval_ns
        pending, self._pending = self._pending, {}
        for key, figures in pending.items():
            requests, latency, seconds = self._children.get(key) or self._make_children(key)
            requests.inc(figures[_COUNT])
            if figures[_ANSWERED_NS]:
                latency.inc(figures[_ANSWERED_NS] / 1e3)
            # Histogram.observe, once for all of them: its sum and each bucket's count
            seconds._sum.inc(figures[_TOTAL_NS] / 1e9)
            buckets = seconds._buckets
            for index, count in enumerate(figures[_BUCKETS:]):
                if count:
                    buckets[index].inc(count)
        statuses = self._statuses
        if any(statuses):
            self._statuses = [0] * 7
            ok, client_error, other = self._status_counters
            if statuses[2]:
                ok.inc(statuses[2])
            if statuses[4]:
                client_error.inc(statuses[4])
            rest = sum(statuses) - statuses[2] - statuses[4]
            if rest:
                other.inc(rest)

    def start(self) -> None:
        """Flush every FLUSH_INTERVAL_S on the running event loop (until stop)."""
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._interval_s, self._tick)

    def stop(self) -> None:
        """Stop the periodic flush, and flush what is left."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.flush()

    def _tick(self) -> None:
        try:
            self.flush()
        except Exception:  # a metric never stops the server
            log.exception("writing the request metrics failed")
        self._timer = asyncio.get_running_loop().call_later(self._interval_s, self._tick)

    def _make_children(self, key: tuple[str, str]) -> tuple[Any, Any, Any]:
        model, version = key
        labels = (model, version, self.hostname)
        children = (self._requests.labels(*labels), self._latency.labels(*labels),
                    self._seconds.labels(model, version))
        if len(self._children) < MAX_CACHED_MODELS:
            self._children[key] = children
        return children


class MetricsMiddleware:
    """Falcon middleware: every response of the app counted by its status class, and the
    periodic flush for the server's lifespan (a final one at shutdown)."""

    def __init__(self, metrics: RequestMetrics) -> None:
        self.metrics = metrics
        self._count = metrics.count_status

    async def process_startup(self, scope: dict, event: dict) -> None:
        self.metrics.start()

    async def process_shutdown(self, scope: dict, event: dict) -> None:
        self.metrics.stop()

    async def process_response(self, req: falcon.asgi.Request, resp: falcon.asgi.Response,
                               resource: object, req_succeeded: bool) -> None:
        self._count(resp.status_code)
