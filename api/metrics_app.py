"""The metrics app: TorchServe's metrics API as a Falcon ASGI app, Prometheus text on /metrics.

    GET /metrics[?name[]=X&name[]=Y]    every family, or those named (TorchServe's filter)

Two sources, scraped together:

- what the front ends and workers record with prometheus_client in multiprocess mode, each
  process into its own files in the run directory's metrics folder (zerobatch/metrics_dir.py),
  summed by prometheus_client's MultiProcessCollector;
- the broker's figures, which `BrokerCollector` asks for at each scrape with the `metrics`
  control call (broker/model_stats.py) and turns into the families below. A broker that does
  not answer within the timeout (about 1 s) leaves them out; the rest is served, and the
  silence is logged once until the broker answers again.

The broker's families (labels model_name and model_version unless said):

    ts_queue_latency_microseconds  counter  TorchServe's: queue time of every request, total
                                            (labels model_name, model_version, hostname)
    QueueTime                      gauge    TorchServe's, in ms: the mean queue time of the
                                            requests dispatched since the previous scrape that
                                            reached the broker, over every model; unchanged
                                            when none were (labels Level="Host", Hostname)
    WorkerThreadTime               gauge    TorchServe's, in ms: the broker's own time on
                                            the last batch answered, sending it and routing
                                            its replies (TorchServe: its worker thread's time
                                            outside the backend); absent before the first
                                            (labels Level="Host", Hostname)
    zerobatch_queue_depth          gauge    requests waiting in the broker's queue
    zerobatch_in_flight_requests   gauge    requests sent to workers and not yet answered
    zerobatch_workers              gauge    workers by state: live (said READY, not lost, not
                                            retiring), desired (what the supervisor was asked
                                            for: scale calls, autoscaling), min, max
    zerobatch_refusals_total       counter  refused at arrival, by reason: queue_full,
                                            deadline_unreachable (503)
    zerobatch_expired_total        counter  answered 504 by the broker: the deadline passed
                                            in the queue
    zerobatch_worker_restarts_total counter workers lost or exited while serving (restarted)
    zerobatch_load_failures_total  counter  workers that failed to load the model
    zerobatch_requests_total       counter  requests the queue accepted (not the refused)
    zerobatch_batch_size           histogram  batch sizes run (buckets 1, 2, 4 ... 512)
    zerobatch_queue_seconds        histogram  queue time, arrival to dispatch to a worker
    zerobatch_default_version      gauge    1 for each model's default version, the one a
                                            request that names none gets: it joins the
                                            front end's model_version="default" series
                                            (TorchServe's label) to that version

A `name[]` parameter keeps a family when it names the family, its name as written (a counter
with _total) or one of its samples; the broker is not asked when no name can be one of its.
The text is prometheus_client's exposition (format 0.0.4, TorchServe's content type), except
that TorchServe's counters whose names lack _total (TORCHSERVE_BARE_COUNTERS) keep their name
as TorchServe writes them: `ts_queue_latency_microseconds{...} 365.2`, not `..._total`.

No token: TorchServe's metrics API asks for none; it listens on loopback by default.
`control` is anything with an async `control(op, timeout_ms=..., **args)`; the app neither
creates nor closes it.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Iterable
from typing import Any

import falcon
import falcon.asgi
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.utils import floatToGoString

from zerobatch.api.dashboard_app import add_dashboard_routes
from zerobatch.api.management_helpers import serialize_http_error
from zerobatch.config import METRICS_BROKER_TIMEOUT_MS
from zerobatch.errors import ConfigError, ServingError

__all__ = ["BROKER_FAMILIES", "BrokerCollector", "broker_families", "create_metrics_app",
           "exposition", "select"]

log = logging.getLogger("zerobatch.metrics")

#: TorchServe's counters written without _total (its Java client 0.9 added none): a family
#: of one of these names, from any process, is written under the name itself
TORCHSERVE_BARE_COUNTERS = frozenset({
    "ts_queue_latency_microseconds", "ts_inference_latency_microseconds",
    "Requests2XX", "Requests4XX", "Requests5XX"})
#: the families BrokerCollector makes (prometheus_client's family names: no _total)
BROKER_FAMILIES = (
    "ts_queue_latency_microseconds", "QueueTime", "WorkerThreadTime", "zerobatch_queue_depth",
    "zerobatch_in_flight_requests", "zerobatch_workers", "zerobatch_refusals",
    "zerobatch_expired", "zerobatch_worker_restarts", "zerobatch_load_failures",
    "zerobatch_requests", "zerobatch_batch_size", "zerobatch_queue_seconds",
    "zerobatch_default_version")
#: the buckets of zerobatch_batch_size
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
#: refusal reasons, as the broker's error codes name them
REFUSAL_REASONS = ("queue_full", "deadline_unreachable")
WORKER_STATES = ("live", "desired", "min", "max")
_MODEL_LABELS = ["model_name", "model_version"]


def _ts_help(kind: str, unit: str) -> str:
    return f"Torchserve prometheus {kind} metric with unit: {unit}"


# ---------------------------------------------------------------------- the broker's families

def broker_families(answer: dict[str, Any], hostname: str,
                    queue_time_ms: float) -> list[Metric]:
    """The families of a `metrics` answer (broker/model_stats.py); queue_time_ms is QueueTime."""
    latency = CounterMetricFamily("ts_queue_latency_microseconds",
                                  _ts_help("counter", "Microseconds"),
                                  labels=[*_MODEL_LABELS, "hostname"])
    queue_time = GaugeMetricFamily("QueueTime", _ts_help("gauge", "Milliseconds"),
                                   labels=["Level", "Hostname"])
    queue_time.add_metric(["Host", hostname], queue_time_ms)
    thread_time = GaugeMetricFamily("WorkerThreadTime", _ts_help("gauge", "Milliseconds"),
                                    labels=["Level", "Hostname"])
    if answer.get("worker_thread_ns") is not None:
        thread_time.add_metric(["Host", hostname], answer["worker_thread_ns"] / 1e6)
    depth = GaugeMetricFamily("zerobatch_queue_depth",
                              "Requests waiting in the broker's queue", labels=_MODEL_LABELS)
    in_flight = GaugeMetricFamily("zerobatch_in_flight_requests",
                                  "Requests sent to workers and not yet answered",
                                  labels=_MODEL_LABELS)
    workers = GaugeMetricFamily("zerobatch_workers",
                                "Workers: live (ready, not retiring), desired, min and max",
                                labels=[*_MODEL_LABELS, "state"])
    refusals = CounterMetricFamily("zerobatch_refusals",
                                   "Requests refused at arrival (503), by reason",
                                   labels=[*_MODEL_LABELS, "reason"])
    counters = {
        "expired": CounterMetricFamily(
            "zerobatch_expired", "Requests answered 504 by the broker: their deadline passed "
            "while they waited in the queue", labels=_MODEL_LABELS),
        "worker_restarts": CounterMetricFamily(
            "zerobatch_worker_restarts", "Workers lost or exited while serving the model",
            labels=_MODEL_LABELS),
        "load_failures": CounterMetricFamily(
            "zerobatch_load_failures", "Workers that failed to load the model",
            labels=_MODEL_LABELS),
        "requests": CounterMetricFamily(
            "zerobatch_requests", "Requests the model's queue accepted (refusals not counted)",
            labels=_MODEL_LABELS),
    }
    batch_size = HistogramMetricFamily("zerobatch_batch_size", "Sizes of the batches run",
                                       labels=_MODEL_LABELS)
    default_version = GaugeMetricFamily(
        "zerobatch_default_version", "1 for the version a request that names none gets",
        labels=_MODEL_LABELS)
    queue_seconds = HistogramMetricFamily(
        "zerobatch_queue_seconds", "Queue time of each request, arrival to dispatch to a "
        "worker", labels=_MODEL_LABELS)
    bounds_s = [floatToGoString(bound_ns / 1e9) for bound_ns in answer["queue_buckets_ns"]]
    for model in answer["models"]:
        labels = [model["model"], model["version"]]
        latency.add_metric([*labels, hostname], model["queue_ns_total"] / 1000)
        depth.add_metric(labels, model["queued"])
        if model.get("default"):
            default_version.add_metric(labels, 1)
        in_flight.add_metric(labels, model["in_flight"])
        for state in WORKER_STATES:
            workers.add_metric([*labels, state], model["workers"][state])
        for reason in REFUSAL_REASONS:
            refusals.add_metric([*labels, reason], model["refusals"].get(reason, 0))
        for key, family in counters.items():
            family.add_metric(labels, model[key])
        batch_size.add_metric(labels, *_batch_size_buckets(model["batch_sizes"]))
        counts = model["queue_counts"]
        if len(counts) != len(bounds_s) + 1:
            raise ValueError("queue_counts does not match queue_buckets_ns")
        queue_seconds.add_metric(labels, _cumulative([*bounds_s, "+Inf"], counts),
                                 model["queue_ns_total"] / 1e9)
    return [latency, queue_time, thread_time, depth, in_flight, workers, refusals,
            *counters.values(), batch_size, queue_seconds, default_version]


def _batch_size_buckets(sizes: list[list[int]]) -> tuple[list[tuple[str, float]], float]:
    """The cumulative buckets of zerobatch_batch_size and the sum of the sizes, from
    [[size, batches], ...]."""
    counts = [0] * (len(BATCH_SIZE_BUCKETS) + 1)
    total = 0
    for size, batches in sizes:
        index = next((i for i, bound in enumerate(BATCH_SIZE_BUCKETS) if size <= bound),
                     len(BATCH_SIZE_BUCKETS))
        counts[index] += batches
        total += size * batches
    les = [floatToGoString(bound) for bound in BATCH_SIZE_BUCKETS] + ["+Inf"]
    return _cumulative(les, counts), total


def _cumulative(les: list[str], counts: list[int]) -> list[tuple[str, float]]:
    buckets = []
    running = 0
    for le, count in zip(les, counts, strict=True):
        running += count
        buckets.append((le, running))
    return buckets


class BrokerCollector:
    """A prometheus_client collector of the broker's figures: `refresh()` asks the broker
    (the `metrics` control call), `collect()` yields the families of its last answer (none
    when it did not answer). Keeps what QueueTime needs between scrapes."""

    def __init__(self, control: Any, hostname: str,
                 timeout_ms: int = METRICS_BROKER_TIMEOUT_MS) -> None:
        self._control = control
        self._hostname = hostname
        self._timeout_ms = timeout_ms
        self._answer: dict[str, Any] | None = None
        self._silent = False
        #: (queue ns, requests) summed over the models at the last answer, and QueueTime then
        self._seen = (0, 0)
        self._queue_time_ms = 0.0

    async def refresh(self) -> bool:
        """Ask the broker for its figures; False (and none to collect) when it does not
        answer within the timeout."""
        try:
            answer = await self._control.control("metrics", timeout_ms=self._timeout_ms)
        except ServingError as exc:
            self._answer = None
            if not self._silent:
                self._silent = True
                log.warning("the broker did not answer the metrics call (%s): its figures are "
                            "left out until it does", exc.code)
            return False
        if self._silent:
            self._silent = False
            log.info("the broker answers the metrics call again")
        self._answer = answer
        self._update_queue_time(answer)
        return True

    def _update_queue_time(self, answer: dict[str, Any]) -> None:
        try:
            total_ns = sum(model["queue_ns_total"] for model in answer["models"])
            count = sum(sum(model["queue_counts"]) for model in answer["models"])
        except (KeyError, TypeError):
            return  # collect() says what is wrong with the answer
        seen_ns, seen_count = self._seen
        self._seen = (total_ns, count)
        if count > seen_count and total_ns >= seen_ns:
            self._queue_time_ms = (total_ns - seen_ns) / (count - seen_count) / 1e6
        # fewer than before: the broker restarted or a model went; measured from now on

    def describe(self) -> list:
        return []  # so that registering it collects nothing

    def collect(self) -> list[Metric]:
        if self._answer is None:
            return []
        try:
            return broker_families(self._answer, self._hostname, self._queue_time_ms)
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("the broker's metrics answer is not understood: %r", exc)
            return []


# ---------------------------------------------------------------------- selection and text

def is_broker_name(name: str) -> bool:
    """Whether a name[] value can select one of the broker's families."""
    return any(name == family or name.startswith(family + "_") for family in BROKER_FAMILIES)


def select(families: Iterable[Metric], names: Iterable[str] | None) -> list[Metric]:
    """The families a name[] filter keeps (all when names is None): those it names by the
    family's name, its written name (a counter's _total) or one of its samples' names."""
    if names is None:
        return list(families)
    wanted = set(names)
    return [family for family in families
            if family.name in wanted
            or (family.type == "counter" and f"{family.name}_total" in wanted)
            or any(sample.name in wanted for sample in family.samples)]


class _Families:
    """What generate_latest takes: something whose collect() yields families."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> list[Metric]:
        return self._families


def exposition(families: Iterable[Metric]) -> bytes:
    """The Prometheus text (format 0.0.4) of these families: prometheus_client's, with the
    families in TORCHSERVE_BARE_COUNTERS written under their own name, as TorchServe does."""
    parts = []
    for family in families:
        if family.type == "counter" and family.name in TORCHSERVE_BARE_COUNTERS:
            parts.append(_bare_counter(family))
        else:
            parts.append(generate_latest(_Families([family])))
    return b"".join(parts)


def _bare_counter(family: Metric) -> bytes:
    """A counter written as TorchServe writes it: `# TYPE name counter` and samples `name`."""
    twin = Metric(family.name, family.documentation, "unknown")
    total = f"{family.name}_total"
    twin.samples = [sample._replace(name=family.name) for sample in family.samples
                    if sample.name in (total, family.name)]
    text = generate_latest(_Families([twin]))
    untyped = f"# TYPE {family.name} untyped\n".encode()
    return text.replace(untyped, f"# TYPE {family.name} counter\n".encode(), 1)


# ---------------------------------------------------------------------- the app

class MetricsResource:
    """GET /metrics: the processes' families, then the broker's."""

    def __init__(self, metrics_dir: str, broker: BrokerCollector) -> None:
        if not os.path.isdir(metrics_dir):
            raise ConfigError(f"the metrics folder {metrics_dir} is not a directory (the broker "
                              "makes it when the metrics API is on)")
        self._processes = MultiProcessCollector(None, metrics_dir)
        self._broker = broker

    async def on_get(self, req: falcon.asgi.Request, resp: falcon.asgi.Response) -> None:
        names = req.get_param_as_list("name[]")
        ask_broker = names is None or any(is_broker_name(name) for name in names)
        if ask_broker:
            await self._broker.refresh()
        families: list[Metric] = []
        try:
            families += self._processes.collect()
        except Exception as exc:  # a file cut short or being created: serve the rest
            log.warning("cannot read the processes' metrics: %r", exc)
        if ask_broker:
            families += self._broker.collect()
        resp.content_type = CONTENT_TYPE_PLAIN_0_0_4
        resp.data = exposition(select(families, names))


def create_metrics_app(control: Any, metrics_dir: str, *, hostname: str | None = None,
                       broker_timeout_ms: int = METRICS_BROKER_TIMEOUT_MS) -> falcon.asgi.App:
    """The metrics app over `control` (the broker's control socket) and the processes' files in
    metrics_dir (which must exist); hostname labels TorchServe's families (default: this
    machine's name)."""
    broker = BrokerCollector(control, hostname or socket.gethostname(), broker_timeout_ms)
    app = falcon.asgi.App()
    app.add_route("/metrics", MetricsResource(metrics_dir, broker))
    add_dashboard_routes(app)  # the live page over /metrics (api/dashboard_app.py)
    app.set_error_serializer(serialize_http_error)
    return app
